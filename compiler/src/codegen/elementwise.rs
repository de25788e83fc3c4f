//! Elementwise kernels: broadcast add and multiply, scaling and the activations (their
//! polynomials are in `math`).

use super::{math, CodegenError, Imports, Lowering};
use crate::graph::Activation;
use cranelift_codegen::ir::{condcodes::IntCC, InstBuilder};
use cranelift_module::{FuncId, Module};

/// `(a, b, out, n_a, n_b)`: out = a ∘ b with `b` (n_b elements) repeated over `a`.
pub fn binary<M: Module>(l: &mut Lowering<'_, M>, add: bool) -> Result<FuncId, CodegenError> {
    let name = if add { "cf_add" } else { "cf_mul" };
    l.kernel(name, 5, false, Imports::default(), |k, p, _| {
        let (a, b, out, na, nb) = (p[0], p[1], p[2], p[3], p[4]);
        // Guard the division: an empty `b` means an empty `a`.
        let one = k.i(1);
        let zero = k.i(0);
        let empty = k.b.ins().icmp_imm_s(IntCC::Equal, nb, 0);
        let div = k.b.ins().select(empty, one, nb);
        let chunks = k.b.ins().udiv(na, div);
        let chunks = k.b.ins().select(empty, zero, chunks);
        k.for_n(chunks, |k, c| {
            let off = k.mul(c, nb);
            let pa = k.at(a, off, 4);
            let po = k.at(out, off, 4);
            // Elementwise over one chunk: a and b side by side.
            let n4 = k.b.ins().band_imm_s(nb, !3);
            let z = k.i(0);
            k.for_range(z, n4, 4, |k, i| {
                let x = k.at(pa, i, 4);
                let y = k.at(b, i, 4);
                let x = k.ldv(x, 0);
                let y = k.ldv(y, 0);
                let r = if add {
                    k.b.ins().fadd(x, y)
                } else {
                    k.b.ins().fmul(x, y)
                };
                let o = k.at(po, i, 4);
                k.st(r, o, 0);
            });
            k.for_range(n4, nb, 1, |k, i| {
                let x = k.at(pa, i, 4);
                let y = k.at(b, i, 4);
                let x = k.ldf(x, 0);
                let y = k.ldf(y, 0);
                let r = if add {
                    k.b.ins().fadd(x, y)
                } else {
                    k.b.ins().fmul(x, y)
                };
                let o = k.at(po, i, 4);
                k.st(r, o, 0);
            });
        });
    })
}

/// `(x, out, n)`: out = x * factor.
pub fn scale<M: Module>(l: &mut Lowering<'_, M>, factor: f32) -> Result<FuncId, CodegenError> {
    let name = format!("cf_scale_{:08x}", factor.to_bits());
    l.kernel(&name, 3, false, Imports::default(), |k, p, _| {
        let f = k.splat(factor);
        k.map_f32(p[0], p[1], p[2], |k, x| k.b.ins().fmul(x, f));
    })
}

/// `(x, out, n)`: out = act(x).
pub fn activation<M: Module>(
    l: &mut Lowering<'_, M>,
    a: Activation,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_act_{}", format!("{a:?}").to_lowercase());
    l.kernel(&name, 3, false, Imports::default(), |k, p, _| {
        k.map_f32(p[0], p[1], p[2], |k, x| math::activation(k, a, x));
    })
}
