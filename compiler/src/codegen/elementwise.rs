//! Elementwise kernels: broadcast add and multiply, scaling and the activations (their
//! polynomials are in `math`), T5's gated activation and fused pointwise chains.

use super::entry::{Arg, At, Call};
use super::ir::Kb;
use super::{math, CodegenError, Imports, Lowering};
use crate::graph::{Activation, EwStep, Op};
use cranelift_codegen::ir::{condcodes::IntCC, types::F32X4, InstBuilder, Value};
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

/// [`activation`] on the runtime's thread pool: `(x, out, numel, parallel_for)`.
pub fn activation_parallel<M: Module>(
    l: &mut Lowering<'_, M>,
    a: Activation,
) -> Result<FuncId, CodegenError> {
    let inner = activation(l, a)?;
    let name = format!("cf_act_{a:?}_parallel")
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "");
    super::parallel::split(l, &name, inner, &[4, 4], 1 << 14, 16)
}

/// `(x, out, rows)` over rows of `2f` in, `f` out: out = act(x[.., :f]) * x[.., f:].
pub fn gated<M: Module>(
    l: &mut Lowering<'_, M>,
    a: Activation,
    f: usize,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_gated_{}_f{f}", format!("{a:?}").to_lowercase());
    l.kernel(&name, 3, false, Imports::default(), |k, p, _| {
        let (x, out, rows) = (p[0], p[1], p[2]);
        k.for_n(rows, |k, r| {
            let xr = k.muli(r, 8 * f as i64);
            let xr = k.add(x, xr);
            let or = k.muli(r, 4 * f as i64);
            let or = k.add(out, or);
            let xl = k.addi(xr, 4 * f as i64);
            row_map(k, f, |k, j, vector| {
                let g = load(k, xr, j, vector);
                let lin = load(k, xl, j, vector);
                let g = math::activation(k, a, g);
                let y = k.b.ins().fmul(g, lin);
                store(k, y, or, j, vector);
            });
        });
    })
}

/// `(x, out, rows, [b_i, rows_i]..)`: the steps of an `Elementwise` chain over rows of `c`,
/// operand i (1-based, as the steps number them) a scalar when `scalar[i - 1]`, else rows of
/// `c` of which row `r mod rows_i` goes with row r of x.
pub fn chain<M: Module>(
    l: &mut Lowering<'_, M>,
    steps: &[EwStep],
    c: usize,
    scalar: &[bool],
) -> Result<FuncId, CodegenError> {
    let mut name = format!("cf_ew_c{c}");
    for s in steps {
        name.push('_');
        name.push_str(&match s {
            EwStep::Scale(f) => format!("s{:08x}", f.to_bits()),
            EwStep::Act(a) => format!("{a:?}").to_lowercase(),
            EwStep::Add(i) => format!("a{i}{}", if scalar[i - 1] { "s" } else { "" }),
            EwStep::Mul(i) => format!("m{i}{}", if scalar[i - 1] { "s" } else { "" }),
        });
    }
    let steps = steps.to_vec();
    let scalar = scalar.to_vec();
    l.kernel(
        &name,
        3 + 2 * scalar.len(),
        false,
        Imports::default(),
        |k, p, _| {
            let (x, out, rows) = (p[0], p[1], p[2]);
            k.for_n(rows, |k, r| {
                let off = k.muli(r, 4 * c as i64);
                let xr = k.add(x, off);
                let or = k.add(out, off);
                // Operand rows for this row of x (a scalar operand: its one element).
                let rowp: Vec<Value> = (0..scalar.len())
                    .map(|i| {
                        let (b, rows_b) = (p[3 + 2 * i], p[4 + 2 * i]);
                        if scalar[i] {
                            b
                        } else {
                            let rb = k.b.ins().urem(r, rows_b);
                            let boff = k.muli(rb, 4 * c as i64);
                            k.add(b, boff)
                        }
                    })
                    .collect();
                row_map(k, c, |k, j, vector| {
                    let mut v = load(k, xr, j, vector);
                    for s in &steps {
                        let operand = |k: &mut Kb, i: usize| {
                            let i = i - 1;
                            if scalar[i] {
                                let s = k.ldf(rowp[i], 0);
                                k.b.ins().splat(F32X4, s)
                            } else {
                                load(k, rowp[i], j, vector)
                            }
                        };
                        v = match *s {
                            EwStep::Scale(f) => {
                                let f = k.splat(f);
                                k.b.ins().fmul(v, f)
                            }
                            EwStep::Act(a) => math::activation(k, a, v),
                            EwStep::Add(i) => {
                                let b = operand(k, i);
                                k.b.ins().fadd(v, b)
                            }
                            EwStep::Mul(i) => {
                                let b = operand(k, i);
                                k.b.ins().fmul(v, b)
                            }
                        };
                    }
                    store(k, v, or, j, vector);
                });
            });
        },
    )
}

/// Calls `body(k, j, vector)` over a row of `c` f32s, `j` the element index: four lanes at a
/// time, then each tail element (the body splats it; [`store`] keeps lane 0).
fn row_map(k: &mut Kb, c: usize, mut body: impl FnMut(&mut Kb, Value, bool)) {
    let c4 = k.i((c & !3) as i64);
    let z = k.i(0);
    k.for_range(z, c4, 4, |k, j| body(k, j, true));
    let cv = k.i(c as i64);
    k.for_range(c4, cv, 1, |k, j| body(k, j, false));
}

/// Loads element `j` of the row at `p`: four lanes, or one splat.
fn load(k: &mut Kb, p: Value, j: Value, vector: bool) -> Value {
    let a = k.at(p, j, 4);
    if vector {
        k.ldv(a, 0)
    } else {
        let s = k.ldf(a, 0);
        k.b.ins().splat(F32X4, s)
    }
}

fn store(k: &mut Kb, v: Value, p: Value, j: Value, vector: bool) {
    let a = k.at(p, j, 4);
    if vector {
        k.st(v, a, 0);
    } else {
        let s = k.b.ins().extractlane(v, 0);
        k.st(s, a, 0);
    }
}

/// The call computing an elementwise node; a lone activation runs on the thread pool
/// (`parallel::split`) when there are enough elements.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    Ok(match &at.node().op {
        Op::GatedAct(a) => Call::new(
            gated(l, *a, at.channels())?,
            vec![at.v(0), at.out(), Arg::Rows(at.n)],
        ),
        Op::Elementwise(steps) => {
            // Each extra operand: a scalar, or rows of the last axis repeated over x's.
            let scalar: Vec<bool> = (1..at.ops.len()).map(|i| at.shape(i).is_empty()).collect();
            let mut args = vec![at.v(0), at.out(), Arg::Rows(at.n)];
            for i in 1..at.ops.len() {
                args.push(at.v(i));
                args.push(Arg::Rows(at.ops[i]));
            }
            Call::new(chain(l, steps, at.channels(), &scalar)?, args)
        }
        op @ (Op::Add | Op::Mul) => Call::new(
            binary(l, matches!(op, Op::Add))?,
            vec![
                at.v(0),
                at.v(1),
                at.out(),
                Arg::Numel(at.ops[0]),
                Arg::Numel(at.ops[1]),
            ],
        ),
        Op::Scale { factor } => Call::new(
            scale(l, *factor)?,
            vec![at.v(0), at.out(), Arg::Numel(at.n)],
        ),
        Op::Act(a) => Call::new(
            activation_parallel(l, *a)?,
            vec![at.v(0), at.out(), Arg::Numel(at.n), Arg::ParallelFor],
        ),
        other => unreachable!("not elementwise: {other}"),
    })
}
