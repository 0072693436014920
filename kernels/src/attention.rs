//! Attention of a block of new tokens over the KV cache, computed so that every query row gets
//! the same bits whether its token is verified inside a block (a draft chain, a tree) or decoded
//! alone. This is what makes lossless strategies token-identical to greedy decoding, not just
//! close: batched matmuls and softmax kernels change their summation order with the number of
//! rows and the row length, and one flipped arg-max ends the equality.
//!
//! Each row visits exactly the keys it may see (the cache, then its ancestors in block order; for
//! a token decoded alone, the cache then its predecessors: the same sequence), with one fixed
//! order of operations for dot products, the softmax and the weighted sum.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Which block tokens each new token sees, besides the whole cache: a causal chain or a tree
/// (`parents[i] < i`, `None` for a root).
pub fn visible_block_rows(n: usize, parents: Option<&[Option<usize>]>) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| match parents {
            None => (0..=i).collect(),
            Some(parents) => {
                let mut chain = vec![i];
                while let Some(p) = parents[*chain.last().expect("non-empty")] {
                    chain.push(p);
                }
                chain.reverse();
                chain
            }
        })
        .collect()
}

/// `softmax(q kᵀ · scale + mask) v` for q `(b, heads, n, hd)` and k, v `(b, kv_heads, cache_len
/// + n, hd)` (the last `n` positions being the block), with grouped-query heads (`heads` a
/// multiple of `kv_heads`). f32 on the CPU only; see [`crate::attention`] for the dispatch.
pub fn exact_block_attention(q: &Tensor, k: &Tensor, v: &Tensor, cache_len: usize, visible: Vec<Vec<usize>>, scale: f32) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &ExactAttention { cache_len, visible, scale })
}

struct ExactAttention {
    cache_len: usize,
    visible: Vec<Vec<usize>>,
    scale: f32,
}

/// Strided read access to a rank-4 f32 tensor whose last dimension is contiguous.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    stride: [usize; 3],
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<(Self, [usize; 4])> {
        let data = storage.as_slice::<f32>()?;
        let dims: [usize; 4] =
            layout.dims().try_into().map_err(|_| candle_core::Error::Msg(format!("exact attention: {what} must have rank 4")))?;
        let s = layout.stride();
        if s[3] != 1 && dims[3] > 1 {
            candle_core::bail!("exact attention: {what} must be contiguous in its last dimension");
        }
        Ok((View { data, offset: layout.start_offset(), stride: [s[0], s[1], s[2]] }, dims))
    }

    fn row(&self, a: usize, b: usize, c: usize, len: usize) -> &[f32] {
        let start = self.offset + a * self.stride[0] + b * self.stride[1] + c * self.stride[2];
        &self.data[start..start + len]
    }
}

/// Dot product with one fixed order: eight running lanes, then a fixed reduction, then the tail.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

impl CustomOp3 for ExactAttention {
    fn name(&self) -> &'static str {
        "exact-block-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, [b, h, n, hd]) = View::new(qs, ql, "q")?;
        let (k, [kb, kvh, total, khd]) = View::new(ks, kl, "k")?;
        let (v, vdims) = View::new(vs, vl, "v")?;
        if kb != b || khd != hd || vdims != [kb, kvh, total, khd] || kvh == 0 || h % kvh != 0 {
            candle_core::bail!("exact attention: shapes q {:?} k {:?} v {:?} do not fit", ql.dims(), kl.dims(), vl.dims());
        }
        if total != self.cache_len + n || self.visible.len() != n {
            candle_core::bail!("exact attention: {total} keys for a cache of {} and a block of {n}", self.cache_len);
        }
        let groups = h / kvh;
        let cache_len = self.cache_len;
        let mut out = vec![0f32; b * h * n * hd];
        out.par_chunks_mut(n * hd).enumerate().for_each(|(bh, out)| {
            let (bi, hi) = (bh / h, bh % h);
            let kv = hi / groups;
            let mut scores: Vec<f32> = Vec::with_capacity(total);
            for (i, out_row) in out.chunks_mut(hd).enumerate() {
                let q_row = q.row(bi, hi, i, hd);
                let keys = (0..cache_len).chain(self.visible[i].iter().map(|&j| cache_len + j));
                scores.clear();
                scores.extend(keys.clone().map(|j| dot(q_row, k.row(bi, kv, j, hd)) * self.scale));
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                out_row.fill(0.0);
                for (&w, j) in scores.iter().zip(keys) {
                    for (o, &x) in out_row.iter_mut().zip(v.row(bi, kv, j, hd)) {
                        *o += w * x;
                    }
                }
                let inv = 1.0 / sum;
                out_row.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, n, hd))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The exact kernel against the batched matmul path: same values (up to rounding) for causal
    /// blocks and trees, grouped-query heads, and a strided (narrowed) KV cache.
    #[test]
    fn exact_kernel_matches_batched_attention() {
        let dev = Device::Cpu;
        for (h, kvh, hd) in [(9usize, 3usize, 64usize), (4, 4, 16), (12, 2, 128)] {
            for (cache_len, n) in [(0usize, 1usize), (5, 1), (18, 1), (19, 1), (20, 1), (21, 1), (37, 1), (21, 4), (100, 7)] {
                let total = cache_len + n;
                let q = Tensor::randn(0f32, 1.0, (1, h, n, hd), &dev).unwrap();
                // A cache buffer larger than what is used, narrowed like the real KV cache.
                let kbuf = Tensor::randn(0f32, 1.0, (1, kvh, total + 9, hd), &dev).unwrap();
                let vbuf = Tensor::randn(0f32, 1.0, (1, kvh, total + 9, hd), &dev).unwrap();
                let (k, v) = (kbuf.narrow(2, 0, total).unwrap(), vbuf.narrow(2, 0, total).unwrap());
                let parents: Vec<Option<usize>> = (0..n).map(|i| if i == 0 { None } else { Some((i - 1) / 2) }).collect();
                for tree in [None, Some(parents.as_slice())] {
                    let exact = crate::attention(&q, &k, &v, cache_len, tree, true).unwrap();
                    let batched = crate::attention(&q, &k, &v, cache_len, tree, false).unwrap();
                    let diff: f32 = (exact - batched).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
                    assert!(diff < 1e-4, "h {h} kvh {kvh} hd {hd} cache {cache_len} n {n} tree {}: diff {diff}", tree.is_some());
                }
            }
        }
    }
}
