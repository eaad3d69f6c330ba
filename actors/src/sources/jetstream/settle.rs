//! Settling one fetched batch: score it, store each result, and only then acknowledge.

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::future::join_all;
use sentimentd_config::ClusterConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{Input, Output, Rejected};
use crate::sources::SourceContext;
use crate::telemetry::events::{
    ClusterBatchSettled, ClusterMessageRejected, ClusterMessagesRetried, InternalEvent,
};
use crate::telemetry::metrics::Channel;
use sentimentd_data::labelled::LabelledRow;

/// A refused message's payload is echoed on the rejected subject up to this many bytes.
const MAX_ECHOED_BYTES: usize = 4096;

/// What settling a batch needs; cloned (cheaply) into each batch's task.
#[derive(Clone)]
pub struct Settler {
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub cluster: Arc<ClusterConfig>,
    pub cx: SourceContext,
}

#[derive(Default)]
struct Counts {
    scored: usize,
    rejected: usize,
    retried: usize,
}

impl Settler {
    /// Scores `messages` and settles every one of them: acknowledged once its result is
    /// stored, refused with a reason, or left for redelivery (refused instead on its last
    /// allowed delivery, so nothing stays in the work queue for ever).
    pub async fn settle(&self, messages: Vec<jetstream::Message>, fetched: Instant) {
        let mut counts = Counts::default();
        let pending = messages
            .last()
            .and_then(|m| m.info().ok())
            .map(|i| i.pending);
        let mut good = Vec::with_capacity(messages.len());
        for m in messages {
            match serde_json::from_slice::<Input>(&m.payload) {
                // A control character in an id would be folded into a space in the
                // `Nats-Msg-Id` header, so two ids could collide and one result be dropped.
                Ok(input) if input.id.chars().any(char::is_control) => {
                    self.reject(
                        &m,
                        None,
                        "the id has a control character (a line break?)",
                        &mut counts,
                    )
                    .await
                }
                Ok(mut input) => match input.decode_label() {
                    Err(value) => {
                        let reason = format!(
                            "label must be negative, neutral or positive (or 0, 1, 2), got \
                             {value}"
                        );
                        self.reject(&m, Some(&input.id), &reason, &mut counts).await
                    }
                    Ok(()) if !input.text.trim().is_empty() && !input.id.is_empty() => {
                        good.push((m, input))
                    }
                    Ok(()) => {
                        self.reject(&m, Some(&input.id), "empty id or text", &mut counts)
                            .await
                    }
                },
                Err(e) => {
                    let reason =
                        format!("not a JSON object {{\"id\", \"text\", \"source\"?}}: {e}");
                    self.reject(&m, None, &reason, &mut counts).await
                }
            }
        }
        if !good.is_empty() {
            self.score_and_store(good, &mut counts).await;
        }
        ClusterBatchSettled {
            scored: counts.scored,
            rejected: counts.rejected,
            retried: counts.retried,
            pending,
            elapsed: fetched.elapsed(),
        }
        .emit(&self.cx.metrics);
    }

    async fn score_and_store(&self, good: Vec<(jetstream::Message, Input)>, counts: &mut Counts) {
        let texts: Arc<Vec<String>> = Arc::new(good.iter().map(|(_, i)| i.text.clone()).collect());
        let scored = match self.score_with_progress(&good, texts).await {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("not scored: {e}");
                self.retry(good.iter().map(|(m, i)| (m, i)), &reason, counts)
                    .await;
                return;
            }
        };
        // Every result is published first and the stores are awaited together, then the
        // inputs are acknowledged together: one round trip per batch, not two per message.
        let mut published = Vec::with_capacity(good.len());
        let mut unpublished = Vec::new();
        for ((m, input), result) in good.iter().zip(scored.results) {
            let p = match result {
                Ok(p) => p,
                Err(reason) => {
                    self.reject(m, Some(&input.id), &reason, counts).await;
                    continue;
                }
            };
            let body = Output {
                id: &input.id,
                label: p.label.as_str(),
                score: p.score,
                probabilities: p.probabilities,
                model_version: &scored.model_version,
                source: input.source.as_deref(),
                created_at: input.created_at.as_deref(),
            };
            let payload = match serde_json::to_vec(&body) {
                Ok(p) => p,
                Err(e) => {
                    self.reject(
                        m,
                        Some(&input.id),
                        &format!("result not encoded: {e}"),
                        counts,
                    )
                    .await;
                    continue;
                }
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, input.id.as_str());
            match self
                .js
                .publish_with_headers(self.cluster.output_subject.clone(), headers, payload.into())
                .await
            {
                Ok(ack) => published.push((m, input, p.label, ack)),
                Err(_) => unpublished.push((m, input)),
            }
        }
        self.retry(unpublished.into_iter(), "result not published", counts)
            .await;
        let stored = join_all(
            published
                .into_iter()
                .map(|(m, input, label, ack)| async move { (m, input, label, ack.await) }),
        )
        .await;
        let mut to_ack = Vec::with_capacity(stored.len());
        let mut unstored = Vec::new();
        for (m, input, label, result) in stored {
            match result {
                Ok(_) => {
                    self.cx
                        .reputation
                        .record(Channel::batch, input.source.as_deref(), [label]);
                    to_ack.push((m, input));
                }
                Err(_) => unstored.push((m, input)),
            }
        }
        self.retry(
            unstored.into_iter(),
            "result not stored by the output stream",
            counts,
        )
        .await;
        // Labelled messages are in the labelled store before they are acknowledged.
        if let Err(e) = self.store_labelled(&to_ack).await {
            let (labelled, plain): (Vec<_>, Vec<_>) = to_ack
                .into_iter()
                .partition(|(_, input)| input.known.is_some());
            let reason = format!("labelled rows not stored: {e}");
            self.retry(labelled.into_iter(), &reason, counts).await;
            to_ack = plain;
        }
        let acked = join_all(to_ack.iter().map(|(m, _)| m.double_ack())).await;
        for ((_, input), result) in to_ack.iter().zip(acked) {
            if let Err(e) = result {
                // The result is stored; a redelivery is dropped as a duplicate by the output
                // stream, so this message still yields one output.
                tracing::warn!(id = %input.id, error = %e, "JetStream ack failed; the stored result stands");
            }
        }
        counts.scored += to_ack.len();
    }

    /// Writes the labelled messages among `settled` as one file of the labelled store.
    async fn store_labelled(
        &self,
        settled: &[(&jetstream::Message, &Input)],
    ) -> Result<(), String> {
        let now = chrono::Utc::now();
        let rows: Vec<LabelledRow> = settled
            .iter()
            .enumerate()
            .filter_map(|(i, (_, input))| {
                let label = input.known?;
                Some(LabelledRow {
                    text: input.text.clone(),
                    label,
                    source: input.source.clone().unwrap_or_default(),
                    origin: "jetstream".into(),
                    line: i as u64 + 1,
                    arrived_at: now.to_rfc3339(),
                })
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let name = sentimentd_data::labelled::unique_file_name(now, "jetstream");
        let dir = self.cx.config.borrow().ingest.labelled_dir.clone();
        let n = rows.len() as u64;
        tokio::task::spawn_blocking(move || {
            sentimentd_data::labelled::LabelledStore::open(&dir)
                .and_then(|store| store.write(&name, &rows))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.cx.metrics.ingest.labelled_rows(n);
        Ok(())
    }

    /// Scores the texts, telling the server every third of `ack_wait` that the messages are
    /// in progress, so a slow model (the transformer on a big batch) is not redelivered.
    async fn score_with_progress(
        &self,
        good: &[(jetstream::Message, Input)],
        texts: Arc<Vec<String>>,
    ) -> Result<crate::messages::ScoredChunk, crate::serving::scorer::ScoreError> {
        let scoring = self.cx.scorer.score_chunk(texts);
        tokio::pin!(scoring);
        let every =
            (Duration::from_secs(self.cluster.ack_wait_secs) / 3).max(Duration::from_millis(200));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                scored = &mut scoring => return scored,
                _ = tick.tick() => {
                    join_all(good.iter().map(|(m, _)| m.ack_with(AckKind::Progress))).await;
                }
            }
        }
    }

    /// Leaves messages for redelivery, except those on their last allowed delivery: those are
    /// refused with the reason, since the server would never deliver them again.
    async fn retry<'a>(
        &self,
        messages: impl Iterator<Item = (&'a jetstream::Message, &'a Input)>,
        reason: &str,
        counts: &mut Counts,
    ) {
        let mut left = 0;
        for (m, input) in messages {
            if delivered(m) >= self.cluster.max_deliver {
                let last = format!(
                    "{reason}, on delivery {} of cluster.max_deliver = {}",
                    delivered(m),
                    self.cluster.max_deliver
                );
                self.reject(m, Some(&input.id), &last, counts).await;
            } else {
                left += 1;
            }
        }
        if left > 0 {
            counts.retried += left;
            ClusterMessagesRetried {
                messages: left,
                reason,
            }
            .emit(&self.cx.metrics);
        }
    }

    /// Publishes a refused message's reason, then acknowledges it.
    async fn reject(
        &self,
        m: &jetstream::Message,
        id: Option<&str>,
        reason: &str,
        counts: &mut Counts,
    ) {
        let delivered = delivered(m);
        ClusterMessageRejected {
            id,
            reason,
            delivered,
        }
        .emit(&self.cx.metrics);
        counts.rejected += 1;
        let payload = String::from_utf8_lossy(&m.payload[..m.payload.len().min(MAX_ECHOED_BYTES)]);
        let body = serde_json::to_vec(&Rejected {
            id,
            reason,
            delivered,
            payload: &payload,
        });
        let published = match body {
            Ok(body) => self
                .client
                .publish(self.cluster.rejected_subject.clone(), body.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            // The journal line above keeps the id and the reason.
            tracing::warn!(id = id.unwrap_or("-"), error = %e, subject = %self.cluster.rejected_subject, "the rejection was not published");
        }
        if let Err(e) = m.double_ack().await {
            tracing::warn!(error = %e, "JetStream ack of a refused message failed");
        }
    }
}

/// Why a message past `max_deliver` was not refused.
enum Refusal {
    /// It is no longer in the input stream.
    Gone,
    Failed(String),
}

/// The server's advisory that a message reached `max_deliver` without being settled.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    deliveries: i64,
}

impl Settler {
    /// Refuses the messages the server gave up on: a message that was delivered
    /// `max_deliver` times without being settled (the nodes holding it crashed or stalled)
    /// would otherwise stay in the work queue for ever. The server's advisories are kept in a
    /// stream ([`setup::given_up`](super::setup::given_up)), so one sent while no node was
    /// connected waits for the next; one node takes each: it publishes the rejection with the
    /// payload, deletes the message from the input stream, then acknowledges the advisory.
    pub async fn refuse_given_up(&self, advisories: consumer::PullConsumer) {
        // A pull that fails at once (the stream or its consumer deleted) must not spin.
        let mut pause = Duration::from_secs(1);
        loop {
            let mut kept = match advisories.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, retry_secs = pause.as_secs(), "cannot read the kept max-deliveries advisories; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            while let Some(next) = futures_util::StreamExt::next(&mut kept).await {
                let advisory = match next {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_secs = pause.as_secs(), "reading the kept max-deliveries advisories failed; reading again");
                        break;
                    }
                };
                pause = Duration::from_secs(1);
                let settled = match serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
                    // Nothing this node can act on; kept out of the way.
                    Err(_) => true,
                    Ok(a) => match self.refuse_sequence(a.stream_seq, a.deliveries).await {
                        Ok(()) => true,
                        // Settled late by its node, or refused by another: nothing to do.
                        Err(Refusal::Gone) => true,
                        Err(Refusal::Failed(e)) => {
                            tracing::warn!(stream_seq = a.stream_seq, error = %e, "a message past max_deliver was not refused; trying again in 5 s");
                            false
                        }
                    },
                };
                let kind = if settled {
                    AckKind::Ack
                } else {
                    AckKind::Nak(Some(Duration::from_secs(5)))
                };
                if let Err(e) = advisory.ack_with(kind).await {
                    tracing::warn!(error = %e, "acknowledging a kept max-deliveries advisory failed; it comes again");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }

    async fn refuse_sequence(&self, seq: u64, deliveries: i64) -> Result<(), Refusal> {
        let failed = |e: &dyn std::fmt::Display| Refusal::Failed(e.to_string());
        let stream = self
            .js
            .get_stream(&self.cluster.input_stream)
            .await
            .map_err(|e| failed(&e))?;
        let message = stream.get_raw_message(seq).await.map_err(|e| {
            if e.kind() == RawMessageErrorKind::NoMessageFound {
                Refusal::Gone
            } else {
                failed(&e)
            }
        })?;
        let id = serde_json::from_slice::<Input>(&message.payload)
            .ok()
            .map(|i| i.id);
        let reason = format!(
            "delivered {deliveries} times (cluster.max_deliver) without being settled: the \
             nodes that took it crashed or stalled"
        );
        let payload = String::from_utf8_lossy(
            &message.payload[..message.payload.len().min(MAX_ECHOED_BYTES)],
        );
        let body = serde_json::to_vec(&Rejected {
            id: id.as_deref(),
            reason: &reason,
            delivered: deliveries,
            payload: &payload,
        })
        .map_err(|e| failed(&e))?;
        self.client
            .publish(self.cluster.rejected_subject.clone(), body.into())
            .await
            .map_err(|e| failed(&e))?;
        stream.delete_message(seq).await.map_err(|e| failed(&e))?;
        // Once refused for good: an attempt that fails above is tried again, and logged once.
        ClusterMessageRejected {
            id: id.as_deref(),
            reason: &reason,
            delivered: deliveries,
        }
        .emit(&self.cx.metrics);
        self.cx
            .metrics
            .cluster
            .messages(crate::telemetry::metrics::MessageOutcome::rejected, 1);
        Ok(())
    }
}

fn delivered(m: &jetstream::Message) -> i64 {
    m.info().map(|i| i.delivered).unwrap_or(1)
}
