//! The tiling report (`cranformer compile --report`, `bench --report`): per kernel, FLOPs,
//! bytes, arithmetic intensity, what bounds it, the chosen tiling, the predicted time, the
//! measured time when the caller has one, and the share of the roof reached; and the same
//! kernels as points on an SVG roofline.
//!
//! Matmuls get the cost model's numbers (`choose`); with a run to show ([`ran`]), each matmul
//! row is what the runtime recorded: the ISA, blocking and threads the call actually ran with
//! (resolved on this host), its measured time, and the model's prediction for that tiling.
//! Attention and the row norms are the runtime's kernels, at the width of this host's ISA
//! (with a run to show, [`ran_kernels`], the ISA and threads they ran with and their measured
//! time); other kernels are Cranelift code at 128 bits. Their roof is `max(FLOPs / peak at that
//! width, bytes / bandwidth of the level that holds their operands)`, from `graph::cost`: on
//! one core, and for the runtime's kernels that ran, on the threads and at the width they ran
//! with.

use super::choose::{candidates, choose_problem, evaluate, explain, Choice, Kernel, Problem};
use super::roofline::MachineProfile;
use crate::graph::node_cost;
use crate::graph::{Dims, Graph, Op};
use cranformer_runtime::gemm::profile::{KernelTiming, Timing};
use cranformer_runtime::gemm::{QKernel, WeightFormat};

/// ` int8` after a narrow matmul's name, nothing for f32.
fn format_suffix(format: WeightFormat) -> String {
    match format {
        WeightFormat::F32 => String::new(),
        f => format!(" {}", f.name()),
    }
}

/// One kernel, or several calls of the same kernel summed.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `linear 128x768x3072 gelu`, `attention`, `layer_norm`...
    pub kernel: String,
    pub calls: usize,
    pub flops: f64,
    /// Bytes from the outermost level the kernel touches.
    pub bytes: f64,
    pub bound: String,
    pub tiling: String,
    pub predicted_s: f64,
    /// The pure roofline time: no kernel efficiency, only peaks and bandwidths.
    pub roof_s: f64,
    pub measured_s: Option<f64>,
    pub why: String,
    /// `(m, n, k)` of a matmul.
    pub matmul: Option<(usize, usize, usize)>,
    /// Each call of a runtime kernel other than a matmul (attention, the norms), for
    /// [`ran_kernels`] to put its roof on the threads and ISA it ran with; empty otherwise.
    pub parts: Vec<Part>,
}

/// One call of a runtime kernel as the cost model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Part {
    pub flops: f64,
    pub bytes: f64,
    /// The memory level that holds its operands (index into the profile's levels).
    pub home: usize,
}

/// Seconds of `parts` at the roof of `bits`-wide vectors on `threads` threads of `p`, and
/// their compute and memory seconds apart.
fn roof_of(p: &MachineProfile, parts: &[Part], bits: u32, threads: usize) -> (f64, f64, f64) {
    let peak = p.peak_gflops(bits, threads) * 1e9;
    parts.iter().fold((0.0, 0.0, 0.0), |(all, c, m), x| {
        let compute = x.flops / peak;
        let memory = x.bytes / (p.read_gbs(x.home, threads) * 1e9);
        (all + compute.max(memory), c + compute, m + memory)
    })
}

impl Row {
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes.max(1.0)
    }
}

/// `(m, n, k, act, residual)` of a matmul node.
fn matmul_shape(
    g: &Graph,
    n: petgraph::graph::NodeIndex,
    d: &Dims,
) -> Option<(usize, usize, usize, String, bool)> {
    let node = g.node(n);
    let (act, residual) = match &node.op {
        Op::Linear { .. } => (String::new(), false),
        Op::FusedLinear { act, residual, .. } => (
            act.map_or(String::new(), |a| format!(" {a:?}").to_lowercase()),
            *residual,
        ),
        _ => return None,
    };
    let x = &g.node(g.operands(n)[0]).ty.concrete(d);
    let out = node.ty.concrete(d);
    let k = *x.last()?;
    let nn = *out.last()?;
    let m = out.iter().product::<usize>() / nn.max(1);
    Some((m, nn, k, act, residual))
}

/// The rows of one call of `g` with dims `d` on `p` with `threads` threads, its matmul weights
/// stored as `format`; `weights_in_flight` as in [`Problem`]. Kernels of the same op and
/// shape are merged.
pub fn rows(
    g: &Graph,
    d: &Dims,
    p: &MachineProfile,
    weights_in_flight: u64,
    format: WeightFormat,
) -> Vec<Row> {
    // A narrow format's compute per instruction: its best kernel on this host's ISA.
    let macs_per_lane = match format {
        WeightFormat::F32 => 1,
        f => QKernel::best(f, cranformer_runtime::gemm::detected()).macs_per_lane(),
    };
    // Slices attention reads in place run no kernel.
    let views = crate::codegen::slices_read_in_place(g);
    let mut out: Vec<Row> = vec![];
    for n in g.topo_order() {
        let node = g.node(n);
        if matches!(node.op, Op::Input { .. } | Op::Weight { .. }) || views.contains_key(&n) {
            continue;
        }
        let row = if let Some((m, nn, k, act, residual)) = matmul_shape(g, n, d) {
            let c = choose_problem(
                p,
                &Problem {
                    format,
                    macs_per_lane,
                    ..Problem::f32(m, nn, k, weights_in_flight, residual)
                },
            );
            let outer = (0..c.bytes.len())
                .rev()
                .find(|&i| c.bytes[i] > 0.0)
                .unwrap_or(0);
            let t = c.choice.threads as usize;
            let peak = p.peak_gflops(c.choice.kernel.bits(), t) * macs_per_lane as f64;
            let roof = (c.flops / (peak * 1e9)).max(
                (0..c.bytes.len())
                    .map(|i| c.bytes[i] / (p.read_gbs(i, t) * 1e9))
                    .fold(0.0, f64::max),
            );
            Row {
                kernel: format!(
                    "linear {m}x{k}x{nn}{act}{}{}",
                    if residual { " +res" } else { "" },
                    format_suffix(format)
                ),
                calls: 1,
                flops: c.flops,
                bytes: c.bytes[outer],
                bound: c.bound.clone(),
                tiling: c.choice.describe(),
                predicted_s: c.predicted_s,
                roof_s: roof,
                measured_s: None,
                why: c.why.clone(),
                matmul: Some((m, nn, k)),
                parts: vec![],
            }
        } else {
            let cost = node_cost(g, n, d);
            let bytes = cost.bytes() as f64;
            let home = p.home(cost.bytes());
            // Attention and the norms are the runtime's kernels on this host's ISA; the rest
            // Cranelift's f32x4 code.
            let runtime_kernel = matches!(
                node.op,
                Op::Attention { .. }
                    | Op::LayerNorm { .. }
                    | Op::RmsNorm { .. }
                    | Op::AddLayerNorm { .. }
                    | Op::AddRmsNorm { .. }
                    | Op::L2Normalize
            );
            let isa = cranformer_runtime::gemm::detected();
            let bits = if runtime_kernel { isa.bits() } else { 128 };
            let part = Part {
                flops: cost.flops as f64,
                bytes,
                home,
            };
            let (roof, compute, memory) = roof_of(p, &[part], bits, 1);
            let name = node.op.to_string();
            let name = name.split([' ', '(', '{']).next().unwrap_or("").to_string();
            Row {
                kernel: name,
                calls: 1,
                flops: cost.flops as f64,
                bytes,
                bound: if compute >= memory {
                    "compute".into()
                } else {
                    p.levels[home].name.clone()
                },
                tiling: if runtime_kernel {
                    format!("runtime {}", isa.name())
                } else {
                    "cranelift f32x4".into()
                },
                predicted_s: roof,
                roof_s: roof,
                measured_s: None,
                why: String::new(),
                matmul: None,
                parts: if runtime_kernel { vec![part] } else { vec![] },
            }
        };
        merge(&mut out, vec![row]);
    }
    out
}

/// The matmul rows of a run as the runtime recorded it: one row per shape, epilogue and
/// tiling that ran (ISA, kc, mc, threads as resolved on this host, never recomputed here),
/// with the measured time and the cost model's prediction of that very tiling on `p`.
pub fn ran(timings: &[Timing], p: &MachineProfile, weights_in_flight: u64) -> Vec<Row> {
    let mut out: Vec<Row> = vec![];
    for t in timings {
        let act = cranformer_runtime::gemm::Act::from_code(t.act)
            .filter(|a| *a != cranformer_runtime::gemm::Act::None)
            .map_or(String::new(), |a| format!(" {a:?}").to_lowercase());
        let kernel = format!(
            "linear {}x{}x{}{act}{}{}",
            t.m,
            t.k,
            t.n,
            if t.residual { " +res" } else { "" },
            format_suffix(t.format)
        );
        // Unblocked K (a narrow decode row: kc is "all of it") is K itself.
        let (kc, mc) = (t.kc.min(t.k.max(1)), t.mc.min(t.m.max(1)));
        let choice = Choice {
            kernel: Kernel::of_isa(t.isa),
            kc: kc as u32,
            mc: mc as u32,
            threads: t.threads as u32,
        };
        // A narrow matmul names its micro-kernel; K unblocked (decode rows) shows as all of K.
        let tiling = match t.format {
            WeightFormat::F32 => choice.describe(),
            _ => format!("{} kc{kc} mc{mc} t{}", t.kernel, t.threads),
        };
        if let Some(r) = out
            .iter_mut()
            .find(|r| r.kernel == kernel && r.tiling == tiling)
        {
            r.calls += 1;
            r.flops += 2.0 * (t.m * t.n * t.k) as f64;
            r.measured_s = Some(r.measured_s.unwrap_or(0.0) + t.seconds);
            let per_call = r.predicted_s / (r.calls - 1) as f64;
            r.predicted_s += per_call;
            r.roof_s += r.roof_s / (r.calls - 1) as f64;
            r.bytes += r.bytes / (r.calls - 1) as f64;
            continue;
        }
        let pr = Problem {
            format: t.format,
            macs_per_lane: t.macs_per_lane,
            ..Problem::f32(t.m, t.n, t.k, weights_in_flight, t.residual)
        };
        let c = evaluate(p, &pr, choice);
        let outer = (0..c.bytes.len())
            .rev()
            .find(|&i| c.bytes[i] > 0.0)
            .unwrap_or(0);
        let th = t.threads.max(1);
        let peak = p.peak_gflops(choice.kernel.bits(), th) * t.macs_per_lane.max(1) as f64;
        let roof = (c.flops / (peak * 1e9)).max(
            (0..c.bytes.len())
                .map(|i| c.bytes[i] / (p.read_gbs(i, th) * 1e9))
                .fold(0.0, f64::max),
        );
        out.push(Row {
            kernel,
            calls: 1,
            flops: c.flops,
            bytes: c.bytes[outer],
            bound: c.bound.clone(),
            tiling,
            predicted_s: c.predicted_s,
            roof_s: roof,
            measured_s: Some(t.seconds),
            why: format!(
                "ran as resolved by the runtime on this host; {}",
                explain(p, &pr, &c, &candidates(p, &pr))
            ),
            matmul: Some((t.m, t.n, t.k)),
            parts: vec![],
        });
    }
    out
}

/// What the runtime recorded of attention and the norms, put on their rows: the measured
/// time summed over the calls, and the ISA and threads they ran with in place of the host's
/// predicted ISA (`runtime avx2 t2`; `t1/2` where calls ran on different counts), and the
/// roof (prediction, bound) recomputed on `p` for those: where calls ran on different ISAs or
/// counts, each pair's roof weighted by its share of the calls. A recorded kernel the graph
/// has no row for gets a row of its own, with no prediction.
pub fn ran_kernels(rows: &mut Vec<Row>, kernels: &[KernelTiming], p: &MachineProfile) {
    let mut names: Vec<&'static str> = vec![];
    for k in kernels {
        if !names.contains(&k.kernel) {
            names.push(k.kernel);
        }
    }
    for name in names {
        let mine: Vec<&KernelTiming> = kernels.iter().filter(|k| k.kernel == name).collect();
        let mut isas: Vec<&str> = mine.iter().map(|k| k.isa.name()).collect();
        let mut threads: Vec<String> = mine.iter().map(|k| k.threads.to_string()).collect();
        isas.sort_unstable();
        isas.dedup();
        threads.sort_unstable_by_key(|t| t.parse::<usize>().unwrap_or(0));
        threads.dedup();
        let tiling = format!("runtime {} t{}", isas.join("/"), threads.join("/"));
        let seconds: f64 = mine.iter().map(|k| k.seconds).sum();
        match rows
            .iter_mut()
            .find(|r| r.matmul.is_none() && r.kernel == name)
        {
            Some(r) => {
                r.tiling = tiling;
                r.measured_s = Some(seconds);
                if !r.parts.is_empty() {
                    let mut ran: Vec<((u32, usize), usize)> = vec![];
                    for k in &mine {
                        let key = (k.isa.bits(), k.threads.max(1));
                        match ran.iter_mut().find(|(x, _)| *x == key) {
                            Some((_, n)) => *n += 1,
                            None => ran.push((key, 1)),
                        }
                    }
                    let share = |n: usize| n as f64 / mine.len() as f64;
                    let each: Vec<((f64, f64, f64), usize)> = ran
                        .iter()
                        .map(|&((bits, t), n)| (roof_of(p, &r.parts, bits, t), n))
                        .collect();
                    let roof: f64 = each.iter().map(|&((all, _, _), n)| share(n) * all).sum();
                    // What bounds it: the roof of the pair most calls ran with.
                    let &((_, compute, memory), _) =
                        each.iter().max_by_key(|(_, n)| *n).expect("a call");
                    r.predicted_s = roof;
                    r.roof_s = roof;
                    if compute < memory {
                        let home = r.parts.iter().map(|x| x.home).max().unwrap_or(0);
                        r.bound = p.levels[home].name.clone();
                    } else {
                        r.bound = "compute".into();
                    }
                }
            }
            None => rows.push(Row {
                kernel: name.to_string(),
                calls: mine.len(),
                flops: 0.0,
                bytes: 0.0,
                bound: "-".into(),
                tiling,
                predicted_s: 0.0,
                roof_s: 0.0,
                measured_s: Some(seconds),
                why: String::new(),
                matmul: None,
                parts: vec![],
            }),
        }
    }
}

/// Merges `more` into `rows` (same kernel and tiling: sums).
pub fn merge(rows: &mut Vec<Row>, more: Vec<Row>) {
    for row in more {
        match rows
            .iter_mut()
            .find(|r| r.kernel == row.kernel && r.tiling == row.tiling)
        {
            Some(r) => {
                r.calls += row.calls;
                r.flops += row.flops;
                r.bytes += row.bytes;
                r.predicted_s += row.predicted_s;
                r.roof_s += row.roof_s;
                r.parts.extend(row.parts);
                r.measured_s = match (r.measured_s, row.measured_s) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
            None => rows.push(row),
        }
    }
}

fn fmt_s(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2}ms", s * 1e3)
    } else {
        format!("{:.1}us", s * 1e6)
    }
}

/// The rows as a table; `measured` says how the measured column was obtained.
pub fn table(rows: &[Row], p: &MachineProfile, measured: &str) -> String {
    let mut s = format!(
        "roofline of {} ({} threads); measured: {measured}\n",
        p.name, p.cores
    );
    s.push_str(&format!(
        "{:<34} {:>5} {:>9} {:>9} {:>7} {:>8} {:<28} {:>9} {:>9} {:>6}\n",
        "kernel",
        "calls",
        "MFLOP",
        "MB",
        "FLOP/B",
        "bound",
        "tiling",
        "predicted",
        "measured",
        "roof%"
    ));
    let (mut pred, mut meas) = (0.0, 0.0);
    for r in rows {
        pred += r.predicted_s;
        meas += r.measured_s.unwrap_or(0.0);
        s.push_str(&format!(
            "{:<34} {:>5} {:>9.1} {:>9.2} {:>7.1} {:>8} {:<28} {:>9} {:>9} {:>6}\n",
            r.kernel,
            r.calls,
            r.flops / 1e6,
            r.bytes / 1e6,
            r.intensity(),
            r.bound,
            r.tiling,
            fmt_s(r.predicted_s),
            r.measured_s.map_or("-".into(), fmt_s),
            r.measured_s.map_or("-".into(), |m| format!(
                "{:.0}%",
                100.0 * r.roof_s / m.max(1e-12)
            ))
        ));
    }
    s.push_str(&format!(
        "total predicted {}, measured (runtime kernels) {}\n",
        fmt_s(pred),
        fmt_s(meas)
    ));
    s.push_str("why (matmuls):\n");
    for r in rows.iter().filter(|r| !r.why.is_empty()) {
        s.push_str(&format!("  {}: {}: {}\n", r.kernel, r.tiling, r.why));
    }
    s
}

/// The roofline as an SVG document: log-log axes (FLOP/byte, GFLOP/s), one horizontal roof
/// per vector width, one slanted roof per memory level, each kernel as a point at its
/// intensity and achieved (measured, else predicted) GFLOP/s.
pub fn svg(rows: &[Row], p: &MachineProfile) -> String {
    let (w, h, ml, mb, mt, mr) = (900.0, 600.0, 70.0, 50.0, 30.0, 170.0);
    let (x0, x1) = (0.01f64.log10(), 1000f64.log10());
    let top = p.peak_gflops(p.max_bits(), p.cores) * 2.0;
    let (y0, y1) = (0.1f64.log10(), top.log10());
    let px = |i: f64| ml + (i.max(1e-3).log10() - x0) / (x1 - x0) * (w - ml - mr);
    let py = |g: f64| h - mb - (g.max(1e-3).log10() - y0) / (y1 - y0) * (h - mb - mt);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s.push_str(&format!(
        "<text x=\"{}\" y=\"18\" font-size=\"14\">Roofline: {} ({} threads)</text>\n",
        ml, p.name, p.cores
    ));
    // Axes with decade ticks.
    s.push_str(&format!(
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - mb,
        w - mr,
        h - mb,
        h - mb
    ));
    let mut e = x0.ceil() as i32;
    while e as f64 <= x1 {
        let x = px(10f64.powi(e));
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            mt, h - mb, h - mb + 16.0, 10f64.powi(e)
        ));
        e += 1;
    }
    let mut e = y0.ceil() as i32;
    while e as f64 <= y1 {
        let y = py(10f64.powi(e));
        s.push_str(&format!(
            "<line x1=\"{ml}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            w - mr, ml - 4.0, y + 4.0, 10f64.powi(e)
        ));
        e += 1;
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">arithmetic intensity (FLOP/byte)</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">GFLOP/s</text>\n",
        (ml + w - mr) / 2.0, h - 12.0, (mt + h - mb) / 2.0, (mt + h - mb) / 2.0
    ));
    // Roofs: each level's bandwidth line capped by the widest peak.
    let peak = p.peak_gflops(p.max_bits(), p.cores);
    let colours = ["#1f77b4", "#2ca02c", "#9467bd", "#d62728"];
    for (i, l) in p.levels.iter().enumerate() {
        let bw = p.read_gbs(i, p.cores);
        let knee = peak / bw;
        let xs = 10f64.powf(x0);
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{} {:.0} GB/s</text>\n",
            colours[i % 4],
            px(xs), py(bw * xs), px(knee), py(peak), w - mr, py(peak),
            colours[i % 4], px(knee.min(1.0)), py(bw * knee.min(1.0)) - 4.0, l.name, bw
        ));
    }
    let mut bits: Vec<u32> = p.peaks.iter().map(|x| x.bits).collect();
    bits.sort_unstable();
    bits.dedup();
    for b in bits {
        let g = p.peak_gflops(b, p.cores);
        s.push_str(&format!(
            "<line x1=\"{ml}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\">{b}-bit FMA {:.0} GFLOP/s</text>\n",
            py(g), w - mr, py(g), w - mr + 4.0, py(g) + 4.0, g
        ));
    }
    for r in rows {
        let secs = r.measured_s.unwrap_or(r.predicted_s);
        let g = r.flops / secs.max(1e-12) / 1e9;
        if r.flops <= 0.0 {
            continue;
        }
        let (x, y) = (px(r.intensity()), py(g));
        let fill = if r.measured_s.is_some() {
            "black"
        } else {
            "none"
        };
        s.push_str(&format!(
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"black\"><title>{}: {:.1} GFLOP/s</title></circle><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>\n",
            r.kernel, g, x + 6.0, y - 4.0, r.kernel
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// The golden text of the tile picker: each shape's choice and explanation on `p`.
pub fn choices(p: &MachineProfile, cases: &[(&str, Problem)]) -> String {
    let mut s = format!("# profile {}\n", p.name);
    for (name, pr) in cases {
        let c = choose_problem(p, pr);
        s.push_str(&format!(
            "{name} m{} k{} n{}: {}\n  {}\n",
            pr.m,
            pr.k,
            pr.n,
            c.choice.describe(),
            c.why
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranformer_runtime::gemm::Isa;

    fn row(kernel: &str, parts: Vec<Part>) -> Row {
        Row {
            kernel: kernel.into(),
            calls: parts.len(),
            flops: parts.iter().map(|x| x.flops).sum(),
            bytes: parts.iter().map(|x| x.bytes).sum(),
            bound: "-".into(),
            tiling: "runtime avx512".into(),
            predicted_s: 0.0,
            roof_s: 0.0,
            measured_s: None,
            why: String::new(),
            matmul: None,
            parts,
        }
    }

    fn ran(kernel: &'static str, isa: Isa, threads: usize) -> KernelTiming {
        KernelTiming {
            kernel,
            isa,
            threads,
            seconds: 1e-3,
        }
    }

    /// The roof of attention and the norms is the one of the threads and ISA they ran with: a
    /// compute-bound call on every core of the profile takes its all-core peak, a memory-bound
    /// one its all-core bandwidth, a 256-bit run the 256-bit peak; a mix weighs each by its
    /// share of the calls.
    #[test]
    fn runtime_kernels_get_the_roof_they_ran_on() {
        let p = MachineProfile::fixed("avx512-server").unwrap();
        let all = p.cores;
        assert!(all > 1);
        let dram = p.level("DRAM").unwrap();
        let compute = Part {
            flops: 1e9,
            bytes: 1e3,
            home: 0,
        };
        let memory = Part {
            flops: 1e3,
            bytes: 1e9,
            home: dram,
        };
        let roof = |parts: Vec<Part>, calls: Vec<KernelTiming>| {
            let mut rows = vec![row(calls[0].kernel, parts)];
            ran_kernels(&mut rows, &calls, &p);
            rows.remove(0)
        };
        let r = roof(vec![compute], vec![ran("attention", Isa::Avx512, all)]);
        assert_eq!(r.bound, "compute");
        let want = 1e9 / (p.peak_gflops(512, all) * 1e9);
        assert!(
            (r.predicted_s - want).abs() < 1e-12 * want.max(1.0),
            "{r:?}"
        );
        assert_eq!(r.roof_s, r.predicted_s);
        let one = roof(vec![compute], vec![ran("attention", Isa::Avx512, 1)]);
        assert!(one.predicted_s > 1.5 * r.predicted_s, "{one:?} {r:?}");
        let narrow = roof(vec![compute], vec![ran("attention", Isa::Avx2, all)]);
        let want = 1e9 / (p.peak_gflops(256, all) * 1e9);
        assert!((narrow.predicted_s - want).abs() < 1e-12, "{narrow:?}");

        let m = roof(vec![memory], vec![ran("layer_norm", Isa::Avx512, all)]);
        assert_eq!(m.bound, "DRAM");
        let want = 1e9 / (p.read_gbs(dram, all) * 1e9);
        assert!((m.predicted_s - want).abs() < 1e-12, "{m:?}");

        // Two calls, one on each count: half the 1-thread roof and half the all-core one.
        let mixed = roof(
            vec![compute, compute],
            vec![
                ran("attention", Isa::Avx512, 1),
                ran("attention", Isa::Avx512, all),
            ],
        );
        assert!(
            (mixed.predicted_s - (one.predicted_s + r.predicted_s)).abs() < 1e-12,
            "{mixed:?}"
        );
        assert_eq!(mixed.tiling, format!("runtime avx512 t1/{all}"));
    }
}
