//! What `cranformer bench` prints: the comparison table or JSON lines, and the tiling report
//! of one profiled run.

use super::workload::Trace;
use super::{BenchArgs, Build, Task};
use anyhow::Result;
use cranformer_compiler::graph::{graph_cost, Cost};
use cranformer_compiler::Model;
use std::io::Write;
use std::time::Duration;

/// Timings of one engine over the timed runs.
pub(super) struct Sample {
    pub name: String,
    pub build: Build,
    pub totals: Vec<Duration>,
    pub decodes: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// The report rows of every call in `trace` (graphs as the JIT compiled them): each matmul
/// as the runtime ran it (its recorded ISA, blocking, threads and time; see
/// `tiling::report::ran`), the other kernels with their predictions. Without recorded
/// matmuls (no runtime matmul on this CPU: the generated kernel ran), the graph's matmul rows
/// stay, with the generated kernel the host profile picks.
pub(super) fn tiling_report(
    model: &Model,
    trace: &Trace,
    timings: &[cranformer_runtime::gemm::profile::Timing],
) -> Result<(
    Vec<cranformer_compiler::tiling::report::Row>,
    cranformer_compiler::tiling::MachineProfile,
)> {
    use cranformer_compiler::tiling::{report, MachineProfile};
    let profile = MachineProfile::host();
    let optimized = model.optimized(None)?;
    let weights: u64 = trace
        .first()
        .map(|(e, d, _)| graph_cost(&optimized[e], d).weight_bytes)
        .unwrap_or(0);
    let mut rows = vec![];
    for (entry, dims, _) in trace {
        report::merge(
            &mut rows,
            report::rows(&optimized[entry], dims, &profile, weights),
        );
    }
    if !timings.is_empty() {
        rows.retain(|r| r.matmul.is_none());
        rows.extend(report::ran(timings, &profile, weights));
    }
    Ok((rows, profile))
}

pub(super) struct Report<'a> {
    pub model: String,
    pub architecture: String,
    pub task: Task,
    pub args: &'a BenchArgs,
    pub threads: usize,
    pub load: Duration,
    pub cost: Cost,
    pub decode_cost: Cost,
    pub matmul_flops: u64,
}

impl Report<'_> {
    fn generate(&self) -> bool {
        self.task == Task::Generate
    }

    fn interp_median(&self, samples: &[Sample]) -> Option<Duration> {
        samples
            .iter()
            .find(|s| s.name == "interp")
            .map(|s| median(&s.totals))
    }

    /// Threads an engine ran on: the interpreter always one, compiled code the runtime's.
    fn engine_threads(&self, s: &Sample) -> usize {
        if s.name == "interp" {
            1
        } else {
            self.threads
        }
    }

    fn gflops(cost: &Cost, d: Duration) -> f64 {
        cost.flops as f64 / d.as_secs_f64().max(1e-12) / 1e9
    }

    pub(super) fn json(&self, samples: &[Sample], out: &mut dyn Write) -> Result<()> {
        let a = self.args;
        let interp = self.interp_median(samples);
        for s in samples {
            let med = median(&s.totals);
            let mut o = serde_json::json!({
                "engine": s.name,
                "task": self.task.name(),
                "median_ms": ms(med),
                "min_ms": ms(*s.totals.iter().min().expect("at least one run")),
                "runs": s.totals.len(),
                "gflops": Self::gflops(&self.cost, med),
                "model": self.model,
                "architecture": self.architecture,
                "batch": a.batch,
                "threads": self.engine_threads(s),
                "warmup": a.warmup,
                "flops": self.cost.flops,
                "matmul_flops": self.matmul_flops,
                "weight_bytes": self.cost.weight_bytes,
                "activation_bytes": self.cost.act_read_bytes + self.cost.act_write_bytes,
                "build_ms": ms(s.build.total),
                "load_ms": ms(self.load),
            });
            let m = o.as_object_mut().expect("built as an object");
            if let Some(c) = s.build.compile {
                m.insert("compile_ms".into(), ms(c).into());
            }
            if let Some(p) = s.build.prepare {
                m.insert("prepare_ms".into(), ms(p).into());
            }
            if let Some(l) = s.build.link {
                m.insert("link_ms".into(), ms(l).into());
            }
            if let Some(i) = interp {
                m.insert(
                    "ratio_to_interp".into(),
                    (i.as_secs_f64() / med.as_secs_f64().max(1e-12)).into(),
                );
            }
            if self.generate() {
                let dec = median(&s.decodes);
                m.insert("prompt_tokens".into(), a.prompt_tokens.into());
                m.insert("new_tokens".into(), a.new_tokens.into());
                m.insert(
                    "ms_per_new_token".into(),
                    (ms(dec) / a.new_tokens as f64).into(),
                );
                m.insert(
                    "decode_gflops".into(),
                    Self::gflops(&self.decode_cost, dec).into(),
                );
            } else {
                m.insert("seq".into(), a.seq.into());
            }
            writeln!(out, "{o}")?;
        }
        Ok(())
    }

    pub(super) fn table(&self, samples: &[Sample], out: &mut dyn Write) -> Result<()> {
        let a = self.args;
        let shape = if self.generate() {
            format!(
                "generate, batch {}, {} prompt + {} new tokens",
                a.batch, a.prompt_tokens, a.new_tokens
            )
        } else {
            format!("forward, batch {}, seq {}", a.batch, a.seq)
        };
        writeln!(
            out,
            "{} ({}): {shape}; compiled engines on {} thread{} (interp on 1); {} run{} per engine after {} warm-up, interleaved",
            self.model,
            self.architecture,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            a.runs,
            if a.runs == 1 { "" } else { "s" },
            a.warmup
        )?;
        writeln!(
            out,
            "work per run: {:.3} GFLOP ({:.1}% in matmuls), {:.1} MB of weights and {:.1} MB of \
             activations moved; model ready in {:.0} ms",
            self.cost.flops as f64 / 1e9,
            100.0 * self.matmul_flops as f64 / self.cost.flops.max(1) as f64,
            self.cost.weight_bytes as f64 / 1e6,
            (self.cost.act_read_bytes + self.cost.act_write_bytes) as f64 / 1e6,
            ms(self.load)
        )?;
        let interp = self.interp_median(samples);
        let mut header = format!(
            "{:<8} {:>7} {:>10} {:>11} {:>11} {:>9}",
            "engine", "threads", "build ms", "median ms", "min ms", "GFLOP/s"
        );
        if self.generate() {
            header += &format!(" {:>11} {:>14}", "ms/token", "decode GFLOP/s");
        }
        if interp.is_some() {
            header += &format!(" {:>10}", "vs interp");
        }
        writeln!(out, "{header}")?;
        for s in samples {
            let med = median(&s.totals);
            let min = *s.totals.iter().min().expect("at least one run");
            let mut line = format!(
                "{:<8} {:>7} {:>10.1} {:>11.2} {:>11.2} {:>9.2}",
                s.name,
                self.engine_threads(s),
                ms(s.build.total),
                ms(med),
                ms(min),
                Self::gflops(&self.cost, med)
            );
            if self.generate() {
                let dec = median(&s.decodes);
                line += &format!(
                    " {:>11.2} {:>14.2}",
                    ms(dec) / a.new_tokens as f64,
                    Self::gflops(&self.decode_cost, dec)
                );
            }
            if let Some(i) = interp {
                line += &format!(" {:>9.2}x", i.as_secs_f64() / med.as_secs_f64());
            }
            writeln!(out, "{line}")?;
        }
        for s in samples {
            if let (Some(c), Some(p)) = (s.build.compile, s.build.prepare) {
                let link = s
                    .build
                    .link
                    .map(|l| format!(", linked and loaded in {:.1} ms", ms(l)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}: code generated in {:.1} ms{link}, weights laid out in {:.1} ms",
                    s.name,
                    ms(c),
                    ms(p)
                )?;
            }
        }
        Ok(())
    }
}
