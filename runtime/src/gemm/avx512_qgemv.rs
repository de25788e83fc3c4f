//! AVX-512 decode GEMVs for narrow weights: `R` rows (1..=4) of A against `P` whole panels at
//! once (layouts in `quant.rs`), so one thread keeps `P` DRAM streams in flight, as the f32
//! `gemv.rs` does. Each column sums its products in the tile kernels' order (init, then k
//! ascending, the same instruction per k or k group), so a GEMV gives the tile path's bits:
//! - `avx512vnni_gemv_i8`: `vpdpbusd`, 2 i32 accumulators per row and panel;
//! - `avx512bw_gemv_i8`: `vpmaddwd` on i16, 4 per row and panel (8 columns × 2 partial sums);
//! - `avx512bf16_gemv_bf16`: `vdpbf16ps` on bf16 pairs;
//! - `avx512_gemv_bf16`, `avx512_gemv_f16`: weights widened to f32, then FMA.
//!
//! The panels per call for R rows are `PANELS[R - 1]`: as many streams as the 32 registers
//! allow next to the accumulators, in powers of two (see `qgemv.rs`).

#![cfg(target_arch = "x86_64")]
// acc[r][p] is indexed by row and panel together: index loops read as the maths.
#![allow(clippy::needless_range_loop)]

use super::qgemm::QTile;
use super::{widen_gemv, Init, PACK_NR};
use crate::simd::Avx512;
use std::arch::x86_64::*;

/// Panels per call for 1..=4 rows: kernels with 2 accumulators per row and panel.
pub const PANELS: [usize; 4] = [4, 4, 4, 2];
/// The same for `vpmaddwd` (4 accumulators per row and panel).
pub const BW_PANELS: [usize; 4] = [4, 2, 2, 1];

macro_rules! rows {
    ($k:ident, $t:ident, $panel:ident, $c:ident, $ldc:ident, $init:ident, $tab:ident) => {
        match $t.rows {
            1 => $k::<1, { $tab[0] }>($t, $panel, $c, $ldc, $init),
            2 => $k::<2, { $tab[1] }>($t, $panel, $c, $ldc, $init),
            3 => $k::<3, { $tab[2] }>($t, $panel, $c, $ldc, $init),
            4 => $k::<4, { $tab[3] }>($t, $panel, $c, $ldc, $init),
            _ => unreachable!("GEMV rows are 1..=4"),
        }
    };
}

pub(super) unsafe fn vnni_i8(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(vnni_i8_k, t, panel, c, ldc, init, PANELS)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_i8_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    // SAFETY: as the caller promised; this function has the features.
    unsafe { super::vnni::gemv::<super::vnni::Zmm, R, P>(t, panel, c, ldc, init) }
}

pub(super) unsafe fn bw_i8(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(bw_i8_k, t, panel, c, ldc, init, BW_PANELS)
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bw_i8_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let c = c as *mut i32;
    let a = t.a as *const i16;
    // acc[r][p][q]: panel p's columns 8q..8q+8, each as two partial sums side by side.
    let mut acc = [[[_mm512_setzero_si512(); 4]; P]; R];
    for g in 0..t.kc / 4 {
        let mut av = [_mm512_setzero_si512(); R];
        for (r, x) in av.iter_mut().enumerate() {
            *x = _mm512_set1_epi64((a.add(r * t.lda + 4 * g) as *const i64).read_unaligned());
        }
        for p in 0..P {
            let pb = t.b.add(p * panel + g * 4 * PACK_NR);
            for q in 0..4 {
                let b = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pb.add(32 * q).cast()));
                for r in 0..R {
                    acc[r][p][q] = _mm512_add_epi32(acc[r][p][q], _mm512_madd_epi16(av[r], b));
                }
            }
        }
    }
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (r, row) in acc.iter().enumerate() {
        for (p, x) in row.iter().enumerate() {
            for h in 0..2 {
                let (lo, hi) = (x[2 * h], x[2 * h + 1]);
                let mut s = _mm512_add_epi32(
                    _mm512_permutex2var_epi32(lo, even, hi),
                    _mm512_permutex2var_epi32(lo, odd, hi),
                );
                let dst = c.add(r * ldc + PACK_NR * p + 16 * h);
                if let Init::Load = init {
                    s = _mm512_add_epi32(s, _mm512_loadu_si512(dst.cast()));
                }
                _mm512_storeu_si512(dst.cast(), s);
            }
        }
    }
}

pub(super) unsafe fn bf16_dot(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(bf16_dot_k, t, panel, c, ldc, init, PANELS)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let mut acc = widen_gemv::start::<Avx512, R, P>(c, ldc, init);
    // `[kc/2][R]` bf16 pairs, as the tile kernel reads them.
    let a = t.a as *const i32;
    for q in 0..t.kc / 2 {
        let mut av: [__m512bh; R] =
            [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); R];
        for (r, x) in av.iter_mut().enumerate() {
            *x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(q * R + r)));
        }
        for p in 0..P {
            let pb = t.b.add(p * panel + q * 4 * PACK_NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(64).cast()));
            for r in 0..R {
                acc[r][p][0] = _mm512_dpbf16_ps(acc[r][p][0], av[r], b0);
                acc[r][p][1] = _mm512_dpbf16_ps(acc[r][p][1], av[r], b1);
            }
        }
    }
    widen_gemv::finish::<Avx512, R, P>(&acc, c, ldc)
}

pub(super) unsafe fn bf16(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(bf16_k, t, panel, c, ldc, init, PANELS)
}

#[target_feature(enable = "avx512f")]
unsafe fn bf16_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    widen_gemv::bf16::<Avx512, R, P>(t, panel, c, ldc, init)
}

pub(super) unsafe fn f16(t: &QTile, panel: usize, c: *mut f32, ldc: usize, init: Init) {
    rows!(f16_k, t, panel, c, ldc, init, PANELS)
}

#[target_feature(enable = "avx512f")]
unsafe fn f16_k<const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    widen_gemv::f16::<Avx512, R, P>(t, panel, c, ldc, init)
}
