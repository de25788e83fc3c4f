//! `avx512_gemv_f32_1x32x4` and `avx2_gemv_f32_1x32x3`: one row of A against several whole
//! weight panels at once, for decode steps (M = 1). A GEMV is bound by streaming the weights
//! from DRAM; one panel at a time is one sequential stream per thread, and a core keeps more
//! misses in flight over several streams (a sum over 64 MiB on one thread of the AMD EPYC with
//! AVX-512, under load: 4 interleaved streams read a median 2.5x faster than one, 1.1-3.0x
//! over 5 rounds).
//! Each column still sums its products in the order the tile kernels do (bias or C, then
//! k ascending, one FMA per k), so results are bit-identical to the tile path.

use super::{Init, PACK_NR};

/// Whole panels one call reads together, per ISA.
pub const AVX512_PANELS: usize = 4;
/// Three panels of four ymm accumulators each: 12 of the 16 registers.
pub const AVX2_PANELS: usize = 3;

/// `c[0..32·P] = init + Σ_k a[k] · panel_p[k]` for `P` consecutive panels, `b` at the first
/// panel's row `pc`, panels `panel` floats apart. `init`: zero, the bias of the first panel's
/// first column (32·P valid entries), or C's values.
///
/// # Safety
/// `a` holds `kc` floats, each panel `kc` rows from `b`, `c` (and a bias) 32·P floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512<const P: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    panel: usize,
    c: *mut f32,
    init: Init,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; P];
    for (p, x) in acc.iter_mut().enumerate() {
        let at = |q: *const f32| [_mm512_loadu_ps(q), _mm512_loadu_ps(q.add(16))];
        match init {
            Init::Zero => {}
            Init::Bias(bias) => *x = at(bias.add(PACK_NR * p)),
            Init::Load => *x = at(c.add(PACK_NR * p)),
        }
    }
    for kk in 0..kc {
        let av = _mm512_set1_ps(*a.add(kk));
        for (p, x) in acc.iter_mut().enumerate() {
            let pb = b.add(p * panel + kk * PACK_NR);
            x[0] = _mm512_fmadd_ps(av, _mm512_loadu_ps(pb), x[0]);
            x[1] = _mm512_fmadd_ps(av, _mm512_loadu_ps(pb.add(16)), x[1]);
        }
    }
    for (p, x) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(PACK_NR * p), x[0]);
        _mm512_storeu_ps(c.add(PACK_NR * p + 16), x[1]);
    }
}

/// As [`avx512`] with 256-bit vectors.
///
/// # Safety
/// As [`avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2<const P: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    panel: usize,
    c: *mut f32,
    init: Init,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 4]; P];
    for (p, x) in acc.iter_mut().enumerate() {
        let at = |q: *const f32| {
            [
                _mm256_loadu_ps(q),
                _mm256_loadu_ps(q.add(8)),
                _mm256_loadu_ps(q.add(16)),
                _mm256_loadu_ps(q.add(24)),
            ]
        };
        match init {
            Init::Zero => {}
            Init::Bias(bias) => *x = at(bias.add(PACK_NR * p)),
            Init::Load => *x = at(c.add(PACK_NR * p)),
        }
    }
    for kk in 0..kc {
        let av = _mm256_broadcast_ss(&*a.add(kk));
        for (p, x) in acc.iter_mut().enumerate() {
            let pb = b.add(p * panel + kk * PACK_NR);
            for (v, xv) in x.iter_mut().enumerate() {
                *xv = _mm256_fmadd_ps(av, _mm256_loadu_ps(pb.add(8 * v)), *xv);
            }
        }
    }
    for (p, x) in acc.iter().enumerate() {
        for (v, xv) in x.iter().enumerate() {
            _mm256_storeu_ps(c.add(PACK_NR * p + 8 * v), *xv);
        }
    }
}
