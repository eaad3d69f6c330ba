//! Events of the JetStream source (`[cluster]`).

use std::time::Duration;

use super::InternalEvent;
use crate::telemetry::metrics::{MessageOutcome, Metrics};

/// One fetched batch settled: every message scored, rejected or left for redelivery.
pub struct ClusterBatchSettled {
    pub scored: usize,
    pub rejected: usize,
    pub retried: usize,
    /// Undelivered messages in the input stream, as the batch's last message reported.
    pub pending: Option<u64>,
    pub elapsed: Duration,
}

impl InternalEvent for ClusterBatchSettled {
    fn emit(self, metrics: &Metrics) {
        let m = &metrics.cluster;
        m.messages(MessageOutcome::scored, self.scored as u64);
        m.messages(MessageOutcome::rejected, self.rejected as u64);
        m.messages(MessageOutcome::retried, self.retried as u64);
        if let Some(p) = self.pending {
            m.pending.set(i64::try_from(p).unwrap_or(i64::MAX));
        }
        m.settle_seconds.observe(self.elapsed.as_secs_f64());
        // Hundreds of batches a second at full speed: the journal gets the exceptions (each
        // rejection and retry has its own line), the metrics get every batch.
        tracing::debug!(
            scored = self.scored,
            rejected = self.rejected,
            retried = self.retried,
            pending = self.pending,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "JetStream batch settled"
        );
    }
}

/// A message refused with its reason (published to the rejected subject, then acknowledged).
pub struct ClusterMessageRejected<'a> {
    pub id: Option<&'a str>,
    pub reason: &'a str,
    /// Its delivery count; a rejection on the last allowed delivery says so.
    pub delivered: i64,
}

impl InternalEvent for ClusterMessageRejected<'_> {
    fn emit(self, _metrics: &Metrics) {
        // Counted with its batch (ClusterBatchSettled), so a batch's counts add up.
        tracing::warn!(
            id = self.id.unwrap_or("-"),
            reason = self.reason,
            delivered = self.delivered,
            "JetStream message refused"
        );
    }
}

/// Messages left unacknowledged on purpose: delivered again after `ack_wait_secs`.
pub struct ClusterMessagesRetried<'a> {
    pub messages: usize,
    pub reason: &'a str,
}

impl InternalEvent for ClusterMessagesRetried<'_> {
    fn emit(self, _metrics: &Metrics) {
        // Counted with its batch (ClusterBatchSettled).
        tracing::warn!(
            messages = self.messages,
            reason = self.reason,
            "JetStream messages not settled; they will be delivered again"
        );
    }
}

/// The JetStream source connected (and checked the server's settings), or lost it.
pub struct ClusterConnection<'a> {
    pub url: &'a str,
    pub connected: bool,
    pub detail: &'a str,
}

impl InternalEvent for ClusterConnection<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.cluster.connected.set(i64::from(self.connected));
        if self.connected {
            tracing::info!(
                nats = self.url,
                detail = self.detail,
                "JetStream source consuming"
            );
        } else {
            tracing::warn!(
                nats = self.url,
                detail = self.detail,
                "JetStream source not consuming"
            );
        }
    }
}

/// This node took the training lease, or stopped holding it.
pub struct LeaseChanged<'a> {
    pub node: &'a str,
    pub held: bool,
    /// The fencing token of a lease taken.
    pub token: Option<u64>,
    pub holder: Option<&'a str>,
    pub reason: &'a str,
}

impl InternalEvent for LeaseChanged<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.cluster.lease_holder.set(i64::from(self.held));
        if let Some(t) = self.token {
            metrics
                .cluster
                .lease_token
                .set(i64::try_from(t).unwrap_or(i64::MAX));
        }
        if self.held {
            tracing::info!(
                node = self.node,
                token = self.token,
                reason = self.reason,
                "training lease held: this node trains and switches models"
            );
        } else {
            tracing::warn!(
                node = self.node,
                holder = self.holder,
                reason = self.reason,
                "training lease not held: this node trains and switches nothing"
            );
        }
    }
}

/// A follower swapped in the leader's champion, or could not.
pub struct ChampionFollowed<'a> {
    /// The version swapped in, if one was.
    pub version: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The error differs from the previous poll's.
    pub changed: bool,
}

impl InternalEvent for ChampionFollowed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .cluster
            .champion_synced
            .set(i64::from(self.error.is_none()));
        match (self.version, self.error) {
            (_, Some(error)) if self.changed => tracing::warn!(
                error,
                "the leader's champion is not served here; still serving the current model"
            ),
            (Some(version), None) => tracing::info!(version, "serving the leader's champion"),
            (None, None) if self.changed => {
                tracing::info!("the leader's champion is served here again")
            }
            _ => {}
        }
    }
}
