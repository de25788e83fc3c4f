//! The int8 VNNI tile and GEMV bodies, written once for both widths that have `vpdpbusd`
//! (u8 activations × i8 weights, 4 k per 32-bit lane, exact i32 sums): AVX-512 VNNI
//! (`avx512vnni_mmm_i8_12x32`, a whole 32-column panel per row) and AVX-VNNI
//! (`avxvnni_mmm_i8_6x16`, a 16-column half panel). Each kernel is a `#[target_feature]`
//! wrapper (`avx512_q.rs`, `avx2_q.rs`, `avx512_qgemv.rs`, `avx2_qgemv.rs`) around these
//! `#[inline(always)]` bodies, so the intrinsics compile with the wrapper's features.
//!
//! Both read the int8 panel layout (`quant.rs`): per group of 4 k, the panel's 32 columns × 4
//! bytes; a tile's two vectors of columns are the group's first `2 × V::BYTES` bytes from the
//! strip's start.

#![cfg(target_arch = "x86_64")]
// acc[r][p] is indexed by row and panel together: index loops read as the maths.
#![allow(clippy::needless_range_loop)]

use super::qgemm::QTile;
use super::{Init, PACK_NR};
use std::arch::x86_64::*;

/// One vector width with `vpdpbusd`.
pub(super) trait Vnni {
    type V: Copy;
    /// i32 lanes (columns) per vector.
    const LANES: usize;
    /// Rows up to which a tile splits even and odd k groups into separate accumulators: with
    /// few rows, 2R chains of `vpdpbusd` would wait on its latency (as many as the registers
    /// hold twice over).
    const FEW_ROWS: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const i32) -> Self::V;
    unsafe fn store(p: *mut i32, v: Self::V);
    unsafe fn splat(x: i32) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `acc + Σ4 a.u8 × b.i8` per lane.
    unsafe fn dpbusd(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
}

/// AVX-512 VNNI.
pub(super) struct Zmm;

impl Vnni for Zmm {
    type V = __m512i;
    const LANES: usize = 16;
    const FEW_ROWS: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn load(p: *const i32) -> __m512i {
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i32, v: __m512i) {
        unsafe { _mm512_storeu_si512(p.cast(), v) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, a, b)
    }
}

/// AVX-VNNI (the VEX-encoded 256-bit form).
pub(super) struct Ymm;

impl Vnni for Ymm {
    type V = __m256i;
    const LANES: usize = 8;
    const FEW_ROWS: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn load(p: *const i32) -> __m256i {
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i32, v: __m256i) {
        unsafe { _mm256_storeu_si256(p.cast(), v) }
    }
    #[inline(always)]
    unsafe fn splat(x: i32) -> __m256i {
        _mm256_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, a, b)
    }
}

/// The tile: `R` rows × `2 · V::LANES` columns, i32 sums written to C's memory.
///
/// # Safety
/// As the tile kernels' ([`QTile`]); the caller has `V`'s features.
#[inline(always)]
pub(super) unsafe fn tile<V: Vnni, const R: usize>(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    let w = V::LANES;
    let c = c as *mut i32;
    // SAFETY: as the caller promised.
    unsafe {
        let mut acc = [[V::zero(); 2]; R];
        if let Init::Load = init {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [V::load(c.add(r * ldc)), V::load(c.add(r * ldc + w))];
            }
        }
        // A macro, not a closure: a closure is a function of its own, which would not be
        // compiled with the wrapper's target features.
        macro_rules! step {
            ($acc:expr, $g:expr) => {{
                let g = $g;
                // Group g's first 2 · LANES columns × 4 k of the strip: 4 bytes a column.
                let pb = t.b.add(g * 4 * PACK_NR).cast::<i32>();
                let (b0, b1) = (V::load(pb), V::load(pb.add(w)));
                for (r, row) in $acc.iter_mut().enumerate() {
                    let av = V::splat((t.a.add(r * t.lda + 4 * g) as *const i32).read_unaligned());
                    row[0] = V::dpbusd(row[0], av, b0);
                    row[1] = V::dpbusd(row[1], av, b1);
                }
            }};
        }
        let groups = t.kc / 4;
        if R <= V::FEW_ROWS {
            t.fetch.all();
            // Integer sums: splitting them changes no result.
            let mut odd = [[V::zero(); 2]; R];
            for g in (0..groups / 2 * 2).step_by(2) {
                step!(acc, g);
                step!(odd, g + 1);
            }
            if groups % 2 == 1 {
                step!(acc, groups - 1);
            }
            for (row, o) in acc.iter_mut().zip(&odd) {
                row[0] = V::add(row[0], o[0]);
                row[1] = V::add(row[1], o[1]);
            }
        } else {
            let mut g = 0;
            super::spread_fetch!(t.fetch, groups, {
                step!(acc, g);
                g += 1;
            });
        }
        for (r, row) in acc.iter().enumerate() {
            V::store(c.add(r * ldc), row[0]);
            V::store(c.add(r * ldc + w), row[1]);
        }
    }
}

/// The decode GEMV: `R` rows against the same `2 · V::LANES` columns of `P` panels `panel`
/// bytes apart, panel p's sums at `c + 32p`; the tile's sums in the tile's order.
///
/// # Safety
/// As the GEMV kernels' (`qgemv.rs`); the caller has `V`'s features.
#[inline(always)]
pub(super) unsafe fn gemv<V: Vnni, const R: usize, const P: usize>(
    t: &QTile,
    panel: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
) {
    let w = V::LANES;
    let c = c as *mut i32;
    // SAFETY: as the caller promised.
    unsafe {
        let mut acc = [[[V::zero(); 2]; P]; R];
        if let Init::Load = init {
            for (r, row) in acc.iter_mut().enumerate() {
                for (p, x) in row.iter_mut().enumerate() {
                    let at = c.add(r * ldc + PACK_NR * p);
                    *x = [V::load(at), V::load(at.add(w))];
                }
            }
        }
        for g in 0..t.kc / 4 {
            let mut av = [V::zero(); R];
            for (r, x) in av.iter_mut().enumerate() {
                *x = V::splat((t.a.add(r * t.lda + 4 * g) as *const i32).read_unaligned());
            }
            for p in 0..P {
                let pb = t.b.add(p * panel + g * 4 * PACK_NR).cast::<i32>();
                let (b0, b1) = (V::load(pb), V::load(pb.add(w)));
                for r in 0..R {
                    acc[r][p][0] = V::dpbusd(acc[r][p][0], av[r], b0);
                    acc[r][p][1] = V::dpbusd(acc[r][p][1], av[r], b1);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (p, x) in row.iter().enumerate() {
                let at = c.add(r * ldc + PACK_NR * p);
                V::store(at, x[0]);
                V::store(at.add(w), x[1]);
            }
        }
    }
}
