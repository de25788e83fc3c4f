//! A machine as the roofline model sees it: peak FP32 FMA throughput per vector width and
//! thread count, and the read bandwidth and size of each memory level. `cranformer roofline`
//! measures the host's profile and caches it as JSON (see `src/roofline.rs`); three fixed
//! profiles give the golden tests (and cross-compilation) machines that never change.

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

    /// The host's profile without measuring: the cached measurement of `cranformer roofline`
    /// if there is one for this CPU, else the fixed profile of the widest vectors it has
    /// (`CRANFORMER_PROFILE=<name or file>` overrides both).
    pub fn host() -> MachineProfile {
        let mut p = MachineProfile::host_all_cores();
        p.limit_threads(cranformer_runtime::threads::threads());
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

    fn host_all_cores() -> MachineProfile {
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
        let mut p = match cranformer_runtime::gemm::detected() {
            cranformer_runtime::gemm::Isa::Avx512 => avx512_server(),
            cranformer_runtime::gemm::Isa::Avx2 => avx2_laptop(),
            cranformer_runtime::gemm::Isa::Portable => sse_128(),
        };
        p.source = format!("fixed (no measurement in {:?})", cache_path());
        p
    }
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

/// A short name of this CPU for the cache file: the model name from /proc/cpuinfo, made
/// file-name safe.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
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
