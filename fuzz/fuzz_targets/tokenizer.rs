//! Tokenizer files as the runtime loads them, then a few texts through the tokenizer.
//!
//! Input: one byte picks the files, the rest holds them separated by two NUL bytes:
//! - 0: tokenizer.json (BERT), 1: tokenizer.json (GPT-2), 2: tokenizer.json (T5);
//! - 3: vocab.txt [, tokenizer_config.json] (BERT's WordPiece);
//! - 4: vocab.json, merges.txt [, tokenizer_config.json] (GPT-2's byte-level BPE).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::tokenizer(data));
