//! Row normalisations: LayerNorm, T5's RMS norm (each also fused with the residual add before
//! it) and L2 normalisation. Sums are f32x4 partial
//! sums (the interpreter uses f64; the difference is far inside the fixtures' tolerance for
//! rows of up to thousands of channels).

use super::entry::{Arg, At, Call};
use super::ir::Kb;
use super::{parallel, CodegenError, Imports, Lowering};
use crate::graph::Op;
use cranelift_codegen::ir::{condcodes::IntCC, types::F32X4, InstBuilder, Value};
use cranelift_module::{FuncId, Module};

fn sum_of(k: &mut Kb, row: Value, n: Value, f: impl Fn(&mut Kb, Value) -> Value) -> Value {
    let z = k.splat(0.0);
    let acc = k.reduce_f32(row, n, z, 0.0, |k, acc, x| {
        let y = f(k, x);
        k.b.ins().fadd(acc, y)
    });
    k.hsum(acc)
}

/// `(x, gamma, beta, out, rows)` over rows of `c`.
///
/// The mean is kept as an f32 pair `hi + lo` (hi = Σx / C, lo = Σ(x - hi) / C, where each
/// x - hi is exact when x is near the mean): rows whose values nearly coincide, with a tiny
/// eps, are ill-conditioned, and a single f32 mean loses up to half an ulp of x there; the
/// pair matches the interpreter's f64 statistics. Σ(x - mean)² = Σ(x - hi)² - C·lo².
pub fn layer_norm<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_layer_norm_c{c}_e{:08x}", eps.to_bits());
    l.kernel(&name, 5, false, Imports::default(), |k, p, _| {
        let (x, g, beta, out, rows) = (p[0], p[1], p[2], p[3], p[4]);
        k.for_n(rows, |k, r| {
            let off = k.muli(r, 4 * c as i64);
            let xr = k.add(x, off);
            let or = k.add(out, off);
            layer_norm_row(k, xr, g, beta, or, c, eps);
        });
    })
}

/// One row of [`layer_norm`]: `out` may be `x`.
fn layer_norm_row(k: &mut Kb, xr: Value, g: Value, beta: Value, or: Value, c: usize, eps: f32) {
    let cv = k.i(c as i64);
    let c4 = k.i((c & !3) as i64);
    let inv_c = k.f(1.0 / c as f32);
    let s = sum_of(k, xr, cv, |_, v| v);
    let hi = k.b.ins().fmul(s, inv_c);
    let hv = k.b.ins().splat(F32X4, hi);
    // Σ(x - hi) and Σ(x - hi)², vectors then the scalar tail.
    let (sd, sq) = {
        let z = k.splat(0.0);
        let a1 = k.b.declare_var(F32X4);
        let a2 = k.b.declare_var(F32X4);
        k.b.def_var(a1, z);
        k.b.def_var(a2, z);
        let zero = k.i(0);
        k.for_range(zero, c4, 4, |k, i| {
            let a = k.at(xr, i, 4);
            let v = k.ldv(a, 0);
            let d = k.b.ins().fsub(v, hv);
            let c1 = k.b.use_var(a1);
            let c2 = k.b.use_var(a2);
            let n1 = k.b.ins().fadd(c1, d);
            let n2 = k.fma(d, d, c2);
            k.b.def_var(a1, n1);
            k.b.def_var(a2, n2);
        });
        let t1 = k.b.use_var(a1);
        let t2 = k.b.use_var(a2);
        let mut s1 = k.hsum(t1);
        let mut s2 = k.hsum(t2);
        for j in (c & !3)..c {
            let v = k.ldf(xr, 4 * j as i32);
            let d = k.b.ins().fsub(v, hi);
            s1 = k.b.ins().fadd(s1, d);
            s2 = k.b.ins().fma(d, d, s2);
        }
        (s1, s2)
    };
    let lo = k.b.ins().fmul(sd, inv_c);
    let lv = k.b.ins().splat(F32X4, lo);
    let clo = k.b.ins().fmul(sd, lo);
    let var_sum = k.b.ins().fsub(sq, clo);
    let zf = k.f(0.0);
    let var_sum = k.b.ins().fmax(var_sum, zf);
    let var = k.b.ins().fmul(var_sum, inv_c);
    let e = k.f(eps);
    let ve = k.b.ins().fadd(var, e);
    let sd = k.b.ins().sqrt(ve);
    let one = k.f(1.0);
    let inv = k.b.ins().fdiv(one, sd);
    let iv = k.b.ins().splat(F32X4, inv);
    // out = ((x - hi) - lo) * inv * gamma + beta, as the interpreter rounds it.
    let zero = k.i(0);
    k.for_range(zero, c4, 4, |k, i| {
        let a = k.at(xr, i, 4);
        let v = k.ldv(a, 0);
        let ga = k.at(g, i, 4);
        let gv = k.ldv(ga, 0);
        let ba = k.at(beta, i, 4);
        let bv = k.ldv(ba, 0);
        let d = k.b.ins().fsub(v, hv);
        let d = k.b.ins().fsub(d, lv);
        let nrm = k.b.ins().fmul(d, iv);
        let y = k.fma(nrm, gv, bv);
        let o = k.at(or, i, 4);
        k.st(y, o, 0);
    });
    for j in (c & !3)..c {
        let o = 4 * j as i32;
        let v = k.ldf(xr, o);
        let gv = k.ldf(g, o);
        let bv = k.ldf(beta, o);
        let d = k.b.ins().fsub(v, hi);
        let d = k.b.ins().fsub(d, lo);
        let nrm = k.b.ins().fmul(d, inv);
        let y = k.b.ins().fma(nrm, gv, bv);
        k.st(y, or, o);
    }
}

/// `(x, gamma, out, rows)`: x / sqrt(mean(x²) + eps) * gamma.
pub fn rms_norm<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_rms_norm_c{c}_e{:08x}", eps.to_bits());
    l.kernel(&name, 4, false, Imports::default(), |k, p, _| {
        let (x, g, out, rows) = (p[0], p[1], p[2], p[3]);
        k.for_n(rows, |k, r| {
            let off = k.muli(r, 4 * c as i64);
            let xr = k.add(x, off);
            let or = k.add(out, off);
            rms_norm_row(k, xr, g, or, c, eps);
        });
    })
}

/// One row of [`rms_norm`]: `out` may be `x`.
fn rms_norm_row(k: &mut Kb, xr: Value, g: Value, or: Value, c: usize, eps: f32) {
    let cv = k.i(c as i64);
    let ss = sum_of(k, xr, cv, |k, v| k.b.ins().fmul(v, v));
    let inv_c = k.f(1.0 / c as f32);
    let ms = k.b.ins().fmul(ss, inv_c);
    let e = k.f(eps);
    let ve = k.b.ins().fadd(ms, e);
    let sd = k.b.ins().sqrt(ve);
    let one = k.f(1.0);
    let inv = k.b.ins().fdiv(one, sd);
    let iv = k.b.ins().splat(F32X4, inv);
    let z = k.i(0);
    let n4v = k.i((c & !3) as i64);
    k.for_range(z, n4v, 4, |k, i| {
        let a = k.at(xr, i, 4);
        let v = k.ldv(a, 0);
        let ga = k.at(g, i, 4);
        let gv = k.ldv(ga, 0);
        let y = k.b.ins().fmul(v, iv);
        let y = k.b.ins().fmul(y, gv);
        let o = k.at(or, i, 4);
        k.st(y, o, 0);
    });
    for j in (c & !3)..c {
        let o = 4 * j as i32;
        let v = k.ldf(xr, o);
        let gv = k.ldf(g, o);
        let y = k.b.ins().fmul(v, inv);
        let y = k.b.ins().fmul(y, gv);
        k.st(y, or, o);
    }
}

/// `(x, out, rows)`: each row divided by max(‖row‖₂, 1e-12).
pub fn l2_normalize<M: Module>(l: &mut Lowering<'_, M>, c: usize) -> Result<FuncId, CodegenError> {
    let name = format!("cf_l2_normalize_c{c}");
    l.kernel(&name, 3, false, Imports::default(), |k, p, _| {
        let (x, out, rows) = (p[0], p[1], p[2]);
        let cv = k.i(c as i64);
        k.for_n(rows, |k, r| {
            let off = k.muli(r, 4 * c as i64);
            let xr = k.add(x, off);
            let or = k.add(out, off);
            let ss = sum_of(k, xr, cv, |k, v| k.b.ins().fmul(v, v));
            let nrm = k.b.ins().sqrt(ss);
            let tiny = k.f(1e-12);
            let nrm = k.b.ins().fmax(nrm, tiny);
            let nv = k.b.ins().splat(F32X4, nrm);
            k.map_f32(xr, or, cv, |k, v| k.b.ins().fdiv(v, nv));
        });
    })
}

/// Row `r` of `a` plus row `r mod rows_b` of `b` into row `r` of `out`; returns that row.
fn add_row(k: &mut Kb, a: Value, b: Value, out: Value, r: Value, rows_b: Value, c: usize) -> Value {
    let off = k.muli(r, 4 * c as i64);
    let ar = k.add(a, off);
    let or = k.add(out, off);
    let rb = k.b.ins().urem(r, rows_b);
    let boff = k.muli(rb, 4 * c as i64);
    let br = k.add(b, boff);
    let zero = k.i(0);
    let c4 = k.i((c & !3) as i64);
    k.for_range(zero, c4, 4, |k, i| {
        let pa = k.at(ar, i, 4);
        let pb = k.at(br, i, 4);
        let x = k.ldv(pa, 0);
        let y = k.ldv(pb, 0);
        let s = k.b.ins().fadd(x, y);
        let po = k.at(or, i, 4);
        k.st(s, po, 0);
    });
    for j in (c & !3)..c {
        let o = 4 * j as i32;
        let x = k.ldf(ar, o);
        let y = k.ldf(br, o);
        let s = k.b.ins().fadd(x, y);
        k.st(s, or, o);
    }
    or
}

/// `(a, b, gamma, beta, out, rows, rows_b)`: LayerNorm(a + b) with `b`'s `rows_b` rows
/// repeated over `a`'s; the sum is rounded to f32 first, as by an add then a norm.
pub fn add_layer_norm<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_add_layer_norm_c{c}_e{:08x}", eps.to_bits());
    l.kernel(&name, 7, false, Imports::default(), |k, p, _| {
        let (a, b, g, beta, out, rows, rows_b) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
        k.for_n(rows, |k, r| {
            let or = add_row(k, a, b, out, r, rows_b, c);
            layer_norm_row(k, or, g, beta, or, c, eps);
        });
    })
}

/// `(a, b, gamma, beta, out, rows, rows_b, parallel_for)`: [`add_layer_norm`] on the thread
/// pool. When `b` has a row for every row of `a` (a residual, the common case) the rows are
/// cut into tasks (`parallel::split`: the same code per row wherever the cut falls, so
/// results do not depend on the thread count); a repeated `b` runs on one thread.
pub fn add_layer_norm_parallel<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let serial = add_layer_norm(l, c, eps)?;
    let same_name = format!("cf_add_layer_norm_same_c{c}_e{:08x}", eps.to_bits());
    let imports = Imports {
        funcs: vec![serial],
        data: vec![],
    };
    // `(a, b, gamma, beta, out, rows)` with as many rows of b as of a.
    let same = l.kernel(&same_name, 6, false, imports, |k, p, refs| {
        let args = [p[0], p[1], p[2], p[3], p[4], p[5], p[5]];
        k.b.ins().call(refs.funcs[0], &args);
    })?;
    let row = 4 * c as i64;
    let split = parallel::split(
        l,
        &format!("{same_name}_parallel"),
        same,
        &[row, row, 0, 0, row],
        16,
        1,
    )?;
    let name = format!("cf_add_layer_norm_c{c}_e{:08x}_parallel", eps.to_bits());
    let imports = Imports {
        funcs: vec![serial, split],
        data: vec![],
    };
    l.kernel(&name, 8, false, imports, |k, p, refs| {
        let (rows, rows_b, pfor) = (p[5], p[6], p[7]);
        let same = k.b.ins().icmp(IntCC::Equal, rows, rows_b);
        let (par, one, done) = (k.b.create_block(), k.b.create_block(), k.b.create_block());
        k.b.ins().brif(same, par, &[], one, &[]);
        k.b.switch_to_block(par);
        k.b.ins()
            .call(refs.funcs[1], &[p[0], p[1], p[2], p[3], p[4], rows, pfor]);
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(one);
        k.b.ins().call(refs.funcs[0], &p[..7]);
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(done);
    })
}

/// `(a, b, gamma, out, rows, rows_b)`: RmsNorm(a + b), `b` repeated as in [`add_layer_norm`].
pub fn add_rms_norm<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_add_rms_norm_c{c}_e{:08x}", eps.to_bits());
    l.kernel(&name, 6, false, Imports::default(), |k, p, _| {
        let (a, b, g, out, rows, rows_b) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        k.for_n(rows, |k, r| {
            let or = add_row(k, a, b, out, r, rows_b, c);
            rms_norm_row(k, or, g, or, c, eps);
        });
    })
}

/// The call computing a normalisation node; the plain norms run on the thread pool
/// (`parallel::split`) when there are enough rows.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    let c = at.channels();
    let rows = Arg::Rows(at.n);
    Ok(match at.node().op {
        Op::AddLayerNorm { eps } => Call::new(
            add_layer_norm_parallel(l, c, eps)?,
            vec![
                at.v(0),
                at.v(1),
                at.v(2),
                at.v(3),
                at.out(),
                rows,
                Arg::Rows(at.ops[1]),
                Arg::ParallelFor,
            ],
        ),
        Op::AddRmsNorm { eps } => Call::new(
            add_rms_norm(l, c, eps)?,
            vec![
                at.v(0),
                at.v(1),
                at.v(2),
                at.out(),
                rows,
                Arg::Rows(at.ops[1]),
            ],
        ),
        Op::LayerNorm { eps } => {
            let inner = layer_norm(l, c, eps)?;
            let name = format!("cf_layer_norm_c{c}_e{:08x}_parallel", eps.to_bits());
            let row = 4 * c as i64;
            Call::new(
                parallel::split(l, &name, inner, &[row, 0, 0, row], 16, 1)?,
                vec![at.v(0), at.v(1), at.v(2), at.out(), rows, Arg::ParallelFor],
            )
        }
        Op::RmsNorm { eps } => {
            let inner = rms_norm(l, c, eps)?;
            let name = format!("cf_rms_norm_c{c}_e{:08x}_parallel", eps.to_bits());
            let row = 4 * c as i64;
            Call::new(
                parallel::split(l, &name, inner, &[row, 0, row], 16, 1)?,
                vec![at.v(0), at.v(1), at.out(), rows, Arg::ParallelFor],
            )
        }
        Op::L2Normalize => Call::new(l2_normalize(l, c)?, vec![at.v(0), at.out(), rows]),
        ref other => unreachable!("not a norm: {other}"),
    })
}
