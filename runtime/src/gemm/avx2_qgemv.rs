//! AVX2 decode GEMVs for narrow weights: `R` rows (1..=4) of A against the same column strip
//! (8 columns for int8, 16 for bf16/f16, as the tile kernels) of `P` panels at once, so one
//! thread keeps `P` DRAM streams in flight; the caller walks the strips of a panel group,
//! the later ones from cache. Sums in the tile kernels' order, so the same bits:
//! - `avx2_gemv_i8`: i8 weights and i16 activations, `vpmaddwd`;
//! - `avxvnni_gemv_i8`: u8 activations × i8 weights, AVX-VNNI's `vpdpbusd` (16 columns);
//! - `avx2_gemv_bf16`, `avx2_gemv_f16`: weights widened to f32, then FMA.

#![cfg(target_arch = "x86_64")]
// acc[r][p] is indexed by row and panel together: index loops read as the maths.
#![allow(clippy::needless_range_loop)]

use super::qgemm::QTile;
use super::{widen_gemv, Init, PACK_NR};
use crate::simd::Avx2;
use std::arch::x86_64::*;

/// Panels per call for 1..=4 rows (2 accumulators per row and panel of the 16 registers, in
/// powers of two: see `qgemv.rs`).
pub const PANELS: [usize; 4] = [4, 2, 2, 1];

macro_rules! rows {
    ($k:ident, $t:ident, $panel:ident, $c:ident, $ldc:ident, $init:ident) => {
        match $t.rows {
            1 => $k::<1, { PANELS[0] }>($t, $panel, $c, $ldc, $init),
            2 => $k::<2, { PANELS[1] }>($t, $panel, $c, $ldc, $init),
            3 => $k::<3, { PANELS[2] }>($t, $panel, $c, $ldc, $init),
            4 => $k::<4, { PANELS[3] }>($t, $panel, $c, $ldc, $init),
            _ => unreachable!("GEMV rows are 1..=4"),
        }
    };
}

pub(super) unsafe fn i8(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(i8_k, t, panel, c, ldc, init)
}

#[target_feature(enable = "avx2")]
unsafe fn i8_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let c = c as *mut i32;
    let a = t.a as *const i16;
    let mut acc = [[[_mm256_setzero_si256(); 2]; P]; R];
    for g in 0..t.kc / 4 {
        let mut av = [_mm256_setzero_si256(); R];
        for (r, x) in av.iter_mut().enumerate() {
            *x = _mm256_set1_epi64x((a.add(r * t.lda + 4 * g) as *const i64).read_unaligned());
        }
        for p in 0..P {
            // 4 columns × 4 k each, as i16.
            let pb = t.b.add(p * panel + g * 4 * PACK_NR);
            let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.cast()));
            let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(16).cast()));
            for r in 0..R {
                acc[r][p][0] = _mm256_add_epi32(acc[r][p][0], _mm256_madd_epi16(av[r], b0));
                acc[r][p][1] = _mm256_add_epi32(acc[r][p][1], _mm256_madd_epi16(av[r], b1));
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (p, x) in row.iter().enumerate() {
            // hadd gives columns (0 1 4 5 | 2 3 6 7); the permute puts them in order.
            let h = _mm256_hadd_epi32(x[0], x[1]);
            let mut s = _mm256_permute4x64_epi64::<0b11_01_10_00>(h);
            let dst = c.add(r * ldc + PACK_NR * p);
            if let Init::Load = init {
                s = _mm256_add_epi32(s, _mm256_loadu_si256(dst.cast()));
            }
            _mm256_storeu_si256(dst.cast(), s);
        }
    }
}

pub(super) unsafe fn vnni_i8(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(vnni_i8_k, t, panel, c, ldc, init)
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn vnni_i8_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    // SAFETY: as the caller promised; this function has the features.
    unsafe { super::vnni::gemv::<super::vnni::Ymm, R, P>(t, panel, c, ldc, init) }
}

pub(super) unsafe fn bf16(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(bf16_k, t, panel, c, ldc, init)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    widen_gemv::bf16::<Avx2, R, P>(t, panel, c, ldc, init)
}

pub(super) unsafe fn f16(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(f16_k, t, panel, c, ldc, init)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    widen_gemv::f16::<Avx2, R, P>(t, panel, c, ldc, init)
}
