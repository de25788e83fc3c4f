//! Parity with Hugging Face through the command line: every case of every reference file of
//! every shared fixture, through `forward`, `generate --greedy`, `embed`, `fill-mask`,
//! `classify` (texts and sentence pairs), `rerank` and `tokenize`,
//! for each engine (the cases themselves are in tests/common/parity.rs, shared with the
//! compiled executables' tests).

mod common;
#[path = "common/parity.rs"]
mod parity;

use common::*;
use parity::{run_cases, strs, Runner};
use serde_json::Value;
use std::path::Path;

/// Engines every case runs through.
const ENGINES: &[&str] = &["interp", "jit"];

/// Runs every case of `fixture` (whose model lives in `model_dir`) through each engine.
fn run_fixture(fixture: &str, model_dir: &Path) {
    for &engine in ENGINES {
        run_cases(fixture, &Runner::cranformer(model_dir, engine), engine);
    }
}

#[test]
fn bert_tiny() {
    run_fixture("bert-tiny", &fixture_dir("bert-tiny"));
}

#[test]
fn bert_tiny_cls() {
    run_fixture("bert-tiny-cls", &fixture_dir("bert-tiny-cls"));
}

#[test]
fn bert_tiny_rerank() {
    run_fixture("bert-tiny-rerank", &fixture_dir("bert-tiny-rerank"));
}

#[test]
fn gpt2_tiny() {
    run_fixture("gpt2-tiny", &fixture_dir("gpt2-tiny"));
}

#[test]
fn t5_tiny() {
    run_fixture("t5-tiny", &fixture_dir("t5-tiny"));
}

#[test]
fn t5v11_tiny() {
    run_fixture("t5v11-tiny", &fixture_dir("t5v11-tiny"));
}

#[test]
fn minilm() {
    run_fixture("minilm", &minilm_dir());
}

/// Every tokenizer case through `cranformer tokenize --json`.
#[test]
fn tokenizer_cases_cli() {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("fixtures/tokenizer-cases.json")).unwrap(),
    )
    .unwrap();
    let texts = strs(&cases["texts"]);
    for (kind, spec) in cases["tokenizers"].as_object().unwrap() {
        let dir = if kind == "bert" {
            minilm_dir()
        } else {
            fixture_dir(spec["dir"].as_str().unwrap())
        };
        let run = Runner::cranformer(&dir, "interp");
        for (text, case) in texts.iter().zip(spec["cases"].as_array().unwrap()) {
            let t = run.json("tokenize", &["--json", "--", text]);
            assert_eq!(
                flat_ids(&t["ids"]),
                flat_ids(&case["ids"]),
                "{kind} tokenize {text:?}"
            );
            assert_eq!(
                t["tokens"].as_array().unwrap().len(),
                t["ids"].as_array().unwrap().len()
            );
        }
    }
}
