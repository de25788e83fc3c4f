//! The constants of the one exp(x) every vector path computes (Cephes `expf`: range reduction
//! by ln 2 in two parts, a degree-5 polynomial in r, then 2^n): the generated code's f32x4
//! version (`compiler/src/codegen/math.rs`), the matmul epilogue's (`gemm/epilogue.rs`) and
//! the attention kernel's (`attention/simd.rs`). Defined once, so the three agree.

/// Inputs are clamped below at this (exp is 0 at and below it) ...
pub const LO: f32 = -87.336_55;
/// ... and above at this.
pub const HI: f32 = 88.722_83;
/// `r = x - n·ln 2` as `x + n·LN2_HI_NEG + n·LN2_LO`: ln 2 split so `n·LN2_HI_NEG` is exact.
pub const LN2_HI_NEG: f32 = -0.693_359_4;
pub const LN2_LO: f32 = 2.121_944_4e-4;
/// `p(r)`, highest power first (Horner); then `exp(r) ≈ p(r)·r² + r + 1`. Coefficients as
/// Cephes publishes them; f32 rounds them.
#[allow(clippy::excessive_precision)]
pub const POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];
