//! Weights repacked for the CPU: eight weight rows (output columns) interleaved four bytes at a
//! time, so that one 256-bit integer dot product (`vpdpbusd`, or `maddubs` + `madd`) against
//! four activation bytes broadcast to every lane gives eight columns' partial sums at once. No
//! horizontal reduction is left inside the loop, and each weight byte is loaded once per tile of
//! activation rows; this is what makes a block of 2..64 tokens cost little more than one.
//!
//! - [`PackedQ4K`]: Q4_K, for every call (its arithmetic is below).
//! - [`PackedBlocks`]: Q4_1 and Q8_0, for every call, with the bits of the kernel on ggml's
//!   layout in `qmatmul`, see its docs.
//! - [`PackedQ6K`]: Q6_K, for calls of [`Q6K_PACKED_MIN_ROWS`] rows or more, with the bits of
//!   the kernel on ggml's layout in `qmatmul` (which one row takes), see its docs.
//!
//! The repacking is exact (the same values, scales and minimums, rearranged) and done once at
//! load. Q4_K arithmetic, for column `c` and activation row `r`, in this order on every
//! path, per super-block and sub-block `j` of 32 values (`d_a`: the activation block's scale):
//!
//! - `S = Σ q_i · a_i` (exact in i32); `acc = fma(S, (d · sc_j) · d_a, acc)`, then
//!   `acc = fma(−dmin · m_j, d_a · Σa, acc)`; `d · sc_j` and `dmin · m_j` are exact in f32 (an
//!   f16 times a 6-bit integer);
//! - the output is `acc`.
//!
//! Each row runs one sequence whatever the number of rows in the call, so rows stay
//! bit-identical between a token decoded alone and the same token verified in a block.

use candle_core::Result;
use half::f16;

use candle_core::quantized::GgmlDType;

use crate::qmatmul::{hsum8, scales_mins_k4, QuantizedActs, SimdPath, SyncPtr, QK};

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
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Q4K(PackedQ4K),
    Q6K(PackedQ6K),
    Blocks(PackedBlocks),
}

impl PackedWeight {
    /// Repacks `n` rows of ggml blocks of a type these kernels pack (Q4_1, Q8_0, Q4_K, Q6_K);
    /// `None` for others.
    pub fn new(dtype: GgmlDType, w: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        Ok(match dtype {
            GgmlDType::Q4K => Some(Self::Q4K(PackedQ4K::new(w, n, k)?)),
            GgmlDType::Q6K => Some(Self::Q6K(PackedQ6K::new(w, n, k)?)),
            GgmlDType::Q4_1 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q41, w, n, k)?)),
            GgmlDType::Q8_0 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q80, w, n, k)?)),
            _ => None,
        })
    }

    /// Whether [`Self::new`] packs this type.
    pub fn packs(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0 | GgmlDType::Q4K | GgmlDType::Q6K)
    }

    /// Whether the packed layout is the faster one for a call with `m` activation rows: always
    /// for Q4_1, Q8_0 and Q4_K; for Q6_K from [`Q6K_PACKED_MIN_ROWS`] rows (fewer take the
    /// weight's ggml layout in `qmatmul`, with the same bits).
    pub fn serves(&self, m: usize) -> bool {
        match self {
            Self::Q4K(_) | Self::Blocks(_) => true,
            Self::Q6K(_) => m >= Q6K_PACKED_MIN_ROWS,
        }
    }

    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::Q4K(p) => (p.n, p.k),
            Self::Q6K(p) => (p.n, p.k),
            Self::Blocks(p) => (p.n, p.k),
        }
    }

    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Q4K(p) => p.matmul_quantized_on(path, acts, out),
            Self::Q6K(p) => p.matmul_quantized_on(path, acts, out),
            Self::Blocks(p) => p.matmul_quantized_on(path, acts, out),
        }
    }
}

/// Runs `group(chunks, out, cols)` for every group of eight columns of an `(m, n)` output, on
/// candle's thread pool when there are several: `chunks` points at the group's `group_bytes` of
/// `data`, `out` at its first column, `cols` is how many of its columns exist.
fn for_each_group(n: usize, data: &[u8], group_bytes: usize, out: &mut [f32], group: impl Fn(*const u8, *mut f32, usize) + Sync) {
    debug_assert_eq!(data.len(), n.div_ceil(GROUP_COLS) * group_bytes);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let one = |g: usize| {
        // SAFETY: group g's bytes are within `data`, and its columns of every output row belong to
        // this call of `group` alone.
        let (chunks, first) = unsafe { (data.as_ptr().add(g * group_bytes), out_ptr.get().add(g * GROUP_COLS)) };
        group(chunks, first, GROUP_COLS.min(n - g * GROUP_COLS))
    };
    let groups = n.div_ceil(GROUP_COLS);
    if groups == 1 {
        one(0);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| range.for_each(&one));
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
        let (n, nsb) = (self.n, self.k / 256);
        for_each_group(n, &self.data, nsb * UNIT, out, |p, o, cols| {
            // SAFETY: `p` is one group's nsb units, `o` its first output column.
            unsafe {
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

/// Units ahead of the one being read that the kernels prefetch. With many activation rows the
/// kernels spend long enough on each unit that the hardware prefetcher falls behind and the
/// weight stream stops overlapping the arithmetic (8 rows of a 8960x1536 Q4_K weight: 470 µs
/// from cache, 898 µs from memory, without prefetching).
#[cfg(target_arch = "x86_64")]
const PREFETCH_UNITS: usize = 4;
/// Activation rows from which the kernels prefetch. With fewer, they spend little enough on each
/// unit that the hardware prefetcher keeps up, and the prefetches only cost (Q4_K at 4 rows:
/// 5-10% slower with them; 5-25% faster with them from 8 rows, Q6_K 25-30% at 8 and 16).
#[cfg(target_arch = "x86_64")]
const PREFETCH_MIN_ROWS: usize = 8;

/// Prefetches the `bytes` that lie [`PREFETCH_UNITS`] units of `bytes` past `unit`; the address
/// may run past the weight's end (a prefetch does not fault), so it is formed without `add`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead(unit: *const u8, bytes: usize) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = unit.wrapping_add(PREFETCH_UNITS * bytes);
    for line in (0..bytes).step_by(64) {
        // SAFETY: prefetching is a hint; it reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8) };
    }
}

/// `h(v)` lane by lane: `((v_0 + v_4) + (v_2 + v_6)) + ((v_1 + v_5) + (v_3 + v_7))`, the
/// reduction of `qmatmul`'s eight per-block lanes (`hsum8`), here one vector per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn hsum8_lanes(v: &[core::arch::x86_64::__m256; 8]) -> core::arch::x86_64::__m256 {
    use core::arch::x86_64::*;
    _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6])),
        _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7])),
    )
}

/// Stores the first `cols` lanes of `y` (one group's columns of one output row) at `out`.
///
/// # Safety
/// `out` is valid for `cols` (≤ 8) writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn store_cols(y: core::arch::x86_64::__m256, out: *mut f32, cols: usize) {
    let mut ys = [0f32; GROUP_COLS];
    core::arch::x86_64::_mm256_storeu_ps(ys.as_mut_ptr(), y);
    std::ptr::copy_nonoverlapping(ys.as_ptr(), out, cols);
}

/// Runs `$rows::<R>(args.., r0)` over the activation rows `0..$m` in tiles of at most `$max_r`.
#[cfg(target_arch = "x86_64")]
macro_rules! row_tiles {
    ($max_r:expr, $m:expr, $rows:ident($($arg:expr),*)) => {{
        let mut r0 = 0;
        while r0 < $m {
            let nr = ($m - r0).min($max_r);
            match nr {
                1 => $rows::<1>($($arg,)* r0),
                2 if $max_r >= 2 => $rows::<2>($($arg,)* r0),
                3 if $max_r >= 3 => $rows::<3>($($arg,)* r0),
                4 if $max_r >= 4 => $rows::<4>($($arg,)* r0),
                5 if $max_r >= 5 => $rows::<5>($($arg,)* r0),
                6 if $max_r >= 6 => $rows::<6>($($arg,)* r0),
                7 if $max_r >= 7 => $rows::<7>($($arg,)* r0),
                8 if $max_r >= 8 => $rows::<8>($($arg,)* r0),
                _ => unreachable!("row tiles hold 1..={} rows", $max_r),
            }
            r0 += nr;
        }
    }};
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
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                let mut acc = [_mm256_setzero_ps(); R];
                let mask = _mm256_set1_epi8(0x0f);
                let (qs, ad, asum) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sa.as_ptr());
                for sb in 0..nsb {
                    let u = p.add(sb * UNIT);
                    if acts.m >= PREFETCH_MIN_ROWS {
                        prefetch_ahead(u, UNIT);
                    }
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
                    store_cols(*acc, out.add((r0 + r) * n), cols);
                }
            }

            /// # Safety
            /// As `scalar_group`; the CPU has this path's features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn group(p: *const u8, nsb: usize, acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
                row_tiles!(MAX_R, acts.m, rows(p, nsb, acts, out, n, cols))
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
packed_path!(avx2, "avx2,fma,f16c", dot_acc_avx2, 4);
#[cfg(target_arch = "x86_64")]
packed_path!(vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_acc_vnni, 8);

/// Activation rows from which a Q6_K weight runs packed ([`PackedWeight::serves`]). Below it
/// the ggml-layout kernel in `qmatmul` is faster: one row is bound by memory, and that layout
/// reads 6.6 bits per weight against 10 here. From it on, the unpacking this layout does once at
/// load (the per-row kernel redoes it for every tile of rows) and the horizontal sums it avoids
/// win (`benches/kernels.rs`, `Q6_K/*/m*`). Both give the same bits.
pub const Q6K_PACKED_MIN_ROWS: usize = 2;
/// Bytes of one ggml Q6_K super-block (256 values).
const Q6K_BYTES: usize = 210;
/// Q6_K chunk: eight columns × one 32-value block `j` of one super-block. The values `q − 32` as
/// i8 (`[group of four values][column][4]`, 256 bytes), the scales of the block's two 16-value
/// halves (`[half][column]`, i8), the offset correction `C` per column (i32, see
/// [`PackedQ6K`]), then the super-block's `d` per column (f16).
const Q6K_CHUNK: usize = 256 + 16 + 32 + 16;
const Q6K_SC: usize = 256;
const Q6K_CORR: usize = 272;
const Q6K_D: usize = 304;

/// A Q6_K weight `(n, k)` in an interleaved layout, for calls of several activation rows.
///
/// It gives the bits of `qmatmul`'s kernel on ggml's layout. That kernel, for a weight row and
/// an activation row, sums block `b` (32 values) exactly, `S_b = Σ_h sc_h · Σ (q − 32) · a` over
/// its two halves `h`, then accumulates `acc_j = fma(S_b, d · d_a, acc_j)` in lane `j = b mod 8`
/// of eight f32 lanes, super-block after super-block, and returns
/// `((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))`. Here the same
/// eight accumulators are eight vectors whose lanes are the eight columns of a group, so the
/// final sum is lane-wise. The integer dot products (`vpdpbusd`, or `maddubs` + `madd`) take
/// unsigned × signed bytes, so they run on `a + 128` against the signed `q − 32`:
/// `S_b = Σ_h sc_h · Σ (a + 128)(q − 32) + C` with `C = −128 · Σ_h sc_h · Σ (q − 32)`, stored per
/// block and column. Chunks are ordered `[group][j][super-block]`, the loop's own order.
#[derive(Debug, Clone)]
pub struct PackedQ6K {
    pub n: usize,
    pub k: usize,
    data: Vec<u8>,
}

impl PackedQ6K {
    /// Repacks `n` rows of ggml Q6_K blocks for rows of `k` values (a multiple of 256).
    pub fn new(w: &[u8], n: usize, k: usize) -> Result<Self> {
        if k == 0 || !k.is_multiple_of(256) || w.len() != n * (k / 256) * Q6K_BYTES {
            candle_core::bail!("Q6_K repack: {} bytes for ({n}, {k})", w.len());
        }
        let nsb = k / 256;
        let groups = n.div_ceil(GROUP_COLS);
        // Columns past `n` in the last group stay zero (values, scales and d: exact zeros).
        let mut data = vec![0u8; groups * 8 * nsb * Q6K_CHUNK];
        for (chunk_index, chunk) in data.chunks_exact_mut(Q6K_CHUNK).enumerate() {
            let (g, j, sb) = (chunk_index / (8 * nsb), chunk_index / nsb % 8, chunk_index % nsb);
            let (h, t) = (j / 4, j % 4);
            for c in 0..GROUP_COLS {
                let col = g * GROUP_COLS + c;
                if col >= n {
                    break;
                }
                let blk = &w[(col * nsb + sb) * Q6K_BYTES..][..Q6K_BYTES];
                let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
                let mut corr = 0i32;
                for half in 0..2 {
                    let mut sum = 0i32;
                    for l in 16 * half..16 * half + 16 {
                        // ggml's layout: block j = 4h + t takes the low (t < 2) or high nibbles of
                        // ql[64h + 32(t & 1) + l] and bits 2t..2t+2 of qh[32h + l].
                        let low = ql[64 * h + 32 * (t & 1) + l];
                        let low = if t < 2 { low & 0x0f } else { low >> 4 };
                        let high = (qh[32 * h + l] >> (2 * t)) & 3;
                        let q = (low | (high << 4)) as i32 - 32;
                        chunk[32 * (l / 4) + 4 * c + l % 4] = q as i8 as u8;
                        sum += q;
                    }
                    chunk[Q6K_SC + 8 * half + c] = sc[2 * j + half];
                    corr += sc[2 * j + half] as i8 as i32 * sum;
                }
                chunk[Q6K_CORR + 4 * c..Q6K_CORR + 4 * c + 4].copy_from_slice(&(-128 * corr).to_le_bytes());
                chunk[Q6K_D + 2 * c..Q6K_D + 2 * c + 2].copy_from_slice(&blk[208..210]);
            }
        }
        Ok(Self { n, k, data })
    }

    /// `out (m, n) = acts · Wᵀ` on `path`, split over groups of columns on candle's thread pool.
    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        check_call(self.n, self.k, path, acts, out)?;
        // The activations as unsigned bytes a + 128, for the u8 × i8 products.
        let au: Vec<u8> = if path == SimdPath::Scalar { Vec::new() } else { acts.qs.iter().map(|&q| q as u8 ^ 0x80).collect() };
        let (n, nsb) = (self.n, self.k / 256);
        for_each_group(n, &self.data, 8 * nsb * Q6K_CHUNK, out, |p, o, cols| {
            // SAFETY: `p` is one group's 8 · nsb chunks, `o` its first output column.
            unsafe {
                match path {
                    SimdPath::Scalar => scalar_group_q6k(p, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2_q6k::group(p, nsb, &au, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni => vnni_q6k::group(p, nsb, &au, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        });
        Ok(())
    }
}

/// The reference arithmetic on the packed layout, one column and one row at a time, with the
/// signed activations directly (no `a + 128`, no correction `C`).
///
/// # Safety
/// `p` points at the `8 · nsb` chunks of one group; `out` at its first column of an `(m, n)` output.
unsafe fn scalar_group_q6k(p: *const u8, nsb: usize, acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
    let chunks = std::slice::from_raw_parts(p, 8 * nsb * Q6K_CHUNK);
    for r in 0..acts.m {
        for c in 0..cols {
            let mut acc = [0f32; 8];
            for (j, acc) in acc.iter_mut().enumerate() {
                for sb in 0..nsb {
                    let ch = &chunks[(j * nsb + sb) * Q6K_CHUNK..][..Q6K_CHUNK];
                    let b = r * acts.nbp + sb * 8 + j;
                    let a = &acts.qs[b * QK..(b + 1) * QK];
                    let half = |h: usize| -> i32 {
                        let s: i32 = (16 * h..16 * h + 16).map(|l| ch[32 * (l / 4) + 4 * c + l % 4] as i8 as i32 * a[l] as i32).sum();
                        s * ch[Q6K_SC + 8 * h + c] as i8 as i32
                    };
                    let d = f16::from_le_bytes([ch[Q6K_D + 2 * c], ch[Q6K_D + 2 * c + 1]]).to_f32();
                    *acc = ((half(0) + half(1)) as f32).mul_add(d * acts.d[b], *acc);
                }
            }
            *out.add(r * n + c) = hsum8(acc);
        }
    }
}

/// One 16-value half on AVX2: `sc · Σ (a + 128)(q − 32)` per column, `sc16` the scales as i16
/// pairs (`maddubs` pairs stay within i16: 2 · 255 · 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn q6k_half_avx2(
    w: &[core::arch::x86_64::__m256i],
    a: *const u8,
    _sc: core::arch::x86_64::__m256i,
    sc16: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    let a4 = |g: usize| _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * g) as *const i32));
    let p = |g: usize| _mm256_madd_epi16(_mm256_maddubs_epi16(a4(g), w[g]), sc16);
    _mm256_add_epi32(_mm256_add_epi32(p(0), p(1)), _mm256_add_epi32(p(2), p(3)))
}

/// One 16-value half on AVX-512 VNNI: four `vpdpbusd`, then one multiply by the scales.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn q6k_half_vnni(
    w: &[core::arch::x86_64::__m256i],
    a: *const u8,
    sc: core::arch::x86_64::__m256i,
    _sc16: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    let a4 = |g: usize| _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * g) as *const i32));
    let mut s = _mm256_setzero_si256();
    for (g, &w) in w.iter().enumerate().take(4) {
        s = _mm256_dpbusd_epi32(s, a4(g), w);
    }
    _mm256_mullo_epi32(s, sc)
}

/// The packed Q6_K kernels, per path: `$half` one half's scaled sum, `$max_rows` the activation
/// rows per register tile.
#[cfg(target_arch = "x86_64")]
macro_rules! packed_q6k_path {
    ($name:ident, $features:literal, $half:ident, $max_rows:literal) => {
        mod $name {
            use super::*;
            use core::arch::x86_64::*;

            const MAX_R: usize = $max_rows;

            /// Rows r0..r0+R against one group's chunks.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn rows<const R: usize>(
                p: *const u8,
                nsb: usize,
                au: &[u8],
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                let mut parts = [[_mm256_setzero_ps(); 8]; R];
                let low16 = _mm256_set1_epi32(0xffff);
                for j in 0..8 {
                    let mut acc = [_mm256_setzero_ps(); R];
                    for sb in 0..nsb {
                        let ch = p.add((j * nsb + sb) * Q6K_CHUNK);
                        if acts.m >= PREFETCH_MIN_ROWS {
                            prefetch_ahead(ch, Q6K_CHUNK);
                        }
                        let mut w = [_mm256_setzero_si256(); 8];
                        for (g, w) in w.iter_mut().enumerate() {
                            *w = _mm256_loadu_si256(ch.add(32 * g) as *const __m256i);
                        }
                        let sc = |h: usize| _mm256_cvtepi8_epi32(_mm_loadl_epi64(ch.add(Q6K_SC + 8 * h) as *const __m128i));
                        let (sc0, sc1) = (sc(0), sc(1));
                        // The same scales as i16 pairs (for `madd`).
                        let pairs = |s: __m256i| _mm256_or_si256(_mm256_and_si256(s, low16), _mm256_slli_epi32::<16>(s));
                        let (sc0p, sc1p) = (pairs(sc0), pairs(sc1));
                        let corr = _mm256_loadu_si256(ch.add(Q6K_CORR) as *const __m256i);
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(ch.add(Q6K_D) as *const __m128i));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let b = (r0 + r) * acts.nbp + sb * 8 + j;
                            let a = au.as_ptr().add(b * QK);
                            let s = _mm256_add_epi32(
                                _mm256_add_epi32($half(&w[..4], a, sc0, sc0p), $half(&w[4..], a.add(16), sc1, sc1p)),
                                corr,
                            );
                            let da = _mm256_set1_ps(*acts.d.get_unchecked(b));
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, da), *acc);
                        }
                    }
                    for (part, acc) in parts.iter_mut().zip(acc) {
                        part[j] = acc;
                    }
                }
                for (r, v) in parts.iter().enumerate() {
                    store_cols(hsum8_lanes(v), out.add((r0 + r) * n), cols);
                }
            }

            /// # Safety
            /// As `scalar_group_q6k`; `au` holds the activations plus 128; the CPU has this
            /// path's features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn group(p: *const u8, nsb: usize, au: &[u8], acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
                row_tiles!(MAX_R, acts.m, rows(p, nsb, au, acts, out, n, cols))
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
packed_q6k_path!(avx2_q6k, "avx2,fma,f16c", q6k_half_avx2, 4);
#[cfg(target_arch = "x86_64")]
packed_q6k_path!(vnni_q6k, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", q6k_half_vnni, 8);

/// A 32-value block type in the interleaved layout of [`PackedBlocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// Chunk: the blocks' nibble bytes as in ggml (value `i` in the low nibble of byte `i`, value
    /// `i + 16` in the high one), `[group of four bytes][column][4]` (128 bytes), then `d` and
    /// `m` per column (f16). Same size as ggml's.
    Q41,
    /// Chunk: the values (`[group of four][column][4]`, 256 bytes), then `d` per column (f16).
    Q80,
}

impl BlockFormat {
    /// Bytes of one ggml block.
    const fn ggml_bytes(self) -> usize {
        match self {
            Self::Q41 => 20,
            Self::Q80 => 34,
        }
    }

    /// Bytes of one chunk (eight columns × one block).
    const fn chunk(self) -> usize {
        self.values() + 16 * self.scales()
    }

    /// Bytes of values in a chunk; the f16 `d` (and Q4_1's `m`) per column follow.
    const fn values(self) -> usize {
        match self {
            Self::Q41 => 128,
            Self::Q80 => 256,
        }
    }

    /// f16 scales per column and block: `d`, and Q4_1's `m`.
    const fn scales(self) -> usize {
        match self {
            Self::Q41 => 2,
            Self::Q80 => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Q41 => "Q4_1",
            Self::Q80 => "Q8_0",
        }
    }
}

/// A Q4_1 or Q8_0 weight `(n, k)` in an interleaved layout.
///
/// It gives the bits of `qmatmul`'s kernel on ggml's layout. That kernel, for a weight row and
/// an activation row, accumulates block `b` in lane `j = b mod 8` of eight f32 lanes,
/// `acc_j = fma(S_b, d · d_a, acc_j)` (`S_b` the exact integer `Σ q · a`), for Q4_1 also
/// `mins_j = fma(m, d_a · Σa, mins_j)`, and returns `h(acc)` (`+ h(mins)`) with
/// `h(v) = ((v_0 + v_4) + (v_2 + v_6)) + ((v_1 + v_5) + (v_3 + v_7))`. Here the lanes of a
/// vector are the eight columns of a group, the accumulators are per `j`, and chunks are ordered
/// `[group][j][b / 8]`, so that the loop keeps only one `j` live. Q8_0's u8 × i8 dot products
/// take `|w|` against the activations with `w`'s sign (`vpsignb`), as ggml does: the same exact
/// integer, with `maddubs` pairs within i16 (2 · 128 · 127).
#[derive(Debug, Clone)]
pub struct PackedBlocks {
    pub format: BlockFormat,
    pub n: usize,
    pub k: usize,
    data: Vec<u8>,
}

/// Blocks `b < nb` with `b mod 8 < j`: where lane `j`'s chunks start within a group.
fn lane_start(nb: usize, j: usize) -> usize {
    (nb / 8) * j + j.min(nb % 8)
}

impl PackedBlocks {
    /// Repacks `n` rows of ggml blocks of `format` for rows of `k` values (a multiple of 32).
    pub fn new(format: BlockFormat, w: &[u8], n: usize, k: usize) -> Result<Self> {
        if k == 0 || !k.is_multiple_of(QK) || w.len() != n * (k / QK) * format.ggml_bytes() {
            candle_core::bail!("{} repack: {} bytes for ({n}, {k})", format.name(), w.len());
        }
        let (nb, bytes, chunk_bytes, values) = (k / QK, format.ggml_bytes(), format.chunk(), format.values());
        let groups = n.div_ceil(GROUP_COLS);
        // Columns past `n` in the last group stay zero (zero scales: exact zeros, never written out).
        let mut data = vec![0u8; groups * nb * chunk_bytes];
        for g in 0..groups {
            for b in 0..nb {
                let at = (g * nb + lane_start(nb, b % 8) + b / 8) * chunk_bytes;
                let chunk = &mut data[at..at + chunk_bytes];
                for c in 0..GROUP_COLS.min(n - g * GROUP_COLS) {
                    let blk = &w[((g * GROUP_COLS + c) * nb + b) * bytes..][..bytes];
                    // ggml's block: the f16 scales, then the value bytes.
                    let (scales, qs) = blk.split_at(2 * format.scales());
                    for (q, four) in qs.chunks_exact(4).enumerate() {
                        chunk[32 * q + 4 * c..32 * q + 4 * c + 4].copy_from_slice(four);
                    }
                    for (i, scale) in scales.chunks_exact(2).enumerate() {
                        chunk[values + 16 * i + 2 * c..values + 16 * i + 2 * c + 2].copy_from_slice(scale);
                    }
                }
            }
        }
        Ok(Self { format, n, k, data })
    }

    /// `out (m, n) = acts · Wᵀ` on `path`, split over groups of columns on candle's thread pool.
    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &QuantizedActs, out: &mut [f32]) -> Result<()> {
        check_call(self.n, self.k, path, acts, out)?;
        let (n, nb, format) = (self.n, self.k / QK, self.format);
        for_each_group(n, &self.data, nb * format.chunk(), out, |p, o, cols| {
            // SAFETY: `p` is one group's nb chunks, `o` its first output column.
            unsafe {
                match path {
                    SimdPath::Scalar => scalar_group_blocks(format, p, nb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2_blocks::group(format, p, nb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni => vnni_blocks::group(format, p, nb, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        });
        Ok(())
    }
}

/// The reference arithmetic on the packed layout, one column and one row at a time.
///
/// # Safety
/// `p` points at the `nb` chunks of one group; `out` at its first column of an `(m, n)` output.
unsafe fn scalar_group_blocks(format: BlockFormat, p: *const u8, nb: usize, acts: &QuantizedActs, out: *mut f32, n: usize, cols: usize) {
    let (chunk_bytes, values) = (format.chunk(), format.values());
    let chunks = std::slice::from_raw_parts(p, nb * chunk_bytes);
    let f16_at = |ch: &[u8], at: usize| f16::from_le_bytes([ch[at], ch[at + 1]]).to_f32();
    for r in 0..acts.m {
        for c in 0..cols {
            let (mut acc, mut mins) = ([0f32; 8], [0f32; 8]);
            for b in 0..nb {
                let j = b % 8;
                let ch = &chunks[(lane_start(nb, j) + b / 8) * chunk_bytes..][..chunk_bytes];
                let i = r * acts.nbp + b;
                let a = &acts.qs[i * QK..(i + 1) * QK];
                let byte = |l: usize| ch[32 * (l / 4) + 4 * c + l % 4];
                let s: i32 = match format {
                    BlockFormat::Q41 => {
                        (0..16).map(|l| (byte(l) & 0x0f) as i32 * a[l] as i32 + (byte(l) >> 4) as i32 * a[l + 16] as i32).sum()
                    }
                    BlockFormat::Q80 => (0..QK).map(|l| byte(l) as i8 as i32 * a[l] as i32).sum(),
                };
                acc[j] = (s as f32).mul_add(f16_at(ch, values + 2 * c) * acts.d[i], acc[j]);
                if format == BlockFormat::Q41 {
                    mins[j] = f16_at(ch, values + 16 + 2 * c).mul_add(acts.sa[i], mins[j]);
                }
            }
            *out.add(r * n + c) = match format {
                BlockFormat::Q41 => hsum8(acc) + hsum8(mins),
                BlockFormat::Q80 => hsum8(acc),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
const Q41_CHUNK: usize = BlockFormat::Q41.chunk();
#[cfg(target_arch = "x86_64")]
const Q41_D: usize = BlockFormat::Q41.values();
#[cfg(target_arch = "x86_64")]
const Q41_M: usize = Q41_D + 16;
#[cfg(target_arch = "x86_64")]
const Q80_CHUNK: usize = BlockFormat::Q80.chunk();
#[cfg(target_arch = "x86_64")]
const Q80_D: usize = BlockFormat::Q80.values();

/// The packed Q4_1 and Q8_0 kernels, per path: `$dot_acc` the accumulating u8 × i8 dot product
/// and `$max_rows` the activation rows per register tile.
#[cfg(target_arch = "x86_64")]
macro_rules! packed_blocks_path {
    ($name:ident, $features:literal, $dot_acc:ident, $max_rows:literal) => {
        mod $name {
            use super::*;
            use core::arch::x86_64::*;

            const MAX_R: usize = $max_rows;

            /// Rows r0..r0+R against one group's chunks, Q4_1 (`Q41`) or Q8_0.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn rows<const R: usize, const Q41: bool>(
                p: *const u8,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                let (chunk_bytes, d_at) = if Q41 { (Q41_CHUNK, Q41_D) } else { (Q80_CHUNK, Q80_D) };
                // The activation bytes each unsigned weight vector `u[q]` meets: Q4_1's low
                // nibbles are values 0..16 and its high ones 16..32.
                let at: [usize; 8] = if Q41 { [0, 16, 4, 20, 8, 24, 12, 28] } else { [0, 4, 8, 12, 16, 20, 24, 28] };
                let mut parts = [[_mm256_setzero_ps(); 8]; R];
                let mut min_parts = [[_mm256_setzero_ps(); 8]; R];
                let mask = _mm256_set1_epi8(0x0f);
                let (qs, ad, asum) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sa.as_ptr());
                for j in 0..8.min(nb) {
                    let (mut acc, mut mins) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
                    let first = lane_start(nb, j);
                    for t in 0..lane_start(nb, j + 1) - first {
                        let ch = p.add((first + t) * chunk_bytes);
                        if acts.m >= PREFETCH_MIN_ROWS {
                            prefetch_ahead(ch, chunk_bytes);
                        }
                        // `u`: the unsigned operands; `w`: Q8_0's signed values, whose signs go
                        // onto the activations.
                        let (mut u, mut w) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
                        for q in 0..if Q41 { 4 } else { 8 } {
                            let raw = _mm256_loadu_si256(ch.add(32 * q) as *const __m256i);
                            if Q41 {
                                u[2 * q] = _mm256_and_si256(raw, mask);
                                u[2 * q + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
                            } else {
                                w[q] = raw;
                                u[q] = _mm256_abs_epi8(raw);
                            }
                        }
                        let dw = _mm256_cvtph_ps(_mm_loadu_si128(ch.add(d_at) as *const __m128i));
                        let mw = if Q41 { _mm256_cvtph_ps(_mm_loadu_si128(ch.add(Q41_M) as *const __m128i)) } else { dw };
                        let b = 8 * t + j;
                        for r in 0..R {
                            let i = (r0 + r) * acts.nbp + b;
                            let a = qs.add(i * QK);
                            let a4 = |q: usize| {
                                let a4 = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(at[q]) as *const i32));
                                if Q41 {
                                    a4
                                } else {
                                    _mm256_sign_epi8(a4, w[q])
                                }
                            };
                            // Two chains halve the dependency on the dot product's latency (integer
                            // sums: the order does not change the result).
                            let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                            for q in (0..8).step_by(2) {
                                even = $dot_acc(even, u[q], a4(q));
                                odd = $dot_acc(odd, u[q + 1], a4(q + 1));
                            }
                            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(even, odd));
                            acc[r] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, _mm256_set1_ps(*ad.add(i))), acc[r]);
                            if Q41 {
                                mins[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*asum.add(i)), mins[r]);
                            }
                        }
                    }
                    for r in 0..R {
                        parts[r][j] = acc[r];
                        min_parts[r][j] = mins[r];
                    }
                }
                for r in 0..R {
                    let y = if Q41 { _mm256_add_ps(hsum8_lanes(&parts[r]), hsum8_lanes(&min_parts[r])) } else { hsum8_lanes(&parts[r]) };
                    store_cols(y, out.add((r0 + r) * n), cols);
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn rows_q41<const R: usize>(
                p: *const u8,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                rows::<R, true>(p, nb, acts, out, n, cols, r0)
            }

            #[target_feature(enable = $features)]
            unsafe fn rows_q80<const R: usize>(
                p: *const u8,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                rows::<R, false>(p, nb, acts, out, n, cols, r0)
            }

            /// # Safety
            /// As `scalar_group_blocks`; the CPU has this path's features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn group(
                format: BlockFormat,
                p: *const u8,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
            ) {
                match format {
                    BlockFormat::Q41 => row_tiles!(MAX_R, acts.m, rows_q41(p, nb, acts, out, n, cols)),
                    BlockFormat::Q80 => row_tiles!(MAX_R, acts.m, rows_q80(p, nb, acts, out, n, cols)),
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
packed_blocks_path!(avx2_blocks, "avx2,fma,f16c", dot_acc_avx2, 4);
#[cfg(target_arch = "x86_64")]
packed_blocks_path!(vnni_blocks, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_acc_vnni, 8);
