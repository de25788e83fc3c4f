//! config.json of every architecture (BERT, GPT-2, T5) as `ModelConfig::parse` reads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::config_json(data));
