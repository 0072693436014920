//! Loading llama-family models from GGUF files (llama.cpp's format) with quantized weights.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device};

use super::transformer::{
    own_kernels_default, Block, Embedding, Linear, RmsNorm, RopeStyle, Transformer, TransformerConfig, TransformerWeights,
};

/// Architectures this loader builds, by `general.architecture`.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "qwen2"];

/// Environment variable: `none` keeps every weight in its file's type (no conversion at load).
pub const CONVERT_ENV: &str = "DECODEBENCH_CONVERT";

/// Whether loading may convert Q5_0 weights to Q8_0 (default yes; `DECODEBENCH_CONVERT=none`:
/// no). It does so only with the project's kernels off: they take Q5_0 as it is.
pub fn conversions_enabled() -> bool {
    !matches!(std::env::var(CONVERT_ENV).as_deref(), Ok("none") | Ok("0") | Ok("off"))
}

/// Q5_0 blocks as Q8_0 blocks of the same weights, for candle's SIMD Q8_0 kernels (candle's
/// Q5_0 dot product is a scalar loop; the project's kernels read Q5_0 itself, with Q8_0's bits):
/// [`decodebench_kernels::qmatmul::q5_0_to_q8_0`].
pub fn q5_0_to_q8_0(data: &[u8]) -> Result<Vec<u8>> {
    decodebench_kernels::qmatmul::q5_0_to_q8_0(data).map_err(|e| anyhow::anyhow!("{e}"))
}

/// An opened GGUF file: its header, parsed and checked, and the reader positioned anywhere.
pub struct GgufFile {
    pub content: gguf_file::Content,
    reader: BufReader<File>,
    path: String,
    /// (from, to, tensors) converted by the last load.
    converted: Vec<(GgmlDType, GgmlDType, usize)>,
    /// Weights repacked for the project's kernels by the last load: (type, count), per type.
    packed: [(GgmlDType, usize); 8],
    /// Convert weights at load ([`Self::set_convert`]).
    convert: bool,
    /// Dequantize every weight to f32 at load ([`Self::load_transformer_dequantized`]).
    dequantize: bool,
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
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| anyhow::anyhow!("{shown}: corrupt or truncated GGUF header: {e}"))?;
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
        Ok(Self {
            content,
            reader,
            path: shown,
            converted: Vec::new(),
            packed: NO_PACKED,
            convert: conversions_enabled(),
            dequantize: false,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether loading converts weights to faster exact equivalents (see [`q5_0_to_q8_0`]);
    /// default on unless `DECODEBENCH_CONVERT=none`. Off, every weight keeps its file's type, as
    /// in candle-transformers' models.
    pub fn set_convert(&mut self, on: bool) {
        self.convert = on;
    }

    /// The model with every weight dequantized to f32: a reference without weight kernels or
    /// activation quantization, for accuracy checks of the quantized kernels (about 4 bytes per
    /// parameter of memory).
    pub fn load_transformer_dequantized(&mut self, name: String, device: &Device) -> Result<Transformer> {
        self.dequantize = true;
        let model = self.load_transformer(name, device);
        self.dequantize = false;
        model
    }

    pub fn architecture(&self) -> Result<String> {
        Ok(self.string("general.architecture")?.to_string())
    }

    fn value(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).with_context(|| format!("{}: metadata key `{key}` is missing", self.path))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        self.value(key)?.to_string().map(String::as_str).map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        let n = v.to_u64().or_else(|_| v.to_u32().map(u64::from)).or_else(|_| v.to_i32().map(|x| x as u64));
        n.map(|n| n as usize).map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(v) => {
                v.to_f32().map(f64::from).or_else(|_| v.to_f64()).map_err(|e| anyhow::anyhow!("{}: metadata key `{key}`: {e}", self.path))
            }
        }
    }

    fn qtensor(&mut self, name: &str, device: &Device) -> Result<candle_core::quantized::QTensor> {
        self.content.tensor(&mut self.reader, name, device).map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path))
    }

    /// A weight that the model multiplies by (not one it only looks rows up in), converted to
    /// the type its kernels run fastest on when that is exact: Q5_0 to Q8_0 for candle's kernels
    /// (see [`q5_0_to_q8_0`]); the project's kernels take Q5_0 as it is, 0.65x the bytes.
    fn matmul_tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.qtensor(name, device)?;
        if t.dtype() != GgmlDType::Q5_0 || !device.is_cpu() || !self.convert || self.dequantize || own_kernels_default() {
            return Ok(t);
        }
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: tensor `{name}`: converting Q5_0 to Q8_0: {e}", self.path);
        let data = q5_0_to_q8_0(&t.data().map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        let storage = QStorage::from_data(std::borrow::Cow::Owned(data), device, GgmlDType::Q8_0).map_err(|e| err(&e))?;
        let converted = QTensor::new(storage, t.shape().clone()).map_err(|e| err(&e))?;
        self.note_conversion(GgmlDType::Q5_0, GgmlDType::Q8_0);
        Ok(converted)
    }

    fn note_conversion(&mut self, from: GgmlDType, to: GgmlDType) {
        match self.converted.iter_mut().find(|c| c.0 == from && c.1 == to) {
            Some(c) => c.2 += 1,
            None => self.converted.push((from, to, 1)),
        }
    }

    fn matmul(&mut self, name: &str, device: &Device) -> Result<QMatMul> {
        let t = self.matmul_tensor(name, device)?;
        self.wrap(t, name, device)
    }

    fn wrap(&self, t: QTensor, name: &str, device: &Device) -> Result<QMatMul> {
        let err = |e: candle_core::Error| anyhow::anyhow!("{}: tensor `{name}`: {e}", self.path);
        if self.dequantize {
            return Ok(QMatMul::Tensor(t.dequantize(device).map_err(err)?));
        }
        QMatMul::from_arc(std::sync::Arc::new(t)).map_err(err)
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
        let linear = Linear::new(weight, bias).map_err(|e| anyhow::anyhow!("{}: tensor `{prefix}.weight`: {e}", self.path))?;
        self.count_packed(&linear);
        Ok(linear)
    }

    fn count_packed(&mut self, linear: &Linear) {
        if let (true, QMatMul::QTensor(t)) = (linear.is_packed(), &linear.weight) {
            self.packed.iter_mut().filter(|(dtype, _)| *dtype == t.dtype()).for_each(|(_, n)| *n += 1);
        }
    }

    fn norm(&mut self, name: &str, eps: f32, device: &Device) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.dense(name, device)?, eps })
    }

    /// Reads the model's configuration from the metadata.
    pub fn config(&self) -> Result<TransformerConfig> {
        let arch = self.architecture()?;
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            bail!("{}: unsupported architecture `{arch}` (supported: {})", self.path, SUPPORTED_ARCHS.join(", "));
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
        self.converted.clear();
        self.packed = NO_PACKED;
        let eps = cfg.rms_eps as f32;
        let qkv_bias = cfg.arch == "qwen2";
        let tied = !self.has_tensor("output.weight");
        // Tied embeddings: the vocabulary projection is the embedding table, so it is a matmul
        // weight too (and converted like one); otherwise it is only looked up.
        let embed_q = if tied { self.matmul_tensor("token_embd.weight", device)? } else { self.qtensor("token_embd.weight", device)? };
        let (embed, tied_head) = if self.dequantize {
            let w = self.wrap(embed_q, "token_embd.weight", device)?;
            (Embedding(w.clone()), tied.then_some(w))
        } else {
            // Quantized tables are looked up row by row (see `Embedding`); the tied head is a
            // matmul weight (candle dequantizes F16/F32 ones).
            let embed_q = std::sync::Arc::new(embed_q);
            let head = if tied { Some(QMatMul::from_arc(embed_q.clone())?) } else { None };
            (Embedding(QMatMul::QTensor(embed_q)), head)
        };
        let lm_head = match tied_head {
            Some(weight) => {
                let linear = Linear::new(weight, None)?;
                self.count_packed(&linear);
                linear
            }
            None => self.linear("output", false, device)?,
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
        Transformer::new(name, cfg, weights, DType::F32, device).map_err(|e| anyhow::anyhow!("{}: building the model: {e}", self.path))
    }

    /// The weight conversions the last [`Self::load_transformer`] did, e.g.
    /// `Q5_0 → Q8_0 (exact), 132 tensors`.
    pub fn conversions(&self) -> Vec<String> {
        let mut out: Vec<String> = self.converted.iter().map(|(from, to, n)| conversion_text(*from, *to, *n)).collect();
        out.extend(self.packed.iter().filter(|(_, n)| *n > 0).map(|&(dtype, n)| packing_text(dtype, n)));
        out
    }

    /// The conversions loading will do, from the header alone (cheap: no weight is read).
    pub fn planned_conversions(&self) -> Vec<String> {
        let tied = !self.has_tensor("output.weight");
        let matmul_weights = |dtype: GgmlDType| {
            self.content
                .tensor_infos
                .iter()
                .filter(|(name, t)| t.ggml_dtype == dtype && t.shape.rank() == 2 && (tied || name.as_str() != "token_embd.weight"))
                .count()
        };
        let mut out = Vec::new();
        let q5 = matmul_weights(GgmlDType::Q5_0);
        let own_kernels = own_kernels_default() && !self.dequantize;
        if self.convert && !own_kernels && !self.dequantize && q5 > 0 {
            out.push(conversion_text(GgmlDType::Q5_0, GgmlDType::Q8_0, q5));
        }
        if own_kernels {
            for (dtype, _) in NO_PACKED {
                let packed = matmul_weights(dtype);
                if packed > 0 {
                    out.push(packing_text(dtype, packed));
                }
            }
        }
        out
    }

    /// Matrix (rank-2) tensors per weight type, most common first, e.g. `[("Q5_0", 133), ...]`.
    pub fn weight_types(&self) -> Vec<(String, usize)> {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for t in self.content.tensor_infos.values() {
            if t.shape.rank() == 2 {
                *counts.entry(ggml_name(t.ggml_dtype)).or_default() += 1;
            }
        }
        let mut v: Vec<(String, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
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

/// ggml's own spelling of a type (`Q5_0`, `Q4_K`, `F32`), for messages and records.
pub fn ggml_name(dtype: GgmlDType) -> String {
    let s = format!("{dtype:?}");
    match s.strip_suffix('K') {
        Some(head) if s.starts_with('Q') => format!("{head}_K"),
        _ => s,
    }
}

/// The types the project's kernels repack at load, none counted yet.
const NO_PACKED: [(GgmlDType, usize); 8] = [
    (GgmlDType::Q4_1, 0),
    (GgmlDType::Q8_0, 0),
    (GgmlDType::Q5_0, 0),
    (GgmlDType::Q4K, 0),
    (GgmlDType::Q6K, 0),
    (GgmlDType::Q4_0, 0),
    (GgmlDType::Q5_1, 0),
    (GgmlDType::Q5K, 0),
];

fn packing_text(dtype: GgmlDType, n: usize) -> String {
    let plural = if n == 1 { "" } else { "s" };
    match dtype {
        GgmlDType::Q6K => {
            use decodebench_kernels::packed::Q6K_PACKED_MIN_ROWS;
            format!(
                "Q6_K → 8-row interleaved copy of ggml's size for blocks of {Q6K_PACKED_MIN_ROWS}+ rows (exact: the bits of the ggml layout, which one row reads), {n} tensor{plural}"
            )
        }
        _ => format!("{} → 8-row interleaved layout for the project's kernels (exact), {n} tensor{plural}", ggml_name(dtype)),
    }
}

fn conversion_text(from: GgmlDType, to: GgmlDType, n: usize) -> String {
    format!("{} → {} (exact), {n} tensor{}", ggml_name(from), ggml_name(to), if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, Tensor};

    /// Q5_0 → Q8_0 is exact: the converted blocks dequantize to the same floats (bit for bit),
    /// candle's matmul over them is within 1e-4 of the Q5_0 matmul (both quantize the activations
    /// to Q8_0; only the order of float sums differs), and the model's linear layer over the
    /// converted weight gives every row of a block the bits of that row alone.
    #[test]
    fn q5_0_converts_exactly_to_q8_0() {
        let dev = Device::Cpu;
        for (n, k) in [(7usize, 64usize), (40, 896)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q5 = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
            let data = q5_0_to_q8_0(&q5.data().unwrap()).unwrap();
            let storage = QStorage::from_data(std::borrow::Cow::Owned(data), &dev, GgmlDType::Q8_0).unwrap();
            let q8 = QTensor::new(storage, (n, k)).unwrap();
            let a: Vec<f32> = q5.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = q8.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "dequantized weights differ");
            let x = Tensor::randn(0f32, 1.0, (3, k), &dev).unwrap();
            let y5 = QMatMul::from_qtensor(q5).unwrap().forward(&x).unwrap();
            let q8 = QMatMul::from_qtensor(q8).unwrap();
            let y8 = q8.forward(&x).unwrap();
            let diff: f32 = (y5 - y8).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(diff < 1e-4, "({n}, {k}): matmuls differ by {diff}");
            // Rows stay exact through the model's linear layer (the project's Q8_0 kernel).
            let linear = Linear::new(q8, None).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, 64, k), &dev).unwrap();
            let bits =
                |t: &Tensor| -> Vec<u32> { t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect() };
            for m in [2usize, 5, 17, 64] {
                let block = linear.forward(&x.narrow(1, 0, m).unwrap(), true).unwrap();
                for r in [0, m / 2, m - 1] {
                    let alone = linear.forward(&x.narrow(1, r, 1).unwrap(), true).unwrap();
                    assert_eq!(bits(&block.narrow(1, r, 1).unwrap()), bits(&alone), "({n}, {k}): row {r} of {m}");
                }
            }
        }
        assert!(q5_0_to_q8_0(&[0u8; 23]).is_err());
    }

    #[test]
    fn ggml_names() {
        assert_eq!(ggml_name(GgmlDType::Q4K), "Q4_K");
        assert_eq!(ggml_name(GgmlDType::Q5_0), "Q5_0");
        assert_eq!(ggml_name(GgmlDType::F32), "F32");
        assert_eq!(conversion_text(GgmlDType::Q5_0, GgmlDType::Q8_0, 132), "Q5_0 → Q8_0 (exact), 132 tensors");
    }
}
