//! `serve`: an HTTP server for a model's tasks, shared by `cranformer serve MODEL_DIR` and every
//! compiled executable's `BIN serve`, so both behave the same.
//!
//! The HTTP side (axum on a small tokio runtime) parses and validates requests and tokenizes
//! texts; one engine thread owns the model and batches what arrives together (see
//! [`worker`]). Routes are offered where the model supports their task:
//! - OpenAI: `/v1/embeddings` (embed), `/v1/completions` (generate, with SSE streaming),
//!   `/v1/models`;
//! - Hugging Face text-embeddings-inference: `/embed`, `/predict` (classify), `/tokenize`;
//! - KServe v2 (Open Inference Protocol): `/v2/health/{live,ready}`, `/v2/models/{name}`,
//!   `/v2/models/{name}/ready`, `/v2/models/{name}/infer` (the `forward` task);
//! - operations: `/metrics` (Prometheus), `/openapi.json`.

pub mod error;
pub mod generation;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod worker;

use anyhow::{Context, Result};
use cranformer_runtime::cli::ServeArgs;
use cranformer_runtime::tasks::Session;
use cranformer_runtime::tokenize::Tokenizer;
use cranformer_runtime::{Engine, ModelInfo};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use worker::{Job, Limits, Shared};

/// Builds the engine; called on the engine thread, since engines need not be `Send`.
pub type EngineFactory = Box<dyn FnOnce() -> Result<Box<dyn Engine>> + Send>;

/// What the server runs: the model's facts and tokenizer (known before its code is ready)
/// and how to build its engine.
pub struct ServedModel {
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    pub engine: EngineFactory,
}

/// How many tokens an input may have: the model's positions, or for embeddings what the
/// `embed` task reads ([`ModelInfo::embed_limit`]: sentence-transformers' `max_seq_length`
/// when the model has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Positions,
    Embedding,
}

/// Everything a request handler reads.
pub struct App {
    pub name: String,
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    /// The tokenizer truncating to each [`Budget`] (`Positions`, `Embedding`), made once;
    /// `Err` when the budget cannot hold the special tokens.
    truncating: [Result<Tokenizer, String>; 2],
    pub args: ServeArgs,
    pub shared: Arc<Shared>,
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    pub started: u64,
}

impl App {
    /// Queues a job for the engine, or answers 503 when `--max-queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), error::ApiError> {
        let queued = &self.shared.queued;
        let before = queued.fetch_add(1, Ordering::Relaxed);
        if before >= self.args.max_queue {
            queued.fetch_sub(1, Ordering::Relaxed);
            return Err(error::ApiError::overloaded(before));
        }
        let sent = self
            .jobs
            .lock()
            .map_err(|_| error::ApiError::internal("the job queue is poisoned"))?
            .send(job);
        if sent.is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
            return Err(error::ApiError::unavailable("the engine has stopped"));
        }
        Ok(())
    }

    pub fn tasks(&self) -> Vec<&'static str> {
        self.info.tasks()
    }

    /// The most tokens an input may have under `budget`, and how an error says so.
    pub fn limit(&self, budget: Budget) -> (usize, String) {
        match budget {
            Budget::Embedding => match self.info.embed_limit() {
                (m, true) => (
                    m,
                    format!(
                        "this model embeds at most {m} (max_seq_length in \
                         sentence_bert_config.json)"
                    ),
                ),
                (m, false) => (m, format!("this model takes at most {m}")),
            },
            Budget::Positions => {
                let m = self.info.max_positions();
                (m, format!("this model takes at most {m}"))
            }
        }
    }

    /// The tokenizer that truncates `longest_first` to `budget` (see [`App::limit`]).
    pub fn truncating(&self, budget: Budget, param: &str) -> Result<&Tokenizer, error::ApiError> {
        self.truncating[budget as usize]
            .as_ref()
            .map_err(|e| error::ApiError::field(param, e.clone()))
    }
}

fn truncating(info: &ModelInfo, tokenizer: &Tokenizer) -> [Result<Tokenizer, String>; 2] {
    [info.max_positions(), info.embed_limit().0].map(|max| {
        tokenizer
            .truncating(max)
            .map_err(|e| format!("cannot truncate to {max} tokens: {e}"))
    })
}

/// Runs the server until SIGTERM or SIGINT, then lets in-flight requests finish within
/// `--grace-period` seconds.
pub fn run(args: &ServeArgs, model: ServedModel) -> Result<()> {
    let name = args
        .model_name
        .clone()
        .unwrap_or_else(|| model.info.architecture().to_string());
    let shared = Arc::new(Shared {
        queued: 0.into(),
        ready: false.into(),
        metrics: metrics::Metrics::new(),
    });
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<bool>>();
    let limits = Limits {
        max_batch_tokens: args.max_batch_tokens,
        max_streams: args.max_streams,
    };
    let info = model.info.clone();
    let tokenizer = model.tokenizer.clone();
    let engine_shared = shared.clone();
    let factory = model.engine;
    std::thread::Builder::new()
        .name("cranformer-engine".into())
        .spawn(move || {
            let started = (|| -> Result<(Session, bool)> {
                let engine = factory()?;
                let mut session = Session {
                    info,
                    tokenizer,
                    engine,
                };
                worker::warm_up(&mut session).context("the warm-up call failed")?;
                Ok((session, false))
            })();
            match started {
                Ok((mut session, _)) => {
                    let generator = generation::Generator::new(&mut session);
                    engine_shared.ready.store(true, Ordering::SeqCst);
                    let _ = ready_tx.send(Ok(generator.mixes_lengths()));
                    worker::run(session, generator, rx, engine_shared, limits);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .context("cannot start the engine thread")?;

    let app = Arc::new(App {
        name,
        truncating: truncating(&model.info, &model.tokenizer),
        info: model.info,
        tokenizer: model.tokenizer,
        args: args.clone(),
        shared: shared.clone(),
        jobs: std::sync::Mutex::new(tx),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cranformer-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    rt.block_on(serve(app, ready_rx))
}

async fn serve(app: Arc<App>, ready: std::sync::mpsc::Receiver<Result<bool>>) -> Result<()> {
    let args = &app.args;
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--host, --port)"))?;
    let local = listener.local_addr()?;
    let router = routes::router(app.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });

    // Signals are caught from here on, so a SIGTERM while loading also exits cleanly.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // Live at once; ready (and announced) once the engine has run its warm-up call.
    let loading = tokio::task::spawn_blocking(move || ready.recv());
    let mixes = tokio::select! {
        r = loading => r
            .context("waiting for the engine")?
            .map_err(|_| anyhow::anyhow!("the engine thread stopped while loading"))??,
        s = &mut signal => {
            eprintln!("cranformer serve: {s} while loading; exiting");
            let _ = stop_tx.send(true);
            return Ok(());
        }
    };
    let routes = routes::offered(&app)
        .iter()
        .map(|r| r.path)
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = std::io::stdout();
    writeln!(
        out,
        "cranformer serve: ready on http://{local} port {} model {} ({}); batching: {}; routes: {routes}",
        local.port(),
        app.name,
        app.info.architecture(),
        if !app.info.tasks().contains(&"generate") {
            // An encoder (or GPT-2 without its head) has no decode steps to share.
            "requests that arrive together share a call, grouped by length"
        } else if mixes {
            "continuous, streams of any length share each decode step"
        } else {
            "continuous, streams of equal length share each decode step"
        },
    )?;
    out.flush()?;

    let signal = signal.await;
    app.shared.ready.store(false, Ordering::SeqCst);
    eprintln!(
        "cranformer serve: {signal}: no new connections; finishing in-flight requests (up to {} s)",
        args.grace_period
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(args.grace_period), server).await {
        Ok(Ok(Ok(()))) => eprintln!("cranformer serve: stopped"),
        Ok(Ok(Err(e))) => eprintln!("cranformer serve: stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("cranformer serve: the server task failed: {e}"),
        Err(_) => eprintln!(
            "cranformer serve: grace period over with {} requests in flight; exiting",
            app.shared.metrics.in_flight.get()
        ),
    }
    Ok(())
}

/// Resolves at SIGTERM or SIGINT; the handlers are installed when this is called, not when it
/// is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = i.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}
