//! The llama-family decoder (`llama`, `qwen2`): pre-norm blocks of grouped-query attention with
//! rotary embeddings and a SwiGLU MLP. Qwen2 differs from llama only by biases on q/k/v, and GGUF
//! llama files store q/k in the interleaved rotary layout, so both live in this one file, in
//! candle-transformers' plain style, but with what strategies need and candle's quantized models
//! lack: explicit positions, tree attention masks, logits for every row, hidden states, and a KV
//! cache that can be truncated, compacted and reordered.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use decodebench_kernels::attention;
use decodebench_kernels::packed::PackedWeight;
use decodebench_strategies::{BlockAttention, CacheLedger, DecoderModel, ForwardInput, ForwardOutput, LogitRows, ModelInfo};

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
    /// A Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K weight repacked for the project's kernels (when they are on at load).
    packed: Option<Arc<PackedWeight>>,
}

impl Linear {
    /// Repacks a Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K weight for the project's kernels when they are on
    /// ([`own_kernels_default`]); the repacking is exact (see `decodebench_kernels::packed`).
    /// A Q6_K weight keeps its ggml layout too, which calls of one row read.
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Result<Self> {
        let packed = match &weight {
            QMatMul::QTensor(t) if own_kernels_default() && PackedWeight::packs(t.dtype()) && decodebench_kernels::qmatmul::covers(t) => {
                let &[n, k] = t.shape().dims() else { unreachable!("covers() checks rank 2") };
                PackedWeight::new(t.dtype(), &t.data()?, n, k)?.map(Arc::new)
            }
            _ => None,
        };
        Ok(Self { weight, bias, packed })
    }

    /// The first `n` rows (output features) of the weight, as a weight of its own (repacked
    /// as [`Self::new`] does). A ggml-quantized weight's rows are whole blocks, so they are a
    /// prefix of its bytes.
    pub fn first_rows(&self, n: usize) -> Result<Self> {
        let weight = match &self.weight {
            QMatMul::QTensor(t) => {
                let &[rows, k] = t.shape().dims() else { candle_core::bail!("weight of shape {:?} is not a matrix", t.shape()) };
                let dtype = t.dtype();
                if n > rows || !k.is_multiple_of(dtype.block_size()) {
                    candle_core::bail!("first {n} rows of a ({rows}, {k}) {dtype:?} weight");
                }
                let bytes = n * k / dtype.block_size() * dtype.type_size();
                let data = t.data()?;
                let storage =
                    candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(data[..bytes].to_vec()), &t.device(), dtype)?;
                QMatMul::QTensor(Arc::new(candle_core::quantized::QTensor::new(storage, (n, k))?))
            }
            QMatMul::Tensor(t) => QMatMul::Tensor(t.narrow(0, 0, n)?.contiguous()?),
            QMatMul::TensorF16(t) => QMatMul::TensorF16(t.narrow(0, 0, n)?.contiguous()?),
        };
        let bias = self.bias.as_ref().map(|b| b.narrow(0, 0, n)).transpose()?;
        Self::new(weight, bias)
    }

    /// Whether the weight was repacked at load (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, for the project's kernels).
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// `exact_rows`: every row must get the bits it would get alone (see [`Transformer::forward`]).
    /// Uses the project's quantized kernels where they cover the weight (see [`Self::forward_with`]).
    pub fn forward(&self, x: &Tensor, exact_rows: bool) -> Result<Tensor> {
        self.forward_with(x, own_kernels_default(), exact_rows)
    }

    /// `own_kernels`: weights that `decodebench_kernels::qmatmul` covers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
    /// Q6_K on the CPU) run there, whose rows never depend on the block (so `exact_rows` costs
    /// nothing). Exception: a block that need not be row-exact (a prompt) of more than
    /// [`CANDLE_BATCH_ROWS`] rows of a Q6_K weight takes candle's repacked tile kernel, faster
    /// for many rows. Other weights, and all of them with `own_kernels` off, take candle's matmul,
    /// one row at a time when `exact_rows` asks for it and candle's batched kernel for the type is
    /// not row-exact.
    pub fn forward_with(&self, x: &Tensor, own_kernels: bool, exact_rows: bool) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
        let own = match self.own_kernel(rows, own_kernels, exact_rows) {
            Some(OwnKernel::Packed(p)) => Some(decodebench_kernels::qmatmul::qmatmul_packed(p, x)?),
            // `None` where the kernels do not cover the weight.
            Some(OwnKernel::Ggml(t)) => decodebench_kernels::qmatmul::qmatmul(t, x)?,
            None => None,
        };
        let y = match own {
            Some(y) => y,
            None => self.candle_forward(x, exact_rows)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// [`Self::forward_with`] of every weight on the same input, with the bits each gives alone.
    /// Where the project's kernels run all of them (see [`Self::forward_with`]), they run as
    /// one fused product (`decodebench_kernels::qmatmul::qmatmul_fused`: the activations
    /// quantized once, one parallel region); otherwise one at a time.
    pub fn forward_fused(linears: &[&Linear], x: &Tensor, own_kernels: bool, exact_rows: bool) -> Result<Vec<Tensor>> {
        use decodebench_kernels::qmatmul::{covers, qmatmul_fused, Operand};
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
        // Fused products take packed weights and Q6_K on ggml's layout.
        let kernels: Option<Vec<OwnKernel>> = linears
            .iter()
            .map(|l| l.own_kernel(rows, own_kernels, exact_rows))
            .map(|k| {
                k.filter(|k| {
                    matches!(k, OwnKernel::Packed(_)) || matches!(k, OwnKernel::Ggml(t) if t.dtype() == GgmlDType::Q6K && covers(t))
                })
            })
            .collect();
        let kernels = match kernels {
            Some(kernels) if x.device().is_cpu() && linears.len() >= 2 => kernels,
            _ => return linears.iter().map(|l| l.forward_with(x, own_kernels, exact_rows)).collect(),
        };
        // The bytes of the weights on ggml's layout, which the operands borrow.
        let ggml = kernels
            .iter()
            .map(|k| match k {
                OwnKernel::Packed(_) => Ok(None),
                OwnKernel::Ggml(t) => Ok(Some((t.data()?, t.shape().dims()[0]))),
            })
            .collect::<Result<Vec<_>>>()?;
        let ops: Vec<Operand> = kernels
            .iter()
            .zip(&ggml)
            .map(|(k, g)| match (k, g) {
                (OwnKernel::Packed(p), _) => Operand::Packed(p),
                (OwnKernel::Ggml(_), Some((data, n))) => Operand::Q6kGgml { data, n: *n },
                (OwnKernel::Ggml(_), None) => unreachable!("read above"),
            })
            .collect();
        let ys = qmatmul_fused(&ops, x)?;
        linears
            .iter()
            .zip(ys)
            .map(|(l, y)| match &l.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            })
            .collect()
    }

    /// The project's kernel that runs this weight in a call of `rows` rows (`None`: candle's),
    /// the one choice [`Self::forward_with`] and [`Self::forward_fused`] share: with the kernels
    /// on, a quantized weight runs on them unless the call need not be row-exact and candle's
    /// batched kernel is the faster one for its type ([`prefers_candle_batched`]); its packed
    /// copy where that serves this many rows, else its ggml layout.
    fn own_kernel(&self, rows: usize, own_kernels: bool, exact_rows: bool) -> Option<OwnKernel<'_>> {
        match (&self.weight, &self.packed) {
            (QMatMul::QTensor(t), packed) if own_kernels && (exact_rows || !prefers_candle_batched(t.dtype(), rows)) => {
                Some(match packed {
                    Some(p) if p.serves(rows) => OwnKernel::Packed(p),
                    _ => OwnKernel::Ggml(t),
                })
            }
            _ => None,
        }
    }

    fn candle_forward(&self, x: &Tensor, exact_rows: bool) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
        if exact_rows && rows > 1 && x.device().is_cpu() && !self.candle_rows_are_independent() {
            // One matmul per row: the multi-row kernel of this weight type sums in another order.
            let dims = x.dims().to_vec();
            let flat = x.flatten_to(dims.len() - 2)?.contiguous()?;
            let flat = flat.reshape((rows, dims[dims.len() - 1]))?;
            let outs = (0..rows).map(|r| self.weight.forward(&flat.narrow(0, r, 1)?)).collect::<Result<Vec<_>>>()?;
            let y = Tensor::cat(&outs, 0)?;
            let mut out_dims = dims;
            *out_dims.last_mut().expect("rank >= 1") = y.dim(1)?;
            y.reshape(out_dims)
        } else {
            self.weight.forward(x)
        }
    }

    /// Whether [`Self::forward`] gives each row the same bits as a one-row call would, in
    /// batched (not row-exact) mode too: with the project's kernels on, true for the types they
    /// cover and always run (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K; a long Q6_K block goes to candle's tile kernel, see
    /// [`Self::forward_with`]); with them off, true for the quantized types whose candle kernel
    /// does per-row integer dot products.
    pub fn rows_are_independent(&self) -> bool {
        match &self.weight {
            QMatMul::QTensor(t) if own_kernels_default() && self.own_kernel_covers() => t.dtype() != GgmlDType::Q6K,
            _ => self.candle_rows_are_independent(),
        }
    }

    /// Whether the project's quantized kernels run this weight (when they are on).
    pub fn own_kernel_covers(&self) -> bool {
        matches!(&self.weight, QMatMul::QTensor(t) if decodebench_kernels::qmatmul::covers(t))
    }

    /// Whether candle's CPU matmul for this weight gives each row the same bits as a one-row
    /// matmul would (checked by the `row_consistency` test): true for the quantized types whose
    /// multi-row kernel does per-row integer dot products; false for Q6_K (a repacked kernel for
    /// several rows, `vec_dot` for one) and for dense weights (gemm blocks by row count).
    pub fn candle_rows_are_independent(&self) -> bool {
        match &self.weight {
            QMatMul::QTensor(t) => t.dtype() != GgmlDType::Q6K,
            QMatMul::Tensor(_) | QMatMul::TensorF16(_) => false,
        }
    }
}

/// A weight's path through the project's kernels ([`Linear::own_kernel`]).
enum OwnKernel<'a> {
    /// Its repacked copy.
    Packed(&'a PackedWeight),
    /// Its bytes on ggml's layout (`decodebench_kernels::qmatmul::qmatmul`, which declines the
    /// types it does not cover).
    Ggml(&'a QTensor),
}

/// Rows above which a block that need not be row-exact (a prompt) runs Q6_K weights on candle's
/// repacked tile kernel (faster than the project's from about 16 rows on, see
/// `benches/kernels.rs`) rather than the project's. Q4_K runs packed at every size (as fast as
/// candle's at 64 rows), so a prompt and what follows it share that arithmetic.
pub const CANDLE_BATCH_ROWS: usize = 16;

fn prefers_candle_batched(dtype: GgmlDType, rows: usize) -> bool {
    dtype == GgmlDType::Q6K && rows > CANDLE_BATCH_ROWS
}

/// Environment variable: `candle` runs every matmul on candle's kernels (the project's own
/// quantized kernels off), for comparisons.
pub const KERNELS_ENV: &str = "DECODEBENCH_KERNELS";

/// Whether models use the project's quantized matmul kernels: yes unless `DECODEBENCH_KERNELS=candle`.
///
/// Their 8-bit activations keep f32 block scales where candle's keep f16, so the two differ in
/// the last bits and, on near-ties, in the arg-max (SmolLM2 puts "The" and "La" 0.1 apart after
/// "What is the capital of France?"). `own_kernels_accuracy` checks that they are as close to the
/// dequantized model as candle's kernels are.
pub fn own_kernels_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var(KERNELS_ENV).as_deref(), Ok("candle")))
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

/// What every layer needs to know about the block being run.
struct BlockShape<'a> {
    cache_len: usize,
    parents: Option<&'a [Option<usize>]>,
    /// Row-exact arithmetic (see [`Transformer::forward`]).
    exact: bool,
    /// The project's quantized matmul kernels where they cover a weight.
    own_kernels: bool,
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
    /// Row-exact arithmetic after the prompt (see [`Transformer::forward`]); on by default.
    row_exact: bool,
    /// The project's quantized matmul kernels (see [`Linear::forward_with`]); on by default.
    own_kernels: bool,
    /// The vocabulary projection cut to the first ids ([`DecoderModel::set_logit_vocab`]),
    /// kept when the limit is lifted: strategies set it per generation, and cutting costs a
    /// copy and a repack of the head.
    limited_head: Option<(usize, Linear)>,
    /// Whether the forward's logits are limited to [`Self::limited_head`]'s ids.
    logits_limited: bool,
    /// What the cache holds, token by token, and whether a prefill may keep what a prompt
    /// starts with ([`DecoderModel::set_prefix_reuse`]).
    ledger: CacheLedger,
}

impl Transformer {
    /// Logits (f32) of `hidden` through a vocabulary projection: the whole `lm_head` or its cut
    /// copy. Exact rows always: the Medusa heads project single rows and blocks alike.
    fn project(&self, head: &Linear, hidden: &Tensor) -> Result<Tensor> {
        head.forward_with(hidden, self.uses_own_kernels(), true)?.to_dtype(DType::F32)
    }

    /// The vocabulary projection as a dense f32 `(vocab, hidden)` matrix on the CPU: what
    /// training Medusa heads differentiates through (the quantized kernels have no backward).
    pub fn lm_head_weight(&self) -> Result<Tensor> {
        let w = match &self.w.lm_head.weight {
            QMatMul::QTensor(t) => t.dequantize(&Device::Cpu)?,
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_device(&Device::Cpu)?,
        };
        w.to_dtype(DType::F32)
    }

    pub fn new(name: String, cfg: TransformerConfig, w: TransformerWeights, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, cfg.max_context as u32, device)?.to_dtype(DType::F32)?.reshape((cfg.max_context, 1))?;
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
            row_exact: true,
            own_kernels: own_kernels_default(),
            limited_head: None,
            logits_limited: false,
            ledger: CacheLedger::default(),
            cfg,
            w,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Turns row-exact arithmetic off (every block takes candle's batched kernels, as
    /// candle-transformers' models do, and the project's quantized kernels are not used) or back
    /// on. Off, lossless strategies are no longer guaranteed to reproduce greedy decoding token
    /// for token.
    pub fn set_row_exact(&mut self, on: bool) {
        self.row_exact = on;
    }

    /// Turns the project's quantized matmul kernels on or off (off: candle's kernels, one row at
    /// a time where candle's batched kernel is not row-exact). Both are row-exact.
    pub fn set_own_kernels(&mut self, on: bool) {
        self.own_kernels = on;
    }

    /// Whether matmuls run on the project's quantized kernels where they cover the weight.
    pub fn uses_own_kernels(&self) -> bool {
        self.own_kernels && self.row_exact
    }

    /// Keeps only the first `n` blocks (the final norm and output stay): a cheap early-exit
    /// draft of the same model, as in self-speculative decoding.
    pub fn truncate_layers(&mut self, n: usize) {
        let n = n.min(self.cfg.n_layers);
        self.w.blocks.truncate(n);
        self.cache.truncate(n);
        self.cfg.n_layers = n;
        self.info.name = format!("{} (first {n} layers)", self.info.name);
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin),
            RopeStyle::Half => candle_nn::rotary_emb::rope(&x, cos, sin),
        }
    }

    fn attention(&mut self, layer: usize, x: &Tensor, rope: &(Tensor, Tensor), block: &BlockShape) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (h, kvh, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let blk = &self.w.blocks[layer];
        let (exact, own) = (block.exact, block.own_kernels);
        let [q, k, v]: [Tensor; 3] =
            Linear::forward_fused(&[&blk.q, &blk.k, &blk.v], x, own, exact)?.try_into().expect("one output per weight");
        let q = q.reshape((b, n, h, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, n, kvh, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, n, kvh, hd))?.transpose(1, 2)?;
        let q = self.rope(&q, &rope.0, &rope.1)?;
        let k = self.rope(&k, &rope.0, &rope.1)?;
        let (k, v) = self.cache[layer].append(&k, &v.contiguous()?)?;
        let y = attention(&q, &k, &v, block.cache_len, block.parents, exact)?;
        let y = y.transpose(1, 2)?.reshape((b, n, h * hd))?;
        blk.o.forward_with(&y, own, exact)
    }

    fn mlp(&self, layer: usize, x: &Tensor, block: &BlockShape) -> Result<Tensor> {
        let blk = &self.w.blocks[layer];
        let (exact, own) = (block.exact, block.own_kernels);
        let [gate, up]: [Tensor; 2] =
            Linear::forward_fused(&[&blk.gate, &blk.up], x, own, exact)?.try_into().expect("one output per weight");
        blk.down.forward_with(&(candle_nn::ops::silu(&gate)? * up)?, own, exact)
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
        input.validate()?;
        let n = input.block_len();
        let b = input.batch;
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
        // A block on an empty cache is a prompt prefill, which every strategy runs identically:
        // it may take the fastest batched kernels. Every later block (a decoded token, a draft
        // chain, a tree) computes each row exactly as if its token were decoded alone, so that a
        // lossless strategy reproduces greedy decoding bit for bit.
        let block = BlockShape { cache_len, parents, exact: self.row_exact && cache_len > 0, own_kernels: self.uses_own_kernels() };
        let rope = (cos, sin);

        let ids = Tensor::from_slice(input.tokens, (b, n), &self.device)?;
        let mut x = self.w.embed.forward(&ids)?.to_dtype(self.dtype)?;
        for layer in 0..self.cfg.n_layers {
            let h = self.w.blocks[layer].attn_norm.forward(&x)?;
            let h = self.attention(layer, &h, &rope, &block)?;
            x = (x + h)?;
            let h = self.w.blocks[layer].mlp_norm.forward(&x)?;
            x = (&x + self.mlp(layer, &h, &block)?)?;
        }
        let x = match input.rows {
            LogitRows::All => x,
            LogitRows::Last => x.narrow(1, n - 1, 1)?.contiguous()?,
        };
        let hidden = self.w.final_norm.forward(&x)?;
        let head = match &self.limited_head {
            Some((_, head)) if self.logits_limited => head,
            _ => &self.w.lm_head,
        };
        let logits = self.project(head, &hidden)?;
        self.ledger.appended(input);
        Ok(ForwardOutput { logits, hidden })
    }

    fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        self.ledger.reusable_prefix(prompt)
    }

    fn set_prefix_reuse(&mut self, on: bool) -> Result<()> {
        self.ledger.set_reuse(on);
        Ok(())
    }

    fn set_logit_vocab(&mut self, n: Option<usize>) -> Result<()> {
        let n = n.filter(|&n| n < self.info.vocab_size);
        match n {
            Some(0) => candle_core::bail!("{}: logits limited to 0 token ids", self.info.name),
            Some(n) if self.limited_head.as_ref().is_none_or(|(m, _)| *m != n) => {
                self.limited_head = Some((n, self.w.lm_head.first_rows(n)?));
            }
            _ => {}
        }
        self.logits_limited = n.is_some();
        Ok(())
    }

    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.project(&self.w.lm_head, hidden)
    }

    fn cache_len(&self) -> usize {
        self.cache.first().map_or(0, KvCache::len)
    }

    fn cache_batch(&self) -> usize {
        self.cache.first().map_or(0, KvCache::batch)
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.truncate(len))?;
        self.ledger.truncated(len);
        Ok(())
    }

    fn compact_cache(&mut self, start: usize, keep: &[usize]) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.compact(start, keep))?;
        self.ledger.compacted(start, keep);
        Ok(())
    }

    fn reorder_cache(&mut self, rows: &[usize]) -> Result<()> {
        self.cache.iter_mut().try_for_each(|c| c.reorder(rows))?;
        self.ledger.reordered(rows);
        Ok(())
    }

    fn clear_cache(&mut self) {
        self.ledger.cleared();
        self.cache.iter_mut().for_each(KvCache::clear)
    }
}
