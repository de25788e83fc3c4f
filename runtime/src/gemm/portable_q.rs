//! `portable_mmm_{i8,bf16,f16}_4x8`: plain Rust for CPUs without AVX2, reading the same
//! panels as the vector kernels (layouts in `quant.rs`). The int8 kernel computes the same
//! exact i32 sums as the others.

use super::qgemm::QTile;
use super::{Init, PACK_NR};

const NR: usize = 8;

pub(super) unsafe fn i8(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    let c = c as *mut i32;
    let mut acc = [[0i32; NR]; 4];
    for g in 0..t.kc / 4 {
        let b = std::slice::from_raw_parts(t.b.add(g * 4 * PACK_NR) as *const i8, 4 * NR);
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = std::slice::from_raw_parts(t.a.add(r * t.lda + 4 * g), 4);
            for (j, x) in row.iter_mut().enumerate() {
                for q in 0..4 {
                    *x += a[q] as i32 * b[4 * j + q] as i32;
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for (j, &x) in row.iter().enumerate() {
            let dst = c.add(r * ldc + j);
            *dst = if let Init::Load = init {
                (*dst).wrapping_add(x)
            } else {
                x
            };
        }
    }
}

/// The f32 tile of the widening kernels, with `w(kk, j)` the widened weight.
#[inline(always)]
unsafe fn widened(t: &QTile, c: *mut f32, ldc: usize, init: Init, w: impl Fn(usize, usize) -> f32) {
    let mut acc = [[0f32; NR]; 4];
    for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
        match init {
            Init::Zero => {}
            Init::Bias(b) => row.copy_from_slice(std::slice::from_raw_parts(b, NR)),
            Init::Load => row.copy_from_slice(std::slice::from_raw_parts(c.add(r * ldc), NR)),
        }
    }
    let a = t.a as *const f32;
    for kk in 0..t.kc {
        let bv: [f32; NR] = std::array::from_fn(|j| w(kk, j));
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let av = *a.add(kk * t.rows + r);
            for (x, &y) in row.iter_mut().zip(&bv) {
                *x += av * y;
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), NR);
    }
}

pub(super) unsafe fn bf16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    let b = t.b as *const u16;
    widened(t, c, ldc, init, |kk, j| {
        let bits = *b.add(kk / 2 * 2 * PACK_NR + 2 * j + kk % 2);
        f32::from_bits((bits as u32) << 16)
    })
}

pub(super) unsafe fn f16(t: &QTile, c: *mut f32, ldc: usize, init: Init) {
    t.fetch.all();
    let b = t.b as *const u16;
    widened(t, c, ldc, init, |kk, j| {
        half::f16::from_bits(*b.add(kk * PACK_NR + j)).to_f32()
    })
}
