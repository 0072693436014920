//! Quantized matrix products `y = x · Wᵀ` for ggml-quantized weights (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q4_K, Q5_K, Q6_K), written so that every output row is computed by one fixed sequence
//! of operations, whatever the number of rows in the call: a token verified inside a block gets
//! the bits it gets decoded alone. Q4_K, Q5_K, Q4_0, Q5_0 and Q5_1 run in interleaved layouts of
//! their own ([`crate::packed`]); the others here too.
//!
//! As in llama.cpp, the activations are quantized to 8 bits (scale `d = max|x| / 127`, values
//! `round(x / d)` ties to even): for Q4_1 and Q8_0 per block of 32 values ([`QuantizedActs`];
//! for Q4_1's offset also the block sum `d · Σq`), for the K types per super-block of 256
//! ([`SuperActs`], llama.cpp's Q8_K), so that a super-block is summed in integers. One output is
//! then, for weight row `j` and activation row `r`:
//!
//! - Q4_1 and Q8_0, per block `b` of 32 values: the integer `S_b = Σ q_i · a_i` (exact in i32),
//!   then in f32, in lane `l = b mod 8`: `acc[l] = fma(S_b, d_w · d_a, acc[l])` (`d_w` the
//!   block's scale); Q4_1 likewise `mins[l] = fma(m_w, d_a · Σa, mins[l])`; at the end `h(acc)`,
//!   plus `h(mins)` for Q4_1, with the fixed reduction
//!   `h(v) = ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7))`; Q5_0 as Q8_0 with `q − 16` for `q`
//!   (its integer sum taken as `Σ q · a − 16 · Σa`, the same integer), Q4_0 with `q − 8`; Q5_1
//!   as Q4_1 with 5-bit `q`;
//! - Q6_K ([`matmul_q6k_on`]), per super-block: the integer `I = Σ_h sc_h · Σ (q_i − 32) · a_i`
//!   over its sixteen 16-value halves `h`, then `acc = fma(f32(I), d_w · d_a, acc)`; the output
//!   is `acc` (Q4_K: see [`crate::packed`]).
//!
//! The scalar path spells this out; the AVX2 path (`maddubs` + `madd`) and the AVX-512 VNNI path
//! (`vpdpbusd` on 256-bit registers; the packed kernels also on 512-bit ones, two groups of
//! columns per register, path `avx512zmm`) produce the same integer sums and run the same float
//! operations, so all of them give identical bits (the tests check it on every path the machine
//! has). [`crate::packed::PackedQ6K`] gives the Q6_K kernel's bits in an interleaved layout, for
//! calls of several rows. Work is split over output columns (weight rows) on candle's persistent
//! CPU thread pool, one parallel region per product, or per group of products that share an
//! input ([`matmul_fused_on`]); each weight row is read from memory once,
//! its blocks unpacked once per tile of up to 4 (AVX2) or 8 (AVX-512) activation rows.
//!
//! The path is picked at run time ([`selected_path`]): the best the CPU has (on AMD CPUs the best
//! 256-bit one, see [`default_path`]), or the best up to the one named by the environment
//! variable `DECODEBENCH_SIMD` (`scalar`, `avx2`, `avx512vnni`, `avx512zmm`).

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Storage, Tensor};
use half::f16;

/// Values per quantization block, for weights and activations.
pub const QK: usize = 32;
/// Output columns (weight rows) per work item.
const COLS: usize = 4;
/// Environment variable capping the SIMD path.
pub const SIMD_ENV: &str = "DECODEBENCH_SIMD";

/// Weight types these kernels cover, in ggml's block layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32 values: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit values `q` (`w = d·q + m`;
    /// byte `i` holds value `i` in its low nibble and value `i + 16` in its high nibble).
    Q4_1,
    /// 32 values: f16 scale `d`, 32 signed bytes `q` (`w = d·q`).
    Q8_0,
    /// 32 values: f16 scale `d`, 32 high bits (a little-endian u32, bit `i` for value `i`), 16
    /// bytes of low 4 bits laid out as Q4_1's (`w = d·(q − 16)`, `q` in 0..32).
    Q5_0,
    /// 32 values: f16 scale `d`, 16 bytes of 4-bit values laid out as Q4_1's (`w = d·(q − 8)`).
    Q4_0,
    /// 32 values: f16 scale `d`, f16 minimum `m`, 32 high bits and 16 bytes of low 4 bits laid
    /// out as Q5_0's (`w = d·q + m`, `q` in 0..32).
    Q5_1,
    /// 256 values: f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and minimums (one pair
    /// per 32 values), 128 bytes of 4-bit values (`w = d·sc·q − dmin·m`).
    Q4K,
    /// 256 values: Q4_K's `d`, `dmin` and scales, 32 bytes of high bits (bit `j` of byte `l`:
    /// value `l` of sub-block `j`), 128 bytes of low 4 bits as Q4_K's (`w = d·sc·q − dmin·m`,
    /// `q` in 0..32).
    Q5K,
    /// 256 values: 128 bytes of low 4 bits, 64 bytes of high 2 bits, sixteen i8 scales (one per
    /// 16 values), f16 `d` (`w = d·sc·(q − 32)`).
    Q6K,
}

impl WeightType {
    pub const ALL: [WeightType; 8] = [
        WeightType::Q4_1,
        WeightType::Q8_0,
        WeightType::Q5_0,
        WeightType::Q4_0,
        WeightType::Q5_1,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
    ];

    /// Values per ggml block (32, or 256 for the K types; `k` must be a multiple).
    pub fn block_values(self) -> usize {
        match self {
            Self::Q4_1 | Self::Q8_0 | Self::Q5_0 | Self::Q4_0 | Self::Q5_1 => QK,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per ggml block of [`Self::block_values`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
            Self::Q4_0 => 18,
            Self::Q5_1 => 24,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q5_1 => Some(Self::Q5_1),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q5K => Some(Self::Q5K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q5_0 => "Q5_0",
            Self::Q4_0 => "Q4_0",
            Self::Q5_1 => "Q5_1",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Whether the kernels run this type in an interleaved layout only ([`crate::packed`]): all
    /// but Q4_1, Q8_0 and Q6_K, which have kernels on ggml's layout too.
    pub fn runs_packed_only(self) -> bool {
        matches!(self, Self::Q5_0 | Self::Q4_0 | Self::Q5_1 | Self::Q4K | Self::Q5K)
    }

    /// Whether the kernels take this weight's rows of `k` values.
    pub fn fits(self, k: usize) -> bool {
        k > 0 && k.is_multiple_of(self.block_values())
    }
}

/// An implementation of the kernels; every one gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdPath {
    /// Plain Rust (the fallback on CPUs without AVX2, and off x86).
    Scalar,
    /// AVX2 + FMA + F16C: `vpmaddubsw` / `vpmaddwd` integer dot products.
    Avx2,
    /// AVX-512 VNNI with VL (and AVX2 + FMA + F16C): `vpdpbusd` on 256-bit registers.
    Avx512Vnni,
    /// AVX-512 VNNI with BW as well: the packed kernels run `vpdpbusd` on 512-bit registers,
    /// two groups of eight columns per register (see `crate::lanes`); the kernels on ggml's
    /// layout stay on 256-bit ones, as in [`Self::Avx512Vnni`].
    Avx512Zmm,
}

impl SimdPath {
    pub const ALL: [SimdPath; 4] = [SimdPath::Scalar, SimdPath::Avx2, SimdPath::Avx512Vnni, SimdPath::Avx512Zmm];

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx512Zmm => "avx512zmm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU runs the path (detected at run time).
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                Self::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Zmm => Self::Avx512Vnni.is_available() && is_x86_feature_detected!("avx512bw"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The paths this CPU runs, scalar first.
pub fn available_paths() -> Vec<SimdPath> {
    SimdPath::ALL.into_iter().filter(|p| p.is_available()).collect()
}

/// The path [`matmul`] uses: [`default_path`], or with `DECODEBENCH_SIMD` set the best path
/// the CPU runs up to the one named there (`avx512zmm` thus forces the 512-bit kernels on a CPU
/// whose default leaves them out).
pub fn selected_path() -> SimdPath {
    static PATH: OnceLock<SimdPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let available = available_paths();
        let default = default_path(&available, is_amd());
        match std::env::var(SIMD_ENV).ok().as_deref().map(SimdPath::parse) {
            Some(Some(cap)) => available.into_iter().rev().find(|&p| p <= cap).unwrap_or(SimdPath::Scalar),
            Some(None) => {
                eprintln!("warning: {SIMD_ENV} must be one of scalar, avx2, avx512vnni, avx512zmm; using {}", default.name());
                default
            }
            None => default,
        }
    })
}

/// [`selected_path`] as `doctor` and the run metadata state it, with why when it is not the best
/// this CPU has: `avx512vnni path (avx512zmm for packed products of many rows only, on AMD
/// CPUs: ...)` (see [`path_for`]).
pub fn selected_path_description() -> String {
    let (path, best) = (selected_path(), *available_paths().last().expect("scalar is always available"));
    let why = if path == best {
        String::new()
    } else if std::env::var_os(SIMD_ENV).is_some() {
        format!(" ({} too, capped by {SIMD_ENV})", best.name())
    } else if is_amd() {
        let from: Vec<String> = WeightType::ALL
            .into_iter()
            .filter_map(|wt| {
                // Shorter Q6_K rows stay on 256-bit registers (`PackedWeight::wide_min_rows`).
                let of = if wt == WeightType::Q6K { format!(" of {}+ values", crate::packed::Q6K_LONG_ROW) } else { String::new() };
                crate::packed::wide_min_rows(wt.ggml()).map(|rows| format!("{} from {rows} rows{of}", wt.name()))
            })
            .collect();
        format!(
            " ({} for packed products of many rows only, on AMD CPUs: {}; slower for fewer; {SIMD_ENV}={} forces it everywhere)",
            best.name(),
            from.join(", "),
            best.name()
        )
    } else {
        String::new()
    };
    format!("{} path{why}", path.name())
}

/// The best of the `available` paths, except that AMD CPUs stay on 256-bit registers: on a Zen 4
/// (whose 512-bit operations run as two 256-bit halves) the 512-bit kernels took up to twice as
/// long for 1 to 8 rows (criterion, Q4_K 8960x1536: 1 row 400 µs against 204, 8 rows 730 against
/// 574) and decoding slowed by 10-25%, while on an Intel Xeon they were 10-15% faster. Every path
/// gives the same bits, so this choice changes speed only.
pub fn default_path(available: &[SimdPath], amd: bool) -> SimdPath {
    available.iter().copied().rev().find(|&p| !(amd && p == SimdPath::Avx512Zmm)).unwrap_or(SimdPath::Scalar)
}

/// The path a packed product of `m` rows on `w` runs on, given the selected one: on AMD CPUs,
/// whose default stays on 256-bit registers ([`default_path`]), products of many rows take the
/// 512-bit kernels where the CPU has them (and `DECODEBENCH_SIMD` does not cap the path): with
/// many rows the kernels are bound by instructions rather than by memory, and a 512-bit
/// instruction does the work of two 256-bit ones even where it runs as two halves. Same bits
/// on every path, so this changes speed only.
pub fn path_for(selected: SimdPath, w: &crate::packed::PackedWeight, m: usize) -> SimdPath {
    static WIDE: OnceLock<bool> = OnceLock::new();
    let wide = *WIDE.get_or_init(|| is_amd() && SimdPath::Avx512Zmm.is_available() && std::env::var_os(SIMD_ENV).is_none());
    widened(selected, wide, w.wide_min_rows(), m)
}

/// [`path_for`]'s rule: `selected`, or the 512-bit path where `wide` allows it, the selected
/// path is the 256-bit VNNI one and the call has at least `min_rows` rows.
fn widened(selected: SimdPath, wide: bool, min_rows: Option<usize>, m: usize) -> SimdPath {
    match min_rows {
        Some(rows) if wide && selected == SimdPath::Avx512Vnni && m >= rows => SimdPath::Avx512Zmm,
        _ => selected,
    }
}

/// Whether the CPU's vendor is AMD (`AuthenticAMD`).
pub fn is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
        let r = std::arch::x86_64::__cpuid(0);
        [r.ebx, r.edx, r.ecx].iter().flat_map(|w| w.to_le_bytes()).eq(*b"AuthenticAMD")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Activations quantized to 8 bits per block of [`QK`]: `m` rows of `nb` blocks, each row
/// padded with zero blocks to `nbp` (a multiple of 8) so the kernels read whole groups of eight.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActs {
    pub m: usize,
    pub nb: usize,
    /// Blocks per row including the zero padding: `nb` rounded up to a multiple of 8.
    pub nbp: usize,
    /// `m · nbp · 32` values.
    pub qs: Vec<i8>,
    /// Scale per block (`m · nbp`).
    pub d: Vec<f32>,
    /// `d · Σq` per block (Q4_1's offset term).
    pub sa: Vec<f32>,
    /// `Σq` per block (Q5_0's offset term, `−16 · Σq`, exact in the integer sum).
    pub s: Vec<i32>,
}

impl QuantizedActs {
    /// Quantizes `m` rows of `k` values (`k` a multiple of [`QK`]); rows in parallel when many.
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK) && x.len() == m * k, "quantize: {} values for {m} rows of {k}", x.len());
        let nb = k / QK;
        let nbp = nb.div_ceil(8) * 8;
        let mut acts =
            QuantizedActs { m, nb, nbp, qs: vec![0; m * nbp * QK], d: vec![0.0; m * nbp], sa: vec![0.0; m * nbp], s: vec![0; m * nbp] };
        let (qs, d, sa, s) =
            (SyncPtr(acts.qs.as_mut_ptr()), SyncPtr(acts.d.as_mut_ptr()), SyncPtr(acts.sa.as_mut_ptr()), SyncPtr(acts.s.as_mut_ptr()));
        let rows = |rows: std::ops::Range<usize>| {
            for r in rows {
                // SAFETY: each row's slices are disjoint and within the buffers above.
                let (qs, d, sa, s) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qs.get().add(r * nbp * QK), k),
                        std::slice::from_raw_parts_mut(d.get().add(r * nbp), nb),
                        std::slice::from_raw_parts_mut(sa.get().add(r * nbp), nb),
                        std::slice::from_raw_parts_mut(s.get().add(r * nbp), nb),
                    )
                };
                quantize_row(&x[r * k..(r + 1) * k], qs, d, sa, s);
            }
        };
        for_rows(m, rows);
        acts
    }

    /// Row `r`'s values (without the padding).
    pub fn row_values(&self, r: usize) -> &[i8] {
        &self.qs[r * self.nbp * QK..(r * self.nbp + self.nb) * QK]
    }
}

fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], sa: &mut [f32], s: &mut [i32]) {
    for (b, (xs, qs)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = (v * inv).round_ties_even() as i8;
            sum += *q as i32;
        }
        d[b] = scale;
        sa[b] = scale * sum as f32;
        s[b] = sum;
    }
}

/// Activations quantized to 8 bits per super-block of 256 values, as llama.cpp's Q8_K, for the
/// Q4_K and Q6_K kernels: one scale per 256 values lets a kernel sum a whole super-block in integers
/// (each sub-block's sum times its 6-bit weight scale) and leave one float step per super-block
/// instead of one per 32 values, which is most of the arithmetic of a call of many rows. Scale
/// `d = max|x| / 127` over the super-block, values `round(x / d)` ties to even.
#[derive(Debug, Clone, PartialEq)]
pub struct SuperActs {
    pub m: usize,
    /// Super-blocks per row.
    pub nsb: usize,
    /// `m · nsb · 256` values.
    pub qs: Vec<i8>,
    /// Scale per super-block (`m · nsb`).
    pub d: Vec<f32>,
    /// `Σq` of each 32 values (`m · nsb · 8`; |Σ| ≤ 32 · 127 fits i16): Q4_K's minimum term.
    pub bs: Vec<i16>,
    /// `Σq` of each 16 values (`m · nsb · 16`): Q6_K's `−32` offset.
    pub hs: Vec<i16>,
}

impl SuperActs {
    /// Quantizes `m` rows of `k` values (`k` a multiple of 256); rows in parallel when many.
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(256) && x.len() == m * k, "quantize: {} values for {m} rows of {k}", x.len());
        let nsb = k / 256;
        let mut acts = SuperActs { m, nsb, qs: vec![0; m * k], d: vec![0.0; m * nsb], bs: vec![0; m * nsb * 8], hs: vec![0; m * nsb * 16] };
        let (qs, d) = (SyncPtr(acts.qs.as_mut_ptr()), SyncPtr(acts.d.as_mut_ptr()));
        let (bs, hs) = (SyncPtr(acts.bs.as_mut_ptr()), SyncPtr(acts.hs.as_mut_ptr()));
        let simd = cfg!(target_arch = "x86_64") && selected_path() != SimdPath::Scalar;
        let rows = |rows: std::ops::Range<usize>| {
            for r in rows {
                // SAFETY: each row's slices are disjoint and within the buffers above.
                let (qs, d, bs, hs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qs.get().add(r * k), k),
                        std::slice::from_raw_parts_mut(d.get().add(r * nsb), nsb),
                        std::slice::from_raw_parts_mut(bs.get().add(r * nsb * 8), nsb * 8),
                        std::slice::from_raw_parts_mut(hs.get().add(r * nsb * 16), nsb * 16),
                    )
                };
                for (sb, (xs, qs)) in x[r * k..(r + 1) * k].chunks_exact(256).zip(qs.chunks_exact_mut(256)).enumerate() {
                    let (xb, qb, hb): (&[f32; 256], &mut [i8; 256], &mut [i16; 16]) = (
                        xs.try_into().expect("256 values"),
                        qs.try_into().expect("256 values"),
                        (&mut hs[16 * sb..16 * sb + 16]).try_into().expect("16 sums"),
                    );
                    d[sb] = if simd {
                        // SAFETY: `simd` is set only where the CPU has AVX2.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx2_quantize_super_block(xb, qb, hb)
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        unreachable!("simd is x86 only")
                    } else {
                        quantize_super_block(xb, qb, hb)
                    };
                    for j in 0..8 {
                        bs[8 * sb + j] = hs[16 * sb + 2 * j] + hs[16 * sb + 2 * j + 1];
                    }
                }
            }
        };
        for_rows(m, rows);
        acts
    }

    /// Row `r`'s values.
    pub fn row_values(&self, r: usize) -> &[i8] {
        &self.qs[r * self.nsb * 256..(r + 1) * self.nsb * 256]
    }
}

/// One super-block of [`SuperActs::quantize`]: its values and per-16 sums; returns its scale.
fn quantize_super_block(xs: &[f32; 256], qs: &mut [i8; 256], hs: &mut [i16; 16]) -> f32 {
    let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (h, (xs, qs)) in xs.chunks_exact(16).zip(qs.chunks_exact_mut(16)).enumerate() {
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = (v * inv).round_ties_even() as i8;
            sum += *q as i32;
        }
        hs[h] = sum as i16;
    }
    amax / 127.0
}

/// [`quantize_super_block`] in AVX2, with its results for finite inputs (every SIMD path uses
/// it, the scalar path the portable form): the maximum is exact in any order, `x · inv` is the
/// same product, and `vroundps` to nearest even then `vcvtps2dq` is `round_ties_even` then a
/// cast for values within ±127.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_quantize_super_block(xs: &[f32; 256], qs: &mut [i8; 256], hs: &mut [i16; 16]) -> f32 {
    use core::arch::x86_64::*;
    let (px, pq) = (xs.as_ptr(), qs.as_mut_ptr());
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in 0..32 {
        // max(|x|, m) returns m for a NaN x, as `f32::max` ignores NaN.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(px.add(8 * i))), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    for (h, sum) in hs.iter_mut().enumerate() {
        let q = |i: usize| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(px.add(16 * h + 8 * i)), inv);
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
        };
        let (a, b) = (q(0), q(1));
        // i32 → i16 → i8 (no saturation within ±127); the lane-crossing pack put back in order.
        let p = _mm256_permute4x64_epi64::<0xd8>(_mm256_packs_epi32(a, b));
        _mm_storeu_si128(pq.add(16 * h) as *mut __m128i, _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p)));
        let s = _mm256_add_epi32(a, b);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4e>(s));
        *sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0xb1>(s))) as i16;
    }
    amax / 127.0
}

/// Runs `rows` over `0..m`: on candle's thread pool from 8 rows, on this thread below (where
/// the pool's start costs more than the work).
fn for_rows(m: usize, rows: impl Fn(std::ops::Range<usize>) + Sync) {
    if m < 8 {
        rows(0..m);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(m, rows);
    }
}

/// A raw pointer the pool's workers may share; every user writes disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    // A method (not field access) so closures capture the whole wrapper, which is Sync.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `out (m, n) = x (m, k) · Wᵀ` for `w`: `n` rows of `k / 32` blocks of `wt`, on the selected path.
pub fn matmul(wt: WeightType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    matmul_on(selected_path(), wt, w, n, k, x, m, out)
}

/// [`matmul`] on a given path (tests and benchmarks force each one).
#[allow(clippy::too_many_arguments)]
pub fn matmul_on(path: SimdPath, wt: WeightType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    if !wt.fits(k) {
        candle_core::bail!("quantized matmul: k = {k} is not a multiple of {} ({})", wt.block_values(), wt.name());
    }
    if wt.runs_packed_only() {
        // Q4_K, Q5_K, Q5_0, Q4_0 and Q5_1 run in their interleaved layout (models repack once at
        // load, see [`qmatmul_packed`]).
        let packed = crate::packed::PackedWeight::new(wt.ggml(), w, n, k)?.expect("a packed type");
        return packed.matmul_on(path, x, m, out);
    }
    if wt == WeightType::Q6K {
        if x.len() != m * k {
            candle_core::bail!("quantized matmul: {} input values for {m} rows of {k}", x.len());
        }
        return matmul_q6k_on(path, w, n, k, &SuperActs::quantize(x, m, k), out);
    }
    matmul_quantized_on(path, wt, w, n, k, &QuantizedActs::quantize(x, m, k), out)
}

/// Q5_0 blocks (f16 scale, 32 high bits, 16 bytes of low nibbles; value `q − 16` with `q` in
/// 0..32) as Q8_0 blocks (the same f16 scale, 32 signed bytes `q − 16`): the same weights
/// exactly, 34 bytes per 32 values instead of 22.
pub fn q5_0_to_q8_0(data: &[u8]) -> Result<Vec<u8>> {
    const Q5: usize = 22;
    if !data.len().is_multiple_of(Q5) {
        candle_core::bail!("Q5_0 data of {} bytes is not a whole number of 22-byte blocks", data.len());
    }
    let mut out = Vec::with_capacity(data.len() / Q5 * 34);
    for blk in data.chunks_exact(Q5) {
        out.extend_from_slice(&blk[..2]);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let qs = &blk[6..22];
        let value = |j: usize| -> u8 {
            let low = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
            let high = ((qh >> j) & 1) as u8;
            ((low | (high << 4)) as i8 - 16) as u8
        };
        out.extend((0..32).map(value));
    }
    Ok(out)
}

/// The product for activations already quantized (Q4_1, Q8_0; the K types take [`SuperActs`]:
/// [`matmul_q6k_on`], [`crate::packed::PackedQ4K`]; Q5_0 runs packed only,
/// [`crate::packed::PackedBlocks`]).
pub fn matmul_quantized_on(
    path: SimdPath,
    wt: WeightType,
    w: &[u8],
    n: usize,
    k: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<()> {
    run(&[quantized_work(path, wt, w, n, k, acts, out)?]);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn quantized_work<'a>(
    path: SimdPath,
    wt: WeightType,
    w: &'a [u8],
    n: usize,
    k: usize,
    acts: &'a QuantizedActs,
    out: &'a mut [f32],
) -> Result<Work<'a>> {
    if matches!(wt, WeightType::Q4K | WeightType::Q5K | WeightType::Q6K) {
        candle_core::bail!("quantized matmul: {} takes activations in super-blocks (SuperActs)", wt.name());
    }
    if wt.runs_packed_only() {
        candle_core::bail!("quantized matmul: {} runs in its packed layout (packed::PackedBlocks)", wt.name());
    }
    let nb = k / QK;
    let stride = k / wt.block_values() * wt.block_bytes();
    if !wt.fits(k) || acts.nb != nb || w.len() != n * stride || out.len() != acts.m * n {
        candle_core::bail!(
            "quantized matmul: {} weight bytes for ({n}, {k}) {}, {} activation blocks per row, {} outputs for {} rows",
            w.len(),
            wt.name(),
            acts.nb,
            out.len(),
            acts.m
        );
    }
    check_path(path)?;
    if acts.m == 0 || n == 0 {
        return Ok(Work::new(0, |_| {}));
    }
    Ok(tile_work(n, out, move |j0, cols, op| {
        // SAFETY: the weight rows j0..j0 + cols are within `w` (checked above); `op` is column
        // j0 of the output, whose columns j0..j0 + cols are this tile's alone.
        unsafe {
            let wp = w.as_ptr().add(j0 * stride);
            match path {
                SimdPath::Scalar => scalar::tile(wt, wp, stride, nb, cols, acts, op, n),
                #[cfg(target_arch = "x86_64")]
                SimdPath::Avx2 => avx2::tile(wt, wp, stride, nb, cols, acts, op, n),
                #[cfg(target_arch = "x86_64")]
                SimdPath::Avx512Vnni | SimdPath::Avx512Zmm => vnni::tile(wt, wp, stride, nb, cols, acts, op, n),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("checked by is_available"),
            }
        }
    }))
}

/// A Q6_K weight on ggml's layout against activations in super-blocks (the kernel calls of one
/// row take; [`crate::packed::PackedQ6K`] gives its bits for more). Per weight row and activation
/// row, super-block after super-block: the exact integer `I = Σ_h sc_h · Σ (q − 32) · a` over the
/// sixteen 16-value halves `h`, then `acc = fma(f32(I), d · d_a, acc)`; the output is `acc`.
pub fn matmul_q6k_on(path: SimdPath, w: &[u8], n: usize, k: usize, acts: &SuperActs, out: &mut [f32]) -> Result<()> {
    run(&[q6k_work(path, w, n, k, acts, out)?]);
    Ok(())
}

fn q6k_work<'a>(path: SimdPath, w: &'a [u8], n: usize, k: usize, acts: &'a SuperActs, out: &'a mut [f32]) -> Result<Work<'a>> {
    let nsb = k / 256;
    if !WeightType::Q6K.fits(k) || acts.nsb != nsb || w.len() != n * nsb * 210 || out.len() != acts.m * n {
        candle_core::bail!(
            "quantized matmul: {} weight bytes for ({n}, {k}) Q6_K, {} activation super-blocks per row, {} outputs for {} rows",
            w.len(),
            acts.nsb,
            out.len(),
            acts.m
        );
    }
    check_path(path)?;
    if acts.m == 0 || n == 0 {
        return Ok(Work::new(0, |_| {}));
    }
    Ok(tile_work(n, out, move |j0, cols, op| {
        // SAFETY: as in `quantized_work`.
        unsafe {
            let wp = w.as_ptr().add(j0 * nsb * 210);
            match path {
                SimdPath::Scalar => scalar::q6k_tile(wp, nsb, cols, acts, op, n),
                #[cfg(target_arch = "x86_64")]
                SimdPath::Avx2 => avx2::q6k_tile(wp, nsb, cols, acts, op, n),
                #[cfg(target_arch = "x86_64")]
                SimdPath::Avx512Vnni | SimdPath::Avx512Zmm => vnni::q6k_tile(wp, nsb, cols, acts, op, n),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("checked by is_available"),
            }
        }
    }))
}

/// An error unless this CPU runs `path`.
pub(crate) fn check_path(path: SimdPath) -> Result<()> {
    if !path.is_available() {
        candle_core::bail!("quantized matmul: this CPU has no {} path", path.name());
    }
    Ok(())
}

/// The work of `tile(j0, cols, out + j0)` over the output's columns in tiles of [`COLS`], a call
/// per tile.
fn tile_work<'a>(n: usize, out: &'a mut [f32], tile: impl Fn(usize, usize, *mut f32) + Sync + 'a) -> Work<'a> {
    let out_ptr = SyncPtr(out.as_mut_ptr());
    Work::new(n.div_ceil(COLS), move |t| {
        let j0 = t * COLS;
        // SAFETY: j0 < n, within every output row.
        tile(j0, COLS.min(n - j0), unsafe { out_ptr.get().add(j0) })
    })
}

/// One product's work, split into `calls` independent calls that write disjoint output columns:
/// to run alone or beside other products' work in one parallel region ([`run`]).
pub(crate) struct Work<'a> {
    calls: usize,
    call: Box<dyn Fn(usize) + Sync + 'a>,
}

impl<'a> Work<'a> {
    /// `call(i)` for `i` in `0..calls`. The lifetime ties the work to the output it writes.
    pub(crate) fn new(calls: usize, call: impl Fn(usize) + Sync + 'a) -> Self {
        Self { calls, call: Box::new(call) }
    }
}

/// Runs every call of every work in one parallel region on candle's thread pool (on this thread
/// when there is a single call in all): one start and one barrier however many products share
/// it; the pool hands out calls dynamically, so products of unequal cost balance.
pub(crate) fn run(works: &[Work]) {
    let total: usize = works.iter().map(|w| w.calls).sum();
    let one = |mut i: usize| {
        for w in works {
            if i < w.calls {
                return (w.call)(i);
            }
            i -= w.calls;
        }
    };
    match total {
        0 => {}
        1 => one(0),
        _ => candle_core::utils::barrier_pool().execute_chunked(total, |range| range.for_each(&one)),
    }
}

/// Whether [`qmatmul`] covers this weight (a CPU tensor `(n, k)` of a covered type, `k` a
/// multiple of its block).
pub fn covers(w: &QTensor) -> bool {
    WeightType::from_ggml(w.dtype()).is_some_and(|wt| matches!(w.shape().dims(), [_, k] if wt.fits(*k))) && w.device().is_cpu()
}

/// `x · wᵀ` for f32 `x (.., k)` on the CPU and a weight repacked by
/// [`crate::packed::PackedWeight::new`], on the selected path.
pub fn qmatmul_packed(w: &crate::packed::PackedWeight, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.shape();
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() == 0 || x.dim(candle_core::D::Minus1)? != k {
        candle_core::bail!("quantized matmul: input {:?} ({:?}) does not fit a packed ({n}, {k}) weight", x.shape(), x.dtype());
    }
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    let out = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("quantized matmul: input is not on the CPU") };
        w.matmul(&cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + m * k], m)?
    };
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// One weight of a fused product ([`qmatmul_fused`]).
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    /// A repacked weight, whatever the number of rows (the caller checks
    /// [`crate::packed::PackedWeight::serves`]).
    Packed(&'a crate::packed::PackedWeight),
    /// A Q6_K weight of `n` rows on ggml's layout (`data`: its blocks).
    Q6kGgml { data: &'a [u8], n: usize },
}

impl Operand<'_> {
    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            Self::Packed(p) => p.shape(),
            Self::Q6kGgml { data, n } => (n, data.len().checked_div(n).map_or(0, |row| row / 210 * 256)),
        }
    }
}

/// `outs[i] (m, n_i) = x (m, k) · W_iᵀ` for weights sharing `k`, on `path`: each activation form
/// the weights take is quantized once, and all the products run in one parallel region (one
/// start and one barrier rather than one per weight: the Q, K, V projections of a layer, or its
/// gate and up projections, at one token). Each output has the bits its weight's own product
/// gives.
pub fn matmul_fused_on(path: SimdPath, ops: &[Operand], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
    fused_on(&vec![path; ops.len()], ops, x, m)
}

/// [`matmul_fused_on`] with a path per operand.
fn fused_on(paths: &[SimdPath], ops: &[Operand], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
    use crate::packed::PackedWeight;
    let Some(k) = ops.first().map(|op| op.shape().1) else { return Ok(Vec::new()) };
    if let Some(op) = ops.iter().find(|op| op.shape().1 != k) {
        candle_core::bail!("fused matmul: weights of {k} and {} inputs", op.shape().1);
    }
    if x.len() != m * k {
        candle_core::bail!("fused matmul: {} input values for {m} rows of {k}", x.len());
    }
    let blocks = |op: &Operand| matches!(op, Operand::Packed(PackedWeight::Blocks(_)));
    let sup = ops.iter().any(|op| !blocks(op)).then(|| SuperActs::quantize(x, m, k));
    let qa = ops.iter().any(blocks).then(|| QuantizedActs::quantize(x, m, k));
    let mut outs: Vec<Vec<f32>> = ops.iter().map(|op| vec![0f32; m * op.shape().0]).collect();
    let works = ops
        .iter()
        .zip(outs.iter_mut())
        .zip(paths)
        .map(|((op, out), &path)| {
            let (sup, qa) = (sup.as_ref(), qa.as_ref());
            match *op {
                Operand::Packed(PackedWeight::Q4K(p)) => p.work(path, sup.expect("quantized above"), out),
                Operand::Packed(PackedWeight::Q6K(p)) => p.work(path, sup.expect("quantized above"), out),
                Operand::Packed(PackedWeight::Blocks(p)) => p.work(path, qa.expect("quantized above"), out),
                Operand::Q6kGgml { data, n } => q6k_work(path, data, n, k, sup.expect("quantized above"), out),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    run(&works);
    drop(works);
    Ok(outs)
}

/// [`matmul_fused_on`] for f32 `x (.., k)` on the CPU, on the selected path: one tensor per
/// weight, `(.., n_i)`.
pub fn qmatmul_fused(ops: &[Operand], x: &Tensor) -> Result<Vec<Tensor>> {
    let Some(k) = ops.first().map(|op| op.shape().1) else { return Ok(Vec::new()) };
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() == 0 || x.dim(candle_core::D::Minus1)? != k {
        candle_core::bail!("fused matmul: input {:?} ({:?}) does not fit weights of {k} inputs", x.shape(), x.dtype());
    }
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    let outs = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("fused matmul: input is not on the CPU") };
        let paths: Vec<SimdPath> = ops
            .iter()
            .map(|op| match op {
                Operand::Packed(w) => path_for(selected_path(), w, m),
                Operand::Q6kGgml { .. } => selected_path(),
            })
            .collect();
        fused_on(&paths, ops, &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + m * k], m)?
    };
    ops.iter()
        .zip(outs)
        .map(|(op, out)| {
            let mut dims = x.dims().to_vec();
            *dims.last_mut().expect("rank >= 1") = op.shape().0;
            Tensor::from_vec(out, dims, &Device::Cpu)
        })
        .collect()
}

/// `x · wᵀ` for f32 `x (.., k)` on the CPU and a weight [`covers`] accepts, on the selected path;
/// `None` when these kernels do not apply. (A Q4_K weight is repacked on every call here: models
/// repack it once, see [`qmatmul_packed`].)
pub fn qmatmul(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let Some(wt) = WeightType::from_ggml(w.dtype()) else { return Ok(None) };
    let &[n, k] = w.shape().dims() else { return Ok(None) };
    if !w.device().is_cpu() || !x.device().is_cpu() || x.dtype() != DType::F32 || !wt.fits(k) {
        return Ok(None);
    }
    if x.rank() == 0 || x.dim(candle_core::D::Minus1)? != k {
        candle_core::bail!("quantized matmul: input {:?} does not fit a ({n}, {k}) weight", x.shape());
    }
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    let data = w.data()?;
    let mut out = vec![0f32; m * n];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { return Ok(None) };
        let xs = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + m * k];
        matmul(wt, &data, n, k, xs, m, &mut out)?;
    }
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(out, dims, &Device::Cpu).map(Some)
}

#[inline]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[inline]
fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass a pointer into a block.
    f16::from_bits(unsafe { std::ptr::read_unaligned(p as *const u16) }).to_f32()
}

/// The reference arithmetic, in plain Rust.
mod scalar {
    use super::*;

    /// Block `b`'s (32 values) integer sum `S_b` against activations `a`, its scale `d_w` and
    /// its offset factor `m_w` (0 for the types without one).
    #[inline]
    pub(super) fn block(wt: WeightType, row: &[u8], b: usize, a: &[i8]) -> (i32, f32, f32) {
        let dot = |v: &mut dyn Iterator<Item = i32>, a: &[i8]| -> i32 { v.zip(a).map(|(w, &a)| w * a as i32).sum() };
        match wt {
            WeightType::Q4_1 => {
                let blk = &row[b * 20..(b + 1) * 20];
                let qs = &blk[4..20];
                let v = qs.iter().map(|&q| (q & 0x0f) as i32).chain(qs.iter().map(|&q| (q >> 4) as i32));
                (dot(&mut { v }, a), f16_at(blk.as_ptr()), f16_at(blk[2..].as_ptr()))
            }
            WeightType::Q8_0 => {
                let blk = &row[b * 34..(b + 1) * 34];
                (dot(&mut blk[2..34].iter().map(|&q| q as i8 as i32), a), f16_at(blk.as_ptr()), 0.0)
            }
            WeightType::Q5_0 | WeightType::Q4_0 | WeightType::Q5_1 => unreachable!("runs packed"),
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => unreachable!("the K types take super-blocks (SuperActs)"),
        }
    }

    /// Super-block `sb`'s (256 values) exact integer sum of a Q6_K row against activations `a`
    /// (its 256 values), and its `d`.
    fn q6k_super_block(row: &[u8], sb: usize, a: &[i8]) -> (i32, f32) {
        let blk = &row[sb * 210..(sb + 1) * 210];
        let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
        let mut sum = 0i32;
        for j in 0..8 {
            let (h, t) = (j / 4, j % 4);
            let value = |l: usize| -> i32 {
                let low = ql[64 * h + l + 32 * (t & 1)];
                let low = if t < 2 { low & 0x0f } else { low >> 4 };
                let high = (qh[32 * h + l] >> (2 * t)) & 3;
                (low | (high << 4)) as i32 - 32
            };
            for i in 0..2 {
                let s: i32 = (16 * i..16 * i + 16).map(|l| value(l) * a[QK * j + l] as i32).sum();
                sum += s * sc[2 * j + i] as i8 as i32;
            }
        }
        (sum, f16_at(blk[208..].as_ptr()))
    }

    /// # Safety
    /// `w` points at `cols` Q6_K weight rows of `nsb` super-blocks, `out` at column 0 of an
    /// `(m, n)` output.
    pub(super) unsafe fn q6k_tile(w: *const u8, nsb: usize, cols: usize, acts: &SuperActs, out: *mut f32, n: usize) {
        for c in 0..cols {
            let row = std::slice::from_raw_parts(w.add(c * nsb * 210), nsb * 210);
            for r in 0..acts.m {
                let mut acc = 0f32;
                for sb in 0..nsb {
                    let b = r * nsb + sb;
                    let (s, d) = q6k_super_block(row, sb, &acts.qs[b * 256..(b + 1) * 256]);
                    acc = (s as f32).mul_add(d * acts.d[b], acc);
                }
                *out.add(r * n + c) = acc;
            }
        }
    }

    /// # Safety
    /// `w` points at `cols` weight rows of `stride` bytes, `out` at column 0 of an `(m, n)` output.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        wt: WeightType,
        w: *const u8,
        stride: usize,
        nb: usize,
        cols: usize,
        acts: &QuantizedActs,
        out: *mut f32,
        n: usize,
    ) {
        for c in 0..cols {
            let row = std::slice::from_raw_parts(w.add(c * stride), stride);
            for r in 0..acts.m {
                // Lane `b % 8` accumulates block b.
                let mut acc = [0f32; 8];
                let mut mins = [0f32; 8];
                for b in 0..nb {
                    let i = r * acts.nbp + b;
                    let (s, dw, mw) = block(wt, row, b, &acts.qs[i * QK..(i + 1) * QK]);
                    let lane = b % 8;
                    acc[lane] = (s as f32).mul_add(dw * acts.d[i], acc[lane]);
                    if wt == WeightType::Q4_1 {
                        mins[lane] = mw.mul_add(acts.sa[i], mins[lane]);
                    }
                }
                let y = match wt {
                    WeightType::Q4_1 => hsum8(acc) + hsum8(mins),
                    WeightType::Q8_0 => hsum8(acc),
                    WeightType::Q5_0 | WeightType::Q4_0 | WeightType::Q5_1 => unreachable!("runs packed"),
                    WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => unreachable!("the K types take super-blocks"),
                };
                *out.add(r * n + c) = y;
            }
        }
    }
}

/// All eight 6-bit scales and minimums of a Q4_K super-block, byte j for sub-block j, unpacked
/// with word operations. Bytes 0..4 hold the low 6 bits of scales 0..3 and bytes 4..8 those of
/// minimums 0..3; bytes 8..12 hold the low 4 bits of scales 4..7 (low nibbles) and minimums 4..7
/// (high nibbles), whose top 2 bits are the top bits of bytes 0..4 and 4..8.
#[inline]
pub(crate) fn scales_mins_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let sc = [a & LOW6, (c & LOW4) | (((a >> 6) & LOW2) << 4)];
    let mn = [b & LOW6, ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4)];
    let bytes = |v: [u32; 2]| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&v[0].to_le_bytes());
        out[4..].copy_from_slice(&v[1].to_le_bytes());
        out
    };
    (bytes(sc), bytes(mn))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_avx2(u: core::arch::x86_64::__m256i, s: core::arch::x86_64::__m256i) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    // u8 × i8 pairs summed to i16 (at most 2 · 255 · 127 < 2^15 for the values used here: Q4_1
    // nibbles ≤ 15, Q8_0 magnitudes ≤ 128 against activations ≤ 127), then pairs to i32.
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn dot_vnni(u: core::arch::x86_64::__m256i, s: core::arch::x86_64::__m256i) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// The x86 kernels, stamped out per path: `$dot` is the integer block dot product and
/// `$max_rows` the activation rows per register tile.
///
/// Q4_1 and Q8_0 blocks go in groups of eight: the eight blocks' integer sums are reduced into
/// one vector (lane j: block 8g + j), multiplied by the eight scales in one step and accumulated
/// in one fma, which is the scalar path's per-lane arithmetic. A ragged last group reads
/// zero-padded weight blocks (a copy) and the activations' zero padding; its empty lanes add
/// exact zeros. A Q6_K super-block's integer sum is gathered in one vector and reduced once.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_path {
    ($name:ident, $features:literal, $dot:ident, $max_rows:literal) => {
        mod $name {
            use super::*;
            use core::arch::x86_64::*;

            const MAX_R: usize = $max_rows;

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn hsum(v: __m256) -> f32 {
                // ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), as `hsum8`.
                let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
                _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
            }

            /// Lane j of the result: the sum of the eight i32 lanes of `s[j]` (exact).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn reduce8(s: &[__m256i; 8]) -> __m256i {
                let h01 = _mm256_hadd_epi32(s[0], s[1]);
                let h23 = _mm256_hadd_epi32(s[2], s[3]);
                let h45 = _mm256_hadd_epi32(s[4], s[5]);
                let h67 = _mm256_hadd_epi32(s[6], s[7]);
                let h0123 = _mm256_hadd_epi32(h01, h23);
                let h4567 = _mm256_hadd_epi32(h45, h67);
                let lo = _mm256_permute2x128_si256::<0x20>(h0123, h4567);
                let hi = _mm256_permute2x128_si256::<0x31>(h0123, h4567);
                _mm256_add_epi32(lo, hi)
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn f16_scalar(p: *const u8) -> f32 {
                let bits = std::ptr::read_unaligned(p as *const u16);
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
            }

            /// Eight f16 values at `p`, `p + step`, ... as f32.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn f16x8(p: *const u8, step: usize) -> __m256 {
                let h = |j: usize| std::ptr::read_unaligned(p.add(j * step) as *const i16);
                _mm256_cvtph_ps(_mm_set_epi16(h(7), h(6), h(5), h(4), h(3), h(2), h(1), h(0)))
            }

            /// Eight Q4_1 blocks at `w` against rows r0..r0+R at block `b0` (a multiple of 8).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_1_group<const R: usize>(
                w: *const u8,
                acts: &QuantizedActs,
                r0: usize,
                b0: usize,
                acc: &mut [__m256; R],
                mins: &mut [__m256; R],
            ) {
                let mask = _mm_set1_epi8(0x0f);
                let dw = f16x8(w, 20);
                let mw = f16x8(w.add(2), 20);
                let mut wv = [_mm256_setzero_si256(); 8];
                for (j, wv) in wv.iter_mut().enumerate() {
                    let x = _mm_loadu_si128(w.add(j * 20 + 4) as *const __m128i);
                    *wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(x), mask), _mm_and_si128(x, mask));
                }
                for r in 0..R {
                    let i = (r0 + r) * acts.nbp + b0;
                    let a = acts.qs.as_ptr().add(i * QK);
                    let mut s = [_mm256_setzero_si256(); 8];
                    for j in 0..8 {
                        s[j] = $dot(wv[j], _mm256_loadu_si256(a.add(j * QK) as *const __m256i));
                    }
                    let isum = _mm256_cvtepi32_ps(reduce8(&s));
                    let da = _mm256_loadu_ps(acts.d.as_ptr().add(i));
                    let sa = _mm256_loadu_ps(acts.sa.as_ptr().add(i));
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, da), acc[r]);
                    mins[r] = _mm256_fmadd_ps(mw, sa, mins[r]);
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn q4_1<const R: usize>(w: *const u8, nb: usize, acts: &QuantizedActs, r0: usize, out: *mut f32, n: usize) {
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [_mm256_setzero_ps(); R];
                let full = nb / 8;
                for g in 0..full {
                    q4_1_group::<R>(w.add(g * 8 * 20), acts, r0, g * 8, &mut acc, &mut mins);
                }
                if full * 8 < nb {
                    let mut tail = [0u8; 8 * 20];
                    let left = (nb - full * 8) * 20;
                    std::ptr::copy_nonoverlapping(w.add(full * 8 * 20), tail.as_mut_ptr(), left);
                    q4_1_group::<R>(tail.as_ptr(), acts, r0, full * 8, &mut acc, &mut mins);
                }
                for r in 0..R {
                    *out.add((r0 + r) * n) = hsum(acc[r]) + hsum(mins[r]);
                }
            }

            /// Eight Q8_0 blocks at `w` against rows r0..r0+R at block `b0`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q8_0_group<const R: usize>(w: *const u8, acts: &QuantizedActs, r0: usize, b0: usize, acc: &mut [__m256; R]) {
                let dw = f16x8(w, 34);
                let mut wq = [_mm256_setzero_si256(); 8];
                for (j, wq) in wq.iter_mut().enumerate() {
                    *wq = _mm256_loadu_si256(w.add(j * 34 + 2) as *const __m256i);
                }
                for r in 0..R {
                    let i = (r0 + r) * acts.nbp + b0;
                    let a = acts.qs.as_ptr().add(i * QK);
                    let mut s = [_mm256_setzero_si256(); 8];
                    for j in 0..8 {
                        let av = _mm256_loadu_si256(a.add(j * QK) as *const __m256i);
                        // |w| · (a with w's sign): the same products, as u8 × i8.
                        s[j] = $dot(_mm256_abs_epi8(wq[j]), _mm256_sign_epi8(av, wq[j]));
                    }
                    let isum = _mm256_cvtepi32_ps(reduce8(&s));
                    let da = _mm256_loadu_ps(acts.d.as_ptr().add(i));
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, da), acc[r]);
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn q8_0<const R: usize>(w: *const u8, nb: usize, acts: &QuantizedActs, r0: usize, out: *mut f32, n: usize) {
                let mut acc = [_mm256_setzero_ps(); R];
                let full = nb / 8;
                for g in 0..full {
                    q8_0_group::<R>(w.add(g * 8 * 34), acts, r0, g * 8, &mut acc);
                }
                if full * 8 < nb {
                    let mut tail = [0u8; 8 * 34];
                    let left = (nb - full * 8) * 34;
                    std::ptr::copy_nonoverlapping(w.add(full * 8 * 34), tail.as_mut_ptr(), left);
                    q8_0_group::<R>(tail.as_ptr(), acts, r0, full * 8, &mut acc);
                }
                for r in 0..R {
                    *out.add((r0 + r) * n) = hsum(acc[r]);
                }
            }

            /// The sum of the eight i32 lanes (exact).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn hsum_i32(v: __m256i) -> i32 {
                let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b01_00_11_10>(x));
                _mm_cvtsi128_si32(_mm_add_epi32(x, _mm_shuffle_epi32::<0b00_00_00_01>(x)))
            }

            /// One Q6_K super-block at `w` against rows r0..r0+R at super-block `sb`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q6k_group<const R: usize>(w: *const u8, acts: &SuperActs, r0: usize, sb: usize, acc: &mut [f32; R]) {
                let (ql, qh, scp) = (w, w.add(128), w.add(192));
                let d = f16_scalar(w.add(208));
                let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
                // The unsigned 6-bit values q; the −32 is applied once per row below, through the
                // activations' half sums.
                let mut wq = [_mm256_setzero_si256(); 8];
                for h in 0..2 {
                    let l0 = _mm256_loadu_si256(ql.add(64 * h) as *const __m256i);
                    let l1 = _mm256_loadu_si256(ql.add(64 * h + 32) as *const __m256i);
                    let hb = _mm256_loadu_si256(qh.add(32 * h) as *const __m256i);
                    // High bits 2t..2t+2 of qh moved to bits 4..6 of each byte (16-bit shifts
                    // bring neighbour bits only into positions the mask clears).
                    let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30);
                    let h1 = _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30);
                    let h2 = _mm256_and_si256(hb, m30);
                    let h3 = _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30);
                    wq[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
                    wq[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
                    wq[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), h2);
                    wq[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), h3);
                }
                // The sixteen i8 scales as i16, in half order (sc[2j + i]: half i of block j).
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scp as *const __m128i));
                // Block j's pair: sc[2j] across the low 128 bits (the maddubs sums of values
                // 0..16), sc[2j + 1] across the high ones, picked by byte shuffles from a copy of
                // scales 0..8 (blocks 0..4) or 8..16 (blocks 4..8) in both lanes.
                let halves = [_mm256_permute2x128_si256::<0x00>(sc16, sc16), _mm256_permute2x128_si256::<0x11>(sc16, sc16)];
                let mut sc = [_mm256_setzero_si256(); 8];
                for (j, sc) in sc.iter_mut().enumerate() {
                    let b = 4 * (j % 4) as i16;
                    let pick = _mm256_set_m128i(_mm_set1_epi16(((b + 3) << 8) | (b + 2)), _mm_set1_epi16(((b + 1) << 8) | b));
                    *sc = _mm256_shuffle_epi8(halves[j / 4], pick);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = (r0 + r) * acts.nsb + sb;
                    let a = acts.qs.as_ptr().add(b * 256);
                    // q · a pairs (≤ 2·63·127), then × each half's scale; the super-block's
                    // integer sum in one vector (exact: any order).
                    let mut s = [_mm256_setzero_si256(); 2];
                    for j in 0..8 {
                        let av = _mm256_loadu_si256(a.add(j * QK) as *const __m256i);
                        s[j % 2] = _mm256_add_epi32(s[j % 2], _mm256_madd_epi16(_mm256_maddubs_epi16(wq[j], av), sc[j]));
                    }
                    // Σ_h sc_h · Σa_h, times 32: the offset's share.
                    let hs = _mm256_loadu_si256(acts.hs.as_ptr().add(16 * b) as *const __m256i);
                    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, hs));
                    let isum = hsum_i32(_mm256_sub_epi32(_mm256_add_epi32(s[0], s[1]), offset));
                    *acc = (isum as f32).mul_add(d * *acts.d.get_unchecked(b), *acc);
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn q6k<const R: usize>(w: *const u8, nsb: usize, acts: &SuperActs, r0: usize, out: *mut f32, n: usize) {
                let mut acc = [0f32; R];
                for sb in 0..nsb {
                    q6k_group::<R>(w.add(sb * 210), acts, r0, sb, &mut acc);
                }
                for (r, acc) in acc.iter().enumerate() {
                    *out.add((r0 + r) * n) = *acc;
                }
            }

            /// `$kernel::<R>` for the tile of `$nr` (1..=MAX_R) rows from `$r0`.
            macro_rules! rows {
                ($kernel:ident, $w:expr, $nb:expr, $acts:expr, $out:expr, $n:expr, $r0:expr, $nr:expr) => {
                    match $nr {
                        1 => $kernel::<1>($w, $nb, $acts, $r0, $out, $n),
                        2 if MAX_R >= 2 => $kernel::<2>($w, $nb, $acts, $r0, $out, $n),
                        3 if MAX_R >= 3 => $kernel::<3>($w, $nb, $acts, $r0, $out, $n),
                        4 if MAX_R >= 4 => $kernel::<4>($w, $nb, $acts, $r0, $out, $n),
                        5 if MAX_R >= 5 => $kernel::<5>($w, $nb, $acts, $r0, $out, $n),
                        6 if MAX_R >= 6 => $kernel::<6>($w, $nb, $acts, $r0, $out, $n),
                        7 if MAX_R >= 7 => $kernel::<7>($w, $nb, $acts, $r0, $out, $n),
                        8 if MAX_R >= 8 => $kernel::<8>($w, $nb, $acts, $r0, $out, $n),
                        _ => unreachable!("row tiles hold 1..={MAX_R} rows"),
                    }
                };
            }

            /// # Safety
            /// As `scalar::q6k_tile`; the CPU has this path's features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6k_tile(w: *const u8, nsb: usize, cols: usize, acts: &SuperActs, out: *mut f32, n: usize) {
                // As in `tile`: one weight row at a time, each super-block unpacked once per tile
                // of rows.
                for c in 0..cols {
                    let (w, out) = (w.add(c * nsb * 210), out.add(c));
                    let mut r0 = 0;
                    while r0 < acts.m {
                        let nr = (acts.m - r0).min(MAX_R);
                        rows!(q6k, w, nsb, acts, out, n, r0, nr);
                        r0 += nr;
                    }
                }
            }

            /// # Safety
            /// As `scalar::tile`; the CPU has this path's features.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn tile(
                wt: WeightType,
                w: *const u8,
                stride: usize,
                nb: usize,
                cols: usize,
                acts: &QuantizedActs,
                out: *mut f32,
                n: usize,
            ) {
                // One column (weight row) at a time, in memory order: a single sequential stream
                // is what the hardware prefetchers follow best (interleaving four columns' rows
                // halved the throughput from memory). Each weight block is loaded and unpacked
                // once per tile of up to MAX_R activation rows; the row stays in L1 across tiles.
                for c in 0..cols {
                    let (w, out) = (w.add(c * stride), out.add(c));
                    let mut r0 = 0;
                    while r0 < acts.m {
                        let rows = (acts.m - r0).min(MAX_R);
                        match wt {
                            WeightType::Q4_1 => rows!(q4_1, w, nb, acts, out, n, r0, rows),
                            WeightType::Q8_0 => rows!(q8_0, w, nb, acts, out, n, r0, rows),
                            WeightType::Q5_0 | WeightType::Q4_0 | WeightType::Q5_1 => unreachable!("runs packed"),
                            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => unreachable!("the K types take super-blocks"),
                        }
                        r0 += rows;
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_path!(avx2, "avx2,fma,f16c", dot_avx2, 4);
#[cfg(target_arch = "x86_64")]
x86_path!(vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_vnni, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_cpus_default_to_256_bit_registers() {
        use SimdPath::*;
        let all = [Scalar, Avx2, Avx512Vnni, Avx512Zmm];
        assert_eq!(default_path(&all, false), Avx512Zmm);
        assert_eq!(default_path(&all, true), Avx512Vnni);
        assert_eq!(default_path(&[Scalar, Avx2], true), Avx2);
        assert_eq!(default_path(&[Scalar], false), Scalar);
    }

    #[test]
    fn many_rows_widen_only_the_256_bit_vnni_path_where_allowed() {
        use SimdPath::*;
        assert_eq!(widened(Avx512Vnni, true, Some(4), 4), Avx512Zmm);
        assert_eq!(widened(Avx512Vnni, true, Some(4), 3), Avx512Vnni);
        assert_eq!(widened(Avx512Vnni, true, None, 64), Avx512Vnni);
        // Not on CPUs without the 512-bit path, under a cap, or from another path.
        assert_eq!(widened(Avx512Vnni, false, Some(4), 64), Avx512Vnni);
        assert_eq!(widened(Avx2, true, Some(4), 64), Avx2);
        assert_eq!(widened(Scalar, true, Some(4), 64), Scalar);
        assert_eq!(widened(Avx512Zmm, true, Some(4), 1), Avx512Zmm);
    }

    /// ggml's 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K super-block, spelled out.
    fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        }
    }

    #[test]
    fn word_unpacking_of_q4k_scales_matches_the_bytewise_definition() {
        let mut g = Lcg(5);
        for _ in 0..2000 {
            let s: [u8; 12] = std::array::from_fn(|_| g.byte());
            let (sc, mn) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), scale_min_k4(j, &s), "sub-block {j} of {s:?}");
            }
        }
    }

    /// A small deterministic generator (no dependency): uniform in [-1, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn byte(&mut self) -> u8 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 56) as u8
        }
    }

    /// Random weights of `wt` for `n` rows of `k` values: scales around 0.01, some negative
    /// minimums, Q8_0 values over the whole i8 range (-128 included), random K-type scales.
    fn random_weights(wt: WeightType, n: usize, k: usize, g: &mut Lcg) -> Vec<u8> {
        let mut w = Vec::with_capacity(n * k / wt.block_values() * wt.block_bytes());
        let f16_bytes = |v: f32| f16::from_f32(v).to_bits().to_le_bytes();
        for _ in 0..n * k / wt.block_values() {
            match wt {
                WeightType::Q4_1 => {
                    w.extend_from_slice(&f16_bytes(0.01 + 0.02 * g.next().abs()));
                    w.extend_from_slice(&f16_bytes(-0.1 * g.next().abs()));
                    (0..16).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q8_0 => {
                    w.extend_from_slice(&f16_bytes(0.01 + 0.02 * g.next().abs()));
                    (0..32).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q5_0 => {
                    w.extend_from_slice(&f16_bytes(0.01 + 0.02 * g.next().abs()));
                    (0..20).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q4_0 => {
                    w.extend_from_slice(&f16_bytes(0.01 + 0.02 * g.next().abs()));
                    (0..16).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q5_1 => {
                    w.extend_from_slice(&f16_bytes(0.01 + 0.02 * g.next().abs()));
                    w.extend_from_slice(&f16_bytes(-0.1 * g.next().abs()));
                    (0..20).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q4K | WeightType::Q5K => {
                    w.extend_from_slice(&f16_bytes(0.001 + 0.002 * g.next().abs()));
                    w.extend_from_slice(&f16_bytes(0.001 + 0.002 * g.next().abs()));
                    (0..wt.block_bytes() - 4).for_each(|_| w.push(g.byte()));
                }
                WeightType::Q6K => {
                    (0..208).for_each(|_| w.push(g.byte()));
                    w.extend_from_slice(&f16_bytes(0.0005 + 0.001 * g.next().abs()));
                }
            }
        }
        w
    }

    /// Candle's own dequantization of the same bytes: an independent reading of ggml's layouts.
    fn dequantize(wt: WeightType, w: &[u8], n: usize, k: usize) -> Vec<f64> {
        let dev = Device::Cpu;
        let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(w), &dev, wt.ggml()).unwrap();
        let t = QTensor::new(storage, (n, k)).unwrap().dequantize(&dev).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    /// Test shapes (n, k) for a type: ragged n, block counts not multiples of 8 where the type
    /// allows them.
    fn shapes(wt: WeightType) -> Vec<(usize, usize)> {
        if wt.block_values() == QK {
            vec![(1, 32), (3, 96), (13, 160), (5, 256), (6, 288), (37, 576), (64, 896), (130, 1536)]
        } else {
            vec![(1, 256), (3, 512), (13, 768), (37, 1536), (10, 4864)]
        }
    }

    /// The activations as the kernels for `wt` see them (8-bit values times their scale): per
    /// 32 values, or per super-block of 256 for the K types.
    fn quantized_activations(wt: WeightType, x: &[f32], m: usize, k: usize) -> Vec<f64> {
        let mut xq = Vec::with_capacity(m * k);
        for r in 0..m {
            if wt.block_values() == 256 {
                let acts = SuperActs::quantize(&x[r * k..(r + 1) * k], 1, k);
                xq.extend(acts.row_values(0).iter().enumerate().map(|(i, &q)| q as f64 * acts.d[i / 256] as f64));
            } else {
                let acts = QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k);
                xq.extend(acts.row_values(0).iter().enumerate().map(|(i, &q)| q as f64 * acts.d[i / QK] as f64));
            }
        }
        xq
    }

    fn run(path: SimdPath, wt: WeightType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; m * n];
        matmul_on(path, wt, w, n, k, x, m, &mut out).unwrap();
        out
    }

    /// Every path on this CPU gives the scalar path's bits, for ragged shapes (n not a multiple
    /// of the 4-column tile, rows not a multiple of the row tile, odd block counts); the result
    /// is within float rounding of an f64 product of the dequantized weights with the
    /// dequantized 8-bit activations.
    #[test]
    fn every_path_equals_the_scalar_reference() {
        let paths = available_paths();
        eprintln!("paths on this CPU: {paths:?}");
        let mut g = Lcg(7);
        let mut worst = 0f64;
        for wt in WeightType::ALL {
            for (n, k) in shapes(wt) {
                let w = random_weights(wt, n, k, &mut g);
                let wf = dequantize(wt, &w, n, k);
                for m in [1usize, 2, 3, 5, 7, 9, 11, 17] {
                    let x: Vec<f32> = (0..m * k).map(|_| g.next() * 3.0).collect();
                    let reference = run(SimdPath::Scalar, wt, &w, n, k, &x, m);
                    for &path in &paths[1..] {
                        let y = run(path, wt, &w, n, k, &x, m);
                        let same = y.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} {wt:?} n {n} k {k} m {m}: differs from the scalar path", path.name());
                    }
                    let xq = quantized_activations(wt, &x, m, k);
                    for r in 0..m {
                        for j in 0..n {
                            let exact: f64 = (0..k).map(|i| wf[j * k + i] * xq[r * k + i]).sum();
                            let scale: f64 = (0..k).map(|i| (wf[j * k + i] * x[r * k + i] as f64).abs()).sum();
                            let diff = (reference[r * n + j] as f64 - exact).abs();
                            worst = worst.max(diff / scale.max(1e-30));
                            assert!(
                                diff <= 1e-5 * scale + 1e-6,
                                "{wt:?} n {n} k {k} m {m} ({r}, {j}): {} vs {exact}",
                                reference[r * n + j]
                            );
                        }
                    }
                }
            }
        }
        eprintln!("largest |kernel - f64 reference| / Σ|w·x|: {worst:.2e}");
    }

    /// The integer part is exact: with unit scales (the K types' sub-block scales kept, they are
    /// integers), zero minimums and activations that quantize with scale 1 (each block's largest
    /// magnitude is 127), every output is the integer dot product, on every path.
    #[test]
    fn integer_dot_products_are_exact() {
        let mut g = Lcg(11);
        let n = 9usize;
        for wt in WeightType::ALL {
            let k = if wt.block_values() == QK { 224 } else { 256 };
            let mut w = random_weights(wt, n, k, &mut g);
            let one = f16::ONE.to_bits().to_le_bytes();
            let zero = f16::ZERO.to_bits().to_le_bytes();
            for blk in w.chunks_exact_mut(wt.block_bytes()) {
                match wt {
                    WeightType::Q4_1 | WeightType::Q5_1 => {
                        blk[..2].copy_from_slice(&one);
                        blk[2..4].copy_from_slice(&zero);
                    }
                    WeightType::Q8_0 | WeightType::Q5_0 | WeightType::Q4_0 => blk[..2].copy_from_slice(&one),
                    WeightType::Q4K | WeightType::Q5K => {
                        blk[..2].copy_from_slice(&one);
                        blk[2..4].copy_from_slice(&zero);
                    }
                    WeightType::Q6K => {
                        // Scales within ±32, so the sums stay below 2^24 (exact in f32).
                        blk[192..208].iter_mut().for_each(|s| *s = ((*s as i8) / 4) as u8);
                        blk[208..].copy_from_slice(&one);
                    }
                }
            }
            let wi = dequantize(wt, &w, n, k);
            let m = 5;
            let small = if wt.block_values() == QK { 127 } else { 15 };
            let mut x: Vec<f32> = (0..m * k).map(|_| ((g.byte() as i8) as i32 % (small + 1)) as f32).collect();
            for blk in x.chunks_exact_mut(QK) {
                blk[(g.byte() as usize) % QK] = if g.byte() & 1 == 0 { 127.0 } else { -127.0 };
            }
            for path in available_paths() {
                let y = run(path, wt, &w, n, k, &x, m);
                for r in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|i| wi[j * k + i] * x[r * k + i] as f64).sum();
                        assert_eq!(y[r * n + j] as f64, exact, "{} {wt:?} ({r}, {j})", path.name());
                    }
                }
            }
        }
    }

    /// Row independence, the property the project's exactness rests on: each row of a call with
    /// m = 1..=64 rows has the bits of that row computed alone, on every path.
    #[test]
    fn rows_do_not_depend_on_the_rows_around_them() {
        let mut g = Lcg(3);
        let n = 70usize;
        for wt in WeightType::ALL {
            let k = if wt.block_values() == QK { 576 } else { 512 };
            let w = random_weights(wt, n, k, &mut g);
            let x: Vec<f32> = (0..64 * k).map(|_| g.next()).collect();
            for path in available_paths() {
                let alone: Vec<Vec<f32>> = (0..64).map(|r| run(path, wt, &w, n, k, &x[r * k..(r + 1) * k], 1)).collect();
                for m in [2usize, 3, 4, 5, 8, 9, 16, 33, 64] {
                    let y = run(path, wt, &w, n, k, &x[..m * k], m);
                    for (r, alone) in alone.iter().enumerate().take(m) {
                        let row: Vec<u32> = y[r * n..(r + 1) * n].iter().map(|v| v.to_bits()).collect();
                        let one: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(row, one, "{} {wt:?}: row {r} of {m}", path.name());
                    }
                }
            }
        }
    }

    /// The packed layouts of Q4_1, Q8_0 and Q6_K give the bits of the kernel on ggml's layout, on
    /// every path, for ragged column counts and row counts on both sides of the row tiles.
    #[test]
    fn packed_layouts_equal_the_ggml_layout_kernel() {
        let mut g = Lcg(5);
        for wt in [WeightType::Q4_1, WeightType::Q8_0, WeightType::Q6K] {
            for (n, k) in shapes(wt) {
                let w = random_weights(wt, n, k, &mut g);
                let packed = crate::packed::PackedWeight::new(wt.ggml(), &w, n, k).unwrap().expect("a packed type");
                for m in [1usize, 2, 3, 4, 5, 8, 9, 17, 64] {
                    let x: Vec<f32> = (0..m * k).map(|_| g.next() * 3.0).collect();
                    let reference = run(SimdPath::Scalar, wt, &w, n, k, &x, m);
                    for path in available_paths() {
                        let mut y = vec![f32::NAN; m * n];
                        packed.matmul_on(path, &x, m, &mut y).unwrap();
                        let same = y.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "packed {} on {}: n {n} k {k} m {m} differs from the ggml-layout kernel", wt.name(), path.name());
                    }
                }
            }
        }
    }

    /// Q4_0 blocks as Q8_0 blocks of the same weights (`q − 8` as the signed value).
    fn q4_0_to_q8_0(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in data.chunks_exact(18) {
            out.extend_from_slice(&blk[..2]);
            let qs = &blk[2..];
            out.extend((0..32).map(|j| ((if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 }) as i8 - 8) as u8));
        }
        out
    }

    /// Q5_0's and Q4_0's kernels give the bits of Q8_0's on the same weights converted
    /// ([`q5_0_to_q8_0`], as loading did before Q5_0 had kernels of its own, so a model's
    /// outputs do not change), on every path, for ragged shapes and rows on both sides of the
    /// row tiles.
    #[test]
    fn q5_0_and_q4_0_give_the_bits_of_q8_0_on_the_same_weights() {
        let mut g = Lcg(23);
        for wt in [WeightType::Q5_0, WeightType::Q4_0] {
            for (n, k) in shapes(wt) {
                let w = random_weights(wt, n, k, &mut g);
                let w8 = if wt == WeightType::Q5_0 { q5_0_to_q8_0(&w).unwrap() } else { q4_0_to_q8_0(&w) };
                assert_eq!(dequantize(wt, &w, n, k), dequantize(WeightType::Q8_0, &w8, n, k), "{wt:?} conversion n {n} k {k}");
                for m in [1usize, 2, 4, 5, 8, 9, 17] {
                    let x: Vec<f32> = (0..m * k).map(|_| g.next() * 3.0).collect();
                    for path in available_paths() {
                        let (y, y8) = (run(path, wt, &w, n, k, &x, m), run(path, WeightType::Q8_0, &w8, n, k, &x, m));
                        let same = y.iter().zip(&y8).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} on {}: n {n} k {k} m {m} differs from Q8_0 on the converted weights", wt.name(), path.name());
                    }
                }
            }
        }
    }

    /// A fused product (every activation form quantized once, one parallel region) gives each
    /// weight the bits of its own product, on every path: weights of every packed type and a
    /// Q6_K weight on ggml's layout side by side, ragged column counts, rows on both sides of
    /// the row tiles.
    #[test]
    fn fused_products_equal_each_weights_own_product() {
        use crate::packed::PackedWeight;
        let mut g = Lcg(11);
        for k in [256, 1536, 4864] {
            let weights: Vec<(WeightType, usize, Vec<u8>)> = [
                (WeightType::Q4K, 13),
                (WeightType::Q6K, 37),
                (WeightType::Q8_0, 3),
                (WeightType::Q4_1, 64),
                (WeightType::Q5_0, 21),
                (WeightType::Q4_0, 9),
                (WeightType::Q5_1, 17),
                (WeightType::Q5K, 11),
                (WeightType::Q6K, 10),
            ]
            .into_iter()
            .map(|(wt, n)| (wt, n, random_weights(wt, n, k, &mut g)))
            .collect();
            let packed: Vec<PackedWeight> =
                weights.iter().map(|(wt, n, w)| PackedWeight::new(wt.ggml(), w, *n, k).unwrap().expect("a packed type")).collect();
            // The last Q6_K weight on its ggml layout, the others packed.
            let last = weights.len() - 1;
            let mut ops: Vec<Operand> = packed[..last].iter().map(Operand::Packed).collect();
            ops.push(Operand::Q6kGgml { data: &weights[last].2, n: weights[last].1 });
            for m in [1usize, 3, 9] {
                let x: Vec<f32> = (0..m * k).map(|_| g.next() * 3.0).collect();
                for path in available_paths() {
                    let outs = matmul_fused_on(path, &ops, &x, m).unwrap();
                    for (i, ((wt, n, w), y)) in weights.iter().zip(&outs).enumerate() {
                        let own = if i < last {
                            let mut y = vec![f32::NAN; m * n];
                            packed[i].matmul_on(path, &x, m, &mut y).unwrap();
                            y
                        } else {
                            run(path, *wt, w, *n, k, &x, m)
                        };
                        let same = y.len() == own.len() && y.iter().zip(&own).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "fused {} (weight {i}) on {}: k {k} m {m} differs from its own product", wt.name(), path.name());
                    }
                }
            }
        }
        // Weights of different input sizes cannot share an input.
        let (a, b) = (random_weights(WeightType::Q4K, 8, 256, &mut g), random_weights(WeightType::Q4K, 8, 512, &mut g));
        let (pa, pb) = (
            PackedWeight::new(GgmlDType::Q4K, &a, 8, 256).unwrap().unwrap(),
            PackedWeight::new(GgmlDType::Q4K, &b, 8, 512).unwrap().unwrap(),
        );
        let err = matmul_fused_on(SimdPath::Scalar, &[Operand::Packed(&pa), Operand::Packed(&pb)], &[0.0; 256], 1).unwrap_err();
        assert!(err.to_string().contains("weights of 256 and 512 inputs"), "{err}");
    }

    /// The AVX2 quantization of a super-block gives the portable form's values, sums and scale:
    /// random blocks, an all-zero block, and blocks of exact ties (max 127, so `x · inv = x`).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_super_block_quantization_equals_the_portable_form() {
        if !is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut g = Lcg(17);
        let mut blocks: Vec<[f32; 256]> =
            (0..200).map(|i| std::array::from_fn(|_| g.next() * (1 + i % 7) as f32 * 10f32.powi(i % 5 - 2))).collect();
        blocks.push([0.0; 256]);
        blocks.push(std::array::from_fn(|i| if i == 77 { -127.0 } else { (i as f32 - 128.0) / 2.0 }));
        blocks.push(std::array::from_fn(|i| if i == 0 { 127.0 } else { (i % 9) as f32 - 4.5 }));
        for (b, xs) in blocks.iter().enumerate() {
            let (mut q0, mut h0, mut q1, mut h1) = ([0i8; 256], [0i16; 16], [0i8; 256], [0i16; 16]);
            let d0 = quantize_super_block(xs, &mut q0, &mut h0);
            // SAFETY: AVX2 was checked above.
            let d1 = unsafe { avx2_quantize_super_block(xs, &mut q1, &mut h1) };
            assert_eq!((d0.to_bits(), q0, h0), (d1.to_bits(), q1, h1), "block {b}");
        }
    }

    /// Activation quantization: scale max|x|/127, ties to even, block sums.
    #[test]
    fn activations_quantize_like_llama_cpp() {
        let mut x = vec![0f32; 64];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = -2.5;
        x[4] = -127.0;
        let a = QuantizedActs::quantize(&x, 1, 64);
        assert_eq!(&a.qs[..5], &[127, 0, 2, -2, -127]);
        assert_eq!((a.nb, a.nbp), (2, 8));
        assert_eq!(a.d, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.sa, vec![0.0; 8]);
        assert_eq!(a.s, vec![127 + 2 - 2 - 127, 0, 0, 0, 0, 0, 0, 0]);
        assert!(a.qs[32..].iter().all(|&q| q == 0) && a.qs.len() == 8 * 32);
        // In super-blocks of 256 (the K types'): one scale, sums per 32 and per 16 values.
        let mut x = vec![0f32; 512];
        x[0] = 254.0;
        x[1] = 1.0;
        x[2] = 3.0;
        x[40] = -5.0;
        x[300] = -0.5;
        let a = SuperActs::quantize(&x, 1, 512);
        assert_eq!((a.nsb, a.d.clone()), (2, vec![2.0, 1.0 / 254.0]));
        assert_eq!(&a.qs[..3], &[127, 0, 2]);
        assert_eq!((a.qs[40], a.qs[300]), (-2, -127));
        assert_eq!(&a.bs[..2], &[129, -2]);
        assert_eq!(a.bs[8 + 1], -127);
        assert_eq!((a.hs[0], a.hs[1], a.hs[2], a.hs[16 + 2]), (129, 0, -2, -127));
        assert_eq!(a.qs.iter().filter(|&&q| q != 0).count(), 4);
    }

    /// The candle-facing entry point against candle's own quantized matmul: both are within
    /// 8-bit activation rounding of the product with the dequantized weights; ours keeps the
    /// activation scales in f32 (candle and llama.cpp round them to f16), so it is closer.
    #[test]
    fn qmatmul_matches_candle() {
        let dev = Device::Cpu;
        let n = 44usize;
        let max_diff =
            |a: &Tensor, b: &Tensor| -> f32 { (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap() };
        for wt in WeightType::ALL {
            let k = if wt.block_values() == QK { 384 } else { 512 };
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, wt.ggml()).unwrap();
            assert!(covers(&q));
            let x = Tensor::randn(0f32, 1.0, (2, 3, k), &dev).unwrap();
            let ours = qmatmul(&q, &x).unwrap().unwrap();
            assert_eq!(ours.dims(), &[2, 3, n]);
            let dense = x.broadcast_matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
            let theirs = candle_core::Module::forward(&theirs, &x).unwrap();
            let (d_ours, d_theirs) = (max_diff(&ours, &dense), max_diff(&theirs, &dense));
            eprintln!("{wt:?}: |ours - dense| {d_ours:.4}, |candle - dense| {d_theirs:.4}");
            assert!(d_ours < 1.0 && d_ours <= d_theirs * 1.5 + 1e-3, "{wt:?}: ours {d_ours}, candle {d_theirs}");
        }
        let q3 = QTensor::quantize(&Tensor::zeros((16, 256), DType::F32, &dev).unwrap(), GgmlDType::Q3K).unwrap();
        assert!(!covers(&q3) && qmatmul(&q3, &Tensor::zeros((1, 256), DType::F32, &dev).unwrap()).unwrap().is_none());
    }
}
