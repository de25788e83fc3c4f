//! The decode GEMVs that widen bf16 or f16 weights to f32 and FMA, written once over the
//! vector width: `R` rows (1..=4) of A against `P` panels' column strips of two vectors each
//! (32 columns with AVX-512, 16 with AVX2), in the tile kernels' order of operations, so a
//! GEMV gives the tile path's bits. Each ISA's file instantiates them inside its own
//! `#[target_feature]` functions (`avx512_qgemv::bf16`, `avx2_qgemv::f16`, ..).

#![cfg(target_arch = "x86_64")]
// acc[r][p] is indexed by row and panel together: index loops read as the maths.
#![allow(clippy::needless_range_loop)]

use super::qgemm::QTile;
use super::{Init, PACK_NR};
use crate::simd::{Avx2, Avx512, Simd};
use std::arch::x86_64::*;

/// Widening a strip's weights to f32 vectors.
pub(super) trait Widen: Simd {
    /// `W` u32 words, each a k pair of bf16 `(k0 | k1 << 16)`: the k0 and the k1 vectors.
    unsafe fn bf16_pairs(p: *const u8) -> (Self::V, Self::V);
    /// `W` f16 values.
    unsafe fn f16(p: *const u8) -> Self::V;
}

impl Widen for Avx512 {
    #[inline(always)]
    unsafe fn bf16_pairs(p: *const u8) -> (__m512, __m512) {
        // bf16 is an f32's high half.
        let w = _mm512_loadu_si512(p.cast());
        let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)),
            _mm512_castsi512_ps(_mm512_and_si512(w, hi)),
        )
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

impl Widen for Avx2 {
    #[inline(always)]
    unsafe fn bf16_pairs(p: *const u8) -> (__m256, __m256) {
        let w = _mm256_loadu_si256(p.cast());
        let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w)),
            _mm256_castsi256_ps(_mm256_and_si256(w, hi)),
        )
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// Accumulators for `R` rows of `P` strips from the call's init: the bias, C, or zero.
#[inline(always)]
pub(super) unsafe fn start<S: Simd, const R: usize, const P: usize>(
    c: *mut f32,
    ldc: usize,
    init: Init,
) -> [[[S::V; 2]; P]; R] {
    let mut acc = [[[S::splat(0.0); 2]; P]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (p, x) in row.iter_mut().enumerate() {
            let src = match init {
                Init::Zero => continue,
                Init::Bias(bias) => bias.add(PACK_NR * p),
                Init::Load => c.add(r * ldc + PACK_NR * p),
            };
            *x = [S::load(src), S::load(src.add(S::W))];
        }
    }
    acc
}

#[inline(always)]
pub(super) unsafe fn finish<S: Simd, const R: usize, const P: usize>(
    acc: &[[[S::V; 2]; P]; R],
    c: *mut f32,
    ldc: usize,
) {
    for (r, row) in acc.iter().enumerate() {
        for (p, x) in row.iter().enumerate() {
            S::store(c.add(r * ldc + PACK_NR * p), x[0]);
            S::store(c.add(r * ldc + PACK_NR * p + S::W), x[1]);
        }
    }
}

/// bf16 weights: A is `[kc][R]` f32, k0 of a pair at `2q·R`, k1 at `(2q+1)·R`.
#[inline(always)]
pub(super) unsafe fn bf16<S: Widen, const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let mut acc = start::<S, R, P>(c, ldc, init);
    let a = t.a as *const f32;
    for q in 0..t.kc / 2 {
        let pa = a.add(2 * q * R);
        let (mut even, mut odd) = ([S::splat(0.0); R], [S::splat(0.0); R]);
        for r in 0..R {
            even[r] = S::splat(*pa.add(r));
            odd[r] = S::splat(*pa.add(R + r));
        }
        for p in 0..P {
            let pb = t.b.add(p * panel + q * 4 * PACK_NR);
            for h in 0..2 {
                let (e, o) = S::bf16_pairs(pb.add(4 * S::W * h));
                for r in 0..R {
                    acc[r][p][h] = S::fma(even[r], e, acc[r][p][h]);
                    acc[r][p][h] = S::fma(odd[r], o, acc[r][p][h]);
                }
            }
        }
    }
    finish::<S, R, P>(&acc, c, ldc)
}

/// f16 weights: A is `[kc][R]` f32.
#[inline(always)]
pub(super) unsafe fn f16<S: Widen, const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let mut acc = start::<S, R, P>(c, ldc, init);
    let a = t.a as *const f32;
    for kk in 0..t.kc {
        let mut av = [S::splat(0.0); R];
        for (r, x) in av.iter_mut().enumerate() {
            *x = S::splat(*a.add(kk * R + r));
        }
        for p in 0..P {
            let pb = t.b.add(p * panel + kk * 2 * PACK_NR);
            for h in 0..2 {
                let w = S::f16(pb.add(2 * S::W * h));
                for r in 0..R {
                    acc[r][p][h] = S::fma(av[r], w, acc[r][p][h]);
                }
            }
        }
    }
    finish::<S, R, P>(&acc, c, ldc)
}
