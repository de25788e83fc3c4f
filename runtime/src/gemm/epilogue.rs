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

use crate::simd::{self, Simd};

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
    ($fma:ident, $exp:ident, $half_erfc:ident, $tanh:ident, $act:ident) => {
        /// exp(x), 0 below -87.3, clamped at 88.7.
        #[inline(always)]
        pub fn $exp(x: f32) -> f32 {
            exp_of(x, x.clamp(crate::expf::LO, crate::expf::HI))
        }

        /// [`exp`] without its clamps, for `x` at most 88.7 and not NaN (as
        /// `Simd::exp_unclamped`).
        #[inline(always)]
        fn exp_unclamped(x: f32) -> f32 {
            exp_of(x, x)
        }

        /// exp's reduction and polynomial at `xc` (`x`, clamped or known in range), 0 where
        /// `x` is below `LO` (the input, not the clamped value, which never is: exp(LO) is
        /// f32's smallest normal, and GELU(f32::MIN) was -0.33 when this tested `xc`).
        #[inline(always)]
        fn exp_of(x: f32, xc: f32) -> f32 {
            use crate::expf;
            // Round to nearest by the 1.5·2^23 trick: its low mantissa bits are n.
            let big = xc * std::f32::consts::LOG2_E + 12_582_912.0;
            let n_int = big.to_bits().wrapping_sub(0x4B40_0000) as i32;
            let n = big - 12_582_912.0;
            let r = $fma(n, expf::LN2_HI_NEG, xc);
            let r = $fma(n, expf::LN2_LO, r);
            let mut p = expf::POLY[0];
            for c in &expf::POLY[1..] {
                p = $fma(p, r, *c);
            }
            let y = $fma(p, r * r, r + 1.0);
            let pow2 = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
            let y = y * pow2;
            // As the vector paths' `Simd::exp`.
            if x < expf::LO {
                0.0
            } else {
                y
            }
        }

        /// erfc(z)/2 for z >= 0 (Numerical Recipes `erfcc`, relative error < 1.2e-7 + f32):
        /// `t·exp(-z² + P(t))` with `t = 1/(1 + z/2)`, halved by taking `u = 1/(2 + z)`,
        /// which is t/2 exactly, and P in powers of u ([`ERFC_POLY_U`]), which gives P(t) bit
        /// for bit. The exponent lies in [-101.3, 0]: exp needs no clamps.
        #[inline(always)]
        pub fn $half_erfc(z: f32) -> f32 {
            let z = z.min(10.0);
            let u = 1.0 / (z + 2.0);
            let p = erfc_poly!(u, $fma, std::ops::Mul::mul, f32::from);
            // -z² = -(hi + lo) exactly: exp(-hi + (p - lo)), the small part added after the
            // big one is reduced.
            let hi = z * z;
            let lo = $fma(z, z, -hi);
            u * exp_unclamped(-hi + (p - lo))
        }

        #[inline(always)]
        pub fn $tanh(x: f32) -> f32 {
            let ax = x.abs();
            // Not `ax.min(9.0)`, which takes 9 for a NaN: tanh(NaN) is NaN, as in PyTorch,
            // the interpreter and the generated f32x4 code.
            let e = $exp(2.0 * if ax > 9.0 { 9.0 } else { ax });
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
                // Not `x.max(0.0)`, which takes 0 for a NaN: relu(NaN) is NaN, as in PyTorch.
                Act::Relu => {
                    if x <= 0.0 {
                        0.0
                    } else {
                        x
                    }
                }
                Act::Gelu => {
                    let z = x * std::f32::consts::FRAC_1_SQRT_2;
                    let h = $half_erfc(z.abs());
                    if x >= 0.0 {
                        x * (1.0 - h)
                    } else {
                        x * h
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

/// `erfc`'s polynomial in `u` ([`ERFC_POLY_U`]) by Estrin's scheme: pairs `c[2i] + c[2i+1]·u`,
/// joined by u², u⁴ and u⁸. The same operations in the same order on every path (`fma`, `mul`
/// and `splat` are the scalar or vector ones). Horner's nine FMAs in a row were one long chain.
macro_rules! erfc_poly {
    ($u:expr, $fma:expr, $mul:expr, $splat:expr) => {{
        let u = $u;
        // No closures: they would not inherit the vector paths' target features.
        macro_rules! pair {
            ($k:expr) => {
                $fma($splat(ERFC_POLY_U[$k + 1]), u, $splat(ERFC_POLY_U[$k]))
            };
        }
        let u2 = $mul(u, u);
        let u4 = $mul(u2, u2);
        let u8 = $mul(u4, u4);
        let low = $fma(pair!(2), u2, pair!(0));
        let high = $fma(pair!(6), u2, pair!(4));
        $fma(pair!(8), u8, $fma(high, u4, low))
    }};
}

/// `erfc`'s polynomial in `t = 1/(1 + z/2)`, highest power first (Numerical Recipes).
const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_87,
    -1.135_203_98,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_68,
    -1.265_512_23,
];

/// The same polynomial in `u = t/2`, lowest power first: the coefficient of `t^k` times `2^k`,
/// exact in f32, so each power's product is the one in t scaled by a power of two.
const ERFC_POLY_U: [f32; 10] = {
    let mut c = [0f32; 10];
    let mut k = 0;
    let mut scale = 1f32;
    while k < 10 {
        c[k] = ERFC_POLY[9 - k] * scale;
        scale *= 2.0;
        k += 1;
    }
    c
};

math!(fma, exp, half_erfc, tanh, act);

/// [`act`] on `S`'s lanes for the activations worth vectors of their own, the ones with
/// `exp` (LLVM's vectorisation of their scalar loops ran exact GELU at 1.4 ns an element on
/// AMD EPYC with AVX-512, 6 % of an int8 BERT-base forward): the same operations in the same
/// order, so every lane is bitwise what [`act`] returns. [`apply_simd`] sends only these here;
/// the others stay scalar loops.
#[inline(always)]
unsafe fn act_simd<S: Simd>(a: Act, x: S::V) -> S::V {
    let one = S::splat(1.0);
    match a {
        Act::Gelu => {
            let z = S::mul(x, S::splat(std::f32::consts::FRAC_1_SQRT_2));
            // h = erfc(|z|) / 2 (`half_erfc`)
            let z = S::min(S::abs(z), S::splat(10.0));
            let u = S::div(one, S::add(z, S::splat(2.0)));
            let p = erfc_poly!(u, S::fma, S::mul, S::splat);
            let hi = S::mul(z, z);
            let lo = S::fma(z, z, S::sub(S::splat(0.0), hi));
            let h = S::mul(u, S::exp_unclamped(S::sub(S::sub(p, lo), hi)));
            let pos = S::mul(x, S::sub(one, h));
            let neg = S::mul(x, h);
            S::select_neg(x, neg, pos)
        }
        Act::GeluTanh => {
            let x2 = S::mul(x, x);
            let u = S::mul(
                S::splat(0.797_884_56),
                S::fma(S::mul(S::splat(0.044715), x), x2, x),
            );
            sigmoid_times::<S>(-2.0, u, x)
        }
        Act::Silu => sigmoid_times::<S>(-1.0, x, x),
        Act::QuickGelu => sigmoid_times::<S>(-1.702, x, x),
        Act::None | Act::Relu | Act::Tanh => unreachable!("apply_simd keeps {a:?} scalar"),
    }
}

/// `y / (1 + exp(k·x))`. A function, not a closure: a closure would not inherit the caller's
/// target features, and each vector operation in it would become a call.
#[inline(always)]
unsafe fn sigmoid_times<S: Simd>(k: f32, x: S::V, y: S::V) -> S::V {
    S::div(y, S::add(S::splat(1.0), S::exp(S::mul(S::splat(k), x))))
}

/// A `rows × cols` block of C (row stride `ldc`) and its residual (same layout) or null.
#[derive(Clone, Copy)]
struct Block {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    residual: *const f32,
}

impl Block {
    /// Columns `from..` of the block.
    unsafe fn cols_from(self, from: usize) -> Block {
        Block {
            c: self.c.add(from),
            cols: self.cols - from,
            residual: if self.residual.is_null() {
                self.residual
            } else {
                self.residual.add(from)
            },
            ..self
        }
    }
}

/// [`apply_generic`] with whole vectors of `S` through [`act_simd`] where it has the
/// activation; the last `cols % W` of a row (and other activations) through [`act`].
#[inline(always)]
unsafe fn apply_simd<S: Simd>(a: Act, b: Block) {
    if b.cols < S::W {
        return apply_generic(a, b);
    }
    match a {
        Act::Gelu => rows_simd::<S, { Act::Gelu as u32 }>(b),
        Act::GeluTanh => rows_simd::<S, { Act::GeluTanh as u32 }>(b),
        Act::Silu => rows_simd::<S, { Act::Silu as u32 }>(b),
        Act::QuickGelu => rows_simd::<S, { Act::QuickGelu as u32 }>(b),
        Act::None | Act::Relu | Act::Tanh => return apply_generic(a, b),
    }
    let whole = b.cols / S::W * S::W;
    if whole < b.cols {
        apply_generic(a, b.cols_from(whole));
    }
}

/// The whole vectors of each row through [`act_simd`] for the activation `A` (an [`Act`]
/// code), then the residual.
#[inline(always)]
unsafe fn rows_simd<S: Simd, const A: u32>(b: Block) {
    // The tiles' usual widths (two vectors a row for both tile kernels) with the row length a
    // constant, so a vector's offset takes no division.
    match b.cols / S::W {
        1 => vectors::<S, A, 1>(b),
        2 => vectors::<S, A, 2>(b),
        4 => vectors::<S, A, 4>(b),
        _ => vectors::<S, A, 0>(b),
    }
}

/// [`rows_simd`] with `P` whole vectors a row (0: `b.cols / S::W`, not known here).
#[inline(always)]
unsafe fn vectors<S: Simd, const A: u32, const P: usize>(b: Block) {
    let act = Act::from_code(A).unwrap_or(Act::None);
    let per_row = if P == 0 { b.cols / S::W } else { P };
    // The block's vectors in row order, several at a time: one vector's chain (a division, two
    // polynomials, exp) is long, and independent ones side by side keep the pipes busy. Exact
    // GELU over BERT-base's 128 × 3072 in 12 × 32 tiles, AMD EPYC Zen 5 (`--bench epilogue`):
    // - AVX-512: 0.55-0.58 ns an element one vector at a time, 0.45-0.46 four at a time,
    //   0.41-0.43 eight at a time;
    // - AVX2: 0.96-0.97 ns four at a time, 0.84-0.85 eight at a time.
    // The shorter chains (tanh GELU, SiLU) ran no faster eight at a time, so they take four.
    // In each tile kernel's own tile (6 × 16 for AVX2), with erfc's polynomial by Estrin
    // instead of Horner, exact GELU held to AVX2 went from 0.88-0.93 ns to 0.82-0.86 (AVX-512
    // unchanged at 0.39-0.42); with erfc halved and exp unclamped (`half_erfc`), to 0.73-0.79
    // (AVX-512 0.35-0.36). With the row length a constant, tanh GELU and SiLU went from
    // 0.21-0.23 and 0.17-0.19 ns to 0.21 and 0.15-0.16 with AVX-512 (12 × 32).
    let offset = |v: usize| v / per_row * b.ldc + v % per_row * S::W;
    let all = b.rows * per_row;
    let mut v = 0;
    // Vectors `v + i` for each listed i side by side, then their stores: a list of
    // expressions, as a loop over four vectors ran no faster than one vector at a time (and
    // `array::from_fn`'s closure would not inherit the target features).
    macro_rules! side_by_side {
        ($($i:literal)*) => {{
            let y = [$(act_simd::<S>(act, S::load(b.c.add(offset(v + $i))))),*];
            $(store_plus::<S>(b, offset(v + $i), y[$i]);)*
            v += y.len();
        }};
    }
    if A == Act::Gelu as u32 {
        while v + 8 <= all {
            side_by_side!(0 1 2 3 4 5 6 7);
        }
    }
    while v + 4 <= all {
        side_by_side!(0 1 2 3);
    }
    for v in v..all {
        let at = offset(v);
        store_plus::<S>(b, at, act_simd::<S>(act, S::load(b.c.add(at))));
    }
}

/// `c[at..] = y + residual[at..]` (no residual: `y`).
#[inline(always)]
unsafe fn store_plus<S: Simd>(b: Block, at: usize, y: S::V) {
    let y = if b.residual.is_null() {
        y
    } else {
        S::add(y, S::load(b.residual.add(at)))
    };
    S::store(b.c.add(at), y);
}

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
    apply_on(super::detected(), act, c, ldc, rows, cols, residual)
}

/// [`apply`] with `isa`'s vectors. Every ISA gives the same bits.
///
/// # Safety
/// As [`apply`]; the CPU has `isa`.
pub unsafe fn apply_on(
    isa: super::Isa,
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
    let b = Block {
        c,
        ldc,
        rows,
        cols,
        residual,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => apply_avx512(act, b),
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => apply_avx2(act, b),
        _ => apply_generic(act, b),
    }
}

#[inline(always)]
unsafe fn apply_generic(a: Act, b: Block) {
    for r in 0..b.rows {
        let row = std::slice::from_raw_parts_mut(b.c.add(r * b.ldc), b.cols);
        // One loop per activation so each vectorises on its own.
        macro_rules! each {
            ($($v:ident)*) => {
                match a {
                    $(Act::$v => row.iter_mut().for_each(|y| *y = act(Act::$v, *y)),)*
                }
            };
        }
        each!(None Relu Gelu GeluTanh Tanh Silu QuickGelu);
        if !b.residual.is_null() {
            let res = std::slice::from_raw_parts(b.residual.add(r * b.ldc), b.cols);
            row.iter_mut().zip(res).for_each(|(y, &s)| *y += s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn apply_avx512(a: Act, b: Block) {
    apply_simd::<simd::Avx512>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(a: Act, b: Block) {
    apply_simd::<simd::Avx2>(a, b)
}
