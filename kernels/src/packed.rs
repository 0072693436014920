//! Q4_K weights repacked for the CPU: eight weight rows (output columns) interleaved
//! four bytes at a time, so that one 256-bit integer dot product (`vpdpbusd`, or `maddubs` +
//! `madd`) against four activation bytes broadcast to every lane gives eight columns' partial
//! sums at once. No horizontal reduction is left inside the loop, and each weight byte is loaded
//! once per tile of activation rows; this is what makes a block of 2..64 tokens cost little more
//! than one.
//!
//! The repacking is exact (the same values, scales and minimums, rearranged) and done once at
//! load. Arithmetic, for column `c` and activation row `r`, in this order on every
//! path, per super-block and sub-block `j` of 32 values (`d_a`: the activation block's scale):
//!
//! - `S = Σ q_i · a_i` (exact in i32); `acc = fma(S, (d · sc_j) · d_a, acc)`, then
//!   `acc = fma(−dmin · m_j, d_a · Σa, acc)`; `d · sc_j` and `dmin · m_j` are exact in f32 (an
//!   f16 times a 6-bit integer);
//! - the output is `acc`.
//!
//! Each row runs this one sequence whatever the number of rows in the call, so rows stay
//! bit-identical between a token decoded alone and the same token verified in a block.

use candle_core::Result;
use half::f16;

use candle_core::quantized::GgmlDType;

use crate::qmatmul::{scales_mins_k4, QuantizedActs, SimdPath, SyncPtr, QK};

/// Weight rows interleaved per packed group.
pub const GROUP_COLS: usize = 8;
/// Bytes of one ggml Q4_K super-block (256 values).
const Q4K_BYTES: usize = 144;
/// Q4_K unit (eight columns × one super-block): eight f16 `d`, eight f16 `dmin`, the 6-bit
/// scales and minimums as bytes (`[sub-block][column]`), then the 4-bit values.
const UNIT: usize = 16 + 16 + 64 + 64 + 1024;
const SC: usize = 32;
const MN: usize = 96;
const QS: usize = 160;
/// A weight in one of the interleaved layouts.
///
/// Only Q4_K has one. Q6_K stays in ggml's layout: an interleaved Q6_K kernel written the same
/// way read its weights at 13–23 GB/s for one row against 35–40 GB/s for the per-row kernel in
/// `qmatmul` (its 6-bit values cost three times the unpacking), on a Zen 4.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Q4K(PackedQ4K),
}

impl PackedWeight {
    /// Repacks `n` rows of ggml blocks of a type these kernels pack (Q4_K); `None` for others.
    pub fn new(dtype: GgmlDType, w: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        Ok(match dtype {
            GgmlDType::Q4K => Some(Self::Q4K(PackedQ4K::new(w, n, k)?)),
            _ => None,
        })
    }

    /// Whether [`Self::new`] packs this type.
    pub fn packs(dtype: GgmlDType) -> bool {
        dtype == GgmlDType::Q4K
    }

    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::Q4K(p) => (p.n, p.k),
        }
    }

    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Q4K(p) => p.matmul_quantized_on(path, acts, out),
        }
    }
}

/// Runs `group(g)` for every group of eight columns, on candle's thread pool when there are several.
fn for_each_group(n: usize, group: impl Fn(usize) + Sync) {
    let groups = n.div_ceil(GROUP_COLS);
    if groups == 1 {
        group(0);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| range.for_each(&group));
    }
}

fn check_call(n: usize, k: usize, path: SimdPath, acts: &QuantizedActs, out: &[f32]) -> Result<()> {
    if acts.nb != k / QK || out.len() != acts.m * n {
        candle_core::bail!("packed matmul: {} activation blocks per row, {} outputs for ({}, {n})", acts.nb, out.len(), acts.m);
    }
    if !path.is_available() {
        candle_core::bail!("quantized matmul: this CPU has no {} path", path.name());
    }
    Ok(())
}

/// A Q4_K weight `(n, k)` in the interleaved layout.
///
/// Values: for sub-block pair `p` (sub-blocks `2p` in the low nibbles, `2p + 1` in the high ones,
/// as in ggml's layout), group of four values `g` and column `c`, the four bytes at
/// `QS + 256·p + 32·g + 4·c` are bytes `32·p + 4·g ..+4` of column `c`'s ggml values.
#[derive(Debug, Clone)]
pub struct PackedQ4K {
    pub n: usize,
    pub k: usize,
    data: Vec<u8>,
}

impl PackedQ4K {
    /// Repacks `n` rows of ggml Q4_K blocks for rows of `k` values (a multiple of 256).
    pub fn new(w: &[u8], n: usize, k: usize) -> Result<Self> {
        if k == 0 || !k.is_multiple_of(256) || w.len() != n * (k / 256) * Q4K_BYTES {
            candle_core::bail!("Q4_K repack: {} bytes for ({n}, {k})", w.len());
        }
        let nsb = k / 256;
        let groups = n.div_ceil(GROUP_COLS);
        // Columns past `n` in the last group stay zero (d = 0: they add exact zeros, and are
        // never written out).
        let mut data = vec![0u8; groups * nsb * UNIT];
        for (unit_index, unit) in data.chunks_exact_mut(UNIT).enumerate() {
            let (g, sb) = (unit_index / nsb, unit_index % nsb);
            for c in 0..GROUP_COLS {
                let col = g * GROUP_COLS + c;
                if col >= n {
                    break;
                }
                let blk = &w[(col * nsb + sb) * Q4K_BYTES..][..Q4K_BYTES];
                unit[2 * c..2 * c + 2].copy_from_slice(&blk[0..2]);
                unit[16 + 2 * c..16 + 2 * c + 2].copy_from_slice(&blk[2..4]);
                let (sc, mn) = scales_mins_k4(blk[4..16].try_into().expect("12 bytes"));
                for j in 0..8 {
                    unit[SC + 8 * j + c] = sc[j];
                    unit[MN + 8 * j + c] = mn[j];
                }
                for p in 0..4 {
                    for q in 0..8 {
                        let dst = QS + 256 * p + 32 * q + 4 * c;
                        unit[dst..dst + 4].copy_from_slice(&blk[16 + 32 * p + 4 * q..16 + 32 * p + 4 * q + 4]);
                    }
                }
            }
        }
        Ok(Self { n, k, data })
    }

    /// `out (m, n) = acts · Wᵀ` on `path`, split over groups of columns on candle's thread pool.
    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        check_call(self.n, self.k, path, acts, out)?;
        let (n, nsb, data, out_ptr) = (self.n, self.k / 256, &self.data, SyncPtr(out.as_mut_ptr()));
        for_each_group(n, |g| {
            let cols = GROUP_COLS.min(n - g * GROUP_COLS);
            // SAFETY: columns of group g belong to this item alone; its nsb units are in `data`.
            unsafe {
                let (p, o) = (data.as_ptr().add(g * nsb * UNIT), out_ptr.get().add(g * GROUP_COLS));
                match path {
                    SimdPath::Scalar => scalar_group(p, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2::group(p, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni => vnni::group(p, nsb, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        });
        Ok(())
    }
}

/// The reference arithmetic, one column and one row at a time.
///
/// # Safety
/// `p` points at `nsb` units of one group; `out` at its first column of an `(m, n)` output.
unsafe fn scalar_group(p: *const u8, nsb: usize, acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
    let units = std::slice::from_raw_parts(p, nsb * UNIT);
    for r in 0..acts.m {
        for c in 0..cols {
            let mut acc = 0f32;
            for (sb, u) in units.chunks_exact(UNIT).enumerate() {
                let d = f16::from_le_bytes([u[2 * c], u[2 * c + 1]]).to_f32();
                let dmin = f16::from_le_bytes([u[16 + 2 * c], u[16 + 2 * c + 1]]).to_f32();
                for j in 0..8 {
                    let b = r * acts.nbp + sb * 8 + j;
                    let a = &acts.qs[b * QK..(b + 1) * QK];
                    let mut s = 0i32;
                    for q in 0..8 {
                        for t in 0..4 {
                            let byte = u[QS + 256 * (j / 2) + 32 * q + 4 * c + t];
                            let v = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                            s += v as i32 * a[4 * q + t] as i32;
                        }
                    }
                    let dw = d * u[SC + 8 * j + c] as f32;
                    let mw = dmin * u[MN + 8 * j + c] as f32;
                    acc = (s as f32).mul_add(dw * acts.d[b], acc);
                    acc = (-mw).mul_add(acts.sa[b], acc);
                }
            }
            *out.add(r * n + c) = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_acc_avx2(
    acc: core::arch::x86_64::__m256i,
    u: core::arch::x86_64::__m256i,
    s: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    // Nibbles (≤ 15) × i8 pairs fit i16; then pairs to i32.
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot_acc_vnni(
    acc: core::arch::x86_64::__m256i,
    u: core::arch::x86_64::__m256i,
    s: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    core::arch::x86_64::_mm256_dpbusd_epi32(acc, u, s)
}

/// The x86 kernels, per path: `$dot_acc` the accumulating u8 × i8 dot product and `$max_rows` the
/// activation rows per register tile.
#[cfg(target_arch = "x86_64")]
macro_rules! packed_path {
    ($name:ident, $features:literal, $dot_acc:ident, $max_rows:literal) => {
        mod $name {
            use super::*;
            use core::arch::x86_64::*;

            const MAX_R: usize = $max_rows;

            /// Rows r0..r0+R against one group's `nsb` units.
            #[target_feature(enable = $features)]
            unsafe fn rows<const R: usize>(
                p: *const u8,
                nsb: usize,
                acts: &QuantizedActs,
                r0: usize,
                out: *mut f32,
                n: usize,
                cols: usize,
            ) {
                let mut acc = [_mm256_setzero_ps(); R];
                let mask = _mm256_set1_epi8(0x0f);
                let (qs, ad, asum) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sa.as_ptr());
                for sb in 0..nsb {
                    let u = p.add(sb * UNIT);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(u as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(u.add(16) as *const __m128i));
                    for j in 0..8 {
                        let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(u.add(SC + 8 * j) as *const __m128i)));
                        let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(u.add(MN + 8 * j) as *const __m128i)));
                        let dw = _mm256_mul_ps(d, sc);
                        let mw = _mm256_mul_ps(dmin, mn);
                        // Sub-block j's values for the eight columns, unpacked once for all rows.
                        let q = u.add(QS + 256 * (j / 2));
                        let mut wv = [_mm256_setzero_si256(); 8];
                        for (g, wv) in wv.iter_mut().enumerate() {
                            let raw = _mm256_loadu_si256(q.add(32 * g) as *const __m256i);
                            *wv =
                                if j % 2 == 0 { _mm256_and_si256(raw, mask) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask) };
                        }
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let b = (r0 + r) * acts.nbp + sb * 8 + j;
                            let a = qs.add(b * QK);
                            // Four activation bytes to every lane: lane c gets column c's sum. Two
                            // chains halve the dependency on the dot product's latency (integer
                            // sums: the order does not change the result).
                            let a4 = |g: usize| _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * g) as *const i32));
                            let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                            for g in (0..8).step_by(2) {
                                even = $dot_acc(even, wv[g], a4(g));
                                odd = $dot_acc(odd, wv[g + 1], a4(g + 1));
                            }
                            let isum = _mm256_add_epi32(even, odd);
                            let da = _mm256_set1_ps(*ad.add(b));
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, da), *acc);
                            *acc = _mm256_fnmadd_ps(mw, _mm256_set1_ps(*asum.add(b)), *acc);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let mut y = [0f32; GROUP_COLS];
                    _mm256_storeu_ps(y.as_mut_ptr(), *acc);
                    std::ptr::copy_nonoverlapping(y.as_ptr(), out.add((r0 + r) * n), cols);
                }
            }

            /// # Safety
            /// As `scalar_group`; the CPU has this path's features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn group(p: *const u8, nsb: usize, acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
                let mut r0 = 0;
                while r0 < acts.m {
                    let nr = (acts.m - r0).min(MAX_R);
                    match nr {
                        1 => rows::<1>(p, nsb, acts, r0, out, n, cols),
                        2 if MAX_R >= 2 => rows::<2>(p, nsb, acts, r0, out, n, cols),
                        3 if MAX_R >= 3 => rows::<3>(p, nsb, acts, r0, out, n, cols),
                        4 if MAX_R >= 4 => rows::<4>(p, nsb, acts, r0, out, n, cols),
                        5 if MAX_R >= 5 => rows::<5>(p, nsb, acts, r0, out, n, cols),
                        6 if MAX_R >= 6 => rows::<6>(p, nsb, acts, r0, out, n, cols),
                        7 if MAX_R >= 7 => rows::<7>(p, nsb, acts, r0, out, n, cols),
                        8 if MAX_R >= 8 => rows::<8>(p, nsb, acts, r0, out, n, cols),
                        _ => unreachable!("row tiles hold 1..={MAX_R} rows"),
                    }
                    r0 += nr;
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
packed_path!(avx2, "avx2,fma,f16c", dot_acc_avx2, 4);
#[cfg(target_arch = "x86_64")]
packed_path!(vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_acc_vnni, 8);
