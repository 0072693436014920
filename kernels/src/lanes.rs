//! The vector operations the packed kernels (`crate::packed`) are written in, once per path and
//! register width, so that one generic kernel serves every path with the same arithmetic in
//! every lane:
//!
//! - [`Avx2Y`]: 256-bit registers, one group of eight columns each, `vpmaddubsw` + `vpmaddwd`;
//! - [`VnniY`]: 256-bit registers, one group each, `vpdpbusd` (AVX-512 VNNI with VL);
//! - [`VnniZ`]: 512-bit registers holding two adjacent groups (the low half the first, the high
//!   half the second), `vpdpbusd` on zmm. Cores with two 512-bit units run twice the
//!   multiply-adds per instruction of [`VnniY`] (measured on an Intel Xeon with AMX: 424 against
//!   227 GMAC/s per core in a loop of independent `vpdpbusd`); Zen 4 splits them in two, so
//!   there they only save instructions.
//!
//! A lane is one column, so a kernel's float operations per column do not depend on the width:
//! the three give the same bits. Every method is `#[inline(always)]` and has no target features
//! of its own: it is compiled into the caller, a kernel entry point that enables its path's.

use core::arch::x86_64::*;

/// One path's vector operations. Loads take `p`, an address in the first group's data, and
/// `gb`, the bytes from one group to the next (the second group of [`VnniZ`] is at `p + gb`).
pub(crate) trait Lanes {
    /// Groups of eight columns per register.
    const GROUPS: usize;
    /// i32 (or i8) lanes.
    type I: Copy;
    /// f32 lanes, one per column.
    type F: Copy;

    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    unsafe fn splat_i8(x: i8) -> Self::I;
    unsafe fn splat_i32(x: i32) -> Self::I;
    unsafe fn splat_f(x: f32) -> Self::F;
    /// The four bytes at `a` in every i32 lane.
    unsafe fn bcast4(a: *const u8) -> Self::I;
    /// 32 bytes of each group.
    unsafe fn load(p: *const u8, gb: usize) -> Self::I;
    /// Eight i8 of each group, sign-extended to i32 lanes.
    unsafe fn load_i8(p: *const u8, gb: usize) -> Self::I;
    /// Eight u8 of each group, zero-extended to i32 lanes.
    unsafe fn load_u8(p: *const u8, gb: usize) -> Self::I;
    /// Eight f16 of each group, as f32 lanes.
    unsafe fn load_f16(p: *const u8, gb: usize) -> Self::F;
    /// Sixteen u8 of each group, zero-extended to i16: a pair per i32 lane.
    unsafe fn load_u8_i16(p: *const u8, gb: usize) -> Self::I;
    /// The low 32 bits of each i32 lane's product.
    unsafe fn mullo(a: Self::I, b: Self::I) -> Self::I;
    /// Per i32 lane, the sum of the products of its two i16 halves (`vpmaddwd`).
    unsafe fn madd16(a: Self::I, b: Self::I) -> Self::I;
    /// `acc + Σ` of four u8 × i8 products per i32 lane (exact for the operands the kernels give).
    unsafe fn dot(acc: Self::I, u: Self::I, s: Self::I) -> Self::I;
    /// One 16-value half of a Q6_K block per column: `sc · Σ q · a` from the four vectors of
    /// unsigned values `w` (`q` in 0..64), the signed activations at `a` (four per vector), and
    /// `sc` from [`Self::q6k_scales`].
    unsafe fn q6k_half(w: &[Self::I], a: *const u8, sc: Self::I) -> Self::I;
    /// Q6_K's i32 scales in the form [`Self::q6k_half`] takes.
    unsafe fn q6k_scales(sc: Self::I) -> Self::I;
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    /// Each i32 lane shifted left by 16 bits.
    unsafe fn slli16_i32(a: Self::I) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    /// Each 16-bit lane shifted right by four (the high nibbles of bytes, before a mask).
    unsafe fn srli4(a: Self::I) -> Self::I;
    /// Bit `x` (0..8) of every byte moved to bit 4 (value 16), the byte's other bits cleared:
    /// a 16-bit shift by at most four places, whose bits crossing into the next byte land
    /// outside bit 4, then a mask.
    unsafe fn bit_to_4(h: Self::I, x: u32) -> Self::I;
    /// Bits `2y` and `2y + 1` (`y` in 0..4) of every byte moved to bits 4 and 5 (16 and 32), the
    /// byte's other bits cleared, as [`Self::bit_to_4`] does for one bit.
    unsafe fn bits2_to_4(h: Self::I, y: u32) -> Self::I;
    unsafe fn abs8(a: Self::I) -> Self::I;
    /// `a` with the sign of `w` per byte (`a · sign(w)`; bytes where `w = 0` may keep `a`: the
    /// kernels multiply them by `|w| = 0`).
    unsafe fn sign8(a: Self::I, w: Self::I) -> Self::I;
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn add_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c − a · b`, fused.
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Stores the first `cols` lanes (≤ 8 · GROUPS) at `out`.
    unsafe fn store(y: Self::F, out: *mut f32, cols: usize);
}

/// AVX2: `vpmaddubsw` + `vpmaddwd`.
pub(crate) struct Avx2Y;
/// AVX-512 VNNI on 256-bit registers.
pub(crate) struct VnniY;
/// AVX-512 VNNI (and BW) on 512-bit registers, two groups per register.
pub(crate) struct VnniZ;

/// The 256-bit methods [`Avx2Y`] and [`VnniY`] share.
macro_rules! ymm_common {
    () => {
        const GROUPS: usize = 1;
        type I = __m256i;
        type F = __m256;

        #[inline(always)]
        unsafe fn zero_i() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn zero_f() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat_i8(x: i8) -> __m256i {
            _mm256_set1_epi8(x)
        }
        #[inline(always)]
        unsafe fn splat_i32(x: i32) -> __m256i {
            _mm256_set1_epi32(x)
        }
        #[inline(always)]
        unsafe fn splat_f(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn bcast4(a: *const u8) -> __m256i {
            _mm256_set1_epi32(std::ptr::read_unaligned(a as *const i32))
        }
        #[inline(always)]
        unsafe fn load(p: *const u8, _gb: usize) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const u8, _gb: usize) -> __m256i {
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8, _gb: usize) -> __m256i {
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8, _gb: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load_u8_i16(p: *const u8, _gb: usize) -> __m256i {
            _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn mullo(a: __m256i, b: __m256i) -> __m256i {
            _mm256_mullo_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn madd16(a: __m256i, b: __m256i) -> __m256i {
            _mm256_madd_epi16(a, b)
        }
        #[inline(always)]
        unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
            _mm256_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn slli16_i32(a: __m256i) -> __m256i {
            _mm256_slli_epi32::<16>(a)
        }
        #[inline(always)]
        unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
            _mm256_and_si256(a, b)
        }
        #[inline(always)]
        unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
            _mm256_or_si256(a, b)
        }
        #[inline(always)]
        unsafe fn srli4(a: __m256i) -> __m256i {
            _mm256_srli_epi16::<4>(a)
        }
        #[inline(always)]
        unsafe fn bit_to_4(h: __m256i, x: u32) -> __m256i {
            let s = match x {
                0 => _mm256_slli_epi16::<4>(h),
                1 => _mm256_slli_epi16::<3>(h),
                2 => _mm256_slli_epi16::<2>(h),
                3 => _mm256_slli_epi16::<1>(h),
                4 => h,
                5 => _mm256_srli_epi16::<1>(h),
                6 => _mm256_srli_epi16::<2>(h),
                _ => _mm256_srli_epi16::<3>(h),
            };
            _mm256_and_si256(s, _mm256_set1_epi8(0x10))
        }
        #[inline(always)]
        unsafe fn bits2_to_4(h: __m256i, y: u32) -> __m256i {
            let s = match y {
                0 => _mm256_slli_epi16::<4>(h),
                1 => _mm256_slli_epi16::<2>(h),
                2 => h,
                _ => _mm256_srli_epi16::<2>(h),
            };
            _mm256_and_si256(s, _mm256_set1_epi8(0x30))
        }
        #[inline(always)]
        unsafe fn abs8(a: __m256i) -> __m256i {
            _mm256_abs_epi8(a)
        }
        #[inline(always)]
        unsafe fn sign8(a: __m256i, w: __m256i) -> __m256i {
            _mm256_sign_epi8(a, w)
        }
        #[inline(always)]
        unsafe fn cvt(a: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn add_f(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(y: __m256, out: *mut f32, cols: usize) {
            let mut ys = [0f32; 8];
            _mm256_storeu_ps(ys.as_mut_ptr(), y);
            std::ptr::copy_nonoverlapping(ys.as_ptr(), out, cols);
        }
    };
}

impl Lanes for Avx2Y {
    ymm_common!();

    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // Pairs of products stay within i16 for the operands the kernels give (5-bit values or
        // |q8| against i8; Q6_K's 6-bit values go through `q6k_half` instead).
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn q6k_half(w: &[__m256i], a: *const u8, sc16: __m256i) -> __m256i {
        // `maddubs` pairs stay within i16 (2 · 63 · 128); `madd` applies the scale pairs.
        let p = |g: usize| _mm256_madd_epi16(_mm256_maddubs_epi16(w[g], Self::bcast4(a.add(4 * g))), sc16);
        _mm256_add_epi32(_mm256_add_epi32(p(0), p(1)), _mm256_add_epi32(p(2), p(3)))
    }

    #[inline(always)]
    unsafe fn q6k_scales(sc: __m256i) -> __m256i {
        // Each i32 scale as a pair of i16 scales, for `madd`.
        _mm256_or_si256(_mm256_and_si256(sc, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32::<16>(sc))
    }
}

impl Lanes for VnniY {
    ymm_common!();

    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    #[inline(always)]
    unsafe fn q6k_half(w: &[__m256i], a: *const u8, sc: __m256i) -> __m256i {
        let mut s = _mm256_setzero_si256();
        for (g, &w) in w.iter().enumerate().take(4) {
            s = _mm256_dpbusd_epi32(s, w, Self::bcast4(a.add(4 * g)));
        }
        _mm256_mullo_epi32(s, sc)
    }

    #[inline(always)]
    unsafe fn q6k_scales(sc: __m256i) -> __m256i {
        sc
    }
}

/// 16 bytes: eight of `p`, then eight of `p + gb`.
#[inline(always)]
unsafe fn two_halves_64(p: *const u8, gb: usize) -> __m128i {
    _mm_unpacklo_epi64(_mm_loadl_epi64(p as *const __m128i), _mm_loadl_epi64(p.add(gb) as *const __m128i))
}

impl Lanes for VnniZ {
    const GROUPS: usize = 2;
    type I = __m512i;
    type F = __m512;

    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat_i8(x: i8) -> __m512i {
        _mm512_set1_epi8(x)
    }
    #[inline(always)]
    unsafe fn splat_i32(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn splat_f(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn bcast4(a: *const u8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(a as *const i32))
    }
    #[inline(always)]
    unsafe fn load(p: *const u8, gb: usize) -> __m512i {
        let lo = _mm256_loadu_si256(p as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(p.add(gb) as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8, gb: usize) -> __m512i {
        _mm512_cvtepi8_epi32(two_halves_64(p, gb))
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8, gb: usize) -> __m512i {
        _mm512_cvtepu8_epi32(two_halves_64(p, gb))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8, gb: usize) -> __m512 {
        let lo = _mm_loadu_si128(p as *const __m128i);
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), _mm_loadu_si128(p.add(gb) as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn load_u8_i16(p: *const u8, gb: usize) -> __m512i {
        let lo = _mm_loadu_si128(p as *const __m128i);
        _mm512_cvtepu8_epi16(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), _mm_loadu_si128(p.add(gb) as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn mullo(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn madd16(a: __m512i, b: __m512i) -> __m512i {
        _mm512_madd_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn q6k_half(w: &[__m512i], a: *const u8, sc: __m512i) -> __m512i {
        let mut s = _mm512_setzero_si512();
        for (g, &w) in w.iter().enumerate().take(4) {
            s = _mm512_dpbusd_epi32(s, w, Self::bcast4(a.add(4 * g)));
        }
        _mm512_mullo_epi32(s, sc)
    }
    #[inline(always)]
    unsafe fn q6k_scales(sc: __m512i) -> __m512i {
        sc
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn slli16_i32(a: __m512i) -> __m512i {
        _mm512_slli_epi32::<16>(a)
    }
    #[inline(always)]
    unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
        _mm512_and_si512(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m512i, b: __m512i) -> __m512i {
        _mm512_or_si512(a, b)
    }
    #[inline(always)]
    unsafe fn srli4(a: __m512i) -> __m512i {
        _mm512_srli_epi16::<4>(a)
    }
    #[inline(always)]
    unsafe fn bit_to_4(h: __m512i, x: u32) -> __m512i {
        let s = match x {
            0 => _mm512_slli_epi16::<4>(h),
            1 => _mm512_slli_epi16::<3>(h),
            2 => _mm512_slli_epi16::<2>(h),
            3 => _mm512_slli_epi16::<1>(h),
            4 => h,
            5 => _mm512_srli_epi16::<1>(h),
            6 => _mm512_srli_epi16::<2>(h),
            _ => _mm512_srli_epi16::<3>(h),
        };
        _mm512_and_si512(s, _mm512_set1_epi8(0x10))
    }
    #[inline(always)]
    unsafe fn bits2_to_4(h: __m512i, y: u32) -> __m512i {
        let s = match y {
            0 => _mm512_slli_epi16::<4>(h),
            1 => _mm512_slli_epi16::<2>(h),
            2 => h,
            _ => _mm512_srli_epi16::<2>(h),
        };
        _mm512_and_si512(s, _mm512_set1_epi8(0x30))
    }
    #[inline(always)]
    unsafe fn abs8(a: __m512i) -> __m512i {
        _mm512_abs_epi8(a)
    }
    #[inline(always)]
    unsafe fn sign8(a: __m512i, w: __m512i) -> __m512i {
        // No `vpsignb` on zmm: negate where `w < 0` (where `w = 0`, `a` stays; see the trait).
        _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(w), _mm512_setzero_si512(), a)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(y: __m512, out: *mut f32, cols: usize) {
        let mut ys = [0f32; 16];
        _mm512_storeu_ps(ys.as_mut_ptr(), y);
        std::ptr::copy_nonoverlapping(ys.as_ptr(), out, cols);
    }
}

/// `h(v)` lane by lane: `((v_0 + v_4) + (v_2 + v_6)) + ((v_1 + v_5) + (v_3 + v_7))`, the
/// reduction of `qmatmul`'s eight per-block lanes (`hsum8`), here one vector per lane.
#[inline(always)]
pub(crate) unsafe fn hsum8_lanes<V: Lanes>(v: &[V::F; 8]) -> V::F {
    V::add_f(V::add_f(V::add_f(v[0], v[4]), V::add_f(v[2], v[6])), V::add_f(V::add_f(v[1], v[5]), V::add_f(v[3], v[7])))
}
