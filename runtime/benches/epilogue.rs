//! `cargo bench -p cranformer-runtime --bench epilogue`: the matmul epilogue's activations per
//! ISA, applied tile by tile (the ISA's own tile: 12 × 32 for AVX-512, 6 × 16 for AVX2 and
//! 4 × 8 portable, as the kernels leave them) over a 128 × 3072 block (BERT-base's FFN at
//! seq 128) that is first copied from a source, on one thread.
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
                let (mr, nr) = (isa.mr(), isa.nr());
                for i in (0..m).step_by(mr) {
                    for j in (0..n).step_by(nr) {
                        // SAFETY: an mr × nr tile (fewer rows at the end) of the m × n block;
                        // the CPU has isa (at or below what was detected).
                        unsafe {
                            apply_on(
                                isa,
                                act,
                                c.as_mut_ptr().add(i * n + j),
                                n,
                                mr.min(m - i),
                                nr,
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
