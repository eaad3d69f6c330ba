//! Input messages from a NATS JetStream work queue shared by every node of a cluster.
//!
//! Each node pulls from one durable consumer (work-queue retention: a message goes to one
//! node), scores a fetched batch through the scorer, publishes each result to the output
//! stream with the input's id as `Nats-Msg-Id`, waits until the server stored it, and only
//! then acknowledges the input (double ack). A node killed anywhere in between leaves the
//! input unacknowledged: it is delivered again after `ack_wait`, and the output stream drops
//! the second result as a duplicate. A malformed message is published to the rejected subject
//! with its reason, then acknowledged.
//!
//! `setup` connects and checks the server's settings, `settle` handles one batch, `wire` is
//! the JSON on the subjects.

pub mod publish;
mod settle;
pub mod setup;
pub mod wire;

use async_nats::jetstream::{self, consumer};
use sentimentd_config::{ClusterConfig, Config};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::sources::{Source, SourceContext, SourceHandle};
use crate::telemetry::events::{ClusterConnection, InternalEvent};
use settle::Settler;
use setup::SetupError;

/// Batches a node holds at once: one being scored while the next is fetched and settled.
const LANES: usize = 2;
/// How long an idle node's pull waits for the first message before asking again.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Pulls failing in a row before the consumer is set up again (it may have been deleted).
const MAX_PULL_FAILURES: u32 = 5;

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

    /// A server that runs other settings than the configured ones stops the start, naming
    /// the setting. An unreachable one does not: the node serves HTTP and the folder and the
    /// source keeps trying, since a cluster outlives any one restart of its server.
    fn prepare(&mut self, cfg: &Config) -> Result<(), String> {
        let url = self.url.clone();
        let cluster = cfg.cluster.clone();
        // The daemon's own runtime is not running yet, and a client belongs to the runtime
        // that made it: the check runs on a private one and its connection is dropped.
        let checked = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SetupError::Unreachable(e.to_string()))?;
            rt.block_on(async {
                match tokio::time::timeout(Duration::from_secs(15), setup::connect(&url, &cluster))
                    .await
                {
                    Ok(r) => r.map(drop),
                    Err(_) => Err(SetupError::Unreachable(format!(
                        "{url} did not answer within 15 s"
                    ))),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(SetupError::Unreachable("the check panicked".into())));
        match checked {
            Ok(()) => Ok(()),
            Err(SetupError::Refused(why)) => Err(format!("[cluster] {why}")),
            Err(SetupError::Unreachable(why)) => {
                tracing::warn!(nats = %self.url, error = %why, "NATS is not reachable at start; the JetStream source keeps trying");
                Ok(())
            }
        }
    }

    fn start(self: Box<Self>, cx: SourceContext) -> SourceHandle {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let url = self.url.clone();
        actix::Arbiter::current().spawn(async move {
            run(&url, cx, stop_rx).await;
        });
        SourceHandle::with_stop("jetstream", move || {
            let _ = stop_tx.send(true);
        })
    }
}

/// Connects (again and again while the server is unreachable), then consumes until stopped;
/// a consumer whose pulls keep failing (deleted, JetStream restarting) is set up again.
async fn run(url: &str, cx: SourceContext, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cluster = Arc::new(cx.config.borrow().cluster.clone());
    let mut backoff = Duration::from_millis(500);
    loop {
        if stopping(&stop, &cx) {
            return;
        }
        let link = match setup::connect(url, &cluster).await {
            Ok(link) => link,
            Err(SetupError::Refused(why)) => {
                // Only reached if the server's settings changed since the start's check.
                ClusterConnection {
                    url,
                    connected: false,
                    detail: &format!("stopped: {why}"),
                }
                .emit(&cx.metrics);
                return;
            }
            Err(SetupError::Unreachable(why)) => {
                ClusterConnection {
                    url,
                    connected: false,
                    detail: &format!("{why}; trying again in {} s", backoff.as_secs_f32()),
                }
                .emit(&cx.metrics);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        ClusterConnection {
            url,
            connected: true,
            detail: &format!(
                "stream {}, consumer {}",
                cluster.input_stream, cluster.consumer
            ),
        }
        .emit(&cx.metrics);
        let settler = Settler {
            js: link.js.clone(),
            client: link.client.clone(),
            cluster: cluster.clone(),
            cx: cx.clone(),
        };
        // Lives as long as this connection's consumer: a set-up-again consumer gets its own.
        let given_up = link.given_up.clone().map(|advisories| {
            let settler = settler.clone();
            tokio::task::spawn_local(async move { settler.refuse_given_up(advisories).await })
        });
        let failing = consume(&link.consumer, &settler, &cluster, &mut stop).await;
        if let Some(task) = given_up {
            task.abort();
        }
        ClusterConnection {
            url,
            connected: false,
            detail: &failing.unwrap_or_else(|| "stopped on shutdown".into()),
        }
        .emit(&cx.metrics);
    }
}

fn stopping(stop: &tokio::sync::watch::Receiver<bool>, cx: &SourceContext) -> bool {
    *stop.borrow() || cx.shutdown.stopping.load(Ordering::SeqCst)
}

/// Fetches batches and settles each on its own task, at most [`LANES`] at once, so the next
/// batch is on its way while one is scored. On stop, what is in hand is settled first.
/// Returns why it gave up when pulls keep failing; `None` when stopped.
async fn consume(
    consumer: &consumer::PullConsumer,
    settler: &Settler,
    cluster: &ClusterConfig,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    // Nothing is pulled before a model serves: a batch that cannot be scored waits out
    // `ack_wait` before it comes again, and loading a trained model takes a moment at start.
    while settler.cx.scorer.cell().load().is_none() {
        if stopping(stop, &settler.cx) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lanes = Arc::new(tokio::sync::Semaphore::new(LANES));
    let mut idle = false;
    let mut failures = 0;
    let mut gave_up = None;
    while !stopping(stop, &settler.cx) {
        let Ok(lane) = lanes.clone().acquire_owned().await else {
            break;
        };
        let fetched = tokio::select! {
            m = fetch(consumer, cluster.batch, idle) => m,
            _ = stop.changed() => break,
        };
        let messages = match fetched {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "JetStream pull failed");
                if failures >= MAX_PULL_FAILURES {
                    gave_up = Some(format!(
                        "{failures} pulls failed in a row ({e}); setting up again"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        idle = messages.is_empty();
        if idle {
            continue;
        }
        let fetched = Instant::now();
        let settler = settler.clone();
        actix::Arbiter::current().spawn(async move {
            settler.settle(messages, fetched).await;
            drop(lane);
        });
    }
    // The drain: every lane back means every batch in hand is settled.
    let _ = lanes.acquire_many(LANES as u32).await;
    gave_up
}

/// Up to `batch` messages, at once. An idle node instead waits (up to [`IDLE_WAIT`]) for the
/// first message to arrive, so it neither spins nor lags.
async fn fetch(
    consumer: &consumer::PullConsumer,
    batch: usize,
    idle: bool,
) -> Result<Vec<jetstream::Message>, String> {
    let request = if idle {
        consumer
            .batch()
            .max_messages(1)
            .expires(IDLE_WAIT)
            .messages()
            .await
    } else {
        consumer
            .fetch()
            .max_messages(batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await
    };
    let mut batch_stream = request.map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    let mut failed = None;
    while let Some(m) = futures_util::StreamExt::next(&mut batch_stream).await {
        match m {
            Ok(m) => messages.push(m),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    match failed {
        // What arrived is settled; the failure shows on the next pull if it lasts.
        Some(e) if messages.is_empty() => Err(e),
        _ => Ok(messages),
    }
}
