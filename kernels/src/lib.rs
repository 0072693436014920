//! Hot custom ops of decodebench.
//!
//! - [`attention()`]: attention of a block of new tokens (causal chain or tree) over the KV cache;
//!   on the CPU in f32 an exact kernel whose rows do not depend on the block around them, on
//!   other devices and dtypes candle's matmul + [`attention_mask`] + softmax.
//! - [`attention_mask`]: the additive mask of one block forward.
//! - [`compact_rows`]: moving the accepted positions of a block into place in a KV buffer.
//! - [`qmatmul`]: quantized matmuls (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) whose rows do not depend on the
//!   block around them, with AVX2 / AVX-512 VNNI (256- and 512-bit) paths picked at run time and
//!   a scalar fallback; [`packed`] their interleaved layouts.
//! - `cuda` (feature `cuda`): driver, runtime and device facts (name, compute capability,
//!   memory) that `decodebench doctor` reports.

mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
mod kv;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod mask;
pub mod packed;
pub mod qmatmul;

pub use attention::{exact_block_attention, visible_block_rows};
pub use kv::compact_rows;
pub use mask::attention_mask;

use candle_core::{DType, Result, Tensor};

/// Attention of `n` new tokens: q `(b, heads, n, hd)`, k and v `(b, kv_heads, cache_len + n,
/// hd)` whose last `n` positions are the block's own. `parents` gives a tree (None: causal).
/// Returns `(b, heads, n, hd)`.
///
/// `exact` asks for per-row arithmetic independent of the block (CPU, f32); where that kernel
/// does not apply, the batched path runs, whose rows may differ in the last bits.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, cache_len: usize, parents: Option<&[Option<usize>]>, exact: bool) -> Result<Tensor> {
    let (b, h, n, hd) = q.dims4()?;
    let kvh = k.dim(1)?;
    let total = k.dim(2)?;
    let scale = 1.0 / (hd as f64).sqrt();
    if exact && q.device().is_cpu() && q.dtype() == DType::F32 {
        let visible = visible_block_rows(n, parents);
        return exact_block_attention(&q.contiguous()?, k, v, cache_len, visible, scale as f32);
    }
    // Grouped-query attention without copying K/V per head: the `h / kvh` query heads that share
    // one KV head are stacked as extra rows of that head's matmul.
    let groups = h / kvh;
    let q = q.contiguous()?.reshape((b, kvh, groups * n, hd))?;
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = match attention_mask(n, cache_len, parents, att.dtype(), att.device())? {
        Some(m) => att.reshape((b, kvh, groups, n, total))?.broadcast_add(&m)?.reshape((b, kvh, groups * n, total))?,
        None => att,
    };
    let att = softmax_last_dim(&att)?;
    att.matmul(v)?.reshape((b, h, n, hd))
}

/// Softmax over the last dimension in f32 (for f16/bf16 inputs too), back in the input dtype.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let max = x.max_keepdim(candle_core::D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(candle_core::D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}
