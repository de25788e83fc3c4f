//! Per-call timing of [`super::cranformer_gemm`] for `bench --report`: when enabled, every
//! matmul the generated code runs is timed and recorded with its shape and resolved tiling,
//! so the report's "measured" column comes from the real run rather than a replay. Off by
//! default; one relaxed atomic load per call when off.

use super::{Blocking, GemmCall, Isa};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static ON: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<Timing>> = Mutex::new(Vec::new());

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

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Starts recording (clearing what was recorded).
pub fn start() {
    LOG.lock().unwrap().clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the calls in the order they ran.
pub fn stop() -> Vec<Timing> {
    ON.store(false, Ordering::Relaxed);
    std::mem::take(&mut *LOG.lock().unwrap())
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
