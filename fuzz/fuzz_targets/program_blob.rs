//! The program description a compiled executable embeds, as its runtime decodes it, then the
//! host-side steps that index by it: the task list, the memory plan of every entry at a few
//! call sizes, weight lookup and weight preparation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cranformer_fuzz::program_blob(data));
