//! Input messages from a NATS JetStream work queue shared by every node of a cluster.
//!
//! Each node pulls from one durable consumer (work-queue retention: a message goes to one
//! node), scores a fetched batch through the scorer, publishes each result to the output
//! stream with the input's id as `Nats-Msg-Id`, waits until the server stored it, and only
//! then acknowledges the input (double ack). A node killed anywhere in between leaves the
//! input unacknowledged: it is delivered again after `ack_wait`, and the output stream drops
//! the second result as a duplicate. A malformed message is published to the rejected subject
//! with its reason, then acknowledged.

use async_nats::jetstream::{self, consumer, stream};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::sources::{Source, SourceContext, SourceHandle};
use crate::telemetry::metrics::Channel;

/// One input message.
#[derive(Deserialize)]
struct Input {
    id: String,
    text: String,
    #[serde(default)]
    source: Option<String>,
}

/// One result, on the output subject.
#[derive(Serialize)]
struct Output<'a> {
    id: &'a str,
    label: &'static str,
    score: f32,
    /// Negative, neutral, positive.
    probabilities: [f32; 3],
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

/// A refused message, on the rejected subject.
#[derive(Serialize)]
struct Rejected<'a> {
    id: Option<&'a str>,
    reason: &'a str,
}

pub struct JetStreamSource {
    url: String,
}

impl JetStreamSource {
    pub fn new(url: String) -> JetStreamSource {
        JetStreamSource { url }
    }
}

impl Source for JetStreamSource {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    fn start(self: Box<Self>, cx: SourceContext) -> SourceHandle {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let url = self.url.clone();
        actix::Arbiter::current().spawn(async move {
            if let Err(e) = run(&url, cx, stop_rx).await {
                tracing::error!(nats = %url, error = %e, "the JetStream source stopped");
            }
        });
        SourceHandle::with_stop("jetstream", move || {
            let _ = stop_tx.send(true);
        })
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run(
    url: &str,
    cx: SourceContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    let cfg = cx.config.borrow().clone();
    let c = &cfg.cluster;
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let window = Duration::from_secs(c.duplicate_window_secs);
    let input = js
        .get_or_create_stream(stream::Config {
            name: c.input_stream.clone(),
            subjects: vec![c.input_subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: window,
            ..Default::default()
        })
        .await?;
    let output = js
        .get_or_create_stream(stream::Config {
            name: c.output_stream.clone(),
            subjects: vec![c.output_subject.clone()],
            duplicate_window: window,
            ..Default::default()
        })
        .await?;
    // An older server ignores settings it does not know instead of refusing them: what it
    // echoes back is what runs.
    for (what, info) in [
        ("input", input.cached_info()),
        ("output", output.cached_info()),
    ] {
        if info.config.duplicate_window != window {
            return Err(format!(
                "the {what} stream {} has duplicate_window {:?}, not the configured {window:?} \
                 (an existing stream keeps its settings: update or delete it)",
                info.config.name, info.config.duplicate_window
            )
            .into());
        }
    }
    if input.cached_info().config.retention != stream::RetentionPolicy::WorkQueue {
        return Err(format!(
            "the input stream {} is not a work queue, so every node would score every message",
            c.input_stream
        )
        .into());
    }
    let ack_wait = Duration::from_secs(c.ack_wait_secs);
    let consumer: consumer::PullConsumer = input
        .get_or_create_consumer(
            &c.consumer,
            consumer::pull::Config {
                durable_name: Some(c.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: c.max_deliver,
                ..Default::default()
            },
        )
        .await?;
    let mut consumer = consumer;
    // What the server runs with, which may differ from what was asked (see above).
    let echoed = consumer.info().await?.config.clone();
    if echoed.ack_wait != ack_wait || echoed.max_deliver != c.max_deliver {
        return Err(format!(
            "the consumer {} runs with ack_wait {:?} and max_deliver {}, not the configured \
             {ack_wait:?} and {}",
            c.consumer, echoed.ack_wait, echoed.max_deliver, c.max_deliver
        )
        .into());
    }
    tracing::info!(nats = url, stream = %c.input_stream, consumer = %c.consumer, "JetStream source consuming");
    loop {
        if *stop.borrow() || cx.shutdown.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fetched = consumer
            .fetch()
            .max_messages(c.batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match fetched {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "JetStream fetch failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let mut messages = Vec::new();
        while let Some(m) = futures_util::StreamExt::next(&mut batch).await {
            match m {
                Ok(m) => messages.push(m),
                Err(e) => tracing::warn!(error = %e, "JetStream message not received"),
            }
        }
        if messages.is_empty() {
            continue;
        }
        handle(&js, &client, &cx, c, messages).await;
    }
}

/// Scores one fetched batch and settles every message of it.
async fn handle(
    js: &jetstream::Context,
    client: &async_nats::Client,
    cx: &SourceContext,
    c: &sentimentd_config::ClusterConfig,
    messages: Vec<jetstream::Message>,
) {
    let mut good = Vec::new();
    for m in messages {
        match serde_json::from_slice::<Input>(&m.payload) {
            Ok(input) if !input.text.trim().is_empty() && !input.id.is_empty() => {
                good.push((m, input))
            }
            Ok(input) => reject(client, c, &m, Some(&input.id), "empty id or text").await,
            Err(e) => {
                let reason = format!("not a JSON object {{\"id\", \"text\", \"source\"?}}: {e}");
                reject(client, c, &m, None, &reason).await
            }
        }
    }
    if good.is_empty() {
        return;
    }
    let texts: Arc<Vec<String>> = Arc::new(good.iter().map(|(_, i)| i.text.clone()).collect());
    let scored = match cx.scorer.score_chunk(texts).await {
        Ok(s) => s,
        Err(e) => {
            // Left unacknowledged: delivered again after ack_wait, to this node or another.
            tracing::warn!(error = %e, messages = good.len(), "JetStream batch not scored; it will be delivered again");
            return;
        }
    };
    // Every result is published first and the stores are awaited together, then the inputs
    // are acknowledged together: one round trip per batch, not two per message.
    let mut published = Vec::new();
    for ((m, input), result) in good.iter().zip(scored.results) {
        let p = match result {
            Ok(p) => p,
            Err(reason) => {
                reject(client, c, m, Some(&input.id), &reason).await;
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
        };
        let Ok(payload) = serde_json::to_vec(&body) else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, input.id.as_str());
        match js
            .publish_with_headers(c.output_subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => published.push((m, input, p.label, ack)),
            Err(e) => {
                tracing::warn!(id = %input.id, error = %e, "result not published; the message will be delivered again")
            }
        }
    }
    let stored = futures_util::future::join_all(
        published
            .into_iter()
            .map(|(m, input, label, ack)| async move { (m, input, label, ack.await) }),
    )
    .await;
    let mut to_ack = Vec::new();
    for (m, input, label, result) in stored {
        match result {
            Ok(_) => {
                cx.reputation
                    .record(Channel::batch, input.source.as_deref(), [label]);
                to_ack.push((m, input));
            }
            Err(e) => {
                tracing::warn!(id = %input.id, error = %e, "result not stored; the message will be delivered again")
            }
        }
    }
    let acked = futures_util::future::join_all(to_ack.iter().map(|(m, _)| m.double_ack())).await;
    for ((_, input), result) in to_ack.iter().zip(acked) {
        if let Err(e) = result {
            // The result is stored; a redelivery is dropped as a duplicate.
            tracing::warn!(id = %input.id, error = %e, "JetStream ack failed");
        }
    }
}

/// Publishes a refused message's reason, then acknowledges it.
async fn reject(
    client: &async_nats::Client,
    c: &sentimentd_config::ClusterConfig,
    m: &jetstream::Message,
    id: Option<&str>,
    reason: &str,
) {
    tracing::warn!(id = id.unwrap_or("-"), reason, "JetStream message refused");
    if let Ok(body) = serde_json::to_vec(&Rejected { id, reason }) {
        let _ = client
            .publish(c.rejected_subject.clone(), body.into())
            .await;
    }
    if let Err(e) = m.double_ack().await {
        tracing::warn!(error = %e, "JetStream ack of a refused message failed");
    }
}
