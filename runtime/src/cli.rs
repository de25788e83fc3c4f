//! The tasks' command line, shared by `cranformer` (which puts MODEL_DIR first) and by every
//! compiled model executable (which has its model built in).

use crate::gemm::WeightFormat;
use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// Text arguments: clap's own UTF-8 check does not say which argument failed; this one does.
fn utf8() -> impl TypedValueParser<Value = String> {
    OsStringValueParser::new().try_map(|s| {
        s.into_string()
            .map_err(|raw| format!("{:?} is not valid UTF-8 text", raw))
    })
}

/// Counts where 0 makes no sense (threads, predictions).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// What runs a model's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// The reference interpreter.
    Interp,
    /// Native code from Cranelift, generated in the process.
    Jit,
    /// Code compiled ahead of time (a compiled executable, or `bench`'s shared object).
    Aot,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Interp => "interp",
            EngineKind::Jit => "jit",
            EngineKind::Aot => "aot",
        }
    }
}

/// `--engine`'s value: one engine, or for `bench` a comma-separated list of them (repeats
/// dropped, order kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineList(pub Vec<EngineKind>);

impl EngineList {
    fn parse(list: &str) -> Result<EngineList, String> {
        let mut kinds = vec![];
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let kind = EngineKind::from_str(name, false).map_err(|_| {
                let available: Vec<&str> = EngineKind::value_variants()
                    .iter()
                    .map(|k| k.name())
                    .collect();
                format!(
                    "unknown --engine {name:?} (available: {})",
                    available.join(", ")
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(format!(
                "--engine {list:?} names no engine (expected one such as jit, or for bench a \
                 list such as interp,jit,aot)"
            ));
        }
        Ok(EngineList(kinds))
    }
}

/// Flags every task takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Engine that runs the model: jit (native code from Cranelift, the default) or interp
    /// (the reference interpreter); bench takes a comma-separated list (interp, jit, aot).
    #[arg(long, global = true, value_name = "ENGINE", value_parser = EngineList::parse)]
    pub engine: Option<EngineList>,
    /// Worker threads (default: all cores; the interpreter always uses one).
    #[arg(long, global = true, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Print timings and engine details on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Weight precision of every matmul (linear layer): f32 (the default), bf16, f16 or int8
    /// (symmetric per output channel, activations quantized per row at run time). Attention,
    /// softmax and norms stay f32. `bench` takes a comma-separated list to compare them; a
    /// compiled executable runs the precision it was compiled with.
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    pub dtype: Vec<WeightFormat>,
}

impl Common {
    /// The weight precision to run: `--dtype`, f32 when not given.
    pub fn weight_format(&self) -> Result<WeightFormat, String> {
        Ok(self.dtype_given()?.unwrap_or(WeightFormat::F32))
    }

    /// `--dtype` if it was given (a compiled executable checks it against its own).
    pub fn dtype_given(&self) -> Result<Option<WeightFormat>, String> {
        match self.dtype[..] {
            [] => Ok(None),
            [d] => Ok(Some(d)),
            _ => Err(format!(
                "--dtype takes one value here (a list is for bench), got {}",
                self.dtype
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        }
    }

    /// The weight precisions `bench` compares, in order, repeats dropped (f32 when not given).
    pub fn weight_formats(&self) -> Vec<WeightFormat> {
        let mut out: Vec<WeightFormat> = vec![];
        for &d in &self.dtype {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        if out.is_empty() {
            out.push(WeightFormat::F32);
        }
        out
    }

    /// Refuses a narrow `--dtype` with the interpreter, the f32 reference: it would
    /// silently compute something other than what was asked.
    pub fn check_engine_dtype(engine: EngineKind, dtype: WeightFormat) -> Result<(), String> {
        if engine == EngineKind::Interp && dtype != WeightFormat::F32 {
            return Err(format!(
                "--dtype {}: --engine interp is the f32 reference and runs f32 weights only; \
                 use --engine jit (the default) for {} weights, or --dtype f32",
                dtype.name(),
                dtype.name()
            ));
        }
        Ok(())
    }
}

impl Common {
    /// The one engine a task runs on: `--engine`, else the JIT.
    pub fn engine(&self) -> Result<EngineKind, String> {
        match self.engine.as_ref().map(|l| &l.0[..]) {
            None => Ok(EngineKind::Jit),
            Some([one]) => Ok(*one),
            Some(list) => Err(format!(
                "--engine {}: a task runs on one engine (lists are for bench)",
                list.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
            )),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct TokenizeArgs {
    /// Print one JSON object: {"ids": [..], "tokens": [..]}.
    #[arg(long)]
    pub json: bool,
    /// Text to tokenize (put `--` before a text that starts with '-').
    #[arg(value_parser = utf8())]
    pub text: String,
}

#[derive(Args, Clone, Debug)]
pub struct ForwardArgs {
    /// JSON file: {"input_ids": [[..]], "attention_mask"?, "token_type_ids"?, "decoder_input_ids"?}.
    #[arg(long)]
    pub input: PathBuf,
    /// safetensors file to write the output tensors (F32) to.
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct EmbedArgs {
    /// Print one JSON object: {"embeddings": [[..], ..]}.
    #[arg(long)]
    pub json: bool,
    /// Fail on a text longer than the model embeds (sentence-transformers' max_seq_length,
    /// else the model's positions) instead of truncating it as sentence-transformers does.
    #[arg(long)]
    pub no_truncate: bool,
    /// Texts to embed (put `--` before texts that start with '-').
    #[arg(required = true, value_parser = utf8())]
    pub texts: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct FillMaskArgs {
    /// How many predictions to list.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub top_k: usize,
    /// Print one JSON object: {"predictions": [{"token", "id", "score"}, ..]} for one mask,
    /// {"masks": [{"position", "predictions": [..]}, ..]} for several.
    #[arg(long)]
    pub json: bool,
    /// Text with one or more mask tokens, e.g. "Paris is the [MASK] of France."; each mask is
    /// predicted on its own (its own softmax), as Hugging Face's fill-mask pipeline does.
    #[arg(value_parser = utf8())]
    pub text: String,
}

#[derive(Args, Clone, Debug)]
pub struct ClassifyArgs {
    /// Print one JSON object: {"results": [{"label", "scores": {..}}, ..]}.
    #[arg(long)]
    pub json: bool,
    /// Take the texts two at a time as (first, second) sentence pairs, with segment ids 0 and
    /// 1 as the Hugging Face tokenizer gives them (NLI, paraphrase, next-sentence models). As
    /// `tokenizer(first, second)`, an empty second text leaves the first text alone.
    #[arg(long)]
    pub pairs: bool,
    /// Cut inputs longer than the model's positions to fit, as truncation="longest_first"
    /// does (for a pair, tokens come off the longer text first); without it they are an error.
    #[arg(long)]
    pub truncate: bool,
    /// Texts to classify (put `--` before texts that start with '-').
    #[arg(required = true, value_parser = utf8())]
    pub texts: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct RerankArgs {
    /// The query every document is scored against.
    #[arg(long, allow_hyphen_values = true, value_parser = utf8())]
    pub query: String,
    /// List only the N best documents.
    #[arg(long, value_parser = at_least_one)]
    pub top_n: Option<usize>,
    /// Print one JSON object: {"results": [{"index", "score", "logit"}, ..]}, best first.
    #[arg(long)]
    pub json: bool,
    /// Documents to rank (put `--` before documents that start with '-'). Each is paired with
    /// the query as sentence-transformers' CrossEncoder pairs them: an empty document is still
    /// a second text (`[CLS] query [SEP] [SEP]`), where `classify --pairs`, as the
    /// text-classification pipeline, reads an empty second text as none.
    #[arg(required = true, value_parser = utf8())]
    pub docs: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Text to continue (GPT-2) or to transform (T5). An empty GPT-2 prompt starts from
    /// config.json's bos_token_id (`<|endoftext|>`), as Hugging Face's text-generation
    /// pipeline does.
    #[arg(long, allow_hyphen_values = true, value_parser = utf8())]
    pub prompt: String,
    /// Most tokens to generate; generation also stops at the end-of-sequence token.
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default without sampling flags).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed"])]
    pub greedy: bool,
    /// Sampling temperature (turns sampling on).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens (default 50 when sampling; 0 = all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample within the smallest set of tokens whose probability reaches P (default 1.0).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Random seed for sampling (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object at the end: {"prompt_ids", "new_ids", "text"} (no streaming).
    #[arg(long)]
    pub json: bool,
}

/// `serve`: an HTTP server for the model's tasks (OpenAI, Hugging Face TEI and KServe v2
/// routes, Prometheus metrics), batching the requests that arrive together.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise; 0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the ready line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model's name in the APIs (default: the architecture, e.g. BertModel).
    #[arg(long, value_parser = utf8())]
    pub model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but health and metrics.
    #[arg(long, value_parser = utf8())]
    pub api_key: Option<String>,
    /// Most tokens (sequences x padded length) in one batched call of the model.
    #[arg(long, default_value_t = 16384, value_parser = at_least_one)]
    pub max_batch_tokens: usize,
    /// Most requests waiting for the model; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub max_queue: usize,
    /// Largest `max_tokens` a completion request may ask for.
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    pub max_new_tokens_limit: usize,
    /// Most generation streams decoded together; later ones wait in the queue.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub max_streams: usize,
    /// Seconds to finish in-flight requests after SIGTERM or SIGINT before exiting.
    #[arg(long, default_value_t = 30)]
    pub grace_period: u64,
}

/// The tasks a model runs.
#[derive(Subcommand, Clone, Debug)]
pub enum Task {
    /// Print the token ids and tokens of a text.
    Tokenize(TokenizeArgs),
    /// Run the model on token ids from a JSON file and write its output tensors.
    Forward(ForwardArgs),
    /// Sentence embeddings (BERT), pooled as the model's sentence-transformers config says.
    Embed(EmbedArgs),
    /// Predict the masked token (BERT with a masked-LM head).
    FillMask(FillMaskArgs),
    /// Classify texts or sentence pairs (BERT with a sequence-classification or
    /// next-sentence head).
    Classify(ClassifyArgs),
    /// Rank documents by relevance to a query (a cross-encoder: BERT sequence classifier
    /// with one label).
    Rerank(RerankArgs),
    /// Generate text (GPT-2 with an LM head, T5).
    Generate(GenerateArgs),
}

impl Task {
    pub fn name(&self) -> &'static str {
        match self {
            Task::Tokenize(_) => "tokenize",
            Task::Forward(_) => "forward",
            Task::Embed(_) => "embed",
            Task::FillMask(_) => "fill-mask",
            Task::Classify(_) => "classify",
            Task::Rerank(_) => "rerank",
            Task::Generate(_) => "generate",
        }
    }
}

#[cfg(test)]
mod dtype_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: Common,
    }

    fn parse(args: &[&str]) -> Result<Common, String> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|c| c.common)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn dtype_defaults_to_f32_and_parses_each_format() {
        assert!(parse(&[]).unwrap().dtype.is_empty());
        assert_eq!(parse(&[]).unwrap().weight_format(), Ok(WeightFormat::F32));
        assert_eq!(parse(&[]).unwrap().dtype_given(), Ok(None));
        for (arg, want) in [
            ("f32", WeightFormat::F32),
            ("bf16", WeightFormat::Bf16),
            ("f16", WeightFormat::F16),
            ("int8", WeightFormat::I8),
        ] {
            let c = parse(&["--dtype", arg]).unwrap();
            assert_eq!(c.dtype, [want]);
            assert_eq!(c.weight_format(), Ok(want));
        }
        let c = parse(&["--dtype", "int8,f32,int8"]).unwrap();
        assert_eq!(c.weight_formats(), [WeightFormat::I8, WeightFormat::F32]);
    }

    #[test]
    fn dtype_errors_name_the_flag_and_the_choices() {
        let err = parse(&["--dtype", "int4"]).unwrap_err();
        assert!(
            err.contains("int4") && err.contains("int8") && err.contains("bf16"),
            "{err}"
        );
        let err = parse(&["--dtype", "int8,f32"])
            .unwrap()
            .weight_format()
            .unwrap_err();
        assert!(
            err.contains("--dtype") && err.contains("one value"),
            "{err}"
        );
        let err = Common::check_engine_dtype(EngineKind::Interp, WeightFormat::I8).unwrap_err();
        assert!(
            err.contains("--dtype int8") && err.contains("--engine interp"),
            "{err}"
        );
        assert!(Common::check_engine_dtype(EngineKind::Interp, WeightFormat::F32).is_ok());
        assert!(Common::check_engine_dtype(EngineKind::Jit, WeightFormat::Bf16).is_ok());
    }
}

/// Prints `e` as every cranformer program does ("error: <cause>: <detail>" on stderr, after
/// flushing `out`) and returns the exit status: 1, or 0 when the reader of `out` went away
/// (`| head`), which is not an error worth a message.
pub fn report_error(e: &anyhow::Error, out: &mut dyn Write) -> i32 {
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return 0;
    }
    let _ = out.flush();
    eprintln!("error: {}", error_message(e));
    1
}

/// The causes of `e` joined by ": ". Errors that print their source in their own message
/// (io, safetensors) would show it twice, so a cause already in the text is skipped.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_lists_parse_and_name_unknown_engines() {
        let l = EngineList::parse("jit, interp,jit,aot").unwrap();
        assert_eq!(l.0, [EngineKind::Jit, EngineKind::Interp, EngineKind::Aot]);
        assert_eq!(
            EngineList::parse("jit,fast").unwrap_err(),
            "unknown --engine \"fast\" (available: interp, jit, aot)"
        );
        assert!(EngineList::parse(" , ")
            .unwrap_err()
            .contains("names no engine"));
        let common = |engine| Common {
            engine,
            threads: None,
            verbose: false,
            dtype: vec![],
        };
        assert_eq!(common(None).engine(), Ok(EngineKind::Jit));
        assert_eq!(
            common(Some(EngineList(vec![EngineKind::Interp]))).engine(),
            Ok(EngineKind::Interp)
        );
        assert!(common(Some(l)).engine().unwrap_err().contains("one engine"));
    }

    #[test]
    fn error_message_skips_causes_already_said() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(io).context("cannot read x: gone");
        assert_eq!(error_message(&e), "cannot read x: gone");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&e), "outer: inner");
    }
}
