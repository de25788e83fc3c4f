//! AVX2 kernels for narrow weights (panel layouts in `quant.rs`):
//! - `avx2_mmm_i8_6x8`: i8 weights sign-extended to i16 (`vpmovsxbw`), activations already
//!   i16, `vpmaddwd` into i32. Exact, unlike `vpmaddubsw`, whose i16 pair sums saturate
//!   (255·127·2 > 32767) unless activations are cut to 7 bits. Each accumulator holds 4
//!   columns × 2 partial sums, so 6 rows × 8 columns fill 12 of the 16 ymm registers;
//! - `avxvnni_mmm_i8_6x16`: where the CPU has AVX-VNNI (VEX-encoded `vpdpbusd`: Intel since
//!   Alder Lake and Sierra Forest, AMD Zen 5), u8 activations × i8 weights, 4 k per lane and
//!   instruction into i32 (no intermediate saturation), as `avx512vnni_mmm_i8_12x32` with
//!   256-bit vectors: 6 rows × 16 columns (a half panel) in 12 accumulators; twice the
//!   multiply-adds of `vpmaddwd` per instruction, and no widening of the weights;
//! - `avx2_mmm_bf16_6x16`, `avx2_mmm_f16_6x16`: weights widened to f32 in registers (bf16 by
//!   a shift or a mask, f16 by F16C's `vcvtph2ps`), then FMA as `avx2_mm_f32_6x16`.

#![cfg(target_arch = "x86_64")]

use super::qgemm::QTile;
use super::{Init, PACK_NR};
use std::arch::x86_64::*;

macro_rules! rows {
    ($k:ident, $t:ident, $c:ident, $ldc:ident, $init:ident) => {
        match $t.rows {
            1 => $k::<1>($t, $c, $ldc, $init),
            2 => $k::<2>($t, $c, $ldc, $init),
            3 => $k::<3>($t, $c, $ldc, $init),
            4 => $k::<4>($t, $c, $ldc, $init),
            5 => $k::<5>($t, $c, $ldc, $init),
            6 => $k::<6>($t, $c, $ldc, $init),
            _ => unreachable!("tile rows are 1..=MR"),
        }
    };
}

pub(super) unsafe fn i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(i8_k, t, c, ldc, init)
}

#[target_feature(enable = "avx2")]
unsafe fn i8_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let c = c as *mut i32;
    let a = t.a as *const i16;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let mut pb = t.b;
    for g in 0..t.kc / 4 {
        // 4 columns × 4 k each, as i16.
        let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.cast()));
        let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(16).cast()));
        for (r, row) in acc.iter_mut().enumerate() {
            let a4 = (a.add(r * t.lda + 4 * g) as *const i64).read_unaligned();
            let av = _mm256_set1_epi64x(a4);
            row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(av, b0));
            row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(av, b1));
        }
        pb = pb.add(4 * PACK_NR);
    }
    for (r, row) in acc.iter().enumerate() {
        // hadd gives columns (0 1 4 5 | 2 3 6 7); the permute puts them in order.
        let h = _mm256_hadd_epi32(row[0], row[1]);
        let mut s = _mm256_permute4x64_epi64::<0b11_01_10_00>(h);
        let dst = c.add(r * ldc);
        if let Init::Load = init {
            s = _mm256_add_epi32(s, _mm256_loadu_si256(dst.cast()));
        }
        _mm256_storeu_si256(dst.cast(), s);
    }
}

pub(super) unsafe fn vnni_i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    rows!(vnni_i8_k, t, c, ldc, init)
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn vnni_i8_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    // SAFETY: as the caller promised; this function has the features.
    unsafe { super::vnni::tile::<super::vnni::Ymm, R>(t, c, ldc, init) }
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn start<const R: usize>(c: *mut f32, ldc: usize, init: Init) -> [[__m256; 2]; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    match init {
        Init::Zero => {}
        Init::Bias(bias) => {
            let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
            for row in acc.iter_mut() {
                *row = [b0, b1];
            }
        }
        Init::Load => {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [
                    _mm256_loadu_ps(c.add(r * ldc)),
                    _mm256_loadu_ps(c.add(r * ldc + 8)),
                ];
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn finish<const R: usize>(acc: &[[__m256; 2]; R], c: *mut f32, ldc: usize) {
    for (r, row) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * ldc), row[0]);
        _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
    }
}

pub(super) unsafe fn bf16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(bf16_k, t, c, ldc, init)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let mut acc = start::<R>(c, ldc, init);
    let a = t.a as *const f32;
    let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let mut pb = t.b;
    for p in 0..t.kc / 2 {
        // 8 columns × (k0, k1) per vector; bf16 is an f32's high half.
        let w0 = _mm256_loadu_si256(pb.cast());
        let w1 = _mm256_loadu_si256(pb.add(32).cast());
        let pa = a.add(2 * p * R);
        let (e0, e1) = (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)),
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1)),
        );
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*pa.add(r));
            row[0] = _mm256_fmadd_ps(av, e0, row[0]);
            row[1] = _mm256_fmadd_ps(av, e1, row[1]);
        }
        let (o0, o1) = (
            _mm256_castsi256_ps(_mm256_and_si256(w0, hi)),
            _mm256_castsi256_ps(_mm256_and_si256(w1, hi)),
        );
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*pa.add(R + r));
            row[0] = _mm256_fmadd_ps(av, o0, row[0]);
            row[1] = _mm256_fmadd_ps(av, o1, row[1]);
        }
        pb = pb.add(4 * PACK_NR);
    }
    finish(&acc, c, ldc)
}

pub(super) unsafe fn f16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    rows!(f16_k, t, c, ldc, init)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_k<const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let mut acc = start::<R>(c, ldc, init);
    let a = t.a as *const f32;
    let mut pb = t.b;
    for kk in 0..t.kc {
        let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.cast()));
        let b1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(16).cast()));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(kk * R + r));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        pb = pb.add(2 * PACK_NR);
    }
    finish(&acc, c, ldc)
}
