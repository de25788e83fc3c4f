//! The matmul epilogue, `y = act(acc) + residual`, applied to a tile of C right after its
//! last K block while it is still in L1 (the bias is already in the accumulators).
//!
//! The activations are f32 and branch-free, written as plain loops over a row so that LLVM
//! vectorises them under the caller's target features (AVX-512 / AVX2+FMA wrappers below).
//! Accuracy against the f64 reference of the interpreter (`compiler/src/interp/kernels.rs`),
//! tested in `tests.rs` over dense sweeps:
//! - `exp`: Cephes `expf` (Cody-Waite reduction by ln 2, degree-6 polynomial), ~2 ulp;
//! - `erfc(z)`, z >= 0: Numerical Recipes' Chebyshev fit `t·exp(-z² + P(t))`, relative error
//!   1.2e-7 for every z, with -z² split exactly (`fma`) so the large exponent loses nothing.
//!   Exact GELU uses `erfc` on both sides, `x·(1 - erfc(z)/2)` or `x·erfc(|z|)/2`, so there is
//!   no cancellation for negative x;
//! - `tanh`: Cephes' odd polynomial below 0.625, `1 - 2/(exp(2|x|) + 1)` above;
//! - the sigmoid forms (`gelu_tanh` = x·σ(2u), silu, quick_gelu) are `x / (1 + exp(-a))`,
//!   again without cancellation.
//!
//! Relative error is about 1e-6 or better where |y| is not tiny (see the tests for bounds).

// Coefficients as published (Cephes, Numerical Recipes); f32 rounds them.
#![allow(clippy::excessive_precision)]

/// The epilogue's activation; `as u32` is its [`super::GemmCall::act`] code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Act {
    None = 0,
    Relu = 1,
    /// Exact erf GELU.
    Gelu = 2,
    GeluTanh = 3,
    Tanh = 4,
    Silu = 5,
    QuickGelu = 6,
}

impl Act {
    pub const ALL: [Act; 7] = [
        Act::None,
        Act::Relu,
        Act::Gelu,
        Act::GeluTanh,
        Act::Tanh,
        Act::Silu,
        Act::QuickGelu,
    ];

    pub fn from_code(c: u32) -> Option<Act> {
        Act::ALL.into_iter().find(|&a| a as u32 == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            Act::None => "none",
            Act::Relu => "relu",
            Act::Gelu => "gelu",
            Act::GeluTanh => "gelu_tanh",
            Act::Tanh => "tanh",
            Act::Silu => "silu",
            Act::QuickGelu => "quick_gelu",
        }
    }
}

/// `a * b + c` rounded once: inlined into the target-feature wrappers below it is one
/// `vfmadd`; elsewhere a libm call (slow, but the portable path is rare).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

macro_rules! math {
    ($fma:ident, $exp:ident, $erfc:ident, $tanh:ident, $act:ident) => {
        /// exp(x), 0 below -87.3, clamped at 88.7.
        #[inline(always)]
        pub fn $exp(x: f32) -> f32 {
            use crate::expf;
            let x = x.clamp(expf::LO, expf::HI);
            // Round to nearest by the 1.5·2^23 trick: its low mantissa bits are n.
            let big = x * std::f32::consts::LOG2_E + 12_582_912.0;
            let n_int = big.to_bits().wrapping_sub(0x4B40_0000) as i32;
            let n = big - 12_582_912.0;
            let r = $fma(n, expf::LN2_HI_NEG, x);
            let r = $fma(n, expf::LN2_LO, r);
            let mut p = expf::POLY[0];
            for c in &expf::POLY[1..] {
                p = $fma(p, r, *c);
            }
            let y = $fma(p, r * r, r + 1.0);
            let pow2 = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
            let y = y * pow2;
            if x <= expf::LO {
                0.0
            } else {
                y
            }
        }

        /// erfc(z) for z >= 0 (Numerical Recipes `erfcc`), relative error < 1.2e-7 + f32.
        #[inline(always)]
        pub fn $erfc(z: f32) -> f32 {
            let z = z.min(10.0);
            let t = 1.0 / $fma(0.5, z, 1.0);
            let mut p = 0.170_872_77;
            for c in [
                -0.822_152_23,
                1.488_515_87,
                -1.135_203_98,
                0.278_868_07,
                -0.186_288_06,
                0.096_784_18,
                0.374_091_96,
                1.000_023_68,
                -1.265_512_23,
            ] {
                p = $fma(p, t, c);
            }
            // -z² = -(hi + lo) exactly: exp(-hi + (p - lo)), the small part added after the
            // big one is reduced.
            let hi = z * z;
            let lo = $fma(z, z, -hi);
            t * $exp(-hi + (p - lo))
        }

        #[inline(always)]
        pub fn $tanh(x: f32) -> f32 {
            let ax = x.abs();
            let e = $exp(2.0 * ax.min(9.0));
            let large = 1.0 - 2.0 / (e + 1.0);
            let z = x * x;
            let mut p = -5.704_988_7e-3;
            for c in [
                2.063_908_9e-2,
                -5.373_971_6e-2,
                1.333_144_2e-1,
                -3.333_328_2e-1,
            ] {
                p = $fma(p, z, c);
            }
            let small = $fma(p * z, ax, ax);
            let t = if ax < 0.625 { small } else { large };
            t.copysign(x)
        }

        #[inline(always)]
        pub fn $act(a: Act, x: f32) -> f32 {
            match a {
                Act::None => x,
                Act::Relu => x.max(0.0),
                Act::Gelu => {
                    let z = x * std::f32::consts::FRAC_1_SQRT_2;
                    let e = $erfc(z.abs());
                    if x >= 0.0 {
                        x * $fma(-0.5, e, 1.0)
                    } else {
                        0.5 * x * e
                    }
                }
                Act::GeluTanh => {
                    // 0.5x(1 + tanh(u)) = x·σ(2u).
                    let c = 0.797_884_56_f32;
                    let u = c * $fma(0.044715 * x, x * x, x);
                    x / (1.0 + $exp(-2.0 * u))
                }
                Act::Tanh => $tanh(x),
                Act::Silu => x / (1.0 + $exp(-x)),
                Act::QuickGelu => x / (1.0 + $exp(-1.702 * x)),
            }
        }
    };
}

math!(fma, exp, erfc, tanh, act);

/// Applies the epilogue to a `rows × cols` tile of C (row stride `ldc`), with `residual` (same
/// layout and stride) or null.
///
/// # Safety
/// The tile and the residual's tile must be valid.
pub unsafe fn apply(
    act: Act,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    residual: *const f32,
) {
    if act == Act::None && residual.is_null() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::detected() == super::Isa::Avx512 {
            return apply_avx512(act, c, ldc, rows, cols, residual);
        }
        if super::detected() == super::Isa::Avx2 {
            return apply_avx2(act, c, ldc, rows, cols, residual);
        }
    }
    apply_generic(act, c, ldc, rows, cols, residual)
}

#[inline(always)]
unsafe fn apply_generic(
    a: Act,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    residual: *const f32,
) {
    for r in 0..rows {
        let row = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        // One loop per activation so each vectorises on its own.
        macro_rules! each {
            ($($v:ident)*) => {
                match a {
                    $(Act::$v => row.iter_mut().for_each(|y| *y = act(Act::$v, *y)),)*
                }
            };
        }
        each!(None Relu Gelu GeluTanh Tanh Silu QuickGelu);
        if !residual.is_null() {
            let res = std::slice::from_raw_parts(residual.add(r * ldc), cols);
            row.iter_mut().zip(res).for_each(|(y, &s)| *y += s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn apply_avx512(
    a: Act,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    residual: *const f32,
) {
    apply_generic(a, c, ldc, rows, cols, residual)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(
    a: Act,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    residual: *const f32,
) {
    apply_generic(a, c, ldc, rows, cols, residual)
}
