//! `cargo bench -p cranformer-runtime --bench epilogue`: the matmul epilogue's activations per
//! ISA, applied tile by tile (12 × 32, as the AVX-512 kernel leaves them) over a 128 × 3072
//! block (BERT-base's FFN at seq 128) that is first copied from a source, on one thread.
//! Prints ns per element with the copy's own time taken off (the `copy` row).

use cranformer_runtime::gemm::epilogue::apply_on;
use cranformer_runtime::gemm::{runnable, Act, Isa};
mod common;

fn main() {
    common::print_cpu();
    let (m, n) = (128usize, 3072usize);
    let src: Vec<f32> = (0..m * n)
        .map(|i| ((i % 97) as f32 - 48.0) * 0.08)
        .collect();
    let mut c = src.clone();
    let isas = runnable();
    println!("{:<12} {:>8} {:>10} {:>10}", "act", "isa", "ns/elem", "min");
    let mut time = |isa: Isa, act: Option<Act>| {
        common::median_and_min(3, 60, || {
            c.copy_from_slice(&src);
            if let Some(act) = act {
                for i in (0..m).step_by(12) {
                    for j in (0..n).step_by(32) {
                        // SAFETY: a 12 × 32 tile (fewer rows at the end) of the m × n block;
                        // the CPU has isa (at or below what was detected).
                        unsafe {
                            apply_on(
                                isa,
                                act,
                                c.as_mut_ptr().add(i * n + j),
                                n,
                                12.min(m - i),
                                32,
                                std::ptr::null(),
                            )
                        };
                    }
                }
            }
        })
    };
    let per = |t: f64| t * 1e9 / (m * n) as f64;
    for &isa in &isas {
        let (copy, copy_min) = time(isa, None);
        println!(
            "{:<12} {:>8} {:>10.3} {:>10.3}",
            "copy",
            isa.name(),
            per(copy),
            per(copy_min)
        );
        for act in [Act::Relu, Act::Gelu, Act::GeluTanh, Act::Silu] {
            let (med, min) = time(isa, Some(act));
            println!(
                "{:<12} {:>8} {:>10.3} {:>10.3}",
                act.name(),
                isa.name(),
                per(med - copy),
                per(min - copy_min)
            );
        }
    }
}
