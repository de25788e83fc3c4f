//! Per-call timing of the runtime kernels generated code calls, for `bench --report`: when
//! enabled, every matmul ([`super::cranformer_gemm`] and the narrow one) is timed and recorded
//! with its shape and resolved tiling, and every attention and norm call with the ISA and
//! threads it ran with, so the report's "measured" column and its tiling come from the real
//! run rather than a replay or a recomputation. Off by default; one relaxed atomic load per
//! call when off.

use super::{Blocking, GemmCall, Isa};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static ON: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<Timing>> = Mutex::new(Vec::new());
static KERNELS: Mutex<Vec<KernelTiming>> = Mutex::new(Vec::new());

/// One timed matmul call.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub act: u32,
    pub residual: bool,
    pub isa: Isa,
    pub kc: usize,
    pub mc: usize,
    pub threads: usize,
    pub seconds: f64,
    /// How B was stored, the micro-kernel that ran (the ISA's name for f32) and its
    /// multiply-adds per 32-bit lane per instruction ([`super::plan::Problem::macs_per_lane`]).
    pub format: super::WeightFormat,
    pub kernel: &'static str,
    pub macs_per_lane: u32,
}

/// One timed call of a runtime kernel other than the matmuls.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTiming {
    /// The graph op it computes, as the compiler names it: `attention`, `layer_norm`,
    /// `add_layer_norm`, `rms_norm`, `add_rms_norm`, `l2_normalize`.
    pub kernel: &'static str,
    pub isa: Isa,
    pub threads: usize,
    pub seconds: f64,
}

/// What a recording holds, each list in the order the calls ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub matmuls: Vec<Timing>,
    pub kernels: Vec<KernelTiming>,
}

/// Serialises the tests that record: recording is process-wide.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Starts recording (clearing what was recorded).
pub fn start() {
    LOG.lock().unwrap().clear();
    KERNELS.lock().unwrap().clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the calls.
pub fn stop() -> Recorded {
    ON.store(false, Ordering::Relaxed);
    Recorded {
        matmuls: std::mem::take(&mut *LOG.lock().unwrap()),
        kernels: std::mem::take(&mut *KERNELS.lock().unwrap()),
    }
}

/// Runs `call` (which returns the ISA and threads it ran with), recording it as `kernel`
/// while recording is on.
pub(crate) fn kernel<E>(
    kernel: &'static str,
    call: impl FnOnce() -> Result<(Isa, usize), E>,
) -> Result<(), E> {
    if !enabled() {
        return call().map(|_| ());
    }
    let t = std::time::Instant::now();
    let (isa, threads) = call()?;
    let seconds = t.elapsed().as_secs_f64();
    KERNELS.lock().unwrap().push(KernelTiming {
        kernel,
        isa,
        threads,
        seconds,
    });
    Ok(())
}

pub(super) fn record(g: &GemmCall, isa: Isa, bl: Blocking, threads: usize, d: Duration) {
    LOG.lock().unwrap().push(Timing {
        m: g.m,
        n: g.n,
        k: g.k,
        act: g.act,
        residual: !g.residual.is_null(),
        isa,
        kc: bl.kc,
        mc: bl.mc,
        threads,
        seconds: d.as_secs_f64(),
        format: super::WeightFormat::F32,
        kernel: isa.name(),
        macs_per_lane: 1,
    });
}

pub(super) fn record_q(
    g: &super::QGemmCall,
    kernel: &super::QKernel,
    bl: Blocking,
    threads: usize,
    d: Duration,
) {
    LOG.lock().unwrap().push(Timing {
        m: g.m,
        n: g.n,
        k: g.k,
        act: g.act,
        residual: !g.residual.is_null(),
        isa: kernel.isa,
        kc: bl.kc,
        mc: bl.mc,
        threads,
        seconds: d.as_secs_f64(),
        format: kernel.format,
        kernel: kernel.name,
        macs_per_lane: kernel.macs_per_lane(),
    });
}
