//! A safetensors file as the runtime loads it: header length, JSON header, every tensor's
//! dtype, shape and byte range, then each tensor read back as f32.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::safetensors_header(data));
