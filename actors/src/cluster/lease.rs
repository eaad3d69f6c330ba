//! The training lease: in a cluster exactly one node trains, retrains and switches models.
//!
//! The lease is a key in a JetStream KV bucket whose `max_age` is the lease's TTL. A node
//! takes it with `create` (refused while another holds it), renews it with `update` at the
//! revision it last wrote, every third of the TTL, and gives it back on shutdown with a
//! `delete` at that revision. A renewal that fails means another node may hold it: the node
//! steps down at once. The revision `create` returned is the fencing token: a candidate
//! trained under one token is never promoted under another, and a node whose last renewal is
//! older than the TTL (paused, partitioned) does nothing a holder does, even before it learns
//! it lost the lease.
//!
//! Without `[cluster]` a node is standalone: it always holds its own lease, token 0.

use async_nats::jetstream::{self, kv};
use sentimentd_config::ClusterConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sources::jetstream::setup;
use crate::telemetry::events::{InternalEvent, LeaseChanged};
use crate::telemetry::metrics::Metrics;

const KEY: &str = "trainer";

#[derive(Debug, Default)]
struct State {
    /// The token and when the lease was last renewed, while this node holds it.
    held: Option<(u64, Instant)>,
    /// Who holds the lease, as this node last read it.
    holder: Option<String>,
}

/// A node's view of the training lease, shared by the trainer, the registry and the API.
#[derive(Clone, Debug)]
pub struct Lease {
    /// `None`: standalone.
    cluster: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    node: String,
    ttl: Duration,
    state: Mutex<State>,
}

/// What this node may do, for `/model`, the status page and refusals.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    /// No `[cluster]`: this node decides alone.
    Standalone,
    /// Holds the lease: trains and switches models. `token` fences what it promotes.
    Leader { node: String, token: u64 },
    /// Another node (or nobody, for now) holds the lease.
    Follower {
        node: String,
        leader: Option<String>,
    },
}

impl Lease {
    pub fn standalone() -> Lease {
        Lease { cluster: None }
    }

    /// A lease for `node`, not held until [`keep`] takes it.
    pub fn clustered(node: String, ttl: Duration) -> Lease {
        Lease {
            cluster: Some(Arc::new(Shared {
                node,
                ttl,
                state: Mutex::new(State::default()),
            })),
        }
    }

    /// The fencing token, if this node holds the lease and renewed it within the TTL.
    pub fn token(&self) -> Option<u64> {
        let Some(c) = &self.cluster else {
            return Some(0);
        };
        let state = c.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .held
            .filter(|(_, renewed)| renewed.elapsed() < c.ttl)
            .map(|(token, _)| token)
    }

    /// Why this node may not train or switch models now; `None` if it may.
    pub fn refusal(&self) -> Option<String> {
        match self.role() {
            Role::Standalone | Role::Leader { .. } => None,
            Role::Follower { leader, .. } => Some(match leader {
                Some(l) => format!(
                    "this node does not hold the training lease ({l} does): train, promote \
                     and roll back there"
                ),
                None => {
                    "this node does not hold the training lease (no node holds it yet)".to_string()
                }
            }),
        }
    }

    pub fn role(&self) -> Role {
        let Some(c) = &self.cluster else {
            return Role::Standalone;
        };
        match self.token() {
            Some(token) => Role::Leader {
                node: c.node.clone(),
                token,
            },
            None => Role::Follower {
                node: c.node.clone(),
                leader: c
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .holder
                    .clone(),
            },
        }
    }

    fn set(&self, held: Option<(u64, Instant)>, holder: Option<String>) {
        if let Some(c) = &self.cluster {
            let mut state = c.state.lock().unwrap_or_else(|p| p.into_inner());
            state.held = held;
            state.holder = holder;
        }
    }
}

/// Takes, renews and finally releases the lease until `stop` says so. Runs on the daemon's
/// runtime; an unreachable server is tried again every third of the TTL.
pub async fn keep(
    lease: Lease,
    url: String,
    cluster: ClusterConfig,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(shared) = lease.cluster.clone() else {
        return;
    };
    let every = shared.ttl / 3;
    let mut store: Option<kv::Store> = None;
    let mut revision: Option<u64> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if store.is_none() {
            store = open(&url, &cluster).await;
        }
        if let Some(kv) = &store {
            revision = step(&lease, &shared, kv, revision, &metrics).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // A dropped sender (the start failed) stops the keeper as a sent `true` does.
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    if let (Some(kv), Some(rev)) = (&store, revision) {
        // Given back, so another node takes over now rather than after the TTL.
        let released = kv.delete_expect_revision(KEY, Some(rev)).await.is_ok();
        let reason = if released {
            "released on shutdown"
        } else {
            "shutdown; the lease expires after its TTL"
        };
        step_down(&lease, &shared, &metrics, reason);
    }
}

fn step_down(lease: &Lease, shared: &Shared, metrics: &Metrics, reason: &str) {
    lease.set(None, None);
    LeaseChanged {
        node: &shared.node,
        held: false,
        token: None,
        holder: None,
        reason,
    }
    .emit(metrics);
}

async fn open(url: &str, cluster: &ClusterConfig) -> Option<kv::Store> {
    let opened = async {
        let client = setup::client(url, cluster).await?;
        setup::lease_bucket(&jetstream::new(client), cluster).await
    };
    match opened.await {
        Ok(kv) => Some(kv),
        Err(e) => {
            tracing::warn!(nats = url, error = %e, bucket = %cluster.lease_bucket, "training lease bucket not reachable; trying again");
            None
        }
    }
}

/// One renewal, or one attempt to take the lease; returns the revision now held.
async fn step(
    lease: &Lease,
    shared: &Shared,
    kv: &kv::Store,
    revision: Option<u64>,
    metrics: &Metrics,
) -> Option<u64> {
    let node = shared.node.as_bytes().to_vec();
    // The server's max_age runs from when it stores the write, which is after this: counting
    // from before the request keeps this node's view of the lease shorter than the server's.
    let sent = Instant::now();
    if let Some(rev) = revision {
        match kv.update(KEY, node.into(), rev).await {
            Ok(next) => {
                let token = lease.token_held();
                lease.set(token.map(|t| (t, sent)), Some(shared.node.clone()));
                return Some(next);
            }
            Err(e) => {
                let reason = format!("renewal failed ({e}); stepping down, promoting nothing");
                step_down(lease, shared, metrics, &reason);
                return None;
            }
        }
    }
    match kv.create(KEY, node.into()).await {
        Ok(token) => {
            lease.set(Some((token, sent)), Some(shared.node.clone()));
            LeaseChanged {
                node: &shared.node,
                held: true,
                token: Some(token),
                holder: Some(&shared.node),
                reason: "taken",
            }
            .emit(metrics);
            Some(token)
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let holder = match kv.get(KEY).await {
                Ok(Some(v)) => Some(String::from_utf8_lossy(&v).to_string()),
                _ => None,
            };
            lease.set(None, holder);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "training lease not taken; trying again");
            None
        }
    }
}

impl Lease {
    /// The token of the lease held, however old its renewal.
    fn token_held(&self) -> Option<u64> {
        let c = self.cluster.as_ref()?;
        let state = c.state.lock().unwrap_or_else(|p| p.into_inner());
        state.held.map(|(t, _)| t)
    }
}
