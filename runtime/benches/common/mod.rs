//! What the kernel benchmarks share.

use std::time::Instant;

/// Runs `f` `warmup + runs` times; the median and the minimum of the last `runs`, in seconds.
// The gemm bench interleaves its own rounds and does not time through this.
#[allow(dead_code)]
pub fn median_and_min(warmup: usize, runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t = Instant::now();
        f();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

/// The first line of every kernel benchmark's output: the CPU its figures come from.
pub fn print_cpu() {
    println!(
        "cpu: {}",
        cranformer_runtime::machine::cpu_model().unwrap_or_else(|| "unknown".into())
    );
}
