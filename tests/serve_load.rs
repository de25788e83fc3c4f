//! A bounded load test on loopback: 64 concurrent clients against an all-MiniLM server, a fixed
//! number of requests each; every answer must be a 200 with the right number of embeddings.
//! Latency percentiles and throughput are printed (run with --nocapture), never asserted:
//! figures belong to benchmarks (benches/serve.rs).

mod common;

use common::cli::bin;
use common::http::{try_request, Server};
use common::minilm_dir;
use serde_json::json;
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const PER_CLIENT: usize = 6;

#[test]
fn sixty_four_clients_no_errors() {
    let s = Server::start(
        &bin(),
        &["serve", minilm_dir().to_str().unwrap()],
        &["--max-queue", "256"],
    );
    let port = s.port;
    let started = Instant::now();
    let results: Vec<Vec<Result<Duration, String>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..CLIENTS)
            .map(|c| {
                sc.spawn(move || {
                    (0..PER_CLIENT)
                        .map(|r| {
                            let body = json!({"input": format!("client {c} asks question {r} about the weather")})
                                .to_string();
                            let t = Instant::now();
                            let resp = try_request(
                                port,
                                "POST",
                                "/v1/embeddings",
                                &[("Content-Type", "application/json")],
                                Some(body.as_bytes()),
                            )
                            .map_err(|e| format!("client {c} request {r}: {e}"))?;
                            if resp.status != 200 {
                                return Err(format!("client {c} request {r}: {} {}", resp.status, resp.text()));
                            }
                            let n = resp.json()["data"][0]["embedding"].as_array().map_or(0, Vec::len);
                            if n != 384 {
                                return Err(format!("client {c} request {r}: {n} dimensions"));
                            }
                            Ok(t.elapsed())
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed();
    let errors: Vec<&String> = results
        .iter()
        .flatten()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} errors, first: {}",
        errors.len(),
        errors[0]
    );
    let mut lat: Vec<Duration> = results.into_iter().flatten().map(Result::unwrap).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "load: {CLIENTS} clients x {PER_CLIENT} requests = {} in {wall:.2?}: {:.0} req/s, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1]
    );
    let m = s.get("/metrics").text();
    let line = m
        .lines()
        .find(|l| l.starts_with("cranformer_batch_size_sum{kind=\"embed\"}"))
        .unwrap_or("");
    let calls = m
        .lines()
        .find(|l| l.starts_with("cranformer_batch_size_count{kind=\"embed\"}"))
        .unwrap_or("");
    println!("load: {line}; {calls}");
}
