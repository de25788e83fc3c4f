//! What `cranformer bench` prints: the comparison table or JSON lines, and the tiling report
//! of one profiled run.

use super::workload::Trace;
use super::{BenchArgs, Build, Task};
use anyhow::Result;
use cranformer_compiler::codegen::WeightFormat;
use cranformer_compiler::graph::{graph_cost_as, Cost};
use cranformer_compiler::Model;
use std::io::Write;
use std::time::Duration;

/// Timings of one engine (with one weight format) over the timed runs.
pub(super) struct Sample {
    pub name: String,
    pub engine: cranformer_runtime::cli::EngineKind,
    pub dtype: WeightFormat,
    pub build: Build,
    pub totals: Vec<Duration>,
    pub decodes: Vec<Duration>,
    /// With `--dram`, per timed run: its decode steps' time and DRAM's read (GB/s) right
    /// before and after the run.
    pub dram: Vec<(Duration, f64, f64)>,
    /// What the first timed run computed (`Times::last`) and its greedy picks.
    pub result: Option<(cranformer_runtime::Outputs, Vec<i64>)>,
}

/// A sample's decode weight stream against DRAM's read around each run (`bench --dram`).
/// Each run is set against the higher of its two reads: a run between a slow read and a
/// fast one may have run partly fast. On a shared machine whose bandwidth jumps every few
/// seconds (AMD EPYC Zen 5 KVM guest: 2-thread reads of 51-57 and 91-95 GB/s, alternating
/// within 10-30 s), such a run's share understates the decode, so the runs whose two reads
/// agree within [`STEADY`] are also summed up apart.
pub(super) struct DramShare {
    /// Median over the runs of the run's read, GB/s.
    pub read_gbs: f64,
    /// Median over the runs of (the run's decode weight GB/s / its read), and the extremes.
    pub share: f64,
    pub min: f64,
    pub max: f64,
    /// The same median over the steady runs only, and how many they were.
    pub steady: Option<f64>,
    pub steady_runs: usize,
}

/// Reads before and after a run at most this far apart (relative to the higher): a steady run.
pub(super) const STEADY: f64 = 0.1;

impl DramShare {
    /// From a sample's runs ([`Sample::dram`]), each decode reading `bytes` of weights; None
    /// without `--dram`.
    pub fn of(runs: &[(Duration, f64, f64)], bytes: u64) -> Option<DramShare> {
        if runs.is_empty() {
            return None;
        }
        let mid = |v: Vec<f64>| median_by(&v, |a, b| (a + b) / 2.0);
        let share = |&(t, a, b): &(Duration, f64, f64)| {
            bytes as f64 / t.as_secs_f64().max(1e-12) / 1e9 / a.max(b).max(1e-9)
        };
        let shares: Vec<f64> = runs.iter().map(share).collect();
        let steady: Vec<f64> = runs
            .iter()
            .filter(|&&(_, a, b)| (a - b).abs() <= STEADY * a.max(b))
            .map(share)
            .collect();
        Some(DramShare {
            read_gbs: mid(runs.iter().map(|&(_, a, b)| a.max(b)).collect()),
            share: mid(shares.clone()),
            min: shares.iter().copied().fold(f64::INFINITY, f64::min),
            max: shares.iter().copied().fold(0.0, f64::max),
            steady_runs: steady.len(),
            steady: (!steady.is_empty()).then(|| mid(steady)),
        })
    }
}

/// How far a narrow weight format's results are from f32's on the same inputs.
pub(super) struct Deviation {
    /// The f32 sample compared with.
    pub against: String,
    /// Over every f32 output of the run's first computation (forward: the pass; generate: the
    /// first step, whose inputs are the same for all): max |d| / max |f32| and
    /// mean |d| / mean |f32|.
    pub max_rel: f64,
    pub mean_rel: f64,
    /// Cosine of each row of the main output (hidden states, logits) to f32's: worst and mean.
    pub cos_min: f64,
    pub cos_mean: f64,
    /// Greedy picks equal to f32's before the first difference, of all (generate only).
    pub tokens: Option<(usize, usize)>,
}

/// The deviation of `s` from the f32 sample of the same engine (else any f32 sample).
pub(super) fn deviation(s: &Sample, samples: &[Sample]) -> Option<Deviation> {
    if s.dtype == WeightFormat::F32 {
        return None;
    }
    let base = samples
        .iter()
        .filter(|b| b.dtype == WeightFormat::F32)
        .max_by_key(|b| b.engine == s.engine)?;
    let (out, toks) = s.result.as_ref()?;
    let (want, want_toks) = base.result.as_ref()?;
    let (mut max_d, mut max_w, mut sum_d, mut sum_w) = (0f64, 0f64, 0f64, 0f64);
    let (mut cos_min, mut cos_sum, mut rows) = (f64::INFINITY, 0f64, 0usize);
    // The main output: logits, else the first hidden state the model returns.
    let main = ["logits", "last_hidden_state", "encoder_last_hidden_state"]
        .into_iter()
        .find(|k| want.contains_key(*k));
    for (name, w) in want {
        let (Some(w), Some(g)) = (w.as_f32(), out.get(name).and_then(|t| t.as_f32())) else {
            continue;
        };
        if w.len() != g.len() {
            continue;
        }
        for (&a, &b) in w.iter().zip(g) {
            let d = (a as f64 - b as f64).abs();
            max_d = if d.is_nan() { f64::NAN } else { max_d.max(d) };
            max_w = max_w.max((a as f64).abs());
            sum_d += d;
            sum_w += (a as f64).abs();
        }
        if Some(name.as_str()) == main {
            let c = *want[name].shape().last().unwrap_or(&1);
            for (a, b) in w.chunks(c.max(1)).zip(g.chunks(c.max(1))) {
                let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
                let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                let cos = dot / (na * nb).max(1e-300);
                cos_min = cos_min.min(cos);
                cos_sum += cos;
                rows += 1;
            }
        }
    }
    let tokens = (!want_toks.is_empty()).then(|| {
        let same = want_toks
            .iter()
            .zip(toks)
            .take_while(|(a, b)| a == b)
            .count();
        (same, want_toks.len())
    });
    Some(Deviation {
        against: base.name.clone(),
        max_rel: max_d / max_w.max(1e-300),
        mean_rel: sum_d / sum_w.max(1e-300),
        cos_min,
        cos_mean: cos_sum / rows.max(1) as f64,
        tokens,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    median_by(v, |a, b| (a + b) / 2)
}

/// The middle value of `v`, or `halfway` of the two middle ones.
fn median_by<T: Copy + PartialOrd>(v: &[T], halfway: impl Fn(T, T) -> T) -> T {
    let mut s = v.to_vec();
    s.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        halfway(s[n / 2 - 1], s[n / 2])
    }
}

/// The report rows of every call in `trace` (graphs as the JIT compiled them): each matmul
/// as the runtime ran it (its recorded ISA, blocking, threads and time; see
/// `tiling::report::ran`), attention and the norms with their predictions and what the
/// runtime recorded of them (`ran_kernels`), the Cranelift kernels with their predictions.
/// Without recorded matmuls (no runtime matmul on this CPU: the generated kernel ran), the
/// graph's matmul rows stay, with the generated kernel the host profile picks.
pub(super) fn tiling_report(
    model: &Model,
    trace: &Trace,
    recorded: &cranformer_runtime::gemm::profile::Recorded,
    format: WeightFormat,
) -> Result<(
    Vec<cranformer_compiler::tiling::report::Row>,
    cranformer_compiler::tiling::MachineProfile,
)> {
    use cranformer_compiler::tiling::{report, MachineProfile};
    let profile = MachineProfile::host();
    let optimized = model.optimized(None)?;
    let weights: u64 = trace
        .first()
        .map(|(e, d, _)| graph_cost_as(&optimized[e], d, format).weight_bytes)
        .unwrap_or(0);
    let mut rows = vec![];
    for (entry, dims, _) in trace {
        report::merge(
            &mut rows,
            report::rows(&optimized[entry], dims, &profile, weights, format),
        );
    }
    if !recorded.matmuls.is_empty() {
        rows.retain(|r| r.matmul.is_none());
        rows.extend(report::ran(&recorded.matmuls, &profile, weights));
    }
    report::ran_kernels(&mut rows, &recorded.kernels, &profile);
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
    /// Weight bytes a run moves with its matmul weights stored in each narrow format asked
    /// for (`graph_cost_as`); `cost.weight_bytes` is f32's.
    pub narrow_weight_bytes: Vec<(WeightFormat, u64)>,
    /// Weight bytes one run's decode steps move, per format run (f32 and each narrow one).
    pub decode_weight_bytes: Vec<(WeightFormat, u64)>,
}

impl Report<'_> {
    /// Weight bytes a run moves with matmul weights stored as `format`.
    fn weight_bytes(&self, format: WeightFormat) -> u64 {
        self.narrow_weight_bytes
            .iter()
            .find(|(f, _)| *f == format)
            .map_or(self.cost.weight_bytes, |(_, b)| *b)
    }

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
                "engine": s.engine.name(),
                "dtype": s.dtype.name(),
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
                "weight_bytes": self.weight_bytes(s.dtype),
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
            if let Some(d) = deviation(s, samples) {
                let mut v = serde_json::json!({
                    "against": d.against,
                    "max_rel_err": d.max_rel,
                    "mean_rel_err": d.mean_rel,
                    "cosine_min": d.cos_min,
                    "cosine_mean": d.cos_mean,
                });
                if let Some((same, all)) = d.tokens {
                    v["greedy_tokens_agree"] = same.into();
                    v["greedy_tokens"] = all.into();
                }
                m.insert("vs_f32".into(), v);
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
                // The weight stream of a decode step, the figure DRAM's read bandwidth bounds
                // (benches/peers/decode_roof.py sets it against `roofline`'s measurement).
                if let Some(&(_, b)) = self.decode_weight_bytes.iter().find(|(f, _)| *f == s.dtype)
                {
                    m.insert(
                        "decode_weight_mb_per_token".into(),
                        (b as f64 / 1e6 / a.new_tokens.max(1) as f64).into(),
                    );
                    m.insert(
                        "decode_weight_gbs".into(),
                        (b as f64 / dec.as_secs_f64().max(1e-12) / 1e9).into(),
                    );
                    if let Some(d) = DramShare::of(&s.dram, b) {
                        m.insert("decode_dram_gbs".into(), d.read_gbs.into());
                        m.insert("decode_dram_share".into(), d.share.into());
                        m.insert("decode_dram_share_min".into(), d.min.into());
                        m.insert("decode_dram_share_max".into(), d.max.into());
                        m.insert("decode_dram_steady_share".into(), d.steady.into());
                        m.insert("decode_dram_steady_runs".into(), d.steady_runs.into());
                    }
                }
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
            "work per run: {:.3} GFLOP ({:.1}% in matmuls), {:.1} MB of weights{} and {:.1} MB \
             of activations moved; model ready in {:.0} ms",
            self.cost.flops as f64 / 1e9,
            100.0 * self.matmul_flops as f64 / self.cost.flops.max(1) as f64,
            self.cost.weight_bytes as f64 / 1e6,
            self.narrow_weight_bytes
                .iter()
                .map(|(f, b)| format!(" ({}: {:.1} MB)", f.name(), *b as f64 / 1e6))
                .collect::<String>(),
            (self.cost.act_read_bytes + self.cost.act_write_bytes) as f64 / 1e6,
            ms(self.load)
        )?;
        let interp = self.interp_median(samples);
        let mut header = format!(
            "{:<9} {:>7} {:>10} {:>11} {:>11} {:>9}",
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
                "{:<9} {:>7} {:>10.1} {:>11.2} {:>11.2} {:>9.2}",
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
            if let Some(d) = deviation(s, samples) {
                let tokens = d
                    .tokens
                    .map(|(same, all)| {
                        format!("; greedy tokens {same}/{all} equal before the first difference")
                    })
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{} vs {}: max rel err {:.2e}, mean rel err {:.2e}, cosine per row min {:.6} mean {:.6}{tokens}",
                    s.name, d.against, d.max_rel, d.mean_rel, d.cos_min, d.cos_mean
                )?;
            }
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
        for s in samples {
            let bytes = self.decode_weight_bytes.iter().find(|(f, _)| *f == s.dtype);
            if let Some(d) = bytes.and_then(|&(_, b)| DramShare::of(&s.dram, b)) {
                let steady = match d.steady {
                    Some(x) => format!(
                        "; {:.0} % over the {} run{} whose two reads agree within {:.0} %",
                        100.0 * x,
                        d.steady_runs,
                        if d.steady_runs == 1 { "" } else { "s" },
                        100.0 * STEADY
                    ),
                    None => format!("; no run's two reads agree within {:.0} %", 100.0 * STEADY),
                };
                writeln!(
                    out,
                    "{}: decode weight stream at {:.0} % of DRAM's read on {} thread{} (the higher of reads right before and after each run, median {:.1} GB/s; per run {:.0}-{:.0} %{steady})",
                    s.name,
                    100.0 * d.share,
                    self.threads,
                    if self.threads == 1 { "" } else { "s" },
                    d.read_gbs,
                    100.0 * d.min,
                    100.0 * d.max
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DramShare;
    use std::time::Duration;

    #[test]
    fn each_run_meets_the_higher_of_its_reads_and_steady_runs_are_summed_apart() {
        let ms = Duration::from_millis;
        // 1 GB of weights a run: 10 ms is 100 GB/s.
        let runs = [
            (ms(10), 100.0, 110.0), // steady (9 % apart): 100 / 110
            (ms(20), 100.0, 50.0),  // straddles a change: 50 / 100
            (ms(10), 120.0, 125.0), // steady: 100 / 125
        ];
        let d = DramShare::of(&runs, 1_000_000_000).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(d.read_gbs, 110.0), "{}", d.read_gbs);
        assert!(close(d.share, 0.8), "{}", d.share);
        assert!(close(d.min, 0.5) && close(d.max, 100.0 / 110.0));
        assert_eq!(d.steady_runs, 2);
        assert!(close(d.steady.unwrap(), (100.0 / 110.0 + 0.8) / 2.0));
        // No run steady, no runs.
        let d = DramShare::of(&runs[1..2], 1_000_000_000).unwrap();
        assert_eq!((d.steady, d.steady_runs), (None, 0));
        assert!(DramShare::of(&[], 1).is_none());
    }
}
