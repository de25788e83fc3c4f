//! Text to token ids and back, matching the Hugging Face fast tokenizers called with defaults.
//!
//! A thin layer over the `tokenizers` crate: it loads `tokenizer.json` (or, for BERT and GPT-2,
//! builds the same pipeline from the older vocabulary files the way `transformers` converts
//! them), removes any truncation or padding the file configures, and rejects ids it cannot
//! decode instead of dropping them. It knows nothing about models or batching.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{AddedToken, EncodeInput};

/// The tokenizer family, which decides how a model directory without tokenizer.json is read.
/// Serialised as "bert", "gpt2" or "t5" (a compiled executable's program description).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Bert,
    Gpt2,
    T5,
}

/// One encoded text (or pair), special tokens included; all three vectors have the same length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<i64>,
    pub tokens: Vec<String>,
    /// Segment ids: 0 for the first text, 1 for the second of a BERT pair.
    pub type_ids: Vec<i64>,
    /// Tokens were cut off (only by a tokenizer made with [`Tokenizer::truncating`]).
    pub truncated: bool,
}

/// Errors loading a tokenizer or converting between text and ids.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The model directory lacks the files a tokenizer of this kind is built from.
    #[error("{dir}: no tokenizer: {what}")]
    Missing { dir: PathBuf, what: String },
    /// A tokenizer file exists but cannot be read or is not a valid tokenizer.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    /// The tokenizer failed on an input text.
    #[error("cannot encode text: {message}")]
    Encode { message: String },
    /// A truncation length that leaves no room for the text beside the special tokens.
    #[error(
        "cannot truncate to {max_length} tokens: the special tokens of {what} alone take {special}"
    )]
    TruncateTooShort {
        max_length: usize,
        special: usize,
        /// "a text" or "a pair".
        what: &'static str,
    },
    /// An id is outside the vocabulary, or the decoder failed.
    #[error("cannot decode ids: {message}")]
    Decode { message: String },
}

/// A loaded tokenizer; cheap to share by reference, encoding needs no mutation.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    /// A truncating copy whose limit leaves no room for a pair's special tokens (a model of
    /// three positions or fewer): `(max_length, special tokens of a pair)`, refused when a
    /// pair is encoded. A single text, which has fewer, still truncates.
    pair_too_long: Option<(usize, usize)>,
}

/// The longest special or added token accepted, in bytes. Real ones are a few dozen bytes;
/// the crate matches them with an Aho-Corasick automaton whose construction is quadratic in a
/// token's length (a 30 KB token of one repeated letter takes minutes).
pub const MAX_ADDED_TOKEN_LEN: usize = 1024;

/// What `from_json_bytes` reports as the file when the bytes do not parse.
const EMBEDDED_JSON: &str = "<embedded tokenizer.json>";

impl Tokenizer {
    /// Loads `dir/tokenizer.json`; without it, builds BERT's WordPiece from `vocab.txt` or
    /// GPT-2's byte-level BPE from `vocab.json` + `merges.txt`. T5 requires tokenizer.json.
    pub fn from_model_dir(dir: &Path, kind: TokenizerKind) -> Result<Tokenizer, TokenizeError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let bytes = std::fs::read(&json).map_err(|e| load_error(&json, e))?;
            return Self::parse(&bytes, kind, &json);
        }
        let inner = match kind {
            TokenizerKind::Bert => read_bert(dir)?,
            TokenizerKind::Gpt2 => read_gpt2(dir)?,
            TokenizerKind::T5 => {
                return Err(TokenizeError::Missing {
                    dir: dir.to_path_buf(),
                    what: "T5 needs tokenizer.json (spiece.model alone is not supported; \
                           save the tokenizer with a fast Hugging Face tokenizer)"
                        .into(),
                })
            }
        };
        Ok(Self::finish(inner, kind))
    }

    /// From the bytes of a tokenizer.json, e.g. the copy embedded in a compiled executable.
    pub fn from_json_bytes(bytes: &[u8], kind: TokenizerKind) -> Result<Tokenizer, TokenizeError> {
        Self::parse(bytes, kind, Path::new(EMBEDDED_JSON))
    }

    /// BERT's WordPiece from the bytes of a `vocab.txt` and, if present, a
    /// `tokenizer_config.json`, built as [`Tokenizer::from_model_dir`] builds it.
    pub fn from_vocab_txt(
        vocab: &[u8],
        tokenizer_config: Option<&[u8]>,
    ) -> Result<Tokenizer, TokenizeError> {
        let config = parse_tokenizer_config(tokenizer_config, Path::new(TOKENIZER_CONFIG))?;
        let inner = build_bert(
            vocab,
            &config,
            Path::new("vocab.txt"),
            Path::new(TOKENIZER_CONFIG),
        )?;
        Ok(Self::finish(inner, TokenizerKind::Bert))
    }

    /// GPT-2's byte-level BPE from the bytes of a `vocab.json`, a `merges.txt` and, if
    /// present, a `tokenizer_config.json`, built as [`Tokenizer::from_model_dir`] builds it.
    pub fn from_vocab_merges(
        vocab: &[u8],
        merges: &[u8],
        tokenizer_config: Option<&[u8]>,
    ) -> Result<Tokenizer, TokenizeError> {
        let config = parse_tokenizer_config(tokenizer_config, Path::new(TOKENIZER_CONFIG))?;
        let inner = build_gpt2(
            vocab,
            merges,
            &config,
            Path::new("vocab.json"),
            Path::new("merges.txt"),
            Path::new(TOKENIZER_CONFIG),
        )?;
        Ok(Self::finish(inner, TokenizerKind::Gpt2))
    }

    fn parse(bytes: &[u8], kind: TokenizerKind, path: &Path) -> Result<Tokenizer, TokenizeError> {
        let json: Value = serde_json::from_slice(bytes).map_err(|e| load_error(path, e))?;
        if let Some(normalizer) = json.get("normalizer") {
            precompiled::check(normalizer).map_err(|e| load_error(path, e))?;
        }
        if let Some(post) = json.get("post_processor") {
            template::check(post).map_err(|e| load_error(path, e))?;
        }
        let added = json.get("added_tokens").and_then(Value::as_array);
        for token in added.into_iter().flatten() {
            if let Some(content) = token.get("content").and_then(Value::as_str) {
                check_token_len(content, "added_tokens", path)?;
            }
        }
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| load_error(path, e))?;
        Ok(Self::finish(inner, kind))
    }

    /// Hugging Face's `tokenizer(text)` neither truncates nor pads unless asked, whatever
    /// tokenizer.json says (all-MiniLM-L6-v2's file pads and truncates to 128), so drop both.
    fn finish(mut inner: tokenizers::Tokenizer, kind: TokenizerKind) -> Tokenizer {
        inner.with_padding(None);
        // Removing truncation cannot fail: only a stride too large for max_length is rejected.
        let _ = inner.with_truncation(None);
        Tokenizer {
            inner,
            kind,
            pair_too_long: None,
        }
    }

    /// The tokenizer.json text to embed in a compiled model (truncation and padding removed).
    /// Fails rather than write a file that would not load back as the same tokenizer: the
    /// crate drops tokens whose ids leave holes in the vocabulary when it serializes.
    pub fn to_json(&self) -> Result<String, TokenizeError> {
        let fail = |message: String| TokenizeError::Load {
            path: PathBuf::from(EMBEDDED_JSON),
            message: format!("cannot serialize: {message}"),
        };
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| fail(e.to_string()))?;
        let again: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| fail(format!("the written JSON does not load back: {e}")))?;
        if again.get_vocab(true) != self.inner.get_vocab(true) {
            return Err(fail(
                "the vocabulary does not survive serialization (are there ids without a token?)"
                    .into(),
            ));
        }
        Ok(json)
    }

    /// Encodes with the special tokens Hugging Face adds by default (BERT [CLS] .. [SEP],
    /// T5 a final </s>, GPT-2 none).
    pub fn encode(&self, text: &str) -> Result<Encoding, TokenizeError> {
        self.encode_input(EncodeInput::Single(text.into()), true)
    }

    /// Encodes without the special tokens, as `tokenizer(text, add_special_tokens=False)`.
    pub fn encode_without_special(&self, text: &str) -> Result<Encoding, TokenizeError> {
        self.encode_input(EncodeInput::Single(text.into()), false)
    }

    /// Encodes a sentence pair (BERT: [CLS] a [SEP] b [SEP], type ids 0 then 1).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoding, TokenizeError> {
        if let Some((max_length, special)) = self.pair_too_long {
            return Err(TokenizeError::TruncateTooShort {
                max_length,
                special,
                what: "a pair",
            });
        }
        self.encode_input(EncodeInput::Dual(a.into(), b.into()), true)
    }

    /// A copy that cuts every encoding to at most `max_length` tokens, special tokens
    /// included, as `tokenizer(.., truncation="longest_first", max_length=..)`: the `tokenizers`
    /// crate's own LongestFirst strategy, which for a pair takes tokens off the longer text
    /// first. Encodings that lost tokens say so in [`Encoding::truncated`].
    pub fn truncating(&self, max_length: usize) -> Result<Tokenizer, TokenizeError> {
        // The crate subtracts the special tokens from max_length unchecked (it would underflow):
        // a limit below a text's special tokens is refused here, below a pair's when a pair is
        // encoded. At exactly their count the texts are cut to nothing, as in transformers
        // (`[CLS] [SEP] [SEP]` for a pair at 3).
        let single = self.encode("")?.ids.len();
        if max_length < single {
            return Err(TokenizeError::TruncateTooShort {
                max_length,
                special: single,
                what: "a text",
            });
        }
        let pair = self.encode_pair("", "")?.ids.len();
        let mut inner = self.inner.clone();
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizeError::Encode {
                message: e.to_string(),
            })?;
        Ok(Tokenizer {
            inner,
            kind: self.kind,
            pair_too_long: (max_length < pair).then_some((max_length, pair)),
        })
    }

    fn encode_input(
        &self,
        input: EncodeInput<'_>,
        special: bool,
    ) -> Result<Encoding, TokenizeError> {
        let enc = self
            .inner
            .encode(input, special)
            .map_err(|e| TokenizeError::Encode {
                message: e.to_string(),
            })?;
        Ok(Encoding {
            ids: enc.get_ids().iter().map(|&id| i64::from(id)).collect(),
            tokens: enc.get_tokens().to_vec(),
            type_ids: enc.get_type_ids().iter().map(|&t| i64::from(t)).collect(),
            // With stride 0, whatever truncation cut off is kept as overflowing parts.
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// Decodes ids, skipping special tokens, as `tokenizer.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizeError> {
        self.decode_ids(ids, true)
    }

    /// Decodes ids, special tokens included, as `tokenizer.decode(ids)` (the fill-mask
    /// pipeline's `token_str`: "[SEP]", not "").
    pub fn decode_keeping_special(&self, ids: &[i64]) -> Result<String, TokenizeError> {
        self.decode_ids(ids, false)
    }

    fn decode_ids(&self, ids: &[i64], skip_special: bool) -> Result<String, TokenizeError> {
        // The crate silently drops ids it does not know; a model emitting one is a bug to report.
        let ids = ids
            .iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| self.inner.id_to_token(id).is_some())
                    .ok_or_else(|| TokenizeError::Decode {
                        message: format!(
                            "id {id} is not in the vocabulary of {} tokens",
                            self.vocab_size()
                        ),
                    })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| TokenizeError::Decode {
                message: e.to_string(),
            })
    }

    /// The id of a token string, e.g. "[MASK]", "[PAD]", "</s>", "<|endoftext|>".
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn id_to_token(&self, id: i64) -> Option<String> {
        self.inner.id_to_token(u32::try_from(id).ok()?)
    }

    /// Number of distinct tokens, added tokens included (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }
}

/// SentencePiece's `Precompiled` normalizer (T5, ALBERT...) as tokenizers 0.22 would load it,
/// checked beforehand because that crate panics on a bad one: on JSON it cannot read (an
/// `expect`), and on text whose lookup leaves the trie or its replacement strings (unchecked
/// indexing in `spm_precompiled`). A charsmap that passes cannot do either.
mod precompiled {
    use serde_json::Value;
    use tokenizers::normalizers::Precompiled;

    /// Checks every `Precompiled` normalizer in `normalizer` (which may be a `Sequence`).
    pub fn check(normalizer: &Value) -> Result<(), String> {
        match normalizer {
            Value::Array(items) => items.iter().try_for_each(check),
            Value::Object(fields) => {
                if fields.get("type").and_then(Value::as_str) == Some("Precompiled") {
                    // From text, as the crate does: the charsmap is deserialized borrowed.
                    let p: Precompiled = serde_json::from_str(&normalizer.to_string())
                        .map_err(|e| format!("Precompiled normalizer: {e}"))?;
                    // The crate keeps the bytes private; its serialization gives them back.
                    let again = serde_json::to_value(&p).map_err(|e| e.to_string())?;
                    let charsmap = again
                        .get("precompiled_charsmap")
                        .and_then(Value::as_str)
                        .and_then(base64_decode)
                        .ok_or("Precompiled normalizer: cannot read back precompiled_charsmap")?;
                    return check_charsmap(&charsmap)
                        .map_err(|e| format!("Precompiled normalizer: precompiled_charsmap {e}"));
                }
                fields.values().try_for_each(check)
            }
            _ => Ok(()),
        }
    }

    /// Padded standard base64, as the crate serializes the charsmap.
    fn base64_decode(text: &str) -> Option<Vec<u8>> {
        let digit = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for chunk in bytes.chunks(4) {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                n = n << 6 | digit(c)?;
            }
            n <<= 6 * pad as u32;
            out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
        }
        Some(out)
    }

    /// The charsmap is `[u32 trie bytes][trie: u32 units][replacement strings, NUL-ended]`,
    /// the trie a Darts double array. Walks every state a lookup can reach, for every byte,
    /// doing what `DoubleArray::common_prefix_search` and `Precompiled::transform` do, and
    /// fails where they would index out of bounds or slice inside a character.
    fn check_charsmap(charsmap: &[u8]) -> Result<(), String> {
        let (size, rest) = charsmap
            .split_first_chunk::<4>()
            .ok_or("is shorter than its 4-byte trie size")?;
        let units = u32::from_le_bytes(*size) as usize / 4;
        if rest.len() < 4 * units {
            return Err(format!(
                "declares {units} trie units but holds {}",
                rest.len() / 4
            ));
        }
        let (trie, normalized) = rest.split_at(4 * units);
        let array: Vec<usize> = trie
            .chunks_exact(4)
            .map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]) as usize)
            .collect();
        let normalized =
            std::str::from_utf8(normalized).map_err(|_| "holds replacements that are not UTF-8")?;
        let offset = |unit: usize| (unit >> 10) << ((unit & (1 << 9)) >> 6);
        let label = |unit: usize| unit & ((1 << 31) | 0xFF);
        let has_leaf = |unit: usize| (unit >> 8) & 1 == 1;
        let value = |unit: usize| unit & ((1 << 31) - 1);
        let Some(&root) = array.first() else {
            return Err("has an empty trie".into());
        };
        let mut seen = vec![false; array.len()];
        let mut todo = vec![offset(root)];
        let mut start_seen = std::collections::HashSet::new();
        while let Some(node) = todo.pop() {
            // States are positions, and positions past the array are only read after a
            // further XOR with a byte: track those apart.
            if node < array.len() {
                if std::mem::replace(&mut seen[node], true) {
                    continue;
                }
            } else if !start_seen.insert(node) {
                continue;
            }
            for c in 1..=255usize {
                let pos = node ^ c;
                let unit = *array
                    .get(pos)
                    .ok_or_else(|| format!("trie lookup of byte {c} leaves the trie"))?;
                if label(unit) != c {
                    continue;
                }
                let next = pos ^ offset(unit);
                if has_leaf(unit) {
                    let leaf = *array
                        .get(next)
                        .ok_or_else(|| format!("trie leaf for byte {c} is outside the trie"))?;
                    let at = value(leaf);
                    if !normalized.is_char_boundary(at) {
                        return Err(format!(
                            "points at byte {at} of its replacements, which is not where one starts"
                        ));
                    }
                }
                todo.push(next);
            }
        }
        Ok(())
    }
}

/// `TemplateProcessing` post-processors, checked beforehand because tokenizers 0.22 checks
/// them only when built in code, not when read from JSON, and then panics while encoding:
/// a template naming a special token that is not defined, a single-text template using the
/// second sequence `$B`, or a special token with more ids than tokens.
mod template {
    use serde_json::Value;
    use tokenizers::processors::template::TemplateProcessing;

    pub fn check(post: &Value) -> Result<(), String> {
        match post {
            Value::Array(items) => items.iter().try_for_each(check),
            Value::Object(fields) => {
                if fields.get("type").and_then(Value::as_str) == Some("TemplateProcessing") {
                    let t: TemplateProcessing = serde_json::from_str(&post.to_string())
                        .map_err(|e| format!("TemplateProcessing: {e}"))?;
                    // Its serialization spells every piece one way.
                    let t = serde_json::to_value(&t).map_err(|e| e.to_string())?;
                    return check_canonical(&t).map_err(|e| format!("TemplateProcessing: {e}"));
                }
                fields.values().try_for_each(check)
            }
            _ => Ok(()),
        }
    }

    fn check_canonical(t: &Value) -> Result<(), String> {
        let specials = t.get("special_tokens").and_then(Value::as_object);
        for (name, special) in specials.into_iter().flatten() {
            let len = |field: &str| special.get(field).and_then(Value::as_array).map(Vec::len);
            if len("ids") != len("tokens") {
                return Err(format!(
                    "special token {name:?} has {:?} ids but {:?} tokens",
                    len("ids"),
                    len("tokens")
                ));
            }
        }
        for which in ["single", "pair"] {
            let pieces = t.get(which).and_then(Value::as_array);
            for piece in pieces.into_iter().flatten() {
                if let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) {
                    if !specials.is_some_and(|s| s.contains_key(id)) {
                        return Err(format!(
                            "the {which} template uses special token {id:?}, which is not defined"
                        ));
                    }
                }
                if which == "single" && piece.pointer("/Sequence/id") == Some(&Value::from("B")) {
                    return Err("the single template uses the second sequence $B".into());
                }
            }
        }
        Ok(())
    }
}

fn load_error(path: &Path, e: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

fn check_token_len(token: &str, field: &str, path: &Path) -> Result<(), TokenizeError> {
    if token.len() > MAX_ADDED_TOKEN_LEN {
        return Err(load_error(
            path,
            format!(
                "{field}: a token of {} bytes; special tokens may be at most {MAX_ADDED_TOKEN_LEN}",
                token.len()
            ),
        ));
    }
    Ok(())
}

/// tokenizer_config.json as loose JSON (an empty object when absent): older checkpoints spell
/// its fields inconsistently, and only a few are read.
fn read_tokenizer_config(dir: &Path) -> Result<Value, TokenizeError> {
    let path = dir.join(TOKENIZER_CONFIG);
    if !path.is_file() {
        return Ok(Value::Object(Default::default()));
    }
    let bytes = std::fs::read(&path).map_err(|e| load_error(&path, e))?;
    parse_tokenizer_config(Some(&bytes), &path)
}

fn parse_tokenizer_config(bytes: Option<&[u8]>, path: &Path) -> Result<Value, TokenizeError> {
    match bytes {
        None => Ok(Value::Object(Default::default())),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| load_error(path, e)),
    }
}

/// A special token named in tokenizer_config.json, either `"[CLS]"` or
/// `{"content": "[CLS]", ..}` (the serialized AddedToken of older files).
fn config_token(config: &Value, key: &str, default: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => default.to_string(),
        },
        _ => default.to_string(),
    }
}

fn read_bert(dir: &Path) -> Result<tokenizers::Tokenizer, TokenizeError> {
    let vocab_path = dir.join("vocab.txt");
    if !vocab_path.is_file() {
        return Err(TokenizeError::Missing {
            dir: dir.to_path_buf(),
            what: "BERT needs tokenizer.json or vocab.txt".into(),
        });
    }
    let config = read_tokenizer_config(dir)?;
    let bytes = std::fs::read(&vocab_path).map_err(|e| load_error(&vocab_path, e))?;
    build_bert(&bytes, &config, &vocab_path, &dir.join(TOKENIZER_CONFIG))
}

/// What `transformers`' BertConverter builds for a BertTokenizer saved as vocab.txt; the
/// paths only name the files in errors.
fn build_bert(
    bytes: &[u8],
    config: &Value,
    vocab_path: &Path,
    config_path: &Path,
) -> Result<tokenizers::Tokenizer, TokenizeError> {
    let lowercase = config
        .get("do_lower_case")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    // None (null or absent) makes BertNormalizer strip accents exactly when it lowercases.
    let strip_accents = config.get("strip_accents").and_then(Value::as_bool);
    let chinese = config
        .get("tokenize_chinese_chars")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let [unk, sep, cls, pad, mask] = [
        ("unk_token", "[UNK]"),
        ("sep_token", "[SEP]"),
        ("cls_token", "[CLS]"),
        ("pad_token", "[PAD]"),
        ("mask_token", "[MASK]"),
    ]
    .map(|(key, default)| config_token(config, key, default));
    for (token, key) in [
        (&unk, "unk_token"),
        (&sep, "sep_token"),
        (&cls, "cls_token"),
        (&pad, "pad_token"),
        (&mask, "mask_token"),
    ] {
        check_token_len(token, key, config_path)?;
    }

    let vocab = WordPiece::read_bytes(bytes).map_err(|e| load_error(vocab_path, e))?;
    let id_of = |token: &str| {
        vocab
            .get(token)
            .copied()
            .ok_or_else(|| TokenizeError::Load {
                path: vocab_path.to_path_buf(),
                message: format!(
                    "special token {token:?} (from {}) is not in the vocabulary",
                    config_path.display()
                ),
            })
    };
    let (cls_id, sep_id) = (id_of(&cls)?, id_of(&sep)?);
    id_of(&unk)?;

    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token(unk.clone())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| load_error(vocab_path, e))?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{cls} $A {sep}"))
        .and_then(|b| b.try_pair(format!("{cls} $A {sep} $B:1 {sep}:1")))
        .map_err(|e| load_error(config_path, e))?
        .special_tokens(vec![(cls.clone(), cls_id), (sep.clone(), sep_id)])
        .build()
        .map_err(|e| load_error(config_path, e))?;

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        strip_accents,
        lowercase,
    )))
    .with_pre_tokenizer(Some(BertPreTokenizer))
    .with_post_processor(Some(template))
    .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    // Registered as added tokens so "[MASK]" in a text stays one token and decode skips them.
    let specials = [pad, unk, cls, sep, mask].map(|t| AddedToken::from(t, true));
    tok.add_special_tokens(&specials);
    Ok(tok)
}

fn read_gpt2(dir: &Path) -> Result<tokenizers::Tokenizer, TokenizeError> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.is_file() || !merges_path.is_file() {
        return Err(TokenizeError::Missing {
            dir: dir.to_path_buf(),
            what: "GPT-2 needs tokenizer.json, or vocab.json and merges.txt".into(),
        });
    }
    let config = read_tokenizer_config(dir)?;
    let vocab = std::fs::read(&vocab_path).map_err(|e| load_error(&vocab_path, e))?;
    let merges = std::fs::read(&merges_path).map_err(|e| load_error(&merges_path, e))?;
    build_gpt2(
        &vocab,
        &merges,
        &config,
        &vocab_path,
        &merges_path,
        &dir.join(TOKENIZER_CONFIG),
    )
}

/// What `transformers` builds for a GPT2Tokenizer saved as vocab.json + merges.txt; the paths
/// only name the files in errors.
fn build_gpt2(
    vocab: &[u8],
    merges: &[u8],
    config: &Value,
    vocab_path: &Path,
    merges_path: &Path,
    config_path: &Path,
) -> Result<tokenizers::Tokenizer, TokenizeError> {
    let vocab: std::collections::HashMap<String, u32> =
        serde_json::from_slice(vocab).map_err(|e| load_error(vocab_path, e))?;
    let text = std::str::from_utf8(merges).map_err(|e| load_error(merges_path, e))?;
    let mut merges = Vec::new();
    // The first line is a "#version: 0.2" header; trailing blank lines occur in the wild.
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(TokenizeError::Load {
                    path: merges_path.to_path_buf(),
                    message: format!("line {}: expected two tokens separated by one space", i + 1),
                })
            }
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(|e| load_error(merges_path, e))?;

    let mut tok = tokenizers::Tokenizer::new(model);
    // GPT2TokenizerFast: no prefix space, and a post-processor that adds no tokens.
    let template = TemplateProcessing::builder()
        .try_single("$A")
        .and_then(|b| b.try_pair("$A $B:1"))
        .map_err(|e| load_error(merges_path, e))?
        .build()
        .map_err(|e| load_error(merges_path, e))?;
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(template))
        .with_decoder(Some(ByteLevel::default()));
    let mut specials: Vec<String> = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let token = config_token(config, key, "<|endoftext|>");
        check_token_len(&token, key, config_path)?;
        if !specials.contains(&token) {
            specials.push(token);
        }
    }
    let specials: Vec<AddedToken> = specials
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}
