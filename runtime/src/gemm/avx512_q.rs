//! AVX-512 kernels for narrow weights (panel layouts in `quant.rs`), 32 columns per tile:
//! - `avx512vnni_mmm_i8_12x32`: `vpdpbusd`, u8 activations × i8 weights, 4 k per lane and
//!   instruction into 24 i32 accumulators, as the f32 12×32 tile;
//! - `avx512bw_mmm_i8_6x32`: without VNNI, both operands sign/zero-extended to i16 and
//!   `vpmaddwd` (exact; `vpmaddubsw` would saturate at i16). Each accumulator holds 8 columns
//!   × 2 partial sums, so 6 rows take 24 registers and the tile is halved;
//! - `avx512bf16_mmm_bf16_12x32`: `vdpbf16ps`, bf16 pairs of activations and weights;
//! - `avx512_mmm_bf16_12x32` and `avx512_mmm_f16_12x32`: weights widened to f32 in registers
//!   (bf16 by a shift or a mask, f16 by `vcvtph2ps`), then FMA as the f32 kernel.

#![cfg(target_arch = "x86_64")]

use super::qgemm::QTile;
use super::{Init, PACK_NR};
use std::arch::x86_64::*;

macro_rules! rows {
    ($k:ident, $t:ident, $c:ident, $ldc:ident, $init:ident; $($r:literal)*) => {
        match $t.rows {
            $($r => $k::<$r>($t, $c, $ldc, $init),)*
            _ => unreachable!("tile rows are 1..=MR"),
        }
    };
}

pub(super) unsafe fn vnni_i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    rows!(vnni_i8_k, t, c, ldc, init; 1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_i8_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    // SAFETY: as the caller promised; this function has the features.
    unsafe { super::vnni::tile::<super::vnni::Zmm, R>(t, c, ldc, init) }
}

pub(super) unsafe fn bw_i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(bw_i8_k, t, c, ldc, init; 1 2 3 4 5 6)
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bw_i8_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let c = c as *mut i32;
    let a = t.a as *const i16;
    // acc[r][q]: columns 8q..8q+8, each as two partial sums (k0+k1, k2+k3) side by side.
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    let mut pb = t.b;
    for g in 0..t.kc / 4 {
        let mut b = [_mm512_setzero_si512(); 4];
        for (q, bq) in b.iter_mut().enumerate() {
            *bq = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pb.add(32 * q).cast()));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // The row's 4 activations as i16, repeated for each column.
            let a4 = (a.add(r * t.lda + 4 * g) as *const i64).read_unaligned();
            let av = _mm512_set1_epi64(a4);
            for q in 0..4 {
                row[q] = _mm512_add_epi32(row[q], _mm512_madd_epi16(av, b[q]));
            }
        }
        pb = pb.add(4 * PACK_NR);
    }
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (r, row) in acc.iter().enumerate() {
        for h in 0..2 {
            let (x, y) = (row[2 * h], row[2 * h + 1]);
            let mut s = _mm512_add_epi32(
                _mm512_permutex2var_epi32(x, even, y),
                _mm512_permutex2var_epi32(x, odd, y),
            );
            let dst = c.add(r * ldc + 16 * h);
            if let Init::Load = init {
                s = _mm512_add_epi32(s, _mm512_loadu_si512(dst.cast()));
            }
            _mm512_storeu_si512(dst.cast(), s);
        }
    }
}

/// Accumulators from the tile's init, as the f32 kernel starts them.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn start<const R: usize>(c: *mut f32, ldc: usize, init: Init) -> [[__m512; 2]; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    match init {
        Init::Zero => {}
        Init::Bias(bias) => {
            let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
            for row in acc.iter_mut() {
                *row = [b0, b1];
            }
        }
        Init::Load => {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [
                    _mm512_loadu_ps(c.add(r * ldc)),
                    _mm512_loadu_ps(c.add(r * ldc + 16)),
                ];
            }
        }
    }
    acc
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish<const R: usize>(acc: &[[__m512; 2]; R], c: *mut f32, ldc: usize) {
    for (r, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(r * ldc), row[0]);
        _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
    }
}

pub(super) unsafe fn bf16_dot(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(bf16_dot_k, t, c, ldc, init; 1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let mut acc = start::<R>(c, ldc, init);
    let a = t.a as *const i32;
    let mut pb = t.b;
    for p in 0..t.kc / 2 {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(64).cast()));
        for (r, row) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * R + r)));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
        pb = pb.add(4 * PACK_NR);
    }
    finish(&acc, c, ldc)
}

pub(super) unsafe fn bf16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(bf16_k, t, c, ldc, init; 1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f")]
unsafe fn bf16_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let mut acc = start::<R>(c, ldc, init);
    let a = t.a as *const f32;
    let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut pb = t.b;
    for p in 0..t.kc / 2 {
        let w0 = _mm512_loadu_si512(pb.cast());
        let w1 = _mm512_loadu_si512(pb.add(64).cast());
        // Each u32 is (k0 | k1 << 16): bf16 is an f32's high half.
        let even = [
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w0)),
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w1)),
        ];
        let odd = [
            _mm512_castsi512_ps(_mm512_and_si512(w0, hi)),
            _mm512_castsi512_ps(_mm512_and_si512(w1, hi)),
        ];
        let pa = a.add(2 * p * R);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*pa.add(r));
            row[0] = _mm512_fmadd_ps(av, even[0], row[0]);
            row[1] = _mm512_fmadd_ps(av, even[1], row[1]);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*pa.add(R + r));
            row[0] = _mm512_fmadd_ps(av, odd[0], row[0]);
            row[1] = _mm512_fmadd_ps(av, odd[1], row[1]);
        }
        pb = pb.add(4 * PACK_NR);
    }
    finish(&acc, c, ldc)
}

pub(super) unsafe fn f16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(f16_k, t, c, ldc, init; 1 2 3 4 5 6 7 8 9 10 11 12)
}

#[target_feature(enable = "avx512f")]
unsafe fn f16_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let mut acc = start::<R>(c, ldc, init);
    let a = t.a as *const f32;
    let mut pb = t.b;
    for kk in 0..t.kc {
        let b0 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.cast()));
        let b1 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(32).cast()));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(kk * R + r));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
        pb = pb.add(2 * PACK_NR);
    }
    finish(&acc, c, ldc)
}
