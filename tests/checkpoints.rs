//! Checkpoint variants load and compute the same thing: F16 and BF16 weights, sharded
//! files, keys without the `transformer.` / `bert.` prefixes, and padding that must not
//! change the real positions; and config switches that change what is computed: an LM head
//! of the checkpoint's own, BERT as a decoder.

mod common;

use common::cli::{edit_json, fixture_copy, scratch, Scratch};
use common::*;
use cranformer_compiler::codegen::{LowerOptions, WeightFormat};
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::{interp::Interpreter, Model};
use cranformer_runtime::weights::Weights;
use cranformer_runtime::{Engine, Outputs, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;
use std::sync::Arc;

/// Every tensor of a checkpoint as (key, f32 data, shape).
fn tensors_of(dir: &Path) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let w = Weights::open(dir).unwrap();
    w.keys()
        .into_iter()
        .map(|k| {
            let shape = w.info(k).unwrap().shape.clone();
            (k.to_string(), w.get(k, &shape).unwrap().to_vec(), shape)
        })
        .collect()
}

enum Store {
    F32,
    F16,
    Bf16,
}

impl From<&Store> for Store {
    fn from(s: &Store) -> Store {
        match s {
            Store::F32 => Store::F32,
            Store::F16 => Store::F16,
            Store::Bf16 => Store::Bf16,
        }
    }
}

fn write(path: &Path, tensors: &[(String, Vec<f32>, Vec<usize>)], store: Store) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = tensors
        .iter()
        .map(|(k, v, s)| {
            let (b, dt) = match store {
                Store::F32 => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32),
                Store::F16 => (
                    v.iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                    Dtype::F16,
                ),
                Store::Bf16 => (
                    v.iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    Dtype::BF16,
                ),
            };
            (k.clone(), b, s.clone(), dt)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, s, dt)| (k.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A copy of `fixture`'s directory without its weights.
fn model_copy(fixture: &str, tag: &str) -> Scratch {
    let dir = scratch(tag);
    for e in std::fs::read_dir(fixture_dir(fixture)).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("model.safetensors") && !name.starts_with("reference") {
            std::fs::copy(&p, dir.join(name)).unwrap();
        }
    }
    dir
}

fn gpt2_logits(dir: &Path, ids: &[i64], mask: Option<&[i64]>) -> Tensor {
    let mut e = Interpreter::new(Arc::new(Model::load(dir).unwrap()));
    let b = 1;
    let ids_t = Tensor::i64(vec![b, ids.len()], ids.to_vec());
    let mask_t = Tensor::i64(
        vec![b, ids.len()],
        mask.map_or(vec![1; ids.len()], <[i64]>::to_vec),
    );
    let empty = Tensor::f32(vec![b, 0, 32], vec![]);
    let names: Vec<String> = (0..2)
        .flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")])
        .collect();
    let mut inputs: Vec<(&str, &Tensor)> = vec![("input_ids", &ids_t), ("attention_mask", &mask_t)];
    inputs.extend(names.iter().map(|n| (n.as_str(), &empty)));
    let mut out: Outputs = e.run("forward", &inputs).unwrap();
    out.remove("logits").unwrap()
}

const IDS: [i64; 6] = [15496, 11, 616, 3290, 318, 13779];

#[test]
fn half_precision_weights_compute_in_f32() {
    let tensors = tensors_of(&fixture_dir("gpt2-tiny"));
    for (store, round) in [(Store::F16, "f16"), (Store::Bf16, "bf16")] {
        // The same weights rounded to half precision but stored as F32 must give identical logits.
        let rounded: Vec<_> = tensors
            .iter()
            .map(|(k, v, s)| {
                let r = v
                    .iter()
                    .map(|x| {
                        if round == "f16" {
                            half::f16::from_f32(*x).to_f32()
                        } else {
                            half::bf16::from_f32(*x).to_f32()
                        }
                    })
                    .collect();
                (k.clone(), r, s.clone())
            })
            .collect::<Vec<_>>();
        let half_dir = model_copy("gpt2-tiny", &format!("ckpt-{round}"));
        write(&half_dir.join("model.safetensors"), &tensors, store);
        let f32_dir = model_copy("gpt2-tiny", &format!("ckpt-{round}-as-f32"));
        write(&f32_dir.join("model.safetensors"), &rounded, Store::F32);
        let a = gpt2_logits(&half_dir, &IDS, None);
        let b = gpt2_logits(&f32_dir, &IDS, None);
        assert_eq!(a, b, "{round} weights differ from their f32 rounding");
        // And stay near the full-precision model.
        let full = gpt2_logits(&fixture_dir("gpt2-tiny"), &IDS, None);
        let diff = a
            .as_f32()
            .unwrap()
            .iter()
            .zip(full.as_f32().unwrap())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 0.5, "{round}: max diff {diff} from the f32 model");
    }
}

/// `tensors` rounded to `store`'s precision, kept in f32.
fn rounded(
    tensors: &[(String, Vec<f32>, Vec<usize>)],
    store: &Store,
) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    tensors
        .iter()
        .map(|(k, v, s)| {
            let r = v
                .iter()
                .map(|x| match store {
                    Store::F16 => half::f16::from_f32(*x).to_f32(),
                    Store::Bf16 => half::bf16::from_f32(*x).to_f32(),
                    Store::F32 => *x,
                })
                .collect();
            (k.clone(), r, s.clone())
        })
        .collect()
}

/// The outputs of every entry of `model`'s fixture on its reference inputs, JIT-compiled with
/// matmul weights in `format`.
fn jit_outputs(model: &Arc<Model>, fixture: &str, format: WeightFormat) -> Vec<Outputs> {
    let mut e = JitEngine::with_options(
        model.clone(),
        None,
        LowerOptions {
            weight_format: format,
        },
    )
    .unwrap();
    let mut outs = vec![];
    if fixture.starts_with("gpt2") {
        let b = 1;
        let ids_t = Tensor::i64(vec![b, IDS.len()], IDS.to_vec());
        let mask_t = Tensor::i64(vec![b, IDS.len()], vec![1; IDS.len()]);
        let empty = Tensor::f32(vec![b, 0, 32], vec![]);
        let names: Vec<String> = (0..2)
            .flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")])
            .collect();
        let mut inputs: Vec<(&str, &Tensor)> =
            vec![("input_ids", &ids_t), ("attention_mask", &mask_t)];
        inputs.extend(names.iter().map(|n| (n.as_str(), &empty)));
        outs.push(e.run("forward", &inputs).unwrap());
    } else {
        let ids = Tensor::i64(vec![1, 4], vec![101, 7592, 2088, 102]);
        let zeros = Tensor::i64(vec![1, 4], vec![0; 4]);
        let ones = Tensor::i64(vec![1, 4], vec![1; 4]);
        outs.push(
            e.run(
                "encode",
                &[
                    ("input_ids", &ids),
                    ("token_type_ids", &zeros),
                    ("attention_mask", &ones),
                ],
            )
            .unwrap(),
        );
    }
    outs
}

/// A checkpoint stored in F16 or BF16 runs with narrow matmul weights packed from its stored
/// elements (issue 9): bit for bit what the same values stored as F32 give with the same
/// `--dtype`, and the matmul weights are never widened to an f32 copy. BERT's query, key and
/// value are fused into one `concat(..)` weight, GPT-2's are stored fused.
#[test]
fn half_checkpoints_pack_narrow_weights_from_their_stored_bits() {
    for fixture in ["gpt2-tiny", "bert-tiny"] {
        let tensors = tensors_of(&fixture_dir(fixture));
        for (store, name) in [(Store::F16, "f16"), (Store::Bf16, "bf16")] {
            let half_dir = model_copy(fixture, &format!("narrow-{fixture}-{name}"));
            write(
                &half_dir.join("model.safetensors"),
                &tensors,
                Store::from(&store),
            );
            let f32_dir = model_copy(fixture, &format!("narrow-{fixture}-{name}-as-f32"));
            write(
                &f32_dir.join("model.safetensors"),
                &rounded(&tensors, &store),
                Store::F32,
            );
            let f32_model = Arc::new(Model::load(&f32_dir).unwrap());
            for format in [WeightFormat::Bf16, WeightFormat::F16, WeightFormat::I8] {
                // A fresh model per format: nothing widened by an earlier engine.
                let half_model = Arc::new(Model::load(&half_dir).unwrap());
                let got = jit_outputs(&half_model, fixture, format);
                let want = jit_outputs(&f32_model, fixture, format);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), w.len());
                    for (k, t) in w {
                        assert_eq!(
                            g[k.as_str()],
                            *t,
                            "{fixture} stored {name}, {format:?}: {k} differs from the f32 checkpoint"
                        );
                    }
                }
                let matmul_weights: Vec<&String> = half_model
                    .weights
                    .keys()
                    .filter(|k| {
                        k.ends_with(".weight")
                            && !k.contains("LayerNorm")
                            && [
                                ".attn.",
                                ".mlp.",
                                ".attention.",
                                ".intermediate.",
                                ".output.dense",
                            ]
                            .iter()
                            .any(|p| k.contains(p))
                    })
                    .collect();
                assert!(matmul_weights.len() >= 8, "{fixture}: {matmul_weights:?}");
                for k in matmul_weights {
                    let w = &half_model.weights[k];
                    assert!(w.half().is_some(), "{fixture}: {k} is not held as {name}");
                    assert!(
                        !w.is_widened(),
                        "{fixture} stored {name}, {format:?}: {k} was widened to f32"
                    );
                }
            }
        }
    }
}

#[test]
fn sharded_and_bare_key_checkpoints_match() {
    let tensors = tensors_of(&fixture_dir("gpt2-tiny"));
    let want = gpt2_logits(&fixture_dir("gpt2-tiny"), &IDS, None);

    // Two shards and an index, as save_pretrained writes them for large models.
    let dir = model_copy("gpt2-tiny", "ckpt-sharded");
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write(&dir.join("model-00001-of-00002.safetensors"), a, Store::F32);
    write(&dir.join("model-00002-of-00002.safetensors"), b, Store::F32);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.iter()
                .map(|t| (t.0.clone(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(gpt2_logits(&dir, &IDS, None), want, "sharded checkpoint");

    // The hub's gpt2 stores bare `h.0.attn...` keys.
    let dir = model_copy("gpt2-tiny", "ckpt-bare");
    let bare: Vec<_> = tensors
        .iter()
        .map(|(k, v, s)| {
            (
                k.strip_prefix("transformer.").unwrap_or(k).to_string(),
                v.clone(),
                s.clone(),
            )
        })
        .collect();
    write(&dir.join("model.safetensors"), &bare, Store::F32);
    assert_eq!(gpt2_logits(&dir, &IDS, None), want, "bare keys");
}

#[test]
fn bert_model_with_bare_keys_matches_the_prefixed_encoder() {
    // A BertModel checkpoint (as sentence-transformers saves it) has no `bert.` prefix and no heads.
    let tensors = tensors_of(&fixture_dir("bert-tiny"));
    let dir = model_copy("bert-tiny", "ckpt-bert-bare");
    let bare: Vec<_> = tensors
        .iter()
        .filter_map(|(k, v, s)| {
            k.strip_prefix("bert.")
                .map(|k| (k.to_string(), v.clone(), s.clone()))
        })
        .collect();
    write(&dir.join("model.safetensors"), &bare, Store::F32);
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("BertForPreTraining", "BertModel");
    std::fs::write(dir.join("config.json"), cfg).unwrap();

    let run = |dir: &Path| {
        let mut e = Interpreter::new(Arc::new(Model::load(dir).unwrap()));
        let ids = Tensor::i64(vec![1, 4], vec![101, 7592, 2088, 102]);
        let zeros = Tensor::i64(vec![1, 4], vec![0; 4]);
        let ones = Tensor::i64(vec![1, 4], vec![1; 4]);
        e.run(
            "encode",
            &[
                ("input_ids", &ids),
                ("token_type_ids", &zeros),
                ("attention_mask", &ones),
            ],
        )
        .unwrap()
    };
    let bare_out = run(&dir);
    let full_out = run(&fixture_dir("bert-tiny"));
    assert_eq!(bare_out["last_hidden_state"], full_out["last_hidden_state"]);
    assert_eq!(bare_out["pooler_output"], full_out["pooler_output"]);
    assert!(
        !bare_out.contains_key("mlm_logits"),
        "a BertModel has no MLM head"
    );
}

#[test]
fn right_padding_changes_nothing_in_real_positions() {
    // GPT-2: the same prompt alone and right-padded with junk under a zero mask.
    let alone = gpt2_logits(&fixture_dir("gpt2-tiny"), &IDS[..4], None);
    let padded_ids = [IDS[0], IDS[1], IDS[2], IDS[3], 50256, 999];
    let padded = gpt2_logits(
        &fixture_dir("gpt2-tiny"),
        &padded_ids,
        Some(&[1, 1, 1, 1, 0, 0]),
    );
    let v = 50257;
    let (a, p) = (alone.as_f32().unwrap(), padded.as_f32().unwrap());
    check_close("gpt2 padded", a, &[4, v], &p[..4 * v], 1e-6, 1e-6, |_| true);

    // BERT and T5 encoders: a short sequence batched with a long one.
    for (fixture, entry) in [("bert-tiny", "encode"), ("t5-tiny", "encode")] {
        let mut e = Interpreter::new(Arc::new(Model::load(&fixture_dir(fixture)).unwrap()));
        let short = [5i64, 17, 42];
        let long = [9i64, 8, 7, 6, 5, 4, 3];
        let run = |e: &mut Interpreter, rows: &[Vec<i64>], mask: &[Vec<i64>]| {
            let ids = Tensor::i64_rows(rows);
            let m = Tensor::i64_rows(mask);
            let tt = Tensor::i64(ids.shape().to_vec(), vec![0; ids.numel()]);
            let mut inputs = vec![("input_ids", &ids), ("attention_mask", &m)];
            if fixture.starts_with("bert") {
                inputs.push(("token_type_ids", &tt));
            }
            e.run(entry, &inputs).unwrap()
        };
        let out_name = if fixture.starts_with("bert") {
            "last_hidden_state"
        } else {
            "encoder_last_hidden_state"
        };
        let one = run(&mut e, &[short.to_vec()], &[vec![1; 3]]);
        let mut padded_short = short.to_vec();
        padded_short.extend([0, 0, 0, 0]);
        let both = run(
            &mut e,
            &[long.to_vec(), padded_short],
            &[vec![1; 7], vec![1, 1, 1, 0, 0, 0, 0]],
        );
        let a = one[out_name].as_f32().unwrap();
        let c = a.len() / 3;
        let b = &both[out_name].as_f32().unwrap()[7 * c..7 * c + 3 * c];
        check_close(
            &format!("{fixture} padded"),
            a,
            &[3, c],
            b,
            1e-5,
            1e-5,
            |_| true,
        );
    }
}

/// BERT's `output` of entry point `entry` for one row of `ids` under `mask` (token types 0).
fn bert_row(dir: &Path, entry: &str, output: &str, ids: &[i64], mask: &[i64]) -> Vec<f32> {
    let mut e = Interpreter::new(Arc::new(Model::load(dir).unwrap()));
    let t = ids.len();
    let ids = Tensor::i64(vec![1, t], ids.to_vec());
    let types = Tensor::i64(vec![1, t], vec![0; t]);
    let mask = Tensor::i64(vec![1, t], mask.to_vec());
    let inputs = [
        ("input_ids", &ids),
        ("token_type_ids", &types),
        ("attention_mask", &mask),
    ];
    let out = e.run(entry, &inputs).unwrap();
    out[output].as_f32().unwrap().to_vec()
}

/// BERT's `last_hidden_state` for one row (see [`bert_row`]).
fn bert_hidden(dir: &Path, ids: &[i64], mask: &[i64]) -> Vec<f32> {
    bert_row(dir, "encode", "last_hidden_state", ids, mask)
}

#[test]
fn a_gpt2_checkpoint_with_its_own_lm_head_uses_it() {
    // `lm_head.weight` = wte with its rows reversed: logit v becomes logit V-1-v, bit for bit.
    let tensors = tensors_of(&fixture_dir("gpt2-tiny"));
    let (_, wte, shape) = tensors
        .iter()
        .find(|(k, ..)| k.ends_with("wte.weight"))
        .unwrap()
        .clone();
    let (v, c) = (shape[0], shape[1]);
    let reversed: Vec<f32> = (0..v)
        .rev()
        .flat_map(|r| wte[r * c..(r + 1) * c].to_vec())
        .collect();
    let tied = gpt2_logits(&fixture_dir("gpt2-tiny"), &IDS, None);
    let tied = tied.as_f32().unwrap();
    let mut with_head = tensors.clone();
    with_head.push(("lm_head.weight".into(), reversed, shape.clone()));
    // Untied in the config, and tied in the config with a head of its own in the checkpoint
    // (transformers 5.x then does not tie them: "both are present ... with different values").
    for tie in [false, true] {
        let dir = model_copy("gpt2-tiny", &format!("ckpt-gpt2-head-{tie}"));
        write(&dir.join("model.safetensors"), &with_head, Store::F32);
        edit_json(&dir.join("config.json"), |c| {
            c["tie_word_embeddings"] = tie.into()
        });
        let got = gpt2_logits(&dir, &IDS, None);
        let got = got.as_f32().unwrap();
        for (t, row) in got.chunks(v).enumerate() {
            let want = &tied[t * v..(t + 1) * v];
            assert!(
                row.iter().rev().zip(want).all(|(a, b)| a == b),
                "tie_word_embeddings {tie}: position {t}'s logits are not the tied ones reversed"
            );
        }
    }
    // Untied with no head in the checkpoint: an error naming the missing weight.
    let dir = fixture_copy("gpt2-tiny", "ckpt-gpt2-no-head");
    edit_json(&dir.join("config.json"), |c| {
        c["tie_word_embeddings"] = false.into()
    });
    let err = Model::load(&dir)
        .err()
        .expect("no lm_head.weight")
        .to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn bert_as_a_decoder_attends_causally() {
    // `is_decoder: true`: position i sees positions 0..=i only, so what the first i + 1
    // positions give does not depend on the tokens after them, and the first position is what
    // the bidirectional model (checked against Hugging Face by the parity tests) gives for the
    // first token alone.
    let dir = fixture_copy("bert-tiny", "ckpt-bert-decoder");
    edit_json(&dir.join("config.json"), |c| c["is_decoder"] = true.into());
    let ids = [101i64, 7592, 2088, 2003, 2307, 102];
    let causal = bert_hidden(&dir, &ids, &[1; 6]);
    let c = causal.len() / ids.len();
    for i in 0..ids.len() {
        let prefix = bert_hidden(&dir, &ids[..=i], &vec![1; i + 1]);
        check_close(
            &format!("first {} positions", i + 1),
            &prefix,
            &[i + 1, c],
            &causal[..(i + 1) * c],
            1e-5,
            1e-5,
            |_| true,
        );
    }
    let alone = bert_hidden(&fixture_dir("bert-tiny"), &ids[..1], &[1]);
    check_close(
        "first position",
        &alone,
        &[c],
        &causal[..c],
        1e-5,
        1e-5,
        |_| true,
    );
    let bidirectional = bert_hidden(&fixture_dir("bert-tiny"), &ids, &[1; 6]);
    assert_ne!(
        causal[..c],
        bidirectional[..c],
        "the first position must not see the later ones"
    );
    // Right padding under the mask: causal and padding masks together.
    let padded = bert_hidden(
        &dir,
        &[&ids[..], &[0, 0]].concat(),
        &[1, 1, 1, 1, 1, 1, 0, 0],
    );
    check_close(
        "right-padded",
        &causal,
        &[6, c],
        &padded[..6 * c],
        1e-5,
        1e-5,
        |_| true,
    );
}

#[test]
fn activation_names_of_the_same_formula_give_the_same_model() {
    // Hugging Face's `gelu_accurate` and `gelu_python_tanh` compute gelu_new's tanh formula,
    // and `gelu_python` the exact erf GELU: each must run as the name the fixture has.
    let want = gpt2_logits(&fixture_dir("gpt2-tiny"), &IDS, None);
    for name in ["gelu_accurate", "gelu_python_tanh", "gelu_fast"] {
        let dir = fixture_copy("gpt2-tiny", &format!("ckpt-act-{name}"));
        edit_json(&dir.join("config.json"), |c| {
            assert_eq!(c["activation_function"], "gelu_new", "the fixture's");
            c["activation_function"] = name.into();
        });
        assert_eq!(gpt2_logits(&dir, &IDS, None), want, "{name}");
    }
    let dir = fixture_copy("bert-tiny", "ckpt-act-gelu_python");
    edit_json(&dir.join("config.json"), |c| {
        assert_eq!(c["hidden_act"], "gelu", "the fixture's");
        c["hidden_act"] = "gelu_python".into();
    });
    let ids = [101, 7592, 2088, 102];
    assert_eq!(
        bert_hidden(&dir, &ids, &[1; 4]),
        bert_hidden(&fixture_dir("bert-tiny"), &ids, &[1; 4]),
        "gelu_python"
    );
}

#[test]
fn sentence_transformers_pipelines_pool_as_configured_or_are_refused() {
    // sentence-transformers 6 writes `pooling_mode` as a name; older versions the
    // `pooling_mode_*` flags (all-MiniLM-L6-v2's, checked against sentence-transformers by
    // the parity tests). A pipeline cranformer cannot run exactly is refused, naming why.
    let with = |tag: &str, modules: serde_json::Value, pooling: serde_json::Value| {
        let dir = fixture_copy("bert-tiny", tag);
        std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
        std::fs::create_dir(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
        dir
    };
    let module = |i: usize, path: &str, ty: &str| {
        serde_json::json!({"idx": i, "name": i.to_string(), "path": path,
                           "type": format!("sentence_transformers.models.{ty}")})
    };
    let pipeline = |last: &str| {
        serde_json::json!([
            module(0, "", "Transformer"),
            module(1, "1_Pooling", "Pooling"),
            module(2, "2_X", last)
        ])
    };
    let embed = |dir: &Path| bert_row(dir, "embed", "embeddings", &[101, 7592, 2088, 102], &[1; 4]);
    let hidden = bert_hidden(&fixture_dir("bert-tiny"), &[101, 7592, 2088, 102], &[1; 4]);
    let c = hidden.len() / 4;
    // `pooling_mode: "cls"`, then Normalize: the first token's state at unit length.
    let cls = with(
        "st-cls",
        pipeline("Normalize"),
        serde_json::json!({"embedding_dimension": c, "pooling_mode": "cls", "include_prompt": true}),
    );
    let norm = hidden[..c].iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = hidden[..c].iter().map(|x| x / norm).collect();
    check_close("cls", &want, &[c], &embed(&cls), 1e-6, 1e-5, |_| true);
    // The legacy flags with none set: sentence-transformers pools by the mean.
    let legacy = with(
        "st-legacy-none",
        pipeline("Normalize"),
        serde_json::json!({"word_embedding_dimension": c, "pooling_mode_cls_token": false}),
    );
    let mean: Vec<f32> = (0..c)
        .map(|j| (0..4).map(|t| hidden[t * c + j]).sum::<f32>() / 4.0)
        .collect();
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = mean.iter().map(|x| x / norm).collect();
    check_close(
        "legacy default",
        &want,
        &[c],
        &embed(&legacy),
        1e-6,
        1e-5,
        |_| true,
    );

    let refused = |dir: &Path, words: &[&str]| {
        let err = Model::load(dir).err().expect("refused").to_string();
        assert!(words.iter().all(|w| err.contains(w)), "{words:?}: {err}");
    };
    let dense = with(
        "st-dense",
        pipeline("Dense"),
        serde_json::json!({"pooling_mode": "mean"}),
    );
    refused(&dense, &["modules.json", "Dense", "2_X"]);
    let two = with(
        "st-two-modes",
        pipeline("Normalize"),
        serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}),
    );
    refused(&two, &["1_Pooling", "cls", "mean", "concatenates"]);
    let sqrt = with(
        "st-sqrt-len",
        pipeline("Normalize"),
        serde_json::json!({"pooling_mode": "mean_sqrt_len_tokens"}),
    );
    refused(
        &sqrt,
        &["1_Pooling", "mean_sqrt_len_tokens", "not supported"],
    );
}
