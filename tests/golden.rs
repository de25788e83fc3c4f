//! Golden tests: each fixture's entry-point graphs as text. A change to a frontend or a pass
//! shows up here as a readable diff; `BLESS=1 cargo test --test golden` accepts it on purpose.

mod common;

use common::fixture_dir;
use cranformer_compiler::Model;

fn golden(name: &str, actual: &str) {
    common::golden::check(name, actual)
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
