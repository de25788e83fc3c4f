//! `serve` over HTTP on the fixtures: every route, every error, batching that does not change
//! results, the API key, a full queue, SIGTERM, and a compiled executable's `serve`.
//! Servers listen on 127.0.0.1 with `--port 0`; every request loop is bounded.

mod common;

use common::cli::{bin, edit_json, fixture_copy, run_json, scratch};
use common::http::{request, Resp, Server};
use common::{fixture_dir, flat_ids, ids_of, minilm_dir, Reference};
use serde_json::{json, Value};
use std::path::Path;

fn serve(dir: &Path, args: &[&str]) -> Server {
    Server::start(&bin(), &["serve", dir.to_str().unwrap()], args)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `|got - want| <= abs + rel * max|want|`, the fixtures' rule; prints the worst element.
fn close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d <= abs + rel * scale,
        "{what}: worst at {i}: got {} want {} (diff {d})",
        got[i],
        want[i]
    );
}

/// Runs `f` on `n` threads at once; their results in order.
fn concurrently<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn minilm_embeddings_match_the_reference_alone_and_batched() {
    let r = Reference::load("minilm");
    let case = r.case("embed");
    let texts: Vec<String> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let (want, shape) = r.tensor("embed.embeddings");
    let dim = shape[1];
    let s = serve(&minilm_dir(), &["--model-name", "minilm"]);
    assert!(s.ready_line.contains("/v1/embeddings"), "{}", s.ready_line);

    // All at once, in one request.
    let v = s
        .post(
            "/v1/embeddings",
            &json!({"model": "minilm", "input": texts}),
        )
        .expect(200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 40, "usage: {v}");
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(tokens));
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["index"], i);
        close(
            &format!("batched text {i}"),
            &floats(&d["embedding"]),
            &want[i * dim..(i + 1) * dim],
            r.abs,
            r.rel,
        );
    }
    // Each alone, and all concurrently as separate requests (batched by the server).
    for round in 0..2 {
        let got = concurrently(texts.len(), |i| {
            s.post("/v1/embeddings", &json!({"input": texts[i]}))
                .expect(200)
        });
        for (i, v) in got.iter().enumerate() {
            close(
                &format!("round {round}, text {i} on its own request"),
                &floats(&v["data"][0]["embedding"]),
                &want[i * dim..(i + 1) * dim],
                r.abs,
                r.rel,
            );
        }
    }
    let alone = s
        .post("/v1/embeddings", &json!({"input": texts[0]}))
        .expect(200);
    close(
        "text 0 alone",
        &floats(&alone["data"][0]["embedding"]),
        &want[..dim],
        r.abs,
        r.rel,
    );

    // base64: the same floats, little-endian.
    let b = s
        .post(
            "/v1/embeddings",
            &json!({"input": [texts[0].clone()], "encoding_format": "base64"}),
        )
        .expect(200);
    let decoded = base64_decode(b["data"][0]["embedding"].as_str().unwrap());
    let from_b64: Vec<f32> = decoded
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(from_b64, floats(&alone["data"][0]["embedding"]));

    // Token ids as input: the same as the text's.
    let ids = s
        .post("/tokenize", &json!({"inputs": texts[0]}))
        .expect(200);
    let ids: Vec<i64> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids[0], 101);
    // Without the special tokens: the same ids less [CLS] and [SEP], as
    // tokenizer(text, add_special_tokens=False).
    let plain: Vec<i64> = s
        .post(
            "/tokenize",
            &json!({"inputs": texts[0], "add_special_tokens": false}),
        )
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(plain, ids[1..ids.len() - 1]);
    let by_ids = s.post("/v1/embeddings", &json!({"input": ids})).expect(200);
    close(
        "token ids input",
        &floats(&by_ids["data"][0]["embedding"]),
        &want[..dim],
        r.abs,
        r.rel,
    );

    // TEI /embed (normalize is a no-op on an already normalised model).
    let e = s
        .post(
            "/embed",
            &json!({"inputs": [texts[1].clone()], "normalize": true}),
        )
        .expect(200);
    close("/embed", &floats(&e[0]), &want[dim..2 * dim], r.abs, r.rel);
    // normalize: false, as TEI: the mean of the reference's token states over the mask,
    // before the model's own Normalize module.
    let (states, sshape) = r.tensor("embed.last_hidden_state");
    let mask = ids_of(&case["attention_mask"]);
    let (seq, i) = (sshape[1], 1);
    let kept: Vec<usize> = (0..seq).filter(|&t| mask[i][t] == 1).collect();
    let mean: Vec<f32> = (0..dim)
        .map(|c| {
            let sum: f32 = kept.iter().map(|&t| states[(i * seq + t) * dim + c]).sum();
            sum / kept.len() as f32
        })
        .collect();
    let raw = s
        .post(
            "/embed",
            &json!({"inputs": [texts[1].clone()], "normalize": false}),
        )
        .expect(200);
    close(
        "/embed normalize false",
        &floats(&raw[0]),
        &mean,
        r.abs,
        r.rel,
    );

    // The same as `cranformer embed --json`.
    let cli = run_json(
        &bin(),
        &["embed", minilm_dir().to_str().unwrap(), "--json", &texts[2]],
    );
    close(
        "cranformer embed",
        &floats(&cli["embeddings"][0]),
        &want[2 * dim..3 * dim],
        r.abs,
        r.rel,
    );

    // Batching happened (16 + 6 texts in at most a few calls, not one per request).
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains("cranformer_batch_size_count{kind=\"embed\"}"),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "cranformer_http_requests_total{route=\"/v1/embeddings\",status=\"200\"}"
        ) >= 16.0,
        "{text}"
    );
    assert!(metric(&text, "cranformer_tokens_in_total") > 0.0, "{text}");
    for name in [
        "cranformer_http_request_duration_seconds_bucket",
        "cranformer_queue_time_seconds_bucket",
        "cranformer_requests_in_flight",
        "cranformer_tokens_out_total",
    ] {
        assert!(text.contains(name), "no {name} in /metrics:\n{text}");
    }
}

/// Long texts embed as `cranformer embed` and sentence-transformers embed them: cut to
/// `max_seq_length` (256 for all-MiniLM-L6-v2, below its 512 positions) when the request asks
/// to truncate, refused naming that limit when it does not.
#[test]
fn minilm_long_texts_truncate_to_max_seq_length() {
    let r = reference_inputs("minilm");
    let case = r.case("embed_long");
    let texts: Vec<String> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let (want, shape) = r.tensor("embed_long.embeddings");
    let dim = shape[1];
    let s = serve(&minilm_dir(), &["--model-name", "minilm"]);
    let tei = s
        .post("/embed", &json!({"inputs": texts, "truncate": true}))
        .expect(200);
    let openai = s
        .post("/v1/embeddings", &json!({"input": texts, "truncate": true}))
        .expect(200);
    for i in 0..texts.len() {
        let want = &want[i * dim..(i + 1) * dim];
        close(
            &format!("/embed text {i}"),
            &floats(&tei[i]),
            want,
            r.abs,
            r.rel,
        );
        close(
            &format!("/v1/embeddings text {i}"),
            &floats(&openai["data"][i]["embedding"]),
            want,
            r.abs,
            r.rel,
        );
    }
    // 336 tokens: past max_seq_length but within the positions, so only that limit refuses it.
    for (path, body) in [
        ("/embed", json!({"inputs": texts[0]})),
        ("/v1/embeddings", json!({"input": texts[0]})),
    ] {
        let resp = s.post(path, &body);
        assert!(
            (400..500).contains(&resp.status),
            "{path}: status {}",
            resp.status
        );
        let text = resp.text();
        assert!(
            text.contains("at most 256") && text.contains("max_seq_length"),
            "{path}: {text}"
        );
    }
}

/// A fixture's `reference-inputs.*` (cases added after `reference.*`, same layout).
fn reference_inputs(fixture: &str) -> Reference {
    let dir = fixture_dir(fixture);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference-inputs.json")).unwrap())
            .unwrap();
    let tensors = cranformer_runtime::weights::Weights::open_files(&[
        dir.join("reference-inputs.safetensors")
    ])
    .unwrap();
    let abs = json["tolerance"]["abs"].as_f64().unwrap() as f32;
    let rel = json["tolerance"]["rel"].as_f64().unwrap() as f32;
    Reference {
        json,
        tensors,
        abs,
        rel,
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = vec![];
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        buf = (buf << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// Every malformed request gets a 4xx with an OpenAI error object, never a dropped connection.
#[test]
fn bad_requests_get_openai_errors() {
    let s = serve(&fixture_dir("bert-tiny"), &["--model-name", "tiny"]);
    let post = |path: &str, body: Value| s.post(path, &body);
    let cases: Vec<(&str, Resp, u16, &str)> = vec![
        (
            "malformed JSON",
            s.post_raw("/v1/embeddings", b"{\"input\": [1,"),
            400,
            "not valid JSON",
        ),
        (
            "not an object",
            s.post_raw("/v1/embeddings", b"[1, 2]"),
            400,
            "",
        ),
        (
            "wrong type",
            post("/v1/embeddings", json!({"input": 3})),
            400,
            "input",
        ),
        (
            "wrong field type",
            post("/v1/embeddings", json!({"input": "a", "model": 5})),
            400,
            "model",
        ),
        (
            "missing input",
            post("/v1/embeddings", json!({})),
            400,
            "input",
        ),
        (
            "empty text",
            post("/v1/embeddings", json!({"input": ""})),
            400,
            "empty",
        ),
        (
            "empty list",
            post("/v1/embeddings", json!({"input": []})),
            400,
            "empty",
        ),
        (
            "mixed list",
            post("/v1/embeddings", json!({"input": ["a", 3]})),
            400,
            "input[1]",
        ),
        (
            "id out of range",
            post("/v1/embeddings", json!({"input": [101, 99999999]})),
            400,
            "vocabulary",
        ),
        (
            "too many tokens",
            post("/v1/embeddings", json!({"input": "word ".repeat(100)})),
            400,
            "at most 64",
        ),
        (
            "bad encoding",
            post(
                "/v1/embeddings",
                json!({"input": "a", "encoding_format": "hex"}),
            ),
            400,
            "encoding_format",
        ),
        (
            "unknown model",
            post("/v1/embeddings", json!({"input": "a", "model": "gpt-4"})),
            404,
            "gpt-4",
        ),
        (
            "unknown route",
            post("/v1/chat/completions", json!({})),
            404,
            "/v1/embeddings",
        ),
        (
            "no generation here",
            post("/v1/completions", json!({"prompt": "a"})),
            404,
            "no route",
        ),
        ("wrong method", s.get("/v1/embeddings"), 405, "GET"),
        (
            "/embed wrong type",
            post("/embed", json!({"inputs": {"a": 1}})),
            400,
            "inputs",
        ),
        (
            "/tokenize missing",
            post("/tokenize", json!({"text": "a"})),
            400,
            "inputs",
        ),
        (
            "v2 unknown model",
            post("/v2/models/other/infer", json!({"inputs": []})),
            404,
            "other",
        ),
        (
            "v2 empty inputs",
            post("/v2/models/tiny/infer", json!({"inputs": []})),
            400,
            "inputs",
        ),
        (
            "v2 unknown tensor",
            post(
                "/v2/models/tiny/infer",
                json!({"inputs": [
            {"name": "pixels", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}),
            ),
            400,
            "pixels",
        ),
        (
            "v2 bad shape",
            post(
                "/v2/models/tiny/infer",
                json!({"inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 102]}]}),
            ),
            400,
            "shape",
        ),
        (
            "v2 float ids",
            post(
                "/v2/models/tiny/infer",
                json!({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.0]}]}),
            ),
            400,
            "FP32",
        ),
        (
            "v2 id out of range",
            post(
                "/v2/models/tiny/infer",
                json!({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 40000]}]}),
            ),
            400,
            "vocabulary",
        ),
        (
            "v2 mask not 0/1",
            post(
                "/v2/models/tiny/infer",
                json!({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 7]}]}),
            ),
            400,
            "attention_mask",
        ),
    ];
    for (what, resp, status, needle) in cases {
        let msg = resp.error(status);
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} does not mention {needle:?}"
        );
    }
    // An oversized body: 413, with the error object.
    let big = format!("{{\"input\": \"{}\"}}", "a".repeat(5 << 20));
    let r = s.post_raw("/v1/embeddings", big.as_bytes());
    r.error(413);
    // Ten times the limit, all written before the answer is read (as Python's http.client
    // does): every write goes through and the 413 arrives, not a broken pipe.
    {
        use std::io::{Read, Write};
        let huge = format!("{{\"input\": \"{}\"}}", "a".repeat(40 << 20));
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        write!(
            c,
            "POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            huge.len()
        )
        .unwrap();
        c.write_all(huge.as_bytes())
            .expect("the server takes in the whole body before its 413");
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large") && answer.contains("4194304"));
    }
    // The server is still fine.
    s.post("/v1/embeddings", &json!({"input": "still alive"}))
        .expect(200);
}

/// KServe v2 on bert-tiny: health, metadata, and `infer` equal to the fixture's tensors.
#[test]
fn kserve_infer_matches_the_forward_task() {
    let r = Reference::load("bert-tiny");
    let case = r
        .cases()
        .iter()
        .find(|c| c["attention_mask"].is_array())
        .expect("a padded case");
    let name = case["name"].as_str().unwrap();
    let s = serve(&fixture_dir("bert-tiny"), &["--model-name", "tiny"]);
    assert_eq!(s.get("/v2/health/live").expect(200)["live"], true);
    assert_eq!(s.get("/v2/health/ready").expect(200)["ready"], true);
    assert_eq!(s.get("/v2/models/tiny/ready").expect(200)["ready"], true);
    let meta = s.get("/v2/models/tiny").expect(200);
    assert_eq!(meta["name"], "tiny");
    let outs: Vec<&str> = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        outs.contains(&"last_hidden_state") && outs.contains(&"mlm_logits"),
        "{meta}"
    );
    s.get("/v2/models/nope").error(404);

    let tensor = |key: &str| -> Value {
        let rows = case[key].as_array().unwrap();
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
            .collect();
        json!({"name": key, "datatype": "INT64",
               "shape": [rows.len(), rows[0].as_array().unwrap().len()], "data": flat})
    };
    let mut inputs = vec![tensor("input_ids"), tensor("attention_mask")];
    if case["token_type_ids"].is_array() {
        inputs.push(tensor("token_type_ids"));
    }
    let v = s
        .post(
            "/v2/models/tiny/infer",
            &json!({"id": "r1", "inputs": inputs, "outputs": [{"name": "pooler_output"}]}),
        )
        .expect(200);
    assert_eq!(v["id"], "r1");
    // The tokens it read count in /metrics, every id of every row, as for the other routes.
    let ids = case["input_ids"].as_array().unwrap();
    let n = ids.len() * ids[0].as_array().unwrap().len();
    let text = s.get("/metrics").text();
    assert_eq!(
        metric(&text, "cranformer_tokens_in_total"),
        n as f64,
        "{text}"
    );
    // An encoder has no decode steps: the ready line says how it batches instead.
    assert!(
        s.ready_line
            .contains("batching: requests that arrive together share a call"),
        "{}",
        s.ready_line
    );
    let out = &v["outputs"];
    assert_eq!(out.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(out[0]["name"], "pooler_output");
    let (want, shape) = r.tensor(&format!("{name}.pooler_output"));
    assert_eq!(
        out[0]["shape"].as_array().unwrap().len(),
        shape.len(),
        "{}",
        out[0]["shape"]
    );
    close(
        "infer pooler_output",
        &floats(&out[0]["data"]),
        &want,
        r.abs,
        r.rel,
    );

    // An input given twice is an error naming it, not the last one winning.
    let twice = s
        .post(
            "/v2/models/tiny/infer",
            &json!({"inputs": [tensor("input_ids"), tensor("input_ids")]}),
        )
        .error(400);
    assert!(
        twice.contains("input_ids") && twice.contains("twice"),
        "{twice}"
    );
    // The forward task's own checks name the tensor, and the error's param the field.
    let no_ids = s.post(
        "/v2/models/tiny/infer",
        &json!({"inputs": [tensor("attention_mask")]}),
    );
    let msg = no_ids.error(400);
    assert!(msg.contains("input_ids"), "{msg}");
    assert_eq!(no_ids.json()["error"]["param"], "inputs");

    // The OpenAPI document lists what this model offers, and only that.
    let doc = s.get("/openapi.json").expect(200);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/embeddings",
        "/embed",
        "/tokenize",
        "/v2/models/{name}/infer",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(!paths.contains_key("/v1/completions"));
    let models = s.get("/v1/models").expect(200);
    assert_eq!(models["data"][0]["id"], "tiny");
    // bert-tiny's next-sentence head classifies pairs, as `cranformer classify` does.
    let nsp = s
        .post(
            "/predict",
            &json!({"inputs": ["The sky is blue.", "It rarely rains."]}),
        )
        .expect(200);
    let mut labels: Vec<&str> = nsp
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["is_next", "not_next"]);
}

/// GPT-2: greedy completions equal the fixture's and `cranformer generate --json`'s, alone,
/// streamed, and among concurrent streams of other lengths.
#[test]
fn gpt2_completions_alone_streamed_and_batched() {
    let r = Reference::load("gpt2-tiny");
    let greedy: Vec<&Value> = r
        .cases()
        .iter()
        .filter(|c| c["kind"] == "gpt2_greedy")
        .collect();
    let dir = fixture_dir("gpt2-tiny");
    let s = serve(&dir, &["--model-name", "g", "--max-new-tokens-limit", "40"]);
    let complete = |prompt: &str, max: usize| -> Value {
        s.post(
            "/v1/completions",
            &json!({"model": "g", "prompt": prompt, "max_tokens": max, "temperature": 0}),
        )
        .expect(200)
    };
    for c in &greedy {
        let prompt = c["text"].as_str().unwrap();
        let want = c["new_text"].as_str().unwrap();
        let v = complete(prompt, 20);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], want, "prompt {prompt:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let n = c["input_ids"].as_array().unwrap().len() as u64;
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(n));
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(20));
        assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(n + 20));
    }
    let cli = run_json(
        &bin(),
        &[
            "generate",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello, my dog is cute",
            "--max-new-tokens",
            "20",
            "--json",
        ],
    );
    assert_eq!(cli["text"], greedy[0]["new_text"]);

    // Streamed: the pieces add up to the same text; a finish_reason, the usage if
    // stream_options asks for it, then [DONE].
    let stream = s.post(
        "/v1/completions",
        &json!({"prompt": greedy[1]["text"], "max_tokens": 20, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert_eq!(stream.status, 200);
    assert!(stream
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let events = stream.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            text.push_str(c["text"].as_str().unwrap());
            if !c["finish_reason"].is_null() {
                finish = Some(c["finish_reason"].clone());
            }
        }
        if v["usage"].is_object() {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(text, greedy[1]["new_text"].as_str().unwrap());
    assert_eq!(finish, Some(json!("length")));
    assert_eq!(usage.unwrap()["completion_tokens"], 20);
    // Without include_usage (as OpenAI) every chunk before [DONE] has a choice: clients read
    // chunk.choices[0].
    for options in [json!(null), json!({"include_usage": false}), json!({})] {
        let events = s
            .post(
                "/v1/completions",
                &json!({"prompt": greedy[1]["text"], "max_tokens": 5, "temperature": 0,
                        "stream": true, "stream_options": options}),
            )
            .events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            assert_eq!(
                v["choices"].as_array().map(Vec::len),
                Some(1),
                "{options}: {e}"
            );
            assert!(v["usage"].is_null(), "{options}: {e}");
        }
    }

    // Concurrent streams of different prompt lengths and start times share decode steps; each
    // gets exactly the tokens it gets alone.
    let got = concurrently(9, |i| {
        std::thread::sleep(std::time::Duration::from_millis(3 * i as u64));
        let c = greedy[i % greedy.len()];
        let v = complete(c["text"].as_str().unwrap(), 10 + i);
        v["choices"][0]["text"].as_str().unwrap().to_string()
    });
    for (i, text) in got.iter().enumerate() {
        let c = greedy[i % greedy.len()];
        let alone = complete(c["text"].as_str().unwrap(), 10 + i);
        assert_eq!(
            text,
            alone["choices"][0]["text"].as_str().unwrap(),
            "stream {i}"
        );
    }
    let m = s.get("/metrics").text();
    assert!(
        m.contains("cranformer_batch_size_count{kind=\"decode\"}"),
        "{m}"
    );

    // Stop strings cut the text and finish with "stop"; n choices; sampling with a seed
    // repeats itself.
    let full = greedy[0]["new_text"].as_str().unwrap();
    let stop = &full[8..12];
    let v = s
        .post(
            "/v1/completions",
            &json!({"prompt": greedy[0]["text"], "max_tokens": 20, "temperature": 0, "stop": [stop]}),
        )
        .expect(200);
    assert_eq!(v["choices"][0]["text"], full[..full.find(stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sample = |seed: u64| {
        s.post(
            "/v1/completions",
            &json!({"prompt": ["a", "b"], "max_tokens": 8, "temperature": 0.9, "seed": seed, "n": 2}),
        )
        .expect(200)
    };
    let (a, b) = (sample(7), sample(7));
    assert_eq!(a["choices"].as_array().unwrap().len(), 4);
    assert_eq!(a["choices"], b["choices"]);

    // Errors particular to completions.
    let bad = |body: Value, needle: &str| {
        let msg = s.post("/v1/completions", &body).error(400);
        assert!(msg.contains(needle), "{body}: {msg}");
    };
    bad(json!({"prompt": "a", "max_tokens": 41}), "max_tokens");
    bad(json!({"prompt": "a", "max_tokens": 0}), "max_tokens");
    bad(json!({"prompt": "a", "temperature": -1}), "temperature");
    bad(json!({"prompt": "a", "top_p": 0}), "top_p");
    bad(json!({"prompt": "a", "n": 0}), "n");
    bad(json!({"prompt": "a", "stop": 3}), "stop");
    bad(json!({"prompt": ""}), "empty");
    bad(json!({"prompt": "word ".repeat(80)}), "at most 64");
    bad(json!({"prompt": "a", "max_tokens": "many"}), "max_tokens");
    // What would change the tokens and is not done is refused, not ignored.
    bad(
        json!({"prompt": "a", "presence_penalty": 1.0}),
        "presence_penalty",
    );
    bad(
        json!({"prompt": "a", "frequency_penalty": -0.5}),
        "frequency_penalty",
    );
    bad(
        json!({"prompt": "a", "logit_bias": {"50256": 100}}),
        "logit_bias",
    );
    bad(json!({"prompt": "a", "suffix": "x"}), "suffix");
    bad(json!({"prompt": "a", "echo": true}), "echo");
    bad(json!(["a", 5]), "JSON object");
    // Their neutral values and nulls are what leaving them out is.
    s.post(
        "/v1/completions",
        &json!({"prompt": "a", "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0,
                "logit_bias": {}, "suffix": null, "echo": false, "stream": null}),
    )
    .expect(200);
    s.post("/v1/embeddings", &json!({"input": "a"})).error(404);
    s.post("/predict", &json!({"inputs": "a"})).error(404);
}

/// Streams of different prompt lengths join a running batch at different decode steps and
/// leave at different steps: a long stream runs while five others, sent once it has had its
/// first token, pass through the two remaining slots (`--max-streams 3`), each joining as
/// another leaves. Each gets exactly the greedy tokens of `cranformer generate`.
#[test]
fn gpt2_completions_stop_at_any_of_a_list_of_eos_ids() {
    // `eos_token_id` as a list (here in generation_config.json): a stream finishes with
    // "stop" right after any of them, as `generate` does.
    let r = Reference::load("gpt2-tiny");
    let case = r.case("greedy_0");
    let ids = flat_ids(&case["new_ids"]);
    let dir = fixture_copy("gpt2-tiny", "serve-eos-list");
    edit_json(&dir.join("generation_config.json"), |g| {
        g["eos_token_id"] = json!([50256, ids[2]])
    });
    let s = serve(&dir, &[]);
    let v = s
        .post(
            "/v1/completions",
            &json!({"prompt": case["text"], "max_tokens": 20, "temperature": 0}),
        )
        .expect(200);
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
}

#[test]
fn gpt2_streams_joining_and_leaving_mid_batch_match_generate() {
    let others = [
        "Hello, my dog is cute",
        "The quick brown fox jumps over the lazy dog and keeps on running",
        "Once upon a time",
        "1 2 3 4 5 6 7 8 9 10 11 12",
        "x y",
    ];
    let (steps, rows) = join_a_long_stream(
        "gpt2-tiny",
        &["--max-new-tokens-limit", "50", "--max-streams", "3"],
        ("a", 50),
        &others,
        7,
    );
    assert!(rows > steps, "decode steps {steps}, rows {rows}");
}

/// Starts a greedy streamed completion of `long` on `fixture`'s server, sends `others` in one
/// request once its first token has arrived, and checks every text against `generate`'s.
/// Returns the decode steps and the rows they ran (from /metrics).
fn join_a_long_stream(
    fixture: &str,
    args: &[&str],
    (long, long_max): (&str, usize),
    others: &[&str],
    others_max: usize,
) -> (f64, f64) {
    let dir = fixture_dir(fixture);
    let s = serve(&dir, args);
    let (started, first_token) = std::sync::mpsc::channel::<()>();
    let (long_text, others_v) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            let body =
                json!({"prompt": long, "max_tokens": long_max, "temperature": 0, "stream": true})
                    .to_string();
            let r = common::http::try_request_watching(
                s.port,
                "POST",
                "/v1/completions",
                &[("Content-Type", "application/json")],
                Some(body.as_bytes()),
                &mut |raw| {
                    if raw.windows(6).any(|w| w == b"data: ") {
                        let _ = started.send(());
                    }
                },
            )
            .expect("streamed completion");
            let _ = started.send(());
            assert_eq!(r.status, 200, "{}", r.text());
            let mut text = String::new();
            for e in r.events().iter().filter(|e| *e != "[DONE]") {
                let v: Value = serde_json::from_str(e).unwrap();
                if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
                    text.push_str(c["text"].as_str().unwrap());
                }
            }
            text
        });
        first_token.recv().unwrap();
        let v = s
            .post(
                "/v1/completions",
                &json!({"prompt": others, "max_tokens": others_max, "temperature": 0}),
            )
            .expect(200);
        (a.join().unwrap(), v)
    });
    let generate = |prompt: &str, max: usize| -> String {
        let cli = run_json(
            &bin(),
            &[
                "generate",
                dir.to_str().unwrap(),
                "--prompt",
                prompt,
                "--max-new-tokens",
                &max.to_string(),
                "--json",
            ],
        );
        cli["text"].as_str().unwrap().to_string()
    };
    assert_eq!(long_text, generate(long, long_max), "the long stream");
    let choices = others_v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), others.len());
    for c in choices {
        let i = c["index"].as_u64().unwrap() as usize;
        assert_eq!(
            c["text"].as_str().unwrap(),
            generate(others[i], others_max),
            "stream {i}: {:?}",
            others[i]
        );
    }
    let m = s.get("/metrics").text();
    (
        metric(&m, "cranformer_batch_size_count{kind=\"decode\"}"),
        metric(&m, "cranformer_batch_size_sum{kind=\"decode\"}"),
    )
}

/// T5 streams of different prompt (encoder) lengths, one joining while another decodes,
/// share decode steps (`batch_step`, padded and masked) and give `generate`'s greedy text.
#[test]
fn t5_streams_of_different_lengths_share_steps_and_match_generate() {
    let others = [
        "Hello, my dog is cute",
        "summarize: The quick brown fox jumps over the lazy dog and keeps on running",
        "x",
    ];
    let others_max = 9;
    // The long stream decodes long enough for the others to join it on a busy machine: with
    // 40 tokens (a few milliseconds on this model) they missed most of it in one fresh-clone
    // run of the whole suite (9 shared rows).
    let (steps, rows) = join_a_long_stream(
        "t5-tiny",
        &["--max-new-tokens-limit", "160"],
        ("translate English to German: a", 160),
        &others,
        others_max,
    );
    // Streams of three encoder lengths (four with the long one) shared decode steps.
    assert!(
        rows >= steps + 2.0 * (others_max as f64 - 1.0),
        "decode steps {steps}, rows {rows}"
    );
}

/// T5 completions and a classifier's /predict, equal to the CLI's results.
#[test]
fn t5_completions_and_classifier_predict() {
    let t5 = fixture_dir("t5-tiny");
    let r = Reference::load("t5-tiny");
    let case = r.case("greedy_0");
    let s = serve(&t5, &[]);
    let prompts = [
        case["text"].as_str().unwrap(),
        r.case("greedy_1")["text"].as_str().unwrap(),
    ];
    let cli: Vec<Value> = prompts
        .iter()
        .map(|p| {
            run_json(
                &bin(),
                &[
                    "generate",
                    t5.to_str().unwrap(),
                    "--prompt",
                    p,
                    "--max-new-tokens",
                    "16",
                    "--json",
                ],
            )
        })
        .collect();
    // Both prompts in one request (two streams), and each alone.
    let v = s
        .post(
            "/v1/completions",
            &json!({"prompt": prompts, "max_tokens": 16, "temperature": 0}),
        )
        .expect(200);
    for (i, c) in cli.iter().enumerate() {
        assert_eq!(v["choices"][i]["text"], c["text"], "prompt {i} batched");
        let alone = s
            .post(
                "/v1/completions",
                &json!({"prompt": prompts[i], "max_tokens": 16, "temperature": 0}),
            )
            .expect(200);
        assert_eq!(alone["choices"][0]["text"], c["text"], "prompt {i} alone");
    }
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(32));
    drop(s);

    let cls = fixture_dir("bert-tiny-cls");
    let s = serve(&cls, &[]);
    // Three texts: a list of two would be one sentence pair, as in TEI.
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world",
        "A third text",
    ];
    let cli = run_json(
        &bin(),
        &[
            "classify",
            cls.to_str().unwrap(),
            "--json",
            texts[0],
            texts[1],
            texts[2],
        ],
    );
    let v = s.post("/predict", &json!({"inputs": texts})).expect(200);
    for (i, res) in v.as_array().unwrap().iter().enumerate() {
        let best = &res[0];
        assert_eq!(best["label"], cli["results"][i]["label"], "{v}");
        let want = cli["results"][i]["scores"][best["label"].as_str().unwrap()]
            .as_f64()
            .unwrap();
        assert!(
            (best["score"].as_f64().unwrap() - want).abs() < 1e-5,
            "{v} vs {cli}"
        );
    }
    // One text gives one list; sentence pairs give the fixture's logits (raw scores).
    let one = s.post("/predict", &json!({"inputs": texts[1]})).expect(200);
    assert_eq!(one, v[1]);
    let refs = reference_inputs("bert-tiny-cls");
    let pairs = refs.case("classify_pairs");
    let (want, shape) = refs.tensor("classify_pairs.logits");
    let labels = shape[1];
    let v = s
        .post(
            "/predict",
            &json!({"inputs": pairs["pairs"], "raw_scores": true}),
        )
        .expect(200);
    let meta = s
        .get("/v2/models/BertForSequenceClassification")
        .expect(200);
    assert_eq!(
        meta["outputs"].as_array().unwrap().last().unwrap()["name"],
        "logits"
    );
    for (i, res) in v.as_array().unwrap().iter().enumerate() {
        let want = &want[i * labels..(i + 1) * labels];
        close_scores(&format!("pair {i} logits"), res, want, &refs);
    }
    // Past the 64 positions: refused, or with TEI's truncate cut `longest_first` to them, a
    // text and a pair giving the fixture's logits (truncated by Hugging Face).
    for (case, input) in [
        (
            "classify_long_single",
            json!(refs.case("classify_long_single")["texts"][0]),
        ),
        (
            "classify_long_pair",
            json!(refs.case("classify_long_pair")["pairs"][0]),
        ),
    ] {
        let msg = s.post("/predict", &json!({"inputs": input})).error(400);
        assert!(msg.contains("64"), "{case}: {msg}");
        let v = s
            .post(
                "/predict",
                &json!({"inputs": input, "raw_scores": true, "truncate": true}),
            )
            .expect(200);
        let (want, _) = refs.tensor(&format!("{case}.logits"));
        close_scores(case, &v, &want, &refs);
    }
}

/// One `/predict` answer's scores against the reference's values for its labels: the answer
/// comes best first, the reference in label order, so the sorted values are compared.
fn close_scores(what: &str, answer: &Value, want: &[f32], refs: &Reference) {
    let mut got: Vec<f32> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["score"].as_f64().unwrap() as f32)
        .collect();
    let mut exp = want.to_vec();
    got.sort_by(|a, b| b.total_cmp(a));
    exp.sort_by(|a, b| b.total_cmp(a));
    close(what, &got, &exp, refs.abs, refs.rel);
}

/// --api-key: 401 without the right bearer token; health stays open.
#[test]
fn api_key_is_required() {
    let s = serve(&fixture_dir("bert-tiny"), &["--api-key", "sekret"]);
    let body = json!({"input": "hi"}).to_string();
    let call = |auth: Option<&str>| {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        request(s.port, "POST", "/v1/embeddings", &h, Some(body.as_bytes()))
    };
    call(None).error(401);
    call(Some("Bearer wrong")).error(401);
    call(Some("sekret")).error(401);
    call(Some("Bearer sekret")).expect(200);
    s.get("/v1/models").error(401);
    s.get("/v2/health/ready").expect(200);
}

/// A full queue answers 503 with Retry-After; SIGTERM lets an in-flight request finish and
/// exits 0.
#[test]
fn overload_and_graceful_shutdown() {
    let mut s = serve(
        &minilm_dir(),
        &["--max-queue", "1", "--max-batch-tokens", "512"],
    );
    let long: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "sentence number {i} {}",
                "with many words in it ".repeat(10)
            )
        })
        .collect();
    let got = concurrently(24, |i| {
        let input = vec![long[i].clone(); 4];
        s.post("/v1/embeddings", &json!({ "input": input }))
    });
    let busy: Vec<&Resp> = got.iter().filter(|r| r.status == 503).collect();
    assert!(
        got.iter().all(|r| r.status == 200 || r.status == 503),
        "{:?}",
        got.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        !busy.is_empty(),
        "no request was refused with --max-queue 1"
    );
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("1")));
    busy[0].error(503);
    let ok = got.iter().filter(|r| r.status == 200).count();
    assert!(ok >= 1, "nothing got through");

    // SIGTERM while a large request is being answered: it completes, the server exits 0.
    let port = s.port;
    let texts: Vec<String> = (0..48)
        .map(|i| format!("{i} {}", "long text ".repeat(100)))
        .collect();
    let h = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/v1/embeddings",
            &[("Content-Type", "application/json")],
            Some(json!({"input": texts}).to_string().as_bytes()),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    s.terminate();
    let r = h.join().unwrap();
    assert_eq!(r.expect(200)["data"].as_array().unwrap().len(), 48);
    let status = s.wait(60);
    assert!(status.success(), "exit status {status}");
}

/// A compiled executable's `serve` answers as `cranformer serve` does.
#[test]
fn compiled_executable_serves_the_same() {
    let dir = fixture_dir("bert-tiny");
    let work = scratch("serve-exe");
    let exe = work.join("tiny");
    common::cli::run_ok(
        &bin(),
        &[
            "compile",
            dir.to_str().unwrap(),
            "-o",
            exe.to_str().unwrap(),
        ],
    );
    let a = Server::start(&exe, &["serve"], &["--model-name", "t"]);
    let b = serve(&dir, &["--model-name", "t"]);
    let body = json!({"model": "t", "input": ["a compiled model", "serves"]});
    let (x, y) = (
        a.post("/v1/embeddings", &body).expect(200),
        b.post("/v1/embeddings", &body).expect(200),
    );
    for i in 0..2 {
        close(
            "exe vs cranformer",
            &floats(&x["data"][i]["embedding"]),
            &floats(&y["data"][i]["embedding"]),
            2e-5,
            2e-4,
        );
    }
    assert_eq!(
        a.get("/openapi.json").expect(200)["paths"],
        b.get("/openapi.json").expect(200)["paths"]
    );
    a.post("/v1/completions", &json!({"prompt": "x"}))
        .error(404);
}

/// A cross-encoder's /rerank: the fixture's ranking, with the `rerank` task's scores.
#[test]
fn cross_encoder_rerank() {
    let dir = fixture_dir("bert-tiny-rerank");
    let r = Reference::load("bert-tiny-rerank");
    let case = r.case("rerank");
    let query = case["query"].as_str().unwrap();
    let docs: Vec<&str> = case["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let mut args = vec!["rerank", dir.to_str().unwrap(), "--query", query, "--json"];
    args.extend(&docs);
    let cli = run_json(&bin(), &args);
    let s = serve(&dir, &[]);
    let v = s
        .post("/rerank", &json!({"query": query, "texts": docs}))
        .expect(200);
    let got: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = case["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(got, want, "{v}");
    for (g, c) in v
        .as_array()
        .unwrap()
        .iter()
        .zip(cli["results"].as_array().unwrap())
    {
        assert_eq!(g["index"], c["index"], "{v} vs {cli}");
        assert!(
            (g["score"].as_f64().unwrap() - c["score"].as_f64().unwrap()).abs() < 1e-6,
            "{v} vs {cli}"
        );
    }
    // /predict on the same model: its one label scores sigmoid(logit) as /rerank does (and
    // as TEI and the text-classification pipeline report it); raw_scores gives the logit.
    let pairs: Vec<[&str; 2]> = docs.iter().map(|d| [query, *d]).collect();
    let ranked = v.as_array().unwrap();
    for (raw, field) in [(false, "score"), (true, "logit")] {
        let p = s
            .post("/predict", &json!({"inputs": pairs, "raw_scores": raw}))
            .expect(200);
        for (i, one) in p.as_array().unwrap().iter().enumerate() {
            let want = ranked.iter().find(|x| x["index"] == i).unwrap()[field]
                .as_f64()
                .unwrap();
            let got = one[0]["score"].as_f64().unwrap();
            assert!((got - want).abs() < 1e-6, "{field} of pair {i}: {p} vs {v}");
        }
    }
    s.post("/rerank", &json!({"texts": docs})).error(400);
    s.post("/rerank", &json!({"query": query, "texts": []}))
        .error(400);
    drop(s);
    // Only cross-encoders offer it.
    let s = serve(&fixture_dir("bert-tiny-cls"), &[]);
    s.post("/rerank", &json!({"query": query, "texts": docs}))
        .error(404);
}
