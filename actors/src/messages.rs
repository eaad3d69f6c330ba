//! Every message the actors exchange. Actors talk only through these types; none reaches
//! into another's state.

use actix::Message;
use sentimentd_data::drift::{Baseline, DriftReport};
use sentimentd_model::{Classifier, Manifest, Prediction};
use std::path::PathBuf;
use std::sync::Arc;

use crate::runtime::containment::Panicked;
use sentimentd_tracking::{RunRecord, TrackingError};

/// BatchProcessor -> Inference: score `texts[start..end]`.
///
/// The texts are shared by `Arc` so splitting a file into chunks copies no strings.
#[derive(Message)]
#[rtype(result = "Result<ScoredChunk, InferenceError>")]
pub struct ScoreChunk {
    pub texts: Arc<Vec<String>>,
    pub start: usize,
    pub end: usize,
}

/// One result per text of the chunk, in order. A text the model panicked on gets `Err` so
/// the batch processor can reject that row alone.
pub struct ScoredChunk {
    pub start: usize,
    pub model_version: Arc<str>,
    pub results: Vec<Result<Prediction, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("no model is loaded yet")]
    NoModel,
    #[error("chunk {start}..{end} is out of range for {len} texts")]
    BadRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// HTTP -> Batcher: score these texts together with other requests' texts.
#[derive(Message)]
#[rtype(result = "Result<ScoredChunk, BatchError>")]
pub struct Enqueue {
    pub texts: Vec<String>,
}

/// Why a batched request got no predictions; one failure answers every request of a chunk.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BatchError {
    #[error("no model is loaded yet")]
    NoModel,
    #[error("{0}")]
    Failed(String),
}

/// Trainer thread / admin -> ModelRegistry: serve this model from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SwapModel {
    pub classifier: Arc<dyn Classifier>,
    pub manifest: Option<Manifest>,
}

/// Trainer thread -> ModelRegistry: background training ended without a model.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainingFailed {
    pub error: String,
}

/// Trainer thread -> ModelRegistry: first-start training was not needed after all (in a
/// cluster, the leader's champion arrived while this node waited for the lease).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainingSkipped {
    pub reason: String,
}

/// notify's callback thread -> FolderWatcher.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FsEvent(pub notify::Result<notify::Event>);

/// FolderWatcher -> BatchProcessor: this inbox file is complete (claim and process it), or
/// this claimed file in the processing folder is due (resume or retry it).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct FileReady {
    pub path: PathBuf,
    /// Where to report how it went.
    pub done: actix::Recipient<FileDone>,
}

/// BatchProcessor -> FolderWatcher: what became of a [`FileReady`].
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct FileDone {
    /// The path of the `FileReady`.
    pub path: PathBuf,
    pub outcome: FileOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// Processed, rejected, refused, quarantined, or gone: nothing more to do.
    Finished,
    /// Failed for a reason other than its content: offer `path` (the claimed file, or the
    /// inbox file if the claim itself failed) again after `after`.
    Retry {
        path: PathBuf,
        after: std::time::Duration,
    },
    /// Shutdown came first; the next start resumes it.
    Interrupted,
}

/// Shutdown -> FolderWatcher: take no new files.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIntake;

/// ModelRegistry -> Baseliner: this model serves now; make sure its drift baseline exists
/// (load it from the version directory, or compute and store it) and hand it to drift checks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ModelServing {
    pub classifier: Arc<dyn Classifier>,
    pub manifest: Option<Manifest>,
    /// Texts the baseline takes in besides the reference data: after a drift-driven promotion,
    /// the recent labelled texts the new model was trained and gated for, so the shift it
    /// answered stops alarming.
    pub extra_reference: Vec<String>,
}

/// Baseliner -> DriftMonitor: the baseline of the serving version.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BaselineReady {
    pub model_version: String,
    /// `None` when no baseline could be built: checks report that instead of comparing the
    /// new model's traffic with the previous model's baseline.
    pub baseline: Option<Arc<Baseline>>,
}

/// DriftMonitor -> Trainer: a drift check fired.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DriftDetected {
    pub report: Arc<DriftReport>,
}

/// Why a retrain was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrainTrigger {
    Drift,
    Admin,
}

impl RetrainTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            RetrainTrigger::Drift => "drift",
            RetrainTrigger::Admin => "admin",
        }
    }
}

/// Admin API -> Trainer: retrain now (cooldown does not apply; the labelled-row minimum does).
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Retrain {
    pub trigger: RetrainTrigger,
}

/// Trainer thread -> Trainer: the background run ended (whatever its outcome).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetrainFinished {
    pub outcome: &'static str,
}

/// Trainer -> ModelRegistry: a candidate passed the gate; make it current and serve it.
#[derive(Message)]
#[rtype(result = "Result<Switched, String>")]
pub struct PromoteCandidate {
    pub version: String,
    pub reason: String,
    /// The serving version the gate compared the candidate with; if another model serves by
    /// now (an admin promotion, a rollback), the promotion is refused.
    pub against: String,
    pub extra_reference: Vec<String>,
    /// The training lease's fencing token when the retrain started (0 standalone): a
    /// candidate is promoted only while this node still holds that same lease.
    pub fencing: Option<u64>,
}

/// Admin API / CLI -> ModelRegistry: serve this stored version (`action` is `promote`).
#[derive(Message)]
#[rtype(result = "Result<Switched, String>")]
pub struct PromoteVersion {
    pub version: String,
    pub reason: String,
    /// Serve it even if the gate rejected it.
    pub force: bool,
}

/// Admin API -> ModelRegistry: put the previously served version back.
#[derive(Message)]
#[rtype(result = "Result<Switched, String>")]
pub struct Rollback {
    pub reason: String,
}

/// A change of the serving version.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Switched {
    #[schema(required = true)]
    pub from: Option<String>,
    pub to: String,
}

/// Trainer, DriftMonitor, ModelRegistry, CLI -> Tracker: record this run. The reply comes
/// once the record is durable in the local run log; MLflow forwarding happens afterwards.
#[derive(Message)]
#[rtype(result = "Result<(), TrackError>")]
pub struct Track(pub RunRecord);

/// ModelRegistry -> Tracker: model store `version` (trained by local run `run_id`, files in
/// `model_dir`) now serves. With MLflow configured, its small files are logged to that run,
/// registered as a model version and given the alias `champion`; without, nothing happens.
#[derive(Message)]
#[rtype(result = "Result<(), TrackError>")]
pub struct RegisterChampion {
    pub version: String,
    pub run_id: String,
    pub model_dir: PathBuf,
    /// The training lease's fencing token it was promoted under (0 standalone); tagged on
    /// the registry version.
    pub fencing: Option<u64>,
}

/// ChampionFollower -> ModelRegistry: serve `version`, installed from the leader's
/// `champion` in MLflow. Not refused for lack of the lease: followers follow.
#[derive(Message)]
#[rtype(result = "Result<Switched, String>")]
pub struct FollowChampion {
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// serve -> FolderWatcher, BatchProcessor, DriftMonitor, Trainer: the config after a reload
/// (SIGHUP), with only the keys a running daemon may change taken from the file.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Arc<sentimentd_config::Config>);
