//! The vector operations the runtime's attention and norm kernels are written in, one
//! implementation per ISA: `Avx512` (16 lanes), `Avx2` (8 lanes, with FMA) and `Portable` (4
//! lanes of plain Rust that the compiler maps to SSE or NEON). Every method is
//! `#[inline(always)]` and carries no target feature itself: a kernel is instantiated inside
//! a `#[target_feature]` function per ISA (`attention::task_avx512`, ..), where the
//! intrinsics then inline.

// The exp coefficients are written as published (Cephes); f32 rounds them.
#![allow(clippy::excessive_precision)]

/// Lanes of f32 and the operations on them. Callers guarantee the CPU has the ISA.
pub(crate) trait Simd {
    /// Lanes per vector.
    const W: usize;
    /// Rows of attention's register tile (`attention::tile`): `MR × 2` accumulators.
    const MR: usize;
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Round to the nearest integer.
    unsafe fn round(a: Self::V) -> Self::V;
    /// `2^n` for integral `n` in [-126, 127], built in the exponent field.
    unsafe fn pow2(n: Self::V) -> Self::V;
    /// `x < lo ? 0 : y`, lane by lane.
    unsafe fn zero_below(x: Self::V, lo: Self::V, y: Self::V) -> Self::V;
    /// `|a|` (the sign bit cleared).
    unsafe fn abs(a: Self::V) -> Self::V;
    /// `x < 0 ? neg : pos`, lane by lane.
    unsafe fn select_neg(x: Self::V, neg: Self::V, pos: Self::V) -> Self::V;
    /// The sum of the lanes, always in the same order.
    unsafe fn hsum(v: Self::V) -> f32;

    /// Cephes `expf`, as the generated code's (`codegen::math::exp`): range reduction by
    /// ln 2 in two parts, a degree-6 polynomial, about 2 ulp over [-87.3, 88.7]; exactly 0
    /// below -87.3, so a masked score (-inf) weighs exactly nothing, and exp(0) = 1 exactly.
    #[inline(always)]
    unsafe fn exp(x: Self::V) -> Self::V {
        use crate::expf;
        let xc = Self::min(Self::max(x, Self::splat(expf::LO)), Self::splat(expf::HI));
        Self::exp_of(x, xc)
    }

    /// [`Simd::exp`] without its two clamps, for `x` known to be at most `HI` (and not NaN):
    /// the same result lane by lane. Below `LO` the exponent `2^n` is out of range, but such
    /// a lane is 0 all the same.
    #[inline(always)]
    unsafe fn exp_unclamped(x: Self::V) -> Self::V {
        Self::exp_of(x, x)
    }

    /// exp's reduction and polynomial at `xc` (`x`, clamped or known in range), 0 where `x`
    /// is below `LO`.
    #[inline(always)]
    unsafe fn exp_of(x: Self::V, xc: Self::V) -> Self::V {
        use crate::expf;
        let lo = Self::splat(expf::LO);
        let n = Self::round(Self::mul(xc, Self::splat(std::f32::consts::LOG2_E)));
        let r = Self::fma(n, Self::splat(expf::LN2_HI_NEG), xc);
        let r = Self::fma(n, Self::splat(expf::LN2_LO), r);
        let mut p = Self::splat(expf::POLY[0]);
        for &c in &expf::POLY[1..] {
            p = Self::fma(p, r, Self::splat(c));
        }
        let y = Self::fma(p, Self::mul(r, r), Self::add(r, Self::splat(1.0)));
        Self::zero_below(x, lo, Self::mul(y, Self::pow2(n)))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    pub struct Avx512;

    impl Simd for Avx512 {
        const W: usize = 16;
        // 24 zmm accumulators of 32, as the matmul's 12×32 tile.
        const MR: usize = 12;
        type V = __m512;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m512) -> __m512 {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn zero_below(x: __m512, lo: __m512, y: __m512) -> __m512 {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
            _mm512_mask_blend_ps(below, y, _mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn abs(a: __m512) -> __m512 {
            _mm512_abs_ps(a)
        }
        #[inline(always)]
        unsafe fn select_neg(x: __m512, neg: __m512, pos: __m512) -> __m512 {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
            _mm512_mask_blend_ps(below, pos, neg)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            // A fixed tree of halvings (AVX-512F only, no DQ needed).
            _mm512_reduce_add_ps(v)
        }
    }

    pub struct Avx2;

    impl Simd for Avx2 {
        const W: usize = 8;
        // 12 ymm accumulators of 16, as the matmul's 6×16 tile.
        const MR: usize = 6;
        type V = __m256;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m256) -> __m256 {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn zero_below(x: __m256, lo: __m256, y: __m256) -> __m256 {
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
            _mm256_blendv_ps(y, _mm256_setzero_ps(), below)
        }
        #[inline(always)]
        unsafe fn abs(a: __m256) -> __m256 {
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), a)
        }
        #[inline(always)]
        unsafe fn select_neg(x: __m256, neg: __m256, pos: __m256) -> __m256 {
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
            _mm256_blendv_ps(pos, neg, below)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps::<1>(p, p)))
        }
    }
}

/// Four lanes in plain Rust: any CPU. Not fused (`mul_add` without hardware FMA is a libm
/// call).
pub(crate) struct Portable;

impl Simd for Portable {
    const W: usize = 4;
    const MR: usize = 4;
    type V = [f32; 4];
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 4] {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 4] {
        unsafe { std::ptr::read_unaligned(p as *const [f32; 4]) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 4]) {
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 4], v) }
    }
    #[inline(always)]
    unsafe fn add(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn div(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    unsafe fn max(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn min(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn round(a: [f32; 4]) -> [f32; 4] {
        a.map(f32::round_ties_even)
    }
    #[inline(always)]
    unsafe fn pow2(n: [f32; 4]) -> [f32; 4] {
        n.map(|n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn zero_below(x: [f32; 4], lo: [f32; 4], y: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| if x[i] < lo[i] { 0.0 } else { y[i] })
    }
    #[inline(always)]
    unsafe fn abs(a: [f32; 4]) -> [f32; 4] {
        a.map(f32::abs)
    }
    #[inline(always)]
    unsafe fn select_neg(x: [f32; 4], neg: [f32; 4], pos: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| if x[i] < 0.0 { neg[i] } else { pos[i] })
    }
    #[inline(always)]
    unsafe fn hsum(v: [f32; 4]) -> f32 {
        (v[0] + v[2]) + (v[1] + v[3])
    }
}
