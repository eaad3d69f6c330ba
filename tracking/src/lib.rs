//! Experiment tracking without actix: the run record, the local run log every record lands in
//! first, a blocking client for MLflow's REST API 2.0, and the retry queue that forwards
//! records to MLflow while it comes and goes.
//!
//! The local log is the record of truth (it is written before anything touches the network);
//! MLflow is a mirror that may lag. Forwarding is idempotent: every MLflow run carries the tag
//! `sentimentd.run_id`, so a record retried after a half-finished attempt finds and completes
//! its run instead of creating a second one.

use std::path::{Path, PathBuf};

mod local;
mod mlflow;
mod mlflow_api;
mod record;
pub mod records;
pub mod report;
mod sink;

pub use local::*;
pub use mlflow::*;
pub use record::*;
pub use sink::*;

/// File names inside the run log directory.
pub const RUNS_FILE: &str = "runs.jsonl";
pub const ARTIFACTS_DIR: &str = "artifacts";
pub const PENDING_FILE: &str = "mlflow-pending.jsonl";
/// Records MLflow refused or kept answering wrongly, with the last error: kept for an operator
/// to inspect or replay, out of the way of the records behind them.
pub const DEAD_LETTER_FILE: &str = "mlflow-dead-letter.jsonl";
const PENDING_LOCK_FILE: &str = "mlflow-pending.lock";

/// Tag on every MLflow run naming the local record it mirrors; the key of idempotent retries.
pub const RUN_ID_TAG: &str = "sentimentd.run_id";
pub const KIND_TAG: &str = "sentimentd.kind";
pub const ERROR_TAG: &str = "sentimentd.error";
/// Tag on a registered model version naming the model store version it is.
pub const VERSION_TAG: &str = "sentimentd.version";
/// Tag of a registry version: the training lease's fencing token it was promoted under.
pub const FENCING_TAG: &str = "sentimentd.fencing_token";
/// The alias the serving version carries in the model registry.
pub const CHAMPION_ALIAS: &str = "champion";
/// Artifact folder of a run that holds a registered model version's files.
pub const MODEL_ARTIFACT_PATH: &str = "model";

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run record {run_id}: cannot encode as JSON: {source}")]
    Encode {
        run_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid run record: {0}")]
    InvalidRecord(String),
    /// The server could not be reached or did not answer in time.
    #[error("MLflow {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// The server answered with an error status.
    #[error("MLflow {endpoint}: HTTP {status} {error_code}: {message}")]
    Server {
        endpoint: String,
        status: u16,
        error_code: String,
        message: String,
    },
    /// The server answered 2xx with a body this client does not understand.
    #[error("MLflow {endpoint}: unexpected response: {message}")]
    Protocol { endpoint: String, message: String },
    /// The server is set up in a way this client cannot work with.
    #[error("MLflow: {0}")]
    Unsupported(String),
}

impl TrackingError {
    fn io(path: &Path, source: std::io::Error) -> TrackingError {
        TrackingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the server answered (an error status, or a 2xx body that is not its JSON):
    /// it is up, so repeating the same failure says something about the record.
    pub fn server_answered(&self) -> bool {
        matches!(
            self,
            TrackingError::Server { .. } | TrackingError::Protocol { .. }
        )
    }

    /// Whether trying the same request later may succeed. A 4xx means the request itself is
    /// wrong, so repeating it would block the queue forever.
    pub fn is_retryable(&self) -> bool {
        match self {
            TrackingError::Transport { .. } | TrackingError::Protocol { .. } => true,
            TrackingError::Server { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            TrackingError::Io { .. }
            | TrackingError::Encode { .. }
            | TrackingError::InvalidRecord(_)
            | TrackingError::Unsupported(_) => false,
        }
    }
}

#[cfg(test)]
mod tests;
