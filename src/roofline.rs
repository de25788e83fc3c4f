//! `cranformer roofline`: measures this machine once and caches the profile the tile picker
//! and the runtime read (`cranformer_runtime::machine`), at
//! `$XDG_CACHE_HOME/cranformer/roofline-<cpu>.json` (else `~/.cache/cranformer/...`);
//! `--refresh` measures again.
//!
//! What is measured, in about 3 s:
//! - peak FP32 FMA throughput at each vector width the CPU has (128/256/512 bits), on one
//!   thread and on every core at once: a loop of independent FMAs on 24 (12 below 512 bits, where 16 registers hold them and the operands)
//!   accumulators, more than the FMA pipes' latency × throughput, so nothing waits;
//! - read bandwidth from buffers of half of L1, half of L2, a third of (each core's share
//!   of) L3, re-read run after run; for DRAM from 64 MiB per thread or more, eight times all
//!   the caches together (`dram_bytes`), one half read per run, so that what a run reads was
//!   last read two runs before; summing with the widest vectors into 8 accumulators, as one
//!   sequential stream and as four interleaved ones (the better counts); buffers of 2 MiB or
//!   more in memory advised for huge pages, as the packed weights are;
//! - DRAM triad (`a = b + s·c`, 3 × 32 MiB per thread);
//! - core count (affinity and cgroup quota) and cache sizes (sysfs, else cpuid).
//!
//! "Every core at once" means at once: the threads start each run together and a run lasts
//! until the last one ends (`together`).

use anyhow::{Context, Result};
use cranformer_compiler::tiling::roofline::{cache_path, cpu_name, Level, MachineProfile, Peak};
use cranformer_runtime::machine::fma_loop;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[derive(clap::Args)]
pub struct RooflineArgs {
    /// Print the profile as JSON.
    #[arg(long)]
    json: bool,
    /// Measure again even if a profile is cached.
    #[arg(long)]
    refresh: bool,
}

pub fn run(args: &RooflineArgs, out: &mut dyn Write) -> Result<()> {
    let path = cache_path().context("no cache directory: set XDG_CACHE_HOME or HOME")?;
    let cached = (!args.refresh)
        .then(|| std::fs::read_to_string(&path).ok())
        .flatten()
        .and_then(|s| serde_json::from_str::<MachineProfile>(&s).ok());
    let profile = match cached {
        Some(p) => p,
        None => {
            let p = measure();
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))
                .with_context(|| format!("creating {}", path.display()))?;
            std::fs::write(&path, serde_json::to_string_pretty(&p)?)
                .with_context(|| format!("writing {}", path.display()))?;
            p
        }
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&profile)?)?;
    } else {
        write!(out, "{}", describe(&profile))?;
        writeln!(out, "stored in {}", path.display())?;
    }
    Ok(())
}

pub fn describe(p: &MachineProfile) -> String {
    let mut s = format!("machine: {} ({} cores; {})\n", p.name, p.cores, p.source);
    s.push_str("peak FP32 FMA (GFLOP/s):\n");
    let mut bits: Vec<u32> = p.peaks.iter().map(|x| x.bits).collect();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    bits.dedup();
    for b in bits {
        s.push_str(&format!(
            "  {b:>3}-bit  1 thread {:>7.1}   {} threads {:>7.1}\n",
            p.peak_gflops(b, 1),
            p.cores,
            p.peak_gflops(b, p.cores)
        ));
    }
    s.push_str("read bandwidth (GB/s):\n");
    for l in &p.levels {
        let size = if l.bytes == 0 {
            "".to_string()
        } else if l.bytes >= 1 << 20 {
            format!("{} MiB", l.bytes >> 20)
        } else {
            format!("{} KiB", l.bytes >> 10)
        };
        s.push_str(&format!(
            "  {:<5} {:>8}  1 thread {:>7.1}   {} threads {:>7.1}\n",
            l.name, size, l.read_gbs_1t, p.cores, l.read_gbs_all
        ));
    }
    if p.dram_triad_gbs > 0.0 {
        s.push_str(&format!(
            "DRAM triad, {} threads: {:.1} GB/s\n",
            p.cores, p.dram_triad_gbs
        ));
    }
    s
}

/// Measures this machine.
pub fn measure() -> MachineProfile {
    let cores = cranformer_runtime::machine::host_cores();
    let caches = cranformer_runtime::machine::cache_sizes();
    let mut peaks = vec![];
    for bits in widths() {
        for t in if cores > 1 { vec![1, cores] } else { vec![1] } {
            peaks.push(Peak {
                bits,
                threads: t,
                gflops: fma_gflops_on(t, bits, 20_000_000),
            });
        }
    }
    let mut levels = vec![];
    for (name, bytes) in [
        ("L1", caches.0),
        ("L2", caches.1),
        ("L3", caches.2),
        ("DRAM", 0u64),
    ] {
        if bytes == 0 && name != "DRAM" {
            continue;
        }
        // A buffer that stays in this level: half of a private cache, a third of each
        // core's share of the shared one; for DRAM, far past every cache (`dram_bytes`).
        let per_thread = |t: usize| match name {
            "L1" | "L2" => bytes / 2,
            "L3" => bytes / 3 / t as u64,
            _ => dram_bytes(t, caches, cores),
        };
        let fresh = name == "DRAM";
        let one = read_gbs(1, per_thread(1) as usize, fresh);
        let all = if cores > 1 {
            read_gbs(cores, per_thread(cores) as usize, fresh)
        } else {
            one
        };
        levels.push(Level {
            name: name.into(),
            bytes,
            read_gbs_1t: one,
            read_gbs_all: all,
        });
    }
    let triad = triad_gbs(cores);
    MachineProfile {
        name: cpu_name(),
        cores,
        peaks,
        levels,
        dram_triad_gbs: triad,
        source: format!(
            "measured, unix time {}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
    }
}

/// Bytes each of `t` threads holds to measure DRAM: 64 MiB or more, and together at least eight
/// times all the caches' capacity. A run reads one half ([`read_gbs`]'s `fresh`), so between
/// two reads of a line the threads read four times the caches (STREAM's rule for its arrays).
/// At 64 MiB for one thread on a 32 MiB L3 (AMD EPYC Zen 5) the L3 served part of each pass:
/// 46-48 GB/s, against 42 GB/s reading a 154 MB weight panel in huge pages, where a decode GEMV
/// over the same memory reached 38-40 GB/s. At four times the caches re-read pass after pass,
/// it still did: 1 thread 47-50 GB/s and 2 threads 109-126, against 43-45 and 94-102 with each
/// line read once between four times the caches of other reads.
fn dram_bytes(t: usize, (l1, l2, l3): (u64, u64, u64), cores: usize) -> u64 {
    let caches = l3 + (l1 + l2) * cores as u64;
    (64u64 << 20).max((8 * caches).div_ceil(t.max(1) as u64))
}

/// Runs `run(&mut state, i)` for each `i < runs` on `t` threads at once, after `setup` on each,
/// and returns each run's wall time, from the first thread's start to the last one's end.
///
/// Before every run the threads wait for each other spinning, not asleep. Each thread timing
/// its own runs (the sum of their rates was the figure before) measured one core twice: a
/// thread woken from a sleeping barrier was put beside the one that woke it and ran after it,
/// so 2 threads' 0.8 ms L1 runs ran one after the other and each timed a core of its own
/// (AMD EPYC Zen 5, 2 cores: "524 GB/s" of L1 where the two together read 250, and DRAM 114-125
/// GB/s on 2 threads against 47 on 1).
fn together<S>(
    t: usize,
    runs: usize,
    setup: impl Fn() -> S + Sync,
    run: impl Fn(&mut S, usize) + Sync,
) -> Vec<f64> {
    let arrived = AtomicUsize::new(0);
    let windows: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..t)
            .map(|_| {
                s.spawn(|| {
                    let mut state = setup();
                    (0..runs)
                        .map(|i| {
                            arrived.fetch_add(1, Ordering::AcqRel);
                            let mut polls = 0u32;
                            while arrived.load(Ordering::Acquire) < t * (i + 1) {
                                std::hint::spin_loop();
                                polls = polls.wrapping_add(1);
                                // Sharing a core with the one still to arrive: let it run.
                                if polls.is_multiple_of(4096) {
                                    std::thread::yield_now();
                                }
                            }
                            let start = Instant::now();
                            run(&mut state, i);
                            (start, Instant::now())
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (0..runs)
        .map(|i| {
            let start = windows.iter().map(|w| w[i].0).min().unwrap();
            let end = windows.iter().map(|w| w[i].1).max().unwrap();
            (end - start).as_secs_f64().max(1e-9)
        })
        .collect()
}

/// GFLOP/s of `t` threads running [`fma_loop`] at `bits` together, `iters` steps each.
fn fma_gflops_on(t: usize, bits: u32, iters: u64) -> f64 {
    let flops = std::sync::Mutex::new(0.0);
    let secs = together(
        t,
        1,
        || (),
        |_, _| {
            let (f, sink) = fma_loop(bits, iters);
            std::hint::black_box(sink);
            *flops.lock().unwrap_or_else(|e| e.into_inner()) += f;
        },
    );
    flops.into_inner().unwrap_or_else(|e| e.into_inner()) / secs[0] / 1e9
}

fn widths() -> Vec<u32> {
    let mut v = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            v.push(512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(256);
        }
        if is_x86_feature_detected!("fma") {
            v.push(128);
        }
    }
    if v.is_empty() {
        v.push(128);
    }
    v
}

/// GB/s of `t` threads each reading its own `bytes` buffer, all at once ([`together`]): the
/// best run's. A cache level's buffer is read again and again (about 40 ms a run); with
/// `fresh` (DRAM) each run reads one half of it once, the halves in turn, so no run finds what
/// it reads still cached from the one before.
fn read_gbs(t: usize, bytes: usize, fresh: bool) -> f64 {
    read_from(t, floats(bytes), fresh, || read_buffer(floats(bytes)))
}

/// Floats in a read buffer of about `bytes`: whole KiB-multiples of 1024 floats.
fn floats(bytes: usize) -> usize {
    (bytes / 4).max(1024) / 1024 * 1024
}

/// [`read_gbs`] over the `n`-float buffers `buffer` gives each of the `t` threads.
fn read_from<B: std::ops::Deref<Target = [f32]>>(
    t: usize,
    n: usize,
    fresh: bool,
    buffer: impl Fn() -> B + Sync,
) -> f64 {
    let part = if fresh { n / 2 } else { n };
    let passes = if fresh {
        1
    } else {
        ((200 << 20) / (n * 4)).clamp(1, 100_000)
    };
    // Best of the runs (the first also warms a cache level's buffers), each the better of one
    // sequential stream and four interleaved ones: a core keeps more misses in flight over
    // several streams, as a matmul reading several weight panels at once does (one stream
    // understated DRAM against what llama.cpp reaches). Fresh runs read each half in each way
    // twice.
    let streams: &[usize] = if fresh {
        &[1, 1, 4, 4, 1, 1, 4, 4]
    } else {
        &[1, 4, 1, 4, 1, 4]
    };
    let secs = together(t, streams.len(), buffer, |buf, i| {
        let half = if fresh { i % 2 } else { 0 };
        let mut sink = 0f32;
        for _ in 0..passes {
            sink += sum(&buf[half * part..(half + 1) * part], streams[i]);
        }
        std::hint::black_box(sink);
    });
    let best = secs.into_iter().fold(f64::MAX, f64::min);
    (t * part * 4 * passes) as f64 / best / 1e9
}

/// DRAM's read bandwidth on a number of threads, measured as `roofline` does (its DRAM level)
/// and as often as asked from the same buffers, allocated once: `bench --dram` reads right
/// before and after each timed decode run, a fraction of a second apart, where `roofline`
/// runs seconds away from the decode it is set against (on a shared machine the bandwidth
/// changes within seconds). The buffers are first written by the thread that makes the
/// reader, as a model's weights are by the thread that loads them.
pub struct DramRead {
    threads: usize,
    bufs: Vec<ReadBuf>,
}

impl DramRead {
    pub fn new(threads: usize) -> DramRead {
        let threads = threads.max(1);
        let caches = cranformer_runtime::machine::cache_sizes();
        let cores = cranformer_runtime::machine::host_cores();
        let n = floats(dram_bytes(threads, caches, cores) as usize);
        DramRead {
            threads,
            bufs: (0..threads).map(|_| read_buffer(n)).collect(),
        }
    }

    /// GB/s of all the reader's threads reading DRAM at once, now (about 20 ms on 2 threads).
    pub fn gbs(&self) -> f64 {
        let next = AtomicUsize::new(0);
        let n = self.bufs[0].len();
        read_from(self.threads, n, true, || {
            &self.bufs[next.fetch_add(1, Ordering::Relaxed) % self.threads][..]
        })
    }
}

/// `n` floats to read, in memory as the packed weights get it: advised for huge pages
/// (`pages::LargeBuf`), where the hardware prefetchers run on past 4 KiB boundaries; an
/// ordinary allocation below 2 MiB.
fn read_buffer(n: usize) -> ReadBuf {
    match cranformer_runtime::pages::LargeBuf::zeroed(n) {
        Some(mut b) => {
            b.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i % 7) as f32);
            ReadBuf::Large(b)
        }
        None => ReadBuf::Small((0..n).map(|i| (i % 7) as f32).collect()),
    }
}

/// A buffer of [`read_buffer`].
enum ReadBuf {
    Large(cranformer_runtime::pages::LargeBuf),
    Small(Vec<f32>),
}

impl std::ops::Deref for ReadBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            ReadBuf::Large(b) => b,
            ReadBuf::Small(v) => v,
        }
    }
}

/// Sums `buf` read as `streams` interleaved sequential streams (its equal parts, a
/// 512-byte step of each in turn), with the widest vectors the CPU has.
fn sum(buf: &[f32], streams: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected just above.
            return unsafe { sum512(buf, streams) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above.
            return unsafe { sum256(buf, streams) };
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn sum512(buf: &[f32], streams: usize) -> f32 {
            use std::arch::x86_64::*;
            let mut acc = [_mm512_setzero_ps(); 8];
            let part = buf.len() / streams;
            for i in (0..part / 128 * 128).step_by(128) {
                for s in 0..streams {
                    let p = buf.as_ptr().add(s * part + i);
                    for (j, a) in acc.iter_mut().enumerate() {
                        // 16 floats at s * part + i + 16 * j, j < 8: i + 128 <= part, so
                        // within part s of buf.
                        *a = _mm512_add_ps(*a, _mm512_loadu_ps(p.add(16 * j)));
                    }
                }
            }
            let s = acc
                .iter()
                .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
            _mm512_reduce_add_ps(s)
        }
        // Before, an AVX2 CPU summed with the baseline's 128-bit vectors, and its L1 and L2
        // figures measured the adds rather than the caches.
        #[target_feature(enable = "avx2")]
        unsafe fn sum256(buf: &[f32], streams: usize) -> f32 {
            use std::arch::x86_64::*;
            let mut acc = [_mm256_setzero_ps(); 8];
            let part = buf.len() / streams;
            for i in (0..part / 64 * 64).step_by(64) {
                for s in 0..streams {
                    let p = buf.as_ptr().add(s * part + i);
                    for (j, a) in acc.iter_mut().enumerate() {
                        // 8 floats at s * part + i + 8 * j, j < 8: i + 64 <= part, so
                        // within part s of buf.
                        *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(8 * j)));
                    }
                }
            }
            let mut out = [0f32; 8];
            let s = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
    }
    let _ = streams;
    let mut acc = [0f32; 32];
    for chunk in buf.chunks_exact(32) {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum()
}

/// DRAM triad GB/s of `t` threads at once ([`together`]): `a = b + s·c` over 32 MiB arrays
/// each, counted as two reads and one write; the best of 3 runs.
fn triad_gbs(t: usize) -> f64 {
    let n = 8 << 20;
    let secs = together(
        t,
        3,
        || (vec![1f32; n], vec![2f32; n], vec![0f32; n]),
        |(b, c, a), _| {
            for ((x, y), z) in a.iter_mut().zip(&*b).zip(&*c) {
                *x = y + 3.0 * z;
            }
            std::hint::black_box(&a);
        },
    );
    let best = secs.into_iter().fold(f64::MAX, f64::min);
    (t * 3 * n * 4) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::{dram_bytes, together, DramRead};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_run_starts_once_all_threads_finished_the_one_before() {
        let (t, runs) = (3, 5);
        let done = AtomicUsize::new(0);
        let started = AtomicUsize::new(0);
        let secs = together(
            t,
            runs,
            || 7u64,
            |state, i| {
                *state += 1;
                // Every thread finished run i - 1 and none has begun run i + 1.
                assert!(done.load(Ordering::Acquire) >= t * i, "run {i} began early");
                assert!(started.fetch_add(1, Ordering::AcqRel) < t * (i + 1));
                std::hint::black_box((0..10_000u64).sum::<u64>() + *state);
                done.fetch_add(1, Ordering::AcqRel);
            },
        );
        assert_eq!(secs.len(), runs);
        assert!(secs.iter().all(|&s| s > 0.0));
        assert_eq!(done.into_inner(), t * runs);
    }

    #[test]
    fn a_dram_reader_reads_its_buffers_again_and_again() {
        let r = DramRead::new(2);
        assert_eq!(r.bufs.len(), 2);
        for _ in 0..3 {
            let gbs = r.gbs();
            assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
        }
    }

    #[test]
    fn the_dram_buffers_halves_are_four_times_every_cache() {
        const MIB: u64 = 1 << 20;
        // 2 cores, 48 KiB L1 and 1 MiB L2 each, 32 MiB L3 (AMD EPYC Zen 5): 8 x 34.1 MiB.
        let zen5 = (48 << 10, MIB, 32 * MIB);
        let all = 8 * (32 * MIB + 2 * (MIB + (48 << 10)));
        assert_eq!(dram_bytes(1, zen5, 2), all);
        assert_eq!(dram_bytes(2, zen5, 2), 136 * MIB + (384 << 10));
        // Each of 2 threads reads a half a run: together four times the caches.
        assert!(dram_bytes(2, zen5, 2) / 2 * 2 >= all / 2);
        // Small caches: never under 64 MiB a thread.
        assert_eq!(dram_bytes(1, (32 << 10, 256 << 10, 4 * MIB), 4), 64 * MIB);
        // Many cores on a large L3: the threads' halves share the four times.
        let big = (48 << 10, 2 * MIB, 384 * MIB);
        for t in [1, 8, 96] {
            assert!(
                dram_bytes(t, big, 96) / 2 * t as u64
                    >= 4 * (384 * MIB + 96 * (2 * MIB + (48 << 10)))
            );
        }
        // No cache sizes known, no threads: 64 MiB.
        assert_eq!(dram_bytes(0, (0, 0, 0), 1), 64 * MIB);
    }
}
