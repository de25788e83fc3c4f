//! The layout generated code relies on, read from the runtime's own definitions: the byte
//! offset and width of every field the generated code loads or stores in a runtime struct
//! ([`EntryCtx`], [`RuntimeFns`], [`GemmCall`], [`QGemmCall`] for the narrow-weight
//! matmul, [`AttnCall`] for attention, [`NormCall`] for the row norms), their sizes and
//! alignments, and the enum codes it passes ([`crate::gemm::Act`], [`crate::gemm::Isa`],
//! [`crate::norm::NormKind`]). The compiler uses these
//! and nothing else, so reordering or widening a field here changes the generated code
//! with it; the assertions at the bottom stop what the generated code cannot follow (a
//! field width other than 4 or 8 bytes, a pointer other than 64 bits).

use crate::attention::AttnCall;
use crate::gemm::{GemmCall, QGemmCall};
use crate::native::{EntryCtx, RuntimeFns};
use crate::norm::NormCall;
use std::mem::{align_of, offset_of, size_of};

/// One field of a `#[repr(C)]` struct that generated code reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the struct.
    pub offset: i32,
    /// Width in bytes: 8 for pointers, `usize` and `i64`, 4 for `u32`.
    pub bytes: u8,
}

/// Width of the field `get` reads (the closure is never called).
const fn width<T, F>(_get: fn(&T) -> &F) -> u8 {
    size_of::<F>() as u8
}

macro_rules! field {
    ($t:ty, $($f:ident).+) => {
        Field {
            offset: offset_of!($t, $($f).+) as i32,
            bytes: width(|s: &$t| &s.$($f).+),
        }
    };
}

/// Bytes per entry of the value table `EntryCtx::values` (one pointer per slot).
pub const VALUE_SLOT: i32 = size_of::<*mut u8>() as i32;

/// [`EntryCtx`], the entry function's only argument.
pub mod ctx {
    use super::*;
    /// `*const *mut u8`: the value table.
    pub const VALUES: Field = field!(EntryCtx, values);
    /// The call's dims (i64 each).
    pub const BATCH: Field = field!(EntryCtx, dims.batch);
    pub const SEQ: Field = field!(EntryCtx, dims.seq);
    pub const PAST: Field = field!(EntryCtx, dims.past);
    pub const ENC_SEQ: Field = field!(EntryCtx, dims.enc_seq);
    /// Rows per batch row of KV-cache storage appended in place, or 0.
    pub const KV_CAP: Field = field!(EntryCtx, dims.kv_cap);
    /// `*const i64`: each batch row's cached positions when they differ, or null.
    pub const KV_LENS: Field = field!(EntryCtx, dims.kv_lens);
    /// `*const RuntimeFns`.
    pub const RT: Field = field!(EntryCtx, rt);
}

/// [`RuntimeFns`], the runtime services reached through `EntryCtx::rt`.
pub mod rt {
    use super::*;
    /// `Option<GemmFn>`: the wide matmul or null.
    pub const GEMM: Field = field!(RuntimeFns, gemm);
    /// `ParallelForFn`, never null.
    pub const PARALLEL_FOR: Field = field!(RuntimeFns, parallel_for);
    /// `QGemmFn`: the narrow-weight matmul, never null.
    pub const QGEMM: Field = field!(RuntimeFns, qgemm);
    /// `GatherColumnsFn`: embedding rows from a prepared weight's columns, never null.
    pub const GATHER_COLUMNS: Field = field!(RuntimeFns, gather_columns);
    /// `AttentionFn`: scaled dot-product attention, never null.
    pub const ATTENTION: Field = field!(RuntimeFns, attention);
    /// `NormFn`: LayerNorm, RMS norm, L2 normalisation (with an add first), never null.
    pub const NORM: Field = field!(RuntimeFns, norm);
}

/// [`GemmCall`], which generated matmuls fill on their stack.
pub mod gemm_call {
    use super::*;
    pub const SIZE: u32 = size_of::<GemmCall>() as u32;
    pub const ALIGN: u32 = align_of::<GemmCall>() as u32;
    pub const M: Field = field!(GemmCall, m);
    pub const N: Field = field!(GemmCall, n);
    pub const K: Field = field!(GemmCall, k);
    pub const A: Field = field!(GemmCall, a);
    pub const LDA: Field = field!(GemmCall, lda);
    pub const B: Field = field!(GemmCall, b);
    pub const BIAS: Field = field!(GemmCall, bias);
    pub const C: Field = field!(GemmCall, c);
    pub const LDC: Field = field!(GemmCall, ldc);
    pub const RESIDUAL: Field = field!(GemmCall, residual);
    pub const ACT: Field = field!(GemmCall, act);
    pub const KC: Field = field!(GemmCall, kc);
    pub const MC: Field = field!(GemmCall, mc);
    pub const ISA: Field = field!(GemmCall, isa);
    pub const THREADS: Field = field!(GemmCall, threads);
    /// Every field, so a test can check they tile the struct.
    pub const ALL: [Field; 15] = [
        M, N, K, A, LDA, B, BIAS, C, LDC, RESIDUAL, ACT, KC, MC, ISA, THREADS,
    ];
}

/// [`QGemmCall`], which generated narrow-weight matmuls (`--dtype int8|bf16|f16`) fill on
/// their stack.
pub mod qgemm_call {
    use super::*;
    pub const SIZE: u32 = size_of::<QGemmCall>() as u32;
    pub const ALIGN: u32 = align_of::<QGemmCall>() as u32;
    pub const M: Field = field!(QGemmCall, m);
    pub const N: Field = field!(QGemmCall, n);
    pub const K: Field = field!(QGemmCall, k);
    pub const A: Field = field!(QGemmCall, a);
    pub const LDA: Field = field!(QGemmCall, lda);
    pub const B: Field = field!(QGemmCall, b);
    pub const SCALES: Field = field!(QGemmCall, scales);
    pub const COL_SUMS: Field = field!(QGemmCall, col_sums);
    pub const BIAS: Field = field!(QGemmCall, bias);
    pub const C: Field = field!(QGemmCall, c);
    pub const LDC: Field = field!(QGemmCall, ldc);
    pub const RESIDUAL: Field = field!(QGemmCall, residual);
    pub const FORMAT: Field = field!(QGemmCall, format);
    pub const ACT: Field = field!(QGemmCall, act);
    pub const KC: Field = field!(QGemmCall, kc);
    pub const MC: Field = field!(QGemmCall, mc);
    pub const ISA: Field = field!(QGemmCall, isa);
    pub const THREADS: Field = field!(QGemmCall, threads);
    /// Every field, so a test can check they tile the struct.
    pub const ALL: [Field; 18] = [
        M, N, K, A, LDA, B, SCALES, COL_SUMS, BIAS, C, LDC, RESIDUAL, FORMAT, ACT, KC, MC, ISA,
        THREADS,
    ];
}

/// [`AttnCall`], which generated attention kernels fill on their stack.
pub mod attn_call {
    use super::*;
    pub const SIZE: u32 = size_of::<AttnCall>() as u32;
    pub const ALIGN: u32 = align_of::<AttnCall>() as u32;
    pub const Q: Field = field!(AttnCall, q);
    pub const K: Field = field!(AttnCall, k);
    pub const V: Field = field!(AttnCall, v);
    pub const MASK: Field = field!(AttnCall, mask);
    pub const BIAS: Field = field!(AttnCall, bias);
    pub const OUT: Field = field!(AttnCall, out);
    pub const BATCH: Field = field!(AttnCall, batch);
    pub const SEQ: Field = field!(AttnCall, seq);
    pub const KEYS: Field = field!(AttnCall, keys);
    pub const KV_ROWS: Field = field!(AttnCall, kv_rows);
    pub const Q_LD: Field = field!(AttnCall, q_ld);
    pub const KV_LD: Field = field!(AttnCall, kv_ld);
    pub const HEADS: Field = field!(AttnCall, heads);
    pub const HEAD_DIM: Field = field!(AttnCall, head_dim);
    /// An f32: generated code stores its bits as a 4-byte integer.
    pub const SCALE: Field = field!(AttnCall, scale);
    pub const CAUSAL: Field = field!(AttnCall, causal);
    pub const ISA: Field = field!(AttnCall, isa);
    pub const THREADS: Field = field!(AttnCall, threads);
    /// Every field, so a test can check they tile the struct.
    pub const ALL: [Field; 18] = [
        Q, K, V, MASK, BIAS, OUT, BATCH, SEQ, KEYS, KV_ROWS, Q_LD, KV_LD, HEADS, HEAD_DIM, SCALE,
        CAUSAL, ISA, THREADS,
    ];
}

/// [`NormCall`], which generated norm kernels fill on their stack.
pub mod norm_call {
    use super::*;
    pub const SIZE: u32 = size_of::<NormCall>() as u32;
    pub const ALIGN: u32 = align_of::<NormCall>() as u32;
    pub const X: Field = field!(NormCall, x);
    pub const ADD: Field = field!(NormCall, add);
    pub const GAMMA: Field = field!(NormCall, gamma);
    pub const BETA: Field = field!(NormCall, beta);
    pub const OUT: Field = field!(NormCall, out);
    pub const ROWS: Field = field!(NormCall, rows);
    pub const ROWS_B: Field = field!(NormCall, rows_b);
    pub const CHANNELS: Field = field!(NormCall, channels);
    /// An f32: generated code stores its bits as a 4-byte integer.
    pub const EPS: Field = field!(NormCall, eps);
    pub const KIND: Field = field!(NormCall, kind);
    pub const ISA: Field = field!(NormCall, isa);
    pub const THREADS: Field = field!(NormCall, threads);
    /// Every field, so a test can check they tile the struct.
    pub const ALL: [Field; 12] = [
        X, ADD, GAMMA, BETA, OUT, ROWS, ROWS_B, CHANNELS, EPS, KIND, ISA, THREADS,
    ];
}

// Generated code keeps pointers, sizes and dims in i64 registers and loads or stores each
// field with an 8- or 4-byte access.
const _: () = assert!(size_of::<usize>() == 8 && size_of::<*const u8>() == 8);
const _: () = {
    let all = [
        ctx::VALUES,
        ctx::BATCH,
        ctx::SEQ,
        ctx::PAST,
        ctx::ENC_SEQ,
        ctx::KV_CAP,
        ctx::KV_LENS,
        ctx::RT,
        rt::GEMM,
        rt::PARALLEL_FOR,
        rt::QGEMM,
        rt::GATHER_COLUMNS,
        rt::ATTENTION,
        rt::NORM,
    ];
    let mut i = 0;
    while i < all.len() {
        assert!(all[i].bytes == 8);
        i += 1;
    }
    let mut i = 0;
    let (g, q, a) = (
        gemm_call::ALL.len(),
        qgemm_call::ALL.len(),
        attn_call::ALL.len(),
    );
    while i < g + q + a + norm_call::ALL.len() {
        let f = if i < g {
            gemm_call::ALL[i]
        } else if i < g + q {
            qgemm_call::ALL[i - g]
        } else if i < g + q + a {
            attn_call::ALL[i - g - q]
        } else {
            norm_call::ALL[i - g - q - a]
        };
        assert!(f.bytes == 8 || f.bytes == 4);
        assert!(f.offset % f.bytes as i32 == 0);
        i += 1;
    }
    // The stack slots generated code reserves are aligned to 8 bytes at most.
    assert!(gemm_call::ALIGN <= 8 && qgemm_call::ALIGN <= 8);
    assert!(attn_call::ALIGN <= 8 && norm_call::ALIGN <= 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_fields_tile_their_structs() {
        for (all, size) in [
            (&gemm_call::ALL[..], gemm_call::SIZE),
            (&qgemm_call::ALL[..], qgemm_call::SIZE),
            (&attn_call::ALL[..], attn_call::SIZE),
            (&norm_call::ALL[..], norm_call::SIZE),
        ] {
            let mut spans: Vec<(i32, i32)> = all
                .iter()
                .map(|f| (f.offset, f.offset + f.bytes as i32))
                .collect();
            spans.sort();
            for w in spans.windows(2) {
                assert!(w[0].1 <= w[1].0, "fields overlap: {w:?}");
            }
            assert!(spans[spans.len() - 1].1 <= size as i32);
        }
    }

    #[test]
    fn fields_match_the_structs() {
        // A value written through each offset reads back through the field.
        let mut c = GemmCall::new(
            0,
            0,
            0,
            std::ptr::null(),
            0,
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            0,
        );
        let base = &mut c as *mut GemmCall as *mut u8;
        // SAFETY: every offset is inside `c` and aligned for its width (asserted above).
        unsafe {
            (base.add(gemm_call::K.offset as usize) as *mut u64).write(7);
            (base.add(gemm_call::MC.offset as usize) as *mut u32).write(9);
        }
        assert_eq!((c.k, c.mc), (7, 9));
    }
}
