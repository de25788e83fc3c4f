//! Scaled dot-product attention (padding mask, causal mask, additive bias) and T5's relative
//! position bias.
//!
//! Attention is the runtime's kernel (`cranformer_runtime::attention`: AVX-512, AVX2 or
//! portable, threaded over batch rows, heads and query blocks, online softmax; its doc
//! states the semantics, which are the interpreter's): the generated kernel fills an
//! `AttnCall` at the offsets `cranformer_runtime::abi::attn_call` gives and calls it through
//! `RuntimeFns::attention`. Cranelift itself emits 128-bit vectors only.

use super::entry::{Arg, At, Call};
use super::{CodegenError, Imports, Lowering};
use crate::graph::{Dim, Op};
use crate::interp::kernels::relative_bucket;
use cranelift_codegen::ir::{
    types::{I32, I64},
    InstBuilder, StackSlotData, StackSlotKind,
};
use cranelift_module::{DataDescription, FuncId, Linkage, Module};
use cranformer_runtime::abi::{self, attn_call};
use cranformer_runtime::gemm::ISA_AUTO;

pub struct Attn {
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub masked: bool,
    pub biased: bool,
}

/// Kernel parameters, in order.
const ARGS: usize = 13;

/// `(q, k, v, mask, bias, out, attention, b, t, s, kv_rows, q_ld, kv_ld)`; q, out
/// `[B, T, H*D]`, k, v `[B, S, H*D]` whose batch rows start `kv_rows` rows apart (S, or a KV
/// cache's capacity when it is read where it lies), rows of q `q_ld` floats apart and of k
/// and v `kv_ld` apart (0: H*D; more when read inside a fused QKV projection's output),
/// mask `[B, S]` i64 or 0, bias `[H, T, S]` or 0,
/// `attention` the runtime's (`RuntimeFns::attention`). The kernel only fills an `AttnCall`
/// on its stack: the runtime picks the ISA and threads on the machine that runs.
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
    let sig = l.signature(1, false);
    let (heads, head_dim, scale, causal) = (a.heads, a.head_dim, a.scale, a.causal);
    let (masked, biased) = (a.masked, a.biased);
    l.kernel(&name, ARGS, false, Imports::default(), move |k, p, _| {
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            attn_call::SIZE,
            attn_call::ALIGN.trailing_zeros() as u8,
        ));
        let c = k.b.ins().stack_addr(I64, slot, 0);
        let null = k.i(0);
        let (hv, dv) = (k.i(heads as i64), k.i(head_dim as i64));
        for (f, v) in [
            (attn_call::Q, p[0]),
            (attn_call::K, p[1]),
            (attn_call::V, p[2]),
            (attn_call::MASK, if masked { p[3] } else { null }),
            (attn_call::BIAS, if biased { p[4] } else { null }),
            (attn_call::OUT, p[5]),
            (attn_call::BATCH, p[7]),
            (attn_call::SEQ, p[8]),
            (attn_call::KEYS, p[9]),
            (attn_call::KV_ROWS, p[10]),
            (attn_call::Q_LD, p[11]),
            (attn_call::KV_LD, p[12]),
            (attn_call::HEADS, hv),
            (attn_call::HEAD_DIM, dv),
        ] {
            k.st_field(v, c, f);
        }
        // The scale's bits; isa and threads 0: resolved by the runtime on the machine that
        // runs.
        for (f, v) in [
            (attn_call::SCALE, scale.to_bits()),
            (attn_call::CAUSAL, causal as u32),
            (attn_call::ISA, ISA_AUTO),
            (attn_call::THREADS, 0),
        ] {
            let v = k.b.ins().iconst(I32, v as i64);
            k.st_field(v, c, f);
        }
        let sig = k.b.import_signature(sig);
        k.b.ins().call_indirect(sig, p[6], &[c]);
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
            // Q, K or V sliced from a wider tensor (a fused projection) are read where they
            // lie: its pointer at the slice's first column, its width as the row stride (0:
            // rows of their own). `slices_read_in_place` admits K and V both or neither, from
            // tensors of one width.
            let input = |i: usize| match at.view(i) {
                Some(view) => (Arg::ValAt(view.source, view.start), view.width),
                None => (at.v(i), 0),
            };
            let ((q_arg, q_ld), (k_arg, kv_ld), (v_arg, _)) = (input(0), input(1), input(2));
            Ok(Call::new(
                attention(l, &a)?,
                vec![
                    q_arg,
                    k_arg,
                    v_arg,
                    mask,
                    bias,
                    at.out(),
                    Arg::Rt(abi::rt::ATTENTION),
                    Arg::Dim(q[0]),
                    Arg::Dim(q[1]),
                    Arg::Dim(s),
                    kv_rows,
                    Arg::Dim(Dim::Const(q_ld)),
                    Arg::Dim(Dim::Const(kv_ld)),
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
