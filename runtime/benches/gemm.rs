//! `cargo bench -p cranformer-runtime --bench gemm`: the matmul micro-kernels on real model
//! shapes, per ISA and thread count: median time, GFLOP/s, and GB/s of weights streamed.

use cranformer_runtime::gemm::{pack_b, sgemm, Blocking, GemmCall, Isa, PACK_NR};
use cranformer_runtime::threads;
use std::time::Instant;

fn main() {
    let shapes = [
        ("bert_base_s128_ffn_in", 128, 3072, 768),
        ("bert_base_s128_ffn_out", 128, 768, 3072),
        ("bert_base_s128_qkv", 128, 2304, 768),
        ("gpt2_decode_c_fc", 1, 3072, 768),
        ("gpt2_decode_lm_head", 1, 50257, 768),
        ("gpt2_prefill_s32_c_fc", 32, 3072, 768),
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let mut isas = vec![Isa::detect()];
    if isas[0] != Isa::Portable {
        isas.push(Isa::Portable);
    }
    println!(
        "{:<26} {:>8} {:>3} {:>10} {:>9} {:>8}",
        "shape", "isa", "thr", "median_ms", "GFLOP/s", "GB/s(B)"
    );
    for (name, m, n, k) in shapes {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01)
            .collect();
        let bias = vec![0.1f32; n];
        for &isa in &isas {
            let packed = pack_b(&w, k, n, false, PACK_NR);
            for thr in [1, 2] {
                threads::set_threads(thr);
                let mut c = vec![0f32; m * n];
                let g = GemmCall::new(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    k,
                    packed.as_ptr(),
                    bias.as_ptr(),
                    c.as_mut_ptr(),
                    n,
                );
                let mut times = vec![];
                for i in 0..25 {
                    let t = Instant::now();
                    unsafe { sgemm(&g, isa, Blocking::default_for(isa)) };
                    if i >= 3 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                times.sort_by(f64::total_cmp);
                let med = times[times.len() / 2];
                let gflops = 2.0 * (m * n * k) as f64 / med / 1e9;
                let gbs = (n * k * 4) as f64 / med / 1e9;
                println!(
                    "{name:<26} {:>8} {thr:>3} {:>10.3} {gflops:>9.1} {gbs:>8.1}",
                    isa.name(),
                    med * 1e3
                );
            }
        }
    }
}
