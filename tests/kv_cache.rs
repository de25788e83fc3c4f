//! The KV cache across decode steps: compiled entries append each step's keys and values to
//! the cache in place (`Engine::run_cached`), the interpreter through its `present_*`
//! outputs; both must give the same logits and the same cache contents, step after step,
//! past the cache's first capacity, and a cache that does not fit the entry is refused.

mod common;
#[path = "common/jit.rs"]
mod jit_common;

use common::*;
use cranformer_runtime::kv_cache::{Kind, KvCache};
use cranformer_runtime::{Engine, ModelInfo, Outputs, Tensor};
use jit_common::*;

/// JIT vs interpreter: the same f32 maths in a different order.
const ABS: f32 = 2e-5;
const REL: f32 = 2e-4;

fn close(what: &str, want: &Tensor, got: &Tensor) {
    assert_eq!(want.shape(), got.shape(), "{what}: shape");
    check_close(
        what,
        want.as_f32().unwrap(),
        want.shape(),
        got.as_f32().unwrap(),
        ABS,
        REL,
        |_| true,
    );
}

fn same_outputs(what: &str, want: &Outputs, got: &Outputs) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, w) in want {
        close(&format!("{what}.{name}"), w, &got[name]);
    }
}

fn same_cache(what: &str, want: &KvCache, got: &KvCache) {
    assert_eq!(want.len(), got.len(), "{what}: cached positions");
    for l in 0..want.layers() {
        for kind in [Kind::Key, Kind::Value] {
            close(
                &format!("{what}: {kind:?} {l}"),
                &want.tensor(kind, l),
                &got.tensor(kind, l),
            );
        }
    }
}

/// The greedy pick of each row of `[B, 1, V]` logits, as `[B, 1]` ids.
fn greedy(logits: &Tensor) -> Tensor {
    let b = logits.shape()[0];
    let ids: Vec<i64> = (0..b).map(|r| argmax(&row(logits, r, 0)) as i64).collect();
    Tensor::i64(vec![b, 1], ids)
}

#[test]
fn gpt2_steps_append_in_place_and_match_the_interpreter() {
    let mut p = Pair::load(&fixture_dir("gpt2-tiny"));
    let ModelInfo::Gpt2 {
        layers,
        hidden_size,
        max_positions,
        ..
    } = p.model.info.clone()
    else {
        panic!("gpt2-tiny is GPT-2");
    };
    for entry in ["forward", "step", "batch_step"] {
        let meta = p.jit.meta(entry).unwrap();
        assert_eq!(meta.appends.len(), 2 * layers, "{entry}: in-place appends");
    }
    let b = 2;
    let mut want = KvCache::new(layers, b, hidden_size);
    let mut got = KvCache::new(layers, b, hidden_size);
    // The prompt through `step`, then one token a step until the positions run out.
    let mut tokens = Tensor::i64(vec![b, 5], vec![3, 14, 15, 92, 65, 35, 89, 79, 32, 38]);
    let mut steps = 0;
    while want.len() + tokens.shape()[1] <= max_positions {
        let total = want.len() + tokens.shape()[1];
        let mask = Tensor::i64(vec![b, total], vec![1; b * total]);
        let inputs = [("input_ids", &tokens), ("attention_mask", &mask)];
        let w = p.interp.run_cached("step", &inputs, &mut want).unwrap();
        let g = p.jit.run_cached("step", &inputs, &mut got).unwrap();
        same_outputs(&format!("step {steps}"), &w, &g);
        same_cache(&format!("step {steps}"), &want, &got);
        tokens = greedy(&w["logits"]);
        steps += 1;
    }
    assert_eq!(got.len(), max_positions);
    // The cache was read where it lies: its rows are `capacity` positions apart, more than P.
    assert!(got.capacity() >= max_positions);

    // `forward` over the whole sequence gives what the steps cached.
    let mut all = KvCache::new(layers, b, hidden_size);
    let ids: Vec<i64> = (0..b * 20).map(|i| (i * 7 % 50) as i64).collect();
    let ids = Tensor::i64(vec![b, 20], ids);
    let mask = Tensor::i64(vec![b, 20], vec![1; b * 20]);
    let inputs = [("input_ids", &ids), ("attention_mask", &mask)];
    let mut ref_cache = KvCache::new(layers, b, hidden_size);
    let w = p
        .interp
        .run_cached("forward", &inputs, &mut ref_cache)
        .unwrap();
    let g = p.jit.run_cached("forward", &inputs, &mut all).unwrap();
    same_outputs("forward", &w, &g);
    same_cache("forward", &ref_cache, &all);
}

#[test]
fn t5_steps_append_in_place_past_the_first_capacity() {
    let mut p = Pair::load(&fixture_dir("t5-tiny"));
    let ModelInfo::T5 {
        decoder_layers,
        kv_width,
        decoder_start_token_id,
        ..
    } = p.model.info.clone()
    else {
        panic!("t5-tiny is T5");
    };
    for entry in ["decode", "step"] {
        let meta = p.jit.meta(entry).unwrap();
        assert_eq!(
            meta.appends.len(),
            2 * decoder_layers,
            "{entry}: in-place appends"
        );
    }
    let b = 2;
    let ids = Tensor::i64(vec![b, 4], vec![5, 6, 7, 1, 8, 9, 10, 1]);
    let mask = Tensor::i64(vec![b, 4], vec![1, 1, 1, 1, 1, 1, 1, 0]);
    let enc = p
        .interp
        .run("encode", &[("input_ids", &ids), ("attention_mask", &mask)])
        .unwrap();
    let hidden = &enc["encoder_last_hidden_state"];
    let cross = p
        .interp
        .run("cross_kv", &[("encoder_hidden_states", hidden)])
        .unwrap();
    let mut want = KvCache::new(decoder_layers, b, kv_width);
    let mut got = KvCache::new(decoder_layers, b, kv_width);
    let mut tokens = Tensor::i64(vec![b, 1], vec![decoder_start_token_id; b]);
    // More steps than the cache first reserves, so it grows (and moves) under the JIT.
    for step in 0..70 {
        let mut inputs: Vec<(&str, &Tensor)> = vec![
            ("decoder_input_ids", &tokens),
            ("encoder_attention_mask", &mask),
        ];
        inputs.extend(cross.iter().map(|(n, t)| (n.as_str(), t)));
        let w = p.interp.run_cached("step", &inputs, &mut want).unwrap();
        let g = p.jit.run_cached("step", &inputs, &mut got).unwrap();
        same_outputs(&format!("step {step}"), &w, &g);
        tokens = greedy(&w["logits"]);
    }
    same_cache("70 steps", &want, &got);
    assert_eq!(got.len(), 70);
    assert!(got.capacity() >= 70);
}

#[test]
fn a_cache_that_does_not_fit_the_entry_is_refused() {
    let mut p = Pair::load(&fixture_dir("gpt2-tiny"));
    let ModelInfo::Gpt2 {
        layers,
        hidden_size,
        ..
    } = p.model.info.clone()
    else {
        panic!("gpt2-tiny is GPT-2");
    };
    let ids = Tensor::i64(vec![2, 1], vec![3, 4]);
    let mask = Tensor::i64(vec![2, 1], vec![1, 1]);
    let long_mask = Tensor::i64(vec![2, 3], vec![1; 6]);
    let w = hidden_size;
    let cases = [
        (
            KvCache::new(layers, 3, w),
            &mask,
            "input past_key.0: the KV cache holds 3 rows, the other inputs 2".to_string(),
        ),
        (
            KvCache::new(layers, 2, w + 1),
            &mask,
            format!(
                "input past_key.0: expected f32[B, P, {w}], the KV cache holds f32[2, 0, {}]",
                w + 1
            ),
        ),
        (
            KvCache::new(layers, 2, w),
            &long_mask,
            "input attention_mask: covers 3 positions, expected past 0 + new 1".to_string(),
        ),
        (
            KvCache::new(layers - 1, 2, w),
            &mask,
            format!(
                "input past_key.{}: missing; entry point step needs f32[B, P, {w}]",
                layers - 1
            ),
        ),
    ];
    for (mut cache, m, want) in cases {
        let inputs = [("input_ids", &ids), ("attention_mask", m)];
        let err = p.jit.run_cached("step", &inputs, &mut cache).unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(cache.len(), 0, "a refused call caches nothing");
    }
}

/// A batch cache whose rows hold different lengths: streams join (`push_row`) and leave
/// (`swap_remove_row`) at different steps, and each `batch_step` gives every row the logits
/// it gets decoding alone, in place under the JIT and through `present_*` under the
/// interpreter.
#[test]
fn gpt2_rows_of_different_lengths_step_like_each_row_alone() {
    let mut p = Pair::load(&fixture_dir("gpt2-tiny"));
    let ModelInfo::Gpt2 {
        layers,
        hidden_size: w,
        ..
    } = p.model.info.clone()
    else {
        panic!("gpt2-tiny is GPT-2");
    };
    let prompts: [&[i64]; 3] = [
        &[3, 14, 15],
        &[92, 65, 35, 89, 79, 32, 38],
        &[5, 9, 2, 6, 5],
    ];
    // Stream s joins before batched step `joins[s]` and leaves after `steps[s]` of its steps.
    let joins = [0, 2, 3];
    let steps = [6, 9, 7];
    let prefill = |p: &mut Pair, s: usize| -> (KvCache, Tensor) {
        let n = prompts[s].len();
        let ids = Tensor::i64(vec![1, n], prompts[s].to_vec());
        let mask = Tensor::i64(vec![1, n], vec![1; n]);
        let mut cache = KvCache::new(layers, 1, w);
        let out = p
            .jit
            .run_cached(
                "step",
                &[("input_ids", &ids), ("attention_mask", &mask)],
                &mut cache,
            )
            .unwrap();
        (cache, greedy(&out["logits"]))
    };
    // Alone: the tokens each stream is fed and the logits it gets, step by step.
    let mut alone: Vec<(Vec<Tensor>, Vec<Tensor>)> = vec![];
    for (s, &n) in steps.iter().enumerate() {
        let (mut cache, mut next) = prefill(&mut p, s);
        let (mut fed, mut logits) = (vec![], vec![]);
        for _ in 0..n {
            let total = cache.len() + 1;
            let mask = Tensor::i64(vec![1, total], vec![1; total]);
            let out = p
                .jit
                .run_cached(
                    "step",
                    &[("input_ids", &next), ("attention_mask", &mask)],
                    &mut cache,
                )
                .unwrap();
            fed.push(next);
            next = greedy(&out["logits"]);
            logits.push(out["logits"].clone());
        }
        alone.push((fed, logits));
    }

    let mut got = KvCache::new(layers, 0, w);
    let mut want = KvCache::new(layers, 0, w);
    let mut rows: Vec<usize> = vec![];
    let mut done = [0usize; 3];
    let mut ragged_steps = 0;
    for step in 0.. {
        for r in (0..rows.len()).rev() {
            if done[rows[r]] == steps[rows[r]] {
                got.swap_remove_row(r);
                want.swap_remove_row(r);
                rows.swap_remove(r);
            }
        }
        for s in (0..3).filter(|&s| joins[s] == step) {
            let (cache, _) = prefill(&mut p, s);
            assert_eq!(got.push_row(&cache, 0), Ok(rows.len()));
            assert_eq!(want.push_row(&cache, 0), Ok(rows.len()));
            rows.push(s);
        }
        if rows.is_empty() {
            break;
        }
        let (b, past) = (rows.len(), got.len());
        ragged_steps += got.is_ragged() as usize;
        let ids: Vec<i64> = rows
            .iter()
            .map(|&s| alone[s].0[done[s]].as_i64().unwrap()[0])
            .collect();
        let ids = Tensor::i64(vec![b, 1], ids);
        let positions = Tensor::i64(vec![b, 1], got.row_lens().to_vec());
        let mut mask = vec![0i64; b * (past + 1)];
        for (r, &len) in got.row_lens().iter().enumerate() {
            mask[r * (past + 1)..][..len as usize + 1].fill(1);
        }
        let mask = Tensor::i64(vec![b, past + 1], mask);
        let inputs = [
            ("input_ids", &ids),
            ("position_ids", &positions),
            ("attention_mask", &mask),
        ];
        let g = p.jit.run_cached("batch_step", &inputs, &mut got).unwrap();
        let wo = p
            .interp
            .run_cached("batch_step", &inputs, &mut want)
            .unwrap();
        close(
            &format!("step {step}: JIT vs interpreter"),
            &wo["logits"],
            &g["logits"],
        );
        for (r, &s) in rows.iter().enumerate() {
            let alone_logits = &alone[s].1[done[s]];
            let v = alone_logits.shape()[2];
            let row_logits = Tensor::f32(vec![1, 1, v], row(&g["logits"], r, 0));
            close(
                &format!("step {step}, stream {s}"),
                alone_logits,
                &row_logits,
            );
            done[s] += 1;
            assert_eq!(got.row_len(r), prompts[s].len() + done[s]);
            for l in 0..layers {
                for kind in [Kind::Key, Kind::Value] {
                    let (a, b) = (got.rows(kind, l, r), want.rows(kind, l, r));
                    let (wt, gt) = (
                        Tensor::f32(vec![b.len()], b.to_vec()),
                        Tensor::f32(vec![a.len()], a.to_vec()),
                    );
                    close(&format!("step {step}, row {r}: {kind:?} {l}"), &wt, &gt);
                }
            }
        }
    }
    assert_eq!(done, steps);
    assert!(ragged_steps >= 5, "only {ragged_steps} steps mixed lengths");

    // A ragged call takes one token per row, its positions, and a key mask.
    let (a, _) = prefill(&mut p, 0);
    let (c, _) = prefill(&mut p, 1);
    let mut cache = KvCache::new(layers, 0, w);
    cache.push_row(&a, 0).unwrap();
    cache.push_row(&c, 0).unwrap();
    let p_len = cache.len();
    let two = Tensor::i64(vec![2, 2], vec![1, 2, 3, 4]);
    let positions = Tensor::i64(vec![2, 2], vec![3, 4, 7, 8]);
    let mask = Tensor::i64(vec![2, p_len + 2], vec![1; 2 * (p_len + 2)]);
    let err = p
        .jit
        .run_cached(
            "batch_step",
            &[
                ("input_ids", &two),
                ("position_ids", &positions),
                ("attention_mask", &mask),
            ],
            &mut cache,
        )
        .unwrap_err();
    assert!(err.to_string().contains("one token per row"), "{err}");
    let one = Tensor::i64(vec![2, 1], vec![1, 2]);
    let mask = Tensor::i64(vec![2, p_len + 1], vec![1; 2 * (p_len + 1)]);
    let err = p
        .jit
        .run_cached(
            "step",
            &[("input_ids", &one), ("attention_mask", &mask)],
            &mut cache,
        )
        .unwrap_err();
    assert!(err.to_string().contains("needs position_ids"), "{err}");
    assert_eq!(cache.row_lens(), &[3, 7], "a refused call caches nothing");
}
