//! The pass pipeline on every fixture: golden files of what each pass changes (graph text
//! before -> after, as lines removed and added, operands named by label so renumbering does
//! not show) and of the fully optimised graphs; and each stage through the interpreter
//! against the frontend graph. `BLESS=1 cargo test --test passes` accepts a change.

mod common;

use common::fixture_dir;
use cranformer_compiler::graph::{Dim, Graph, Op, TensorType};
use cranformer_compiler::interp::Interpreter;
use cranformer_compiler::passes::{self, PASSES};
use cranformer_compiler::Model;
use cranformer_runtime::{Tensor, TensorData};
use std::sync::Arc;

const FIXTURES: [&str; 5] = [
    "bert-tiny",
    "bert-tiny-cls",
    "gpt2-tiny",
    "t5-tiny",
    "t5v11-tiny",
];

fn golden(name: &str, actual: &str) {
    common::golden::check(&format!("passes/{name}"), actual)
}

/// The graph's lines in print order with operands named by label instead of id.
fn lines(g: &Graph) -> Vec<String> {
    g.topo_order()
        .into_iter()
        .map(|n| {
            let node = g.node(n);
            match node.op {
                Op::Input { .. } | Op::Weight { .. } => format!("{} : {}", node.op, node.ty),
                _ => {
                    let args: Vec<String> = g
                        .operands(n)
                        .iter()
                        .map(|&o| g.node(o).label.clone())
                        .collect();
                    format!(
                        "{}({}) : {}  # {}",
                        node.op,
                        args.join(", "),
                        node.ty,
                        node.label
                    )
                }
            }
        })
        .collect()
}

/// `-` and `+` lines of a longest-common-subsequence diff, in order.
fn diff(a: &[String], b: &[String]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

#[test]
fn each_pass_on_each_fixture() {
    for fixture in FIXTURES {
        let model = Model::load(&fixture_dir(fixture)).unwrap();
        let mut before = model.entries.clone();
        for pass in PASSES {
            let after = model.optimized(Some(pass)).unwrap();
            let mut text = format!("; {pass} on {fixture}: graph text before -> after\n");
            for (name, g) in &after {
                let d = diff(&lines(&before[name]), &lines(g));
                text.push_str(&format!("graph {name}: {} lines changed\n", d.len()));
                for l in d {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
            golden(&format!("{pass}/{fixture}.txt"), &text);
            before = after;
        }
        let mut text = String::new();
        for g in model.optimized(None).unwrap().values() {
            text.push_str(&g.to_string());
        }
        golden(&format!("all/{fixture}.txt"), &text);
    }
}

#[test]
fn unknown_pass_names_the_passes() {
    let model = Model::load(&fixture_dir("gpt2-tiny")).unwrap();
    let err = model
        .optimized(Some("fuse_everything"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuse_qkv, fuse_add_norm"), "{err}");
    assert!(passes::optimize(&model.entries["step"], &model.weights, Some("all")).is_ok());
}

/// Inputs for any entry: B = 2, T = 3, P = 2, S = 4; ids small enough for every vocabulary
/// (and token types 0 / 1), masks with one padded position in the second row.
fn inputs(g: &Graph) -> Vec<(String, Tensor)> {
    let mut seed = 0x9e3779b97f4a7c15u64;
    g.inputs
        .iter()
        .map(|(name, n)| {
            let ty: &TensorType = &g.node(*n).ty;
            let shape: Vec<usize> = ty
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Const(c) => *c,
                    Dim::Batch => 2,
                    Dim::Seq => 3,
                    Dim::Past => 2,
                    Dim::Total => 5,
                    Dim::EncSeq => 4,
                })
                .collect();
            let len: usize = shape.iter().product();
            let t = if name.contains("mask") {
                let last = *shape.last().unwrap();
                Tensor::i64(
                    shape,
                    (0..len)
                        .map(|i| (i != len - 1 || last == 1) as i64)
                        .collect(),
                )
            } else if matches!(ty.dtype, cranformer_compiler::graph::DType::I64) {
                // Position ids (GPT-2's batch_step) must stay within the fixtures' 64 positions.
                let m = if name.contains("type") {
                    2
                } else if name.contains("position") {
                    16
                } else {
                    97
                };
                Tensor::i64(shape, (0..len).map(|i| ((i * 31 + 5) % m) as i64).collect())
            } else {
                let v = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.5
                    })
                    .collect();
                Tensor::f32(shape, v)
            };
            (name.clone(), t)
        })
        .collect()
}

/// Every stage of the pipeline computes what the frontend graph computes, both run by the
/// reference interpreter (the JIT runs the optimised graphs in jit_parity and jit_diff).
#[test]
fn every_stage_agrees_with_the_frontend_graph_in_the_interpreter() {
    for fixture in FIXTURES {
        let model = Arc::new(Model::load(&fixture_dir(fixture)).unwrap());
        let interp = Interpreter::new(model.clone());
        for pass in PASSES {
            for (name, g) in model.optimized(Some(pass)).unwrap() {
                let ins = inputs(&g);
                let args: Vec<(&str, &Tensor)> = ins.iter().map(|(n, t)| (n.as_str(), t)).collect();
                let want = interp.run_graph(&model.entries[&name], &args).unwrap();
                let got = interp.run_graph(&g, &args).unwrap();
                for (out, w) in &want {
                    let gt = &got[out];
                    assert_eq!(w.shape(), gt.shape());
                    match (w.data(), gt.data()) {
                        (TensorData::F32(wv), TensorData::F32(gv)) => common::check_close(
                            &format!("{fixture} {name}.{out} after {pass}"),
                            wv,
                            w.shape(),
                            gv,
                            1e-6,
                            1e-5,
                            |_| true,
                        ),
                        (a, b) => assert_eq!(a, b, "{fixture} {name}.{out} after {pass}"),
                    }
                }
            }
        }
    }
}

/// Attention reads Q, K and V where a fused projection wrote them (the lowering's
/// `slices_read_in_place`): BERT's and T5's slices feeding attention get no copy and no
/// buffer, GPT-2's Q neither (its K and V also feed the KV cache and keep theirs); and the
/// outputs are bit for bit those of the same graphs with every slice copied (each kept by
/// returning it as an extra output), since no arithmetic changes.
#[test]
fn attention_reads_fused_qkv_in_place() {
    use cranformer_compiler::codegen::slices_read_in_place;
    use cranformer_compiler::jit::JitEngine;
    use cranformer_runtime::Engine;
    for fixture in ["bert-tiny", "bert-tiny-cls", "gpt2-tiny", "t5-tiny"] {
        let model = Model::load(&fixture_dir(fixture)).unwrap();
        let optimized = model.optimized(None).unwrap();
        let slices = |g: &Graph| -> Vec<_> {
            g.topo_order()
                .into_iter()
                .filter(|&n| matches!(g.node(n).op, Op::SliceLast { .. }))
                .collect()
        };
        let mut copied = Model::load(&fixture_dir(fixture)).unwrap();
        copied.entries = optimized
            .iter()
            .map(|(name, g)| {
                let mut g = g.clone();
                for n in slices(&g) {
                    let label = g.node(n).label.clone();
                    g.add_output(&format!("copied {label}"), n);
                }
                (name.clone(), g)
            })
            .collect();
        let mut in_place = JitEngine::new(Arc::new(model)).unwrap();
        let mut copying = JitEngine::new(Arc::new(copied)).unwrap();
        let mut read_in_place = 0;
        for (name, g) in &optimized {
            let views = slices_read_in_place(g);
            let buffers = |e: &JitEngine| -> Vec<String> {
                e.meta(name)
                    .unwrap()
                    .buffers
                    .iter()
                    .map(|b| b.name.clone())
                    .collect()
            };
            let (kept, all) = (buffers(&in_place), buffers(&copying));
            for n in slices(g) {
                let node = g.node(n);
                let mut users = g.g.neighbors_directed(n, petgraph::Direction::Outgoing);
                let returned = g.outputs.iter().any(|(_, o)| *o == n);
                let attended = !returned
                    && users.clone().next().is_some()
                    && users.all(|u| matches!(g.node(u).op, Op::Attention { .. }));
                let expected = match fixture {
                    "gpt2-tiny" => node.label.ends_with(".attn.q"),
                    _ => attended,
                };
                assert_eq!(
                    views.contains_key(&n),
                    expected,
                    "{fixture} {name}: {} read in place",
                    node.label
                );
                assert_eq!(
                    kept.contains(&node.label),
                    !expected,
                    "{fixture} {name}: {} has a buffer",
                    node.label
                );
                assert!(
                    all.contains(&node.label),
                    "{fixture} {name}: {}",
                    node.label
                );
                read_in_place += expected as usize;
            }
            if fixture.starts_with("bert") {
                assert!(views.len() >= 3, "{fixture} {name}: Q, K and V are slices");
                let clif = cranformer_compiler::codegen::emit_clif(g).unwrap();
                assert!(
                    !clif.contains("cf_slice_"),
                    "{fixture} {name}: a slice is copied"
                );
            }
            let ins = inputs(g);
            let args: Vec<(&str, &Tensor)> = ins.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let want = copying.run(name, &args).unwrap();
            let got = in_place.run(name, &args).unwrap();
            for (out, gt) in &got {
                let w = &want[out];
                assert_eq!(w.shape(), gt.shape());
                match (w.data(), gt.data()) {
                    (TensorData::F32(wv), TensorData::F32(gv)) => {
                        if let Some(i) = wv
                            .iter()
                            .zip(gv.iter())
                            .position(|(a, b)| a.to_bits() != b.to_bits())
                        {
                            panic!(
                                "{fixture} {name}.{out}[{i}]: copied {} in place {}",
                                wv[i], gv[i]
                            );
                        }
                    }
                    (a, b) => assert_eq!(a, b, "{fixture} {name}.{out}"),
                }
            }
        }
        assert!(read_in_place > 0, "{fixture}: no slice read in place");
    }
}
