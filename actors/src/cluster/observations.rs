//! Drift is judged on all of a cluster's traffic: every follower sends a share of its
//! observations (`[cluster] observation_share`) to `observations_subject`, and the lease
//! holder puts the ones it receives beside its own, for its drift checks. Core NATS, not a
//! stream: an observation lost in a server restart only thins a sample.

use sentimentd_config::ClusterConfig;
use sentimentd_data::drift::Observation;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::lease::{Lease, Role};
use crate::serving::observations::{ObservationSink, Observed};
use crate::sources::jetstream::setup;
use crate::telemetry::metrics::Metrics;

/// Observations sent in one message at most.
const PER_MESSAGE: usize = 256;

#[derive(Serialize, Deserialize)]
struct Shared {
    model_version: String,
    observations: Vec<Observation>,
}

/// Sends this node's shared observations while it follows, and takes the others' while it
/// leads, until the process ends. Reconnects as the client does.
pub async fn exchange(
    url: String,
    cluster: ClusterConfig,
    lease: Lease,
    sink: Arc<ObservationSink>,
    metrics: Arc<Metrics>,
) {
    let subject = cluster.observations_subject.clone();
    loop {
        let subscribed = async {
            let client = setup::client(&url, &cluster)
                .await
                .map_err(|e| e.to_string())?;
            let incoming = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, incoming))
        };
        match subscribed.await {
            Ok((client, incoming)) => {
                relay(&client, incoming, &subject, &lease, &sink, &metrics).await;
                tracing::warn!(subject = %subject, "the cluster's observations subscription ended; subscribing again");
            }
            Err(e) => {
                tracing::warn!(error = %e, subject = %subject, "cannot exchange drift observations with the cluster; trying again in 5 s");
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Sends and takes observations until the subscription ends.
async fn relay(
    client: &async_nats::Client,
    mut incoming: async_nats::Subscriber,
    subject: &str,
    lease: &Lease,
    sink: &ObservationSink,
    metrics: &Metrics,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut outgoing = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                outgoing.clear();
                sink.drain_shared_into(&mut outgoing);
                if !matches!(lease.role(), Role::Follower { .. }) {
                    continue;
                }
                for shared in batches(&outgoing) {
                    let n = shared.observations.len() as u64;
                    let sent = match serde_json::to_vec(&shared) {
                        Ok(body) => client
                            .publish(subject.to_string(), body.into())
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match sent {
                        Ok(()) => {
                            metrics.cluster.observations_sent.inc_by(n);
                        }
                        Err(e) => tracing::debug!(error = %e, "drift observations not sent"),
                    }
                }
            }
            message = futures_util::StreamExt::next(&mut incoming) => {
                let Some(message) = message else { return };
                // Only the lease holder retrains, so only its drift checks need the others'.
                if !matches!(lease.role(), Role::Leader { .. }) {
                    continue;
                }
                let shared = match serde_json::from_slice::<Shared>(&message.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "a message on the observations subject is not observations");
                        continue;
                    }
                };
                let version: Arc<str> = Arc::from(shared.model_version.as_str());
                let n = shared.observations.len() as u64;
                for observation in shared.observations {
                    sink.push(Observed { model_version: version.clone(), observation });
                }
                metrics.cluster.observations_received.inc_by(n);
            }
        }
    }
}

/// `observed` grouped by model version, at most [`PER_MESSAGE`] to a message.
fn batches(observed: &[Observed]) -> Vec<Shared> {
    let mut out: Vec<Shared> = Vec::new();
    for o in observed {
        match out.last_mut() {
            Some(last)
                if *last.model_version == *o.model_version
                    && last.observations.len() < PER_MESSAGE =>
            {
                last.observations.push(o.observation.clone())
            }
            _ => out.push(Shared {
                model_version: o.model_version.to_string(),
                observations: vec![o.observation.clone()],
            }),
        }
    }
    out
}
