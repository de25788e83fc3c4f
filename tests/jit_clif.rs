//! `--emit clif`: the IR text of an entry names the graph node of every kernel call.

mod common;

use cranformer_compiler::{codegen, Model};

#[test]
fn clif_names_graph_nodes() {
    let m = Model::load(&common::fixture_dir("gpt2-tiny")).unwrap();
    let g = &m.entries["step"];
    let text = codegen::emit_clif(g).unwrap();
    if std::env::var_os("CRANFORMER_SHOW_CLIF").is_some() {
        println!("{text}");
    }
    assert!(
        text.contains("; cranformer_entry_step"),
        "entry function missing"
    );
    for label in [
        "h.0.attn.c_attn",
        "h.1.attn",
        "ln_f",
        "lm_head",
        "last_token",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("; %") && l.contains(label)),
            "no comment naming {label}"
        );
    }
    // Every kernel the entry calls is in the dump, the matmul micro-kernels included.
    assert!(text.contains("; cf_mm_f32x4_6x8_k32_n96_bias"));
    assert!(text.contains("fma"));
}
