//! Attention masks as Hugging Face takes them, on the fixture models, in the interpreter and
//! the JIT side by side (and the compiled code of the AOT path): left padding, holes in the
//! middle, and a row whose mask is all zeros.
//!
//! The references hold right-padded batches only, so each test derives what Hugging Face gives
//! from a reference by an equivalence that holds in its maths:
//! - T5 sees positions only through relative offsets, so a left-padded encoder input gives
//!   the reference states at the unmasked positions, and the decoder the reference logits.
//! - T5's cross-attention has no position bias, so encoder states with masked junk rows
//!   inserted in the middle give the reference logits.
//! - In BERT, a row of the batch whose mask is all zeros leaves the other rows at their
//!   reference values, and what sits under a hole changes nothing at the unmasked positions.
//!
//! What an all-masked row itself gives (the mean of V) is checked op by op in
//! tests/attention.rs.

mod common;
#[path = "common/jit.rs"]
mod jit_common;

use common::*;
use cranformer_compiler::aot::SharedObjectEngine;
use cranformer_runtime::kv_cache::KvCache;
use cranformer_runtime::{Engine, ModelInfo, Outputs, Tensor};
use jit_common::*;

/// JIT vs interpreter: the same f32 maths in a different order.
const ABS: f32 = 2e-5;
const REL: f32 = 2e-4;

/// Each row's unmasked tokens moved to the end, the padding (id `pad`) to the front.
fn left_pad(ids: &[Vec<i64>], mask: &[Vec<i64>], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    ids.iter()
        .zip(mask)
        .map(|(i, m)| {
            let n = m.iter().filter(|&&x| x == 1).count();
            assert!(
                m[..n].iter().all(|&x| x == 1),
                "reference rows are right-padded"
            );
            let t = i.len();
            let ids = std::iter::repeat_n(pad, t - n).chain(i[..n].iter().copied());
            let mask = std::iter::repeat_n(0, t - n).chain(std::iter::repeat_n(1, n));
            (ids.collect(), mask.collect())
        })
        .unzip()
}

/// T5's decoder over `hidden` `[B, S, C]` with `encoder_attention_mask`, on both engines.
fn t5_decode(p: &mut Pair, hidden: &Tensor, mask: &Tensor, decoder_ids: &Tensor) -> Outputs {
    let ModelInfo::T5 {
        decoder_layers,
        kv_width,
        ..
    } = p.model.info.clone()
    else {
        panic!("not T5");
    };
    let cross = p.run("cross_kv", &[("encoder_hidden_states", hidden)], ABS, REL);
    let cache = KvCache::new(decoder_layers, hidden.shape()[0], kv_width);
    let mut inputs: Vec<(String, &Tensor)> = vec![
        ("decoder_input_ids".into(), decoder_ids),
        ("encoder_attention_mask".into(), mask),
    ];
    let past = cache.inputs();
    inputs.extend(past.iter().map(|(n, t)| (n.clone(), t)));
    inputs.extend(cross.iter().map(|(k, v)| (k.clone(), v)));
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    p.run("decode", &named, ABS, REL)
}

#[test]
fn t5_left_padding_gives_the_reference() {
    let r = Reference::load("t5-tiny");
    let mut p = Pair::load(&fixture_dir("t5-tiny"));
    let c = r.case("decode");
    let (ids, mask) = (ids_of(&c["input_ids"]), ids_of(&c["attention_mask"]));
    let (left_ids, left_mask) = left_pad(&ids, &mask, 0);
    assert_ne!(left_mask, mask, "the batch has a padded row");
    let left_mask_t = Tensor::i64_rows(&left_mask);
    let enc = p.run(
        "encode",
        &[
            ("input_ids", &Tensor::i64_rows(&left_ids)),
            ("attention_mask", &left_mask_t),
        ],
        ABS,
        REL,
    );
    // Back to the reference's right-padded layout, to compare where the mask is 1.
    let hidden = &enc["encoder_last_hidden_state"];
    let (b, t, ch) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    let got = hidden.as_f32().unwrap();
    let mut shifted = vec![0f32; got.len()];
    for bi in 0..b {
        let pad = left_mask[bi].iter().filter(|&&x| x == 0).count();
        for ti in 0..t - pad {
            let from = (bi * t + ti + pad) * ch;
            shifted[(bi * t + ti) * ch..][..ch].copy_from_slice(&got[from..][..ch]);
        }
    }
    r.check_where("encode.last_hidden_state", &shifted, hidden.shape(), |i| {
        mask[i / (t * ch)][(i / ch) % t] == 1
    });
    let dec = Tensor::i64_rows(&ids_of(&c["decoder_input_ids"]));
    let out = t5_decode(&mut p, hidden, &left_mask_t, &dec);
    let logits = &out["logits"];
    r.check("decode.logits", logits.as_f32().unwrap(), logits.shape());
}

#[test]
fn t5_holes_in_cross_attention_give_the_reference() {
    let r = Reference::load("t5-tiny");
    let mut p = Pair::load(&fixture_dir("t5-tiny"));
    let c = r.case("decode");
    let (ids, mask) = (ids_of(&c["input_ids"]), ids_of(&c["attention_mask"]));
    let mask_t = Tensor::i64_rows(&mask);
    let enc = p.run(
        "encode",
        &[
            ("input_ids", &Tensor::i64_rows(&ids)),
            ("attention_mask", &mask_t),
        ],
        ABS,
        REL,
    );
    let hidden = &enc["encoder_last_hidden_state"];
    let (b, t, ch) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    // Junk rows (large, so a leak would show) hidden after key 0, before key 5 and in a run
    // of three in the middle; the reference's own right padding stays masked too.
    let holes_before = [1usize, 5, 12, 12, 12];
    let s = t + holes_before.len();
    let mut states = vec![];
    let mut new_mask = vec![];
    for (bi, row_mask) in mask.iter().enumerate() {
        for (ti, &m) in row_mask.iter().enumerate() {
            for (n, _) in holes_before.iter().enumerate().filter(|(_, &h)| h == ti) {
                states.extend((0..ch).map(|e| 50.0 * (((bi + n + e) % 7) as f32 - 3.0)));
                new_mask.push(0);
            }
            states.extend_from_slice(&hidden.as_f32().unwrap()[(bi * t + ti) * ch..][..ch]);
            new_mask.push(m);
        }
    }
    let holed = Tensor::f32(vec![b, s, ch], states);
    let holed_mask = Tensor::i64(vec![b, s], new_mask);
    let dec = Tensor::i64_rows(&ids_of(&c["decoder_input_ids"]));
    let out = t5_decode(&mut p, &holed, &holed_mask, &dec);
    let logits = &out["logits"];
    r.check("decode.logits", logits.as_f32().unwrap(), logits.shape());
    // The junk does reach the decoder when unmasked: the holes are what keeps it out.
    let open = Tensor::i64(vec![b, s], vec![1; b * s]);
    let leaked = t5_decode(&mut p, &holed, &open, &dec);
    let (want, _) = r.tensor("decode.logits");
    let worst = want
        .iter()
        .zip(leaked["logits"].as_f32().unwrap())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst > 1e-2,
        "unmasked junk changed the logits by only {worst}"
    );
}

#[test]
fn bert_all_masked_row_holes_and_left_padding() {
    let r = Reference::load("bert-tiny");
    let dir = fixture_dir("bert-tiny");
    let mut p = Pair::load(&dir);
    let c = r.case("single_batch");
    let (ids, types, mask) = (
        ids_of(&c["input_ids"]),
        ids_of(&c["token_type_ids"]),
        ids_of(&c["attention_mask"]),
    );
    let (n, t) = (ids.len(), ids[0].len());
    let (mut all_ids, mut all_types, mut all_mask) = (ids.clone(), types.clone(), mask.clone());
    // Row n: row 0 with every key masked.
    all_ids.push(ids[0].clone());
    all_types.push(types[0].clone());
    all_mask.push(vec![0; t]);
    // Rows n+1 and n+2: row 0 with a hole at keys 3..6, holding other tokens in the second.
    let mut holed = vec![1; t];
    holed[3..6].fill(0);
    let mut other = ids[0].clone();
    other[3..6].copy_from_slice(&[2000, 3000, 4000]);
    for row in [ids[0].clone(), other] {
        all_ids.push(row);
        all_types.push(types[0].clone());
        all_mask.push(holed.clone());
    }
    // Row n+3: row 1 left-padded (compared between the engines only: BERT's absolute positions
    // move with the padding, in Hugging Face too).
    let (left_ids, left_mask) = left_pad(&ids[1..2], &mask[1..2], 0);
    all_ids.extend(left_ids);
    all_types.push(vec![0; t]);
    all_mask.extend(left_mask);
    let inputs = [
        Tensor::i64_rows(&all_ids),
        Tensor::i64_rows(&all_types),
        Tensor::i64_rows(&all_mask),
    ];
    let named = [
        ("input_ids", &inputs[0]),
        ("token_type_ids", &inputs[1]),
        ("attention_mask", &inputs[2]),
    ];
    let out = p.run("encode", &named, ABS, REL);
    let h = &out["last_hidden_state"];
    let ch = h.shape()[2];
    let states = h.as_f32().unwrap();
    r.check(
        "single_batch.last_hidden_state",
        &states[..n * t * ch],
        &[n, t, ch],
    );
    let pooled = &out["pooler_output"];
    r.check(
        "single_batch.pooler_output",
        &pooled.as_f32().unwrap()[..n * pooled.shape()[1]],
        &[n, pooled.shape()[1]],
    );
    assert!(states.iter().all(|x| x.is_finite()), "non-finite states");
    let row = |i: usize| &states[i * t * ch..][..t * ch];
    check_close(
        "what sits under a hole",
        row(n + 1),
        &[t, ch],
        row(n + 2),
        0.0,
        0.0,
        |i| holed[i / ch] == 1,
    );
    let whole = row(0);
    let worst = whole
        .iter()
        .zip(row(n + 1))
        .enumerate()
        .filter(|(i, _)| holed[i / ch] == 1)
        .fold(0f32, |m, (_, (a, b))| m.max((a - b).abs()));
    assert!(worst > 1e-3, "the hole changed nothing ({worst})");

    // The compiled executables' code: the JIT's lowering, linked ahead of time.
    let mut aot = SharedObjectEngine::new(p.model.clone()).unwrap();
    let a = aot.run("encode", &named).unwrap();
    for (name, t) in &out {
        assert_eq!(a[name].as_f32(), t.as_f32(), "aot vs jit: {name}");
    }
}
