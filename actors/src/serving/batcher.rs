//! Dynamic batching for models that score many texts faster than one at a time (the
//! transformer kind): the texts of `/predict` requests that arrive together are scored as one
//! chunk by the inference pool, and each request gets its own slice of the results.
//!
//! A chunk leaves when it holds `max_batch` texts, or `max_wait` after its first request
//! arrived, but only while an inference thread is free: under load, requests gather while
//! the pool works and the next chunk is as large as the wait made it. At low load a request
//! waits at most `max_wait`.

use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::messages::{BatchError, Enqueue, InferenceError, ScoreChunk, ScoredChunk};
use crate::telemetry::metrics::Metrics;

struct Waiting {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<ScoredChunk, BatchError>>,
}

pub struct Batcher {
    pool: Recipient<ScoreChunk>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    max_wait: Duration,
    /// Chunks the pool may score at once (its thread count).
    slots: usize,
    busy: usize,
    pending: Vec<Waiting>,
    pending_texts: usize,
    /// The first pending request has waited `max_wait`.
    due: bool,
    timer: Option<SpawnHandle>,
}

impl Batcher {
    pub fn new(
        pool: Recipient<ScoreChunk>,
        metrics: Arc<Metrics>,
        max_batch: usize,
        max_wait: Duration,
        slots: usize,
    ) -> Batcher {
        Batcher {
            pool,
            metrics,
            max_batch: max_batch.max(1),
            max_wait,
            slots: slots.max(1),
            busy: 0,
            pending: Vec::new(),
            pending_texts: 0,
            due: false,
            timer: None,
        }
    }

    /// Sends a chunk if one is ready and a thread is free.
    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        while self.busy < self.slots
            && !self.pending.is_empty()
            && (self.due || self.pending_texts >= self.max_batch)
        {
            self.flush(ctx);
        }
        if !self.pending.is_empty() && !self.due && self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.max_wait, |act, ctx| {
                act.timer = None;
                act.due = true;
                act.maybe_flush(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        // Whole requests, oldest first, up to max_batch texts (a larger request goes alone).
        let mut take = 0;
        let mut texts_taken = 0;
        for w in &self.pending {
            if take > 0 && texts_taken + w.texts.len() > self.max_batch {
                break;
            }
            take += 1;
            texts_taken += w.texts.len();
        }
        let mut group: Vec<Waiting> = self.pending.drain(..take).collect();
        self.pending_texts -= texts_taken;
        if self.pending.is_empty() {
            self.due = false;
            if let Some(t) = self.timer.take() {
                ctx.cancel_future(t);
            }
        }
        let mut texts = Vec::with_capacity(texts_taken);
        let mut sizes = Vec::with_capacity(group.len());
        for w in &mut group {
            sizes.push(w.texts.len());
            texts.append(&mut w.texts);
        }
        let n = texts.len();
        self.metrics.serving.batched_texts.observe(n as f64);
        self.busy += 1;
        let sent = self.pool.send(ScoreChunk {
            texts: Arc::new(texts),
            start: 0,
            end: n,
        });
        ctx.spawn(sent.into_actor(self).map(move |reply, act, ctx| {
            act.busy -= 1;
            deliver(reply, group, &sizes, n);
            act.maybe_flush(ctx);
        }));
    }
}

/// Hands each request its slice of the chunk's results, or the chunk's failure.
fn deliver(
    reply: Result<Result<ScoredChunk, InferenceError>, MailboxError>,
    group: Vec<Waiting>,
    sizes: &[usize],
    n: usize,
) {
    let failure = match reply {
        Ok(Ok(scored)) if scored.results.len() == n => {
            let mut results = scored.results.into_iter();
            let mut start = 0;
            for (w, &size) in group.into_iter().zip(sizes) {
                let slice = ScoredChunk {
                    start,
                    model_version: scored.model_version.clone(),
                    results: results.by_ref().take(size).collect(),
                };
                start += size;
                // The request may have gone (client disconnected); nothing to do then.
                let _ = w.reply.send(Ok(slice));
            }
            return;
        }
        Ok(Ok(scored)) => BatchError::Failed(format!(
            "the inference pool returned {} results for {n} texts",
            scored.results.len()
        )),
        Ok(Err(InferenceError::NoModel)) => BatchError::NoModel,
        Ok(Err(e)) => BatchError::Failed(e.to_string()),
        Err(e) => BatchError::Failed(format!("the inference pool is unavailable: {e}")),
    };
    tracing::error!(texts = n, error = %failure, "a batch of /predict requests failed");
    for w in group {
        let _ = w.reply.send(Err(failure.clone()));
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
}

impl Supervised for Batcher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Requests that were waiting get an error instead of hanging.
        for w in self.pending.drain(..) {
            let _ = w
                .reply
                .send(Err(BatchError::Failed("the batcher restarted".into())));
        }
        self.pending_texts = 0;
        self.busy = 0;
        self.due = false;
        self.timer = None;
    }
}

impl Handler<Enqueue> for Batcher {
    type Result = ResponseFuture<Result<ScoredChunk, BatchError>>;

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.pending_texts += msg.texts.len();
        self.pending.push(Waiting {
            texts: msg.texts,
            reply,
        });
        self.maybe_flush(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(BatchError::Failed("the batcher dropped the request".into()))
            })
        })
    }
}
