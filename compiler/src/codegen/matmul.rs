//! Matmul with bias and epilogue, `out [M, N] = act(x [M, K] · W + bias) + residual`, for
//! both checkpoint layouts: the
//! host packs W once into panels of `PANEL` (32) columns (`WeightPrep::Panels`: for each k,
//! 32 consecutive columns) and pads the bias to whole panels, so one kernel serves both.
//!
//! Where the runtime offers its wide matmul (AVX-512 / AVX2 micro-kernels, threads: see
//! `cranformer_runtime::gemm`), the kernel fills a `GemmCall` on its stack (operands, the
//! epilogue; the runtime resolves ISA, blocking and threads on the machine that runs) and
//! calls it through `EntryCtx::rt`; the
//! runtime applies the epilogue per tile while it is hot. Cranelift itself
//! emits 128-bit vectors only, a quarter of an AVX-512 core's peak. Otherwise, the portable
//! path below runs on 8-column sub-panels of the same packing.
//!
//! With a narrow weight format (`LowerOptions::weight_format`: int8, bf16, f16) the kernel
//! is [`qlinear`]: the weight packed by the runtime (`WeightPrep::Quantized`) and the matmul,
//! epilogue included, done by the runtime's `qgemm`, whose kernels exist for every ISA.
//!
//! Micro-kernel `cf_mm_f32x4_{mr}x8_k{K}_n{N}`: an mr×8 tile of `out` in 2·mr f32x4
//! accumulators, K unrolled by 8, each FMA fed by a fresh `splat(load x)` (folded into
//! `vbroadcastss`) and two panel vectors; compiled at `opt_level` "none" (see
//! `Lowering::micro_isa`). The macro kernel walks panels (outer: a 32·K-byte panel stays in
//! L1) and blocks of 6 rows (inner), then the remaining rows with a smaller tile; the panels
//! are cut into tasks for the runtime's thread pool (`RuntimeFns::parallel_for`, see
//! [`narrow_panels`]), as is the activation after the product.

use super::entry::{Arg, At, Call};
use super::ir::Kb;
use super::{CodegenError, Imports, Lowering};
use crate::graph::{Activation, Op, WeightLayout};
use cranelift_codegen::ir::{
    condcodes::IntCC,
    types::{F32X4, I32, I64},
    InstBuilder, StackSlotData, StackSlotKind, Value,
};
use cranelift_module::{FuncId, Module};
use cranformer_runtime::abi::{gemm_call, qgemm_call};
use cranformer_runtime::gemm::quant::WordLayout;
use cranformer_runtime::gemm::{Act, WeightFormat, ISA_AUTO};
use cranformer_runtime::native::{WeightPrep, PANEL};

/// Rows per register tile: 6 rows × 2 vectors = 12 accumulators of x86-64's 16 xmm registers.
pub const MR: usize = 6;
/// Columns per register tile: two f32x4 vectors, an 8-column sub-panel of a packed panel.
const TILE_N: usize = 8;
/// Bytes from one k's row of a packed panel to the next.
const PANEL_ROW: i64 = 4 * PANEL as i64;
const UNROLL: usize = 8;

/// `(x, panel, out, bias, ncols)`: one tile. `x` points at the tile's first row (row stride
/// 4K bytes), `panel` at its sub-panel's first k row (rows `PANEL_ROW` bytes apart), `out` at
/// its first element (row stride 4N), `bias` at its 8 padded entries or is 0; `ncols`
/// (1..=8) columns are stored.
fn micro<M: Module>(
    l: &mut Lowering<'_, M>,
    mr: usize,
    kdim: usize,
    n: usize,
    bias: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!(
        "cf_mm_f32x4_{mr}x8_k{kdim}_n{n}{}",
        if bias { "_bias" } else { "" }
    );
    l.micro_kernel(&name, 5, |k, p, _| {
        let (x, panel, out, bptr, ncols) = (p[0], p[1], p[2], p[3], p[4]);
        let lda = 4 * kdim as i32;
        let ldc = 4 * n as i32;
        let accs: Vec<_> = (0..2 * mr).map(|_| k.b.declare_var(F32X4)).collect();
        for r in 0..mr {
            for h in 0..2 {
                let init = if bias {
                    k.ldv(bptr, 16 * h as i32)
                } else {
                    k.splat(0.0)
                };
                k.b.def_var(accs[2 * r + h], init);
            }
        }
        // Steps of UNROLL k's: x and the panel advance by 4·UNROLL and 32·UNROLL bytes.
        let step = |k: &mut Kb, px: Value, pb: Value, u: usize| {
            let b0 = k.ldv(pb, (PANEL_ROW * u as i64) as i32);
            let b1 = k.ldv(pb, (PANEL_ROW * u as i64 + 16) as i32);
            for r in 0..mr {
                let a = k.ldf(px, r as i32 * lda + 4 * u as i32);
                let a = k.b.ins().splat(F32X4, a);
                for (h, bv) in [b0, b1].into_iter().enumerate() {
                    let acc = k.b.use_var(accs[2 * r + h]);
                    let y = k.fma(a, bv, acc);
                    k.b.def_var(accs[2 * r + h], y);
                }
            }
        };
        let full = kdim / UNROLL;
        let px = k.b.declare_var(I64);
        let pb = k.b.declare_var(I64);
        k.b.def_var(px, x);
        k.b.def_var(pb, panel);
        if full > 0 {
            let z = k.i(0);
            let end = k.i(full as i64);
            k.for_range(z, end, 1, |k, _| {
                let (cx, cb) = (k.b.use_var(px), k.b.use_var(pb));
                for u in 0..UNROLL {
                    step(k, cx, cb, u);
                }
                let nx = k.addi(cx, 4 * UNROLL as i64);
                let nb = k.addi(cb, PANEL_ROW * UNROLL as i64);
                k.b.def_var(px, nx);
                k.b.def_var(pb, nb);
            });
        }
        let (cx, cb) = (k.b.use_var(px), k.b.use_var(pb));
        for u in 0..kdim % UNROLL {
            step(k, cx, cb, u);
        }
        // Store: whole rows of 8, or through a stack tile for a partial panel.
        let whole = k.b.ins().icmp_imm_s(IntCC::Equal, ncols, TILE_N as i64);
        let fast = k.b.create_block();
        let slow = k.b.create_block();
        let done = k.b.create_block();
        k.b.ins().brif(whole, fast, &[], slow, &[]);
        k.b.switch_to_block(fast);
        for r in 0..mr {
            for h in 0..2 {
                let v = k.b.use_var(accs[2 * r + h]);
                k.st(v, out, r as i32 * ldc + 16 * h as i32);
            }
        }
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(slow);
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (32 * mr) as u32,
            4,
        ));
        let tile = k.b.ins().stack_addr(I64, slot, 0);
        for r in 0..mr {
            for h in 0..2 {
                let v = k.b.use_var(accs[2 * r + h]);
                k.st(v, tile, (32 * r + 16 * h) as i32);
            }
        }
        for r in 0..mr {
            k.for_n(ncols, |k, j| {
                let s = k.at(tile, j, 4);
                let v = k.ldf(s, 32 * r as i32);
                let d = k.at(out, j, 4);
                k.st(v, d, r as i32 * ldc);
            });
        }
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(done);
    })
}

/// The portable path's product over whole panels, on the runtime's thread pool: the kernel
/// `(x, w, bias, out, m, first, count, parallel_for)` computes `out`'s columns of panels
/// `first..first + count` (of `ceil(N / 32)`) with the [`micro`] kernels of 1..=[`MR`] rows;
/// [`super::parallel::split`] cuts the panels into tasks of at least
/// `cranformer_runtime::gemm::plan::portable_grain` panels. Each tile is computed by the same
/// code wherever the cut falls, so results do not depend on the thread count.
fn narrow_panels<M: Module>(
    l: &mut Lowering<'_, M>,
    kdim: usize,
    n: usize,
    bias: bool,
) -> Result<FuncId, CodegenError> {
    let micros = (1..=MR)
        .map(|mr| micro(l, mr, kdim, n, bias))
        .collect::<Result<Vec<_>, _>>()?;
    let name = format!(
        "cf_mm_f32x4_k{kdim}_n{n}{}_panels",
        if bias { "_bias" } else { "" }
    );
    let imports = Imports {
        funcs: micros,
        data: vec![],
    };
    let per_panel = (PANEL / TILE_N) as i64;
    let inner = l.kernel(&name, 7, false, imports, |k, p, refs| {
        // w, bias and out already point at panel `first`'s.
        let (x, w, b, out, m, first, count) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
        // Tiles of 8 columns in these panels, the last one possibly short of N.
        let col_first = k.muli(first, PANEL as i64);
        let nv = k.i(n as i64);
        let cols = k.b.ins().isub(nv, col_first);
        let tiles_left = k.addi(cols, TILE_N as i64 - 1);
        let tiles_left = k.b.ins().udiv_imm_u(tiles_left, TILE_N as i64);
        let tiles = k.muli(count, per_panel);
        let tiles = k.b.ins().smin(tiles, tiles_left);
        let full_rows = {
            let mr = k.i(MR as i64);
            let q = k.b.ins().sdiv(m, mr);
            k.muli(q, MR as i64)
        };
        k.for_n(tiles, |k, ti| {
            // Tile ti: panel ti / 4, its 8-column sub-panel ti % 4.
            let panel = k.b.ins().udiv_imm_u(ti, per_panel);
            let sub = k.b.ins().urem_imm_u(ti, per_panel);
            let pw = k.at(w, panel, PANEL_ROW * kdim as i64);
            let pw = k.at(pw, sub, 4 * TILE_N as i64);
            let pb = if bias {
                k.at(b, ti, 4 * TILE_N as i64)
            } else {
                k.i(0)
            };
            // Columns in this tile: 8, or what is left of N.
            let col0 = k.muli(ti, TILE_N as i64);
            let left = k.b.ins().isub(cols, col0);
            let eight = k.i(TILE_N as i64);
            let ncols = k.b.ins().smin(left, eight);
            let out_col = k.at(out, col0, 4);
            let z = k.i(0);
            k.for_range(z, full_rows, MR as i64, |k, i| {
                let xi = k.at(x, i, 4 * kdim as i64);
                let oi = k.at(out_col, i, 4 * n as i64);
                k.b.ins().call(refs.funcs[MR - 1], &[xi, pw, oi, pb, ncols]);
            });
            let rest = k.b.ins().isub(m, full_rows);
            let xi = k.at(x, full_rows, 4 * kdim as i64);
            let oi = k.at(out_col, full_rows, 4 * n as i64);
            for mr in 1..MR {
                let is = k.b.ins().icmp_imm_s(IntCC::Equal, rest, mr as i64);
                k.when(is, |k| {
                    k.b.ins().call(refs.funcs[mr - 1], &[xi, pw, oi, pb, ncols]);
                });
            }
        });
    })?;
    // Per unit (a panel): x and m shared, w, bias and out one panel on, first + 1.
    let panel_bytes = 4 * PANEL as i64;
    let strides = [
        0,
        PANEL_ROW * kdim as i64,
        if bias { panel_bytes } else { 0 },
        panel_bytes,
        0,
        1,
    ];
    let grain = cranformer_runtime::gemm::plan::portable_grain(kdim) as i64;
    super::parallel::split(l, &format!("{name}_parallel"), inner, &strides, grain, 1)
}

/// The runtime epilogue's form of an activation.
pub fn gemm_act(a: Option<Activation>) -> Act {
    match a {
        None => Act::None,
        Some(Activation::Relu) => Act::Relu,
        Some(Activation::Gelu) => Act::Gelu,
        Some(Activation::GeluTanh) => Act::GeluTanh,
        Some(Activation::Tanh) => Act::Tanh,
        Some(Activation::Silu) => Act::Silu,
        Some(Activation::QuickGelu) => Act::QuickGelu,
    }
}

/// Kernel parameters, in order: `(x, panels, bias, out, m, gemm, residual, parallel_for)`:
/// `out [M, N] = act(x [M, K] · W + bias) + residual`, with `bias` (padded to whole panels)
/// or 0, `gemm` the runtime's wide matmul (`RuntimeFns::gemm`) or 0, `residual` `[M, N]` or 0
/// (read only when `residual` is set; `act` and `residual` are compile-time choices of the
/// kernel, so each combination is its own kernel), `parallel_for` the runtime's thread pool
/// (`RuntimeFns::parallel_for`, for the portable path). Nothing about the tiling is decided here:
/// the runtime resolves it per call; when it offers no wide matmul, the portable path runs.
#[allow(clippy::too_many_arguments)]
pub fn linear<M: Module>(
    l: &mut Lowering<'_, M>,
    kdim: usize,
    n: usize,
    bias: bool,
    act: Option<Activation>,
    residual: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!(
        "cf_linear_k{kdim}_n{n}{}{}{}",
        if bias { "_bias" } else { "" },
        act.map_or(String::new(), |a| format!("_{a:?}").to_lowercase()),
        if residual { "_res" } else { "" },
    );
    // The portable path: the product on the pool, then the epilogue's elementwise kernels.
    let mut funcs = vec![narrow_panels(l, kdim, n, bias)?];
    // The portable path's epilogue: the elementwise kernels, in place over `out`.
    if let Some(a) = act {
        funcs.push(super::elementwise::activation_parallel(l, a)?);
    }
    if residual {
        funcs.push(super::elementwise::binary(l, true)?);
    }
    let imports = Imports {
        funcs,
        data: vec![],
    };
    let gemm_sig = l.signature(1, false);
    let panels = n.div_ceil(PANEL) as i64;
    l.kernel(&name, 8, false, imports, |k, p, refs| {
        let (x, w, b, out, m, gemm, res, pfor) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
        // The runtime's wide matmul when it offers one; it resolves the tiling on the host.
        let wide = k.b.ins().icmp_imm_s(IntCC::NotEqual, gemm, 0);
        let done = k.b.create_block();
        let narrow = k.b.create_block();
        let call = k.b.create_block();
        k.b.ins().brif(wide, call, &[], narrow, &[]);

        k.b.switch_to_block(call);
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            gemm_call::SIZE,
            gemm_call::ALIGN.trailing_zeros() as u8,
        ));
        let c = k.b.ins().stack_addr(I64, slot, 0);
        let (kv, nv) = (k.i(kdim as i64), k.i(n as i64));
        let res_or_null = if residual { res } else { k.i(0) };
        for (f, v) in [
            (gemm_call::M, m),
            (gemm_call::N, nv),
            (gemm_call::K, kv),
            (gemm_call::A, x),
            (gemm_call::LDA, kv),
            (gemm_call::B, w),
            (gemm_call::BIAS, b),
            (gemm_call::C, out),
            (gemm_call::LDC, nv),
            (gemm_call::RESIDUAL, res_or_null),
        ] {
            k.st_field(v, c, f);
        }
        // The epilogue; kc, mc, isa and threads 0: resolved by the runtime on the machine
        // that runs (`cranformer_runtime::gemm::plan::resolve`).
        for (f, v) in [
            (gemm_call::ACT, gemm_act(act) as u32),
            (gemm_call::KC, 0),
            (gemm_call::MC, 0),
            (gemm_call::ISA, ISA_AUTO),
            (gemm_call::THREADS, 0),
        ] {
            let v = k.b.ins().iconst(I32, v as i64);
            k.st_field(v, c, f);
        }
        let sig = k.b.import_signature(gemm_sig);
        k.b.ins().call_indirect(sig, gemm, &[c]);
        k.b.ins().jump(done, &[]);

        k.b.switch_to_block(narrow);
        let (panels_v, zero) = (k.i(panels), k.i(0));
        k.b.ins()
            .call(refs.funcs[0], &[x, w, b, out, m, zero, panels_v, pfor]);
        // Epilogue after the whole product (the tiles are no longer hot: the portable path
        // trades that for reusing the elementwise kernels).
        let numel = k.muli(m, n as i64);
        let mut next = 1;
        if act.is_some() {
            k.b.ins().call(refs.funcs[next], &[out, out, numel, pfor]);
            next += 1;
        }
        if residual {
            k.b.ins()
                .call(refs.funcs[next], &[out, res, out, numel, numel]);
        }
        k.b.ins().jump(done, &[]);
        k.b.switch_to_block(done);
    })
}

/// Kernel parameters, in order: `(x, words, bias, out, m, qgemm, residual)`: as [`linear`],
/// with the weight in a narrow `format`'s word form (`WeightPrep::Quantized`: panels, then
/// int8's per-column scales and column sums at the offsets `WordLayout` gives) and `qgemm`
/// the runtime's narrow-weight matmul (`RuntimeFns::qgemm`, never null: the runtime has a
/// portable kernel for every format). The kernel only fills a `QGemmCall` on its stack; the
/// runtime quantizes the activations (int8), picks the kernel, blocking and threads on the
/// machine that runs, and applies bias, activation and residual per tile.
pub fn qlinear<M: Module>(
    l: &mut Lowering<'_, M>,
    kdim: usize,
    n: usize,
    format: WeightFormat,
    act: Option<Activation>,
    residual: bool,
) -> Result<FuncId, CodegenError> {
    let name = format!(
        "cf_qlinear_{}_k{kdim}_n{n}{}{}",
        format.name(),
        act.map_or(String::new(), |a| format!("_{a:?}").to_lowercase()),
        if residual { "_res" } else { "" },
    );
    let layout = WordLayout::of(kdim, n, format);
    let qgemm_sig = l.signature(1, false);
    l.kernel(&name, 7, false, Imports::default(), |k, p, _| {
        let (x, w, b, out, m, qgemm, res) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
        let slot = k.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            qgemm_call::SIZE,
            qgemm_call::ALIGN.trailing_zeros() as u8,
        ));
        let c = k.b.ins().stack_addr(I64, slot, 0);
        let (kv, nv) = (k.i(kdim as i64), k.i(n as i64));
        let res_or_null = if residual { res } else { k.i(0) };
        // int8's side tables follow the panels in the same prepared tensor (4-byte words).
        let (scales, col_sums) = if format == WeightFormat::I8 {
            (
                k.addi(w, 4 * layout.scales as i64),
                k.addi(w, 4 * layout.col_sums as i64),
            )
        } else {
            (k.i(0), k.i(0))
        };
        for (f, v) in [
            (qgemm_call::M, m),
            (qgemm_call::N, nv),
            (qgemm_call::K, kv),
            (qgemm_call::A, x),
            (qgemm_call::LDA, kv),
            (qgemm_call::B, w),
            (qgemm_call::SCALES, scales),
            (qgemm_call::COL_SUMS, col_sums),
            (qgemm_call::BIAS, b),
            (qgemm_call::C, out),
            (qgemm_call::LDC, nv),
            (qgemm_call::RESIDUAL, res_or_null),
        ] {
            k.st_field(v, c, f);
        }
        // kc, mc, isa and threads 0: resolved by the runtime on the machine that runs
        // (`QGemmCall::resolved`), as for the f32 matmul.
        for (f, v) in [
            (qgemm_call::FORMAT, format.code()),
            (qgemm_call::ACT, gemm_act(act) as u32),
            (qgemm_call::KC, 0),
            (qgemm_call::MC, 0),
            (qgemm_call::ISA, ISA_AUTO),
            (qgemm_call::THREADS, 0),
        ] {
            let v = k.b.ins().iconst(I32, v as i64);
            k.st_field(v, c, f);
        }
        let sig = k.b.import_signature(qgemm_sig);
        k.b.ins().call_indirect(sig, qgemm, &[c]);
    })
}

/// The call computing a `Linear` or `FusedLinear` node: its kernel and arguments, with the
/// weight packed into panels (f32) or the lowering's narrow format, and the bias padded to
/// whole panels.
pub(super) fn call<M: Module>(l: &mut Lowering<'_, M>, at: &At) -> Result<Call, CodegenError> {
    let (layout, act, residual) = match at.node().op {
        Op::FusedLinear {
            layout,
            act,
            residual,
        } => (layout, act, residual),
        Op::Linear { layout } => (layout, None, false),
        ref other => unreachable!("not a matmul: {other}"),
    };
    let (k, n) = (at.channels_of(0), at.channels());
    let in_out = layout == WeightLayout::InOut;
    let bias = at.ops.len() == 3 + residual as usize;
    let format = l.options.weight_format;
    let (prep, kernel, runtime) = if format == WeightFormat::F32 {
        let prep = WeightPrep::Panels { k, n, in_out };
        (prep, linear(l, k, n, bias, act, residual)?, Arg::Sgemm)
    } else {
        let prep = WeightPrep::Quantized {
            k,
            n,
            in_out,
            format,
        };
        let kernel = qlinear(l, k, n, format, act, residual)?;
        (prep, kernel, Arg::Rt(cranformer_runtime::abi::rt::QGEMM))
    };
    let b = if bias {
        at.operand(2, WeightPrep::PadPanel { n })
    } else {
        Arg::Null
    };
    let res = if residual {
        at.v(at.ops.len() - 1)
    } else {
        Arg::Null
    };
    Ok(Call::new(
        kernel,
        vec![
            at.v(0),
            at.operand(1, prep),
            b,
            at.out(),
            Arg::Rows(at.ops[0]),
            runtime,
            res,
        ]
        .into_iter()
        .chain(format.eq(&WeightFormat::F32).then_some(Arg::ParallelFor))
        .collect(),
    ))
}
