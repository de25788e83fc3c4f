//! `cargo bench -p cranformer-runtime --bench kc_sweep`: the f32 matmul of BERT-base, MiniLM
//! and T5-small shapes under every K block `kc` from 128 to all of K, interleaved round by
//! round in one process, with B streamed from DRAM (copies of the weights in turn, as a
//! model's layers are) — the measurements `gemm::plan::K_BLOCK_STEPS` was fitted to.
//! `-- NAME` keeps the shapes whose name contains NAME.

use cranformer_runtime::gemm::{pack_b, sgemm, Blocking, GemmCall, Isa, PACK_NR};
use cranformer_runtime::threads;
use std::time::Instant;

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let quick = std::env::var_os("CRANFORMER_BENCH_QUICK").is_some();
    let rounds = if quick { 4 } else { 24 };
    println!(
        "cpu: {}",
        cranformer_runtime::machine::cpu_model().unwrap_or_else(|| "unknown".into())
    );
    let shapes = [
        ("bert_base_s128_ffn_in", 128, 3072, 768),
        ("bert_base_s128_ffn_out", 128, 768, 3072),
        ("minilm_b32_s16_ffn_in", 512, 1536, 384),
        ("minilm_b32_s16_ffn_out", 512, 384, 1536),
        ("t5_small_s128_ffn_out", 128, 512, 2048),
    ];
    let mut isas = vec![Isa::detect()];
    if isas[0] == Isa::Avx512 {
        isas.push(Isa::Avx2);
    }
    println!(
        "{:<24} {:>7} {:>3} {:>6} {:>10} {:>8} {:>10}",
        "shape", "isa", "thr", "kc", "median_ms", "GFLOP/s", "x kc=128"
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
        // Enough copies of B that each call finds its weights out of cache.
        let copies = (256usize << 20).div_ceil(n * k * 4).max(1);
        let packed: Vec<Vec<f32>> = (0..copies)
            .map(|_| pack_b(&w, k, n, false, PACK_NR))
            .collect();
        let mut kcs: Vec<usize> = [128, 256, 384, 768, k].iter().map(|&x| x.min(k)).collect();
        kcs.dedup();
        for &isa in &isas {
            for thr in [1, 2] {
                threads::set_threads(thr);
                let mut c = vec![0f32; m * n];
                let mut g = GemmCall::new(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    k,
                    packed[0].as_ptr(),
                    bias.as_ptr(),
                    c.as_mut_ptr(),
                    n,
                );
                g.threads = thr as u32;
                let mut times = vec![vec![]; kcs.len()];
                let mut call = 0;
                for round in 0..rounds + 2 {
                    for (i, &kc) in kcs.iter().enumerate() {
                        g.b = packed[call % copies].as_ptr();
                        call += 1;
                        let t = Instant::now();
                        // SAFETY: a, packed B, bias and c are live and sized for m, n, k; the
                        // CPU has isa (detected, or AVX2 below AVX-512).
                        unsafe { sgemm(&g, isa, Blocking { kc, mc: m }) };
                        if round >= 2 {
                            times[i].push(t.elapsed().as_secs_f64());
                        }
                    }
                }
                for (i, &kc) in kcs.iter().enumerate() {
                    let mut ratios: Vec<f64> = times[0]
                        .iter()
                        .zip(&times[i])
                        .map(|(base, t)| base / t)
                        .collect();
                    let ratio = median(&mut ratios);
                    let med = median(&mut times[i]);
                    println!(
                        "{name:<24} {:>7} {thr:>3} {kc:>6} {:>10.3} {:>8.1} {ratio:>10.3}",
                        isa.name(),
                        med * 1e3,
                        2.0 * (m * n * k) as f64 / med / 1e9,
                    );
                }
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
