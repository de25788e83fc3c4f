//! `cranformer compile`: real executables built from every fixture, moved to a fresh directory
//! and run there with an empty environment, through every fixture case (the same checks as
//! tests/parity.rs); plus external weights, `--weights PATH`, and `--help`.

mod common;
#[path = "common/parity.rs"]
mod parity;

use common::cli::{bin, run_ok};
use common::*;
use cranformer_compiler::aot::SharedObjectEngine;
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::Model;
use cranformer_runtime::{Engine, Tensor};
use parity::{run_cases, Runner};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;

/// An executable compiled from `model_dir` and moved into a directory of its own, which
/// lives as long as this.
struct Exe {
    path: PathBuf,
    _dir: TempDir,
}

fn compile(model_dir: &Path, weights: &str) -> Exe {
    let build = TempDir::new().unwrap();
    let built = build.path().join("model");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    run_ok(
        &bin(),
        &[
            "compile",
            &p(model_dir),
            "-o",
            &p(&built),
            "--weights",
            weights,
        ],
    );
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model");
    std::fs::rename(&built, &path)
        .or_else(|_| std::fs::copy(&built, &path).map(|_| ()))
        .unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("compiled {} ({weights}): {size} bytes", model_dir.display());
    Exe { path, _dir: dir }
}

/// `BIN --help` lists exactly the tasks the model supports, and `serve`.
fn check_help(exe: &Exe, model_dir: &Path) {
    let info = Model::load(model_dir).unwrap().info;
    let help = Runner::executable(&exe.path).ok("--help", &[]);
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Every model's executable also serves its tasks over HTTP.
    let mut want = info.tasks();
    want.push("serve");
    assert_eq!(
        listed, want,
        "--help lists the model's tasks and serve:\n{help}"
    );
}

/// Compiles `model_dir` with its weights embedded and runs every case of `fixture` through it.
fn run_fixture(fixture: &str, model_dir: &Path) {
    let exe = compile(model_dir, "embed");
    check_help(&exe, model_dir);
    run_cases(fixture, &Runner::executable(&exe.path), "exe");
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

/// `--weights external` records the path; `BIN --weights PATH` reads another; a missing file
/// is a clear error.
#[test]
fn external_weights() {
    let model = TempDir::new().unwrap();
    let src = fixture_dir("gpt2-tiny");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.path().join(f.file_name().unwrap())).unwrap();
    }
    let exe = compile(model.path(), "external");
    let size = |e: &Exe| std::fs::metadata(&e.path).unwrap().len();
    let weights = std::fs::metadata(src.join("model.safetensors"))
        .unwrap()
        .len();
    let embedded = compile(model.path(), "embed");
    assert!(
        size(&embedded) - size(&exe) > weights * 99 / 100,
        "external weights are not embedded ({} bytes, {} with them)",
        size(&exe),
        size(&embedded)
    );
    let run = Runner::executable(&exe.path);
    run_cases("gpt2-tiny", &run, "exe-external");
    let args = [
        "--greedy",
        "--json",
        "--max-new-tokens",
        "4",
        "--prompt",
        "Hello",
    ];
    let want = run.json("generate", &args);

    let elsewhere = TempDir::new().unwrap();
    let moved = elsewhere.path().join("weights.safetensors");
    std::fs::rename(model.path().join("model.safetensors"), &moved).unwrap();
    let out = run.output("generate", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "missing weights: {stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("model.safetensors")
            && stderr.contains("--weights PATH"),
        "missing weights: {stderr}"
    );
    // The tokenizer is built in: tokenizing needs no weights.
    run.ok("tokenize", &["Hello"]);

    let moved_arg = moved.to_str().unwrap();
    let mut with = vec!["--weights", moved_arg];
    with.extend(args);
    assert_eq!(run.json("generate", &with), want, "--weights PATH");
    let missing = elsewhere.path().join("nothing.safetensors");
    let out = run.output(
        "generate",
        &["--weights", missing.to_str().unwrap(), "--prompt", "a"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing.safetensors"), "{stderr}");
}

/// The in-process engine `cranformer bench --engine aot` uses gives the JIT's outputs.
#[test]
fn shared_object_engine_matches_jit() {
    let model = Arc::new(Model::load(&fixture_dir("bert-tiny")).unwrap());
    let mut aot = SharedObjectEngine::new(model.clone()).unwrap();
    let mut jit = JitEngine::new(model).unwrap();
    assert_eq!(aot.name(), "aot");
    let ids = Tensor::i64(
        vec![2, 5],
        vec![101, 7592, 2088, 102, 0, 101, 2023, 2003, 1037, 102],
    );
    let types = Tensor::i64(vec![2, 5], vec![0; 10]);
    let mask = Tensor::i64(vec![2, 5], vec![1, 1, 1, 1, 0, 1, 1, 1, 1, 1]);
    let inputs = [
        ("input_ids", &ids),
        ("token_type_ids", &types),
        ("attention_mask", &mask),
    ];
    let a = aot.run("encode", &inputs).unwrap();
    let j = jit.run("encode", &inputs).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), j.keys().collect::<Vec<_>>());
    for (name, t) in &j {
        // The same lowering on the same machine: the same code, bit for bit.
        assert_eq!(a[name].as_f32(), t.as_f32(), "{name}");
    }
}
