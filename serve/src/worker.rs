//! The engine thread: owns the model's [`Session`] (engines need not be `Send`, so the engine is
//! built here and never leaves), takes jobs from a channel and batches them.
//!
//! One turn of the loop: take every job that has arrived; run all pending row jobs (embed,
//! classify) in as few calls as `--max-batch-tokens` allows, sequences sorted by length and
//! right-padded only within a few tokens; run pending `forward` jobs; admit waiting generation
//! streams up to `--max-streams` and prefill them; then one decode step shared by every active
//! stream. Streams thus join and leave between steps, and embedding requests are never stuck
//! behind a long generation.

use crate::error::ApiError;
use crate::generation::{Generator, Stream};
use crate::metrics::Metrics;
use cranformer_runtime::sampling::Sampling;
use cranformer_runtime::tasks::Session;
use cranformer_runtime::{Outputs, Tensor};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A tokenized sequence for a BERT entry.
#[derive(Clone, Debug)]
pub struct Seq {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// Which one-row-per-sequence output a row job wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKind {
    /// `embed` -> `embeddings` [B, C]
    Embed,
    /// `embed` -> `pooled` [B, C]: the vectors before the model's L2 normalisation (an
    /// output only where it has one, `Pooling::normalize`)
    Pooled,
    /// `encode` -> `logits` [B, labels] (classification heads)
    Classify,
    /// `encode` -> `nsp_logits` [B, 2] (a next-sentence head: is_next, not_next)
    NextSentence,
}

impl RowKind {
    fn entry(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RowKind::Embed => ("embed", "embeddings", "embed"),
            RowKind::Pooled => ("embed", "pooled", "embed"),
            RowKind::Classify => ("encode", "logits", "classify"),
            RowKind::NextSentence => ("encode", "nsp_logits", "classify"),
        }
    }
}

/// Why a stream ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-sequence token (or a stop string, found by the HTTP side).
    Stop,
    /// `max_tokens` or the model's positions ran out.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a generation stream reports, tagged with its choice index.
#[derive(Debug)]
pub enum GenEvent {
    Token(i64),
    Done(Finish),
    Failed(ApiError),
}

pub struct GenRequest {
    /// Choice index in the response.
    pub index: usize,
    pub prompt: Vec<i64>,
    pub max_new: usize,
    pub sampling: Sampling,
    pub events: mpsc::UnboundedSender<(usize, GenEvent)>,
    /// Set by the HTTP side when it needs no more tokens (a stop string was found).
    pub cancel: Arc<AtomicBool>,
    pub queued_at: Instant,
}

pub enum Job {
    Rows {
        kind: RowKind,
        seqs: Vec<Seq>,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, ApiError>>,
        queued_at: Instant,
    },
    /// The `forward` task on a JSON document (KServe v2 infer).
    Forward {
        doc: serde_json::Value,
        reply: oneshot::Sender<Result<Outputs, ApiError>>,
        queued_at: Instant,
    },
    Generate(GenRequest),
}

/// State shared by the HTTP side and the engine thread.
pub struct Shared {
    /// Jobs submitted and not yet taken up by the engine.
    pub queued: AtomicUsize,
    /// Weights mapped, engine built and one warm-up call done; false again when draining.
    pub ready: AtomicBool,
    pub metrics: Metrics,
}

/// Limits the engine thread enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_batch_tokens: usize,
    pub max_streams: usize,
}

struct RowJob {
    kind: RowKind,
    seqs: Vec<Seq>,
    results: Vec<Option<Vec<f32>>>,
    reply: Option<oneshot::Sender<Result<Vec<Vec<f32>>, ApiError>>>,
}

/// Runs the engine loop until every sender is gone and no work is left.
pub fn run(
    mut session: Session,
    mut generator: Generator,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let mut rows: Vec<RowJob> = vec![];
    let mut forwards: Vec<Job> = vec![];
    let mut waiting: VecDeque<GenRequest> = VecDeque::new();
    let mut active: Vec<Stream> = vec![];
    let mut open = true;
    loop {
        let idle =
            rows.is_empty() && forwards.is_empty() && waiting.is_empty() && active.is_empty();
        if idle {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(j) => take(j, &mut rows, &mut forwards, &mut waiting, &shared),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(j) => take(j, &mut rows, &mut forwards, &mut waiting, &shared),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !rows.is_empty() {
            run_rows(&mut session, &mut rows, &shared, limits);
            rows.clear();
        }
        for job in forwards.drain(..) {
            if let Job::Forward { doc, reply, .. } = job {
                let result = cranformer_runtime::tasks::forward::outputs(
                    &mut session,
                    &doc,
                    "request".as_ref(),
                )
                .map_err(ApiError::from_task);
                let rows = doc["input_ids"].as_array();
                shared.metrics.batch("forward", rows.map_or(0, Vec::len));
                // Tokens in: every id of every row (KServe's raw tensors, padding included).
                let ids = rows.map_or(0, |r| {
                    r.iter().map(|row| row.as_array().map_or(1, Vec::len)).sum()
                });
                shared.metrics.tokens_in.inc_by(ids as u64);
                let _ = reply.send(result);
            }
        }
        // Admit waiting streams while there is room.
        let mut admitted = vec![];
        while active.len() + admitted.len() < limits.max_streams {
            let Some(req) = waiting.pop_front() else {
                break;
            };
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared
                .metrics
                .queue_time
                .observe(req.queued_at.elapsed().as_secs_f64());
            admitted.push(req);
        }
        if !admitted.is_empty() {
            active.extend(generator.prefill(&mut session, admitted, &shared.metrics));
        }
        if !active.is_empty() {
            generator.decode_step(&mut session, &mut active, &shared.metrics);
            active.retain(|s| !s.finished);
        }
    }
}

fn take(
    job: Job,
    rows: &mut Vec<RowJob>,
    forwards: &mut Vec<Job>,
    waiting: &mut VecDeque<GenRequest>,
    shared: &Shared,
) {
    match job {
        Job::Rows {
            kind,
            seqs,
            reply,
            queued_at,
        } => {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared
                .metrics
                .queue_time
                .observe(queued_at.elapsed().as_secs_f64());
            rows.push(RowJob {
                kind,
                results: vec![None; seqs.len()],
                seqs,
                reply: Some(reply),
            })
        }
        Job::Forward { queued_at, .. } => {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared
                .metrics
                .queue_time
                .observe(queued_at.elapsed().as_secs_f64());
            forwards.push(job)
        }
        // Stays counted as queued until admitted.
        Job::Generate(g) => waiting.push_back(g),
    }
}

/// Most padding a sequence may receive within a batch: right padding costs no attention work
/// (keys after a row's last unmasked one are skipped) but still costs the matmuls.
fn pad_allowance(len: usize) -> usize {
    4 + len / 4
}

/// Runs every pending row job: sequences of one kind sorted by length, cut into batches of at
/// most `max_batch_tokens` (rows x padded length) whose lengths differ by little.
fn run_rows(session: &mut Session, jobs: &mut [RowJob], shared: &Shared, limits: Limits) {
    let mut order: Vec<(RowKind, usize, usize, usize)> = vec![]; // kind, len, job, seq
    for (j, job) in jobs.iter().enumerate() {
        for (s, seq) in job.seqs.iter().enumerate() {
            order.push((job.kind, seq.ids.len(), j, s));
        }
    }
    order.sort();
    let mut start = 0;
    while start < order.len() {
        let (kind, first_len, _, _) = order[start];
        let mut end = start + 1;
        while end < order.len() {
            let (k, len, _, _) = order[end];
            let rows = end - start + 1;
            if k != kind
                || len > first_len + pad_allowance(first_len)
                || rows * len > limits.max_batch_tokens
            {
                break;
            }
            end += 1;
        }
        let part = &order[start..end];
        let seqs: Vec<&Seq> = part.iter().map(|&(_, _, j, s)| &jobs[j].seqs[s]).collect();
        let (entry, output, label) = kind.entry();
        let result = run_padded(session, entry, output, &seqs, session.pad_id());
        shared.metrics.batch(label, seqs.len());
        shared
            .metrics
            .tokens_in
            .inc_by(seqs.iter().map(|s| s.ids.len() as u64).sum());
        match result {
            Ok(rows) => {
                for (&(_, _, j, s), row) in part.iter().zip(rows) {
                    jobs[j].results[s] = Some(row);
                }
            }
            Err(e) => {
                for &(_, _, j, _) in part {
                    if let Some(reply) = jobs[j].reply.take() {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        start = end;
    }
    for job in jobs.iter_mut() {
        if let Some(reply) = job.reply.take() {
            let rows = job
                .results
                .iter_mut()
                .map(|r| r.take().unwrap_or_default())
                .collect();
            let _ = reply.send(Ok(rows));
        }
    }
}

/// One call of a BERT `entry` on right-padded sequences; each sequence's row of `output`.
fn run_padded(
    session: &mut Session,
    entry: &str,
    output: &str,
    seqs: &[&Seq],
    pad: i64,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let (mut ids, mut types, mut mask) = (vec![], vec![], vec![]);
    for s in seqs {
        let n = s.ids.len();
        ids.extend(
            s.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, width - n)),
        );
        types.extend(
            s.type_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, width - n)),
        );
        mask.extend(std::iter::repeat_n(1, n).chain(std::iter::repeat_n(0, width - n)));
    }
    let shape = vec![seqs.len(), width];
    let batch = (
        Tensor::i64(shape.clone(), ids),
        Tensor::i64(shape.clone(), types),
        Tensor::i64(shape, mask),
    );
    let out = session
        .run_bert(entry, &batch)
        .map_err(ApiError::from_task)?;
    let t = out
        .get(output)
        .ok_or_else(|| ApiError::internal(format!("{entry} returned no {output}")))?;
    let width = *t.shape().last().unwrap_or(&0);
    let data = t
        .as_f32()
        .ok_or_else(|| ApiError::internal(format!("{entry}'s {output} is not f32")))?;
    Ok(data.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
}

/// The warm-up call: one small run of the entry the model's main task uses, so that readiness
/// means the weights were read and the code ran, not merely that the file was mapped.
pub fn warm_up(session: &mut Session) -> anyhow::Result<()> {
    use cranformer_runtime::ModelInfo;
    let enc = session.encode("warm up")?;
    match session.info.clone() {
        ModelInfo::Bert { .. } => {
            let seq = Seq {
                ids: enc.ids,
                type_ids: enc.type_ids,
            };
            let pad = session.pad_id();
            run_padded(session, "embed", "embeddings", &[&seq], pad)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        ModelInfo::Gpt2 { .. } | ModelInfo::T5 { .. } => {
            let n = enc.ids.len();
            let doc = serde_json::json!({ "input_ids": [enc.ids], "attention_mask": [vec![1; n]] });
            cranformer_runtime::tasks::forward::outputs(session, &doc, "warm-up".as_ref())?;
        }
    }
    Ok(())
}
