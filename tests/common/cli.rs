//! Running the `cranformer` binary from tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cranformer"))
}

/// Runs `program args..`, failing the test with its stderr unless it succeeds; returns stdout.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// The last line of stdout parsed as JSON.
pub fn run_json(program: &Path, args: &[&str]) -> Value {
    let text = run_ok(program, args);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output from {args:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"))
}

/// A fresh scratch directory under cargo's target dir (a `tempfile` directory named after
/// `name`), removed when dropped unless the test is failing (then it is left for a look). Each
/// compiled executable is tens of megabytes: left behind, every run of the suite would add
/// hundreds to `target/`.
pub fn scratch(name: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap(),
    )
}

/// See [`scratch`].
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.0.disable_cleanup(std::thread::panicking());
    }
}

/// A copy of fixture `name`'s model directory (config, weights, tokenizer; not its reference
/// files) in a [`scratch`] directory named after `tag`, for a test to change.
pub fn fixture_copy(name: &str, tag: &str) -> Scratch {
    let dir = scratch(tag);
    for e in std::fs::read_dir(super::fixture_dir(name)).unwrap() {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap();
        if !file.to_string_lossy().starts_with("reference") {
            std::fs::copy(&p, dir.join(file)).unwrap();
        }
    }
    dir
}

/// Rewrites the JSON file at `path` (a config.json, a generation_config.json) through `edit`.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}
