//! exp, tanh, erf and the activations built on them, as f32x4 polynomials (no libm calls, so
//! the same code runs in a compiled executable). Accuracy, measured over dense sweeps against
//! f64 libm in `tests/jit_diff.rs` (`math_accuracy`):
//! - `exp`: Cephes `expf` (range reduction by ln 2 in two parts, degree-6 polynomial): about
//!   2 ulp over [-87.3, 88.7]; 0 below -87.3 (where f32 would be subnormal).
//! - `tanh`: Cephes odd polynomial for |x| < 0.625, `1 - 2 / (exp(2|x|) + 1)` above: within
//!   3e-7 absolute.
//! - `erf`: Abramowitz & Stegun 7.1.26 (`1 - poly(t) * exp(-x²)`, t = 1 / (1 + p|x|)): within
//!   3e-7 absolute (the formula's 1.5e-7 plus f32 rounding), so exact GELU is within
//!   about 2e-7 · |x|.

// The coefficients are written as published (Cephes, A&S); f32 rounds them.
#![allow(clippy::excessive_precision)]

use super::ir::Kb;
use crate::graph::Activation;
use cranelift_codegen::ir::{condcodes::FloatCC, types::I32X4, InstBuilder, Value};

fn poly(k: &mut Kb, x: Value, coeffs: &[f32]) -> Value {
    // Horner, highest degree first.
    let mut acc = k.splat(coeffs[0]);
    for &c in &coeffs[1..] {
        let cv = k.splat(c);
        acc = k.fma(acc, x, cv);
    }
    acc
}

fn sign_bits(k: &mut Kb, x: Value) -> Value {
    let m = k.splat(-0.0);
    k.b.ins().band(x, m)
}

pub fn exp(k: &mut Kb, x: Value) -> Value {
    use cranformer_runtime::expf;
    let lo = k.splat(expf::LO);
    let hi = k.splat(expf::HI);
    let xc = k.b.ins().fmax(x, lo);
    let xc = k.b.ins().fmin(xc, hi);
    let log2e = k.splat(std::f32::consts::LOG2_E);
    let t = k.b.ins().fmul(xc, log2e);
    let n = k.b.ins().nearest(t);
    // r = x - n ln 2, with ln 2 split so n * C1 is exact.
    let c1 = k.splat(expf::LN2_HI_NEG);
    let c2 = k.splat(expf::LN2_LO);
    let r = k.fma(n, c1, xc);
    let r = k.fma(n, c2, r);
    let p = poly(k, r, &expf::POLY);
    let z = k.b.ins().fmul(r, r);
    let one = k.splat(1.0);
    let r1 = k.b.ins().fadd(r, one);
    let y = k.fma(p, z, r1);
    // 2^n built in the exponent field.
    let ni = k.b.ins().fcvt_to_sint_sat(I32X4, n);
    let bias = k.b.ins().iconst(cranelift_codegen::ir::types::I32, 127);
    let bias = k.b.ins().splat(I32X4, bias);
    let e = k.b.ins().iadd(ni, bias);
    let e = k.b.ins().ishl_imm_u(e, 23);
    let pow2 = k.bitcast_f(e);
    let y = k.b.ins().fmul(y, pow2);
    let zero = k.splat(0.0);
    k.fselect(FloatCC::LessThan, x, lo, zero, y)
}

pub fn tanh(k: &mut Kb, x: Value) -> Value {
    let ax = k.b.ins().fabs(x);
    let nine = k.splat(9.0);
    let big = k.b.ins().fmin(ax, nine);
    let two_x = k.b.ins().fadd(big, big);
    let e = exp(k, two_x);
    let one = k.splat(1.0);
    let two = k.splat(2.0);
    let d = k.b.ins().fadd(e, one);
    let q = k.b.ins().fdiv(two, d);
    let large = k.b.ins().fsub(one, q);
    let z = k.b.ins().fmul(x, x);
    let p = poly(
        k,
        z,
        &[
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let pz = k.b.ins().fmul(p, z);
    let small = k.fma(pz, ax, ax);
    let cut = k.splat(0.625);
    let t = k.fselect(FloatCC::LessThan, ax, cut, small, large);
    let s = sign_bits(k, x);
    k.b.ins().bor(t, s)
}

pub fn erf(k: &mut Kb, x: Value) -> Value {
    let ax = k.b.ins().fabs(x);
    let one = k.splat(1.0);
    let p = k.splat(0.327_591_1);
    let d = k.fma(p, ax, one);
    let t = k.b.ins().fdiv(one, d);
    let q = poly(
        k,
        t,
        &[
            1.061_405_4,
            -1.453_152_1,
            1.421_413_7,
            -0.284_496_72,
            0.254_829_6,
        ],
    );
    let q = k.b.ins().fmul(q, t);
    let nx2 = k.b.ins().fmul(ax, ax);
    let nx2 = k.b.ins().fneg(nx2);
    let e = exp(k, nx2);
    let qe = k.b.ins().fmul(q, e);
    let y = k.b.ins().fsub(one, qe);
    let s = sign_bits(k, x);
    k.b.ins().bor(y, s)
}

/// x * sigmoid(a x) = x / (1 + exp(-a x)).
fn x_sigmoid(k: &mut Kb, x: Value, a: f32) -> Value {
    let na = k.splat(-a);
    let t = k.b.ins().fmul(x, na);
    let e = exp(k, t);
    let one = k.splat(1.0);
    let d = k.b.ins().fadd(e, one);
    k.b.ins().fdiv(x, d)
}

pub fn activation(k: &mut Kb, a: Activation, x: Value) -> Value {
    let half = k.splat(0.5);
    let one = k.splat(1.0);
    match a {
        Activation::Gelu => {
            let c = k.splat(std::f32::consts::FRAC_1_SQRT_2);
            let u = k.b.ins().fmul(x, c);
            let e = erf(k, u);
            let e1 = k.b.ins().fadd(e, one);
            let hx = k.b.ins().fmul(x, half);
            k.b.ins().fmul(hx, e1)
        }
        Activation::GeluTanh => {
            let c = k.splat((2.0 / std::f64::consts::PI).sqrt() as f32);
            let c3 = k.splat(0.044715);
            let x2 = k.b.ins().fmul(x, x);
            let x3 = k.b.ins().fmul(x2, x);
            let inner = k.fma(c3, x3, x);
            let u = k.b.ins().fmul(inner, c);
            let t = tanh(k, u);
            let t1 = k.b.ins().fadd(t, one);
            let hx = k.b.ins().fmul(x, half);
            k.b.ins().fmul(hx, t1)
        }
        Activation::Relu => {
            let z = k.splat(0.0);
            k.b.ins().fmax(x, z)
        }
        Activation::Tanh => tanh(k, x),
        Activation::Silu => x_sigmoid(k, x, 1.0),
        Activation::QuickGelu => x_sigmoid(k, x, 1.702),
    }
}
