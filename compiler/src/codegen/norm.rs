//! Row normalisations: LayerNorm, T5's RMS norm (each also fused with the residual add before
//! it) and L2 normalisation.
//!
//! They are the runtime's kernel (`cranformer_runtime::norm`: AVX-512, AVX2 or portable,
//! threaded over rows; its doc states the numerics, which match the interpreter's f64
//! statistics to f32 rounding): the generated kernel fills a `NormCall` at the offsets
//! `cranformer_runtime::abi::norm_call` gives and calls it through `RuntimeFns::norm`.

use super::entry::{Arg, At, Call};
use super::{CodegenError, Imports, Lowering};
use crate::graph::Op;
use cranelift_codegen::ir::{
    types::{I32, I64},
    InstBuilder, StackSlotData, StackSlotKind,
};
use cranelift_module::{FuncId, Module};
use cranformer_runtime::abi::{self, norm_call};
use cranformer_runtime::gemm::ISA_AUTO;
use cranformer_runtime::norm::NormKind;

/// Kernel parameters, in order.
const ARGS: usize = 8;

/// `(x, add, gamma, beta, out, rows, rows_b, norm)` over rows of `c`: x, out `[rows, C]`,
/// add `[rows_b, C]` (row r of x takes row r mod rows_b) or 0, gamma, beta `[C]` or 0 where
/// the kind has none, `norm` the runtime's (`RuntimeFns::norm`). The kernel only fills a
/// `NormCall` on its stack: the runtime picks the ISA and threads on the machine that runs.
pub fn norm<M: Module>(
    l: &mut Lowering<'_, M>,
    kind: NormKind,
    added: bool,
    c: usize,
    eps: f32,
) -> Result<FuncId, CodegenError> {
    let name = format!("cf_{}_c{c}_e{:08x}", kind.op_name(added), eps.to_bits());
    let sig = l.signature(1, false);
    l.kernel(&name, ARGS, false, Imports::default(), move |k, p, _| {
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            norm_call::SIZE,
            norm_call::ALIGN.trailing_zeros() as u8,
        ));
        let call = k.b.ins().stack_addr(I64, slot, 0);
        let null = k.i(0);
        let cv = k.i(c as i64);
        for (f, v) in [
            (norm_call::X, p[0]),
            (norm_call::ADD, if added { p[1] } else { null }),
            (norm_call::GAMMA, p[2]),
            (norm_call::BETA, p[3]),
            (norm_call::OUT, p[4]),
            (norm_call::ROWS, p[5]),
            (norm_call::ROWS_B, if added { p[6] } else { null }),
            (norm_call::CHANNELS, cv),
        ] {
            k.st_field(v, call, f);
        }
        // The eps's bits; isa and threads 0: resolved by the runtime on the machine that
        // runs.
        for (f, v) in [
            (norm_call::EPS, eps.to_bits()),
            (norm_call::KIND, kind.code()),
            (norm_call::ISA, ISA_AUTO),
            (norm_call::THREADS, 0),
        ] {
            let v = k.b.ins().iconst(I32, v as i64);
            k.st_field(v, call, f);
        }
        let sig = k.b.import_signature(sig);
        k.b.ins().call_indirect(sig, p[7], &[call]);
    })
}

/// The call computing a normalisation node.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    let c = at.channels();
    // Operands: x, then the added tensor, then gamma, then beta, as far as the op has them.
    let (kind, added, eps) = match at.node().op {
        Op::AddLayerNorm { eps } => (NormKind::Layer, true, eps),
        Op::AddRmsNorm { eps } => (NormKind::Rms, true, eps),
        Op::LayerNorm { eps } => (NormKind::Layer, false, eps),
        Op::RmsNorm { eps } => (NormKind::Rms, false, eps),
        Op::L2Normalize => (NormKind::L2, false, 0.0),
        ref other => unreachable!("not a norm: {other}"),
    };
    let a = added as usize;
    let gamma = match kind {
        NormKind::L2 => Arg::Null,
        _ => at.v(1 + a),
    };
    let beta = match kind {
        NormKind::Layer => at.v(2 + a),
        _ => Arg::Null,
    };
    Ok(Call::new(
        norm(l, kind, added, c, eps)?,
        vec![
            at.v(0),
            if added { at.v(1) } else { Arg::Null },
            gamma,
            beta,
            at.out(),
            Arg::Rows(at.n),
            if added {
                Arg::Rows(at.ops[1])
            } else {
                Arg::Null
            },
            Arg::Rt(abi::rt::NORM),
        ],
    ))
}
