//! Golden tests of the tile picker: the choice and explanation for the matmuls of BERT-base
//! at 128 tokens, GPT-2 124M decode (M = 1, the model's 498 MB of weights streaming through
//! the caches) and prefill (32 tokens), on the three fixed machine profiles.
//! `BLESS=1 cargo test --test tiling` accepts a change on purpose.

mod common;

use cranformer_compiler::tiling::report::choices;
use cranformer_compiler::tiling::{MachineProfile, Problem};

fn golden(name: &str, actual: &str) {
    common::golden::check(&format!("tiling/{name}"), actual)
}

fn mm(m: usize, k: usize, n: usize, weights_in_flight: u64, residual: bool) -> Problem {
    Problem::f32(m, n, k, weights_in_flight, residual)
}

/// The roofline counts B's bytes as stored: a decode row over int8 weights reads about a
/// quarter of f32's bytes (plus a scale and a column sum per column), bf16 and f16 half; its
/// predicted time is below f32's and, where the narrow row is still bound by DRAM, follows the
/// bytes. On the fixed profiles and on this host's (whose measured DRAM may be fast enough
/// that an int8 row is bound by its compute instead: the `cranformer roofline` of an AMD EPYC
/// measuring 43 GB/s on 2 threads made it so).
#[test]
fn weight_bytes_follow_the_format() {
    use cranformer_runtime::gemm::WeightFormat;
    let profiles = MachineProfile::FIXED
        .iter()
        .map(|name| (name.to_string(), MachineProfile::fixed(name).unwrap()))
        .chain([("host".to_string(), MachineProfile::host())]);
    let (k, n) = (768, 3072);
    let f32_problem = mm(1, k, n, 498_000_000, false);
    let mut followed = 0;
    for (name, p) in profiles {
        let at = |format: WeightFormat| {
            let pr = Problem {
                format,
                ..f32_problem
            };
            cranformer_compiler::tiling::choose_problem(&p, &pr)
        };
        let c32 = at(WeightFormat::F32);
        let (dram32, t32) = (c32.bytes.last().copied().unwrap_or(0.0), c32.predicted_s);
        assert!(
            dram32 >= (4 * k * n) as f64,
            "{name}: f32 DRAM bytes {dram32}"
        );
        for (format, bytes_per_weight) in [
            (WeightFormat::Bf16, 2.0),
            (WeightFormat::F16, 2.0),
            (WeightFormat::I8, 1.0),
        ] {
            let c = at(format);
            let (dram, t) = (c.bytes.last().copied().unwrap_or(0.0), c.predicted_s);
            let side = if format == WeightFormat::I8 {
                8.0 * n as f64
            } else {
                0.0
            };
            let b = bytes_per_weight * (k * n) as f64 + side;
            assert!(
                dram >= b && dram < b + 0.05 * dram32,
                "{name} {format:?}: DRAM bytes {dram}, B stored in {b}"
            );
            assert!(t < t32, "{name} {format:?}: {t} s vs f32 {t32} s");
            if c.bound == "DRAM" {
                assert!(
                    t < t32 * (b / (4.0 * (k * n) as f64)) * 1.5,
                    "{name} {format:?}: {t} s vs f32 {t32} s, both DRAM-bound"
                );
                followed += 1;
            }
        }
    }
    // The fixed profiles' rows are all bound by DRAM (3 formats on each).
    assert!(followed >= 3 * MachineProfile::FIXED.len(), "{followed}");
}

#[test]
fn tile_choices_on_fixed_profiles() {
    const BERT: u64 = 438_000_000;
    const GPT2: u64 = 498_000_000;
    let cases = [
        ("bert_base_s128_qkv", mm(128, 768, 2304, BERT, false)),
        ("bert_base_s128_attn_out", mm(128, 768, 768, BERT, true)),
        ("bert_base_s128_ffn_in", mm(128, 768, 3072, BERT, false)),
        ("bert_base_s128_ffn_out", mm(128, 3072, 768, BERT, true)),
        ("gpt2_decode_c_attn", mm(1, 768, 2304, GPT2, false)),
        ("gpt2_decode_attn_c_proj", mm(1, 768, 768, GPT2, true)),
        ("gpt2_decode_c_fc", mm(1, 768, 3072, GPT2, false)),
        ("gpt2_decode_mlp_c_proj", mm(1, 3072, 768, GPT2, true)),
        ("gpt2_decode_lm_head", mm(1, 768, 50257, GPT2, false)),
        ("gpt2_prefill_s32_c_attn", mm(32, 768, 2304, GPT2, false)),
        ("gpt2_prefill_s32_c_fc", mm(32, 768, 3072, GPT2, false)),
        ("gpt2_prefill_s32_mlp_c_proj", mm(32, 3072, 768, GPT2, true)),
        ("gpt2_decode_c_fc_alone", mm(1, 768, 3072, 0, false)),
    ];
    for name in MachineProfile::FIXED {
        let p = MachineProfile::fixed(name).unwrap();
        golden(&format!("{name}.txt"), &choices(&p, &cases));
    }
}

#[test]
fn decode_gemv_is_memory_bound_on_every_profile() {
    for name in MachineProfile::FIXED {
        let p = MachineProfile::fixed(name).unwrap();
        let c =
            cranformer_compiler::tiling::choose_problem(&p, &mm(1, 768, 3072, 498_000_000, false));
        assert_eq!(c.bound, "DRAM", "{name}: {}", c.why);
        // Alone, the weights come from the first level that holds them.
        let c = cranformer_compiler::tiling::choose_problem(&p, &mm(1, 768, 3072, 0, false));
        let home = p.home(768 * 3072 * 4);
        assert_eq!(c.bound, p.levels[home].name, "{name}: {}", c.why);
    }
}
