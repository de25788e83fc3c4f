//! `portable_mm_f32_4x8`: plain Rust for CPUs without AVX2 (and other architectures); the
//! fixed-size inner loops vectorise to whatever the target has.

use super::{with_full_tile, Init, Tile};

pub const MR: usize = 4;
pub const NR: usize = 8;

pub(super) unsafe fn tile(t: &Tile) {
    t.fetch.all();
    with_full_tile::<NR>(t, |t, c, ldc, init| {
        let mut acc = [[0f32; NR]; MR];
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            match init {
                Init::Zero => {}
                Init::Bias(b) => row.copy_from_slice(std::slice::from_raw_parts(b, NR)),
                Init::Load => row.copy_from_slice(std::slice::from_raw_parts(c.add(r * ldc), NR)),
            }
        }
        for kk in 0..t.kc {
            let bv = std::slice::from_raw_parts(t.b.add(kk * super::PACK_NR), NR);
            for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
                let av = *t.a.add(r * t.lda + kk);
                for (x, &y) in row.iter_mut().zip(bv) {
                    *x += av * y;
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(t.rows) {
            std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), NR);
        }
    })
}
