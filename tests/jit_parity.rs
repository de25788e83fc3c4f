//! Parity of the JIT engine: every entry of every fixture model, against the interpreter and
//! against the Hugging Face reference tensors, including KV-cache decode steps (P > 0).

mod common;
#[path = "common/jit.rs"]
mod jit_common;

use common::*;
use cranformer_runtime::Tensor;
use jit_common::*;

/// JIT vs interpreter: both run the same f32 maths in a different order.
const ABS: f32 = 2e-5;
const REL: f32 = 2e-4;

fn ids(v: &serde_json::Value) -> Tensor {
    Tensor::i64_rows(&ids_of(v))
}

#[test]
fn bert_tiny() {
    let r = Reference::load("bert-tiny");
    let mut p = Pair::load(&fixture_dir("bert-tiny"));
    for case in ["single_batch", "pairs"] {
        let c = r.case(case);
        let (i, t, m) = (
            ids(&c["input_ids"]),
            ids(&c["token_type_ids"]),
            ids(&c["attention_mask"]),
        );
        let inputs = [
            ("input_ids", &i),
            ("token_type_ids", &t),
            ("attention_mask", &m),
        ];
        let out = p.run("encode", &inputs, ABS, REL);
        for name in c["outputs"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let got = &out[name];
            r.check(
                &format!("{case}.{name}"),
                got.as_f32().unwrap(),
                got.shape(),
            );
        }
        p.run("embed", &inputs, ABS, REL);
    }
    let c = r.case("fill_mask");
    let i = ids(&c["input_ids"]);
    let t = Tensor::i64(i.shape().to_vec(), vec![0; i.numel()]);
    let m = Tensor::i64(i.shape().to_vec(), vec![1; i.numel()]);
    let out = p.run(
        "encode",
        &[
            ("input_ids", &i),
            ("token_type_ids", &t),
            ("attention_mask", &m),
        ],
        ABS,
        REL,
    );
    let pos = c["mask_position"].as_u64().unwrap() as usize;
    let logits = row(&out["mlm_logits"], 0, pos);
    r.check("fill_mask.mask_logits", &logits, &[logits.len()]);
}

#[test]
fn bert_tiny_cls() {
    let r = Reference::load("bert-tiny-cls");
    let mut p = Pair::load(&fixture_dir("bert-tiny-cls"));
    let c = r.case("classify");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let t = Tensor::i64(i.shape().to_vec(), vec![0; i.numel()]);
    let inputs = [
        ("input_ids", &i),
        ("token_type_ids", &t),
        ("attention_mask", &m),
    ];
    let out = p.run("encode", &inputs, ABS, REL);
    let got = &out["logits"];
    r.check("classify.logits", got.as_f32().unwrap(), got.shape());
    p.run("embed", &inputs, ABS, REL);
}

/// GPT-2 inputs with an empty or given cache.
fn gpt2_inputs(ids: &Tensor, mask: &Tensor, past: &[(Tensor, Tensor)]) -> Vec<(String, Tensor)> {
    let mut v = vec![
        ("input_ids".to_string(), ids.clone()),
        ("attention_mask".to_string(), mask.clone()),
    ];
    for (l, (k, val)) in past.iter().enumerate() {
        v.push((format!("past_key.{l}"), k.clone()));
        v.push((format!("past_value.{l}"), val.clone()));
    }
    v
}

#[test]
fn gpt2_tiny() {
    let r = Reference::load("gpt2-tiny");
    let mut p = Pair::load(&fixture_dir("gpt2-tiny"));
    let layers = 2;
    let c_dim = 32;
    let empty = |b: usize| -> Vec<(Tensor, Tensor)> {
        (0..layers)
            .map(|_| {
                let e = Tensor::f32(vec![b, 0, c_dim], vec![]);
                (e.clone(), e)
            })
            .collect()
    };

    let c = r.case("logits");
    let i = ids(&c["input_ids"]);
    let m = Tensor::i64(i.shape().to_vec(), vec![1; i.numel()]);
    let inp = gpt2_inputs(&i, &m, &empty(1));
    let out = p.run("forward", &args(&inp), ABS, REL);
    r.check(
        "logits.logits",
        out["logits"].as_f32().unwrap(),
        out["logits"].shape(),
    );

    let c = r.case("padded_batch");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let inp = gpt2_inputs(&i, &m, &empty(2));
    let out = p.run("forward", &args(&inp), ABS, REL);
    let mask = m.as_i64().unwrap().to_vec();
    let v = out["logits"].shape()[2];
    r.check_where(
        "padded_batch.logits",
        out["logits"].as_f32().unwrap(),
        out["logits"].shape(),
        |e| mask[e / v] != 0,
    );

    // Greedy decoding through the KV cache: prompt with `forward`, then one `step` a token.
    for g in 0..3 {
        let c = r.case(&format!("greedy_{g}"));
        let prompt: Vec<i64> = flat_ids(&c["input_ids"]);
        let want: Vec<i64> = flat_ids(&c["new_ids"]);
        let i = Tensor::i64(vec![1, prompt.len()], prompt.clone());
        let m = Tensor::i64(vec![1, prompt.len()], vec![1; prompt.len()]);
        let inp = gpt2_inputs(&i, &m, &empty(1));
        let out = p.run("forward", &args(&inp), ABS, REL);
        let first = row(&out["logits"], 0, prompt.len() - 1);
        r.check(
            &format!("greedy_{g}.first_step_logits"),
            &first,
            &[first.len()],
        );
        let mut past: Vec<(Tensor, Tensor)> = (0..layers)
            .map(|l| {
                (
                    out[&format!("present_key.{l}")].clone(),
                    out[&format!("present_value.{l}")].clone(),
                )
            })
            .collect();
        let mut next = argmax(&first) as i64;
        let mut got = vec![next];
        for _ in 1..want.len() {
            let total = past[0].0.shape()[1] + 1;
            let i = Tensor::i64(vec![1, 1], vec![next]);
            let m = Tensor::i64(vec![1, total], vec![1; total]);
            let inp = gpt2_inputs(&i, &m, &past);
            let out = p.run("step", &args(&inp), ABS, REL);
            past = (0..layers)
                .map(|l| {
                    (
                        out[&format!("present_key.{l}")].clone(),
                        out[&format!("present_value.{l}")].clone(),
                    )
                })
                .collect();
            next = argmax(&row(&out["logits"], 0, 0)) as i64;
            got.push(next);
        }
        assert_eq!(got, want, "greedy_{g}: generated ids");
    }
}

fn t5(fixture: &str) {
    let r = Reference::load(fixture);
    let mut p = Pair::load(&fixture_dir(fixture));
    let layers = 2;
    let inner = 32;
    let c = r.case("encode");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let enc = p.run(
        "encode",
        &[("input_ids", &i), ("attention_mask", &m)],
        ABS,
        REL,
    );
    let h = &enc["encoder_last_hidden_state"];
    r.check("encode.last_hidden_state", h.as_f32().unwrap(), h.shape());

    let c = r.case("decode");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let enc = p.run(
        "encode",
        &[("input_ids", &i), ("attention_mask", &m)],
        ABS,
        REL,
    );
    let h = &enc["encoder_last_hidden_state"];
    let kv = p.run("cross_kv", &[("encoder_hidden_states", h)], ABS, REL);
    let dec = ids(&c["decoder_input_ids"]);
    let b = dec.shape()[0];
    let inputs = |dec: &Tensor, past: &[(Tensor, Tensor)]| -> Vec<(String, Tensor)> {
        let mut v = vec![
            ("decoder_input_ids".to_string(), dec.clone()),
            ("encoder_attention_mask".to_string(), m.clone()),
        ];
        for l in 0..layers {
            v.push((format!("past_key.{l}"), past[l].0.clone()));
            v.push((format!("past_value.{l}"), past[l].1.clone()));
            v.push((
                format!("cross_key.{l}"),
                kv[&format!("cross_key.{l}")].clone(),
            ));
            v.push((
                format!("cross_value.{l}"),
                kv[&format!("cross_value.{l}")].clone(),
            ));
        }
        v
    };
    let empty: Vec<(Tensor, Tensor)> = (0..layers)
        .map(|_| {
            let e = Tensor::f32(vec![b, 0, inner], vec![]);
            (e.clone(), e)
        })
        .collect();
    let out = p.run("decode", &args(&inputs(&dec, &empty)), ABS, REL);
    let logits = &out["logits"];
    r.check("decode.logits", logits.as_f32().unwrap(), logits.shape());

    // The same logits one token at a time through the cache (`step`, P = 0, 1, ..).
    let (want, _) = r.tensor("decode.logits");
    let (tt, v) = (dec.shape()[1], logits.shape()[2]);
    let mut past = empty.clone();
    for pos in 0..tt {
        let tok: Vec<i64> = (0..b)
            .map(|bi| dec.as_i64().unwrap()[bi * tt + pos])
            .collect();
        let one = Tensor::i64(vec![b, 1], tok);
        let out = p.run("step", &args(&inputs(&one, &past)), ABS, REL);
        for bi in 0..b {
            let got = row(&out["logits"], bi, 0);
            let w = &want[(bi * tt + pos) * v..][..v];
            check_close(
                &format!("{fixture} step {pos} batch {bi}"),
                w,
                &[v],
                &got,
                r.abs,
                r.rel,
                |_| true,
            );
        }
        past = (0..layers)
            .map(|l| {
                (
                    out[&format!("present_key.{l}")].clone(),
                    out[&format!("present_value.{l}")].clone(),
                )
            })
            .collect();
    }
}

#[test]
fn t5_tiny() {
    t5("t5-tiny");
}

#[test]
fn t5v11_tiny() {
    t5("t5v11-tiny");
}

/// The real all-MiniLM-L6-v2 (6 layers, C = 384, mean pooling, L2 normalised).
#[test]
fn minilm() {
    let r = Reference::load("minilm");
    let mut p = Pair::load(&minilm_dir());
    let c = r.case("embed");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let t = Tensor::i64(i.shape().to_vec(), vec![0; i.numel()]);
    let inputs = [
        ("input_ids", &i),
        ("token_type_ids", &t),
        ("attention_mask", &m),
    ];
    let out = p.run("embed", &inputs, ABS, REL);
    let e = &out["embeddings"];
    r.check("embed.embeddings", e.as_f32().unwrap(), e.shape());
    let out = p.run("encode", &inputs, ABS, REL);
    let h = &out["last_hidden_state"];
    r.check("embed.last_hidden_state", h.as_f32().unwrap(), h.shape());
}

/// Engines move into the task runner's threads.
#[test]
fn jit_engine_is_send() {
    fn send<T: Send>() {}
    send::<cranformer_compiler::jit::JitEngine>();
}
