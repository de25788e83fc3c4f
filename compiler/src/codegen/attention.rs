//! Scaled dot-product attention (padding mask, causal mask, additive bias) and T5's relative
//! position bias.
//!
//! Attention is one kernel that never holds more than a tile of scores: for each query row it
//! walks the visible keys in tiles of [`KT`], with an online softmax (Milakov & Gimelshein;
//! FlashAttention): the running max `m` and sum `l` of exp(score - m) are rescaled by
//! exp(m_old - m_new) whenever a tile raises the max, and the output row accumulates
//! `Σ exp(score - m) · v` in place, divided by `l` at the end. Masked keys get score -inf,
//! whose exp is exactly 0, as in the interpreter. A query whose keys are all masked gets the
//! mean of V over the keys it may see (all of them, or up to itself under `causal`): Hugging
//! Face adds float32's minimum to masked scores, which then are all equal, so its softmax is
//! uniform there. That fallback runs only when no key was unmasked, so normal rows are not
//! touched by it.
//!
//! The work is split into tasks of [`QB`] query rows of one (batch row, head) and run on the
//! runtime's thread pool through `RuntimeFns::parallel_for`: the kernel stores its arguments
//! in a stack slot and hands the pool its per-task function and that slot. Each task writes
//! only its own output rows, in a fixed order, so results do not depend on the thread count.

use super::entry::{Arg, At, Call};
use super::ir::Kb;
use super::{math, CodegenError, Imports, Lowering};
use crate::graph::{Dim, Op};
use crate::interp::kernels::relative_bucket;
use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types::{F32, F32X4, I32, I64},
    InstBuilder, StackSlotData, StackSlotKind, Value,
};
use cranelift_module::{DataDescription, FuncId, Linkage, Module};

pub struct Attn {
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub masked: bool,
    pub biased: bool,
}

/// Keys per score tile: a 256-byte stack row, so long sequences never need an S-wide row.
pub const KT: i64 = 64;
/// Query rows per task: BERT-base at T = 128 gives 12 · 8 tasks, enough to balance two or
/// four threads; a decode step (T = 1) gives one task per head.
pub const QB: i64 = 16;
/// f32x4 output accumulators held in registers while a tile's value rows stream past.
const G: usize = 8;

/// q·k over `d` (a constant) f32s for four key rows at once, so each q vector is loaded
/// once per four FMAs; lanes summed in a fixed order, then the scalar tail.
fn dot4(k: &mut Kb, q: Value, keys: [Value; 4], d: usize) -> [Value; 4] {
    let mut acc = [(); 4].map(|_| k.splat(0.0));
    for j in (0..d & !3).step_by(4) {
        let o = 4 * j as i32;
        let x = k.ldv(q, o);
        for u in 0..4 {
            let y = k.ldv(keys[u], o);
            acc[u] = k.fma(x, y, acc[u]);
        }
    }
    let mut out = [(); 4].map(|_| None);
    for u in 0..4 {
        let mut s = k.hsum(acc[u]);
        for j in d & !3..d {
            let o = 4 * j as i32;
            let x = k.ldf(q, o);
            let y = k.ldf(keys[u], o);
            s = k.b.ins().fma(x, y, s);
        }
        out[u] = Some(s);
    }
    out.map(|s| s.expect("set above"))
}

/// q·k for one key row: two f32x4 accumulators then a scalar tail.
fn dot(k: &mut Kb, a: Value, b: Value, d: usize) -> Value {
    let mut acc = [k.splat(0.0), k.splat(0.0)];
    for (n, j) in (0..d & !3).step_by(4).enumerate() {
        let o = 4 * j as i32;
        let x = k.ldv(a, o);
        let y = k.ldv(b, o);
        acc[n % 2] = k.fma(x, y, acc[n % 2]);
    }
    let v = k.b.ins().fadd(acc[0], acc[1]);
    let mut s = k.hsum(v);
    for j in d & !3..d {
        let o = 4 * j as i32;
        let x = k.ldf(a, o);
        let y = k.ldf(b, o);
        s = k.b.ins().fma(x, y, s);
    }
    s
}

/// Scalar exp through the f32x4 polynomial (lane 0).
fn exp1(k: &mut Kb, x: Value) -> Value {
    let v = k.b.ins().splat(F32X4, x);
    let e = math::exp(k, v);
    k.b.ins().extractlane(e, 0)
}

/// Argument slots the kernel stores for its tasks (i64 each).
const ARGS: usize = 11;

/// `(q, k, v, mask, bias, out, parallel_for, b, t, s, kv_rows)`; q, out `[B, T, H*D]`, k, v
/// `[B, S, H*D]` whose batch rows start `kv_rows` rows apart (S, or a KV cache's capacity
/// when it is read where it lies), mask `[B, S]` i64 or 0, bias `[H, T, S]` or 0,
/// `parallel_for` the runtime's (`RuntimeFns::parallel_for`).
pub fn attention<M: Module>(l: &mut Lowering<'_, M>, a: &Attn) -> Result<FuncId, CodegenError> {
    let name = format!(
        "cf_attention_h{}_d{}_s{:08x}{}{}{}",
        a.heads,
        a.head_dim,
        a.scale.to_bits(),
        if a.causal { "_causal" } else { "" },
        if a.masked { "_masked" } else { "" },
        if a.biased { "_biased" } else { "" }
    );
    let task = attention_task(l, a, &format!("{name}_task"))?;
    let pfor_sig = l.signature(3, false);
    let h = a.heads as i64;
    let imports = Imports {
        funcs: vec![task],
        data: vec![],
    };
    l.kernel(&name, ARGS, false, imports, move |k, p, refs| {
        let (b, t) = (p[7], p[8]);
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * ARGS as u32,
            3,
        ));
        let ctx = k.b.ins().stack_addr(I64, slot, 0);
        // q, k, v, mask, bias, out, _, b, t, s, kv_rows: the task reads slot i at 8·i; slot
        // 6 holds the query blocks per (batch row, head).
        let blocks = k.addi(t, QB - 1);
        let blocks = k.b.ins().udiv_imm_u(blocks, QB);
        for (i, &v) in p.iter().enumerate() {
            let v = if i == 6 { blocks } else { v };
            k.st(v, ctx, 8 * i as i32);
        }
        let n = k.mul(b, blocks);
        let n = k.muli(n, h);
        let f = k.b.ins().func_addr(I64, refs.funcs[0]);
        let sig = k.b.import_signature(pfor_sig);
        k.b.ins().call_indirect(sig, p[6], &[f, ctx, n]);
    })
}

/// `(ctx, i)`: task i of [`attention`], query rows `QB·blk..` of head `hi`, batch row `bi`
/// with `i = (bi·H + hi)·blocks + blk`.
fn attention_task<M: Module>(
    l: &mut Lowering<'_, M>,
    a: &Attn,
    name: &str,
) -> Result<FuncId, CodegenError> {
    let (h, d) = (a.heads as i64, a.head_dim);
    let c = h * d as i64;
    let (scale, causal, masked, biased) = (a.scale, a.causal, a.masked, a.biased);
    l.kernel(name, 2, false, Imports::default(), |k, p, _| {
        let (ctx, i) = (p[0], p[1]);
        let arg: Vec<Value> = (0..ARGS).map(|j| k.ld(I64, ctx, 8 * j as i32)).collect();
        let (q, kk, v, mask, bias, out) = (arg[0], arg[1], arg[2], arg[3], arg[4], arg[5]);
        let (blocks, t, s, kv_rows) = (arg[6], arg[8], arg[9], arg[10]);
        let blk = k.b.ins().urem(i, blocks);
        let bh = k.b.ins().udiv(i, blocks);
        let hi = k.b.ins().urem_imm_u(bh, h);
        let bi = k.b.ins().udiv_imm_u(bh, h);
        let t0 = k.muli(blk, QB);
        let t1 = k.addi(t0, QB);
        let t1 = k.b.ins().smin(t1, t);
        let tile = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            4 * KT as u32,
            4,
        ));
        let sc = k.b.ins().stack_addr(I64, tile, 0);
        let ho = k.muli(hi, 4 * d as i64);
        // First mask entry and first key / value row of batch row bi.
        let krow0 = k.mul(bi, s);
        let kvrow0 = k.mul(bi, kv_rows);
        // Right padding costs nothing: keys after this row's last unmasked one are never
        // scored (their weight is exactly 0 anyway). A row with no key left takes the
        // all-masked fallback below.
        let kept = if masked {
            let e = k.b.declare_var(I64);
            k.b.def_var(e, s);
            let (head, check, dec, exit) = (
                k.b.create_block(),
                k.b.create_block(),
                k.b.create_block(),
                k.b.create_block(),
            );
            k.b.ins().jump(head, &[]);
            k.b.switch_to_block(head);
            let cur = k.b.use_var(e);
            let any = k.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, cur, 0);
            k.b.ins().brif(any, check, &[], exit, &[]);
            k.b.switch_to_block(check);
            let last = k.add(krow0, cur);
            let last = k.addi(last, -1);
            let ma = k.at(mask, last, 8);
            let mv = k.ld(I64, ma, 0);
            let off = k.b.ins().icmp_imm_s(IntCC::Equal, mv, 0);
            k.b.ins().brif(off, dec, &[], exit, &[]);
            k.b.switch_to_block(dec);
            let fewer = k.addi(cur, -1);
            k.b.def_var(e, fewer);
            k.b.ins().jump(head, &[]);
            k.b.switch_to_block(exit);
            k.b.use_var(e)
        } else {
            s
        };
        // Address of head hi's slice of row r of a [B·S, C] tensor.
        let row_at = |k: &mut Kb, base: Value, r: Value| -> Value {
            let o = k.muli(r, 4 * c);
            let o = k.add(o, ho);
            k.add(base, o)
        };
        k.for_range(t0, t1, 1, |k, ti| {
            let row = k.mul(bi, t);
            let row = k.add(row, ti);
            let qrow = row_at(k, q, row);
            let orow = row_at(k, out, row);
            // Keys 0..reach are the query's, mask aside: with `causal`, query ti sits at
            // absolute S - T + ti. Of those, keys 0..visible can be unmasked.
            let reach = if causal {
                let st = k.b.ins().isub(s, t);
                let vis = k.add(st, ti);
                k.addi(vis, 1)
            } else {
                s
            };
            let visible = if causal {
                k.b.ins().smin(reach, kept)
            } else {
                kept
            };
            let dv = k.i(d as i64);
            k.fill_f32(orow, dv, 0.0);
            let neg = k.f(f32::NEG_INFINITY);
            let zero = k.f(0.0);
            let m = k.b.declare_var(F32);
            k.b.def_var(m, neg);
            let lsum = k.b.declare_var(F32);
            k.b.def_var(lsum, zero);
            let z = k.i(0);
            k.for_range(z, visible, KT, |k, j0| {
                let left = k.b.ins().isub(visible, j0);
                let kt = k.i(KT);
                let n = k.b.ins().smin(left, kt);
                let mt = k.b.declare_var(F32);
                k.b.def_var(mt, neg);
                // The score of key j0 + jj from its dot product: scaled, biased, masked.
                let finish = |k: &mut Kb, x: Value, jj: Value| {
                    let j = k.add(j0, jj);
                    let scv = k.f(scale);
                    let mut x = k.b.ins().fmul(x, scv);
                    if biased {
                        // bias[(hi * T + ti) * S + j]
                        let o = k.mul(hi, t);
                        let o = k.add(o, ti);
                        let o = k.mul(o, s);
                        let o = k.add(o, j);
                        let ba = k.at(bias, o, 4);
                        let bv = k.ldf(ba, 0);
                        x = k.b.ins().fadd(x, bv);
                    }
                    if masked {
                        let mi = k.add(krow0, j);
                        let ma = k.at(mask, mi, 8);
                        let mv = k.ld(I64, ma, 0);
                        let off = k.b.ins().icmp_imm_s(IntCC::Equal, mv, 0);
                        let neg = k.f(f32::NEG_INFINITY);
                        x = k.b.ins().select(off, neg, x);
                    }
                    let slot = k.at(sc, jj, 4);
                    k.st(x, slot, 0);
                    let cur = k.b.use_var(mt);
                    let nm = k.b.ins().fmax(cur, x);
                    k.b.def_var(mt, nm);
                };
                let n4 = k.b.ins().band_imm_s(n, !3);
                let z = k.i(0);
                k.for_range(z, n4, 4, |k, jj| {
                    let keys = [0, 1, 2, 3].map(|u| {
                        let r = k.add(kvrow0, j0);
                        let r = k.add(r, jj);
                        let r = k.addi(r, u);
                        row_at(k, kk, r)
                    });
                    let x = dot4(k, qrow, keys, d);
                    for (u, &x) in x.iter().enumerate() {
                        let ju = k.addi(jj, u as i64);
                        finish(k, x, ju);
                    }
                });
                k.for_range(n4, n, 1, |k, jj| {
                    let r = k.add(kvrow0, j0);
                    let r = k.add(r, jj);
                    let krow = row_at(k, kk, r);
                    let x = dot(k, qrow, krow, d);
                    finish(k, x, jj);
                });
                let tmax = k.b.use_var(mt);
                let neg = k.f(f32::NEG_INFINITY);
                let any = k.b.ins().fcmp(FloatCC::NotEqual, tmax, neg);
                k.when(any, |k| {
                    let old = k.b.use_var(m);
                    let new = k.b.ins().fmax(old, tmax);
                    k.b.def_var(m, new);
                    // A higher max rescales what was accumulated (from m = -inf: by 0, of 0).
                    let grew = k.b.ins().fcmp(FloatCC::GreaterThan, new, old);
                    k.when(grew, |k| {
                        let dm = k.b.ins().fsub(old, new);
                        let corr = exp1(k, dm);
                        let cv = k.b.ins().splat(F32X4, corr);
                        k.map_f32(orow, orow, dv, |k, x| k.b.ins().fmul(x, cv));
                        let l0 = k.b.use_var(lsum);
                        let l1 = k.b.ins().fmul(l0, corr);
                        k.b.def_var(lsum, l1);
                    });
                    // p = exp(score - m) in place, summed.
                    let mv = k.b.ins().splat(F32X4, new);
                    let zv = k.splat(0.0);
                    let acc = k.b.declare_var(F32X4);
                    k.b.def_var(acc, zv);
                    let z = k.i(0);
                    k.for_range(z, n4, 4, |k, jj| {
                        let pa = k.at(sc, jj, 4);
                        let x = k.ldv(pa, 0);
                        let x = k.b.ins().fsub(x, mv);
                        let e = math::exp(k, x);
                        k.st(e, pa, 0);
                        let cur = k.b.use_var(acc);
                        let nv = k.b.ins().fadd(cur, e);
                        k.b.def_var(acc, nv);
                    });
                    let tot = k.b.use_var(acc);
                    let part = k.hsum(tot);
                    let l0 = k.b.use_var(lsum);
                    let l1 = k.b.ins().fadd(l0, part);
                    k.b.def_var(lsum, l1);
                    k.for_range(n4, n, 1, |k, jj| {
                        let pa = k.at(sc, jj, 4);
                        let x = k.ldf(pa, 0);
                        let x = k.b.ins().fsub(x, new);
                        let e = exp1(k, x);
                        k.st(e, pa, 0);
                        let l0 = k.b.use_var(lsum);
                        let l1 = k.b.ins().fadd(l0, e);
                        k.b.def_var(lsum, l1);
                    });
                    // out += p_j · v_j: G output vectors stay in registers while the tile's
                    // value rows stream past; keys with p_j = 0 (masked) are skipped.
                    let chunks = d / 4;
                    for g0 in (0..chunks).step_by(G) {
                        let g = G.min(chunks - g0);
                        let accs: Vec<_> = (0..g)
                            .map(|u| {
                                let var = k.b.declare_var(F32X4);
                                let x = k.ldv(orow, 16 * (g0 + u) as i32);
                                k.b.def_var(var, x);
                                var
                            })
                            .collect();
                        let z = k.i(0);
                        k.for_range(z, n, 1, |k, jj| {
                            let pa = k.at(sc, jj, 4);
                            let w = k.ldf(pa, 0);
                            let zf = k.f(0.0);
                            let nz = k.b.ins().fcmp(FloatCC::NotEqual, w, zf);
                            k.when(nz, |k| {
                                let wv = k.b.ins().splat(F32X4, w);
                                let r = k.add(kvrow0, j0);
                                let r = k.add(r, jj);
                                let vrow = row_at(k, v, r);
                                for (u, &var) in accs.iter().enumerate() {
                                    let x = k.ldv(vrow, 16 * (g0 + u) as i32);
                                    let cur = k.b.use_var(var);
                                    let y = k.fma(wv, x, cur);
                                    k.b.def_var(var, y);
                                }
                            });
                        });
                        for (u, &var) in accs.iter().enumerate() {
                            let x = k.b.use_var(var);
                            k.st(x, orow, 16 * (g0 + u) as i32);
                        }
                    }
                    if d % 4 != 0 {
                        let z = k.i(0);
                        k.for_range(z, n, 1, |k, jj| {
                            let pa = k.at(sc, jj, 4);
                            let w = k.ldf(pa, 0);
                            let r = k.add(kvrow0, j0);
                            let r = k.add(r, jj);
                            let vrow = row_at(k, v, r);
                            for e in d & !3..d {
                                let o = 4 * e as i32;
                                let acc = k.ldf(orow, o);
                                let x = k.ldf(vrow, o);
                                let y = k.b.ins().fma(w, x, acc);
                                k.st(y, orow, o);
                            }
                        });
                    }
                });
            });
            // out /= l; l >= 1 once any key was unmasked (the max contributes exp(0)), and
            // l = 0 only when none was, with the row still zero.
            let lf = k.b.use_var(lsum);
            let zf = k.f(0.0);
            let pos = k.b.ins().fcmp(FloatCC::GreaterThan, lf, zf);
            k.when(pos, |k| {
                let one = k.f(1.0);
                let inv = k.b.ins().fdiv(one, lf);
                let iv = k.b.ins().splat(F32X4, inv);
                k.map_f32(orow, orow, dv, |k, x| k.b.ins().fmul(x, iv));
            });
            if masked {
                // Every key masked: the uniform softmax Hugging Face's additive mask gives,
                // out = (Σ_j v_j) · (1 / reach), summed in key order as the interpreter does.
                let none = k.b.ins().fcmp(FloatCC::Equal, lf, zf);
                k.when(none, |k| {
                    let z = k.i(0);
                    k.for_range(z, reach, 1, |k, j| {
                        let r = k.add(kvrow0, j);
                        let vrow = row_at(k, v, r);
                        for e in (0..d & !3).step_by(4) {
                            let o = 4 * e as i32;
                            let acc = k.ldv(orow, o);
                            let x = k.ldv(vrow, o);
                            let y = k.b.ins().fadd(acc, x);
                            k.st(y, orow, o);
                        }
                        for e in d & !3..d {
                            let o = 4 * e as i32;
                            let acc = k.ldf(orow, o);
                            let x = k.ldf(vrow, o);
                            let y = k.b.ins().fadd(acc, x);
                            k.st(y, orow, o);
                        }
                    });
                    let n = k.b.ins().fcvt_from_sint(F32, reach);
                    let one = k.f(1.0);
                    let inv = k.b.ins().fdiv(one, n);
                    let iv = k.b.ins().splat(F32X4, inv);
                    k.map_f32(orow, orow, dv, |k, x| k.b.ins().fmul(x, iv));
                });
            }
        });
    })
}

/// `(table, out, t, s, past)`: out `[H, T, S]` = table[bucket(j - (past + i)), h]. Buckets
/// are a data table over relative positions clamped to ±2·max_distance, computed at compile
/// time with the interpreter's own bucket function (beyond ±max_distance the bucket no
/// longer changes), so both agree exactly.
pub fn rel_pos_bias<M: Module>(
    l: &mut Lowering<'_, M>,
    heads: usize,
    buckets: usize,
    max_distance: usize,
    bidirectional: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!(
        "cf_rel_pos_bias_h{heads}_b{buckets}_m{max_distance}{}",
        if bidirectional { "_bi" } else { "" }
    );
    let range = 2 * max_distance as i64;
    let data_name = format!("{name}_buckets");
    let data = match l.module.get_name(&data_name) {
        Some(cranelift_module::FuncOrDataId::Data(d)) => d,
        _ => {
            let id = l
                .module
                .declare_data(&data_name, Linkage::Local, false, false)?;
            let bytes: Vec<u8> = (-range..=range)
                .flat_map(|r| {
                    (relative_bucket(r, bidirectional, buckets, max_distance) as i32).to_le_bytes()
                })
                .collect();
            let mut desc = DataDescription::new();
            desc.define(bytes.into_boxed_slice());
            desc.set_align(4);
            l.module.define_data(id, &desc)?;
            id
        }
    };
    let imports = Imports {
        funcs: vec![],
        data: vec![data],
    };
    l.kernel(&name, 5, false, imports, |k, p, refs| {
        let (table, out, t, s, past) = (p[0], p[1], p[2], p[3], p[4]);
        let ptr = k.b.ins().symbol_value(I64, refs.data[0]);
        let lo = k.i(-range);
        let hi = k.i(range);
        k.for_n(t, |k, i| {
            k.for_n(s, |k, j| {
                let qpos = k.add(past, i);
                let rel = k.b.ins().isub(j, qpos);
                let rel = k.b.ins().smax(rel, lo);
                let rel = k.b.ins().smin(rel, hi);
                let idx = k.addi(rel, range);
                let ba = k.at(ptr, idx, 4);
                let bk = k.ld(I32, ba, 0);
                let bk = k.b.ins().sextend(I64, bk);
                let row = k.at(table, bk, 4 * heads as i64);
                for h in 0..heads {
                    let v = k.ldf(row, 4 * h as i32);
                    // out[(h * T + i) * S + j]
                    let ht = k.muli(t, h as i64);
                    let o = k.add(ht, i);
                    let o = k.mul(o, s);
                    let o = k.add(o, j);
                    let a = k.at(out, o, 4);
                    k.st(v, a, 0);
                }
            });
        });
    })
}

/// The call computing an `Attention` or `RelPosBias` node.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    match at.node().op {
        Op::Attention {
            heads,
            head_dim,
            scale,
            causal,
            masked,
            biased,
        } => {
            let a = Attn {
                heads,
                head_dim,
                scale,
                causal,
                masked,
                biased,
            };
            let q = at.shape(0);
            let s = at.shape(1)[1];
            let mask = if masked { at.v(3) } else { Arg::Null };
            // Keys and values read where a KV cache holds them (`memory::in_place_appends`
            // admits both or neither) lie the cache's capacity apart per batch row.
            let kv_rows = if at.appends_in_place(at.ops[1]) {
                Arg::KvRows(s)
            } else {
                Arg::Dim(s)
            };
            let bias = if biased {
                at.v(3 + masked as usize)
            } else {
                Arg::Null
            };
            Ok(Call::new(
                attention(l, &a)?,
                vec![
                    at.v(0),
                    at.v(1),
                    at.v(2),
                    mask,
                    bias,
                    at.out(),
                    Arg::ParallelFor,
                    Arg::Dim(q[0]),
                    Arg::Dim(q[1]),
                    Arg::Dim(s),
                    kv_rows,
                ],
            ))
        }
        Op::RelPosBias {
            buckets,
            max_distance,
            bidirectional,
            keys,
        } => Ok(Call::new(
            rel_pos_bias(l, at.channels_of(0), buckets, max_distance, bidirectional)?,
            vec![
                at.v(0),
                at.out(),
                Arg::Dim(Dim::Seq),
                Arg::Dim(keys),
                Arg::Dim(Dim::Past),
            ],
        )),
        ref other => unreachable!("not attention: {other}"),
    }
}
