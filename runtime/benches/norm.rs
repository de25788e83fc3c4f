//! `cargo bench -p cranformer-runtime --bench norm`: the row-norm kernel on real model shapes,
//! per ISA and thread count: median time and GB/s (the rows read, the added rows read once
//! each, the output written). `-- NAME` keeps the shapes whose name contains NAME.

use cranformer_runtime::gemm::runnable;
use cranformer_runtime::norm::{norm, NormCall, NormKind};
use cranformer_runtime::threads;
mod common;

struct Shape {
    name: &'static str,
    rows: usize,
    c: usize,
    kind: NormKind,
    /// Rows of the added tensor, or 0 for a plain norm.
    rows_b: usize,
}

fn main() {
    common::print_cpu();
    let shapes = [
        // BERT-base: the residual add and LayerNorm after each attention and FFN block.
        Shape {
            name: "bert_base_s128_add_ln",
            rows: 128,
            c: 768,
            kind: NormKind::Layer,
            rows_b: 128,
        },
        // all-MiniLM-L6-v2, 32 sentences of 16 tokens.
        Shape {
            name: "minilm_b32_s16_add_ln",
            rows: 512,
            c: 384,
            kind: NormKind::Layer,
            rows_b: 512,
        },
        // GPT-2: ln_1 of one decode step.
        Shape {
            name: "gpt2_decode_ln",
            rows: 1,
            c: 768,
            kind: NormKind::Layer,
            rows_b: 0,
        },
        // T5-small's encoder: RMS norm before each block.
        Shape {
            name: "t5_small_s128_rms",
            rows: 128,
            c: 512,
            kind: NormKind::Rms,
            rows_b: 0,
        },
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let isas = runnable();
    println!(
        "{:<24} {:>8} {:>3} {:>10} {:>8} {:>7}",
        "shape", "isa", "thr", "median_us", "min_us", "GB/s"
    );
    for sh in shapes {
        if filter.as_deref().is_some_and(|f| !sh.name.contains(f)) {
            continue;
        }
        let fill = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * m % 23) as f32 - 11.0) * 0.05)
                .collect()
        };
        let (x, b) = (fill(sh.rows * sh.c, 7), fill(sh.rows_b.max(1) * sh.c, 5));
        let (gamma, beta) = (fill(sh.c, 3), fill(sh.c, 11));
        let mut out = vec![0f32; sh.rows * sh.c];
        let bytes = 4.0 * ((2 * sh.rows + sh.rows_b) * sh.c) as f64;
        for &isa in &isas {
            for thr in [1, 2] {
                threads::set_threads(thr);
                let call = NormCall {
                    x: x.as_ptr(),
                    add: if sh.rows_b > 0 {
                        b.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    gamma: gamma.as_ptr(),
                    beta: beta.as_ptr(),
                    out: out.as_mut_ptr(),
                    rows: sh.rows,
                    rows_b: sh.rows_b,
                    channels: sh.c,
                    eps: 1e-12,
                    kind: sh.kind.code(),
                    isa: isa as u32,
                    threads: thr as u32,
                };
                let (med, min) = common::median_and_min(3, 1000, || {
                    // SAFETY: every buffer is live and sized for the call's shapes.
                    unsafe { norm(&call) }.expect("a valid call");
                });
                println!(
                    "{:<24} {:>8} {:>3} {:>10.2} {:>8.2} {:>7.1}",
                    sh.name,
                    isa.name(),
                    thr,
                    med * 1e6,
                    min * 1e6,
                    bytes / med / 1e9
                );
            }
        }
    }
}
