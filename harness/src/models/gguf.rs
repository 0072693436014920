//! Loading llama-family models from GGUF files (llama.cpp's format) with quantized weights.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device};

use super::transformer::{Block, Embedding, Linear, RmsNorm, RopeStyle, Transformer, TransformerConfig, TransformerWeights};

/// Architectures this loader builds, by `general.architecture`.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "qwen2"];

/// An opened GGUF file: its header, parsed and checked, and the reader positioned anywhere.
pub struct GgufFile {
    pub content: gguf_file::Content,
    reader: BufReader<File>,
    path: String,
}

impl GgufFile {
    /// Opens and checks a GGUF file: magic, header, and that every tensor's data lies within the
    /// file (a truncated download fails here, before any weight is read).
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = File::open(path).with_context(|| format!("cannot open model file {shown}"))?;
        let file_len = file.metadata().with_context(|| format!("cannot read {shown}"))?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            bail!("{shown} is not a GGUF file (it does not start with the GGUF magic bytes)");
        }
        reader.rewind()?;
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| anyhow::anyhow!("{shown}: corrupt or truncated GGUF header: {e}"))?;
        let data_end = content
            .tensor_infos
            .values()
            .map(|t| {
                let bytes = t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
                content.tensor_data_offset + t.offset + bytes as u64
            })
            .max()
            .unwrap_or(content.tensor_data_offset);
        if data_end > file_len {
            bail!("{shown} is truncated: its tensors need {data_end} bytes, the file has {file_len}");
        }
        Ok(Self { content, reader, path: shown })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn architecture(&self) -> Result<String> {
        Ok(self.string("general.architecture")?.to_string())
    }

    fn value(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).with_context(|| format!("{}: metadata key `{key}` is missing", self.path))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        let n = v.to_u64().or_else(|_| v.to_u32().map(u64::from)).or_else(|_| v.to_i32().map(|x| x as u64));
        n.map(|n| n as usize).map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path)),
        }
    }

    fn qtensor(&mut self, name: &str, device: &Device) -> Result<candle_core::quantized::QTensor> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path))
    }

    fn matmul(&mut self, name: &str, device: &Device) -> Result<QMatMul> {
        let t = self.qtensor(name, device)?;
        QMatMul::from_arc(std::sync::Arc::new(t)).map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path))
    }

    fn dense(&mut self, name: &str, device: &Device) -> Result<candle_core::Tensor> {
        let t = self.qtensor(name, device)?;
        t.dequantize(device).map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn linear(&mut self, prefix: &str, bias: bool, device: &Device) -> Result<Linear> {
        let weight = self.matmul(&format!("{prefix}.weight"), device)?;
        let bias_name = format!("{prefix}.bias");
        let bias = if bias && self.has_tensor(&bias_name) { Some(self.dense(&bias_name, device)?) } else { None };
        Ok(Linear { weight, bias })
    }

    fn norm(&mut self, name: &str, eps: f32, device: &Device) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.dense(name, device)?, eps })
    }

    /// Reads the model's configuration from the metadata.
    pub fn config(&self) -> Result<TransformerConfig> {
        let arch = self.architecture()?;
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            bail!(
                "{}: unsupported architecture `{arch}` (supported: {})",
                self.path,
                SUPPORTED_ARCHS.join(", ")
            );
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.usize(&key("embedding_length"))?;
        let n_heads = self.usize(&key("attention.head_count"))?;
        let n_kv_heads = match self.content.metadata.get(&key("attention.head_count_kv")) {
            Some(_) => self.usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || hidden_size % n_heads != 0 {
            bail!("{}: inconsistent attention heads: {n_heads} heads, {n_kv_heads} KV heads, hidden size {hidden_size}", self.path);
        }
        let head_dim = match self.content.metadata.get(&key("attention.key_length")) {
            Some(_) => self.usize(&key("attention.key_length"))?,
            None => hidden_size / n_heads,
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(t) => t.shape.dims()[0],
            None => bail!("{}: tensor `token_embd.weight` is missing", self.path),
        };
        Ok(TransformerConfig {
            hidden_size,
            n_layers: self.usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            max_context: self.usize(&key("context_length"))?,
            rms_eps: self.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_theta: self.f64_or(&key("rope.freq_base"), 10_000.0)?,
            // llama.cpp's converter permutes llama's q/k into the interleaved layout; qwen2
            // keeps Hugging Face's.
            rope_style: if arch == "llama" { RopeStyle::Interleaved } else { RopeStyle::Half },
            arch,
        })
    }

    /// Reads every weight and builds the model.
    pub fn load_transformer(&mut self, name: String, device: &Device) -> Result<Transformer> {
        let cfg = self.config()?;
        let eps = cfg.rms_eps as f32;
        let qkv_bias = cfg.arch == "qwen2";
        let embed_q = self.qtensor("token_embd.weight", device)?;
        let embed_q = std::sync::Arc::new(embed_q);
        let embed = Embedding(QMatMul::QTensor(embed_q.clone()));
        let lm_head = if self.has_tensor("output.weight") {
            self.linear("output", false, device)?
        } else {
            // Tied embeddings: the vocabulary projection is the embedding table.
            Linear { weight: QMatMul::from_arc(embed_q)?, bias: None }
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: self.norm(&format!("{p}.attn_norm.weight"), eps, device)?,
                q: self.linear(&format!("{p}.attn_q"), qkv_bias, device)?,
                k: self.linear(&format!("{p}.attn_k"), qkv_bias, device)?,
                v: self.linear(&format!("{p}.attn_v"), qkv_bias, device)?,
                o: self.linear(&format!("{p}.attn_output"), false, device)?,
                mlp_norm: self.norm(&format!("{p}.ffn_norm.weight"), eps, device)?,
                gate: self.linear(&format!("{p}.ffn_gate"), false, device)?,
                up: self.linear(&format!("{p}.ffn_up"), false, device)?,
                down: self.linear(&format!("{p}.ffn_down"), false, device)?,
            });
        }
        let final_norm = self.norm("output_norm.weight", eps, device)?;
        let weights = TransformerWeights { embed, blocks, final_norm, lm_head };
        Transformer::new(name, cfg, weights, DType::F32, device)
            .map_err(|e| anyhow::anyhow!("{}: building the model: {e}", self.path))
    }

    /// The dominant weight type, e.g. `Q4_K` (for listings and records).
    pub fn quantization(&self) -> String {
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for t in self.content.tensor_infos.values() {
            if t.shape.rank() == 2 {
                *counts.entry(format!("{:?}", t.ggml_dtype)).or_default() += t.shape.elem_count();
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k).unwrap_or_default()
    }
}
