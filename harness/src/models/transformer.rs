//! The llama-family decoder (`llama`, `qwen2`): pre-norm blocks of grouped-query attention with
//! rotary embeddings and a SwiGLU MLP. Qwen2 differs from llama only by biases on q/k/v, and GGUF
//! llama files store q/k in the interleaved rotary layout, so both live in this one file, in
//! candle-transformers' plain style, but with what strategies need and candle's quantized models
//! lack: explicit positions, tree attention masks, logits for every row, hidden states, and a KV
//! cache that can be truncated, compacted and reordered.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor};
use decodebench_kernels::attention_mask;
use decodebench_strategies::{BlockAttention, DecoderModel, ForwardInput, ForwardOutput, LogitRows, ModelInfo};

use super::kv_cache::KvCache;

/// How q and k pairs are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (x[2i], x[2i+1]): llama weights as llama.cpp's converter permutes them into GGUF.
    Interleaved,
    /// Pairs (x[i], x[i + d/2]): Hugging Face's rotate_half, and qwen2 in GGUF.
    Half,
}

#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub arch: String,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_context: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
}

/// A weight matrix `(out, in)`, quantized or dense, with an optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: QMatMul,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Token embeddings: quantized tables are looked up row by row without dequantizing the whole
/// table (Qwen's 151k × 1536 table would take 0.9 GB in f32).
#[derive(Debug, Clone)]
pub struct Embedding(pub QMatMul);

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.0.embedding(ids)
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// Weights of a whole model, as the GGUF and safetensors loaders produce them.
#[derive(Debug, Clone)]
pub struct TransformerWeights {
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub final_norm: RmsNorm,
    pub lm_head: Linear,
}

pub struct Transformer {
    info: ModelInfo,
    cfg: TransformerConfig,
    w: TransformerWeights,
    /// Activations' dtype (f32 for quantized weights, the weights' dtype for dense ones).
    dtype: DType,
    device: Device,
    /// Rotary tables `(max_context, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    cache: Vec<KvCache>,
}

impl Transformer {
    pub fn new(
        name: String,
        cfg: TransformerConfig,
        w: TransformerWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, cfg.max_context as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_context, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?;
        let info = ModelInfo {
            name,
            arch: cfg.arch.clone(),
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
            max_context: cfg.max_context,
        };
        Ok(Self {
            info,
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            cache: (0..cfg.n_layers).map(|_| KvCache::new(2)).collect(),
            cfg,
            w,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin),
            RopeStyle::Half => candle_nn::rotary_emb::rope(&x, cos, sin),
        }
    }

    fn attention(
        &mut self,
        layer: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (h, kvh, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let blk = &self.w.blocks[layer];
        let q = blk.q.forward(x)?.reshape((b, n, h, hd))?.transpose(1, 2)?;
        let k = blk.k.forward(x)?.reshape((b, n, kvh, hd))?.transpose(1, 2)?;
        let v = blk.v.forward(x)?.reshape((b, n, kvh, hd))?.transpose(1, 2)?;
        let q = self.rope(&q, cos, sin)?;
        let k = self.rope(&k, cos, sin)?;
        let (k, v) = self.cache[layer].append(&k, &v.contiguous()?)?;
        let total = k.dim(2)?;

        // Grouped-query attention without copying K/V per head: the `h / kvh` query heads that
        // share one KV head are stacked as extra rows of that head's matmul.
        let groups = h / kvh;
        let q = q.reshape((b, kvh, groups * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            Some(m) => att.reshape((b, kvh, groups, n, total))?.broadcast_add(m)?.reshape((b, kvh, groups * n, total))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (b, kvh, groups * n, hd)
        let y = y.reshape((b, h, n, hd))?.transpose(1, 2)?.reshape((b, n, h * hd))?;
        blk.o.forward(&y)
    }

    fn mlp(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let blk = &self.w.blocks[layer];
        let gate = candle_nn::ops::silu(&blk.gate.forward(x)?)?;
        blk.down.forward(&(gate * blk.up.forward(x)?)?)
    }
}

impl DecoderModel for Transformer {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&mut self, input: &ForwardInput) -> Result<ForwardOutput> {
        let n = input.block_len();
        let b = input.batch;
        if n == 0 || b == 0 {
            candle_core::bail!("forward of an empty block ({b} rows × {n} tokens)");
        }
        if input.tokens.len() != b * n {
            candle_core::bail!("forward: {} tokens for {b} rows × {n} positions", input.tokens.len());
        }
        input.attention.validate(n)?;
        let cache_len = self.cache_len();
        if self.cache_batch() != 0 && self.cache_batch() != b {
            candle_core::bail!("forward with {b} rows on a cache of {} rows", self.cache_batch());
        }
        if cache_len + n > self.cfg.max_context {
            candle_core::bail!(
                "sequence of {} tokens exceeds the context of {} ({} tokens)",
                cache_len + n,
                self.info.name,
                self.cfg.max_context
            );
        }
        if let Some(&p) = input.positions.iter().find(|&&p| p >= self.cfg.max_context) {
            candle_core::bail!("position {p} is beyond the context of {} ({})", self.info.name, self.cfg.max_context);
        }

        let (cos, sin) = if input.positions.iter().enumerate().all(|(i, &p)| p == input.positions[0] + i) {
            let p0 = input.positions[0];
            (self.cos.narrow(0, p0, n)?, self.sin.narrow(0, p0, n)?)
        } else {
            let idx: Vec<u32> = input.positions.iter().map(|&p| p as u32).collect();
            let idx = Tensor::from_vec(idx, n, &self.device)?;
            (self.cos.index_select(&idx, 0)?, self.sin.index_select(&idx, 0)?)
        };
        let parents = match input.attention {
            BlockAttention::Causal => None,
            BlockAttention::Tree { parents } => Some(parents.as_slice()),
        };
        let mask = attention_mask(n, cache_len, parents, self.dtype, &self.device)?;

        let ids = Tensor::from_slice(input.tokens, (b, n), &self.device)?;
        let mut x = self.w.embed.forward(&ids)?.to_dtype(self.dtype)?;
        for layer in 0..self.cfg.n_layers {
            let h = self.w.blocks[layer].attn_norm.forward(&x)?;
            let h = self.attention(layer, &h, &cos, &sin, mask.as_ref())?;
            x = (x + h)?;
            let h = self.w.blocks[layer].mlp_norm.forward(&x)?;
            x = (&x + self.mlp(layer, &h)?)?;
        }
        let x = match input.rows {
            LogitRows::All => x,
            LogitRows::Last => x.narrow(1, n - 1, 1)?.contiguous()?,
        };
        let hidden = self.w.final_norm.forward(&x)?;
        let logits = self.lm_head(&hidden)?;
        Ok(ForwardOutput { logits, hidden })
    }

    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.w.lm_head.forward(hidden)?.to_dtype(DType::F32)
    }

    fn cache_len(&self) -> usize {
        self.cache.first().map_or(0, KvCache::len)
    }

    fn cache_batch(&self) -> usize {
        self.cache.first().map_or(0, KvCache::batch)
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.truncate(len))
    }

    fn compact_cache(&mut self, start: usize, keep: &[usize]) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.compact(start, keep))
    }

    fn reorder_cache(&mut self, rows: &[usize]) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.reorder(rows))
    }

    fn clear_cache(&mut self) {
        self.cache.iter_mut().for_each(KvCache::clear)
    }
}
