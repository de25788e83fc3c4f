mod common;
use common::*;
use cranformer_compiler::{interp::Interpreter, Model};
use cranformer_runtime::{Engine, Tensor};
use std::sync::Arc;

#[test]
fn smoke_bert() {
    let r = Reference::load("bert-tiny");
    let m = Arc::new(Model::load(&fixture_dir("bert-tiny")).unwrap());
    let mut e = Interpreter::new(m);
    let c = r.case("single_batch");
    let ids = Tensor::i64_rows(&ids_of(&c["input_ids"]));
    let tt = Tensor::i64_rows(&ids_of(&c["token_type_ids"]));
    let am = Tensor::i64_rows(&ids_of(&c["attention_mask"]));
    let out = e
        .run(
            "encode",
            &[
                ("input_ids", &ids),
                ("token_type_ids", &tt),
                ("attention_mask", &am),
            ],
        )
        .unwrap();
    for name in [
        "last_hidden_state",
        "pooler_output",
        "nsp_logits",
        "mlm_logits",
    ] {
        let t = &out[name];
        r.check(
            &format!("single_batch.{name}"),
            t.as_f32().unwrap(),
            t.shape(),
        );
    }
}

#[test]
fn smoke_gpt2() {
    let r = Reference::load("gpt2-tiny");
    let m = Arc::new(Model::load(&fixture_dir("gpt2-tiny")).unwrap());
    let mut e = Interpreter::new(m);
    let c = r.case("logits");
    let ids = Tensor::i64_rows(&ids_of(&c["input_ids"]));
    let am = Tensor::i64(vec![1, 6], vec![1; 6]);
    let pk = Tensor::f32(vec![1, 0, 32], vec![]);
    let mut inputs: Vec<(String, &Tensor)> =
        vec![("input_ids".into(), &ids), ("attention_mask".into(), &am)];
    for l in 0..2 {
        inputs.push((format!("past_key.{l}"), &pk));
        inputs.push((format!("past_value.{l}"), &pk));
    }
    let inp: Vec<(&str, &Tensor)> = inputs.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let out = e.run("forward", &inp).unwrap();
    let t = &out["logits"];
    r.check("logits.logits", t.as_f32().unwrap(), t.shape());
}

#[test]
fn smoke_t5() {
    for fx in ["t5-tiny", "t5v11-tiny"] {
        let r = Reference::load(fx);
        let m = Arc::new(Model::load(&fixture_dir(fx)).unwrap());
        let mut e = Interpreter::new(m);
        let c = r.case("decode");
        let ids = Tensor::i64_rows(&ids_of(&c["input_ids"]));
        let am = Tensor::i64_rows(&ids_of(&c["attention_mask"]));
        let out = e
            .run("encode", &[("input_ids", &ids), ("attention_mask", &am)])
            .unwrap();
        let enc = &out["encoder_last_hidden_state"];
        r.check(
            "encode.last_hidden_state",
            enc.as_f32().unwrap(),
            enc.shape(),
        );
        let kv = e
            .run("cross_kv", &[("encoder_hidden_states", enc)])
            .unwrap();
        let dec = Tensor::i64_rows(&ids_of(&c["decoder_input_ids"]));
        let pk = Tensor::f32(vec![2, 0, 32], vec![]);
        let mut inputs: Vec<(String, &Tensor)> = vec![
            ("decoder_input_ids".into(), &dec),
            ("encoder_attention_mask".into(), &am),
        ];
        for l in 0..2 {
            inputs.push((format!("past_key.{l}"), &pk));
            inputs.push((format!("past_value.{l}"), &pk));
            inputs.push((format!("cross_key.{l}"), &kv[&format!("cross_key.{l}")]));
            inputs.push((format!("cross_value.{l}"), &kv[&format!("cross_value.{l}")]));
        }
        let inp: Vec<(&str, &Tensor)> = inputs.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        let out = e.run("decode", &inp).unwrap();
        let t = &out["logits"];
        r.check("decode.logits", t.as_f32().unwrap(), t.shape());
    }
}
