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
    q.apply_op3_no_bwd(k, v, &ExactAttention { cache_len, visible, scale, fast: use_fma() })
}

struct ExactAttention {
    cache_len: usize,
    visible: Vec<Vec<usize>>,
    scale: f32,
    /// AVX2 + FMA dot products and weighted sums ([`use_fma`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fast: bool,
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
/// (The reference arithmetic, and the path of CPUs without AVX2 + FMA.)
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

/// `out += w · x`, element by element.
#[inline]
fn axpy(out: &mut [f32], w: f32, x: &[f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o += w * x;
    }
}

/// AVX2 + FMA forms of [`dot`] and [`axpy`]: the same fixed order for every row (two 8-lane
/// chains, then one fixed reduction, then the tail), so a row's bits still do not depend on the
/// block; they differ from the portable forms only in rounding (fused multiply-adds).
#[cfg(target_arch = "x86_64")]
mod fma {
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2 and FMA; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(s0, s1);
        let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
        while i < n {
            sum = a[i].mul_add(b[i], sum);
            i += 1;
        }
        sum
    }

    /// `scores[i] = dot(q, row(keys[i]))` for every key, with [`dot`]'s operations per key (so
    /// its bits), four keys at a time: their eight independent chains hide the FMA latency that
    /// one key's two chains leave exposed, and each `q` load serves four keys.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every `row(j)` holds `q.len()` values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn dots<'a>(q: &[f32], keys: &[usize], row: impl Fn(usize) -> &'a [f32], scores: &mut Vec<f32>) {
        let n = q.len();
        let pq = q.as_ptr();
        let mut quads = keys.chunks_exact(4);
        for quad in &mut quads {
            let p: [*const f32; 4] = std::array::from_fn(|c| row(quad[c]).as_ptr());
            let (mut s0, mut s1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            let mut i = 0;
            while i + 16 <= n {
                let (q0, q1) = (_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(pq.add(i + 8)));
                for c in 0..4 {
                    s0[c] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(p[c].add(i)), s0[c]);
                    s1[c] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(p[c].add(i + 8)), s1[c]);
                }
                i += 16;
            }
            if i + 8 <= n {
                let q0 = _mm256_loadu_ps(pq.add(i));
                for c in 0..4 {
                    s0[c] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(p[c].add(i)), s0[c]);
                }
                i += 8;
            }
            for c in 0..4 {
                let s = _mm256_add_ps(s0[c], s1[c]);
                let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
                let mut sum = _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
                for (t, &qt) in q.iter().enumerate().skip(i) {
                    // `mul_add` on f32 is the FMA instruction here (the feature is enabled).
                    sum = qt.mul_add(*p[c].add(t), sum);
                }
                scores.push(sum);
            }
        }
        for &j in quads.remainder() {
            scores.push(dot(q, row(j)));
        }
    }

    /// `out = Σ_i w[i] · row(keys[i])`, with the operations of `out.fill(0)` then `axpy` per
    /// key in order (so its bits), 64 values at a time: the running sums stay in eight
    /// registers across all the keys instead of a load and a store of `out` per key.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `w.len() == keys.len()`; every `row(j)` holds `out.len()` values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn weighted_sum<'a>(out: &mut [f32], w: &[f32], keys: &[usize], row: impl Fn(usize) -> &'a [f32]) {
        let n = out.len();
        let po = out.as_mut_ptr();
        let vector_end = n - n % 8;
        let mut c = 0;
        while c < vector_end {
            // Up to eight registers of eight values.
            let regs = ((vector_end - c) / 8).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (&w, &j) in w.iter().zip(keys) {
                let (wv, x) = (_mm256_set1_ps(w), row(j).as_ptr().add(c));
                for (r, acc) in acc.iter_mut().enumerate().take(regs) {
                    *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(8 * r)), *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate().take(regs) {
                _mm256_storeu_ps(po.add(c + 8 * r), *acc);
            }
            c += 8 * regs;
        }
        for (t, out) in out.iter_mut().enumerate().skip(vector_end) {
            let mut o = 0f32;
            for (&w, &j) in w.iter().zip(keys) {
                o = w.mul_add(row(j)[t], o);
            }
            *out = o;
        }
    }

    /// `out += w · x` (what [`weighted_sum`] does key after key; the tests' reference for it).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out.len() == x.len()`.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn axpy(out: &mut [f32], w: f32, x: &[f32]) {
        let n = out.len();
        let (po, px, wv) = (out.as_mut_ptr(), x.as_ptr(), _mm256_set1_ps(w));
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(po.add(i), _mm256_fmadd_ps(wv, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(po.add(i))));
            i += 8;
        }
        while i < n {
            out[i] = w.mul_add(x[i], out[i]);
            i += 1;
        }
    }
}

/// Whether [`fma::dot`] and [`fma::axpy`] run: whenever the quantized matmuls take a SIMD path
/// (both need AVX2 + FMA), so `DECODEBENCH_SIMD=scalar` puts the whole forward on the portable
/// arithmetic. Decided once per process, so every row of a run takes the same arithmetic.
fn use_fma() -> bool {
    crate::qmatmul::selected_path() != crate::qmatmul::SimdPath::Scalar
}

impl ExactAttention {
    /// Query head `hi` of batch `bi` (its `n` rows) against KV head `kv`, into `out` `(n, hd)`.
    fn head(&self, q: &View, k: &View, v: &View, idx: (usize, usize, usize), hd: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.fast {
            // SAFETY: `use_fma` found AVX2 + FMA.
            return unsafe { self.head_fma(q, k, v, idx, hd, out) };
        }
        self.head_with(
            q,
            k,
            v,
            idx,
            hd,
            out,
            |q, keys, row, scores| scores.extend(keys.iter().map(|&j| dot(q, row(j)))),
            |out, w, keys, row| {
                out.fill(0.0);
                for (&w, &j) in w.iter().zip(keys) {
                    axpy(out, w, row(j));
                }
            },
        )
    }

    /// [`Self::head`] compiled for AVX2 + FMA, with [`fma::dots`] (four keys at a time) and
    /// [`fma::weighted_sum`] (the output row held in registers) inlined: the operations, and so
    /// the bits, of [`fma::dot`] per key and of [`fma::axpy`] key after key.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_fma(&self, q: &View, k: &View, v: &View, idx: (usize, usize, usize), hd: usize, out: &mut [f32]) {
        // SAFETY: the features are this function's; rows and outputs hold hd values.
        self.head_with(
            q,
            k,
            v,
            idx,
            hd,
            out,
            |q, keys, row, scores| unsafe { fma::dots(q, keys, row, scores) },
            |out, w, keys, row| unsafe { fma::weighted_sum(out, w, keys, row) },
        )
    }

    /// The head's arithmetic with the given scoring (`scores(q_row, keys, k_row, scores)`
    /// appends each key's dot product) and weighting (`weigh(out_row, weights, keys, v_row)`
    /// writes `Σ w · v_row`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn head_with<'a>(
        &self,
        q: &View,
        k: &'a View,
        v: &'a View,
        (bi, hi, kv): (usize, usize, usize),
        hd: usize,
        out: &mut [f32],
        score: impl Fn(&[f32], &[usize], &dyn Fn(usize) -> &'a [f32], &mut Vec<f32>),
        weigh: impl Fn(&mut [f32], &[f32], &[usize], &dyn Fn(usize) -> &'a [f32]),
    ) {
        let cache_len = self.cache_len;
        let total = cache_len + self.visible.iter().map(|v| v.len()).max().unwrap_or(0);
        let mut scores: Vec<f32> = Vec::with_capacity(total);
        let mut keys: Vec<usize> = Vec::with_capacity(total);
        let k_row = |j: usize| k.row(bi, kv, j, hd);
        let v_row = |j: usize| v.row(bi, kv, j, hd);
        for (i, out_row) in out.chunks_mut(hd).enumerate() {
            let q_row = q.row(bi, hi, i, hd);
            keys.clear();
            keys.extend((0..cache_len).chain(self.visible[i].iter().map(|&j| cache_len + j)));
            scores.clear();
            score(q_row, &keys, &k_row, &mut scores);
            scores.iter_mut().for_each(|s| *s *= self.scale);
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            weigh(out_row, &scores, &keys, &v_row);
            let inv = 1.0 / sum;
            out_row.iter_mut().for_each(|o| *o *= inv);
        }
    }
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
        let mut out = vec![0f32; b * h * n * hd];
        let out_ptr = crate::qmatmul::SyncPtr(out.as_mut_ptr());
        // On candle's persistent pool, as the matmuls: a second pool (rayon's) would put more
        // threads than cores on the CPU while the first one's workers spin between ops.
        candle_core::utils::barrier_pool().execute_chunked(b * h, |range| {
            for bh in range {
                let (bi, hi) = (bh / h, bh % h);
                // SAFETY: item bh alone writes rows bh·n..(bh + 1)·n of `out`.
                let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(bh * n * hd), n * hd) };
                self.head(&q, &k, &v, (bi, hi, hi / groups), hd, out);
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
        for (h, kvh, hd) in [(9usize, 3usize, 64usize), (4, 4, 16), (12, 2, 128), (3, 1, 13), (2, 2, 100)] {
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

    /// A xorshift generator (no dependency): uniform in [-1, 1).
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Both forms of the dot product and of `out += w · x` against f64 references, on ragged
    /// lengths (not multiples of the 8 or 16 lanes), on every path this CPU runs.
    #[test]
    fn dot_and_axpy_match_the_reference_on_every_path() {
        let mut next = uniform(0x9e37_79b9_7f4a_7c15);
        let mut worst = [0f64; 4];
        for len in (1..=41).chain([64, 100, 128, 131]) {
            let a: Vec<f32> = (0..len).map(|_| next()).collect();
            let b: Vec<f32> = (0..len).map(|_| next()).collect();
            let w = next();
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let axpy_ref: Vec<f64> = b.iter().zip(&a).map(|(&o, &x)| o as f64 + w as f64 * x as f64).collect();
            let mut paths: Vec<(f32, Vec<f32>)> = Vec::new();
            let mut out = b.clone();
            super::axpy(&mut out, w, &a);
            paths.push((super::dot(&a, &b), out));
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut out = b.clone();
                // SAFETY: the features were just checked; equal lengths.
                unsafe { super::fma::axpy(&mut out, w, &a) };
                paths.push((unsafe { super::fma::dot(&a, &b) }, out));
            }
            for (p, (d, out)) in paths.iter().enumerate() {
                let dot_err = (*d as f64 - exact).abs();
                let axpy_err = out.iter().zip(&axpy_ref).map(|(&o, &r)| (o as f64 - r).abs()).fold(0.0, f64::max);
                assert!(dot_err < 1e-5 * (len as f64).sqrt().max(1.0), "path {p} len {len}: dot {d} against {exact}");
                assert!(axpy_err < 1e-6, "path {p} len {len}: axpy off by {axpy_err}");
                worst[2 * p] = worst[2 * p].max(dot_err);
                worst[2 * p + 1] = worst[2 * p + 1].max(axpy_err);
            }
        }
        eprintln!(
            "max abs diff against f64: portable dot {:.2e}, axpy {:.2e}; fma dot {:.2e}, axpy {:.2e}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }

    /// The blocked forms give, bit for bit, what they replace: `fma::dots` the per-key
    /// `fma::dot`, `fma::weighted_sum` a zeroed row plus `fma::axpy` key after key, for head
    /// sizes with and without a tail and key counts on both sides of the groups of four.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn blocked_fma_forms_give_the_bits_of_the_per_key_forms() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("no AVX2 + FMA on this CPU: nothing to compare");
            return;
        }
        let mut next = uniform(0x2545_f491_4f6c_dd1d);
        for hd in [5usize, 13, 64, 72, 100, 128, 131, 200] {
            let rows: Vec<Vec<f32>> = (0..41).map(|_| (0..hd).map(|_| next()).collect()).collect();
            let q: Vec<f32> = (0..hd).map(|_| next()).collect();
            for nkeys in [1usize, 2, 3, 4, 5, 7, 8, 9, 37] {
                // Keys out of order and repeated, as a tree's ancestors need not be.
                let keys: Vec<usize> = (0..nkeys).map(|i| (i * 7 + 3) % rows.len()).collect();
                let w: Vec<f32> = (0..nkeys).map(|_| next().abs()).collect();
                let mut scores = Vec::new();
                // SAFETY: the features were checked above; every row holds hd values.
                unsafe { super::fma::dots(&q, &keys, |j| rows[j].as_slice(), &mut scores) };
                let per_key: Vec<f32> = keys.iter().map(|&j| unsafe { super::fma::dot(&q, &rows[j]) }).collect();
                assert_eq!(
                    scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    per_key.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    "dots: hd {hd}, {nkeys} keys"
                );
                let mut out = vec![f32::NAN; hd];
                unsafe { super::fma::weighted_sum(&mut out, &w, &keys, |j| rows[j].as_slice()) };
                let mut reference = vec![0f32; hd];
                for (&w, &j) in w.iter().zip(&keys) {
                    unsafe { super::fma::axpy(&mut reference, w, &rows[j]) };
                }
                assert_eq!(
                    out.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    reference.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    "weighted sum: hd {hd}, {nkeys} keys"
                );
            }
        }
    }
}
