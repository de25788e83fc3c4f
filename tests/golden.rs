//! Golden tests: each fixture's entry-point graphs as text. A change to a frontend or a pass
//! shows up here as a readable diff; `BLESS=1 cargo test --test golden` accepts it on purpose.

mod common;

use common::fixture_dir;
use cranformer_compiler::Model;
use std::path::PathBuf;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden")).join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no golden file {}: run with BLESS=1 to create it",
            path.display()
        )
    });
    if want != actual {
        let first = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the golden file at line {}:\n  want: {}\n  got:  {}\n(BLESS=1 to accept)",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>")
        );
    }
}

#[test]
fn frontend_graphs() {
    for fixture in [
        "bert-tiny",
        "bert-tiny-cls",
        "gpt2-tiny",
        "t5-tiny",
        "t5v11-tiny",
    ] {
        let model = Model::load(&fixture_dir(fixture)).unwrap();
        let mut text = String::new();
        for g in model.entries.values() {
            g.verify().unwrap();
            text.push_str(&g.to_string());
        }
        golden(&format!("graph/{fixture}.txt"), &text);
    }
}
