//! `avx2_mm_f32_6x16`: 6 rows × 16 columns in 12 ymm accumulators (of 16).
//!
//! The K loop runs four steps per iteration. One step a loop iteration (12 FMAs, 8 loads, the
//! pointer updates and the branch) ran 1.06x the time on 2 threads and 1.14x on 1 of twelve
//! BERT-base FFN layers (AMD EPYC Zen 4, in one process, the two ways alternating); the
//! AVX-512 kernel showed no difference and keeps one step.

use super::{with_full_tile, Fetch, Init, Tile};

pub const MR: usize = 6;
pub const NR: usize = 16;

#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn tile(t: &Tile) {
    with_full_tile::<NR>(t, |t, c, ldc, init| match t.rows {
        1 => kernel::<1>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        2 => kernel::<2>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        3 => kernel::<3>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        4 => kernel::<4>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        5 => kernel::<5>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        6 => kernel::<6>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),
        _ => unreachable!("tile rows are 1..=MR"),
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    init: Init,
    fetch: Fetch,
) {
    use std::arch::x86_64::*;
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
    let (mut pa, mut pb) = (a, b);
    super::spread_fetch!(fetch, kc, unroll4, {
        let b0 = _mm256_loadu_ps(pb);
        let b1 = _mm256_loadu_ps(pb.add(8));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*pa.add(r * lda));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        pa = pa.add(1);
        pb = pb.add(super::PACK_NR);
    });
    for (r, row) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * ldc), row[0]);
        _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
    }
}
