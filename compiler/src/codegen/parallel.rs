//! Runs a row-wise kernel on the runtime's thread pool (`RuntimeFns::parallel_for`).
//!
//! [`split`] wraps a kernel `inner(p_0, .., p_{n-1}, count)` whose pointer arguments advance
//! by a fixed number of bytes per unit of `count` (a row of a norm, an element of an
//! activation; 0 for an operand every unit shares, like a norm's gain) into
//! `(p_0, .., p_{n-1}, count, parallel_for)`. The wrapper cuts `count` into tasks of at least
//! `grain` units (a multiple of `align`; `cranformer_runtime::threads::split_tasks` states the
//! cut with `align` 1 for the host's predictions), stores its arguments in a stack slot and hands the
//! pool a generated per-task function that calls `inner` on its range. The cut depends on
//! `count` only, never on the thread count, and each unit is computed by the same code
//! wherever the cut falls, so results are identical for every thread count. Below two
//! grains the wrapper calls `inner` directly: waking a worker costs a few microseconds.

use super::{CodegenError, Imports, Lowering};
use cranelift_codegen::ir::{types::I64, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_module::{FuncId, Module};

/// At most this many tasks per call (the runtime's definition, which its predictions read).
const MAX_TASKS: i64 = cranformer_runtime::threads::MAX_SPLIT_TASKS as i64;

/// The parallel form of `inner` (named `name`): see the module comment.
pub fn split<M: Module>(
    l: &mut Lowering<'_, M>,
    name: &str,
    inner: FuncId,
    strides: &[i64],
    grain: i64,
    align: i64,
) -> Result<FuncId, CodegenError> {
    let n = strides.len();
    let strides = strides.to_vec();
    let task_name = format!("{name}_task");
    let task = l.kernel(
        &task_name,
        2,
        false,
        Imports {
            funcs: vec![inner],
            data: vec![],
        },
        |k, p, refs| {
            // ctx: p_0 .. p_{n-1}, count, units per task.
            let (ctx, i) = (p[0], p[1]);
            let count = k.ld(I64, ctx, 8 * n as i32);
            let per = k.ld(I64, ctx, 8 * n as i32 + 8);
            let start = k.mul(i, per);
            let left = k.b.ins().isub(count, start);
            let len = k.b.ins().smin(left, per);
            let mut args: Vec<Value> = strides
                .iter()
                .enumerate()
                .map(|(j, &s)| {
                    let base = k.ld(I64, ctx, 8 * j as i32);
                    if s == 0 {
                        base
                    } else {
                        k.at(base, start, s)
                    }
                })
                .collect();
            args.push(len);
            k.b.ins().call(refs.funcs[0], &args);
        },
    )?;
    let pfor_sig = l.signature(3, false);
    let imports = Imports {
        funcs: vec![inner, task],
        data: vec![],
    };
    l.kernel(name, n + 2, false, imports, move |k, p, refs| {
        let (count, pfor) = (p[n], p[n + 1]);
        let small = k.b.ins().icmp_imm_s(
            cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
            count,
            2 * grain,
        );
        let direct = k.b.create_block();
        let pool = k.b.create_block();
        let done = k.b.create_block();
        k.b.ins().brif(small, direct, &[], pool, &[]);
        k.b.switch_to_block(direct);
        k.b.ins().call(refs.funcs[0], &p[..n + 1]);
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(pool);
        // tasks = min(count / grain, MAX_TASKS); per = ceil(count / tasks) rounded up to
        // `align`; then tasks = ceil(count / per) so none is empty.
        let tasks = k.b.ins().udiv_imm_u(count, grain);
        let cap = k.i(MAX_TASKS);
        let tasks = k.b.ins().smin(tasks, cap);
        let per = k.add(count, tasks);
        let per = k.addi(per, -1);
        let per = k.b.ins().udiv(per, tasks);
        let per = k.addi(per, align - 1);
        let per = k.b.ins().band_imm_s(per, -align);
        let tasks = k.add(count, per);
        let tasks = k.addi(tasks, -1);
        let tasks = k.b.ins().udiv(tasks, per);
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * (n as u32 + 2),
            3,
        ));
        let ctx = k.b.ins().stack_addr(I64, slot, 0);
        for (j, &v) in p[..n + 1].iter().enumerate() {
            k.st(v, ctx, 8 * j as i32);
        }
        k.st(per, ctx, 8 * (n as i32 + 1));
        let f = k.b.ins().func_addr(I64, refs.funcs[1]);
        let sig = k.b.import_signature(pfor_sig);
        k.b.ins().call_indirect(sig, pfor, &[f, ctx, tasks]);
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(done);
    })
}
