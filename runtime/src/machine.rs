//! A machine as the roofline model sees it: peak FP32 FMA throughput per vector width and
//! thread count, and the read bandwidth and size of each memory level. `cranformer roofline`
//! measures the host's profile and caches it as JSON (see `src/roofline.rs`); without that
//! measurement the profile is estimated from the host's own facts (cores this process may
//! use, cache sizes from sysfs or cpuid, ISA). Three fixed profiles give the golden tests
//! machines that never change.
//!
//! The runtime reads the profile of the machine it runs on when it resolves each matmul's
//! tiling (`gemm::plan`), so a compiled executable moved to another machine tiles and
//! threads for that machine; whatever core count a profile was measured with, it is fitted
//! to the cores this process has ([`MachineProfile::fit_cores`]), never a cap.

use serde::{Deserialize, Serialize};

/// Peak FP32 FMA throughput with `bits`-wide vectors on `threads` threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub bits: u32,
    pub threads: usize,
    pub gflops: f64,
}

/// One level of the memory hierarchy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// "L1", "L2", "L3" or "DRAM".
    pub name: String,
    /// Capacity in bytes: per core for L1 and L2, shared for L3; 0 for DRAM (unbounded).
    pub bytes: u64,
    /// Read bandwidth in GB/s on one thread and on all cores (together).
    pub read_gbs_1t: f64,
    pub read_gbs_all: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineProfile {
    /// A fixed profile's name, or the CPU's model name when measured.
    pub name: String,
    pub cores: usize,
    pub peaks: Vec<Peak>,
    /// Fastest first: L1, L2, L3, DRAM.
    pub levels: Vec<Level>,
    /// DRAM triad bandwidth on all cores (GB/s), if measured (0 otherwise).
    #[serde(default)]
    pub dram_triad_gbs: f64,
    /// Where the profile came from: "fixed", or "measured <date>".
    #[serde(default)]
    pub source: String,
}

impl MachineProfile {
    /// The widest vector width with a measured peak.
    pub fn max_bits(&self) -> u32 {
        self.peaks.iter().map(|p| p.bits).max().unwrap_or(128)
    }

    pub fn has_bits(&self, bits: u32) -> bool {
        self.peaks.iter().any(|p| p.bits == bits)
    }

    /// Peak GFLOP/s at `bits` on `threads` threads: linear between the 1-thread and the
    /// all-core measurements.
    pub fn peak_gflops(&self, bits: u32, threads: usize) -> f64 {
        let at = |t: usize| {
            self.peaks
                .iter()
                .find(|p| p.bits == bits && p.threads == t)
                .map(|p| p.gflops)
        };
        let one = at(1).unwrap_or(0.0);
        let all = at(self.cores).unwrap_or(one * self.cores as f64);
        lerp(one, all, threads, self.cores)
    }

    /// Read bandwidth of `level` (index into `levels`) in GB/s on `threads` threads.
    pub fn read_gbs(&self, level: usize, threads: usize) -> f64 {
        let l = &self.levels[level];
        lerp(l.read_gbs_1t, l.read_gbs_all, threads, self.cores)
    }

    /// The first level that holds `bytes` (DRAM if none does).
    pub fn home(&self, bytes: u64) -> usize {
        self.levels
            .iter()
            .position(|l| l.bytes == 0 || bytes <= l.bytes)
            .unwrap_or(self.levels.len() - 1)
    }

    pub fn level(&self, name: &str) -> Option<usize> {
        self.levels.iter().position(|l| l.name == name)
    }

    /// The three fixed profiles, by name.
    pub fn fixed(name: &str) -> Option<MachineProfile> {
        Some(match name {
            "avx512-server" => avx512_server(),
            "avx2-laptop" => avx2_laptop(),
            "sse-128" => sse_128(),
            _ => return None,
        })
    }

    pub const FIXED: [&'static str; 3] = ["avx512-server", "avx2-laptop", "sse-128"];

    /// The host's profile as this process uses it: [`MachineProfile::host_all_cores`] limited
    /// to the threads kernels run on ([`crate::threads::threads`], `--threads`).
    pub fn host() -> MachineProfile {
        let mut p = MachineProfile::host_all_cores();
        p.limit_threads(crate::threads::threads());
        p
    }

    /// The same machine used with at most `t` threads (`--threads`): the all-core figures
    /// become those of `t` cores.
    pub fn limit_threads(&mut self, t: usize) {
        let t = t.clamp(1, self.cores);
        if t == self.cores {
            return;
        }
        let peaks: Vec<Peak> = self
            .peaks
            .iter()
            .filter(|x| x.threads == 1)
            .flat_map(|x| {
                let all = self.peak_gflops(x.bits, t);
                [
                    x.clone(),
                    Peak {
                        threads: t,
                        gflops: all,
                        ..x.clone()
                    },
                ]
            })
            .collect();
        for i in 0..self.levels.len() {
            self.levels[i].read_gbs_all = self.read_gbs(i, t);
        }
        self.peaks = peaks;
        if t == 1 {
            self.peaks.retain(|x| x.threads == 1);
        }
        self.cores = t;
    }

    /// The host's profile on every core this process may use: `CRANFORMER_PROFILE=<fixed name
    /// or JSON file>` if set, else the cached measurement of `cranformer roofline` for this
    /// CPU, else [`MachineProfile::from_host_facts`]; fitted to the host's cores and to the
    /// vector widths the runtime's ISA uses (`CRANFORMER_ISA`).
    pub fn host_all_cores() -> MachineProfile {
        let mut p = MachineProfile::host_unfitted();
        p.fit_cores(host_cores());
        p.limit_bits(crate::gemm::detected().bits());
        p
    }

    fn host_unfitted() -> MachineProfile {
        if let Ok(v) = std::env::var("CRANFORMER_PROFILE") {
            if let Some(p) = MachineProfile::fixed(&v) {
                return p;
            }
            if let Some(p) = load(std::path::Path::new(&v)) {
                return p;
            }
        }
        if let Some(p) = cache_path().and_then(|path| load(&path)) {
            return p;
        }
        MachineProfile::from_host_facts()
    }

    /// An estimate of this host from its facts, for when nothing was measured: cores this
    /// process may use, cache sizes (sysfs, else cpuid), the widest vectors the CPU runs and
    /// its nominal clock. Peaks assume two FMA pipes of the full width per core; bandwidths
    /// use bytes per cycle typical of recent x86-64 cores. Only the relative costs matter to
    /// the tile picker, so the estimate picks the same tilings as a measurement in most cases.
    pub fn from_host_facts() -> MachineProfile {
        let cores = host_cores();
        let (l1, l2, l3) = cache_sizes();
        let ghz = clock_ghz();
        let isa = crate::gemm::detect_hardware();
        let widths: Vec<u32> = [512, 256, 128]
            .into_iter()
            .filter(|&b| b <= isa.bits().max(128))
            .collect();
        // Peaks are measured, briefly (about 1 ms a run, best of 3): a guess from the clock
        // and two FMA pipes of full width overstates CPUs that split 512-bit FMAs in two
        // (AMD Zen 4) or have one 512-bit pipe, by up to 2x.
        let per_width: Vec<(u32, f64)> = widths
            .iter()
            .map(|&b| {
                let best = (0..3).map(|_| fma_gflops(b, 100_000)).fold(0f64, f64::max);
                (b, best)
            })
            .collect();
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        let c = cores as f64;
        // Bytes per cycle per core: L1 two loads of the widest vector, L2 half of that, L3 a
        // quarter (shared: at most 8 cores' worth together), DRAM ~12 GB/s a core up to a
        // dual-channel ~40 GB/s.
        let l1_bpc = (2 * isa.bits().max(128) / 8) as f64;
        let levels = vec![
            level(
                "L1",
                or(l1, 32 << 10) / 1024,
                ghz * l1_bpc,
                ghz * l1_bpc * c,
            ),
            level(
                "L2",
                or(l2, 512 << 10) / 1024,
                ghz * l1_bpc / 2.0,
                ghz * l1_bpc / 2.0 * c,
            ),
            level(
                "L3",
                or(l3, 8 << 20) / 1024,
                ghz * 16.0,
                ghz * 16.0 * c.min(8.0),
            ),
            level("DRAM", 0, 12.0, (12.0 * c).min(40.0)),
        ];
        MachineProfile {
            name: cpu_name(),
            cores,
            peaks: peaks(cores, &per_width),
            levels,
            dram_triad_gbs: 0.0,
            source: format!(
                "estimated from host facts ({cores} cores, {ghz:.1} GHz, FMA peaks from a short run; no measurement in {:?})",
                cache_path()
            ),
        }
    }

    /// The same kind of machine with `cores` cores: fewer limits it as
    /// [`MachineProfile::limit_threads`]; more extends the all-core figures (peaks and the
    /// private caches' bandwidth per core as measured, shared L3 and DRAM bandwidth as on all
    /// the measured cores, which never overstates them). A profile measured or fixed for
    /// another core count so never caps the threads of the machine that runs.
    pub fn fit_cores(&mut self, cores: usize) {
        let cores = cores.max(1);
        if cores <= self.cores {
            self.limit_threads(cores);
            return;
        }
        let old = self.cores;
        let per_core = |one: f64, all: f64| if old > 1 { all / old as f64 } else { one };
        let mut peaks = vec![];
        let mut bits: Vec<u32> = self.peaks.iter().map(|p| p.bits).collect();
        bits.sort_unstable_by(|a, b| b.cmp(a));
        bits.dedup();
        for b in bits {
            let one = self.peak_gflops(b, 1);
            let all = self.peak_gflops(b, old);
            peaks.push(Peak {
                bits: b,
                threads: 1,
                gflops: one,
            });
            peaks.push(Peak {
                bits: b,
                threads: cores,
                gflops: per_core(one, all) * cores as f64,
            });
        }
        for l in self.levels.iter_mut() {
            if l.name == "L1" || l.name == "L2" {
                l.read_gbs_all = per_core(l.read_gbs_1t, l.read_gbs_all) * cores as f64;
            } else {
                l.read_gbs_all = l.read_gbs_all.max(l.read_gbs_1t);
            }
        }
        self.peaks = peaks;
        self.cores = cores;
    }

    /// Drops the peaks of vectors wider than `bits` (a CPU or `CRANFORMER_ISA` without them).
    pub fn limit_bits(&mut self, bits: u32) {
        let bits = bits.max(128);
        if self.peaks.iter().any(|p| p.bits <= bits) {
            self.peaks.retain(|p| p.bits <= bits);
        }
    }
}

/// Cores this process may run on: the affinity mask and a cgroup CPU quota (`cpu.max`)
/// both lower it (`std::thread::available_parallelism` reads both on recent Linux; the quota
/// is read here too, by [`crate::threads::cpu_max_limit`], so the rule does not depend on
/// it). Read once: it reads files, and kernels ask on every call.
pub fn host_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The container's CPU quota (cgroup v2 `cpu.max`) caps them too.
        let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
            .ok()
            .and_then(|s| crate::threads::cpu_max_limit(&s));
        quota.map_or(cores, |q| cores.min(q))
    })
}

/// The nominal clock in GHz: cpufreq's maximum, else /proc/cpuinfo's "cpu MHz", else 2.5.
/// GFLOP/s of this thread's loop of independent FMAs at `bits`, `iters` steps of 24 (12
/// below 512 bits) vector FMAs: `cranformer roofline` runs 20 M steps, the load-time
/// estimate a few short runs.
pub fn fma_gflops(bits: u32, iters: u64) -> f64 {
    let t = std::time::Instant::now();
    let (flops, sink) = fma_loop(bits, iters);
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    flops / secs / 1e9
}

/// Runs `iters` steps of independent FMAs at `bits` (as [`fma_gflops`]); returns the FLOPs
/// done and a value to keep.
pub fn fma_loop(bits: u32, iters: u64) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        match bits {
            // SAFETY: each of the three runs only where its target features were detected.
            512 if is_x86_feature_detected!("avx512f") => return unsafe { fma512(iters) },
            256 if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") => {
                return unsafe { fma256(iters) }
            }
            // SAFETY: as above.
            128 if is_x86_feature_detected!("fma") => return unsafe { fma128(iters) },
            _ => {}
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn fma512(iters: u64) -> (f64, f32) {
            let mut acc = [_mm512_set1_ps(1.0); 24];
            let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, a, b);
                }
            }
            let s = acc
                .iter()
                .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
            ((iters * 24 * 16 * 2) as f64, _mm512_reduce_add_ps(s))
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma256(iters: u64) -> (f64, f32) {
            let mut acc = [_mm256_set1_ps(1.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            let mut out = [0f32; 8];
            let s = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            ((iters * 12 * 8 * 2) as f64, out.iter().sum())
        }
        #[target_feature(enable = "fma")]
        unsafe fn fma128(iters: u64) -> (f64, f32) {
            let mut acc = [_mm_set1_ps(1.0); 12];
            let (a, b) = (_mm_set1_ps(0.999_999), _mm_set1_ps(1e-7));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm_fmadd_ps(*x, a, b);
                }
            }
            let mut out = [0f32; 4];
            let s = acc.iter().fold(_mm_setzero_ps(), |s, &x| _mm_add_ps(s, x));
            _mm_storeu_ps(out.as_mut_ptr(), s);
            ((iters * 12 * 4 * 2) as f64, out.iter().sum())
        }
    }
    // Portable: four-wide chains the compiler may vectorise.
    let mut acc = [[1f32; 4]; 16];
    for _ in 0..iters / 4 {
        for row in acc.iter_mut() {
            for x in row.iter_mut() {
                *x = x.mul_add(0.999_999, 1e-7);
            }
        }
    }
    ((iters / 4 * 16 * 4 * 2) as f64, acc[0][0])
}

fn clock_ghz() -> f64 {
    let max_khz = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    if let Some(k) = max_khz.filter(|&k| k > 0.0) {
        return k / 1e6;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|&m| m > 0.0)
        .map_or(2.5, |m| m / 1e3)
}

/// L1d (per core), L2 (per core), L3 (shared) in bytes: sysfs, else cpuid (0 when unknown).
pub fn cache_sizes() -> (u64, u64, u64) {
    let s = sysfs_cache_sizes();
    if s.0 != 0 && s.1 != 0 {
        return s;
    }
    let c = cpuid_cache_sizes();
    (
        if s.0 != 0 { s.0 } else { c.0 },
        if s.1 != 0 { s.1 } else { c.1 },
        if s.2 != 0 { s.2 } else { c.2 },
    )
}

fn sysfs_cache_sizes() -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        let (Some(level), Some(ty), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        if ty.trim() == "Instruction" {
            continue;
        }
        let bytes = parse_cache_size(&size);
        match level.trim() {
            "1" => out.0 = bytes,
            "2" => out.1 = bytes,
            "3" => out.2 = bytes,
            _ => {}
        }
    }
    out
}

/// sysfs's cache size: `48K`, `1024K`, `32M` or bytes (0 if unreadable).
pub fn parse_cache_size(size: &str) -> u64 {
    let size = size.trim();
    match size.strip_suffix('K') {
        Some(k) => k.parse::<u64>().unwrap_or(0) << 10,
        None => match size.strip_suffix('M') {
            Some(m) => m.parse::<u64>().unwrap_or(0) << 20,
            None => size.parse().unwrap_or(0),
        },
    }
}

/// The deterministic cache parameters of cpuid (leaf 4 on Intel, 0x8000_001D on AMD): the
/// data or unified cache of each level.
fn cpuid_cache_sizes() -> (u64, u64, u64) {
    #[allow(unused_mut)]
    let mut out = (0, 0, 0);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // cpuid exists on every x86-64 CPU; leaves past the maximum are checked below.
        let max_ext = __cpuid_count(0x8000_0000, 0).eax;
        let max_std = __cpuid_count(0, 0).eax;
        let leaf = if max_ext >= 0x8000_001D && __cpuid_count(0x8000_001D, 0).eax & 0x1f != 0 {
            0x8000_001D
        } else if max_std >= 4 {
            4
        } else {
            return out;
        };
        for sub in 0..16 {
            let r = __cpuid_count(leaf, sub);
            let ty = r.eax & 0x1f;
            if ty == 0 {
                break;
            }
            if ty == 2 {
                continue; // instruction cache
            }
            let ways = ((r.ebx >> 22) & 0x3ff) as u64 + 1;
            let parts = ((r.ebx >> 12) & 0x3ff) as u64 + 1;
            let line = (r.ebx & 0xfff) as u64 + 1;
            let sets = r.ecx as u64 + 1;
            let bytes = ways * parts * line * sets;
            match (r.eax >> 5) & 7 {
                1 => out.0 = bytes,
                2 => out.1 = bytes,
                3 => out.2 = bytes,
                _ => {}
            }
        }
    }
    out
}

fn load(path: &std::path::Path) -> Option<MachineProfile> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn lerp(one: f64, all: f64, threads: usize, cores: usize) -> f64 {
    if cores <= 1 || threads <= 1 {
        return one;
    }
    let t = (threads.min(cores) - 1) as f64 / (cores - 1) as f64;
    one + (all - one) * t
}

/// The CPU's model name from /proc/cpuinfo, as the kernel gives it (benchmarks print it).
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// A short name of this CPU for the cache file: the model name from /proc/cpuinfo, made
/// file-name safe.
pub fn cpu_name() -> String {
    let model = cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string());
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Where `cranformer roofline` keeps this CPU's profile:
/// `$XDG_CACHE_HOME/cranformer/roofline-<cpu>.json`, else `~/.cache/cranformer/...`.
pub fn cache_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("cranformer")
            .join(format!("roofline-{}.json", cpu_name())),
    )
}

fn level(name: &str, kib: u64, one: f64, all: f64) -> Level {
    Level {
        name: name.into(),
        bytes: kib * 1024,
        read_gbs_1t: one,
        read_gbs_all: all,
    }
}

fn peaks(cores: usize, per_width: &[(u32, f64)]) -> Vec<Peak> {
    let mut v = vec![];
    for &(bits, g) in per_width {
        v.push(Peak {
            bits,
            threads: 1,
            gflops: g,
        });
        if cores > 1 {
            v.push(Peak {
                bits,
                threads: cores,
                gflops: g * cores as f64 * 0.97,
            });
        }
    }
    v
}

/// This repository's benchmark machine (issue 4): 2 cores of an AVX-512 EPYC, 48 KiB L1d and
/// 1 MiB L2 per core, 32 MiB L3; measured 207/111/56 GFLOP/s per core at 512/256/128 bits,
/// DRAM ~12 GB/s on one thread, ~23 on two.
fn avx512_server() -> MachineProfile {
    MachineProfile {
        name: "avx512-server".into(),
        cores: 2,
        peaks: peaks(2, &[(512, 207.0), (256, 111.0), (128, 56.0)]),
        levels: vec![
            level("L1", 48, 380.0, 760.0),
            level("L2", 1024, 150.0, 300.0),
            level("L3", 32 * 1024, 60.0, 110.0),
            level("DRAM", 0, 12.0, 23.0),
        ],
        dram_triad_gbs: 23.2,
        source: "fixed".into(),
    }
}

/// A 4-core AVX2 laptop: 32 KiB L1d, 512 KiB L2 per core, 8 MiB L3, dual-channel DDR4.
fn avx2_laptop() -> MachineProfile {
    MachineProfile {
        name: "avx2-laptop".into(),
        cores: 4,
        peaks: peaks(4, &[(256, 100.0), (128, 50.0)]),
        levels: vec![
            level("L1", 32, 200.0, 800.0),
            level("L2", 512, 90.0, 360.0),
            level("L3", 8 * 1024, 45.0, 120.0),
            level("DRAM", 0, 15.0, 30.0),
        ],
        dram_triad_gbs: 28.0,
        source: "fixed".into(),
    }
}

/// A 4-core target with 128-bit vectors only (SSE or NEON class): 32 KiB L1d, 256 KiB L2,
/// 4 MiB L3.
fn sse_128() -> MachineProfile {
    MachineProfile {
        name: "sse-128".into(),
        cores: 4,
        peaks: peaks(4, &[(128, 32.0)]),
        levels: vec![
            level("L1", 32, 100.0, 400.0),
            level("L2", 256, 50.0, 200.0),
            level("L3", 4 * 1024, 30.0, 80.0),
            level("DRAM", 0, 10.0, 16.0),
        ],
        dram_triad_gbs: 15.0,
        source: "fixed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_of_fewer_cores_never_caps_the_host() {
        // The fixed 2-core server on a 16-core host: 16 threads, peaks per core as measured.
        let mut p = MachineProfile::fixed("avx512-server").unwrap();
        let per_core_all = p.peak_gflops(512, 2) / 2.0;
        p.fit_cores(16);
        assert_eq!(p.cores, 16);
        assert!((p.peak_gflops(512, 16) - per_core_all * 16.0).abs() < 1e-9);
        assert_eq!(p.peak_gflops(512, 1), 207.0);
        // Private caches scale with the cores, DRAM keeps the measured all-core figure.
        let l2 = p.level("L2").unwrap();
        assert_eq!(p.read_gbs(l2, 16), 150.0 * 16.0);
        assert_eq!(p.read_gbs(p.level("DRAM").unwrap(), 16), 23.0);
        // And fewer cores than measured: limited.
        let mut q = MachineProfile::fixed("avx2-laptop").unwrap();
        q.fit_cores(2);
        assert_eq!(q.cores, 2);
        assert!(q.peaks.iter().all(|x| x.threads <= 2));
    }

    #[test]
    fn narrower_isa_drops_wider_peaks() {
        let mut p = MachineProfile::fixed("avx512-server").unwrap();
        p.limit_bits(256);
        assert_eq!(p.max_bits(), 256);
        p.limit_bits(128);
        assert_eq!(p.max_bits(), 128);
    }

    #[test]
    fn host_facts_make_a_usable_profile() {
        let p = MachineProfile::from_host_facts();
        assert_eq!(p.cores, host_cores());
        assert_eq!(
            p.levels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["L1", "L2", "L3", "DRAM"]
        );
        assert!(p.levels.iter().all(|l| l.read_gbs_1t > 0.0));
        assert!(p.peak_gflops(p.max_bits(), 1) > 0.0);
        assert_eq!(parse_cache_size("48K\n"), 48 << 10);
        assert_eq!(parse_cache_size("32M"), 32 << 20);
        assert_eq!(parse_cache_size("junk"), 0);
    }
}
