//! `cranformer bench` end to end on the tiny fixtures and a one-layer preset: the JSON lines
//! carry the promised fields with sane values. Timings themselves are never asserted.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")).join(name)
}

/// Runs `cranformer bench ARGS`, which must succeed, and returns what it printed.
fn bench_text(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cranformer"))
        .arg("bench")
        .args(args)
        .output()
        .expect("cranformer runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `cranformer bench ARGS`, which must succeed, and parses its JSON lines.
fn bench(args: &[&str]) -> Vec<Value> {
    bench_text(args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn bench_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cranformer"))
        .arg("bench")
        .args(args)
        .output()
        .expect("cranformer runs");
    assert!(!out.status.success(), "bench {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn num(v: &Value, field: &str) -> f64 {
    v.get(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {field:?} in {v}"))
}

/// The JSON line of `dtype` among `lines`.
fn dtype_line<'a>(lines: &'a [Value], dtype: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["dtype"] == dtype)
        .unwrap_or_else(|| panic!("no {dtype} line in {lines:?}"))
}

/// The fields every line has, with values that make sense for `runs` runs.
fn check_line(v: &Value, engine: &str, task: &str, runs: u64) {
    assert_eq!(v["engine"], engine, "{v}");
    assert_eq!(v["task"], task, "{v}");
    assert_eq!(v["runs"].as_u64(), Some(runs), "{v}");
    let (median, min) = (num(v, "median_ms"), num(v, "min_ms"));
    assert!(min > 0.0 && min <= median, "min {min} median {median}: {v}");
    assert!(num(v, "gflops") > 0.0, "{v}");
    assert!(num(v, "flops") > 0.0, "{v}");
}

#[test]
fn forward_on_gpt2_tiny_compares_interp_and_jit() {
    let lines = bench(&[
        fixture("gpt2-tiny").to_str().unwrap(),
        "--engine",
        "interp,jit",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--seq",
        "8",
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    check_line(&lines[0], "interp", "forward", 2);
    check_line(&lines[1], "jit", "forward", 2);
    assert_eq!(lines[0]["seq"], 8);
    assert_eq!(lines[0]["batch"], 1);
    // The same work for both engines, so the same FLOPs; the interpreter is its own baseline.
    assert_eq!(lines[0]["flops"], lines[1]["flops"]);
    assert!((num(&lines[0], "ratio_to_interp") - 1.0).abs() < 1e-9);
    assert!(num(&lines[1], "ratio_to_interp") > 0.0);
    assert!(lines[1].get("compile_ms").is_some());
    assert!(lines[0].get("ms_per_new_token").is_none());
}

#[test]
fn generate_on_gpt2_tiny_reports_ms_per_new_token() {
    let lines = bench(&[
        fixture("gpt2-tiny").to_str().unwrap(),
        "--engine",
        "jit,interp",
        "--task",
        "generate",
        "--prompt-tokens",
        "5",
        "--new-tokens",
        "3",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (v, engine) in lines.iter().zip(["jit", "interp"]) {
        check_line(v, engine, "generate", 2);
        let per_token = num(v, "ms_per_new_token");
        assert!(
            per_token > 0.0 && per_token * 3.0 <= num(v, "median_ms"),
            "{v}"
        );
        assert_eq!(v["new_tokens"], 3);
        assert_eq!(v["prompt_tokens"], 5);
    }
}

/// A decode step streams every weight of the layers and the (tied) LM head once, a row of each
/// embedding and the small vectors: for gpt2-tiny (2 layers of width 32, vocabulary 50257)
/// between its matmul weights' bytes and the whole checkpoint's. The GB/s is that over the
/// step's time.
#[test]
fn generate_reports_the_weight_stream_of_a_decode_step() {
    let dir = fixture("gpt2-tiny");
    let lines = bench(&[
        dir.to_str().unwrap(),
        "--engine",
        "jit",
        "--dtype",
        "f32,int8",
        "--task",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "3",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    let of = |dtype: &str| dtype_line(&lines, dtype);
    let (d, layers, vocab) = (32.0, 2.0, 50257.0);
    let matmuls = 4.0 * (layers * (d * 3.0 * d + d * d + 2.0 * d * 4.0 * d) + vocab * d);
    let file = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len() as f64;
    let f32_line = of("f32");
    let per_token = num(f32_line, "decode_weight_mb_per_token") * 1e6;
    assert!(
        matmuls <= per_token && per_token <= file,
        "{per_token} bytes a step, matmuls {matmuls}, checkpoint {file}"
    );
    for v in [f32_line, of("int8")] {
        let gbs = num(v, "decode_weight_mb_per_token") / num(v, "ms_per_new_token");
        assert!(
            (num(v, "decode_weight_gbs") - gbs).abs() <= 1e-9 * gbs.max(1.0),
            "{v}"
        );
    }
    // int8 weights: a byte each and a scale per output channel, against f32's four bytes.
    let int8 = num(of("int8"), "decode_weight_mb_per_token") * 1e6;
    assert!(
        int8 < per_token / 3.0,
        "int8 {int8} bytes a step, f32 {per_token}"
    );
}

#[test]
fn dram_sets_each_decode_run_against_reads_around_it() {
    let dir = fixture("gpt2-tiny");
    let args = [
        dir.to_str().unwrap(),
        "--engine",
        "interp,jit",
        "--task",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "3",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--dram",
    ];
    let lines = bench(&[&args[..], &["--json"]].concat());
    let jit = lines
        .iter()
        .find(|v| v["engine"] == "jit")
        .expect("a jit line");
    let (read, share) = (num(jit, "decode_dram_gbs"), num(jit, "decode_dram_share"));
    assert!(read > 0.0 && read.is_finite(), "{jit}");
    let (lo, hi) = (
        num(jit, "decode_dram_share_min"),
        num(jit, "decode_dram_share_max"),
    );
    assert!(
        0.0 < lo && lo <= share && share <= hi && hi.is_finite(),
        "{jit}"
    );
    let steady = jit["decode_dram_steady_runs"].as_u64().expect("a count");
    assert!(steady <= 3, "{jit}");
    match jit["decode_dram_steady_share"].as_f64() {
        Some(x) => assert!(steady > 0 && lo <= x && x <= hi, "{jit}"),
        None => assert_eq!(steady, 0, "{jit}"),
    }
    // The interpreter runs on one thread, not the reads' threads: no figure.
    let interp = lines
        .iter()
        .find(|v| v["engine"] == "interp")
        .expect("an interp line");
    assert!(interp.get("decode_dram_share").is_none(), "{interp}");
    // The table says it in words.
    let table = bench_text(&args);
    assert!(table.contains("jit: decode weight stream at "), "{table}");
    assert!(table.contains("of DRAM's read on "), "{table}");
    // Only a decode has a weight stream to set against DRAM.
    let e = bench_fails(&[dir.to_str().unwrap(), "--dram"]);
    assert!(e.contains("--dram") && e.contains("--task generate"), "{e}");
}

#[test]
fn generate_on_t5_tiny() {
    let lines = bench(&[
        fixture("t5-tiny").to_str().unwrap(),
        "--engine",
        "jit",
        "--task",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "2",
        "--batch",
        "2",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(lines.len(), 1);
    check_line(&lines[0], "jit", "generate", 1);
    assert!(lines[0].get("ratio_to_interp").is_none());
}

#[test]
fn preset_with_one_layer_runs_forward() {
    let lines = bench(&[
        "--preset",
        "t5-small",
        "--layers",
        "1",
        "--engine",
        "interp,jit",
        "--seq",
        "4",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(lines.len(), 2);
    check_line(&lines[0], "interp", "forward", 1);
    check_line(&lines[1], "jit", "forward", 1);
    assert_eq!(lines[0]["model"], "t5-small");
    // encode + cross_kv + decode of 4 tokens with a 32128 x 512 tied head: the head alone is
    // 2 * 4 * 32128 * 512 FLOPs.
    assert!(num(&lines[0], "flops") > 2.0 * 4.0 * 32128.0 * 512.0);
}

#[test]
fn table_without_json() {
    let bert = fixture("bert-tiny");
    let text = bench_text(&[
        bert.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--seq",
        "4",
    ]);
    // Without --engine, bench compares the interpreter and the JIT.
    assert!(
        text.contains("median ms") && text.contains("vs interp"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("interp ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("jit ")), "{text}");
    // The threads column: the interpreter always runs on one.
    let interp = text.lines().find(|l| l.starts_with("interp ")).unwrap();
    assert_eq!(interp.split_whitespace().nth(1), Some("1"), "{text}");
}

#[test]
fn bad_requests_are_explained() {
    let bert = fixture("bert-tiny");
    let bert = bert.to_str().unwrap();
    let e = bench_fails(&[bert, "--task", "generate"]);
    assert!(e.contains("BERT models do not generate"), "{e}");
    let e = bench_fails(&[bert, "--engine", "jit,fast"]);
    assert!(e.contains("unknown --engine \"fast\""), "{e}");
    let e = bench_fails(&["--preset", "gpt3"]);
    assert!(
        e.contains("unknown --preset \"gpt3\"") && e.contains("gpt2-xl"),
        "{e}"
    );
    let e = bench_fails(&[bert, "--seq", "100000"]);
    assert!(e.contains("--seq is 100000"), "{e}");
    let e = bench_fails(&[]);
    assert!(e.contains("MODEL_DIR") || e.contains("--preset"), "{e}");
}

#[test]
fn aot_runs_beside_the_interpreter() {
    let lines = bench(&[
        fixture("bert-tiny").to_str().unwrap(),
        "--engine",
        "aot,interp",
        "--seq",
        "6",
        "--batch",
        "2",
        "--runs",
        "2",
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    check_line(&lines[0], "aot", "forward", 2);
    check_line(&lines[1], "interp", "forward", 2);
    assert!(lines[0].get("link_ms").is_some(), "{}", lines[0]);
    assert_eq!(lines[1]["threads"], 1, "{}", lines[1]);
}

/// `compile --report --emit clif --svg`: the executable, the annotated IR, the per-kernel
/// table with measured matmul times, and the roofline drawing.
#[test]
fn compile_report_emit_clif_and_svg() {
    let tmp = tempfile::Builder::new()
        .prefix("compile-report")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = tmp.path();
    let (bin, svg) = (dir.join("g2"), dir.join("roof.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_cranformer"))
        .args([
            "compile",
            fixture("gpt2-tiny").to_str().unwrap(),
            "-o",
            bin.to_str().unwrap(),
        ])
        .args([
            "--report",
            "--seq",
            "8",
            "--emit",
            "clif",
            "--svg",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.is_file());
    let clif = std::fs::read_to_string(dir.join("g2.clif")).unwrap();
    assert!(
        clif.contains(";; entry point step") && clif.contains("function"),
        "clif dump"
    );
    let linear = stdout
        .lines()
        .filter(|l| l.starts_with("linear"))
        .collect::<Vec<_>>();
    assert!(
        !linear.is_empty(),
        "no matmul rows in the report:\n{stdout}"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for row in &linear {
        // The tiling the runtime recorded for the call: a runtime kernel, at most the host's
        // cores (or the generated kernel where the CPU has no runtime one).
        let threads = row
            .split_whitespace()
            .find_map(|w| w.strip_prefix('t').and_then(|t| t.parse::<usize>().ok()))
            .unwrap_or_else(|| panic!("no thread count in {row}"));
        assert!((1..=cores).contains(&threads), "{row}");
        // predicted and measured columns both hold a time
        assert!(
            row.matches("us").count() + row.matches("ms").count() >= 2,
            "row without times: {row}"
        );
    }
    // Attention and the norms: the ISA and threads the runtime recorded, and a measured time.
    let kernels = stdout
        .lines()
        .filter(|l| l.starts_with("attention") || l.contains("layer_norm"))
        .collect::<Vec<_>>();
    assert!(
        kernels.iter().any(|l| l.starts_with("attention")),
        "no attention row in the report:\n{stdout}"
    );
    for row in &kernels {
        let words: Vec<&str> = row.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "runtime")
            .unwrap_or_else(|| panic!("no runtime kernel in {row}"));
        assert!(
            ["avx512", "avx2", "portable"].contains(&words[at + 1]),
            "{row}"
        );
        let threads: usize = words[at + 2]
            .strip_prefix('t')
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no thread count in {row}"));
        assert!((1..=cores).contains(&threads), "{row}");
        assert!(
            row.matches("us").count() + row.matches("ms").count() >= 2,
            "row without a measured time: {row}"
        );
    }
    if !stdout.contains("f32x4 6x8") {
        assert!(
            stdout.contains("ran as resolved by the runtime on this host"),
            "{stdout}"
        );
    }
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawing.starts_with("<svg") || drawing.contains("<svg"),
        "not an SVG"
    );
}

/// Several `--dtype`s: each engine once per format, interleaved; every narrow one reports its
/// deviation from f32 on the same inputs. The interpreter (the f32 reference) joins only f32.
#[test]
fn dtypes_are_compared_with_f32() {
    let gpt2 = fixture("gpt2-tiny");
    let gpt2 = gpt2.to_str().unwrap();
    let lines = bench(&[
        gpt2,
        "--task",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "4",
        "--runs",
        "2",
        "--engine",
        "interp,jit",
        "--dtype",
        "int8,f32",
        "--json",
    ]);
    let tags: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["engine"].as_str().unwrap().to_string(),
                v["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [("interp", "f32"), ("jit", "int8"), ("jit", "f32")];
    assert_eq!(
        tags,
        want.map(|(e, d)| (e.to_string(), d.to_string())),
        "{lines:?}"
    );
    for v in &lines {
        check_line(v, v["engine"].as_str().unwrap(), "generate", 2);
    }
    let d = &lines[1]["vs_f32"];
    assert_eq!(d["against"], "jit", "{d}");
    let (max, mean, cos) = (
        num(d, "max_rel_err"),
        num(d, "mean_rel_err"),
        num(d, "cosine_min"),
    );
    assert!(
        max > 0.0 && mean > 0.0 && cos > 0.99 && cos <= 1.0 + 1e-9,
        "{d}"
    );
    assert_eq!(d["greedy_tokens"].as_u64(), Some(5), "{d}");
    assert!(d["greedy_tokens_agree"].as_u64().unwrap() <= 5, "{d}");
    assert!(lines[2].get("vs_f32").is_none() && lines[0].get("vs_f32").is_none());
    let e = bench_fails(&[gpt2, "--engine", "interp", "--dtype", "bf16"]);
    assert!(
        e.contains("--dtype bf16") && e.contains("--engine interp"),
        "{e}"
    );
}

/// `--report` with a narrow `--dtype`: each matmul row is the narrow call the runtime ran
/// (its format, its micro-kernel), and the weights line and JSON count the narrow bytes.
#[test]
fn report_shows_narrow_matmuls_as_they_ran() {
    let gpt2 = fixture("gpt2-tiny");
    let base = [
        gpt2.to_str().unwrap(),
        "--task",
        "generate",
        "--prompt-tokens",
        "4",
        "--new-tokens",
        "2",
        "--runs",
        "1",
        "--engine",
        "jit",
    ];
    let stdout = bench_text(&[&base[..], &["--dtype", "int8", "--report"]].concat());
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("linear "))
        .collect();
    assert!(!rows.is_empty(), "no matmul rows:\n{stdout}");
    for r in &rows {
        assert!(
            r.contains(" int8 ") && r.contains("_mmm_i8_"),
            "not an int8 call: {r}"
        );
    }
    assert!(stdout.contains("(int8: "), "{stdout}");
    let lines = bench(&[&base[..], &["--dtype", "int8,f32", "--json"]].concat());
    let bytes = |d: &str| num(dtype_line(&lines, d), "weight_bytes");
    assert!(bytes("int8") < bytes("f32"), "{lines:?}");
}
