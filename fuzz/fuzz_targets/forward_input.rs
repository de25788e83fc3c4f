//! The input JSON of `forward` ({"input_ids", "attention_mask", "token_type_ids",
//! "decoder_input_ids"}), checked for a BERT, a GPT-2 and a T5 model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::forward_input(data));
