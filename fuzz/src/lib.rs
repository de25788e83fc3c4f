//! What each fuzz target checks, one function per target taking the raw input. Shared by the
//! libFuzzer targets (fuzz_targets/) and by the regression test that replays the committed
//! seeds and crash inputs under `cargo test` (tests/fuzz_regressions.rs includes this file),
//! so it needs nothing but the runtime and serde_json.
//!
//! Every function panics when a property the runtime promises fails: bad input must come
//! back as an error that names the file, never as a panic, an out-of-bounds read or a hang.
use cranformer_runtime::compiled::{Program, ProgramError};
use cranformer_runtime::config::ModelConfig;
use cranformer_runtime::model_info::{ModelInfo, Pooling, StopIds};
use cranformer_runtime::native::{plan_memory, EntryCtx, NativeEntry};
use cranformer_runtime::shape::Dims;
use cranformer_runtime::tasks::forward::ForwardInput;
use cranformer_runtime::tokenize::{Tokenizer, TokenizerKind};
use cranformer_runtime::weights::{DType, F32Buffer, ShardIndex, Weights, WeightsError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A safetensors file as the runtime loads it: header length, JSON header, every tensor's
/// dtype, shape and byte range, then each tensor read back as f32.
pub fn safetensors_header(data: &[u8]) {
    let w = match Weights::from_bytes(vec![(PathBuf::from("model.safetensors"), data.to_vec())]) {
        Ok(w) => w,
        Err(e) => {
            assert!(matches!(e, WeightsError::Malformed { .. }), "{e}");
            assert!(e.to_string().starts_with("model.safetensors: "), "{e}");
            return;
        }
    };
    for key in w.keys() {
        let info = w.info(key).expect("listed key").clone();
        match w.get(key, &info.shape) {
            Ok(buf) => {
                assert!(matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16));
                assert_eq!(buf.len(), info.shape.iter().product::<usize>(), "{key}");
                // Reads every element: a view out of bounds would trip the sanitizer.
                std::hint::black_box(buf.iter().fold(0u32, |a, x| a ^ x.to_bits()));
            }
            Err(e) => assert!(
                matches!(e, WeightsError::Dtype { .. }) && matches!(info.dtype, DType::Other(_)),
                "{key}: {e}"
            ),
        }
        let mut wrong = info.shape.clone();
        wrong.push(1);
        assert!(w.get(key, &wrong).is_err());
    }
    // A missing key looks for similar ones among all keys.
    let e = w.get("h.0.attn.c_attn.weight", &[1]);
    if !w.contains("h.0.attn.c_attn.weight") {
        assert!(matches!(e, Err(WeightsError::MissingKey { .. })));
    }
}

/// A safetensors file holding one F32 vector per key.
fn shard(keys: &[(&str, usize)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (key, n) in keys {
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n]}),
        );
        offset += 4 * n;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.resize(out.len() + offset, 0);
    out
}

/// `model.safetensors.index.json` as the runtime reads it: parsed, its shards opened (two
/// fixed in-memory shards stand for the files) and checked against their headers.
pub fn shard_index(data: &[u8]) {
    let dir = Path::new("/model");
    let index_path = dir.join("model.safetensors.index.json");
    let index = match ShardIndex::parse(data, &index_path) {
        Ok(index) => index,
        Err(e) => {
            assert!(matches!(e, WeightsError::Malformed { .. }), "{e}");
            assert!(
                e.to_string()
                    .starts_with("/model/model.safetensors.index.json: "),
                "{e}"
            );
            return;
        }
    };
    assert!(!index.shards.is_empty());
    let available = [
        (
            "model-00001-of-00002.safetensors",
            shard(&[("a", 2), ("b", 1)]),
        ),
        ("model-00002-of-00002.safetensors", shard(&[("c", 3)])),
    ];
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![];
    for name in &index.shards {
        assert!(!name.contains('/') && name != ".." && name != ".", "{name}");
        match available.iter().find(|(n, _)| n == name) {
            Some((n, bytes)) => files.push((dir.join(n), bytes.clone())),
            // Weights::open reports a shard that is not a file before opening any.
            None => return,
        }
    }
    let weights = Weights::from_bytes(files).expect("the fixed shards are valid");
    if let Err(e) = index.check(&weights, dir) {
        assert!(e.to_string().contains("does not contain it"), "{e}");
    }
}

/// config.json of every architecture (BERT, GPT-2, T5) as `ModelConfig::parse` reads it.
pub fn config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ModelConfig::parse(text, Path::new("/model/config.json")) {
        Ok(config) => {
            std::hint::black_box((config.model_type(), config.max_positions()));
            match &config {
                ModelConfig::Bert(c) => {
                    assert!(c.num_attention_heads > 0);
                    assert_eq!(c.hidden_size % c.num_attention_heads, 0);
                }
                ModelConfig::Gpt2(c) => {
                    assert!(c.n_head > 0);
                    assert_eq!(c.n_embd % c.n_head, 0);
                }
                ModelConfig::T5(c) => {
                    assert!(c.num_heads > 0 && c.d_kv > 0);
                    std::hint::black_box((
                        c.decoder_layers(),
                        c.feed_forward(),
                        c.scales_decoder_output(),
                        c.start_token(),
                    ));
                }
            }
        }
        Err(e) => assert!(e.to_string().starts_with("/model/config.json: "), "{e}"),
    }
}

fn models() -> [ModelInfo; 3] {
    [
        ModelInfo::Bert {
            architecture: "BertModel".into(),
            max_positions: 16,
            type_vocab_size: 2,
            hidden_size: 8,
            vocab_size: 100,
            has_pooler: true,
            has_mlm: false,
            has_nsp: false,
            labels: None,
            problem_type: "single_label_classification".into(),
            pooling: Pooling {
                mode: "mean".into(),
                normalize: false,
            },
            max_seq_length: None,
        },
        ModelInfo::Gpt2 {
            architecture: "GPT2LMHeadModel".into(),
            max_positions: 16,
            layers: 2,
            hidden_size: 8,
            has_lm_head: true,
            eos_token_id: StopIds::new(vec![99]),
            bos_token_id: Some(99),
            vocab_size: 100,
        },
        ModelInfo::T5 {
            architecture: "T5ForConditionalGeneration".into(),
            max_positions: 4096,
            encoder_layers: 2,
            decoder_layers: 2,
            kv_width: 8,
            decoder_start_token_id: 0,
            eos_token_id: StopIds::new(vec![1]),
            vocab_size: 100,
        },
    ]
}

/// The input JSON of `forward` ({"input_ids", "attention_mask", "token_type_ids",
/// "decoder_input_ids"}), checked for a BERT, a GPT-2 and a T5 model.
pub fn forward_input(data: &[u8]) {
    let path = Path::new("/in/input.json");
    for info in models() {
        let input = match ForwardInput::parse(data, path, &info) {
            Ok(input) => input,
            Err(e) => {
                assert!(e.to_string().starts_with("/in/input.json"), "{e}");
                continue;
            }
        };
        let shape = input.input_ids.shape().to_vec();
        assert_eq!(shape.len(), 2);
        assert!(shape[0] > 0 && shape[1] > 0 && shape[1] <= info.max_positions());
        let ids = input.input_ids.as_i64().unwrap();
        assert!(ids
            .iter()
            .all(|&id| id >= 0 && (id as usize) < info.vocab_size()));
        assert_eq!(input.attention_mask.shape(), shape);
        assert!(input
            .attention_mask
            .as_i64()
            .unwrap()
            .iter()
            .all(|&m| m == 0 || m == 1));
        match &info {
            ModelInfo::Bert {
                type_vocab_size, ..
            } => {
                let tt = input.token_type_ids.as_ref().expect("BERT has token types");
                assert_eq!(tt.shape(), shape);
                assert!(tt
                    .as_i64()
                    .unwrap()
                    .iter()
                    .all(|&t| t >= 0 && (t as usize) < *type_vocab_size));
            }
            ModelInfo::Gpt2 { .. } => assert!(input.token_type_ids.is_none()),
            ModelInfo::T5 { .. } => {
                if let Some(dec) = &input.decoder_input_ids {
                    assert_eq!(dec.shape()[0], shape[0]);
                    assert!(dec.shape()[1] > 0 && dec.shape()[1] <= info.max_positions());
                }
            }
        }
    }
}

const TEXTS: [&str; 4] = [
    "Hello, world! The café's naïve coöperation costs $3.50.",
    "[CLS] [MASK] <|endoftext|> </s> <pad> ##ing",
    "  spaces\tand\nnewlines  ",
    "中文字符 and emoji 🤗",
];

fn split(rest: &[u8]) -> Vec<&[u8]> {
    let mut parts = vec![];
    let mut start = 0;
    let mut i = 0;
    while i + 1 < rest.len() {
        if rest[i] == 0 && rest[i + 1] == 0 {
            parts.push(&rest[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&rest[start..]);
    parts
}

/// Tokenizer files as the runtime loads them, then a few texts through the tokenizer.
///
/// Input: one byte picks the files, the rest holds them separated by two NUL bytes:
/// - 0: tokenizer.json (BERT), 1: tokenizer.json (GPT-2), 2: tokenizer.json (T5);
/// - 3: vocab.txt [, tokenizer_config.json] (BERT's WordPiece);
/// - 4: vocab.json, merges.txt [, tokenizer_config.json] (GPT-2's byte-level BPE).
pub fn tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let parts = split(rest);
    let loaded = match mode % 5 {
        0 => Tokenizer::from_json_bytes(rest, TokenizerKind::Bert),
        1 => Tokenizer::from_json_bytes(rest, TokenizerKind::Gpt2),
        2 => Tokenizer::from_json_bytes(rest, TokenizerKind::T5),
        3 => Tokenizer::from_vocab_txt(parts[0], parts.get(1).copied()),
        _ => {
            if parts.len() < 2 {
                return;
            }
            Tokenizer::from_vocab_merges(parts[0], parts[1], parts.get(2).copied())
        }
    };
    let tok = match loaded {
        Ok(tok) => tok,
        Err(e) => {
            assert!(e.to_string().contains("cannot load tokenizer"), "{e}");
            return;
        }
    };
    // The user's text is the other input that varies: try the fuzzed bytes as text too.
    let own = String::from_utf8_lossy(&rest[..rest.len().min(64)]).into_owned();
    for text in TEXTS.iter().copied().chain([own.as_str()]) {
        let Ok(enc) = tok.encode(text) else { continue };
        assert_eq!(enc.ids.len(), enc.tokens.len());
        assert_eq!(enc.ids.len(), enc.type_ids.len());
        let _ = tok.decode(&enc.ids);
        for &id in &enc.ids {
            std::hint::black_box(tok.id_to_token(id));
        }
        let _ = tok.encode_pair(text, "second");
    }
    // An id outside the vocabulary (which may have holes) is an error, never dropped.
    let n = tok.vocab_size() as i64;
    for id in [n, n + 1000, 1 << 32, -1] {
        if tok.id_to_token(id).is_none() {
            assert!(
                tok.decode(&[id]).is_err(),
                "id {id} decodes but has no token"
            );
        }
    }
    // Truncation (`embed`, `rerank`): never more tokens than asked for.
    if let Ok(short) = tok.truncating(8) {
        for text in TEXTS {
            if let Ok(enc) = short.encode_pair(text, text) {
                assert!(enc.ids.len() <= 8, "{} tokens", enc.ids.len());
            }
        }
    }
    // What compile embeds must load again.
    if let Ok(json) = tok.to_json() {
        if let Err(e) = Tokenizer::from_json_bytes(json.as_bytes(), tok.kind()) {
            panic!("a loaded tokenizer does not reload from its own JSON: {e}");
        }
    }
}

unsafe extern "C" fn never_called(_: *const EntryCtx) -> i64 {
    unreachable!("the fuzz target never runs an entry")
}

/// The program description a compiled executable embeds, as its runtime decodes it, then the
/// host-side steps that index by it: the task list, the memory plan of every entry at a few
/// call sizes, weight lookup and weight preparation.
pub fn program_blob(data: &[u8]) {
    let program = match Program::decode(data) {
        Ok(p) => p,
        Err(e) => {
            assert!(matches!(
                e,
                ProgramError::Json(_) | ProgramError::Version { .. } | ProgramError::Entry { .. }
            ));
            assert!(
                e.to_string()
                    .starts_with("the embedded program description"),
                "{e}"
            );
            return;
        }
    };
    std::hint::black_box((program.info.tasks(), program.tokenizer_kind));
    // Any feature names, known or not: the start-up check reports, never panics.
    let _ = cranformer_runtime::cpu_features::check(&program.cpu_features);
    let sizes = [
        Dims {
            batch: 1,
            seq: 1,
            past: 0,
            enc_seq: 1,
        },
        Dims {
            batch: 3,
            seq: 7,
            past: 5,
            enc_seq: 2,
        },
        Dims {
            batch: usize::MAX / 2,
            seq: 1 << 40,
            past: usize::MAX - 3,
            enc_seq: 9,
        },
    ];
    for meta in &program.entries {
        for dims in &sizes {
            if let Some((offsets, total)) = plan_memory(meta, dims) {
                for (sig, &at) in meta.buffers.iter().zip(&offsets) {
                    assert!(
                        at + sig.checked_bytes(dims).unwrap() <= total,
                        "{}",
                        sig.name
                    );
                }
            }
        }
    }
    let empty = Weights::from_bytes(vec![]).unwrap();
    if !program.entries.iter().all(|m| m.weights.is_empty()) {
        assert!(program.load_prepared(&empty).is_err());
    }
    let _ = program.load_weights(&empty);
    // Preparing weights from a checkpoint of small tensors: a layout that reads more than
    // the tensor holds must be an error, not an out-of-bounds read.
    let checkpoint = |key: &str| Some(F32Buffer::from_vec(vec![0.5; key.len().min(64)]));
    let mut prepared = BTreeMap::new();
    for meta in &program.entries {
        // SAFETY: the entry is never run, so the function is never called.
        let _ = unsafe { NativeEntry::new(meta.clone(), never_called, &checkpoint, &mut prepared) };
    }
}
