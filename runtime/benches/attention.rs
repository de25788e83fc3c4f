//! `cargo bench -p cranformer-runtime --bench attention`: the attention kernel on real model
//! shapes, per ISA and thread count: median time and GFLOP/s (q·k and p·v, 4·T·S·H·D FLOPs
//! per batch row, counting every key a query may see). `-- NAME` keeps the shapes whose name
//! contains NAME.

use cranformer_runtime::attention::{attention, AttnCall};
use cranformer_runtime::gemm::runnable;
use cranformer_runtime::threads;
mod common;

struct Shape {
    name: &'static str,
    t: usize,
    s: usize,
    h: usize,
    causal: bool,
    biased: bool,
}

fn main() {
    common::print_cpu();
    let shapes = [
        // BERT-base: 12 heads of 64, attention mask of ones.
        Shape {
            name: "bert_base_s128",
            t: 128,
            s: 128,
            h: 12,
            causal: false,
            biased: false,
        },
        Shape {
            name: "bert_base_s512",
            t: 512,
            s: 512,
            h: 12,
            causal: false,
            biased: false,
        },
        // GPT-2: a 128-token prompt, then one decode step over a 1024-row cache.
        Shape {
            name: "gpt2_prefill_s128",
            t: 128,
            s: 128,
            h: 12,
            causal: true,
            biased: false,
        },
        Shape {
            name: "gpt2_decode_s1024",
            t: 1,
            s: 1024,
            h: 12,
            causal: true,
            biased: false,
        },
        // T5-small's encoder: 8 heads of 64 with relative position bias.
        Shape {
            name: "t5_small_s128_bias",
            t: 128,
            s: 128,
            h: 8,
            causal: false,
            biased: true,
        },
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let isas = runnable();
    println!(
        "{:<20} {:>8} {:>3} {:>10} {:>8} {:>9}",
        "shape", "isa", "thr", "median_ms", "min_ms", "GFLOP/s"
    );
    let d = 64;
    for sh in shapes {
        if filter.as_deref().is_some_and(|f| !sh.name.contains(f)) {
            continue;
        }
        let c = sh.h * d;
        let fill = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * m % 23) as f32 - 11.0) * 0.05)
                .collect()
        };
        let (q, k, v) = (fill(sh.t * c, 7), fill(sh.s * c, 5), fill(sh.s * c, 3));
        let mask = vec![1i64; sh.s];
        let bias = fill(sh.h * sh.t * sh.s, 11);
        let mut out = vec![0f32; sh.t * c];
        let seen: usize = (0..sh.t)
            .map(|i| if sh.causal { sh.s - sh.t + i + 1 } else { sh.s })
            .sum();
        let flops = 4.0 * (seen * sh.h * d) as f64;
        for &isa in &isas {
            for thr in [1, 2] {
                threads::set_threads(thr);
                let call = AttnCall {
                    q: q.as_ptr(),
                    k: k.as_ptr(),
                    v: v.as_ptr(),
                    mask: mask.as_ptr(),
                    bias: if sh.biased {
                        bias.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    out: out.as_mut_ptr(),
                    batch: 1,
                    seq: sh.t,
                    keys: sh.s,
                    kv_rows: sh.s,
                    q_ld: 0,
                    kv_ld: 0,
                    heads: sh.h,
                    head_dim: d,
                    scale: 0.125,
                    causal: sh.causal as u32,
                    isa: isa as u32,
                    threads: thr as u32,
                };
                let (med, min) = common::median_and_min(3, 50, || {
                    // SAFETY: every buffer is live and sized for the call's shapes.
                    unsafe { attention(&call) }.expect("a valid call");
                });
                println!(
                    "{:<20} {:>8} {:>3} {:>10.3} {:>8.3} {:>9.1}",
                    sh.name,
                    isa.name(),
                    thr,
                    med * 1e3,
                    min * 1e3,
                    flops / med / 1e9
                );
            }
        }
    }
}
