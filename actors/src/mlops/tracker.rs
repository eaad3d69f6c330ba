//! Tracker: records every training run, evaluation, drift check and promotion decision in the
//! local run log, and mirrors them to MLflow when `[tracking] mlflow_uri` is set.
//!
//! Threading: the actor runs in a plain `Context` and does only the local, bounded work (an
//! fsync'ed append, a directory listing) so its reply can say whether the record is durable.
//! All HTTP happens on one dedicated `std::thread` fed by a channel. Not a `SyncArbiter`
//! because the worker must also wake on its own to retry a backlog after a backoff delay
//! (`recv_timeout` gives that for free; a `SyncContext` has no timers), and because a single
//! owner of the retry queue keeps records in order without any locking between threads. A
//! server that is down therefore never delays a message to this actor, let alone its sender.

use actix::{Actor, Context, Handler};
use sentimentd_config::{Config, TrackingConfig};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::runtime::containment::Containment;
use crate::telemetry::events::{InternalEvent, TrackingRecordDropped};
use crate::telemetry::metrics::Metrics;
use sentimentd_tracking::{
    DEAD_LETTER_FILE, LocalRunLog, MlflowClient, MlflowOp, MlflowSink, TrackingError,
};

use crate::messages::{RegisterChampion, Track, TrackError};

/// Tag of a registry version: the training lease's fencing token it was promoted under.
pub use sentimentd_tracking::FENCING_TAG;

/// How often an idle worker re-reads the pending file (another process may have queued).
const IDLE_RESCAN: Duration = Duration::from_secs(60);
/// Pause after a contained panic, so a record that always panics cannot spin the thread.
const PANIC_COOLDOWN: Duration = Duration::from_secs(5);

pub struct Tracker {
    log: LocalRunLog,
    /// `[tracking] keep_runs`.
    keep_runs: usize,
    /// `None` without MLflow. Dropping the sender ends the worker thread.
    mlflow: Option<mpsc::Sender<MlflowOp>>,
    containment: Containment,
}

impl Tracker {
    /// Run log in `<state_dir>/runs`; an MLflow worker when `[tracking] mlflow_uri` is set.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Tracker, TrackingError> {
        Tracker::with_dir(&cfg.tracking, cfg.paths.runs(), metrics)
    }

    pub fn with_dir(
        tracking: &TrackingConfig,
        runs_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Tracker, TrackingError> {
        let log = LocalRunLog::open(runs_dir)?;
        let containment = Containment::new("tracker", metrics.clone());
        let mlflow = match tracking
            .mlflow_uri
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(uri) => {
                let sink = MlflowSink::open(
                    MlflowClient::new(uri),
                    &tracking.experiment,
                    &tracking.registered_model,
                    log.dir(),
                )?
                .with_max_attempts(tracking.record_max_attempts);
                let (tx, rx) = mpsc::channel();
                let worker_containment = containment.clone();
                let worker_metrics = metrics.clone();
                std::thread::Builder::new()
                    .name("tracker-mlflow".to_string())
                    .spawn(move || worker(sink, rx, worker_containment, worker_metrics))
                    .map_err(|e| TrackingError::Io {
                        path: log.dir().to_path_buf(),
                        source: e,
                    })?;
                tracing::info!(
                    mlflow_uri = uri,
                    experiment = %tracking.experiment,
                    registered_model = %tracking.registered_model,
                    runs = %log.dir().display(),
                    "run tracking: local run log and MLflow"
                );
                Some(tx)
            }
            None => {
                tracing::info!(runs = %log.dir().display(), "run tracking: local run log only");
                None
            }
        };
        Ok(Tracker {
            log,
            keep_runs: tracking.keep_runs,
            mlflow,
            containment,
        })
    }

    pub fn run_log(&self) -> &LocalRunLog {
        &self.log
    }

    fn forward(&self, op: MlflowOp) {
        if let Some(tx) = &self.mlflow
            && tx.send(op).is_err()
        {
            // Only if the worker thread is gone, which containment should make impossible.
            tracing::error!(
                "MLflow worker thread has stopped; record kept in the local run log only"
            );
        }
    }
}

impl Actor for Tracker {
    type Context = Context<Self>;
}

impl Handler<Track> for Tracker {
    type Result = Result<(), TrackError>;

    fn handle(&mut self, msg: Track, _: &mut Context<Self>) -> Self::Result {
        let record = msg.0;
        let stored = self.containment.run(|| self.log.store(&record))??;
        let has_artifacts = !stored.artifacts.is_empty();
        tracing::info!(
            run_id = %stored.run_id,
            kind = stored.kind.as_str(),
            name = %stored.name,
            status = ?stored.status,
            error = stored.error.as_deref().unwrap_or(""),
            "run recorded"
        );
        self.forward(MlflowOp::Run { record: stored });
        // Runs waiting in the MLflow queue keep theirs; the one just stored is the newest of
        // its kind, so it is never among those pruned.
        if has_artifacts && let Err(e) = self.log.prune_artifacts(self.keep_runs) {
            tracing::warn!(error = %e, "cannot prune old run artifacts");
        }
        Ok(())
    }
}

impl Handler<RegisterChampion> for Tracker {
    type Result = Result<(), TrackError>;

    fn handle(&mut self, msg: RegisterChampion, _: &mut Context<Self>) -> Self::Result {
        if self.mlflow.is_none() {
            tracing::debug!(
                version = %msg.version,
                "no MLflow configured; champion not registered"
            );
            return Ok(());
        }
        let files = self.containment.run(|| champion_files(&msg.model_dir))??;
        let mut tags = std::collections::BTreeMap::new();
        if let Some(token) = msg.fencing {
            tags.insert(FENCING_TAG.to_string(), token.to_string());
        }
        self.forward(MlflowOp::Champion {
            version: msg.version,
            run_id: msg.run_id,
            files,
            tags,
        });
        Ok(())
    }
}

/// The files of a model version, weights included (followers install the version from
/// them), sorted by name.
fn champion_files(model_dir: &Path) -> Result<Vec<PathBuf>, TrackingError> {
    let io = |e| TrackingError::Io {
        path: model_dir.to_path_buf(),
        source: e,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(model_dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

fn worker(
    mut sink: MlflowSink,
    rx: mpsc::Receiver<MlflowOp>,
    containment: Containment,
    metrics: Arc<Metrics>,
) {
    let mut cooldown = None;
    let dead_letter = sink.pending_path().with_file_name(DEAD_LETTER_FILE);
    metrics
        .mlops
        .tracking_pending
        .set(sink.pending_len() as i64);
    // Records taken off the channel, not yet submitted: a champion that arrives while the
    // worker is busy goes before the routine records that arrived ahead of it (the sink
    // orders its own backlog the same way).
    let mut waiting: VecDeque<MlflowOp> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            let wait = cooldown
                .take()
                .or_else(|| sink.next_retry_in())
                .unwrap_or(IDLE_RESCAN);
            match rx.recv_timeout(wait) {
                Ok(op) => waiting.push_back(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        waiting.extend(rx.try_iter());
        let lineage = waiting.iter().position(|op| !op.is_routine());
        let next = match lineage {
            Some(i) => waiting.remove(i),
            None => waiting.pop_front(),
        };
        let result = match next {
            Some(op) => containment.run(|| sink.submit(op).map(|_| ())),
            None => containment.run(|| sink.retry_due().map(|_| ())),
        };
        match result {
            Ok(Ok(())) => {}
            // Local trouble with the pending file; the sink has already backed off.
            Ok(Err(e)) => tracing::error!(error = %e, "MLflow retry queue error"),
            Err(_) => cooldown = Some(PANIC_COOLDOWN),
        }
        for record in sink.take_dropped() {
            TrackingRecordDropped {
                record: &record,
                dead_letter: &dead_letter,
            }
            .emit(&metrics);
        }
        metrics
            .mlops
            .tracking_pending
            .set(sink.pending_len() as i64);
    }
    tracing::debug!(
        pending = sink.pending_len(),
        "MLflow worker stopped; pending records stay queued on disk"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;
    use sentimentd_tracking::{PENDING_FILE, RunKind, RunRecord};
    use std::time::Instant;

    fn record(name: &str) -> RunRecord {
        let mut r = RunRecord::new(RunKind::DriftCheck, name);
        r.metric("psi", 0.12).tag("fired", "false");
        r.finish()
    }

    #[actix_rt::test]
    async fn track_writes_the_local_log_before_replying() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::with_dir(
            &TrackingConfig::default(),
            dir.path().join("runs"),
            Arc::new(Metrics::new()),
        )
        .unwrap()
        .start();
        let r = record("local");
        tracker.send(Track(r.clone())).await.unwrap().unwrap();
        let log = LocalRunLog::open(dir.path().join("runs")).unwrap();
        assert_eq!(log.list().unwrap(), vec![r]);
        // Without MLflow, a champion is a no-op, not an error.
        tracker
            .send(RegisterChampion {
                version: "v1".into(),
                run_id: "x".into(),
                model_dir: dir.path().join("nowhere"),
                fencing: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert!(!dir.path().join("runs").join(PENDING_FILE).exists());
    }

    #[actix_rt::test]
    async fn a_down_mlflow_never_delays_the_reply_and_the_record_waits_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let cfg = TrackingConfig {
            mlflow_uri: Some(uri),
            ..TrackingConfig::default()
        };
        let runs = dir.path().join("runs");
        let tracker = Tracker::with_dir(&cfg, runs.clone(), Arc::new(Metrics::new()))
            .unwrap()
            .start();
        let model_dir = dir.path().join("v1");
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("manifest.json"), "{}").unwrap();
        std::fs::write(model_dir.join("weights.bin"), vec![0u8; 2 * 1024 * 1024]).unwrap();

        let t = Instant::now();
        let r = record("offline");
        tracker.send(Track(r.clone())).await.unwrap().unwrap();
        tracker
            .send(RegisterChampion {
                version: "v1".into(),
                run_id: r.run_id.clone(),
                model_dir: model_dir.clone(),
                fencing: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        let pending = runs.join(PENDING_FILE);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&pending).unwrap_or_default();
            if text.lines().count() == 2 {
                assert!(text.contains(&r.run_id));
                assert!(text.contains("manifest.json"));
                assert!(
                    text.contains("weights.bin"),
                    "the weights go up too: followers install the version from MLflow"
                );
                break;
            }
            assert!(Instant::now() < deadline, "pending file: {text:?}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }

        // A missing model directory is reported to the sender.
        let err = tracker
            .send(RegisterChampion {
                version: "v2".into(),
                run_id: r.run_id.clone(),
                model_dir: dir.path().join("missing"),
                fencing: None,
            })
            .await
            .unwrap();
        assert!(matches!(
            err,
            Err(TrackError::Tracking(TrackingError::Io { .. }))
        ));
    }
}
