//! `cargo bench -p cranformer-runtime --bench gemm`: the matmul micro-kernels on real model
//! shapes, per ISA and thread count: median time, GFLOP/s, and GB/s of weights streamed.
//! Then the narrow weights (int8, bf16, f16) against f32, interleaved round by round, with
//! the median of per-round ratios; then the accuracy of int8 activation schemes.
//! `-- NAME` keeps the shapes whose name contains NAME.

use cranformer_runtime::gemm::quant::QuantRows;
use cranformer_runtime::gemm::{
    pack_b, qgemm, sgemm, Blocking, GemmCall, Isa, PackedWeight, QGemmCall, QKernel, WeightFormat,
    GEMV_ROWS, KERNELS, PACK_NR,
};
use cranformer_runtime::threads;
use std::time::Instant;
mod common;

fn main() {
    common::print_cpu();
    println!(
        "isa: {} (f32); narrow kernels here: {}",
        Isa::detect().name(),
        KERNELS
            .iter()
            .filter(|k| k.available())
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let shapes = [
        ("bert_base_s128_ffn_in", 128, 3072, 768),
        ("bert_base_s128_ffn_out", 128, 768, 3072),
        ("bert_base_s128_qkv", 128, 2304, 768),
        ("gpt2_decode_c_fc", 1, 3072, 768),
        ("gpt2_decode_lm_head", 1, 50257, 768),
        ("gpt2_prefill_s32_c_fc", 32, 3072, 768),
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if filter.as_deref() == Some("kc_sweep") {
        return kc_sweep();
    }
    let mut isas = vec![Isa::detect()];
    if isas[0] != Isa::Portable {
        isas.push(Isa::Portable);
    }
    println!(
        "{:<26} {:>8} {:>3} {:>10} {:>8} {:>9} {:>8}",
        "shape", "isa", "thr", "median_ms", "min_ms", "GFLOP/s", "GB/s(B)"
    );
    for (name, m, n, k) in shapes {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let (a, w, bias) = inputs(m, n, k);
        for &isa in &isas {
            let packed = pack_b(&w, k, n, false, PACK_NR);
            for thr in [1, 2] {
                threads::set_threads(thr);
                let mut c = vec![0f32; m * n];
                let mut g = GemmCall::new(
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
                g.threads = thr as u32;
                let mut times = vec![];
                for i in 0..25 {
                    let t = Instant::now();
                    // SAFETY: a, packed B, bias and c are live and sized for m, n, k; the CPU has isa.
                    unsafe { sgemm(&g, isa, Blocking::default_for(isa)) };
                    if i >= 3 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                times.sort_by(f64::total_cmp);
                let med = times[times.len() / 2];
                // The minimum too: on a machine shared with other busy processes it is the
                // run that had its cores.
                let min = times[0];
                let gflops = 2.0 * (m * n * k) as f64 / med / 1e9;
                let gbs = (n * k * 4) as f64 / med / 1e9;
                println!(
                    "{name:<26} {:>8} {thr:>3} {:>10.3} {:>8.3} {gflops:>9.1} {gbs:>8.1}",
                    isa.name(),
                    med * 1e3,
                    min * 1e3
                );
            }
        }
    }
    narrow(&shapes, filter.as_deref());
    if filter
        .as_deref()
        .is_none_or(|f| "gpt2_decode_rows".contains(f))
    {
        decode_rows();
    }
    activation_schemes();
}

/// A `[m, k]`, W `[k, n]` (row-major, as a checkpoint stores `[in, out]`) and a bias of `n`:
/// small values in a fixed pattern.
fn inputs(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    let w = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01)
        .collect();
    (a, w, vec![0.1f32; n])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each format's best kernel (and the fallbacks of its family below it) against f32's,
/// interleaved: every round times each once, so drift hits them alike.
fn narrow(shapes: &[(&str, usize, usize, usize)], filter: Option<&str>) {
    println!();
    println!(
        "{:<26} {:<26} {:>3} {:>10} {:>9} {:>8} {:>9}",
        "shape", "kernel", "thr", "median_ms", "GOP/s", "GB/s(B)", "x f32"
    );
    let isa = Isa::detect();
    for &(name, m, n, k) in shapes {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let (a, w, bias) = inputs(m, n, k);
        let packed = pack_b(&w, k, n, false, PACK_NR);
        // The best kernel of each format, plus the int8 kernel without VNNI and the bf16 one
        // without vdpbf16ps where they differ from the best.
        let mut kernels: Vec<&QKernel> = Vec::new();
        for f in [WeightFormat::I8, WeightFormat::Bf16, WeightFormat::F16] {
            for kern in KERNELS
                .iter()
                .filter(|k| k.format == f && k.isa == isa && k.available())
            {
                kernels.push(kern);
            }
        }
        let weights: Vec<PackedWeight> = kernels
            .iter()
            .map(|kern| PackedWeight::pack(&w, k, n, false, kern.format).unwrap())
            .collect();
        for thr in [1, 2] {
            threads::set_threads(thr);
            let mut outs = vec![vec![0f32; m * n]; kernels.len() + 1];
            let mut times = vec![Vec::new(); kernels.len() + 1];
            for round in 0..25 {
                let c = outs[0].as_mut_ptr();
                let g = GemmCall::new(m, n, k, a.as_ptr(), k, packed.as_ptr(), bias.as_ptr(), c, n);
                let t = Instant::now();
                // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
                unsafe { sgemm(&g, isa, Blocking::default_for(isa)) };
                let f32_time = t.elapsed().as_secs_f64();
                if round >= 3 {
                    times[0].push(f32_time);
                }
                for (i, (kern, pw)) in kernels.iter().zip(&weights).enumerate() {
                    let c = outs[i + 1].as_mut_ptr();
                    let g = QGemmCall::new(m, a.as_ptr(), k, pw, bias.as_ptr(), c, n);
                    let t = Instant::now();
                    // SAFETY: every pointer of the call is live and sized for m, n, k; the kernel is one this CPU has.
                    unsafe { qgemm(&g, kern, kern.blocking_for(m)) };
                    if round >= 3 {
                        times[i + 1].push(t.elapsed().as_secs_f64() / f32_time);
                    }
                }
            }
            let f32_med = median(&mut times[0].clone());
            let ops = 2.0 * (m * n * k) as f64;
            println!(
                "{name:<26} {:<26} {thr:>3} {:>10.3} {:>9.1} {:>8.1} {:>9}",
                format!("{}_mm_f32", isa.name()),
                f32_med * 1e3,
                ops / f32_med / 1e9,
                (n * k * 4) as f64 / f32_med / 1e9,
                "1.00"
            );
            for (i, (kern, pw)) in kernels.iter().zip(&weights).enumerate() {
                let ratio = median(&mut times[i + 1]);
                let t = ratio * f32_med;
                println!(
                    "{name:<26} {:<26} {thr:>3} {:>10.3} {:>9.1} {:>8.1} {:>9.2}",
                    kern.name,
                    t * 1e3,
                    ops / t / 1e9,
                    pw.stream_bytes() as f64 / t / 1e9,
                    ratio
                );
            }
        }
    }
    threads::set_threads(0);
}

/// How much int8 activation quantization costs, per scheme, on two kinds of inputs: the
/// relative RMS error of `A·W` (W int8 per column in every case) against f64.
/// 8-bit asymmetric is what the kernels do (every int8 kernel, AVX2 included, computes it
/// exactly); 7-bit asymmetric is what AVX2's `vpmaddubsw` would need to avoid i16 saturation.
fn activation_schemes() {
    let (m, n, k) = (64, 256, 768);
    let mut seed = 42u64;
    let mut uniform = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 40) as f64 / (1u64 << 24) as f64
    };
    // Roughly normal: a sum of 4 uniforms, scaled to unit variance.
    let mut normal = move || ((0..4).map(|_| uniform()).sum::<f64>() - 2.0) * 3f64.sqrt();
    let w: Vec<f32> = (0..n * k).map(|_| 0.05 * normal() as f32).collect();
    let normal_a: Vec<f32> = (0..m * k).map(|_| normal() as f32).collect();
    // Post-GELU inputs of an FFN's second matmul: skewed, mostly in [-0.17, 3].
    let gelu = |x: f64| 0.5 * x * (1.0 + (0.797_884_56 * (x + 0.044715 * x * x * x)).tanh());
    let gelu_a: Vec<f32> = normal_a
        .iter()
        .map(|&x| gelu(1.5 * x as f64) as f32)
        .collect();
    let wq = PackedWeight::pack(&w, k, n, true, WeightFormat::I8).unwrap();
    let (qw, sw) = (wq.quantized(), wq.scales());
    println!();
    println!("int8 activation schemes, relative RMS error of A·W ({m}x{k} · {k}x{n}, int8 W):");
    for (inputs, a) in [("normal", &normal_a), ("post-GELU", &gelu_a)] {
        for (scheme, levels) in [
            ("f32 (weight error alone)", None),
            ("u8 asymmetric (kernels)", Some(256)),
            ("7-bit asymmetric", Some(128)),
        ] {
            let mut qa = QuantRows::new();
            // SAFETY: `a` holds m rows of k floats, as the call says.
            unsafe { qa.quantize(a.as_ptr(), k, m, k, false, levels.unwrap_or(256)) };
            let (mut num, mut den) = (0f64, 0f64);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut q) = (0f64, 0f64);
                    for kk in 0..k {
                        exact += a[i * k + kk] as f64 * w[kk * n + j] as f64;
                        let av = match levels {
                            None => a[i * k + kk] as f64,
                            Some(_) => {
                                qa.scale[i] as f64
                                    * (qa.q[i * qa.kp + kk] as f64 - qa.zero[i] as f64)
                            }
                        };
                        q += av * qw[kk * n + j] as f64 * sw[j] as f64;
                    }
                    num += (q - exact).powi(2);
                    den += exact * exact;
                }
            }
            println!("  {inputs:<10} {scheme:<26} {:.2e}", (num / den).sqrt());
        }
    }
}

/// Where the narrow decode GEMV stops paying: each GEMV kernel against its own tile path
/// (`QKernel::tiles_only`) on GPT-2's c_fc (768 -> 3072) for M = 1..8 rows, 2 threads,
/// interleaved round by round; the ratio is the median of per-round GEMV / tiles times.
/// Each call takes the next of enough copies of the weight to overflow a 128 MiB cache,
/// so the weights come from DRAM as in a decode step (one c_fc alone stays in L3).
fn decode_rows() {
    let (n, k) = (3072, 768);
    threads::set_threads(2);
    println!();
    println!("gpt2_decode_rows_c_fc: GEMV vs tiles (GEMV runs up to {GEMV_ROWS} rows), 2 threads");
    println!(
        "{:<26} {:>3} {:>10} {:>10} {:>8} {:>9}",
        "kernel", "M", "gemv_ms", "tiles_ms", "GB/s", "gemv/til"
    );
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01)
        .collect();
    let bias = vec![0.1f32; n];
    let isa = Isa::detect();
    for kern in KERNELS
        .iter()
        .filter(|k| k.isa == isa && k.available() && k.has_gemv())
    {
        let tiles = kern.tiles_only();
        let one = PackedWeight::pack(&w, k, n, false, kern.format).unwrap();
        let copies = (128 << 20) / one.stream_bytes() + 1;
        let pws = vec![one; copies];
        let mut next = 0;
        for m in 1..=8 {
            let a = inputs(m, n, k).0;
            let mut c = vec![0f32; m * n];
            let (mut tg, mut tt, mut ratio) = (vec![], vec![], vec![]);
            for round in 0..40 {
                let mut time = |kern: &QKernel| {
                    next = (next + 1) % copies;
                    let g = QGemmCall::new(
                        m,
                        a.as_ptr(),
                        k,
                        &pws[next],
                        bias.as_ptr(),
                        c.as_mut_ptr(),
                        n,
                    );
                    let t = Instant::now();
                    // SAFETY: every pointer of the call is live and sized for m, n, k; the
                    // kernel is one this CPU has.
                    unsafe { qgemm(&g, kern, kern.blocking_for(m)) };
                    t.elapsed().as_secs_f64()
                };
                let (x, y) = (time(kern), time(&tiles));
                if round >= 4 {
                    tg.push(x);
                    tt.push(y);
                    ratio.push(x / y);
                }
            }
            let gm = median(&mut tg);
            println!(
                "{:<26} {m:>3} {:>10.4} {:>10.4} {:>8.1} {:>9.2}",
                kern.name,
                gm * 1e3,
                median(&mut tt) * 1e3,
                pws[0].stream_bytes() as f64 / gm / 1e9,
                median(&mut ratio)
            );
        }
    }
    threads::set_threads(0);
}

/// `-- kc_sweep` (see the top).
fn kc_sweep() {
    let rounds = if std::env::var_os("CRANFORMER_BENCH_QUICK").is_some() {
        4
    } else {
        24
    };
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
        let (a, w, bias) = inputs(m, n, k);
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
