//! Tiny random models that tests and benchmarks write themselves, as GGUF (quantized) or as a
//! Hugging Face folder (config.json + safetensors), with a byte-level tokenizer in the GGUF
//! metadata. The same seed gives the same weights in both formats.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shape and kind of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// `llama` or `qwen2` (qwen2 gets q/k/v biases).
    pub arch: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub context: usize,
    /// Weight type of the matrices in GGUF (norms and biases stay f32). K-quants need
    /// `hidden` and `intermediate` to be multiples of 256.
    pub weight_type: GgmlDType,
    /// Separate `output.weight` (false: tied to the embeddings).
    pub untied_output: bool,
    pub seed: u64,
    /// Rows of the embedding and output matrices when larger than the tiny tokenizer's
    /// vocabulary (e.g. a draft for a real model's vocabulary); None: the tokenizer's size.
    pub vocab_rows: Option<usize>,
}

impl TinySpec {
    pub fn llama() -> Self {
        Self {
            arch: "llama",
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            context: 256,
            weight_type: GgmlDType::Q8_0,
            untied_output: true,
            seed: 7,
            vocab_rows: None,
        }
    }

    pub fn qwen2() -> Self {
        Self { arch: "qwen2", untied_output: false, seed: 11, ..Self::llama() }
    }

    /// A qwen2 model with Q4_K / Q6_K weights: the quantization types of the default Qwen models,
    /// whose CPU kernels differ between one row and several.
    pub fn qwen2_k_quants() -> Self {
        Self { hidden: 256, intermediate: 512, weight_type: GgmlDType::Q4K, seed: 13, ..Self::qwen2() }
    }
}

/// The tiny tokenizer's vocabulary: the 256 byte-level symbols, one merge, three ChatML specials.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>) {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    tokens.push("Ġt".to_string());
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
    }
    (tokens, vec!["Ġ t".to_string()])
}

/// Random f32 weights by Hugging Face name.
fn random_weights(spec: &TinySpec, vocab: usize) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let dev = Device::Cpu;
    let head_dim = spec.hidden / spec.heads;
    let (h, q, kv, m) = (spec.hidden, spec.heads * head_dim, spec.kv_heads * head_dim, spec.intermediate);
    // Uniform with unit-variance outputs (scale sqrt(3 / fan_in)), so activations stay O(1).
    let mut uniform = |shape: &[usize], scale: f32, offset: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)).collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    let mut w = vec![("model.embed_tokens.weight".to_string(), uniform(&[vocab, h], 1.0, 0.0)?)];
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        w.push((format!("{p}.input_layernorm.weight"), uniform(&[h], 0.1, 1.0)?));
        w.push((format!("{p}.self_attn.q_proj.weight"), uniform(&[q, h], lin(h), 0.0)?));
        w.push((format!("{p}.self_attn.k_proj.weight"), uniform(&[kv, h], lin(h), 0.0)?));
        w.push((format!("{p}.self_attn.v_proj.weight"), uniform(&[kv, h], lin(h), 0.0)?));
        if spec.arch == "qwen2" {
            w.push((format!("{p}.self_attn.q_proj.bias"), uniform(&[q], 0.1, 0.0)?));
            w.push((format!("{p}.self_attn.k_proj.bias"), uniform(&[kv], 0.1, 0.0)?));
            w.push((format!("{p}.self_attn.v_proj.bias"), uniform(&[kv], 0.1, 0.0)?));
        }
        w.push((format!("{p}.self_attn.o_proj.weight"), uniform(&[h, q], lin(q), 0.0)?));
        w.push((format!("{p}.post_attention_layernorm.weight"), uniform(&[h], 0.1, 1.0)?));
        w.push((format!("{p}.mlp.gate_proj.weight"), uniform(&[m, h], lin(h), 0.0)?));
        w.push((format!("{p}.mlp.up_proj.weight"), uniform(&[m, h], lin(h), 0.0)?));
        w.push((format!("{p}.mlp.down_proj.weight"), uniform(&[h, m], lin(m), 0.0)?));
    }
    w.push(("model.norm.weight".to_string(), uniform(&[h], 0.1, 1.0)?));
    if spec.untied_output {
        w.push(("lm_head.weight".to_string(), uniform(&[vocab, h], lin(h), 0.0)?));
    }
    Ok(w)
}

/// llama.cpp's tensor name for a Hugging Face one.
fn gguf_name(hf: &str) -> String {
    let hf = hf.strip_prefix("model.").unwrap_or(hf);
    let renames = [
        ("embed_tokens", "token_embd"),
        ("norm.weight", "output_norm.weight"),
        ("lm_head", "output"),
        ("layers.", "blk."),
        (".input_layernorm", ".attn_norm"),
        (".post_attention_layernorm", ".ffn_norm"),
        (".self_attn.q_proj", ".attn_q"),
        (".self_attn.k_proj", ".attn_k"),
        (".self_attn.v_proj", ".attn_v"),
        (".self_attn.o_proj", ".attn_output"),
        (".mlp.gate_proj", ".ffn_gate"),
        (".mlp.up_proj", ".ffn_up"),
        (".mlp.down_proj", ".ffn_down"),
    ];
    let mut name = hf.to_string();
    for (from, to) in renames {
        if from == "norm.weight" {
            if name == from {
                name = to.to_string();
            }
        } else {
            name = name.replace(from, to);
        }
    }
    name
}

/// Writes a tiny GGUF model (weights, config and tokenizer metadata) to `path`.
pub fn write_gguf(spec: &TinySpec, path: &Path) -> Result<()> {
    write_gguf_with(spec, path, spec.arch)
}

/// Like [`write_gguf`] but declaring `general.architecture = arch_label` (to test rejection).
pub fn write_gguf_with(spec: &TinySpec, path: &Path, arch_label: &str) -> Result<()> {
    use gguf_file::Value as V;
    let (tokens, merges) = tiny_vocab();
    let vocab = tokens.len();
    let a = spec.arch;
    let n_specials = 3;
    let token_type: Vec<V> = (0..vocab).map(|i| V::I32(if i >= vocab - n_specials { 3 } else { 1 })).collect();
    let im_end = (vocab - 1) as u32;
    let md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch_label.into())),
        ("general.name".into(), V::String(format!("tiny-{a}"))),
        (format!("{a}.embedding_length"), V::U32(spec.hidden as u32)),
        (format!("{a}.block_count"), V::U32(spec.layers as u32)),
        (format!("{a}.attention.head_count"), V::U32(spec.heads as u32)),
        (format!("{a}.attention.head_count_kv"), V::U32(spec.kv_heads as u32)),
        (format!("{a}.feed_forward_length"), V::U32(spec.intermediate as u32)),
        (format!("{a}.context_length"), V::U32(spec.context as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), V::F32(1e-6)),
        (format!("{a}.rope.freq_base"), V::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), V::Array(tokens.iter().map(|t| V::String(t.clone())).collect())),
        ("tokenizer.ggml.merges".into(), V::Array(merges.iter().map(|m| V::String(m.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), V::Array(token_type)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(im_end)),
    ];
    let weights = random_weights(spec, spec.vocab_rows.unwrap_or(vocab).max(vocab))?;
    let mut qtensors = Vec::with_capacity(weights.len());
    for (name, t) in &weights {
        let dtype = if t.rank() == 2 { spec.weight_type } else { GgmlDType::F32 };
        qtensors.push((gguf_name(name), QTensor::quantize(t, dtype)?));
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs)?;
    use std::io::Write;
    file.flush()?;
    Ok(())
}

/// Writes a tiny Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`) into
/// `dir`, with the same weights as [`write_gguf`] would quantize.
pub fn write_hf_dir(spec: &TinySpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (tokens, merges) = tiny_vocab();
    let vocab = tokens.len();
    let config = serde_json::json!({
        "model_type": spec.arch,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": spec.context,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": !spec.untied_output,
        "torch_dtype": "float32",
        "eos_token_id": vocab - 1,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let weights: HashMap<String, Tensor> = random_weights(spec, vocab)?.into_iter().collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    let vocab_map: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens[vocab - 3..]
        .iter()
        .enumerate()
        .map(|(j, t)| {
            serde_json::json!({"id": vocab - 3 + j, "content": t, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab_map, "merges": merges},
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tokenizer)?)?;
    let tok_config = serde_json::json!({"eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string(&tok_config)?)?;
    Ok(())
}
