//! `avx512_mm_f32_12x32`: 12 rows × 32 columns in 24 zmm accumulators (of 32), two B vectors
//! and one broadcast A value per step: 24 FMAs per 2 loads + 12 broadcasts, enough
//! independent chains (24 > 2 pipes × 4 cycles latency) to keep both FMA pipes busy.

use super::{with_full_tile, Fetch, Init, Tile};

pub const MR: usize = 12;
pub const NR: usize = 32;

#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn tile(t: &Tile) {
    with_full_tile::<NR>(t, |t, c, ldc, init| {
        // One instantiation per row count keeps every accumulator in a register.
        macro_rules! rows {
            ($($r:literal)*) => {
                match t.rows {
                    $($r => kernel::<$r>(t.kc, t.a, t.lda, t.b, c, ldc, init, t.fetch),)*
                    _ => unreachable!("tile rows are 1..=MR"),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
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
    let (mut pa, mut pb) = (a, b);
    super::spread_fetch!(fetch, kc, {
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(16));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*pa.add(r * lda));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
        pa = pa.add(1);
        pb = pb.add(super::PACK_NR);
    });
    for (r, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(r * ldc), row[0]);
        _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
    }
}
