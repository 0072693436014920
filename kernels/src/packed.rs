//! Weights repacked for the CPU: eight weight rows (output columns) interleaved four bytes at a
//! time, so that one 256-bit integer dot product (`vpdpbusd`, or `maddubs` + `madd`) against
//! four activation bytes broadcast to every lane gives eight columns' partial sums at once. No
//! horizontal reduction is left inside the loop, and each weight byte is loaded once per tile of
//! activation rows; this is what makes a block of 2..64 tokens cost little more than one. The
//! kernels are written once, generic over the path's vector operations (`crate::lanes`); on the
//! `avx512zmm` path a 512-bit register holds two adjacent groups, with the same operations per
//! column, so the layout is the same for every path.
//!
//! - [`PackedQ4K`]: Q4_K, for every call (its arithmetic is below); Q5_K likewise, with the
//!   fifth bit of each value.
//! - [`PackedBlocks`]: Q4_1 and Q8_0, for every call, with the bits of the kernel on ggml's
//!   layout in `qmatmul`, see its docs; Q5_0 and Q4_0 likewise, with the bits Q8_0 gives on the
//!   same weights converted (`w = d·(q − 16)`, `d·(q − 8)` as a Q8_0 value); Q5_1 with Q4_1's
//!   arithmetic on 5-bit values.
//! - [`PackedQ6K`]: Q6_K, for calls of [`Q6K_PACKED_MIN_ROWS`] rows or more, with the bits of
//!   the kernel on ggml's layout in `qmatmul` (which one row takes), see its docs.
//!
//! The repacking is exact (the same values, scales and minimums, rearranged) and done once at
//! load. Q4_K takes its activations in super-blocks of 256 values ([`SuperActs`], one scale
//! `d_a` each, as llama.cpp's Q8_K). Its arithmetic, for column `c` and activation row `r`, per
//! super-block, in this order on every path:
//!
//! - in i32, exactly: `I = Σ_j sc_j · Σ_i q_i · a_i` and `M = Σ_j m_j · Σ_i a_i` over the
//!   sub-blocks `j` of 32 values (`sc_j`, `m_j` the 6-bit scales and minimums; |I| < 2³¹);
//! - then `acc = fma(f32(I), d · d_a, acc)` and `acc = fma(−(dmin · d_a), f32(M), acc)`;
//! - the output is `acc`.
//!
//! Each row runs one sequence whatever the number of rows in the call, so rows stay
//! bit-identical between a token decoded alone and the same token verified in a block.

use candle_core::Result;
use half::f16;

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
use crate::lanes::{hsum8_lanes, Avx2Y, Lanes, VnniY, VnniZ};
use crate::qmatmul::{check_path, hsum8, run, scales_mins_k4, QuantizedActs, SimdPath, SuperActs, SyncPtr, Work, QK};

/// Weight rows interleaved per packed group.
pub const GROUP_COLS: usize = 8;
/// Bytes of one ggml Q4_K super-block (256 values).
const Q4K_BYTES: usize = 144;
/// Q4_K unit (eight columns × one super-block): eight f16 `d`, eight f16 `dmin`, the 6-bit
/// scales as bytes (`[sub-block][column]`), the 6-bit minimums as bytes in pairs of sub-blocks
/// (`[pair p][column][2p, 2p + 1]`: one `madd` takes a pair), then the 4-bit values.
const UNIT: usize = 16 + 16 + 64 + 64 + 1024;
const SC: usize = 32;
const MN: usize = 96;
const QS: usize = 160;
/// Bytes of one ggml Q5_K super-block: Q4_K's `d`, `dmin` and scales, 32 bytes of high bits
/// (bit `j` of byte `l`: value `l` of sub-block `j`), then the low nibbles as Q4_K's.
const Q5K_BYTES: usize = 176;
/// Q5_K unit: a Q4_K unit, then the high bits as the nibble bytes are laid out
/// (`[group of four][column][4]`, 256 bytes).
const UNIT5: usize = UNIT + 256;
const QH: usize = UNIT;

/// Bytes of a Q4_K unit, or of a Q5_K one (`high_bits`).
const fn unit_bytes(high_bits: bool) -> usize {
    if high_bits {
        UNIT5
    } else {
        UNIT
    }
}
/// A weight in one of the interleaved layouts.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Q4K(PackedQ4K),
    Q6K(PackedQ6K),
    Blocks(PackedBlocks),
}

impl PackedWeight {
    /// Repacks `n` rows of ggml blocks of a type these kernels pack (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q4_K, Q5_K, Q6_K); `None` for others.
    pub fn new(dtype: GgmlDType, w: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        Ok(match dtype {
            GgmlDType::Q4K => Some(Self::Q4K(PackedQ4K::new(w, n, k)?)),
            GgmlDType::Q5K => Some(Self::Q4K(PackedQ4K::new_q5k(w, n, k)?)),
            GgmlDType::Q6K => Some(Self::Q6K(PackedQ6K::new(w, n, k)?)),
            GgmlDType::Q4_1 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q41, w, n, k)?)),
            GgmlDType::Q8_0 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q80, w, n, k)?)),
            GgmlDType::Q5_0 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q50, w, n, k)?)),
            GgmlDType::Q4_0 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q40, w, n, k)?)),
            GgmlDType::Q5_1 => Some(Self::Blocks(PackedBlocks::new(BlockFormat::Q51, w, n, k)?)),
            _ => None,
        })
    }

    /// Whether [`Self::new`] packs this type.
    pub fn packs(dtype: GgmlDType) -> bool {
        matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        )
    }

    /// Whether the packed layout is the faster one for a call with `m` activation rows: always
    /// for the 32-value block types, Q4_K and Q5_K; for Q6_K from [`Q6K_PACKED_MIN_ROWS`] rows (fewer take the
    /// weight's ggml layout in `qmatmul`, with the same bits).
    pub fn serves(&self, m: usize) -> bool {
        match self {
            Self::Q4K(_) | Self::Blocks(_) => true,
            Self::Q6K(_) => m >= Q6K_PACKED_MIN_ROWS,
        }
    }

    /// Rows from which its product is faster on 512-bit registers than on 256-bit ones on a
    /// Zen 4 (`None`: at no row count measured), where 512-bit operations run as two halves
    /// (`qmatmul::path_for`). Criterion, weights from memory, `avx512vnni` → `avx512zmm`:
    /// Q4_K 8960x1536 at 16 rows 0.66 → 0.69 ms, 64 rows 2.61 → 1.76; Q6_K 1536x8960 at 2
    /// rows 0.38 → 0.41 ms, 4 rows 0.64 → 0.44, 64 rows 3.33 → 1.97; Q5_0 4864x896 at 8 rows
    /// 186 → 171 µs, 64 rows 1.18 → 0.80 ms; Q4_1 576x1536 at 8 rows 59 → 48 µs; Q8_0 no gain
    /// (49152x576 at 64 rows 9.4 → 10.2 ms). Q4_0 and Q5_1 share Q4_1's and Q5_0's kernel, Q5_K
    /// Q4_K's.
    pub fn wide_min_rows(&self) -> Option<usize> {
        match self {
            Self::Q4K(p) => wide_min_rows(p.dtype()),
            Self::Q6K(p) if p.k < Q6K_LONG_ROW => None,
            Self::Q6K(_) => wide_min_rows(GgmlDType::Q6K),
            Self::Blocks(p) => wide_min_rows(p.format.ggml()),
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

    /// `out (m, n) = x (m, k) · Wᵀ` on `path`, the activations quantized in the form the
    /// weight's kernel takes ([`SuperActs`] for Q4_K, [`QuantizedActs`] for the others).
    pub fn matmul_on(&self, path: SimdPath, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (_, k) = self.shape();
        if x.len() != m * k {
            candle_core::bail!("packed matmul: {} input values for {m} rows of {k}", x.len());
        }
        match self {
            Self::Q4K(p) => p.matmul_quantized_on(path, &SuperActs::quantize(x, m, k), out),
            Self::Q6K(p) => p.matmul_quantized_on(path, &SuperActs::quantize(x, m, k), out),
            Self::Blocks(p) => p.matmul_quantized_on(path, &QuantizedActs::quantize(x, m, k), out),
        }
    }

    /// `x (m, k) · Wᵀ` `(m, n)` on the path this machine runs for `m` rows
    /// ([`crate::qmatmul::path_for`] the selected one).
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; m * self.shape().0];
        self.matmul_on(crate::qmatmul::path_for(crate::qmatmul::selected_path(), self, m), x, m, &mut out)?;
        Ok(out)
    }
}

/// [`PackedWeight::wide_min_rows`] by type (`None` for the types not packed as well; Q6_K's
/// for rows of [`Q6K_LONG_ROW`] values or more).
pub fn wide_min_rows(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4K | GgmlDType::Q5K => Some(32),
        GgmlDType::Q6K => Some(4),
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => Some(8),
        _ => None,
    }
}

/// The work of `group(chunks, out, cols, groups)` over the groups of eight columns of an
/// `(m, n)` output, `per_call` (1 or 2) adjacent groups a call (the last call may get one):
/// `chunks` points at the call's first group's `group_bytes` of `data` (the next group's follow),
/// `out` at its first column, `cols` is how many of the call's columns exist.
fn group_work<'a>(
    n: usize,
    data: &'a [u8],
    group_bytes: usize,
    out: &'a mut [f32],
    per_call: usize,
    group: impl Fn(*const u8, *mut f32, usize, usize) + Sync + 'a,
) -> Work<'a> {
    debug_assert_eq!(data.len(), n.div_ceil(GROUP_COLS) * group_bytes);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let groups = n.div_ceil(GROUP_COLS);
    Work::new(groups.div_ceil(per_call), move |c| {
        let g = c * per_call;
        let in_call = per_call.min(groups - g);
        // SAFETY: the call's groups' bytes are within `data`, and their columns of every output
        // row belong to this call of `group` alone.
        let (chunks, first) = unsafe { (data.as_ptr().add(g * group_bytes), out_ptr.get().add(g * GROUP_COLS)) };
        group(chunks, first, (in_call * GROUP_COLS).min(n - g * GROUP_COLS), in_call)
    })
}

/// Groups per call of a kernel on `path`: two for the 512-bit one, one otherwise.
fn groups_per_call(path: SimdPath) -> usize {
    if path == SimdPath::Avx512Zmm {
        2
    } else {
        1
    }
}

fn check_call(n: usize, k: usize, path: SimdPath, acts: &QuantizedActs, out: &[f32]) -> Result<()> {
    if acts.nb != k / QK || out.len() != acts.m * n {
        candle_core::bail!("packed matmul: {} activation blocks per row, {} outputs for ({}, {n})", acts.nb, out.len(), acts.m);
    }
    check_path(path)
}

fn check_super_call(n: usize, k: usize, path: SimdPath, acts: &SuperActs, out: &[f32]) -> Result<()> {
    if acts.nsb != k / 256 || out.len() != acts.m * n {
        candle_core::bail!("packed matmul: {} activation super-blocks per row, {} outputs for ({}, {n})", acts.nsb, out.len(), acts.m);
    }
    check_path(path)
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
    /// Q5_K: each value's fifth bit follows the unit ([`UNIT5`]).
    high_bits: bool,
    data: Vec<u8>,
}

impl PackedQ4K {
    /// Repacks `n` rows of ggml Q4_K blocks for rows of `k` values (a multiple of 256).
    pub fn new(w: &[u8], n: usize, k: usize) -> Result<Self> {
        Self::repack(w, n, k, false)
    }

    /// Repacks `n` rows of ggml Q5_K blocks: Q4_K's, with the fifth bit of each value (`q` in
    /// 0..32, `w = d·sc·q − dmin·m`), the same arithmetic otherwise.
    pub fn new_q5k(w: &[u8], n: usize, k: usize) -> Result<Self> {
        Self::repack(w, n, k, true)
    }

    fn repack(w: &[u8], n: usize, k: usize, high_bits: bool) -> Result<Self> {
        let (bytes, name) = if high_bits { (Q5K_BYTES, "Q5_K") } else { (Q4K_BYTES, "Q4_K") };
        let unit_bytes = unit_bytes(high_bits);
        if k == 0 || !k.is_multiple_of(256) || w.len() != n * (k / 256) * bytes {
            candle_core::bail!("{name} repack: {} bytes for ({n}, {k})", w.len());
        }
        let nsb = k / 256;
        let groups = n.div_ceil(GROUP_COLS);
        // Columns past `n` in the last group stay zero (d = 0: they add exact zeros, and are
        // never written out).
        let mut data = vec![0u8; groups * nsb * unit_bytes];
        for (unit_index, unit) in data.chunks_exact_mut(unit_bytes).enumerate() {
            let (g, sb) = (unit_index / nsb, unit_index % nsb);
            for c in 0..GROUP_COLS {
                let col = g * GROUP_COLS + c;
                if col >= n {
                    break;
                }
                let blk = &w[(col * nsb + sb) * bytes..][..bytes];
                unit[2 * c..2 * c + 2].copy_from_slice(&blk[0..2]);
                unit[16 + 2 * c..16 + 2 * c + 2].copy_from_slice(&blk[2..4]);
                let (sc, mn) = scales_mins_k4(blk[4..16].try_into().expect("12 bytes"));
                for j in 0..8 {
                    unit[SC + 8 * j + c] = sc[j];
                    unit[MN + 16 * (j / 2) + 2 * c + j % 2] = mn[j];
                }
                // Q5_K's high bits sit between the scales and the nibbles.
                let qs = if high_bits { &blk[48..] } else { &blk[16..] };
                for q in 0..8 {
                    for p in 0..4 {
                        let dst = QS + 256 * p + 32 * q + 4 * c;
                        unit[dst..dst + 4].copy_from_slice(&qs[32 * p + 4 * q..32 * p + 4 * q + 4]);
                    }
                    if high_bits {
                        unit[QH + 32 * q + 4 * c..QH + 32 * q + 4 * c + 4].copy_from_slice(&blk[16 + 4 * q..16 + 4 * q + 4]);
                    }
                }
            }
        }
        Ok(Self { n, k, high_bits, data })
    }

    /// The ggml type repacked: Q4_K or Q5_K.
    pub fn dtype(&self) -> GgmlDType {
        if self.high_bits {
            GgmlDType::Q5K
        } else {
            GgmlDType::Q4K
        }
    }

    /// `out (m, n) = acts · Wᵀ` on `path`, split over groups of columns on candle's thread pool.
    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &SuperActs, out: &mut [f32]) -> Result<()> {
        run(&[self.work(path, acts, out)?]);
        Ok(())
    }

    /// [`Self::matmul_quantized_on`]'s work, to run alone or in a fused product.
    pub(crate) fn work<'a>(&'a self, path: SimdPath, acts: &'a SuperActs, out: &'a mut [f32]) -> Result<Work<'a>> {
        check_super_call(self.n, self.k, path, acts, out)?;
        let (n, nsb, high) = (self.n, self.k / 256, self.high_bits);
        let gb = nsb * unit_bytes(high);
        Ok(group_work(n, &self.data, gb, out, groups_per_call(path), move |p, o, cols, groups| {
            // SAFETY: `p` is the call's `groups` groups of nsb units, `o` its first output column.
            unsafe {
                match path {
                    SimdPath::Scalar => scalar_group(p, nsb, high, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2::q4k(p, gb, nsb, high, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Zmm if groups == 2 => zmm::q4k(p, gb, nsb, high, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni | SimdPath::Avx512Zmm => vnni::q4k(p, gb, nsb, high, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        }))
    }
}

/// The reference arithmetic, one column and one row at a time.
///
/// # Safety
/// `p` points at `nsb` units of one group; `out` at its first column of an `(m, n)` output.
unsafe fn scalar_group(p: *const u8, nsb: usize, high_bits: bool, acts: &SuperActs, out: *mut f32, n: usize, cols: usize) {
    let unit_bytes = unit_bytes(high_bits);
    let units = std::slice::from_raw_parts(p, nsb * unit_bytes);
    for r in 0..acts.m {
        for c in 0..cols {
            let mut acc = 0f32;
            for (sb, u) in units.chunks_exact(unit_bytes).enumerate() {
                let d = f16::from_le_bytes([u[2 * c], u[2 * c + 1]]).to_f32();
                let dmin = f16::from_le_bytes([u[16 + 2 * c], u[16 + 2 * c + 1]]).to_f32();
                let b = r * nsb + sb;
                let (mut isum, mut msum) = (0i32, 0i32);
                for j in 0..8 {
                    let a = &acts.qs[b * 256 + j * QK..][..QK];
                    let mut s = 0i32;
                    for q in 0..8 {
                        for t in 0..4 {
                            let byte = u[QS + 256 * (j / 2) + 32 * q + 4 * c + t];
                            let high = if high_bits { ((u[QH + 32 * q + 4 * c + t] >> j) & 1) << 4 } else { 0 };
                            let v = (if j % 2 == 0 { byte & 0x0f } else { byte >> 4 }) | high;
                            s += v as i32 * a[4 * q + t] as i32;
                        }
                    }
                    isum += u[SC + 8 * j + c] as i32 * s;
                    msum += u[MN + 16 * (j / 2) + 2 * c + j % 2] as i32 * acts.bs[8 * b + j] as i32;
                }
                let da = acts.d[b];
                acc = (isum as f32).mul_add(d * da, acc);
                acc = (-(dmin * da)).mul_add(msum as f32, acc);
            }
            *out.add(r * n + c) = acc;
        }
    }
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

/// Prefetches the `bytes` [`PREFETCH_UNITS`] units ahead of `unit` in each of the call's groups.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_groups<V: Lanes>(unit: *const u8, gb: usize, bytes: usize) {
    for g in 0..V::GROUPS {
        prefetch_ahead(unit.wrapping_add(g * gb), bytes);
    }
}

/// Runs `$rows::<R>(args.., r0)` (`$rows::<R, F..>` for `$rows::<F..>(args..)`) over the
/// activation rows `0..$m` in tiles of at most `$max_r`.
#[cfg(target_arch = "x86_64")]
macro_rules! row_tiles {
    // `kernel::<F>(args)`: const parameters after the row count's.
    ($max_r:expr, $m:expr, $rows:ident::<$($g:ident),*>($($arg:expr),*)) => {{
        let mut r0 = 0;
        while r0 < $m {
            let nr = ($m - r0).min($max_r);
            match nr {
                1 => $rows::<1, $($g),*>($($arg,)* r0),
                2 if $max_r >= 2 => $rows::<2, $($g),*>($($arg,)* r0),
                3 if $max_r >= 3 => $rows::<3, $($g),*>($($arg,)* r0),
                4 if $max_r >= 4 => $rows::<4, $($g),*>($($arg,)* r0),
                5 if $max_r >= 5 => $rows::<5, $($g),*>($($arg,)* r0),
                6 if $max_r >= 6 => $rows::<6, $($g),*>($($arg,)* r0),
                7 if $max_r >= 7 => $rows::<7, $($g),*>($($arg,)* r0),
                8 if $max_r >= 8 => $rows::<8, $($g),*>($($arg,)* r0),
                _ => unreachable!("row tiles hold 1..={} rows", $max_r),
            }
            r0 += nr;
        }
    }};
    ($max_r:expr, $m:expr, $rows:ident($($arg:expr),*)) => {
        row_tiles!($max_r, $m, $rows::<>($($arg),*))
    };
}

/// Q4_K (`HIGH`: Q5_K), rows `r0..r0 + R` against the call's groups' `nsb` units (`gb`: one
/// group's bytes), in `V`'s lanes (see `crate::lanes`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q4k_rows<V: Lanes, const R: usize, const HIGH: bool>(
    p: *const u8,
    gb: usize,
    nsb: usize,
    acts: &SuperActs,
    out: *mut f32,
    n: usize,
    cols: usize,
    r0: usize,
) {
    let mut acc = [V::zero_f(); R];
    let mask = V::splat_i8(0x0f);
    let (qs, ad, bs) = (acts.qs.as_ptr() as *const u8, acts.d.as_ptr(), acts.bs.as_ptr() as *const u8);
    let unit_bytes = unit_bytes(HIGH);
    for sb in 0..nsb {
        let u = p.add(sb * unit_bytes);
        if acts.m >= PREFETCH_MIN_ROWS {
            prefetch_groups::<V>(u, gb, unit_bytes);
        }
        // The super-block's integer sums per row: Σ_j sc_j · S_j (integers: any order).
        let mut isum = [V::zero_i(); R];
        for j in 0..8 {
            let sc = V::load_u8(u.add(SC + 8 * j), gb);
            // Sub-block j's values for the call's columns, unpacked once for all rows.
            let q = u.add(QS + 256 * (j / 2));
            let mut wv = [V::zero_i(); 8];
            for (g, wv) in wv.iter_mut().enumerate() {
                let raw = V::load(q.add(32 * g), gb);
                *wv = if j % 2 == 0 { V::and(raw, mask) } else { V::and(V::srli4(raw), mask) };
                if HIGH {
                    // Bit j of the value's high-bit byte, as 16.
                    *wv = V::or(*wv, V::bit_to_4(V::load(u.add(QH + 32 * g), gb), j as u32));
                }
            }
            for (r, isum) in isum.iter_mut().enumerate() {
                let a = qs.add(((r0 + r) * nsb + sb) * 256 + j * QK);
                // Four activation bytes to every lane: lane c gets column c's sum. Two chains
                // halve the dependency on the dot product's latency.
                let (mut even, mut odd) = (V::zero_i(), V::zero_i());
                for g in (0..8).step_by(2) {
                    even = V::dot(even, wv[g], V::bcast4(a.add(4 * g)));
                    odd = V::dot(odd, wv[g + 1], V::bcast4(a.add(4 * g + 4)));
                }
                *isum = V::add_i(*isum, V::mullo(V::add_i(even, odd), sc));
            }
        }
        let d = V::load_f16(u, gb);
        let dmin = V::load_f16(u.add(16), gb);
        // The minimums of sub-blocks 2p and 2p + 1 as an i16 pair per column.
        let mn: [V::I; 4] = std::array::from_fn(|pair| V::load_u8_i16(u.add(MN + 16 * pair), gb));
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = (r0 + r) * nsb + sb;
            // Σ_j m_j · Σa_j: each pair of activation sums (adjacent i16) against a pair of minimums.
            let mut msum = V::madd16(mn[0], V::bcast4(bs.add(16 * b)));
            for (pair, &mn) in mn.iter().enumerate().skip(1) {
                msum = V::add_i(msum, V::madd16(mn, V::bcast4(bs.add(16 * b + 4 * pair))));
            }
            let da = V::splat_f(*ad.add(b));
            *acc = V::fmadd(V::cvt(isum[r]), V::mul(d, da), *acc);
            *acc = V::fnmadd(V::mul(dmin, da), V::cvt(msum), *acc);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        V::store(*acc, out.add((r0 + r) * n), cols);
    }
}

/// Activation rows from which a Q6_K weight runs packed ([`PackedWeight::serves`]). One row
/// takes the ggml-layout kernel in `qmatmul`: it is bound by memory, both layouts read the same
/// bytes, and ggml's was as fast or faster (Zen 4, 2 threads, `benches/kernels.rs`, `Q6_K/*/m1`:
/// head 151936x1536 5.5 ms on both, down 1536x8960 0.28 against 0.31 ms). From two rows the
/// unpacking this layout does once at load (the per-row kernel redoes it for every tile of rows)
/// wins: head 2 rows 6.7 → 5.3 ms, 4 rows 7.9 → 6.3, 8 rows 16.7 → 10.5; down 2 rows 0.64 →
/// 0.38, 4 rows 0.98 → 0.62 (`avx512vnni`). Both give the same bits.
pub const Q6K_PACKED_MIN_ROWS: usize = 2;
/// Rows of at least this many values take the 512-bit kernel from [`wide_min_rows`]'s rows on
/// AMD; shorter ones (a few super-blocks each, as the 151936x1536 head) stay on 256-bit
/// registers, where they were as fast or faster: head 4 rows 6.3 ms against 10.2 on
/// `avx512zmm`, 8 rows 10.5 against 11.1, 16 rows 18.8 against 19.1, 64 rows 70.6 against 67.0.
pub const Q6K_LONG_ROW: usize = 4096;
/// Bytes of one ggml Q6_K super-block (256 values).
const Q6K_BYTES: usize = 210;
/// Q6_K chunk: eight columns × one 32-value block `j` of one super-block, in ggml's bits per
/// value. The low nibbles as Q4_1's (128 bytes: byte `4·c + i` of vector `2q` / `2q + 1`
/// holds value `NIBBLE_AT[x] + i` of column `c` for vector `x`), then the high two bits (64
/// bytes: bits `2y, 2y + 1` of byte `32·v + 4·c + i` belong to the value of vector `x = 4v + y`),
/// then the scales of the block's two 16-value halves (`[half][column]`, i8).
const Q6K_CHUNK: usize = 128 + 64 + 16;
const Q6K_HI: usize = 128;
const Q6K_SC: usize = 192;
/// Q6_K unit: a super-block's eight chunks, then its `d` per column (f16): 210 bytes per column
/// and super-block, as ggml's.
const Q6K_UNIT: usize = 8 * Q6K_CHUNK + 16;

/// A Q6_K weight `(n, k)` in an interleaved layout of ggml's size.
///
/// It gives the bits of `qmatmul`'s kernel on ggml's layout ([`crate::qmatmul::matmul_q6k_on`]).
/// That kernel, for a weight row and an activation row in super-blocks ([`SuperActs`]), sums each
/// super-block exactly, `I = Σ_h sc_h · Σ (q − 32) · a` over its sixteen 16-value halves `h`,
/// then accumulates `acc = fma(f32(I), d · d_a, acc)`, super-block after super-block. Here a lane
/// is a column of the group. The integer dot products (`vpdpbusd`, or `maddubs` + `madd`) take
/// the unsigned values `q` (0..64) against the signed activations, and the offset comes from the
/// activations' half sums: `I = Σ_h sc_h · Σ q · a − 32 · Σ_h sc_h · Σa_h`, the same integer.
/// Units are ordered `[group][super-block]`, the loop's own order.
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
        let mut data = vec![0u8; groups * nsb * Q6K_UNIT];
        for (unit_index, unit) in data.chunks_exact_mut(Q6K_UNIT).enumerate() {
            let (g, sb) = (unit_index / nsb, unit_index % nsb);
            for c in 0..GROUP_COLS.min(n - g * GROUP_COLS) {
                let blk = &w[((g * GROUP_COLS + c) * nsb + sb) * Q6K_BYTES..][..Q6K_BYTES];
                let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
                // ggml's layout: block j = 4h + t takes the low (t < 2) or high nibbles of
                // ql[64h + 32(t & 1) + l] and bits 2t..2t+2 of qh[32h + l], for value l.
                let value = |j: usize, l: usize| -> u8 {
                    let (h, t) = (j / 4, j % 4);
                    let low = ql[64 * h + 32 * (t & 1) + l];
                    let low = if t < 2 { low & 0x0f } else { low >> 4 };
                    low | (((qh[32 * h + l] >> (2 * t)) & 3) << 4)
                };
                for j in 0..8 {
                    let chunk = &mut unit[j * Q6K_CHUNK..(j + 1) * Q6K_CHUNK];
                    for (x, &at) in NIBBLE_AT.iter().enumerate() {
                        for i in 0..4 {
                            let q = value(j, at + i);
                            chunk[32 * (x / 2) + 4 * c + i] |= (q & 0x0f) << (4 * (x % 2));
                            chunk[Q6K_HI + 32 * (x / 4) + 4 * c + i] |= (q >> 4) << (2 * (x % 4));
                        }
                    }
                    chunk[Q6K_SC + c] = sc[2 * j];
                    chunk[Q6K_SC + 8 + c] = sc[2 * j + 1];
                }
                unit[8 * Q6K_CHUNK + 2 * c..8 * Q6K_CHUNK + 2 * c + 2].copy_from_slice(&blk[208..210]);
            }
        }
        Ok(Self { n, k, data })
    }

    /// `out (m, n) = acts · Wᵀ` on `path`, split over groups of columns on candle's thread pool.
    pub fn matmul_quantized_on(&self, path: SimdPath, acts: &SuperActs, out: &mut [f32]) -> Result<()> {
        run(&[self.work(path, acts, out)?]);
        Ok(())
    }

    /// [`Self::matmul_quantized_on`]'s work, to run alone or in a fused product.
    pub(crate) fn work<'a>(&'a self, path: SimdPath, acts: &'a SuperActs, out: &'a mut [f32]) -> Result<Work<'a>> {
        check_super_call(self.n, self.k, path, acts, out)?;
        let (n, nsb) = (self.n, self.k / 256);
        let gb = nsb * Q6K_UNIT;
        Ok(group_work(n, &self.data, gb, out, groups_per_call(path), move |p, o, cols, groups| {
            // SAFETY: `p` is the call's `groups` groups of nsb units, `o` its first output column.
            unsafe {
                match path {
                    SimdPath::Scalar => scalar_group_q6k(p, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2::q6k(p, gb, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Zmm if groups == 2 => zmm::q6k(p, gb, nsb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni | SimdPath::Avx512Zmm => vnni::q6k(p, gb, nsb, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        }))
    }
}

/// The reference arithmetic on the packed layout, one column and one row at a time, with the
/// signed values `q − 32` directly (no half sums).
///
/// # Safety
/// `p` points at the `nsb` units of one group; `out` at its first column of an `(m, n)` output.
unsafe fn scalar_group_q6k(p: *const u8, nsb: usize, acts: &SuperActs, out: *mut f32, n: usize, cols: usize) {
    let units = std::slice::from_raw_parts(p, nsb * Q6K_UNIT);
    for r in 0..acts.m {
        for c in 0..cols {
            let mut acc = 0f32;
            for (sb, u) in units.chunks_exact(Q6K_UNIT).enumerate() {
                let b = r * nsb + sb;
                let mut isum = 0i32;
                for j in 0..8 {
                    let ch = &u[j * Q6K_CHUNK..(j + 1) * Q6K_CHUNK];
                    let a = &acts.qs[b * 256 + j * QK..][..QK];
                    for (x, &at) in NIBBLE_AT.iter().enumerate() {
                        for i in 0..4 {
                            let low = (ch[32 * (x / 2) + 4 * c + i] >> (4 * (x % 2))) & 0x0f;
                            let high = (ch[Q6K_HI + 32 * (x / 4) + 4 * c + i] >> (2 * (x % 4))) & 3;
                            let l = at + i;
                            let sc = ch[Q6K_SC + 8 * (l / 16) + c] as i8 as i32;
                            isum += sc * ((low | (high << 4)) as i32 - 32) * a[l] as i32;
                        }
                    }
                }
                let d = f16::from_le_bytes([u[8 * Q6K_CHUNK + 2 * c], u[8 * Q6K_CHUNK + 2 * c + 1]]).to_f32();
                acc = (isum as f32).mul_add(d * acts.d[b], acc);
            }
            *out.add(r * n + c) = acc;
        }
    }
}

/// Q6_K, rows `r0..r0 + R` against the call's groups' units (`gb`: one group's bytes), in `V`'s
/// lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q6k_rows<V: Lanes, const R: usize>(
    p: *const u8,
    gb: usize,
    nsb: usize,
    acts: &SuperActs,
    out: *mut f32,
    n: usize,
    cols: usize,
    r0: usize,
) {
    let mut acc = [V::zero_f(); R];
    let mask = V::splat_i8(0x0f);
    let (qs, hs) = (acts.qs.as_ptr() as *const u8, acts.hs.as_ptr() as *const u8);
    for sb in 0..nsb {
        let u = p.add(sb * Q6K_UNIT);
        // The super-block's integer sums per row, `Σ_h sc_h · Σ q · a` and `Σ_h sc_h · Σa_h`
        // (exact: any order).
        let (mut isum, mut offset) = ([V::zero_i(); R], [V::zero_i(); R]);
        for j in 0..8 {
            let ch = u.add(j * Q6K_CHUNK);
            if acts.m >= PREFETCH_MIN_ROWS {
                prefetch_groups::<V>(ch, gb, Q6K_CHUNK);
            }
            // The block's values for the call's columns, unpacked once for all rows.
            let mut w = [V::zero_i(); 8];
            let high = [V::load(ch.add(Q6K_HI), gb), V::load(ch.add(Q6K_HI + 32), gb)];
            for q in 0..4 {
                let raw = V::load(ch.add(32 * q), gb);
                w[2 * q] = V::or(V::and(raw, mask), V::bits2_to_4(high[q / 2], (2 * q % 4) as u32));
                w[2 * q + 1] = V::or(V::and(V::srli4(raw), mask), V::bits2_to_4(high[q / 2], ((2 * q + 1) % 4) as u32));
            }
            // Vectors 0, 2, 4, 6 hold values 0..16 (the first half), 1, 3, 5, 7 values 16..32.
            let (w0, w1) = ([w[0], w[2], w[4], w[6]], [w[1], w[3], w[5], w[7]]);
            let (sc0, sc1) = (V::load_i8(ch.add(Q6K_SC), gb), V::load_i8(ch.add(Q6K_SC + 8), gb));
            let (sh0, sh1) = (V::q6k_scales(sc0), V::q6k_scales(sc1));
            // The two halves' scales as an i16 pair per lane, for the half sums' `madd`.
            let pair = V::or(V::and(sc0, V::splat_i32(0xffff)), V::slli16_i32(sc1));
            for r in 0..R {
                let b = (r0 + r) * nsb + sb;
                let a = qs.add(b * 256 + j * QK);
                let s = V::add_i(V::q6k_half(&w0, a, sh0), V::q6k_half(&w1, a.add(16), sh1));
                isum[r] = V::add_i(isum[r], s);
                offset[r] = V::add_i(offset[r], V::madd16(pair, V::bcast4(hs.add(2 * (16 * b + 2 * j)))));
            }
        }
        let d = V::load_f16(u.add(8 * Q6K_CHUNK), gb);
        let minus32 = V::splat_i32(-32);
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = (r0 + r) * nsb + sb;
            let isum = V::add_i(isum[r], V::mullo(offset[r], minus32));
            let da = V::splat_f(*acts.d.get_unchecked(b));
            *acc = V::fmadd(V::cvt(isum), V::mul(d, da), *acc);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        V::store(*acc, out.add((r0 + r) * n), cols);
    }
}

/// A 32-value block type in the interleaved layout of [`PackedBlocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// Chunk: the blocks' nibble bytes as in ggml (value `i` in the low nibble of byte `i`, value
    /// `i + 16` in the high one), `[group of four bytes][column][4]` (128 bytes), then `d` and
    /// `m` per column (f16). Same size as ggml's.
    Q41,
    /// Chunk: the values (`[group of four][column][4]`, 256 bytes), then `d` per column (f16).
    Q80,
    /// Chunk: the low nibbles as Q4_1's (128 bytes), then the high bits (32 bytes: bit `x` of
    /// byte `4·c + i` is the high bit of value `NIBBLE_AT[x] + i` of column `c`, the value whose
    /// low nibble is byte `i` of the kernel's vector `x`, see [`NIBBLE_AT`]), then `d` per
    /// column (f16). Same size as ggml's.
    Q50,
    /// Chunk: the nibbles as Q4_1's (128 bytes), then `d` per column (f16); `w = d·(q − 8)`.
    /// Same size as ggml's.
    Q40,
    /// Chunk: the low nibbles and high bits as Q5_0's (160 bytes), then `d` and `m` per column
    /// (f16); `w = d·q + m`. Same size as ggml's.
    Q51,
}

/// The first of the four values (per column) of each unsigned vector `x` of a nibble chunk
/// (Q4_1, Q5_0): vectors `2q` and `2q + 1` are the low and the high nibbles of the chunk's bytes
/// `32·q ..+ 32`, which hold values `4q ..+ 4` and `16 + 4q ..+ 4` of each column.
const NIBBLE_AT: [usize; 8] = [0, 16, 4, 20, 8, 24, 12, 28];

impl BlockFormat {
    /// Bytes of one ggml block.
    const fn ggml_bytes(self) -> usize {
        match self {
            Self::Q41 => 20,
            Self::Q80 => 34,
            Self::Q50 => 22,
            Self::Q40 => 18,
            Self::Q51 => 24,
        }
    }

    /// Bytes of one chunk (eight columns × one block).
    const fn chunk(self) -> usize {
        self.values() + 16 * self.scales()
    }

    /// Bytes of values in a chunk; the f16 `d` (and `m`) per column follow.
    const fn values(self) -> usize {
        match self {
            Self::Q41 | Self::Q40 => 128,
            Self::Q80 => 256,
            Self::Q50 | Self::Q51 => 160,
        }
    }

    /// f16 scales per column and block: `d`, and the minimum `m` of Q4_1 and Q5_1.
    const fn scales(self) -> usize {
        if self.has_min() {
            2
        } else {
            1
        }
    }

    /// Whether a block has a minimum `m` (`w = d·q + m`).
    const fn has_min(self) -> bool {
        matches!(self, Self::Q41 | Self::Q51)
    }

    /// Whether a block has a fifth (high) bit per value.
    const fn has_high_bits(self) -> bool {
        matches!(self, Self::Q50 | Self::Q51)
    }

    /// The offset the unsigned values carry (`w = d·(q − offset)`; 0 for the types with `m`
    /// and for Q8_0, whose values are signed).
    const fn offset(self) -> i32 {
        match self {
            Self::Q50 => 16,
            Self::Q40 => 8,
            Self::Q41 | Self::Q80 | Self::Q51 => 0,
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q41 => GgmlDType::Q4_1,
            Self::Q80 => GgmlDType::Q8_0,
            Self::Q50 => GgmlDType::Q5_0,
            Self::Q40 => GgmlDType::Q4_0,
            Self::Q51 => GgmlDType::Q5_1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Q41 => "Q4_1",
            Self::Q80 => "Q8_0",
            Self::Q50 => "Q5_0",
            Self::Q40 => "Q4_0",
            Self::Q51 => "Q5_1",
        }
    }
}

/// A Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 weight `(n, k)` in an interleaved layout.
///
/// It gives the bits of `qmatmul`'s kernel on ggml's layout. That kernel, for a weight row and
/// an activation row, accumulates block `b` in lane `j = b mod 8` of eight f32 lanes,
/// `acc_j = fma(S_b, d · d_a, acc_j)` (`S_b` the exact integer `Σ q · a`), for Q4_1 also
/// `mins_j = fma(m, d_a · Σa, mins_j)`, and returns `h(acc)` (`+ h(mins)`) with
/// `h(v) = ((v_0 + v_4) + (v_2 + v_6)) + ((v_1 + v_5) + (v_3 + v_7))`. Here the lanes of a
/// vector are the eight columns of a group, the accumulators are per `j`, and chunks are ordered
/// `[group][j][b / 8]`, so that the loop keeps only one `j` live. Q8_0's u8 × i8 dot products
/// take `|w|` against the activations with `w`'s sign (`vpsignb`), as ggml does: the same exact
/// integer, with `maddubs` pairs within i16 (2 · 128 · 127). Q5_0 takes its unsigned values
/// `q` (0..32) against the activations and starts each block's integer sum at `−16 · Σa`: the
/// exact integer `Σ (q − 16) · a` of Q8_0 on the converted weights, so the same bits; Q4_0 with
/// `−8 · Σa`. Q5_1 runs as Q4_1 does, with values 0..32.
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
                    // ggml's block: the f16 scales, (Q5_0, Q5_1: the high bits,) then the value bytes.
                    let (scales, qs) = blk.split_at(2 * format.scales());
                    let qs = if format.has_high_bits() {
                        let (qh, qs) = qs.split_at(4);
                        let qh = u32::from_le_bytes(qh.try_into().expect("4 bytes"));
                        for (x, &at) in NIBBLE_AT.iter().enumerate() {
                            for i in 0..4 {
                                chunk[128 + 4 * c + i] |= (((qh >> (at + i)) & 1) as u8) << x;
                            }
                        }
                        qs
                    } else {
                        qs
                    };
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
        run(&[self.work(path, acts, out)?]);
        Ok(())
    }

    /// [`Self::matmul_quantized_on`]'s work, to run alone or in a fused product.
    pub(crate) fn work<'a>(&'a self, path: SimdPath, acts: &'a QuantizedActs, out: &'a mut [f32]) -> Result<Work<'a>> {
        check_call(self.n, self.k, path, acts, out)?;
        let (n, nb, format) = (self.n, self.k / QK, self.format);
        let gb = nb * format.chunk();
        Ok(group_work(n, &self.data, gb, out, groups_per_call(path), move |p, o, cols, groups| {
            // SAFETY: `p` is the call's `groups` groups of nb chunks, `o` its first output column.
            unsafe {
                match path {
                    SimdPath::Scalar => scalar_group_blocks(format, p, nb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx2 => avx2::blocks(format, p, gb, nb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Zmm if groups == 2 => zmm::blocks(format, p, gb, nb, acts, o, n, cols),
                    #[cfg(target_arch = "x86_64")]
                    SimdPath::Avx512Vnni | SimdPath::Avx512Zmm => vnni::blocks(format, p, gb, nb, acts, o, n, cols),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("checked by is_available"),
                }
            }
        }))
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
                    BlockFormat::Q80 => (0..QK).map(|l| byte(l) as i8 as i32 * a[l] as i32).sum(),
                    _ => (0..QK)
                        .map(|l| {
                            let (low, x) = if l < 16 { (byte(l) & 0x0f, 2 * (l / 4)) } else { (byte(l - 16) >> 4, 2 * ((l - 16) / 4) + 1) };
                            let high = if format.has_high_bits() { (ch[128 + 4 * c + l % 4] >> x) & 1 } else { 0 };
                            ((low | (high << 4)) as i32 - format.offset()) * a[l] as i32
                        })
                        .sum(),
                };
                acc[j] = (s as f32).mul_add(f16_at(ch, values + 2 * c) * acts.d[i], acc[j]);
                if format.has_min() {
                    mins[j] = f16_at(ch, values + 16 + 2 * c).mul_add(acts.sa[i], mins[j]);
                }
            }
            *out.add(r * n + c) = if format.has_min() { hsum8(acc) + hsum8(mins) } else { hsum8(acc) };
        }
    }
}

/// [`q4k_rows`]'s two types, as const parameters.
#[cfg(target_arch = "x86_64")]
const Q4K: bool = false;
#[cfg(target_arch = "x86_64")]
const Q5K: bool = true;
/// [`blocks_rows`]'s formats, as const parameters (indices into [`FORMATS`]).
#[cfg(target_arch = "x86_64")]
const F_Q41: u8 = 0;
#[cfg(target_arch = "x86_64")]
const F_Q80: u8 = 1;
#[cfg(target_arch = "x86_64")]
const F_Q50: u8 = 2;
#[cfg(target_arch = "x86_64")]
const F_Q40: u8 = 3;
#[cfg(target_arch = "x86_64")]
const F_Q51: u8 = 4;
#[cfg(target_arch = "x86_64")]
const FORMATS: [BlockFormat; 5] = [BlockFormat::Q41, BlockFormat::Q80, BlockFormat::Q50, BlockFormat::Q40, BlockFormat::Q51];

/// A 32-value block format (`F`: an index into [`FORMATS`]), rows `r0..r0 + R` against the
/// call's groups' `nb` chunks (`gb`: one group's bytes), in `V`'s lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks_rows<V: Lanes, const R: usize, const F: u8>(
    p: *const u8,
    gb: usize,
    nb: usize,
    acts: &QuantizedActs,
    out: *mut f32,
    n: usize,
    cols: usize,
    r0: usize,
) {
    // All but Q8_0 hold two values per byte.
    let format = FORMATS[F as usize];
    let nibbles = F != F_Q80;
    let (chunk_bytes, d_at, has_min, high_bits) = (format.chunk(), format.values(), format.has_min(), format.has_high_bits());
    // The activation bytes each unsigned weight vector `u[q]` meets.
    let at: [usize; 8] = if nibbles { NIBBLE_AT } else { [0, 4, 8, 12, 16, 20, 24, 28] };
    let mut parts = [[V::zero_f(); 8]; R];
    let mut min_parts = [[V::zero_f(); 8]; R];
    let mask = V::splat_i8(0x0f);
    let (qs, ad, asum, aisum) = (acts.qs.as_ptr() as *const u8, acts.d.as_ptr(), acts.sa.as_ptr(), acts.s.as_ptr());
    for j in 0..8.min(nb) {
        let (mut acc, mut mins) = ([V::zero_f(); R], [V::zero_f(); R]);
        let first = lane_start(nb, j);
        for t in 0..lane_start(nb, j + 1) - first {
            let ch = p.add((first + t) * chunk_bytes);
            if acts.m >= PREFETCH_MIN_ROWS {
                prefetch_groups::<V>(ch, gb, chunk_bytes);
            }
            // `u`: the unsigned operands; `w`: Q8_0's signed values, whose signs go onto the
            // activations.
            let (mut u, mut w) = ([V::zero_i(); 8], [V::zero_i(); 8]);
            for q in 0..if nibbles { 4 } else { 8 } {
                let raw = V::load(ch.add(32 * q), gb);
                if nibbles {
                    u[2 * q] = V::and(raw, mask);
                    u[2 * q + 1] = V::and(V::srli4(raw), mask);
                } else {
                    w[q] = raw;
                    u[q] = V::abs8(raw);
                }
            }
            if high_bits {
                // Each value's high bit (16) from bit x of its byte of the high bits.
                let high = V::load(ch.add(128), gb);
                for (x, u) in u.iter_mut().enumerate() {
                    *u = V::or(*u, V::bit_to_4(high, x as u32));
                }
            }
            let dw = V::load_f16(ch.add(d_at), gb);
            let mw = if has_min { V::load_f16(ch.add(d_at + 16), gb) } else { dw };
            let b = 8 * t + j;
            for r in 0..R {
                let i = (r0 + r) * acts.nbp + b;
                let a = qs.add(i * QK);
                let a4 = |q: usize| {
                    let a4 = V::bcast4(a.add(at[q]));
                    if nibbles {
                        a4
                    } else {
                        V::sign8(a4, w[q])
                    }
                };
                // Two chains halve the dependency on the dot product's latency (integer sums:
                // the order does not change the result). Q5_0's and Q4_0's offsets start one.
                let start = if format.offset() != 0 { V::splat_i32(-format.offset() * *aisum.add(i)) } else { V::zero_i() };
                let (mut even, mut odd) = (start, V::zero_i());
                for q in (0..8).step_by(2) {
                    even = V::dot(even, u[q], a4(q));
                    odd = V::dot(odd, u[q + 1], a4(q + 1));
                }
                acc[r] = V::fmadd(V::cvt(V::add_i(even, odd)), V::mul(dw, V::splat_f(*ad.add(i))), acc[r]);
                if has_min {
                    mins[r] = V::fmadd(mw, V::splat_f(*asum.add(i)), mins[r]);
                }
            }
        }
        for r in 0..R {
            parts[r][j] = acc[r];
            min_parts[r][j] = mins[r];
        }
    }
    for r in 0..R {
        let y = if has_min { V::add_f(hsum8_lanes::<V>(&parts[r]), hsum8_lanes::<V>(&min_parts[r])) } else { hsum8_lanes::<V>(&parts[r]) };
        V::store(y, out.add((r0 + r) * n), cols);
    }
}

/// One path's kernel entry points: the generic kernels above compiled with `$features` in the
/// lanes `$lanes`, in tiles of up to `$max_rows` activation rows.
///
/// # Safety (of every entry point)
/// `p` points at the call's groups (`gb` bytes each; two for 512-bit lanes), `out` at their
/// first column of an `(acts.m, n)` output, `cols` of whose columns are theirs; the CPU has the
/// path's features.
#[cfg(target_arch = "x86_64")]
macro_rules! path_kernels {
    ($name:ident, $features:literal, $lanes:ty, $max_rows:literal) => {
        mod $name {
            use super::*;

            const MAX_R: usize = $max_rows;

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn q4k_tile<const R: usize, const HIGH: bool>(
                p: *const u8,
                gb: usize,
                nsb: usize,
                acts: &SuperActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                q4k_rows::<$lanes, R, HIGH>(p, gb, nsb, acts, out, n, cols, r0)
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn q6k_tile<const R: usize>(
                p: *const u8,
                gb: usize,
                nsb: usize,
                acts: &SuperActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                q6k_rows::<$lanes, R>(p, gb, nsb, acts, out, n, cols, r0)
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn blocks_tile<const R: usize, const F: u8>(
                p: *const u8,
                gb: usize,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
                r0: usize,
            ) {
                blocks_rows::<$lanes, R, F>(p, gb, nb, acts, out, n, cols, r0)
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn q4k(
                p: *const u8,
                gb: usize,
                nsb: usize,
                high_bits: bool,
                acts: &SuperActs,
                out: *mut f32,
                n: usize,
                cols: usize,
            ) {
                if high_bits {
                    row_tiles!(MAX_R, acts.m, q4k_tile::<Q5K>(p, gb, nsb, acts, out, n, cols))
                } else {
                    row_tiles!(MAX_R, acts.m, q4k_tile::<Q4K>(p, gb, nsb, acts, out, n, cols))
                }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6k(p: *const u8, gb: usize, nsb: usize, acts: &SuperActs, out: *mut f32, n: usize, cols: usize) {
                row_tiles!(MAX_R, acts.m, q6k_tile(p, gb, nsb, acts, out, n, cols))
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn blocks(
                format: BlockFormat,
                p: *const u8,
                gb: usize,
                nb: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
                cols: usize,
            ) {
                match format {
                    BlockFormat::Q41 => row_tiles!(MAX_R, acts.m, blocks_tile::<F_Q41>(p, gb, nb, acts, out, n, cols)),
                    BlockFormat::Q80 => row_tiles!(MAX_R, acts.m, blocks_tile::<F_Q80>(p, gb, nb, acts, out, n, cols)),
                    BlockFormat::Q50 => row_tiles!(MAX_R, acts.m, blocks_tile::<F_Q50>(p, gb, nb, acts, out, n, cols)),
                    BlockFormat::Q40 => row_tiles!(MAX_R, acts.m, blocks_tile::<F_Q40>(p, gb, nb, acts, out, n, cols)),
                    BlockFormat::Q51 => row_tiles!(MAX_R, acts.m, blocks_tile::<F_Q51>(p, gb, nb, acts, out, n, cols)),
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
path_kernels!(avx2, "avx2,fma,f16c", Avx2Y, 4);
#[cfg(target_arch = "x86_64")]
path_kernels!(vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", VnniY, 8);
#[cfg(target_arch = "x86_64")]
path_kernels!(zmm, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", VnniZ, 8);
