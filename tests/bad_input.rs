//! Bad input through the command line: every broken model directory, argument or input file
//! must end in a clear error (exit status 1, or clap's usage error) that names the file, tensor
//! or argument and what was expected; never a panic, a hang or a silently wrong answer.
//!
//! Each test runs `cranformer` as a subprocess under a deadline, on a copy of a shared fixture
//! altered in a temp dir.

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A hang is a failure: no bad input may keep the CLI busy for this long on a tiny model.
const DEADLINE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")).join(name)
}

/// Runs `cranformer ARGS`, killing it at the deadline; returns (exit code, stdout, stderr).
fn run<I, S>(args: I) -> (Option<i32>, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cranformer"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cranformer");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cranformer") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cranformer {args:?} hung: still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// Runs `cranformer ARGS`, which must fail cleanly with a message containing every needle.
fn fails<I, S>(args: I, needles: &[&str]) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let (code, stdout, stderr) = run(&args);
    let shown = format!("cranformer {args:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    let code = code.unwrap_or_else(|| panic!("killed by a signal\n{shown}"));
    // 1: cranformer's own error; 2: clap's usage error.
    assert!(code == 1 || code == 2, "exit status {code}\n{shown}");
    assert!(
        stderr.starts_with("error:"),
        "stderr does not start with \"error:\"\n{shown}"
    );
    assert!(!stderr.contains("panicked"), "panicked\n{shown}");
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "looks like a panic\n{shown}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not mention {needle:?}\n{shown}"
        );
    }
    stderr
}

/// A writable copy of a fixture's model files (the references are left out).
fn copy_of(name: &str) -> TempDir {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("bad-{name}-"))
        .tempdir()
        .unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if !file.starts_with("reference.") {
            std::fs::copy(&path, tmp.path().join(&file)).unwrap();
        }
    }
    tmp
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// One tensor of a rewritten checkpoint: key, dtype, shape, bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `dir/model.safetensors` through `edit`, which sees every tensor.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<Stored>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    write_weights(&path, &tensors);
}

fn write_weights(path: &Path, tensors: &[Stored]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// The model directory

#[test]
fn directory_without_config_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    fails(
        ["tokenize".as_ref(), dir.path().as_os_str(), "hi".as_ref()],
        &[
            &s(dir.path()),
            "no config.json",
            "not a Hugging Face model directory",
        ],
    );
}

#[test]
fn path_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    fails(
        ["generate", &s(&missing), "--prompt", "hi"],
        &[&s(&missing), "not a model directory"],
    );
}

#[test]
fn model_path_that_is_a_file() {
    let dir = copy_of("gpt2-tiny");
    let file = dir.path().join("config.json");
    fails(
        ["generate", &s(&file), "--prompt", "hi"],
        &[&s(&file), "not a model directory"],
    );
}

// ---------------------------------------------------------------------------------------------
// config.json

#[test]
fn config_invalid_json() {
    let dir = copy_of("gpt2-tiny");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"gpt2\", oops",
    )
    .unwrap();
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &[&s(&dir.path().join("config.json")), "not valid JSON"],
    );
}

#[test]
fn config_empty_file() {
    let dir = copy_of("gpt2-tiny");
    std::fs::write(dir.path().join("config.json"), "").unwrap();
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &["config.json", "not valid JSON"],
    );
}

#[test]
fn config_not_an_object() {
    let dir = copy_of("gpt2-tiny");
    std::fs::write(dir.path().join("config.json"), "[1, 2]").unwrap();
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &["config.json", "expected a JSON object"],
    );
}

#[test]
fn config_without_model_type() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.remove("model_type");
    });
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &["config.json", "model_type", "\"bert\", \"gpt2\" or \"t5\""],
    );
}

#[test]
fn gpt2_config_missing_n_embd() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.remove("n_embd");
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            &s(&dir.path().join("config.json")),
            "missing field `n_embd`",
        ],
    );
}

#[test]
fn bert_config_missing_hidden_size() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.remove("hidden_size");
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &["config.json", "missing field `hidden_size`"],
    );
}

#[test]
fn t5_config_missing_d_kv() {
    let dir = copy_of("t5-tiny");
    edit_config(dir.path(), |c| {
        c.remove("d_kv");
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["config.json", "missing field `d_kv`"],
    );
}

#[test]
fn config_field_of_wrong_type_is_named() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("n_embd".into(), json!("32"));
    });
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &["config.json", "n_embd", "expected usize"],
    );
}

#[test]
fn config_negative_size_is_named() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), json!(-2));
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &["config.json", "num_hidden_layers", "expected usize"],
    );
}

#[test]
fn unsupported_model_type_lists_supported() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), json!("llama"));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "config.json",
            "\"llama\"",
            "not supported",
            "bert, gpt2 and t5",
        ],
    );
}

#[test]
fn unsupported_bert_architecture_lists_supported() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.insert(
            "architectures".into(),
            json!(["BertForTokenClassification"]),
        );
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[
            "config.json",
            "\"BertForTokenClassification\"",
            "not supported",
            "BertForSequenceClassification",
        ],
    );
}

#[test]
fn unsupported_gpt2_architecture_lists_supported() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert(
            "architectures".into(),
            json!(["GPT2ForSequenceClassification"]),
        );
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "config.json",
            "GPT2ForSequenceClassification",
            "GPT2LMHeadModel",
        ],
    );
}

#[test]
fn unsupported_t5_architecture_lists_supported() {
    let dir = copy_of("t5-tiny");
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), json!(["T5EncoderModel"]));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "config.json",
            "T5EncoderModel",
            "T5ForConditionalGeneration",
        ],
    );
}

#[test]
fn unsupported_bert_activation() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.insert("hidden_act".into(), json!("mish"));
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[
            "config.json",
            "hidden_act",
            "\"mish\"",
            "supported: ",
            "gelu",
        ],
    );
}

#[test]
fn unsupported_gpt2_activation() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("activation_function".into(), json!("swishy"));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "config.json",
            "activation_function",
            "\"swishy\"",
            "gelu_new",
        ],
    );
}

#[test]
fn malformed_t5_feed_forward_proj() {
    let dir = copy_of("t5-tiny");
    edit_config(dir.path(), |c| {
        c.insert("feed_forward_proj".into(), json!("gated-gelu-extra"));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "config.json",
            "feed_forward_proj",
            "\"gated-gelu-extra\"",
            "gated-",
        ],
    );
}

#[test]
fn heads_not_dividing_hidden_size() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("n_head".into(), json!(5));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["config.json", "n_embd 32", "n_head 5"],
    );
}

// ---------------------------------------------------------------------------------------------
// Config and weights that disagree

#[test]
fn n_embd_wider_than_weights_names_key_and_shapes() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("n_embd".into(), json!(48));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "model.safetensors",
            "\"transformer.wte.weight\"",
            "[50257, 32]",
            "[50257, 48]",
        ],
    );
}

#[test]
fn fewer_layers_in_config_than_in_weights() {
    // Running only the first layer of a two-layer checkpoint would be a silently wrong answer.
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), json!(1));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["config.json", "n_layer", "transformer.h.1."],
    );
}

#[test]
fn fewer_bert_layers_in_config_than_in_weights() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), json!(1));
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &["config.json", "num_hidden_layers", "bert.encoder.layer.1."],
    );
}

#[test]
fn fewer_t5_decoder_layers_in_config_than_in_weights() {
    let dir = copy_of("t5-tiny");
    edit_config(dir.path(), |c| {
        c.insert("num_decoder_layers".into(), json!(1));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["config.json", "num_decoder_layers", "decoder.block.1."],
    );
}

#[test]
fn more_layers_in_config_than_in_weights_names_missing_key() {
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), json!(3));
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "\"transformer.h.2.ln_1.weight\"",
            "not found",
            "model.safetensors",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Weights

#[test]
fn no_weights_file() {
    let dir = copy_of("gpt2-tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(dir.path()), "no model.safetensors"],
    );
}

#[test]
fn pytorch_bin_only_is_explained() {
    let dir = copy_of("gpt2-tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["no model.safetensors", "pytorch_model.bin is not supported"],
    );
}

#[test]
fn truncated_weights() {
    let dir = copy_of("gpt2-tiny");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(&path), "not a valid safetensors file", "truncated"],
    );
}

#[test]
fn empty_weights_file() {
    let dir = copy_of("bert-tiny");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"").unwrap();
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[&s(&path), "0 bytes", "truncated"],
    );
}

#[test]
fn garbage_weights_header() {
    let dir = copy_of("gpt2-tiny");
    let path = dir.path().join("model.safetensors");
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{not json at all");
    bytes.extend_from_slice(&[0; 64]);
    std::fs::write(&path, bytes).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(&path), "header is not a JSON object"],
    );
}

#[test]
fn random_bytes_as_weights() {
    let dir = copy_of("t5-tiny");
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(&path), "header length"],
    );
}

/// Rewrites the header of `dir/model.safetensors` through `edit` and keeps the data bytes as
/// they are, so the header can lie about them.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn overlapping_tensors_are_refused() {
    // ln_1.weight claims the bytes of ln_1.bias, stored just before it (same shape and
    // dtype): each entry is consistent on its own, only the layout is forbidden.
    let dir = copy_of("gpt2-tiny");
    let path = edit_header(dir.path(), |h| {
        let bias = h["transformer.h.0.ln_1.bias"]["data_offsets"].clone();
        h["transformer.h.0.ln_1.weight"]["data_offsets"] = bias;
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            &s(&path),
            "not a valid safetensors file",
            "overlaps tensor",
            "transformer.h.0.ln_1.",
            "forbids tensors sharing bytes",
        ],
    );
}

#[test]
fn hole_in_weights_is_refused() {
    // A tensor dropped from the header leaves its bytes between two others.
    let dir = copy_of("gpt2-tiny");
    let path = edit_header(dir.path(), |h| {
        h.remove("transformer.h.0.ln_1.bias").unwrap();
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(&path), "belong to no tensor", "the format forbids holes"],
    );
}

#[test]
fn trailing_bytes_after_weights_are_refused() {
    let dir = copy_of("bert-tiny");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"<html>hidden</html>");
    std::fs::write(&path, bytes).unwrap();
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[
            &s(&path),
            "19 bytes after the last tensor's data belong to no tensor",
        ],
    );
}

#[test]
fn unknown_dtype_in_weights_is_refused() {
    let dir = copy_of("gpt2-tiny");
    let path = edit_header(dir.path(), |h| {
        h["transformer.wpe.weight"]["dtype"] = json!("F33");
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            &s(&path),
            "\"transformer.wpe.weight\"",
            "unknown variant `F33`",
        ],
    );
}

#[test]
fn size_that_disagrees_with_shape_is_refused() {
    let dir = copy_of("gpt2-tiny");
    let path = edit_header(dir.path(), |h| {
        h["transformer.h.0.ln_1.weight"]["shape"] = json!([33]);
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            &s(&path),
            "\"transformer.h.0.ln_1.weight\": 128 data bytes, but dtype F32 and shape [33] need 132",
        ],
    );
}

#[test]
fn header_length_past_end_of_file() {
    let dir = copy_of("t5-tiny");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            &s(&path),
            &format!("header length {len} exceeds the file size {len} (truncated file?)"),
        ],
    );
}

#[test]
fn missing_tensor_names_key() {
    let dir = copy_of("gpt2-tiny");
    edit_weights(dir.path(), |t| {
        t.retain(|(k, ..)| k != "transformer.h.1.mlp.c_fc.bias")
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "\"transformer.h.1.mlp.c_fc.bias\"",
            "not found",
            "model.safetensors",
        ],
    );
}

#[test]
fn missing_bert_tensor_names_key() {
    let dir = copy_of("bert-tiny");
    edit_weights(dir.path(), |t| {
        t.retain(|(k, ..)| k != "bert.encoder.layer.0.attention.self.key.weight")
    });
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[
            "\"bert.encoder.layer.0.attention.self.key.weight\"",
            "not found",
        ],
    );
}

#[test]
fn wrong_tensor_shape_names_key_and_both_shapes() {
    let dir = copy_of("gpt2-tiny");
    edit_weights(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "transformer.h.0.attn.c_attn.weight")
            .unwrap();
        assert_eq!(e.2, [32, 96]);
        e.2 = vec![96, 32];
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "model.safetensors",
            "\"transformer.h.0.attn.c_attn.weight\"",
            "has shape [96, 32], expected [32, 96]",
        ],
    );
}

#[test]
fn int64_weight_names_dtype() {
    let dir = copy_of("gpt2-tiny");
    edit_weights(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "transformer.h.0.ln_1.weight")
            .unwrap();
        e.1 = Dtype::I64;
        e.3 = vec![0; e.2.iter().product::<usize>() * 8];
    });
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[
            "model.safetensors",
            "\"transformer.h.0.ln_1.weight\"",
            "dtype I64",
            "F32, F16 and BF16",
        ],
    );
}

#[test]
fn index_pointing_to_missing_shard() {
    let dir = copy_of("gpt2-tiny");
    let single = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let keys: Vec<String> = SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let first = "model-00001-of-00002.safetensors";
    let second = "model-00002-of-00002.safetensors";
    std::fs::rename(&single, dir.path().join(first)).unwrap();
    let mut map = serde_json::Map::new();
    for k in keys {
        map.insert(k, json!(first));
    }
    map.insert("transformer.h.1.mlp.c_fc.bias".into(), json!(second));
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &["model.safetensors.index.json", second],
    );
    assert!(
        !err.contains("No such file or directory (os error 2): No such file or directory"),
        "cause printed twice: {err}"
    );
}

#[test]
fn index_that_is_not_json() {
    let dir = copy_of("bert-tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{").unwrap();
    fails(
        ["embed", &s(dir.path()), "hi"],
        &["model.safetensors.index.json", "invalid JSON"],
    );
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[test]
fn t5_without_tokenizer_json() {
    let dir = copy_of("t5-tiny");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", "hi"],
        &[&s(dir.path()), "T5 needs tokenizer.json"],
    );
}

#[test]
fn bert_without_any_tokenizer_file() {
    let dir = copy_of("bert-tiny");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    fails(
        ["embed", &s(dir.path()), "hi"],
        &[&s(dir.path()), "tokenizer.json or vocab.txt"],
    );
}

#[test]
fn gpt2_without_any_tokenizer_file() {
    let dir = copy_of("gpt2-tiny");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &[&s(dir.path()), "vocab.json and merges.txt"],
    );
}

#[test]
fn corrupt_tokenizer_json() {
    let dir = copy_of("gpt2-tiny");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"version\": \"1.0\", \"model\": ").unwrap();
    fails(
        ["tokenize", &s(dir.path()), "hi"],
        &[&s(&path), "cannot load tokenizer"],
    );
}

#[test]
fn tokenizer_with_ids_beyond_the_model_vocabulary() {
    // An added token the model has no embedding row for: the tokenizer and model disagree.
    let dir = copy_of("bert-tiny");
    let path = dir.path().join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["added_tokens"].as_array_mut().unwrap().push(json!({
        "id": 30522, "content": "[NEW]", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    }));
    std::fs::write(&path, tok.to_string()).unwrap();
    fails(
        ["embed", &s(dir.path()), "hello [NEW]"],
        &["[NEW]", "30522", "vocab_size"],
    );
}

// ---------------------------------------------------------------------------------------------
// Task arguments

#[test]
fn empty_prompt_without_a_bos_token() {
    // An empty GPT-2 prompt starts from bos_token_id (tests/parity.rs); without one there is
    // nothing to start from. generation_config.json's wins over config.json's, so both go.
    let dir = copy_of("gpt2-tiny");
    edit_config(dir.path(), |c| {
        c.insert("bos_token_id".into(), Value::Null);
    });
    let gen = dir.path().join("generation_config.json");
    let mut g: Value = serde_json::from_str(&std::fs::read_to_string(&gen).unwrap()).unwrap();
    g["bos_token_id"] = Value::Null;
    std::fs::write(&gen, g.to_string()).unwrap();
    fails(
        ["generate", &s(dir.path()), "--prompt", ""],
        &["--prompt", "no tokens", "bos_token_id", "config.json"],
    );
}

#[test]
fn prompt_longer_than_positions_says_the_limit() {
    let prompt = vec!["word"; 100].join(" ");
    fails(
        ["generate", &s(&fixture("gpt2-tiny")), "--prompt", &prompt],
        &["prompt", "100 tokens", "at most 64 positions"],
    );
}

#[test]
fn text_longer_than_positions_for_embed() {
    let text = vec!["word"; 100].join(" ");
    fails(
        ["embed", &s(&fixture("bert-tiny")), "--no-truncate", &text],
        &["text", "at most 64 positions", "--no-truncate"],
    );
}

/// Without sentence_bert_config.json, embed truncates to the positions and says so.
#[test]
fn embed_truncates_to_positions_with_a_note() {
    let text = vec!["word"; 100].join(" ");
    let (code, stdout, stderr) = run([
        "embed",
        &s(&fixture("bert-tiny")),
        "--engine",
        "interp",
        "--json",
        &text,
        "short",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("truncated 1 of 2 texts to 64 tokens"),
        "{stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
}

#[test]
fn sentence_bert_config_with_bad_max_seq_length() {
    let dir = copy_of("bert-tiny");
    std::fs::write(
        dir.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": "long"}"#,
    )
    .unwrap();
    fails(
        ["embed", &s(dir.path()), "hello"],
        &[
            "sentence_bert_config.json",
            "max_seq_length",
            "positive whole number",
        ],
    );
}

#[test]
fn classify_text_longer_than_positions_without_truncate() {
    let text = vec!["word"; 100].join(" ");
    fails(
        ["classify", &s(&fixture("bert-tiny-cls")), &text],
        &["text", "at most 64 positions", "--truncate"],
    );
    let long = vec!["word"; 40].join(" ");
    fails(
        [
            "classify",
            &s(&fixture("bert-tiny-cls")),
            "--pairs",
            &long,
            &long,
        ],
        &["pair", "83 tokens", "at most 64 positions", "--truncate"],
    );
}

#[test]
fn classify_pairs_odd_number_of_texts() {
    fails(
        [
            "classify",
            &s(&fixture("bert-tiny-cls")),
            "--pairs",
            "a",
            "b",
            "c",
        ],
        &["--pairs", "3 texts", "no partner"],
    );
}

#[test]
fn classify_next_sentence_head_needs_pairs() {
    fails(
        ["classify", &s(&fixture("bert-tiny")), "hello"],
        &["BertForPreTraining", "next-sentence head", "--pairs"],
    );
}

/// A BertForMaskedLM has neither a classifier nor a next-sentence head.
#[test]
fn classify_pairs_without_classifier_or_next_sentence_head() {
    let dir = copy_of("bert-tiny");
    edit_config(dir.path(), |c| {
        c.insert("architectures".into(), json!(["BertForMaskedLM"]));
    });
    for args in [vec!["--pairs", "a", "b"], vec!["a"]] {
        let mut all = vec!["classify".to_string(), s(dir.path())];
        all.extend(args.iter().map(|a| a.to_string()));
        fails(
            all,
            &[
                "task classify is not supported",
                "BertForMaskedLM",
                "classification or next-sentence head",
                "fill-mask",
            ],
        );
    }
}

#[test]
fn rerank_without_query() {
    fails(
        ["rerank", &s(&fixture("bert-tiny-rerank")), "a document"],
        &["--query"],
    );
}

#[test]
fn rerank_top_n_zero() {
    fails(
        [
            "rerank",
            &s(&fixture("bert-tiny-rerank")),
            "--query",
            "q",
            "--top-n",
            "0",
            "doc",
        ],
        &["--top-n", "at least 1"],
    );
}

#[test]
fn rerank_on_multi_label_model() {
    fails(
        [
            "rerank",
            &s(&fixture("bert-tiny-cls")),
            "--query",
            "q",
            "doc",
        ],
        &["task rerank is not supported", "cross-encoder", "3 labels"],
    );
}

#[test]
fn rerank_on_model_without_classifier() {
    fails(
        ["rerank", &s(&fixture("bert-tiny")), "--query", "q", "doc"],
        &[
            "task rerank is not supported",
            "cross-encoder",
            "BertForPreTraining",
        ],
    );
}

fn invalid_utf8() -> &'static OsStr {
    OsStr::from_bytes(b"caf\xff")
}

#[test]
fn invalid_utf8_tokenize_text() {
    fails(
        [
            OsStr::new("tokenize"),
            fixture("gpt2-tiny").as_os_str(),
            invalid_utf8(),
        ],
        &["<TEXT>", "not valid UTF-8"],
    );
}

#[test]
fn invalid_utf8_generate_prompt() {
    fails(
        [
            OsStr::new("generate"),
            fixture("gpt2-tiny").as_os_str(),
            OsStr::new("--prompt"),
            invalid_utf8(),
        ],
        &["--prompt", "not valid UTF-8"],
    );
}

#[test]
fn invalid_utf8_embed_text() {
    fails(
        [
            OsStr::new("embed"),
            fixture("bert-tiny").as_os_str(),
            OsStr::new("fine"),
            invalid_utf8(),
        ],
        &["<TEXTS>", "not valid UTF-8"],
    );
}

#[test]
fn invalid_utf8_fill_mask_text() {
    fails(
        [
            OsStr::new("fill-mask"),
            fixture("bert-tiny").as_os_str(),
            invalid_utf8(),
        ],
        &["<TEXT>", "not valid UTF-8"],
    );
}

#[test]
fn fill_mask_without_mask() {
    fails(
        [
            "fill-mask",
            &s(&fixture("bert-tiny")),
            "Paris is the capital of France.",
        ],
        &["no [MASK]"],
    );
}

#[test]
fn fill_mask_top_k_zero() {
    fails(
        [
            "fill-mask",
            &s(&fixture("bert-tiny")),
            "--top-k",
            "0",
            "Paris is the [MASK] of France.",
        ],
        &["--top-k", "at least 1"],
    );
}

#[test]
fn bert_tasks_on_gpt2_list_supported_tasks() {
    let dir = s(&fixture("gpt2-tiny"));
    for task in ["embed", "classify", "fill-mask"] {
        fails(
            [task, &dir, "hello [MASK]"],
            &[
                &format!("task {task} is not supported"),
                "gpt2",
                "tokenize, forward, generate",
            ],
        );
    }
}

#[test]
fn generate_on_bert() {
    fails(
        ["generate", &s(&fixture("bert-tiny")), "--prompt", "hello"],
        &["task generate is not supported", "bert", "embed"],
    );
}

#[test]
fn unknown_engine() {
    fails(
        [
            "--engine",
            "gpu",
            "generate",
            &s(&fixture("gpt2-tiny")),
            "--prompt",
            "hi",
        ],
        &["--engine", "\"gpu\"", "interp"],
    );
}

#[test]
fn engine_list_for_a_task() {
    fails(
        [
            "--engine",
            "jit,interp",
            "generate",
            &s(&fixture("gpt2-tiny")),
            "--prompt",
            "hi",
        ],
        &["--engine jit,interp", "one engine"],
    );
}

#[test]
fn unknown_weights_mode_for_compile() {
    // Anything but "external" used to mean embed.
    let tmp = tempfile::tempdir().unwrap();
    fails(
        [
            "compile".as_ref(),
            fixture("bert-tiny").as_os_str(),
            "-o".as_ref(),
            tmp.path().join("bin").as_os_str(),
            "--weights".as_ref(),
            "extrenal".as_ref(),
        ],
        &["--weights", "extrenal", "embed", "external"],
    );
    assert!(!tmp.path().join("bin").exists());
}

#[test]
fn bad_sampling_flags() {
    let dir = s(&fixture("gpt2-tiny"));
    fails(
        ["generate", &dir, "--prompt", "hi", "--temperature", "0"],
        &["--temperature", "positive"],
    );
    fails(
        ["generate", &dir, "--prompt", "hi", "--top-p", "1.5"],
        &["--top-p", "(0, 1]"],
    );
    fails(
        [
            "generate",
            &dir,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "many",
        ],
        &["--max-new-tokens", "invalid digit"],
    );
}

#[test]
fn zero_threads() {
    fails(
        [
            "--threads",
            "0",
            "generate",
            &s(&fixture("gpt2-tiny")),
            "--prompt",
            "hi",
        ],
        &["--threads", "at least 1"],
    );
}

#[test]
fn graph_unknown_entry() {
    fails(
        ["graph", &s(&fixture("gpt2-tiny")), "--entry", "decode"],
        &["\"decode\"", "forward, step"],
    );
}

// ---------------------------------------------------------------------------------------------
// forward's input file

/// Runs `forward` on `model` with `input` written to a temp file; returns stderr and the path.
fn forward_fails(model: &str, input: &str, needles: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input.json");
    std::fs::write(&path, input).unwrap();
    let out = tmp.path().join("out.safetensors");
    let mut all = vec![s(&path)];
    all.extend(needles.iter().map(|n| n.to_string()));
    let needles: Vec<&str> = all.iter().map(String::as_str).collect();
    let err = fails(
        [
            "forward",
            &s(&fixture(model)),
            "--input",
            &s(&path),
            "--output",
            &s(&out),
        ],
        &needles,
    );
    assert!(!out.exists(), "an output was written despite the error");
    err
}

#[test]
fn forward_input_file_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("missing.json");
    fails(
        [
            "forward",
            &s(&fixture("bert-tiny")),
            "--input",
            &s(&path),
            "--output",
            &s(&tmp.path().join("out.safetensors")),
        ],
        &["cannot read", &s(&path)],
    );
}

#[test]
fn forward_input_not_json() {
    forward_fails("bert-tiny", "input_ids = [[101, 102]]", &["not valid JSON"]);
}

#[test]
fn forward_input_not_an_object() {
    forward_fails("bert-tiny", "[[101, 102]]", &["JSON object", "input_ids"]);
}

#[test]
fn forward_missing_input_ids() {
    forward_fails(
        "gpt2-tiny",
        r#"{"attention_mask": [[1, 1]]}"#,
        &["missing \"input_ids\""],
    );
}

#[test]
fn forward_ragged_rows() {
    forward_fails(
        "bert-tiny",
        r#"{"input_ids": [[101, 7592, 102], [101, 102]]}"#,
        &["input_ids", "row 1 has 2 elements but row 0 has 3"],
    );
}

#[test]
fn forward_empty_batch() {
    forward_fails(
        "gpt2-tiny",
        r#"{"input_ids": []}"#,
        &["input_ids", "at least one"],
    );
}

#[test]
fn forward_empty_sequence() {
    forward_fails(
        "gpt2-tiny",
        r#"{"input_ids": [[]]}"#,
        &["input_ids", "empty"],
    );
}

#[test]
fn forward_non_integer_id() {
    forward_fails(
        "bert-tiny",
        r#"{"input_ids": [[101, 1.5, 102]]}"#,
        &["input_ids", "[0][1]", "not an integer"],
    );
}

#[test]
fn forward_id_out_of_vocabulary() {
    forward_fails(
        "bert-tiny",
        r#"{"input_ids": [[101, 99999, 102]]}"#,
        &["input_ids[0][1] = 99999", "0..30522"],
    );
}

#[test]
fn forward_negative_id() {
    forward_fails(
        "t5-tiny",
        r#"{"input_ids": [[5, -1, 1]]}"#,
        &["input_ids[0][1] = -1", "0..1024"],
    );
}

#[test]
fn forward_token_type_out_of_range() {
    forward_fails(
        "bert-tiny",
        r#"{"input_ids": [[101, 102]], "token_type_ids": [[0, 2]]}"#,
        &["token_type_ids[0][1] = 2", "0..2"],
    );
}

#[test]
fn forward_attention_mask_wrong_shape() {
    forward_fails(
        "bert-tiny",
        r#"{"input_ids": [[101, 7592, 102]], "attention_mask": [[1, 1]]}"#,
        &["attention_mask is [1, 2]", "input_ids is [1, 3]"],
    );
}

#[test]
fn forward_attention_mask_not_binary() {
    forward_fails(
        "gpt2-tiny",
        r#"{"input_ids": [[10, 11]], "attention_mask": [[1, 2]]}"#,
        &["attention_mask", "0 and 1"],
    );
}

#[test]
fn forward_sequence_longer_than_positions() {
    let ids: Vec<i64> = vec![100; 65];
    forward_fails(
        "gpt2-tiny",
        &json!({ "input_ids": [ids] }).to_string(),
        &["input_ids", "65 tokens", "at most 64 positions"],
    );
}

#[test]
fn forward_t5_decoder_rows_differ() {
    forward_fails(
        "t5-tiny",
        r#"{"input_ids": [[5, 6, 1], [7, 8, 1]], "decoder_input_ids": [[0, 5]]}"#,
        &["decoder_input_ids has 1 rows", "input_ids has 2"],
    );
}

#[test]
fn forward_t5_decoder_id_out_of_vocabulary() {
    forward_fails(
        "t5-tiny",
        r#"{"input_ids": [[5, 6, 1]], "decoder_input_ids": [[0, 5000]]}"#,
        &["decoder_input_ids[0][1] = 5000", "0..1024"],
    );
}

#[test]
fn forward_output_in_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.json");
    std::fs::write(&input, r#"{"input_ids": [[101, 102]]}"#).unwrap();
    let out = tmp.path().join("no-such-dir").join("out.safetensors");
    let err = fails(
        [
            "forward",
            &s(&fixture("bert-tiny")),
            "--input",
            &s(&input),
            "--output",
            &s(&out),
        ],
        &["cannot write", &s(&out)],
    );
    let cause = "No such file or directory (os error 2)";
    assert_eq!(err.matches(cause).count(), 1, "cause printed twice: {err}");
}
