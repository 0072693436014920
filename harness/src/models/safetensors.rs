//! Loading llama-family models from a Hugging Face folder: `config.json` and `*.safetensors`,
//! in f32, f16 or bf16 (what a GPU user brings: Vicuna-7B, Qwen2.5-7B).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::transformer::{Block, Embedding, Linear, RmsNorm, RopeStyle, Transformer, TransformerConfig, TransformerWeights};

/// The fields of a Hugging Face `config.json` this loader reads.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

pub fn read_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: HfConfig = serde_json::from_str(&text).with_context(|| format!("{}: not a usable model config", path.display()))?;
    if !matches!(cfg.model_type.as_str(), "llama" | "qwen2") {
        bail!("{}: unsupported architecture `{}` in field `model_type` (supported: llama, qwen2)", path.display(), cfg.model_type);
    }
    if cfg.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        bail!("{}: field `rope_scaling` is set; scaled rotary embeddings are not supported", path.display());
    }
    Ok(cfg)
}

/// The weights' dtype from `torch_dtype` (f32 when absent).
pub fn config_dtype(cfg: &HfConfig, dir: &Path) -> Result<DType> {
    match cfg.torch_dtype.as_deref() {
        None | Some("float32") => Ok(DType::F32),
        Some("float16") => Ok(DType::F16),
        Some("bfloat16") => Ok(DType::BF16),
        Some(other) => bail!("{}: unsupported `torch_dtype` {other}", dir.join("config.json").display()),
    }
}

fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors files", dir.display());
    }
    Ok(files)
}

/// Loads the model in `dtype` (None: the config's `torch_dtype`).
pub fn load_transformer(dir: &Path, name: String, dtype: Option<DType>, device: &Device) -> Result<Transformer> {
    let hf = read_config(dir)?;
    let dtype = match dtype {
        Some(d) => d,
        None => config_dtype(&hf, dir)?,
    };
    let files = safetensor_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; modifying them while loading is undefined,
    // as for every mmap-based loader.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
        .with_context(|| format!("{}: cannot read safetensors", dir.display()))?;
    let n_heads = hf.num_attention_heads;
    let n_kv_heads = hf.num_key_value_heads.unwrap_or(n_heads);
    let cfg = TransformerConfig {
        arch: hf.model_type.clone(),
        hidden_size: hf.hidden_size,
        n_layers: hf.num_hidden_layers,
        n_heads,
        n_kv_heads,
        head_dim: hf.head_dim.unwrap_or(hf.hidden_size / n_heads),
        vocab_size: hf.vocab_size,
        max_context: hf.max_position_embeddings,
        rms_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_style: RopeStyle::Half,
    };
    let qkv_bias = hf.attention_bias.unwrap_or(hf.model_type == "qwen2");
    let shown = dir.display().to_string();
    let get = |name: &str, shape: &[usize]| vb.get(shape, name).map_err(|e| anyhow::anyhow!("{shown}: tensor `{name}`: {e}"));
    let linear = |prefix: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        let weight = QMatMul::Tensor(get(&format!("{prefix}.weight"), &[out, inp])?);
        let bias = if bias { Some(get(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear::new(weight, bias)?)
    };
    let norm = |name: &str| -> Result<RmsNorm> { Ok(RmsNorm { weight: get(name, &[cfg.hidden_size])?, eps: cfg.rms_eps as f32 }) };
    let (h, q_dim, kv_dim) = (cfg.hidden_size, n_heads * cfg.head_dim, n_kv_heads * cfg.head_dim);
    let embed_w = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        // The MLP width is read from the tensor itself (config names for it vary).
        let inter = vb
            .get_unchecked(&format!("{p}.mlp.gate_proj.weight"))
            .and_then(|t| t.dim(0))
            .map_err(|e| anyhow::anyhow!("{shown}: tensor `{p}.mlp.gate_proj.weight`: {e}"))?;
        blocks.push(Block {
            attn_norm: norm(&format!("{p}.input_layernorm.weight"))?,
            q: linear(&format!("{p}.self_attn.q_proj"), q_dim, h, qkv_bias)?,
            k: linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, qkv_bias)?,
            v: linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, qkv_bias)?,
            o: linear(&format!("{p}.self_attn.o_proj"), h, q_dim, false)?,
            mlp_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
            gate: linear(&format!("{p}.mlp.gate_proj"), inter, h, false)?,
            up: linear(&format!("{p}.mlp.up_proj"), inter, h, false)?,
            down: linear(&format!("{p}.mlp.down_proj"), h, inter, false)?,
        });
    }
    let lm_head = if hf.tie_word_embeddings {
        Linear::new(QMatMul::Tensor(embed_w.clone()), None)?
    } else {
        linear("lm_head", cfg.vocab_size, h, false)?
    };
    let weights =
        TransformerWeights { embed: Embedding(QMatMul::Tensor(embed_w)), blocks, final_norm: norm("model.norm.weight")?, lm_head };
    Transformer::new(name, cfg, weights, dtype, device).map_err(|e| anyhow::anyhow!("{shown}: building the model: {e}"))
}
