//! Decode GEMVs for narrow weights: a matmul of at most [`ROWS`] rows (a decode step, or a
//! few batched streams) is bound by streaming the weights from DRAM, and the tile kernels read
//! one panel at a time, a single stream per thread with only 2 accumulator chains per row.
//! A GEMV reads several whole panels at once instead (`avx512_qgemv.rs`, `avx2_qgemv.rs`), as
//! the f32 `gemv.rs` does; the portable kernels have none and run the tile path.
//!
//! Every GEMV sums each column in the tile kernels' order with the same instructions, and the
//! finish (int8's dequantization, then the epilogue) is the tile path's code run over the
//! group's columns, so which path a panel takes never changes a bit: results stay identical
//! for any thread count and blocking.

use super::epilogue::{self, Act};
use super::qgemm::{dequantize, PanelLayout, QGemmCall, QTile};
use super::quant::QuantRows;
use super::{Init, PACK_NR};

/// Rows up to which a GEMV runs instead of the tile kernels (see `benches/gemm.rs`,
/// `gpt2_decode_*` at M = 1..8).
pub const ROWS: usize = 4;

/// `(tile, panel_bytes, c, ldc, init)`: the tile's `rows` rows against `PANELS[rows - 1]`
/// panels `panel_bytes` apart, from `tile.b` (the first panel's strip at the K block's start)
/// into `c` (the first panel's strip), panel p's columns at `c + 32p`. int8 writes i32 bits.
pub(crate) type GemvFn = unsafe fn(&QTile, usize, *mut f32, usize, Init);

/// A GEMV kernel and its shape.
#[derive(Clone, Copy)]
pub(crate) struct QGemv {
    /// Columns of each panel one call computes: a strip (a divisor of [`PACK_NR`]); the
    /// caller walks the strips of each group of panels.
    width: usize,
    /// Panels per call for 1..=ROWS rows.
    panels: [usize; ROWS],
    run: GemvFn,
}

/// A's rows and the K block for [`QGemv::panels`].
pub(super) struct At {
    /// int8: the quantized rows at the block's first k, `lda` apart; bf16/f16: A packed as
    /// the tile kernels read it (`[kc][rows]`).
    pub a: *const u8,
    pub lda: usize,
    pub pc: usize,
    pub kc: usize,
    /// Whether this is the last K block (the finish runs after it).
    pub last: bool,
}

impl QGemv {
    pub(crate) const fn new(width: usize, panels: [usize; ROWS], run: GemvFn) -> QGemv {
        assert!(PACK_NR % width == 0);
        QGemv { width, panels, run }
    }

    /// Panels one call reads for `rows` rows (1..=ROWS).
    pub fn panels_for(&self, rows: usize) -> usize {
        self.panels[rows - 1]
    }

    /// Runs whole panels `p0..` of `g` (at most [`ROWS`] rows) in groups through the GEMV,
    /// as far as whole groups of full panels go; returns the first panel left to the tiles.
    ///
    /// # Safety
    /// As [`super::qgemm`] for `g`; the kernel runs on this CPU; `at` as described there;
    /// `p0..p1` within the panels of N; `qa` is the int8 rows (None for other formats).
    pub(super) unsafe fn panels(
        &self,
        g: &QGemmCall,
        layout: &PanelLayout,
        act: Act,
        qa: Option<&QuantRows>,
        at: At,
        p0: usize,
        p1: usize,
    ) -> usize {
        let rows = g.m;
        let group = self.panels_for(rows);
        let mut p = p0;
        while p + group <= p1 && (p + group) * PACK_NR <= g.n {
            let col = p * PACK_NR;
            for sub in (0..PACK_NR).step_by(self.width) {
                let init = if at.pc > 0 {
                    Init::Load
                } else if g.bias.is_null() || qa.is_some() {
                    Init::Zero
                } else {
                    Init::Bias(g.bias.add(col + sub))
                };
                let tile = QTile {
                    kc: at.kc,
                    a: at.a,
                    lda: at.lda,
                    b: g.b.add(layout.offset(p, at.pc, sub)),
                    rows,
                    cols: self.width,
                    init,
                    bias_cols_valid: g.n - col - sub,
                };
                (self.run)(&tile, layout.panel_bytes, g.c.add(col + sub), g.ldc, init);
            }
            if at.last {
                // The group's panels are side by side in C: one finish over their columns.
                let cols = group * PACK_NR;
                if let Some(q) = qa {
                    dequantize(g, q, 0, col, rows, cols);
                }
                let res = if g.residual.is_null() {
                    g.residual
                } else {
                    g.residual.add(col)
                };
                epilogue::apply(act, g.c.add(col), g.ldc, rows, cols, res);
            }
            p += group;
        }
        p
    }
}
