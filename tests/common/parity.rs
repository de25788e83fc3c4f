//! Parity with Hugging Face through a task command line, shared by tests/parity.rs
//! (`cranformer TASK MODEL_DIR --engine E ..`) and tests/compile_exe.rs (a compiled
//! executable: `BIN TASK ..`, run from another directory with an empty environment).
//! Included with `#[path]` next to `mod common;`.
#![allow(dead_code)]

use crate::common::cli::scratch;
use crate::common::*;
use cranformer_runtime::weights::Weights;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something that runs tasks: `cranformer TASK MODEL_DIR ..`, or a compiled executable,
/// which takes the same arguments without MODEL_DIR.
pub struct Runner {
    pub program: PathBuf,
    pub model: Option<PathBuf>,
    pub engine: Option<&'static str>,
    /// Run with an empty environment (what a compiled executable must cope with).
    pub env_clear: bool,
}

impl Runner {
    pub fn cranformer(model: &Path, engine: &'static str) -> Runner {
        Runner {
            program: crate::common::cli::bin(),
            model: Some(model.to_path_buf()),
            engine: Some(engine),
            env_clear: false,
        }
    }

    /// A compiled executable, run with an empty environment.
    pub fn executable(program: &Path) -> Runner {
        Runner {
            program: program.to_path_buf(),
            model: None,
            engine: None,
            env_clear: true,
        }
    }

    /// Runs `TASK [MODEL_DIR] [--engine E] rest..`; returns the output, whatever the status.
    pub fn output(&self, task: &str, rest: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(task, rest));
        if self.env_clear {
            // From its own directory too, so nothing is found relative to the build tree.
            cmd.env_clear();
            if let Some(dir) = self.program.parent() {
                cmd.current_dir(dir);
            }
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()))
    }

    /// Like [`Self::output`], failing the test with stderr unless it succeeds; returns stdout.
    pub fn ok(&self, task: &str, rest: &[&str]) -> String {
        let out = self.output(task, rest);
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}",
            self.program.display(),
            self.args(task, rest).join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    pub fn args<'a>(&'a self, task: &'a str, rest: &[&'a str]) -> Vec<String> {
        let mut v = vec![task.to_string()];
        if let Some(m) = &self.model {
            v.push(m.display().to_string());
        }
        if let Some(e) = self.engine {
            v.push("--engine".into());
            v.push(e.into());
        }
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    /// The last line of stdout parsed as JSON.
    pub fn json(&self, task: &str, rest: &[&str]) -> Value {
        let text = self.ok(task, rest);
        let line = text
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output from {task} {rest:?}"));
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{task} {rest:?}: not JSON ({e}): {line}"))
    }

    /// Like [`Self::json`], also returning stderr.
    pub fn json_and_stderr(&self, task: &str, rest: &[&str]) -> (Value, String) {
        let out = self.output(task, rest);
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}",
            self.program.display(),
            self.args(task, rest).join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("stdout is UTF-8");
        let line = text
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output from {task}"));
        let v = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{task} {rest:?}: not JSON ({e}): {line}"));
        (v, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `forward` on `input`; returns the written tensors.
    pub fn forward(&self, input: Value, tag: &str) -> Weights {
        let dir = scratch(&format!("fwd-{tag}"));
        let (inp, outp) = (dir.join("in.json"), dir.join("out.safetensors"));
        std::fs::write(&inp, input.to_string()).unwrap();
        self.ok(
            "forward",
            &[
                "--input",
                inp.to_str().unwrap(),
                "--output",
                outp.to_str().unwrap(),
            ],
        );
        Weights::open_files(&[outp]).unwrap()
    }
}

fn got(w: &Weights, name: &str) -> (Vec<f32>, Vec<usize>) {
    let shape = w
        .info(name)
        .unwrap_or_else(|| panic!("forward wrote no {name}"))
        .shape
        .clone();
    (w.get(name, &shape).unwrap().to_vec(), shape)
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The label names of `fixture`'s classifier in id order (config.json's id2label), or the
/// next-sentence head's.
fn label_names(fixture: &str) -> Vec<String> {
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(fixture).join("config.json")).unwrap(),
    )
    .unwrap();
    match config["id2label"].as_object() {
        Some(m) => (0..m.len())
            .map(|i| m[&i.to_string()].as_str().unwrap().to_string())
            .collect(),
        None => vec!["is_next".into(), "not_next".into()],
    }
}

fn softmax_rows(logits: &[f32], width: usize) -> Vec<f32> {
    logits
        .chunks(width)
        .flat_map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let e: Vec<f64> = row.iter().map(|&x| ((x - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |x| (x / sum) as f32)
        })
        .collect()
}

/// `classify --json [--pairs] [--truncate]` on `texts` (pairs flattened): checks the labels,
/// and the scores against `want_probs` `[rows, labels]` in label-id order.
#[allow(clippy::too_many_arguments)]
fn check_classify(
    run: &Runner,
    fixture: &str,
    tag: &str,
    flags: &[&str],
    texts: &[String],
    labels: &Value,
    want_probs: (&str, &[f32]),
    r: &Reference,
) {
    let mut args = vec!["--json"];
    args.extend(flags);
    args.push("--");
    args.extend(texts.iter().map(String::as_str));
    let c = run.json("classify", &args);
    let results = c["results"].as_array().unwrap();
    let got: Vec<String> = results
        .iter()
        .map(|x| x["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, strs(labels), "{tag}: labels");
    let names = label_names(fixture);
    let scores: Vec<f32> = results
        .iter()
        .flat_map(|x| {
            names
                .iter()
                .map(|n| x["scores"][n].as_f64().unwrap() as f32)
        })
        .collect();
    let (what, want) = want_probs;
    let shape = [results.len(), names.len()];
    check_close(
        &format!("{tag}: {what}"),
        want,
        &shape,
        &scores,
        r.abs,
        r.rel,
        |_| true,
    );
}

/// The reference input of a case for `forward`: the listed ids, and the mask when given.
fn forward_input(case: &Value) -> Value {
    let mut input = json!({"input_ids": case["input_ids"]});
    for key in ["token_type_ids", "attention_mask"] {
        if !case[key].is_null() {
            input[key] = case[key].clone();
        }
    }
    input
}

/// Runs every case of every reference file of `fixture` through `run`; `label` (the engine)
/// tags messages and files.
pub fn run_cases(fixture: &str, run: &Runner, label: &str) {
    for r in Reference::all(fixture) {
        run_reference(fixture, &r, run, label);
    }
}

fn run_reference(fixture: &str, r: &Reference, run: &Runner, label: &str) {
    for case in r.cases() {
        let name = case["name"].as_str().unwrap();
        let tag = format!("{fixture}-{name}-{label}");
        eprintln!("case {tag}");
        let kind = case["kind"].as_str().unwrap();
        let key = |out: &str| format!("{name}.{out}");
        match kind {
            "bert_encode" => {
                let w = run.forward(
                    json!({"input_ids": case["input_ids"], "token_type_ids": case["token_type_ids"],
                           "attention_mask": case["attention_mask"]}),
                    &tag,
                );
                for out in strs(&case["outputs"]) {
                    let (v, s) = got(&w, &out);
                    r.check(&key(&out), &v, &s);
                }
                if let Some(texts) = case.get("texts") {
                    check_tokenize(run, texts, &case["input_ids"]);
                }
            }
            "bert_fill_mask" => {
                let w = run.forward(json!({"input_ids": case["input_ids"]}), &tag);
                let (v, s) = got(&w, "mlm_logits");
                let pos = case["mask_position"].as_u64().unwrap() as usize;
                let vocab = s[2];
                r.check(
                    &key("mask_logits"),
                    &v[pos * vocab..(pos + 1) * vocab],
                    &[vocab],
                );
                let p = run.json(
                    "fill-mask",
                    &["--json", "--top-k", "5", case["text"].as_str().unwrap()],
                );
                let ids: Vec<i64> = p["predictions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["id"].as_i64().unwrap())
                    .collect();
                assert_eq!(ids, flat_ids(&case["top5_ids"]), "{tag}: fill-mask top 5");
                let toks: Vec<String> = p["predictions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["token"].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(toks, strs(&case["top5_tokens"]), "{tag}: fill-mask tokens");
            }
            "bert_classify" | "bert_classify_pairs" => {
                let w = run.forward(forward_input(case), &tag);
                let (v, s) = got(&w, "logits");
                r.check(&key("logits"), &v, &s);
                let (want, shape) = r.tensor(&key("logits"));
                let probs = softmax_rows(&want, shape[1]);
                let mut flags = vec![];
                if case.get("truncation").is_some() {
                    assert_eq!(case["truncation"], "longest_first", "{tag}");
                    flags.push("--truncate");
                }
                let texts = if kind == "bert_classify_pairs" {
                    flags.push("--pairs");
                    case["pairs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(strs)
                        .collect()
                } else {
                    strs(&case["texts"])
                };
                check_classify(
                    run,
                    fixture,
                    &tag,
                    &flags,
                    &texts,
                    &case["labels"],
                    ("softmax(logits)", &probs),
                    r,
                );
            }
            "bert_next_sentence" => {
                let texts: Vec<String> = case["pairs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(strs)
                    .collect();
                let (want, _) = r.tensor(&key("probs"));
                check_classify(
                    run,
                    fixture,
                    &tag,
                    &["--pairs"],
                    &texts,
                    &case["labels"],
                    ("probs", &want),
                    r,
                );
            }
            "bert_fill_mask_multi" => {
                let w = run.forward(json!({"input_ids": case["input_ids"]}), &tag);
                let (v, s) = got(&w, "mlm_logits");
                let vocab = s[2];
                let masks = case["masks"].as_array().unwrap();
                for (i, m) in masks.iter().enumerate() {
                    let pos = m["position"].as_u64().unwrap() as usize;
                    let row = &v[pos * vocab..(pos + 1) * vocab];
                    r.check(&key(&format!("mask{i}_logits")), row, &[vocab]);
                }
                let p = run.json(
                    "fill-mask",
                    &["--json", "--top-k", "5", case["text"].as_str().unwrap()],
                );
                assert!(
                    p.get("predictions").is_none(),
                    "{tag}: several masks, one list each"
                );
                let got_masks = p["masks"].as_array().unwrap();
                assert_eq!(got_masks.len(), masks.len(), "{tag}: one entry per mask");
                for (g, m) in got_masks.iter().zip(masks) {
                    assert_eq!(g["position"], m["position"], "{tag}: mask position");
                    let preds = g["predictions"].as_array().unwrap();
                    let ids: Vec<i64> = preds.iter().map(|x| x["id"].as_i64().unwrap()).collect();
                    assert_eq!(ids, flat_ids(&m["top5_ids"]), "{tag}: top 5 ids");
                    let toks: Vec<String> = preds
                        .iter()
                        .map(|x| x["token"].as_str().unwrap().to_string())
                        .collect();
                    assert_eq!(toks, strs(&m["top5_tokens"]), "{tag}: top 5 tokens");
                    let scores: Vec<f32> = preds
                        .iter()
                        .map(|x| x["score"].as_f64().unwrap() as f32)
                        .collect();
                    let want: Vec<f32> = m["top5_scores"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    check_close(
                        &format!("{tag}: top 5 scores"),
                        &want,
                        &[5],
                        &scores,
                        r.abs,
                        r.rel,
                        |_| true,
                    );
                }
            }
            "bert_rerank" => {
                let docs = strs(&case["documents"]);
                let query = case["query"].as_str().unwrap();
                let mut args = vec!["--json", "--query", query, "--"];
                args.extend(docs.iter().map(String::as_str));
                let out = run.json("rerank", &args);
                let results = out["results"].as_array().unwrap();
                let order: Vec<i64> = results
                    .iter()
                    .map(|x| x["index"].as_i64().unwrap())
                    .collect();
                assert_eq!(order, flat_ids(&case["ranking"]), "{tag}: ranking");
                // Back in document order, to compare with the references.
                let mut scores = vec![f32::NAN; docs.len()];
                let mut logits = vec![f32::NAN; docs.len()];
                for x in results {
                    let i = x["index"].as_u64().unwrap() as usize;
                    scores[i] = x["score"].as_f64().unwrap() as f32;
                    logits[i] = x["logit"].as_f64().unwrap() as f32;
                }
                r.check(&key("logits"), &logits, &[docs.len()]);
                r.check(&key("scores"), &scores, &[docs.len()]);
                let mut top = vec!["--json", "--top-n", "2", "--query", query, "--"];
                top.extend(docs.iter().map(String::as_str));
                let two = run.json("rerank", &top);
                assert_eq!(
                    two["results"].as_array().unwrap()[..],
                    results[..2],
                    "{tag}: --top-n 2"
                );
                // classify on the same cross-encoder: its one label scores sigmoid(logit), as
                // the text-classification pipeline (and TEI's /predict) report it.
                let mut pairs = vec!["--json", "--pairs", "--"];
                for d in &docs {
                    pairs.extend([query, d.as_str()]);
                }
                let out = run.json("classify", &pairs);
                let one_label: Vec<f32> = out["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        let scores = x["scores"].as_object().unwrap();
                        assert_eq!(scores.len(), 1, "{tag}: classify's labels");
                        scores.values().next().unwrap().as_f64().unwrap() as f32
                    })
                    .collect();
                r.check(&key("scores"), &one_label, &[docs.len()]);
            }
            "gpt2_forward" => {
                let w = run.forward(json!({"input_ids": case["input_ids"]}), &tag);
                let (v, s) = got(&w, "logits");
                r.check(&key("logits"), &v, &s);
                check_tokenize(run, &json!([case["text"]]), &case["input_ids"]);
            }
            "gpt2_forward_masked" => {
                let mask = ids_of(&case["attention_mask"]);
                let w = run.forward(json!({"input_ids": case["input_ids"], "attention_mask": case["attention_mask"]}), &tag);
                let (v, s) = got(&w, "logits");
                let (t, vocab) = (s[1], s[2]);
                r.check_where(&key("logits"), &v, &s, |i| {
                    mask[i / (t * vocab)][(i / vocab) % t] == 1
                });
            }
            "gpt2_greedy" | "t5_greedy" => {
                let text = case["text"].as_str().unwrap();
                let (want_new, want_text) = if kind == "gpt2_greedy" {
                    (
                        flat_ids(&case["new_ids"]),
                        case["new_text"].as_str().unwrap(),
                    )
                } else {
                    // Hugging Face's output starts with the decoder start token; new_ids do not.
                    (
                        flat_ids(&case["output_ids"])[1..].to_vec(),
                        case["output_text"].as_str().unwrap(),
                    )
                };
                let n = want_new.len().to_string();
                let g = run.json(
                    "generate",
                    &[
                        "--greedy",
                        "--json",
                        "--max-new-tokens",
                        &n,
                        "--prompt",
                        text,
                    ],
                );
                assert_eq!(
                    flat_ids(&g["prompt_ids"]),
                    flat_ids(&case["input_ids"]),
                    "{tag}: prompt ids"
                );
                assert_eq!(flat_ids(&g["new_ids"]), want_new, "{tag}: generated ids");
                assert_eq!(
                    g["text"].as_str().unwrap(),
                    want_text,
                    "{tag}: generated text"
                );
                if kind == "gpt2_greedy" {
                    let w = run.forward(json!({"input_ids": [case["input_ids"]]}), &tag);
                    let (v, s) = got(&w, "logits");
                    let vocab = s[2];
                    r.check(
                        &key("first_step_logits"),
                        &v[(s[1] - 1) * vocab..],
                        &[vocab],
                    );
                }
            }
            "t5_encode" => {
                let w = run.forward(json!({"input_ids": case["input_ids"], "attention_mask": case["attention_mask"]}), &tag);
                let (v, s) = got(&w, "encoder_last_hidden_state");
                r.check(&key("last_hidden_state"), &v, &s);
                assert!(
                    w.info("logits").is_none(),
                    "{tag}: no decoder inputs, so no logits"
                );
                check_tokenize(run, &case["texts"], &case["input_ids"]);
            }
            "t5_teacher_forced" => {
                let w = run.forward(
                    json!({"input_ids": case["input_ids"], "attention_mask": case["attention_mask"],
                           "decoder_input_ids": case["decoder_input_ids"]}),
                    &tag,
                );
                let (v, s) = got(&w, "logits");
                r.check(&key("logits"), &v, &s);
            }
            "sentence_embedding" => {
                let texts = strs(&case["texts"]);
                let mut args = vec!["--json"];
                args.extend(texts.iter().map(String::as_str));
                let (e, stderr) = run.json_and_stderr("embed", &args);
                if let Some(max) = case.get("max_seq_length").and_then(Value::as_u64) {
                    let long = flat_ids(&case["untruncated_tokens"])
                        .iter()
                        .filter(|&&n| n as u64 > max)
                        .count();
                    let note = format!("truncated {long} of {} texts to {max} tokens", texts.len());
                    assert!(
                        stderr.contains(&note),
                        "{tag}: stderr lacks {note:?}:\n{stderr}"
                    );
                }
                let rows: Vec<Vec<f32>> = e["embeddings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap() as f32)
                            .collect()
                    })
                    .collect();
                let flat: Vec<f32> = rows.concat();
                r.check(&key("embeddings"), &flat, &[rows.len(), rows[0].len()]);
                let n = rows.len();
                let mut cos = vec![0f32; n * n];
                for i in 0..n {
                    for j in 0..n {
                        let dot: f32 = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
                        let ni: f32 = rows[i].iter().map(|a| a * a).sum::<f32>().sqrt();
                        let nj: f32 = rows[j].iter().map(|a| a * a).sum::<f32>().sqrt();
                        cos[i * n + j] = dot / (ni * nj);
                    }
                }
                if r.json["tensors"].get(key("cosine")).is_some() {
                    r.check(&key("cosine"), &cos, &[n, n]);
                }
                if let Some(best) = case.get("most_similar_to_first").and_then(Value::as_u64) {
                    let top = (1..n).max_by(|&a, &b| cos[a].total_cmp(&cos[b])).unwrap();
                    assert_eq!(top as u64, best, "{tag}: most similar to the first text");
                }
                if !case["input_ids"].is_null() {
                    let w = run.forward(json!({"input_ids": case["input_ids"], "attention_mask": case["attention_mask"]}), &tag);
                    let (v, s) = got(&w, "last_hidden_state");
                    r.check(&key("last_hidden_state"), &v, &s);
                    check_tokenize(run, &case["texts"], &case["input_ids"]);
                }
            }
            other => {
                panic!("{tag}: unknown case kind {other:?}: teach tests/common/parity.rs about it")
            }
        }
    }
}

/// `tokenize --json` of each text gives that row's ids (without the padding).
pub fn check_tokenize(run: &Runner, texts: &Value, ids: &Value) {
    let rows: Vec<Vec<i64>> = match ids.as_array().unwrap().first() {
        Some(Value::Array(_)) => ids_of(ids),
        _ => vec![flat_ids(ids)],
    };
    for (text, row) in strs(texts).iter().zip(rows) {
        let t = run.json("tokenize", &["--json", "--", text]);
        let got = flat_ids(&t["ids"]);
        assert_eq!(&row[..got.len()], &got[..], "tokenize {text:?}");
        assert!(
            row[got.len()..]
                .iter()
                .all(|&p| p == row[row.len() - 1] || p == 0 || p == 50256),
            "tokenize {text:?}: rest is padding"
        );
    }
}
