//! Operational events, grouped by domain. Each is a small struct whose `emit` writes its one
//! journal line and updates its metrics together (Vector's `internal_events` pattern), so a
//! log line and its counter can never disagree, and handlers stay free of logging noise.

mod cluster;
mod feedback;
mod ingest;
mod mlops;
mod reputation;

pub use cluster::*;
pub use feedback::*;
pub use ingest::*;
pub use mlops::*;
pub use reputation::*;

use crate::telemetry::metrics::{BatchOutcome, Metrics, RecentBatch};

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl RecentBatch {
    /// A file that produced no output.
    fn unread(file: &str, outcome: BatchOutcome, why: &str) -> RecentBatch {
        RecentBatch {
            file: file.to_string(),
            outcome,
            rows: 0,
            scored: 0,
            rejected: 0,
            detail: why.to_string(),
            finished_at: now_rfc3339(),
        }
    }
}

pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}
