//! Data movement: embedding gathers, positions, column slices, the KV-cache append, first and
//! last token, and masked mean / max pooling.

use super::entry::{Arg, At, Call};
use super::ir::Kb;
use super::{CodegenError, Imports, Lowering};
use crate::graph::{Dim, Op, WeightLayout};
use cranelift_codegen::ir::{
    condcodes::IntCC,
    types::{F32X4, I64},
    InstBuilder, Value,
};
use cranelift_module::{FuncId, Module};
use cranformer_runtime::gemm::WeightFormat;
use cranformer_runtime::native::{WeightPrep, PANEL};
use petgraph::graph::NodeIndex;
use std::collections::HashMap;

/// Copies `c` (a constant) f32s.
fn copy_row(k: &mut Kb, src: Value, dst: Value, c: usize) {
    let n = k.i(c as i64);
    k.copy_f32(src, dst, n);
}

/// `(table, ids, out, n_ids) -> status`: rows of a `[rows, c]` table; 1 when an id is out of
/// range (the caller reports it), else 0.
pub fn gather<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    rows: usize,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_gather_c{c}_r{rows}");
    l.kernel(&name, 4, true, Imports::default(), |k, p, _| {
        let (table, ids, out, n) = (p[0], p[1], p[2], p[3]);
        k.for_n(n, |k, i| {
            let ia = k.at(ids, i, 8);
            let id = k.ld(I64, ia, 0);
            // Unsigned: a negative id is out of range too.
            let bad =
                k.b.ins()
                    .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, id, rows as i64);
            k.when(bad, |k| {
                let one = k.i(1);
                k.b.ins().return_(&[one]);
                let dead = k.b.create_block();
                k.b.switch_to_block(dead);
            });
            let src = k.at(table, id, 4 * c as i64);
            let dst = k.at(out, i, 4 * c as i64);
            copy_row(k, src, dst, c);
        });
        let z = k.i(0);
        k.b.ins().return_(&[z]);
    })
}

/// `(panels, ids, out, n_ids) -> status`: [`gather`] from a `[rows, c]` table that is only
/// held packed, as the `[K = c, N = rows]` weight of a tied LM head (`WeightPrep::Panels`
/// with `in_out: false`), so the model keeps one copy of it. Row v is column v of the packed
/// matrix: panel v / PANEL, lane v % PANEL, one float every PANEL (a cache line apart: slower
/// than a row copy, but a step gathers one row per token).
pub fn gather_panels<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    rows: usize,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_gather_panels_c{c}_r{rows}");
    let panel_bytes = 4 * (c * PANEL) as i64;
    l.kernel(&name, 4, true, Imports::default(), |k, p, _| {
        let (table, ids, out, n) = (p[0], p[1], p[2], p[3]);
        k.for_n(n, |k, i| {
            let ia = k.at(ids, i, 8);
            let id = k.ld(I64, ia, 0);
            let bad =
                k.b.ins()
                    .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, id, rows as i64);
            k.when(bad, |k| {
                let one = k.i(1);
                k.b.ins().return_(&[one]);
                let dead = k.b.create_block();
                k.b.switch_to_block(dead);
            });
            let panel = k.b.ins().udiv_imm_u(id, PANEL as i64);
            let lane = k.b.ins().urem_imm_u(id, PANEL as i64);
            let src = k.at(table, panel, panel_bytes);
            let src = k.at(src, lane, 4);
            let dst = k.at(out, i, 4 * c as i64);
            // Four k's per step into one vector store.
            let z = k.i(0);
            let c4 = k.i((c & !3) as i64);
            k.for_range(z, c4, 4, |k, j| {
                let s = k.at(src, j, 4 * PANEL as i64);
                let mut v = k.splat(0.0);
                for u in 0..4 {
                    let x = k.ldf(s, 4 * (PANEL * u) as i32);
                    v = k.b.ins().insertlane(v, x, u as u8);
                }
                let d = k.at(dst, j, 4);
                k.st(v, d, 0);
            });
            for j in c & !3..c {
                let x = k.ldf(src, 4 * (PANEL * j) as i32);
                k.st(x, dst, 4 * j as i32);
            }
        });
        let z = k.i(0);
        k.b.ins().return_(&[z]);
    })
}

/// `(words, ids, out, n_ids, gather_columns) -> status`: [`gather_panels`] from a tied head
/// held only in a narrow format (`WeightPrep::Quantized`): the runtime's
/// `RuntimeFns::gather_columns` widens (bf16, f16) or dequantizes (int8, with the column's
/// scale) each row exactly as its matmul kernels read the head, so the model keeps one copy
/// of the matrix, a quarter of f32's bytes in int8.
pub fn gather_columns<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    rows: usize,
    format: WeightFormat,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_gather_columns_{}_c{c}_r{rows}", format.name());
    let sig = l.signature(7, true);
    l.kernel(&name, 5, true, Imports::default(), |k, p, _| {
        let (table, ids, out, n, f) = (p[0], p[1], p[2], p[3], p[4]);
        let (kv, nv, fv) = (k.i(c as i64), k.i(rows as i64), k.i(format.code() as i64));
        let sig = k.b.import_signature(sig);
        let call =
            k.b.ins()
                .call_indirect(sig, f, &[table, kv, nv, fv, ids, n, out]);
        let status = k.b.inst_results(call)[0];
        k.b.ins().return_(&[status]);
    })
}

/// `(out, past, seq)`: out[i] = past + i as i64.
pub fn positions<M: Module>(l: &mut Lowering<'_, M>) -> Result<FuncId, CodegenError> {
    l.kernel("cf_positions", 3, false, Imports::default(), |k, p, _| {
        let (out, past, seq) = (p[0], p[1], p[2]);
        k.for_n(seq, |k, i| {
            let v = k.add(past, i);
            let a = k.at(out, i, 8);
            k.st(v, a, 0);
        });
    })
}

/// `(x, out, rows)`: columns start..start+len of rows of `width`.
pub fn slice_last<M: Module>(
    l: &mut Lowering<'_, M>,
    width: usize,
    start: usize,
    len: usize,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_slice_w{width}_s{start}_l{len}");
    l.kernel(&name, 3, false, Imports::default(), |k, p, _| {
        let (x, out, rows) = (p[0], p[1], p[2]);
        k.for_n(rows, |k, r| {
            let src = k.at(x, r, 4 * width as i64);
            let src = k.addi(src, 4 * start as i64);
            let dst = k.at(out, r, 4 * len as i64);
            copy_row(k, src, dst, len);
        });
    })
}

/// `(past, new, out, b, p, t, past_rows, out_rows, lens)`: per batch row, the P cached rows
/// then the T new ones; batch row `bi` of `past` starts at row `bi·past_rows`, of `out` at
/// `bi·out_rows` (P and P+T for tensors of their own). Appending in place, `past` and `out`
/// are one KV cache with equal strides: the cached rows are already where they belong, so
/// only the T new rows are written, after row `bi`'s own `lens[bi]` rows when `lens` is not
/// null (a cache whose rows hold different lengths, `CtxDims::kv_lens`), else after P.
pub fn concat_seq<M: Module>(l: &mut Lowering<'_, M>, c: usize) -> Result<FuncId, CodegenError> {
    let name = format!("cf_concat_seq_c{c}");
    l.kernel(&name, 9, false, Imports::default(), |k, p, _| {
        let (past, new, out, b, pl, tl) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        let (past_rows, out_rows, lens) = (p[6], p[7], p[8]);
        let np = k.muli(pl, c as i64);
        let nt = k.muli(tl, c as i64);
        let sp_row = k.muli(past_rows, c as i64);
        let so_row = k.muli(out_rows, c as i64);
        k.for_n(b, |k, bi| {
            let o = k.mul(bi, sp_row);
            let sp = k.at(past, o, 4);
            let o = k.mul(bi, so_row);
            let d = k.at(out, o, 4);
            let moved = k.b.ins().icmp(IntCC::NotEqual, sp, d);
            k.when(moved, |k| k.copy_f32(sp, d, np));
            // The row's own length, or P.
            let given = k.b.ins().icmp_imm_s(IntCC::NotEqual, lens, 0);
            let load = k.b.create_block();
            let join = k.b.create_block();
            let at_row = k.b.append_block_param(join, I64);
            k.b.ins().brif(given, load, &[], join, &[pl.into()]);
            k.b.switch_to_block(load);
            let lp = k.at(lens, bi, 8);
            let own = k.ld(I64, lp, 0);
            k.b.ins().jump(join, &[own.into()]);
            k.b.switch_to_block(join);
            let o = k.mul(bi, nt);
            let sn = k.at(new, o, 4);
            let at_col = k.muli(at_row, c as i64);
            let d2 = k.at(d, at_col, 4);
            k.copy_f32(sn, d2, nt);
        });
    })
}

pub use crate::graph::in_place_appends;

/// Where attention reads a `SliceLast` in place: columns `start..` of `source`'s rows,
/// `width` floats apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceView {
    pub source: NodeIndex,
    pub start: usize,
    pub width: usize,
}

/// The `SliceLast`s no kernel copies: read only as the q, k or v of attentions, which then
/// read the sliced tensor where it lies (`AttnCall`'s row strides), as Q, K and V of a fused
/// `[B, T, 3C]` projection. A slice read by anything else (GPT-2's K and V also feed the KV
/// cache's `ConcatSeq`) or returned as an output keeps its copy. An attention's K and V
/// share one row stride, so they are read in place both from tensors of one width, or
/// neither. Sources are computed values or inputs (rows contiguous), never weights (held
/// packed) nor KV caches appended in place (batch rows a capacity apart).
pub fn slices_read_in_place(graph: &crate::graph::Graph) -> HashMap<NodeIndex, SliceView> {
    let g = &graph.g;
    let appends = in_place_appends(graph);
    let mut views: HashMap<NodeIndex, SliceView> = g
        .node_indices()
        .filter_map(|n| {
            let Op::SliceLast { start, .. } = g[n].op else {
                return None;
            };
            let source = graph.operands(n)[0];
            let Some(Dim::Const(width)) = g[source].ty.last() else {
                return None;
            };
            let attended = crate::graph::read_only_by_attention(graph, n, |slot| slot < 3);
            let plain_source = !matches!(g[source].op, Op::Weight { .. })
                && !appends.contains(&source)
                && !appends.iter().any(|&c| graph.operands(c)[0] == source);
            let returned = graph.outputs.iter().any(|(_, o)| *o == n);
            (attended && plain_source && !returned).then_some((
                n,
                SliceView {
                    source,
                    start,
                    width,
                },
            ))
        })
        .collect();
    loop {
        let mut drop = vec![];
        for u in g.node_indices() {
            if !matches!(g[u].op, Op::Attention { .. }) {
                continue;
            }
            let ops = graph.operands(u);
            let (k, v) = (views.get(&ops[1]), views.get(&ops[2]));
            let agree = match (k, v) {
                (Some(k), Some(v)) => k.width == v.width,
                (None, None) => true,
                _ => false,
            };
            if !agree {
                drop.extend([ops[1], ops[2]]);
            }
        }
        drop.retain(|n| views.contains_key(n));
        if drop.is_empty() {
            return views;
        }
        for n in drop {
            views.remove(&n);
        }
    }
}

/// `(x, out, b, t)`: position t-1 (`last`) or 0 of each batch row.
pub fn pick_token<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    last: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_{}_token_c{c}", if last { "last" } else { "first" });
    l.kernel(&name, 4, false, Imports::default(), |k, p, _| {
        let (x, out, b, t) = (p[0], p[1], p[2], p[3]);
        k.for_n(b, |k, bi| {
            let row = k.mul(bi, t);
            let row = if last { k.add(row, t) } else { row };
            let row = if last { k.addi(row, -1) } else { row };
            let src = k.at(x, row, 4 * c as i64);
            let dst = k.at(out, bi, 4 * c as i64);
            copy_row(k, src, dst, c);
        });
    })
}

/// `(x, mask, out, b, t)`: mean (or max) over the positions whose mask is non-zero, as
/// sentence-transformers: the count is clamped at 1e-9, padded positions count as -1e9 for max.
pub fn pool<M: Module>(
    l: &mut Lowering<'_, M>,
    c: usize,
    mean: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_{}_pool_c{c}", if mean { "mean" } else { "max" });
    l.kernel(&name, 5, false, Imports::default(), |k, p, _| {
        let (x, mask, out, b, t) = (p[0], p[1], p[2], p[3], p[4]);
        let cv = k.i(c as i64);
        k.for_n(b, |k, bi| {
            let o = k.at(out, bi, 4 * c as i64);
            k.fill_f32(o, cv, if mean { 0.0 } else { f32::NEG_INFINITY });
            let count = k.b.declare_var(cranelift_codegen::ir::types::F32);
            let z = k.f(0.0);
            k.b.def_var(count, z);
            k.for_n(t, |k, ti| {
                let row = k.mul(bi, t);
                let row = k.add(row, ti);
                let ma = k.at(mask, row, 8);
                let m = k.ld(I64, ma, 0);
                let keep = k.b.ins().icmp_imm_s(IntCC::NotEqual, m, 0);
                let xr = k.at(x, row, 4 * c as i64);
                if mean {
                    k.when(keep, |k| {
                        acc_rows(k, xr, o, c, |k, a, v| k.b.ins().fadd(a, v))
                    });
                } else {
                    let floor = k.splat(-1e9);
                    let keepv = k.b.ins().bmask(cranelift_codegen::ir::types::I32, keep);
                    let keepv = k.b.ins().splat(cranelift_codegen::ir::types::I32X4, keepv);
                    let keepv = k.bitcast_f(keepv);
                    acc_rows(k, xr, o, c, |k, a, v| {
                        let v = k.b.ins().bitselect(keepv, v, floor);
                        k.b.ins().fmax(a, v)
                    });
                }
                if mean {
                    k.when(keep, |k| {
                        let cur = k.b.use_var(count);
                        let one = k.f(1.0);
                        let nv = k.b.ins().fadd(cur, one);
                        k.b.def_var(count, nv);
                    });
                }
            });
            if mean {
                let cnt = k.b.use_var(count);
                let lo = k.f(1e-9);
                let cnt = k.b.ins().fmax(cnt, lo);
                let one = k.f(1.0);
                let inv = k.b.ins().fdiv(one, cnt);
                let iv = k.b.ins().splat(F32X4, inv);
                k.map_f32(o, o, cv, |k, v| k.b.ins().fmul(v, iv));
            }
        });
    })
}

/// acc[j] = f(acc[j], x[j]) for j < c, four lanes at a time then the tail on splats.
fn acc_rows(
    k: &mut Kb,
    x: Value,
    acc: Value,
    c: usize,
    f: impl Fn(&mut Kb, Value, Value) -> Value,
) {
    let z = k.i(0);
    let n4 = k.i((c & !3) as i64);
    k.for_range(z, n4, 4, |k, j| {
        let pa = k.at(acc, j, 4);
        let px = k.at(x, j, 4);
        let a = k.ldv(pa, 0);
        let v = k.ldv(px, 0);
        let r = f(k, a, v);
        k.st(r, pa, 0);
    });
    for j in c & !3..c {
        let o = 4 * j as i32;
        let a = k.ldf(acc, o);
        let v = k.ldf(x, o);
        let a = k.b.ins().splat(F32X4, a);
        let v = k.b.ins().splat(F32X4, v);
        let r = f(k, a, v);
        let r = k.b.ins().extractlane(r, 0);
        k.st(r, acc, o);
    }
}

/// The call computing a node that moves data: gathers, positions, slices, concatenation,
/// token picks and pooling.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    let node = at.node();
    Ok(match &node.op {
        Op::Gather => {
            let rows = match at.shape(0)[0] {
                Dim::Const(r) => r,
                _ => unreachable!("tables are weights"),
            };
            let c = at.channels_of(0);
            let table = at.ops[0];
            // A table that is also a tied head's `nn.Linear` weight is read from the head's
            // packed panels, so only that copy of it is prepared.
            let g = &at.graph.g;
            let tied = matches!(g[table].op, Op::Weight { .. })
                && g.neighbors_directed(table, petgraph::Direction::Outgoing)
                    .any(|u| {
                        matches!(
                            g[u].op,
                            Op::Linear {
                                layout: WeightLayout::OutIn
                            } | Op::FusedLinear {
                                layout: WeightLayout::OutIn,
                                ..
                            }
                        ) && at.graph.operands(u)[1] == table
                    });
            // The head's preparation, so both read the same slot (matmul::call).
            let format = l.options.weight_format;
            let mut args = vec![];
            let kernel = if !tied {
                args.push(at.v(0));
                gather(l, c, rows)?
            } else if format == WeightFormat::F32 {
                let prep = WeightPrep::Panels {
                    k: c,
                    n: rows,
                    in_out: false,
                };
                args.push(at.operand(0, prep));
                gather_panels(l, c, rows)?
            } else {
                let prep = WeightPrep::Quantized {
                    k: c,
                    n: rows,
                    in_out: false,
                    format,
                };
                args.push(at.operand(0, prep));
                gather_columns(l, c, rows, format)?
            };
            args.extend([at.v(1), at.out(), Arg::Numel(at.ops[1])]);
            if tied && format != WeightFormat::F32 {
                args.push(Arg::Rt(cranformer_runtime::abi::rt::GATHER_COLUMNS));
            }
            Call {
                kernel,
                args,
                fails: Some(format!(
                    "{}: an index is out of range (the table has {rows} rows)",
                    node.label
                )),
            }
        }
        Op::Positions => Call::new(
            positions(l)?,
            vec![at.out(), Arg::Dim(Dim::Past), Arg::Dim(Dim::Seq)],
        ),
        Op::SliceLast { start, len } => Call::new(
            slice_last(l, at.channels_of(0), *start, *len)?,
            vec![at.v(0), at.out(), Arg::Rows(at.n)],
        ),
        Op::ConcatSeq => {
            let (past_rows, out_rows, lens) = if at.appends_in_place(at.n) {
                (
                    Arg::KvRows(Dim::Past),
                    Arg::KvRows(Dim::Total),
                    Arg::Ctx(cranformer_runtime::abi::ctx::KV_LENS),
                )
            } else {
                (Arg::Dim(Dim::Past), Arg::Dim(Dim::Total), Arg::Null)
            };
            Call::new(
                concat_seq(l, at.channels())?,
                vec![
                    at.v(0),
                    at.v(1),
                    at.out(),
                    Arg::Dim(at.shape(0)[0]),
                    Arg::Dim(Dim::Past),
                    Arg::Dim(Dim::Seq),
                    past_rows,
                    out_rows,
                    lens,
                ],
            )
        }
        op @ (Op::LastToken | Op::FirstToken) => {
            let sh = at.shape(0);
            Call::new(
                pick_token(l, at.channels(), matches!(op, Op::LastToken))?,
                vec![at.v(0), at.out(), Arg::Dim(sh[0]), Arg::Dim(sh[1])],
            )
        }
        op @ (Op::MeanPool | Op::MaxPool) => {
            let sh = at.shape(0);
            Call::new(
                pool(l, at.channels(), matches!(op, Op::MeanPool))?,
                vec![at.v(0), at.v(1), at.out(), Arg::Dim(sh[0]), Arg::Dim(sh[1])],
            )
        }
        other => unreachable!("not a memory op: {other}"),
    })
}
