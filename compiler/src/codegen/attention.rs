//! Scaled dot-product attention (padding mask, causal mask, additive bias) and T5's relative
//! position bias.
//!
//! Attention runs one query row at a time: scores against the visible keys into a scratch
//! row of S floats, softmax over them, then the weighted sum of value rows. Masked keys get
//! score -inf, whose exp is exactly 0, as in the interpreter; a query that sees no key gets
//! zeros.

use super::ir::Kb;
use super::{math, CodegenError, Imports, Lowering};
use crate::interp::kernels::relative_bucket;
use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types::{F32X4, I32, I64},
    InstBuilder, Value,
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

/// q·k over `d` (a constant) f32s, two f32x4 accumulators then a scalar tail.
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

/// `(q, k, v, mask, bias, out, scores, b, t, s)`; q, out `[B, T, H*D]`, k, v `[B, S, H*D]`,
/// mask `[B, S]` i64, bias `[H, T, S]`, scores a scratch row of S.
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
    let (h, d) = (a.heads as i64, a.head_dim);
    let c = h * d as i64;
    let (scale, causal, masked, biased) = (a.scale, a.causal, a.masked, a.biased);
    l.kernel(&name, 10, false, Imports::default(), |k, p, _| {
        let (q, kk, v, mask, bias, out, sc) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
        let (b, t, s) = (p[7], p[8], p[9]);
        let hv = k.i(h);
        k.for_n(b, |k, bi| {
            k.for_n(hv, |k, hi| {
                k.for_n(t, |k, ti| {
                    let row = k.mul(bi, t);
                    let row = k.add(row, ti);
                    let qo = k.muli(row, 4 * c);
                    let ho = k.muli(hi, 4 * d as i64);
                    let qo = k.add(qo, ho);
                    let qrow = k.add(q, qo);
                    let orow = k.add(out, qo);
                    // Keys 0..visible: with `causal`, query ti sits at absolute S - T + ti.
                    let visible = if causal {
                        let st = k.b.ins().isub(s, t);
                        let vis = k.add(st, ti);
                        let vis = k.addi(vis, 1);
                        k.b.ins().smin(vis, s)
                    } else {
                        s
                    };
                    let neg = k.f(f32::NEG_INFINITY);
                    let max = k.b.declare_var(cranelift_codegen::ir::types::F32);
                    k.b.def_var(max, neg);
                    let krow0 = k.mul(bi, s);
                    k.for_n(visible, |k, j| {
                        let slot = k.at(sc, j, 4);
                        let go = k.b.create_block();
                        let skip = k.b.create_block();
                        let next = k.b.create_block();
                        if masked {
                            let mi = k.add(krow0, j);
                            let ma = k.at(mask, mi, 8);
                            let m = k.ld(I64, ma, 0);
                            let z = k.b.ins().icmp_imm_s(IntCC::Equal, m, 0);
                            k.b.ins().brif(z, skip, &[], go, &[]);
                        } else {
                            k.b.ins().jump(go, &[]);
                        }
                        k.b.switch_to_block(skip);
                        k.st(neg, slot, 0);
                        k.b.ins().jump(next, &[]);
                        k.b.switch_to_block(go);
                        let kr = k.add(krow0, j);
                        let ko = k.muli(kr, 4 * c);
                        let ko = k.add(ko, ho);
                        let krow = k.add(kk, ko);
                        let x = dot(k, qrow, krow, d);
                        let scv = k.f(scale);
                        let mut x = k.b.ins().fmul(x, scv);
                        if biased {
                            // bias[(hi * T + ti) * S + j]
                            let bi2 = k.mul(hi, t);
                            let bi2 = k.add(bi2, ti);
                            let bi2 = k.mul(bi2, s);
                            let bi2 = k.add(bi2, j);
                            let ba = k.at(bias, bi2, 4);
                            let bv = k.ldf(ba, 0);
                            x = k.b.ins().fadd(x, bv);
                        }
                        k.st(x, slot, 0);
                        let cur = k.b.use_var(max);
                        let m2 = k.b.ins().fmax(cur, x);
                        k.b.def_var(max, m2);
                        k.b.ins().jump(next, &[]);
                        k.b.switch_to_block(next);
                    });
                    let dv = k.i(d as i64);
                    k.fill_f32(orow, dv, 0.0);
                    let mx = k.b.use_var(max);
                    let any = k.b.ins().fcmp(FloatCC::NotEqual, mx, neg);
                    k.when(any, |k| {
                        let mv = k.b.ins().splat(F32X4, mx);
                        // p = exp(score - max) in place, summed.
                        let z = k.splat(0.0);
                        let n4 = k.b.ins().band_imm_s(visible, !3);
                        let acc = k.b.declare_var(F32X4);
                        k.b.def_var(acc, z);
                        let zero = k.i(0);
                        k.for_range(zero, n4, 4, |k, j| {
                            let a = k.at(sc, j, 4);
                            let x = k.ldv(a, 0);
                            let x = k.b.ins().fsub(x, mv);
                            let e = math::exp(k, x);
                            k.st(e, a, 0);
                            let cur = k.b.use_var(acc);
                            let nv = k.b.ins().fadd(cur, e);
                            k.b.def_var(acc, nv);
                        });
                        let tot = k.b.use_var(acc);
                        let ssum = k.b.declare_var(cranelift_codegen::ir::types::F32);
                        let hs = k.hsum(tot);
                        k.b.def_var(ssum, hs);
                        k.for_range(n4, visible, 1, |k, j| {
                            let a = k.at(sc, j, 4);
                            let x = k.ldf(a, 0);
                            let x = k.b.ins().splat(F32X4, x);
                            let x = k.b.ins().fsub(x, mv);
                            let e = math::exp(k, x);
                            let e = k.b.ins().extractlane(e, 0);
                            k.st(e, a, 0);
                            let cur = k.b.use_var(ssum);
                            let nv = k.b.ins().fadd(cur, e);
                            k.b.def_var(ssum, nv);
                        });
                        let sum = k.b.use_var(ssum);
                        let one = k.f(1.0);
                        let inv = k.b.ins().fdiv(one, sum);
                        // out += (p_j / sum) · v_j over the visible keys with p_j > 0.
                        k.for_n(visible, |k, j| {
                            let a = k.at(sc, j, 4);
                            let pj = k.ldf(a, 0);
                            let w = k.b.ins().fmul(pj, inv);
                            let zf = k.f(0.0);
                            let nz = k.b.ins().fcmp(FloatCC::NotEqual, w, zf);
                            k.when(nz, |k| {
                                let wv = k.b.ins().splat(F32X4, w);
                                let vr = k.add(krow0, j);
                                let vo = k.muli(vr, 4 * c);
                                let vo = k.add(vo, ho);
                                let vrow = k.add(v, vo);
                                for jj in (0..d & !3).step_by(4) {
                                    let o = 4 * jj as i32;
                                    let acc = k.ldv(orow, o);
                                    let x = k.ldv(vrow, o);
                                    let y = k.fma(wv, x, acc);
                                    k.st(y, orow, o);
                                }
                                for jj in d & !3..d {
                                    let o = 4 * jj as i32;
                                    let acc = k.ldf(orow, o);
                                    let x = k.ldf(vrow, o);
                                    let y = k.b.ins().fma(w, x, acc);
                                    k.st(y, orow, o);
                                }
                            });
                        });
                    });
                });
            });
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
