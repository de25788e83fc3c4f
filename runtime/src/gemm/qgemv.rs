//! Decode GEMVs for narrow weights: a matmul of at most [`MAX_ROWS`] rows (a decode step, or
//! a few batched streams) is bound by streaming the weights from DRAM, and the tile kernels read
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

/// Rows one GEMV call takes.
pub const ROWS: usize = 4;
/// Rows up to which the GEMV runs instead of the tile kernels, in chunks of [`ROWS`] over the
/// same group of panels (the later chunks read it from cache). Measured with
/// `cargo bench -p cranformer-runtime --bench gemm -- gpt2_decode_rows`.
pub const MAX_ROWS: usize = 8;

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
    /// Panels per call for 1..=ROWS rows: powers of two, so that the row chunks of one
    /// matmul can share a group of panels (the largest of theirs).
    panels: [usize; ROWS],
    run: GemvFn,
}

/// A's rows and the K block for [`QGemv::panels`].
pub(super) struct At {
    /// int8: the quantized rows at the block's first k, `lda` apart; bf16/f16: A packed as
    /// the tile kernels read it (`[kc][rows]`).
    pub a: *const u8,
    pub lda: usize,
    /// Bytes from one chunk of [`ROWS`] rows of `a` to the next.
    pub chunk: usize,
    pub pc: usize,
    pub kc: usize,
    /// Whether this is the last K block (the finish runs after it).
    pub last: bool,
}

impl QGemv {
    pub(crate) const fn new(width: usize, panels: [usize; ROWS], run: GemvFn) -> QGemv {
        assert!(PACK_NR.is_multiple_of(width));
        let mut r = 0;
        while r < ROWS {
            assert!(panels[r].is_power_of_two());
            r += 1;
        }
        QGemv { width, panels, run }
    }

    /// Panels one call reads for `rows` rows (1..=ROWS).
    pub fn panels_for(&self, rows: usize) -> usize {
        self.panels[rows - 1]
    }

    /// Runs whole panels `p0..` of `g` (at most [`MAX_ROWS`] rows) in groups through the GEMV,
    /// as far as whole groups of full panels go; returns the first panel left to the tiles.
    ///
    /// # Safety
    /// As [`super::qgemm`] for `g`; the kernel runs on this CPU; `at` as described there;
    /// `p0..p1` within the panels of N; `qa` is the int8 rows (None for other formats).
    #[allow(clippy::too_many_arguments)]
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
        // The last chunk has the fewest rows, so the most panels per call.
        let group = self.panels_for(rows - (rows - 1) / ROWS * ROWS);
        let mut p = p0;
        while p + group <= p1 && (p + group) * PACK_NR <= g.n {
            let col = p * PACK_NR;
            for r0 in (0..rows).step_by(ROWS) {
                let chunk = ROWS.min(rows - r0);
                let per_call = self.panels_for(chunk);
                for q in (p..p + group).step_by(per_call) {
                    for sub in (0..PACK_NR).step_by(self.width) {
                        let at_col = q * PACK_NR + sub;
                        let init = if at.pc > 0 {
                            Init::Load
                        } else if g.bias.is_null() || qa.is_some() {
                            Init::Zero
                        } else {
                            Init::Bias(g.bias.add(at_col))
                        };
                        let tile = QTile {
                            kc: at.kc,
                            a: at.a.add(r0 / ROWS * at.chunk),
                            lda: at.lda,
                            b: g.b.add(layout.offset(q, at.pc, sub)),
                            rows: chunk,
                            cols: self.width,
                            init,
                            bias_cols_valid: g.n - at_col,
                            fetch: super::Fetch::NONE,
                        };
                        let c = g.c.add(r0 * g.ldc + at_col);
                        (self.run)(&tile, layout.panel_bytes, c, g.ldc, init);
                    }
                }
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
