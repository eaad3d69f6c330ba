//! Metrics of this node's part in a cluster (`[cluster]`): input messages by outcome, the
//! shared consumer's backlog, the time from fetching a batch to acknowledging it.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MessageOutcome {
    /// Scored, its result stored in the output stream, acknowledged.
    scored,
    /// Published to the rejected subject with the reason, acknowledged.
    rejected,
    /// Left unacknowledged, so it is delivered again (to any node) after `ack_wait_secs`.
    retried,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    outcome: MessageOutcome,
}

pub struct ClusterMetrics {
    messages: [Counter; 3],
    /// Messages in the input stream not yet delivered to any node, as the last fetch saw it.
    pub pending: Gauge,
    /// 1 while this node's JetStream source is connected and consuming.
    pub connected: Gauge,
    pub settle_seconds: Histogram,
    /// 1 while this node holds the training lease.
    pub lease_holder: Gauge,
    /// The fencing token of the lease this node holds or last held.
    pub lease_token: Gauge,
    /// 0 while this follower cannot fetch, verify or swap in the leader's champion.
    pub champion_synced: Gauge,
    /// Drift observations this follower sent to the lease holder.
    pub observations_sent: Counter,
    /// Drift observations this lease holder took from followers.
    pub observations_received: Counter,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &mut Registry) -> ClusterMetrics {
        registered!(registry;
            messages: Family<MessageLabels, Counter> = ("sentiment_cluster_messages", "JetStream input messages this node settled, by outcome (scored, rejected, retried)"),
            pending: Gauge = ("sentiment_cluster_pending", "Input messages not yet delivered to any node (the shared consumer's lag), as this node last saw it"),
            connected: Gauge = ("sentiment_cluster_connected", "1 while this node's JetStream source is connected and consuming"),
            lease_holder: Gauge = ("sentiment_cluster_lease_holder", "1 while this node holds the training lease (trains and switches models); always 1 without [cluster]"),
            lease_token: Gauge = ("sentiment_cluster_lease_token", "Fencing token of the training lease this node holds or last held"),
            observations_sent: Counter = ("sentiment_cluster_observations_sent", "Drift observations this follower sent to the lease holder ([cluster] observation_share)"),
            observations_received: Counter = ("sentiment_cluster_observations_received", "Drift observations this lease holder took from followers for its drift checks"),
            champion_synced: Gauge = ("sentiment_cluster_champion_synced", "0 while this follower cannot fetch, verify or swap in the leader's champion model; 1 otherwise"),
        );
        // From 1 ms to ~65 s: one batch of the fast kind takes milliseconds, of the
        // transformer seconds, and `ack_wait_secs` bounds it.
        let settle_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
        );
        registry.register(
            "sentiment_cluster_settle_seconds",
            "Time from fetching a JetStream batch to acknowledging its messages",
            settle_seconds.clone(),
        );
        // In step until a follower's poll says otherwise.
        champion_synced.set(1);
        let messages = [
            MessageOutcome::scored,
            MessageOutcome::rejected,
            MessageOutcome::retried,
        ]
        .map(|outcome| messages.get_or_create(&MessageLabels { outcome }).clone());
        ClusterMetrics {
            messages,
            pending,
            connected,
            settle_seconds,
            lease_holder,
            lease_token,
            champion_synced,
            observations_sent,
            observations_received,
        }
    }

    pub fn messages(&self, outcome: MessageOutcome, n: u64) {
        self.messages[outcome as usize].inc_by(n);
    }

    pub fn messages_total(&self, outcome: MessageOutcome) -> u64 {
        self.messages[outcome as usize].get()
    }
}
