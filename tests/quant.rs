//! Narrow matmul weights (`--dtype bf16|f16|int8`, issue 9), end to end: every fixture model
//! and entry compiled with each format, against the Hugging Face f32 references; the real
//! all-MiniLM-L6-v2 per sentence and by its similarity ranking; a compiled executable and the
//! shared-object engine against the JIT; the CLI's refusals.
//!
//! Every table printed here (run with `--nocapture`) is what the bars below were chosen from.
//! The bars hold on every ISA path (`CRANFORMER_ISA=avx2|portable` run other kernels: int8's
//! integer sums are exact on all of them; bf16 differs only where AVX512-BF16 rounds the
//! activations to bf16 too, which the bf16 bar covers).

mod common;
#[path = "common/jit.rs"]
mod jit_common;

use common::cli::{bin, run_ok, scratch};
use common::*;
use cranformer_compiler::aot::SharedObjectEngine;
use cranformer_compiler::codegen::{LowerOptions, WeightFormat};
use cranformer_compiler::jit::JitEngine;
use cranformer_compiler::Model;
use cranformer_runtime::{Engine, Outputs, Tensor};
use jit_common::{argmax, args, row};
use std::sync::Arc;

const NARROW: [WeightFormat; 3] = [WeightFormat::Bf16, WeightFormat::F16, WeightFormat::I8];

fn options(f: WeightFormat) -> LowerOptions {
    LowerOptions { weight_format: f }
}

fn jit(model: &Arc<Model>, f: WeightFormat) -> JitEngine {
    JitEngine::with_options(model.clone(), None, options(f)).unwrap()
}

fn ids(v: &serde_json::Value) -> Tensor {
    Tensor::i64_rows(&ids_of(v))
}

/// How far an output is from its reference.
#[derive(Clone, Copy, Debug)]
struct Dev {
    /// max |got - want| / max |want|: the fixtures' own relative scale (their f32 tolerance
    /// is 2e-5 + 2e-4 of it).
    max_rel: f32,
    /// mean |got - want| / mean |want|.
    mean_rel: f32,
    /// Cosine of the two tensors as vectors.
    cos: f32,
}

fn dev(want: &[f32], got: &[f32]) -> Dev {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (mut max, mut sum_d, mut sum_w) = (0f64, 0f64, 0f64);
    let (mut dot, mut nw, mut ng) = (0f64, 0f64, 0f64);
    for (&w, &g) in want.iter().zip(got) {
        let d = (g - w).abs() as f64;
        // A NaN must fail every bar.
        max = if d.is_nan() { f64::NAN } else { max.max(d) };
        sum_d += d;
        sum_w += w.abs() as f64;
        dot += w as f64 * g as f64;
        nw += w as f64 * w as f64;
        ng += g as f64 * g as f64;
    }
    Dev {
        max_rel: (max / scale as f64) as f32,
        mean_rel: (sum_d / sum_w) as f32,
        cos: (dot / (nw.sqrt() * ng.sqrt())) as f32,
    }
}

/// Bars per fixture and format: `(max_rel, cosine)` every output must meet. Chosen from the
/// worst case measured over the fixture's outputs on the AVX-512 (VNNI, BF16), AVX2 and
/// portable paths (the tables `--nocapture` prints; int8 is the same on all three: its
/// integer sums are exact), with margin: max_rel twice the worst, 1 - cosine three times the
/// worst. Worst measured, max_rel / cosine:
///
/// | fixture    | bf16              | f16               | int8              |
/// |------------|-------------------|-------------------|-------------------|
/// | bert-tiny  | 7.5e-3 / 0.999991 | 6.1e-4 / 1.000000 | 1.8e-2 / 0.999918 |
/// | bert-tiny-cls | 1.1e-2 / 0.999979 | 8.0e-4 / 1.000000 | 2.1e-2 / 0.999906 |
/// | gpt2-tiny  | 1.6e-2 / 0.999944 | 6.7e-4 / 1.000000 | 2.9e-2 / 0.999576 |
/// | t5-tiny    | 6.6e-2 / 0.999339 | 3.7e-3 / 0.999997 | 1.7e-1 / 0.994969 |
/// | t5v11-tiny | 2.6e-1 / 0.992959 | 1.6e-2 / 0.999974 | 8.7e-1 / 0.929483 |
///
/// bf16 is worst on AVX512-BF16, whose `vdpbf16ps` rounds the activations to bf16 as well.
/// The T5 fixtures are the sensitive ones: no attention scaling, an unnormalised residual
/// stream, random weights and gains, so per-row activation ranges are wide (T5 v1.1's
/// gated-GELU products widest); with their small top-2 margins their greedy tokens part
/// early (reported, not barred, as issue 9 asks). The real model's bars are in
/// [`minilm_formats`].
fn bars(fixture: &str, f: WeightFormat) -> (f32, f32) {
    let worst = |bf16: (f32, f32), f16: (f32, f32), int8: (f32, f32)| match f {
        WeightFormat::Bf16 => bf16,
        WeightFormat::F16 => f16,
        WeightFormat::I8 => int8,
        WeightFormat::F32 => unreachable!(),
    };
    let (max_rel, cos) = match fixture {
        "bert-tiny" => worst((7.5e-3, 0.999991), (6.1e-4, 1.0), (1.8e-2, 0.999918)),
        "bert-tiny-cls" => worst((1.1e-2, 0.999979), (8.0e-4, 1.0), (2.1e-2, 0.999906)),
        "gpt2-tiny" => worst((1.6e-2, 0.999944), (6.7e-4, 1.0), (2.9e-2, 0.999576)),
        "t5-tiny" => worst((6.6e-2, 0.999339), (3.7e-3, 0.999997), (1.7e-1, 0.994969)),
        "t5v11-tiny" => worst((2.6e-1, 0.992959), (1.6e-2, 0.999974), (8.7e-1, 0.929483)),
        other => panic!("no bars for {other}"),
    };
    // f16's worst cosine prints as 1.000000: its bar is the next digit.
    (2.0 * max_rel, (1.0 - 3.0 * (1.0 - cos)).min(0.999999))
}

/// Collects outputs against references and checks them against the format's bars at the end,
/// so one run prints the whole table before failing.
struct Table {
    format: WeightFormat,
    rows: Vec<(String, Dev)>,
    /// Discrete results: (what, agreeing, total).
    agree: Vec<(String, usize, usize)>,
}

impl Table {
    fn new(format: WeightFormat) -> Table {
        Table {
            format,
            rows: vec![],
            agree: vec![],
        }
    }

    fn add(&mut self, what: &str, want: &[f32], got: &[f32]) {
        self.rows.push((what.to_string(), dev(want, got)));
    }

    fn count(&mut self, what: &str, agreeing: usize, total: usize) {
        self.agree.push((what.to_string(), agreeing, total));
    }

    /// Prints the table.
    fn print(&self, fixture: &str) {
        eprintln!("{fixture} --dtype {}:", self.format.name());
        for (what, d) in &self.rows {
            eprintln!(
                "  {what:<40} max_rel {:9.2e}  mean_rel {:9.2e}  cos {:.6}",
                d.max_rel, d.mean_rel, d.cos
            );
        }
        for (what, a, n) in &self.agree {
            eprintln!("  {what:<40} {a}/{n} agree");
        }
    }

    /// Fails if an output is past the format's bars.
    fn check(&self, fixture: &str) {
        let (max_rel, cos) = bars(fixture, self.format);
        for (what, d) in &self.rows {
            assert!(
                d.max_rel <= max_rel && d.cos >= cos,
                "{fixture} --dtype {}: {what}: max_rel {:e} (bar {max_rel:e}), cosine {} (bar {cos})",
                self.format.name(),
                d.max_rel,
                d.cos
            );
        }
    }
}

fn f32s(o: &Outputs, name: &str) -> Vec<f32> {
    o[name].as_f32().unwrap().to_vec()
}

fn bert_tiny(e: &mut dyn Engine, t: &mut Table) {
    let r = Reference::load("bert-tiny");
    for case in ["single_batch", "pairs"] {
        let c = r.case(case);
        let (i, tt, m) = (
            ids(&c["input_ids"]),
            ids(&c["token_type_ids"]),
            ids(&c["attention_mask"]),
        );
        let inputs = [
            ("input_ids", &i),
            ("token_type_ids", &tt),
            ("attention_mask", &m),
        ];
        let out = e.run("encode", &inputs).unwrap();
        for name in c["outputs"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let key = format!("{case}.{name}");
            t.add(&key, &r.tensor(&key).0, &f32s(&out, name));
        }
    }
    let c = r.case("fill_mask");
    let i = ids(&c["input_ids"]);
    let tt = Tensor::i64(i.shape().to_vec(), vec![0; i.numel()]);
    let m = Tensor::i64(i.shape().to_vec(), vec![1; i.numel()]);
    let out = e
        .run(
            "encode",
            &[
                ("input_ids", &i),
                ("token_type_ids", &tt),
                ("attention_mask", &m),
            ],
        )
        .unwrap();
    let pos = c["mask_position"].as_u64().unwrap() as usize;
    let logits = row(&out["mlm_logits"], 0, pos);
    t.add(
        "fill_mask.mask_logits",
        &r.tensor("fill_mask.mask_logits").0,
        &logits,
    );
    let top1 = flat_ids(&c["top5_ids"])[0];
    t.count(
        "fill_mask top-1",
        (argmax(&logits) as i64 == top1) as usize,
        1,
    );
}

fn bert_tiny_cls(e: &mut dyn Engine, t: &mut Table) {
    let r = Reference::load("bert-tiny-cls");
    let c = r.case("classify");
    let i = ids(&c["input_ids"]);
    let m = ids(&c["attention_mask"]);
    let tt = Tensor::i64(i.shape().to_vec(), vec![0; i.numel()]);
    let out = e
        .run(
            "encode",
            &[
                ("input_ids", &i),
                ("token_type_ids", &tt),
                ("attention_mask", &m),
            ],
        )
        .unwrap();
    let logits = f32s(&out, "logits");
    let (want, shape) = r.tensor("classify.logits");
    t.add("classify.logits", &want, &logits);
    let (n, k) = (shape[0], shape[1]);
    let agree = (0..n)
        .filter(|&b| argmax(&logits[b * k..][..k]) == argmax(&want[b * k..][..k]))
        .count();
    t.count("classify labels", agree, n);
}

fn gpt2_inputs(ids: &Tensor, mask: &Tensor, past: &[(Tensor, Tensor)]) -> Vec<(String, Tensor)> {
    let mut v = vec![
        ("input_ids".to_string(), ids.clone()),
        ("attention_mask".to_string(), mask.clone()),
    ];
    for (l, (k, val)) in past.iter().enumerate() {
        v.push((format!("past_key.{l}"), k.clone()));
        v.push((format!("past_value.{l}"), val.clone()));
    }
    v
}

fn presents(out: &Outputs, layers: usize) -> Vec<(Tensor, Tensor)> {
    (0..layers)
        .map(|l| {
            (
                out[&format!("present_key.{l}")].clone(),
                out[&format!("present_value.{l}")].clone(),
            )
        })
        .collect()
}

/// Greedy generation through the KV cache; returns the new ids (`forward` on the prompt, then
/// one `step` a token).
fn gpt2_greedy(e: &mut dyn Engine, prompt: &[i64], n: usize) -> (Vec<i64>, Vec<f32>) {
    let (layers, c_dim) = (2, 32);
    let empty: Vec<(Tensor, Tensor)> = (0..layers)
        .map(|_| {
            let z = Tensor::f32(vec![1, 0, c_dim], vec![]);
            (z.clone(), z)
        })
        .collect();
    let i = Tensor::i64(vec![1, prompt.len()], prompt.to_vec());
    let m = Tensor::i64(vec![1, prompt.len()], vec![1; prompt.len()]);
    let out = e
        .run("forward", &args(&gpt2_inputs(&i, &m, &empty)))
        .unwrap();
    let first = row(&out["logits"], 0, prompt.len() - 1);
    let mut past = presents(&out, layers);
    let mut next = argmax(&first) as i64;
    let mut got = vec![next];
    while got.len() < n {
        let total = past[0].0.shape()[1] + 1;
        let i = Tensor::i64(vec![1, 1], vec![next]);
        let m = Tensor::i64(vec![1, total], vec![1; total]);
        let out = e.run("step", &args(&gpt2_inputs(&i, &m, &past))).unwrap();
        past = presents(&out, layers);
        next = argmax(&row(&out["logits"], 0, 0)) as i64;
        got.push(next);
    }
    (got, first)
}

/// Tokens equal to the reference before the first difference (after it the two continue
/// from different texts, so later agreement means nothing).
fn prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn gpt2_tiny(e: &mut dyn Engine, t: &mut Table) {
    let r = Reference::load("gpt2-tiny");
    let c = r.case("logits");
    let i = ids(&c["input_ids"]);
    let m = Tensor::i64(i.shape().to_vec(), vec![1; i.numel()]);
    let empty: Vec<(Tensor, Tensor)> = (0..2)
        .map(|_| {
            let z = Tensor::f32(vec![1, 0, 32], vec![]);
            (z.clone(), z)
        })
        .collect();
    let out = e
        .run("forward", &args(&gpt2_inputs(&i, &m, &empty)))
        .unwrap();
    t.add(
        "logits.logits",
        &r.tensor("logits.logits").0,
        &f32s(&out, "logits"),
    );
    for g in 0..3 {
        let c = r.case(&format!("greedy_{g}"));
        let want = flat_ids(&c["new_ids"]);
        let (got, first) = gpt2_greedy(e, &flat_ids(&c["input_ids"]), want.len());
        let key = format!("greedy_{g}.first_step_logits");
        t.add(&key, &r.tensor(&key).0, &first);
        t.count(
            &format!(
                "greedy_{g} tokens (min top-2 margin {:.3})",
                c["min_top2_margin"].as_f64().unwrap()
            ),
            prefix(&got, &want),
            want.len(),
        );
    }
}

fn t5_fixture(fixture: &str, e: &mut dyn Engine, t: &mut Table) {
    let r = Reference::load(fixture);
    let (layers, inner) = (2, 32);
    let c = r.case("encode");
    let (i, m) = (ids(&c["input_ids"]), ids(&c["attention_mask"]));
    let enc = e
        .run("encode", &[("input_ids", &i), ("attention_mask", &m)])
        .unwrap();
    t.add(
        "encode.last_hidden_state",
        &r.tensor("encode.last_hidden_state").0,
        &f32s(&enc, "encoder_last_hidden_state"),
    );
    let c = r.case("decode");
    let (i, m) = (ids(&c["input_ids"]), ids(&c["attention_mask"]));
    let dec = ids(&c["decoder_input_ids"]);
    let logits = t5_decode(e, &i, &m, &dec, layers, inner);
    t.add("decode.logits", &r.tensor("decode.logits").0, &logits);
    for g in 0..2 {
        let c = r.case(&format!("greedy_{g}"));
        let want = flat_ids(&c["output_ids"]);
        let i = Tensor::i64_rows(&[flat_ids(&c["input_ids"])]);
        let m = Tensor::i64(i.shape().to_vec(), vec![1; i.numel()]);
        let mut got = vec![want[0]];
        // Teacher-free: each step's argmax is the next decoder input (no cache: the whole
        // prefix through `decode`, which the cached steps match, see jit_parity).
        while got.len() < want.len() {
            let d = Tensor::i64_rows(&[got.clone()]);
            let logits = t5_decode(e, &i, &m, &d, layers, inner);
            let v = logits.len() / got.len();
            got.push(argmax(&logits[(got.len() - 1) * v..]) as i64);
        }
        t.count(
            &format!(
                "greedy_{g} tokens (min top-2 margin {:.3})",
                c["min_top2_margin"].as_f64().unwrap()
            ),
            prefix(&got[1..], &want[1..]),
            want.len() - 1,
        );
    }
}

/// `encode`, `cross_kv` and `decode` of the whole decoder input; the logits.
fn t5_decode(
    e: &mut dyn Engine,
    i: &Tensor,
    m: &Tensor,
    dec: &Tensor,
    layers: usize,
    inner: usize,
) -> Vec<f32> {
    let enc = e
        .run("encode", &[("input_ids", i), ("attention_mask", m)])
        .unwrap();
    let h = &enc["encoder_last_hidden_state"];
    let kv = e.run("cross_kv", &[("encoder_hidden_states", h)]).unwrap();
    let b = dec.shape()[0];
    let mut v = vec![
        ("decoder_input_ids".to_string(), dec.clone()),
        ("encoder_attention_mask".to_string(), m.clone()),
    ];
    for l in 0..layers {
        let z = Tensor::f32(vec![b, 0, inner], vec![]);
        v.push((format!("past_key.{l}"), z.clone()));
        v.push((format!("past_value.{l}"), z));
        for kind in ["key", "value"] {
            let name = format!("cross_{kind}.{l}");
            v.push((name.clone(), kv[&name].clone()));
        }
    }
    f32s(&e.run("decode", &args(&v)).unwrap(), "logits")
}

/// Runs `fill` on each narrow format's JIT of `fixture` and checks the table.
fn each_format(fixture: &str, fill: impl Fn(&mut dyn Engine, &mut Table)) {
    let model = Arc::new(Model::load(&fixture_dir(fixture)).unwrap());
    let tables: Vec<Table> = NARROW
        .into_iter()
        .map(|f| {
            let mut t = Table::new(f);
            fill(&mut jit(&model, f), &mut t);
            t.print(fixture);
            t
        })
        .collect();
    for t in &tables {
        t.check(fixture);
    }
}

#[test]
fn bert_tiny_formats() {
    each_format("bert-tiny", bert_tiny);
}

#[test]
fn bert_tiny_cls_formats() {
    each_format("bert-tiny-cls", bert_tiny_cls);
}

/// GPT-2's tied head: the embedding gather reads the head's narrow panels (one copy).
#[test]
fn gpt2_tiny_formats() {
    each_format("gpt2-tiny", gpt2_tiny);
}

#[test]
fn t5_tiny_formats() {
    each_format("t5-tiny", |e, t| t5_fixture("t5-tiny", e, t));
}

#[test]
fn t5v11_tiny_formats() {
    each_format("t5v11-tiny", |e, t| t5_fixture("t5v11-tiny", e, t));
}

/// f32 stays what it was: the default lowering and an explicit f32 give the same bits.
#[test]
fn f32_is_unchanged() {
    let model = Arc::new(Model::load(&fixture_dir("gpt2-tiny")).unwrap());
    let mut a = JitEngine::new(model.clone()).unwrap();
    let mut b = jit(&model, WeightFormat::F32);
    let (x, _) = gpt2_greedy(&mut a, &[464, 2068, 7586], 8);
    let (y, _) = gpt2_greedy(&mut b, &[464, 2068, 7586], 8);
    assert_eq!(x, y);
}

/// Spearman's rank correlation of two samples (no ties in practice: cosines of distinct
/// sentence pairs).
fn spearman(a: &[f32], b: &[f32]) -> f32 {
    let ranks = |v: &[f32]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0f64; v.len()];
        for (rank, &i) in idx.iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y) * (x - y)).sum();
    (1.0 - 6.0 * d2 / (n * (n * n - 1.0))) as f32
}

/// Varied sentences: short and long, questions, code, numbers, other languages, near
/// paraphrases (so the similarity ranking has close calls).
const SENTENCES: &[&str] = &[
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "I forgot my login credentials, what should I do?",
    "The stock market fell sharply on Tuesday after the rate decision.",
    "Interest rates were raised by a quarter point.",
    "fn main() { println!(\"hello\"); }",
    "SELECT name FROM users WHERE id = 42;",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Mitochondria are the powerhouse of the cell.",
    "Le chat est assis sur le tapis.",
    "Der Hund schläft im Garten.",
    "It was 3.14159 degrees colder than yesterday, at -12 °C.",
    "Please call me back at 555-0100 before 5 pm.",
    "I love this movie, it was fantastic!",
    "This film was a complete waste of time.",
    "The weather is lovely today.",
    "It is raining heavily and the streets are flooded.",
    "Transformers use attention to mix information between tokens.",
    "Quantization stores weights in fewer bits to save memory and bandwidth.",
    "She sells sea shells by the sea shore.",
    "An apple a day keeps the doctor away.",
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
];

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dev(a, b).cos
}

/// The real all-MiniLM-L6-v2 (issue 9's accuracy bars): each embedding's cosine to the
/// Hugging Face f32 embedding (the fixture's 6 sentences and 3 long texts), and to cranformer's
/// f32 embedding, which matches Hugging Face to 2e-4 (tests/jit_parity.rs), on 32 more
/// varied sentences; the int8 ranking of their 496 pairwise similarities against f32's.
#[test]
fn minilm_formats() {
    let dir = minilm_dir();
    let model = Arc::new(Model::load(&dir).unwrap());
    let config = cranformer_runtime::ModelConfig::load(&dir).unwrap();
    // Only for its tokenizer and batching; sentence-transformers truncates at 256 tokens.
    let session = cranformer_runtime::tasks::Session {
        info: model.info.clone(),
        tokenizer: cranformer_runtime::tokenize::Tokenizer::from_model_dir(
            &dir,
            config.tokenizer_kind(),
        )
        .unwrap()
        .truncating(256)
        .unwrap(),
        engine: Box::new(cranformer_compiler::interp::Interpreter::new(model.clone())),
    };
    let batch = |texts: &[String]| session.batch(texts).unwrap();
    let texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let (i, tt, m) = batch(&texts);
    let sentences = [
        ("input_ids", &i),
        ("token_type_ids", &tt),
        ("attention_mask", &m),
    ];
    let embed = |e: &mut dyn Engine, inputs: &[(&str, &Tensor)]| -> Vec<Vec<f32>> {
        let out = e.run("embed", inputs).unwrap();
        let t = &out["embeddings"];
        let c = t.shape()[1];
        t.as_f32().unwrap().chunks(c).map(|r| r.to_vec()).collect()
    };
    let pairs = |rows: &[Vec<f32>]| -> Vec<f32> {
        let mut v = vec![];
        for a in 0..rows.len() {
            for b in a + 1..rows.len() {
                v.push(cosine(&rows[a], &rows[b]));
            }
        }
        v
    };
    // The fixture's references from sentence-transformers: (texts, embeddings).
    let mut refs: Vec<(Vec<String>, Vec<f32>, usize)> = vec![];
    for (r, case) in [
        (Reference::load("minilm"), "embed"),
        (
            Reference::load_file("minilm", "reference-inputs"),
            "embed_long",
        ),
    ] {
        let c = r.case(case);
        let texts: Vec<String> = c["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let (want, shape) = r.tensor(&format!("{case}.embeddings"));
        refs.push((texts, want, shape[1]));
    }
    let to_hf = |e: &mut dyn Engine| -> f32 {
        let mut worst = f32::INFINITY;
        for (texts, want, c) in &refs {
            let (i, tt, m) = batch(texts);
            let got = embed(
                e,
                &[
                    ("input_ids", &i),
                    ("token_type_ids", &tt),
                    ("attention_mask", &m),
                ],
            );
            for (row, w) in got.iter().zip(want.chunks(*c)) {
                worst = worst.min(cosine(w, row));
            }
        }
        worst
    };
    let mut f32_jit = JitEngine::new(model.clone()).unwrap();
    let base = embed(&mut f32_jit, &sentences);
    let base_pairs = pairs(&base);
    eprintln!(
        "minilm --dtype f32: cosine to Hugging Face f32 (9 texts) worst {:.7}",
        to_hf(&mut f32_jit)
    );
    for f in NARROW {
        // Issue 9's bars.
        let bar = match f {
            WeightFormat::I8 => 0.99,
            WeightFormat::Bf16 => 0.999,
            WeightFormat::F16 => 0.9999,
            WeightFormat::F32 => unreachable!(),
        };
        let mut e = jit(&model, f);
        let worst_hf = to_hf(&mut e);
        let got = embed(&mut e, &sentences);
        let cos: Vec<f32> = got.iter().zip(&base).map(|(g, b)| cosine(b, g)).collect();
        let worst = cos.iter().copied().fold(f32::INFINITY, f32::min);
        let mean = cos.iter().sum::<f32>() / cos.len() as f32;
        let rho = spearman(&base_pairs, &pairs(&got));
        eprintln!(
            "minilm --dtype {}: cosine to Hugging Face f32 (9 texts) worst {worst_hf:.6}; to cranformer f32 ({} sentences) worst {worst:.6} mean {mean:.6}; Spearman of {} pair similarities {rho:.5}",
            f.name(),
            cos.len(),
            base_pairs.len()
        );
        assert!(
            worst_hf >= bar && worst >= bar,
            "--dtype {}: embedding cosine {} / {} below {bar}",
            f.name(),
            worst_hf,
            worst
        );
        assert!(
            rho >= 0.98,
            "--dtype {}: Spearman {rho} below 0.98",
            f.name()
        );
    }
}

/// The shared object (what an executable runs) and the JIT give the same bits for a narrow
/// format: same lowering, same runtime kernels.
#[test]
fn aot_matches_jit_narrow() {
    let model = Arc::new(Model::load(&fixture_dir("t5v11-tiny")).unwrap());
    for f in [WeightFormat::I8, WeightFormat::Bf16] {
        let mut a = SharedObjectEngine::with_options(model.clone(), options(f)).unwrap();
        let mut j = jit(&model, f);
        let (mut ta, mut tj) = (Table::new(f), Table::new(f));
        t5_fixture("t5v11-tiny", &mut a, &mut ta);
        t5_fixture("t5v11-tiny", &mut j, &mut tj);
        for ((what, x), (_, y)) in ta.rows.iter().zip(&tj.rows) {
            assert_eq!(x.max_rel.to_bits(), y.max_rel.to_bits(), "{what}");
        }
    }
}

/// `cranformer compile --dtype int8`: the executable embeds the int8 panels (and no f32
/// copy of the tied embedding), generates what the int8 JIT generates, and refuses another
/// `--dtype` at run time.
#[test]
fn compiled_executable_int8() {
    let dir = fixture_dir("gpt2-tiny");
    let out = scratch("quant-exe");
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let mut sizes = vec![];
    for d in ["f32", "int8"] {
        let exe = out.join(format!("gpt2-{d}"));
        run_ok(&bin(), &["compile", &p(&dir), "-o", &p(&exe), "--dtype", d]);
        sizes.push(std::fs::metadata(&exe).unwrap().len());
    }
    eprintln!(
        "gpt2-tiny executables: f32 {} bytes, int8 {} bytes ({:.2}x)",
        sizes[0],
        sizes[1],
        sizes[1] as f64 / sizes[0] as f64
    );
    // The tied 50257 x 32 matrix is most of the weights: 6.4 MB in f32, 1.6 MB + 0.4 MB of
    // scales and column sums in int8 (runtime and tokenizer are the same in both).
    assert!(
        sizes[0] - sizes[1] > 4_000_000,
        "int8 saves the tied matrix's bytes: {sizes:?}"
    );
    let exe = out.join("gpt2-int8");
    let gen = [
        "--greedy",
        "--json",
        "--max-new-tokens",
        "12",
        "--prompt",
        "Hello, my dog",
    ];
    let mut from_exe = vec!["generate"];
    from_exe.extend(gen);
    let a = run_ok(&exe, &from_exe);
    let mut from_cli = vec!["generate", dir.to_str().unwrap(), "--dtype", "int8"];
    from_cli.extend(gen);
    let b = run_ok(&bin(), &from_cli);
    assert_eq!(
        a, b,
        "the int8 executable and the int8 JIT generate the same"
    );
    // `--dtype int8` repeated is fine; another is refused with the way out.
    let mut same = vec!["generate", "--dtype", "int8"];
    same.extend(gen);
    assert_eq!(run_ok(&exe, &same), a);
    let mut other = vec!["generate", "--dtype", "f32"];
    other.extend(gen);
    let o = std::process::Command::new(&exe)
        .args(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--dtype f32") && err.contains("compiled with int8"),
        "{err}"
    );
}

/// The interpreter is the f32 reference: a narrow `--dtype` there is an error naming both
/// flags, never a silent f32 run.
#[test]
fn interp_refuses_narrow_dtype() {
    let dir = fixture_dir("gpt2-tiny");
    let o = std::process::Command::new(bin())
        .args([
            "generate",
            dir.to_str().unwrap(),
            "--engine",
            "interp",
            "--dtype",
            "bf16",
            "--prompt",
            "Hi",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--dtype bf16") && err.contains("--engine interp"),
        "{err}"
    );
}
