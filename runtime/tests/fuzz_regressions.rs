//! Replays the fuzz targets' committed inputs under `cargo test`: every seed
//! (fuzz/seeds/<target>/) and every input a fuzzer once crashed on
//! (fuzz/regressions/<target>/), through the same checks the libFuzzer targets run.
//! The tests below the replay name each past finding and the clean error it now gives.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = vec![];
    for dir in ["seeds", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn replay_safetensors_header() {
    replay("safetensors_header", checks::safetensors_header);
}

#[test]
fn replay_shard_index() {
    replay("shard_index", checks::shard_index);
}

#[test]
fn replay_config_json() {
    replay("config_json", checks::config_json);
}

#[test]
fn replay_forward_input() {
    replay("forward_input", checks::forward_input);
}

#[test]
fn replay_tokenizer() {
    replay("tokenizer", checks::tokenizer);
}

#[test]
fn replay_program_blob() {
    replay("program_blob", checks::program_blob);
}

/// A committed crash input: (mode byte, rest) as the tokenizer target reads it.
fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

use cranformer_runtime::tokenize::{Tokenizer, TokenizerKind};

fn load_error(result: Result<Tokenizer, cranformer_runtime::tokenize::TokenizeError>) -> String {
    match result {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn precompiled_charsmap_that_does_not_parse_is_a_load_error() {
    // tokenizers 0.22 `expect`s the charsmap to parse; the runtime checks it first.
    let data = regression("tokenizer", "precompiled-charsmap-expect-panic");
    let err = load_error(Tokenizer::from_json_bytes(&data[1..], TokenizerKind::T5));
    assert!(
        err.starts_with("<embedded tokenizer.json>: cannot load tokenizer: Precompiled normalizer"),
        "{err}"
    );
}

#[test]
fn precompiled_trie_leading_out_of_bounds_is_a_load_error() {
    // A charsmap whose trie sends a lookup past its end: spm_precompiled would index out of
    // bounds on the first text containing that byte.
    let mut charsmap = 8u32.to_le_bytes().to_vec();
    // Root unit: offset 1024 (bits 10..), so the first byte's lookup lands far outside.
    charsmap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    charsmap.extend_from_slice(&0u32.to_le_bytes());
    let b64 = base64(&charsmap);
    let json = format!(
        r#"{{"version":"1.0","added_tokens":[],"normalizer":{{"type":"Precompiled","precompiled_charsmap":"{b64}"}},
        "pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{"a":0,"[UNK]":1}},"unk_token":"[UNK]"}}}}"#
    );
    let err = load_error(Tokenizer::from_json_bytes(
        json.as_bytes(),
        TokenizerKind::T5,
    ));
    assert!(err.contains("leaves the trie"), "{err}");
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn template_with_undefined_special_token_is_a_load_error() {
    // tokenizers 0.22 panics ("no entry found for key") on the first encode.
    let data = regression("tokenizer", "template-undefined-special-token");
    let err = load_error(Tokenizer::from_json_bytes(&data[1..], TokenizerKind::Bert));
    assert!(err.contains("TemplateProcessing: the "), "{err}");
    assert!(err.contains("which is not defined"), "{err}");
}

#[test]
fn huge_special_token_is_refused_before_the_quadratic_matcher() {
    let data = regression("tokenizer", "huge-mask-token-quadratic");
    let rest = &data[1..];
    let split = rest.windows(2).position(|w| w == [0, 0]).unwrap();
    let t = std::time::Instant::now();
    let err = load_error(Tokenizer::from_vocab_txt(
        &rest[..split],
        Some(&rest[split + 2..]),
    ));
    assert!(
        err.starts_with(
            "tokenizer_config.json: cannot load tokenizer: mask_token: a token of 270366 bytes"
        ),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
}

#[test]
fn tokenizer_whose_vocabulary_does_not_serialize_is_refused_by_to_json() {
    // Ids with holes load, but the crate drops tokens when writing them: a compiled
    // executable would embed a tokenizer that does not load. Compile now fails instead.
    let data = regression("tokenizer", "vocab-holes-to-json-does-not-reload");
    let tok = Tokenizer::from_json_bytes(&data[1..], TokenizerKind::Gpt2).unwrap();
    let err = tok.to_json().unwrap_err().to_string();
    assert!(err.contains("cannot serialize"), "{err}");
}

#[test]
fn real_tokenizer_seeds_load() {
    // The checks above must not refuse real files: the seeds include the real T5
    // tokenizer.json (Precompiled normalizer, TemplateProcessing).
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/tokenizer");
    let t5 = std::fs::read(seeds.join("t5-real.json")).unwrap();
    let tok = Tokenizer::from_json_bytes(&t5[1..], TokenizerKind::T5).unwrap();
    assert!(!tok.encode("Hello, world!").unwrap().ids.is_empty());
    tok.to_json().unwrap();
    for (name, kind) in [
        ("bert-small.json", TokenizerKind::Bert),
        ("gpt2-small.json", TokenizerKind::Gpt2),
    ] {
        let data = std::fs::read(seeds.join(name)).unwrap();
        Tokenizer::from_json_bytes(&data[1..], kind)
            .unwrap()
            .to_json()
            .unwrap();
    }
}

use cranformer_runtime::compiled::Program;
use cranformer_runtime::native::{plan_memory, EntryCtx, NativeEntry, WeightLoadError, WeightPrep};
use cranformer_runtime::shape::Dims;
use cranformer_runtime::weights::{F32Buffer, ShardIndex};

fn program_seed(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds/program_blob")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn decode_error(v: &serde_json::Value) -> String {
    match Program::decode(v.to_string().as_bytes()) {
        Ok(_) => panic!("decoded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn program_blob_indices_out_of_range_are_decode_errors() {
    let good = program_seed("gpt2-tiny.json");
    Program::decode(good.to_string().as_bytes()).unwrap();

    // One live range short: the memory planner indexed `live` by buffer.
    let mut v = good.clone();
    v["entries"][0]["live"].as_array_mut().unwrap().pop();
    let err = decode_error(&v);
    assert!(err.contains("live ranges for"), "{err}");

    // An output in a buffer that does not exist: the executor indexed `buffers` by it.
    let mut v = good.clone();
    v["entries"][0]["outputs"][0][1] = serde_json::json!({"Buffer": 100000});
    assert!(decode_error(&v).contains("which does not exist"));

    // A buffer whose constant size overflows usize.
    let mut v = good.clone();
    v["entries"][0]["buffers"][0]["ty"]["shape"] =
        serde_json::json!([{"Const": u64::MAX / 2}, {"Const": 16}]);
    assert!(decode_error(&v).contains("overflowing size"));

    let mut v = good.clone();
    v["tokenizer_kind"] = "gtp2".into();
    let err = decode_error(&v);
    assert!(err.contains("unknown variant `gtp2`"), "{err}");

    let mut v = good;
    v["version"] = 7.into();
    assert!(decode_error(&v).contains("version 7"));
}

#[test]
fn memory_plan_of_huge_dims_is_none_not_an_overflow() {
    let program = Program::decode(program_seed("gpt2-tiny.json").to_string().as_bytes()).unwrap();
    let huge = Dims {
        batch: usize::MAX / 2,
        seq: 1 << 40,
        past: usize::MAX - 3,
        enc_seq: 1,
    };
    for meta in &program.entries {
        assert!(plan_memory(meta, &huge).is_none(), "{}", meta.name);
        assert!(plan_memory(
            meta,
            &Dims {
                batch: 1,
                seq: 4,
                past: 0,
                enc_seq: 0
            }
        )
        .is_some());
    }
}

unsafe extern "C" fn never_called(_: *const EntryCtx) -> i64 {
    unreachable!()
}

#[test]
fn weight_layout_reading_past_the_tensor_is_an_error() {
    let program = Program::decode(program_seed("gpt2-tiny.json").to_string().as_bytes()).unwrap();
    let mut meta = program.entries[0].clone();
    meta.weights = vec![("b".into(), WeightPrep::PadPanel { n: 64 })];
    let short = |_: &str| Some(F32Buffer::from_vec(vec![1.0; 8]));
    // SAFETY: the entry is never run.
    let err = unsafe { NativeEntry::new(meta, never_called, &short, &mut Default::default()) }
        .err()
        .expect("refused");
    assert!(matches!(err, WeightLoadError::Layout { .. }), "{err}");
    assert!(
        err.to_string().contains("weight \"b\": it has 8 values"),
        "{err}"
    );
}

#[test]
fn shard_index_may_not_point_outside_the_model_directory() {
    let index = Path::new("/m/model.safetensors.index.json");
    // The fuzzer found "model-00001-of-00002.safetensors/" passing as a file name.
    for shard in [
        "../x.safetensors",
        "/etc/passwd",
        "a/../../b",
        ".",
        "",
        "m.safetensors/",
        "./m",
    ] {
        let text = serde_json::json!({"weight_map": {"w": shard}}).to_string();
        let err = ShardIndex::parse(text.as_bytes(), index)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a file name in the model directory"),
            "{shard}: {err}"
        );
    }
    let ok = serde_json::json!({"weight_map": {"w": "model-00001-of-00002.safetensors"}});
    ShardIndex::parse(ok.to_string().as_bytes(), index).unwrap();
}

#[test]
fn every_program_seed_decodes() {
    // Seeds the runtime refuses would only exercise the JSON parser, not the host-side steps.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/program_blob");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if let Err(e) = Program::decode(&std::fs::read(&path).unwrap()) {
            panic!("{}: {e}", path.display());
        }
    }
}
