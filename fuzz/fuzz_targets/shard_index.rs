//! `model.safetensors.index.json` as the runtime reads it: parsed, its shards opened (two
//! fixed in-memory shards stand for the files) and checked against their headers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::shard_index(data));
