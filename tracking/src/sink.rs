//! Forwarding records to MLflow through a persistent retry queue.

use crate::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What is forwarded to MLflow. Persisted in the pending file, so keep it backward-compatible.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MlflowOp {
    /// Mirror a run record (its artifacts point at the run log's copies).
    Run { record: RunRecord },
    /// Register a model store version as a registry version and make it the champion.
    /// `run_id` is the local id of the run that trained it.
    Champion {
        version: String,
        run_id: String,
        files: Vec<PathBuf>,
        /// Tags of the registry version (the training lease's fencing token in a cluster).
        #[serde(default)]
        tags: BTreeMap<String, String>,
    },
}

impl MlflowOp {
    /// A record of routine monitoring (a drift check, a skipped retrain). A backlog sends
    /// these after the model's lineage (trainings, evaluations, promotions, champions): many
    /// checks can wait behind a slow server, and followers must not wait behind them for a
    /// new champion. Lineage keeps its own order, so a champion still follows the run that
    /// trained it.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            MlflowOp::Run { record }
                if matches!(record.kind, RunKind::DriftCheck | RunKind::RetrainSkipped)
        )
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            MlflowOp::Run { record } => format!("run {} ({})", record.run_id, record.kind.as_str()),
            MlflowOp::Champion { version, .. } => format!("champion {version}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingEntry {
    pub(crate) id: String,
    pub(crate) queued_at: String,
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default)]
    pub(crate) last_error: Option<String>,
    /// Failed attempts the server answered (see [`TrackingError::server_answered`]); at
    /// [`MlflowSink::with_max_attempts`] the entry goes to the dead-letter file.
    #[serde(default)]
    pub(crate) answered: u32,
    /// When it was given up on (dead-letter file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dead_at: Option<String>,
    #[serde(flatten)]
    pub(crate) op: MlflowOp,
}

/// A record taken off the queue without reaching MLflow; it is in the dead-letter file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRecord {
    /// What it was, e.g. `run 3f2a… (training)`.
    pub op: String,
    pub attempts: u32,
    pub error: String,
}

impl PendingEntry {
    fn new(op: MlflowOp) -> PendingEntry {
        PendingEntry {
            id: new_run_id(),
            queued_at: now_rfc3339(),
            attempts: 0,
            last_error: None,
            answered: 0,
            dead_at: None,
            op,
        }
    }

    /// Counts one failed attempt.
    fn failed(&mut self, e: &TrackingError) {
        self.attempts += 1;
        if e.server_answered() {
            self.answered += 1;
        }
        self.last_error = Some(e.to_string());
    }
}

/// Exponential backoff between retries of a down server.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    next_at: Option<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
            next_at: None,
        }
    }

    /// Records a failure; returns how long until the next try.
    pub fn failed(&mut self) -> Duration {
        let wait = self.current;
        self.next_at = Some(Instant::now() + wait);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    pub fn succeeded(&mut self) {
        self.current = self.initial;
        self.next_at = None;
    }

    pub fn is_due(&self) -> bool {
        self.next_at.is_none_or(|t| Instant::now() >= t)
    }

    pub fn wait(&self) -> Option<Duration> {
        self.next_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// What one pass over the queue did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub sent: usize,
    /// Rejected by the server (4xx) and dropped; they stay in the local run log.
    pub dropped: usize,
    pub remaining: usize,
}

/// What became of one submitted operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Arrived on the first attempt.
    Sent,
    /// Went through the retry queue (a due backlog flush may already have sent it).
    Queued,
    /// Rejected by the server (4xx); not retried. The local run log keeps it.
    Dropped,
}

/// Default of [`MlflowSink::with_max_attempts`] (`[tracking] record_max_attempts`).
pub const RECORD_MAX_ATTEMPTS: u32 = 5;

/// Oldest pending entries beyond this are dropped: the local run log keeps them regardless,
/// and an unbounded file would make every rewrite slower during a long outage.
pub const MAX_PENDING: usize = 10_000;

/// Forwards operations to one MLflow server; what cannot be sent now waits in
/// `<dir>/mlflow-pending.jsonl` and is retried with exponential backoff, in order within each
/// class of [`MlflowOp::is_routine`], the model's lineage first.
///
/// The pending file, not memory, is the queue's truth, so several processes (the daemon and a
/// `sentimentd train` run) can share one: appends and rewrites happen under an exclusive lock
/// on `mlflow-pending.lock`, and network calls happen outside it.
pub struct MlflowSink {
    client: MlflowClient,
    experiment: String,
    registered_model: String,
    experiment_id: Option<String>,
    pending_path: PathBuf,
    lock_path: PathBuf,
    pending: VecDeque<PendingEntry>,
    backoff: Backoff,
    max_attempts: u32,
    /// Given up on since the last [`MlflowSink::take_dropped`].
    dropped: Vec<DroppedRecord>,
}

impl MlflowSink {
    /// Opens the queue in `dir`; nothing is sent until the first submit or flush.
    pub fn open(
        client: MlflowClient,
        experiment: &str,
        registered_model: &str,
        dir: &Path,
    ) -> Result<MlflowSink, TrackingError> {
        std::fs::create_dir_all(dir).map_err(|e| TrackingError::io(dir, e))?;
        let mut sink = MlflowSink {
            client,
            experiment: experiment.to_string(),
            registered_model: registered_model.to_string(),
            experiment_id: None,
            pending_path: dir.join(PENDING_FILE),
            lock_path: dir.join(PENDING_LOCK_FILE),
            pending: VecDeque::new(),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            max_attempts: RECORD_MAX_ATTEMPTS,
            dropped: Vec::new(),
        };
        sink.reload()?;
        if !sink.pending.is_empty() {
            tracing::info!(
                pending = sink.pending.len(),
                file = %sink.pending_path.display(),
                "MLflow records left from an earlier run will be retried"
            );
        }
        Ok(sink)
    }

    pub fn client(&self) -> &MlflowClient {
        &self.client
    }

    /// A record the server answered but did not take this many times is given up on.
    pub fn with_max_attempts(mut self, n: u32) -> MlflowSink {
        self.max_attempts = n.max(1);
        self
    }

    /// Records given up on since the last call (each already in the dead-letter file).
    pub fn take_dropped(&mut self) -> Vec<DroppedRecord> {
        std::mem::take(&mut self.dropped)
    }

    pub fn pending_path(&self) -> &Path {
        &self.pending_path
    }

    /// Entries waiting, as of the last look at the pending file.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Time until the next retry is due, `None` when nothing waits.
    pub fn next_retry_in(&self) -> Option<Duration> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.backoff.wait().unwrap_or(Duration::ZERO))
        }
    }

    /// Sends `op` now (one attempt), unless older entries wait or the server is in a backoff
    /// window: then it queues behind them so order is kept and a down server is not hammered.
    pub fn submit(&mut self, op: MlflowOp) -> Result<Submitted, TrackingError> {
        if !self.pending.is_empty() || !self.backoff.is_due() {
            let what = op.describe();
            self.enqueue(op, None)?;
            tracing::debug!(
                op = %what,
                pending = self.pending.len(),
                "MLflow record queued behind the backlog"
            );
            if self.backoff.is_due() {
                self.flush_pending()?;
            }
            return Ok(Submitted::Queued);
        }
        match self.send(&op) {
            Ok(()) => {
                self.backoff.succeeded();
                Ok(Submitted::Sent)
            }
            Err(e) if e.is_retryable() && !(e.server_answered() && self.max_attempts <= 1) => {
                let wait = self.backoff.failed();
                tracing::warn!(
                    op = %op.describe(),
                    error = %e,
                    retry_in_s = wait.as_secs_f64(),
                    "MLflow unreachable; record queued for retry (kept in the local run log)"
                );
                self.enqueue(op, Some(&e))?;
                Ok(Submitted::Queued)
            }
            Err(e) => {
                let mut entry = PendingEntry::new(op);
                entry.failed(&e);
                self.dead_letter(entry)?;
                Ok(Submitted::Dropped)
            }
        }
    }

    /// Retries the queue if the backoff window has passed (and re-reads the pending file when
    /// another process may have added to it).
    pub fn retry_due(&mut self) -> Result<FlushReport, TrackingError> {
        if !self.backoff.is_due() {
            return Ok(FlushReport {
                remaining: self.pending.len(),
                ..FlushReport::default()
            });
        }
        self.flush_pending()
    }

    /// Sends every pending entry now, oldest first, ignoring the backoff; stops at the first
    /// that fails for a reason worth retrying. Deterministic: tests and shutdown drive it.
    pub fn flush_pending(&mut self) -> Result<FlushReport, TrackingError> {
        let result = self.flush_inner();
        if result.is_err() {
            // Trouble with the pending file itself: back off too, or a caller that retries
            // whenever `next_retry_in` says so would spin on it.
            self.backoff.failed();
        }
        result
    }

    fn flush_inner(&mut self) -> Result<FlushReport, TrackingError> {
        self.reload()?;
        let mut report = FlushReport::default();
        let mut done: HashSet<String> = HashSet::new();
        let mut failed: Option<PendingEntry> = None;
        let mut entries: Vec<PendingEntry> = self.pending.iter().cloned().collect();
        // Stable: lineage first, each class in the order it was queued.
        entries.sort_by_key(|e| e.op.is_routine());
        for entry in &entries {
            match self.send(&entry.op) {
                Ok(()) => {
                    report.sent += 1;
                    done.insert(entry.id.clone());
                }
                Err(e) => {
                    let mut entry = entry.clone();
                    entry.failed(&e);
                    if e.is_retryable() && entry.answered < self.max_attempts {
                        failed = Some(entry);
                        break;
                    }
                    // Refused (4xx), or answered wrongly time after time: kept aside, so the
                    // records behind it go on.
                    done.insert(entry.id.clone());
                    self.dead_letter(entry)?;
                    report.dropped += 1;
                }
            }
        }
        if done.is_empty() && failed.is_none() {
            return Ok(report);
        }
        let remaining = self.locked(|sink| {
            let mut entries: Vec<PendingEntry> = read_jsonl(&sink.pending_path)?;
            entries.retain(|e| !done.contains(&e.id));
            if let Some(f) = &failed
                && let Some(e) = entries.iter_mut().find(|e| e.id == f.id)
            {
                *e = f.clone();
            }
            sink.rewrite(&entries)?;
            sink.pending = entries.into();
            Ok(sink.pending.len())
        })?;
        report.remaining = remaining;
        match failed.as_ref().and_then(|f| f.last_error.as_ref()) {
            Some(error) => {
                let wait = self.backoff.failed();
                tracing::warn!(
                    sent = report.sent,
                    remaining,
                    error = %error,
                    retry_in_s = wait.as_secs_f64(),
                    "MLflow still unreachable; backlog kept for retry"
                );
            }
            None => {
                self.backoff.succeeded();
                if report.sent > 0 {
                    tracing::info!(
                        sent = report.sent,
                        dropped = report.dropped,
                        remaining,
                        "MLflow backlog flushed"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Appends `entry` to the dead-letter file and reports it through
    /// [`MlflowSink::take_dropped`].
    fn dead_letter(&mut self, mut entry: PendingEntry) -> Result<(), TrackingError> {
        entry.dead_at = Some(now_rfc3339());
        let mut line = serde_json::to_vec(&entry).map_err(|source| TrackingError::Encode {
            run_id: entry.id.clone(),
            source,
        })?;
        line.push(b'\n');
        let path = self.pending_path.with_file_name(DEAD_LETTER_FILE);
        append_line(&path, line)?;
        self.dropped.push(DroppedRecord {
            op: entry.op.describe(),
            attempts: entry.attempts,
            error: entry.last_error.unwrap_or_default(),
        });
        Ok(())
    }

    fn experiment_id(&mut self) -> Result<String, TrackingError> {
        if let Some(id) = &self.experiment_id {
            return Ok(id.clone());
        }
        let id = self.client.get_or_create_experiment(&self.experiment)?;
        self.experiment_id = Some(id.clone());
        Ok(id)
    }

    fn send(&mut self, op: &MlflowOp) -> Result<(), TrackingError> {
        let result = self.send_inner(op);
        if let Err(e) = &result
            && !e.is_retryable()
        {
            // The experiment may have been deleted or renamed; look it up afresh next time.
            self.experiment_id = None;
        }
        result
    }

    fn send_inner(&mut self, op: &MlflowOp) -> Result<(), TrackingError> {
        let experiment_id = self.experiment_id()?;
        match op {
            MlflowOp::Run { record } => {
                let run = self.client.log_run(&experiment_id, record)?;
                tracing::info!(
                    run_id = %record.run_id,
                    kind = record.kind.as_str(),
                    mlflow_run_id = %run.run_id,
                    experiment_id = %experiment_id,
                    "run mirrored to MLflow"
                );
            }
            MlflowOp::Champion {
                version,
                run_id,
                files,
                tags,
            } => {
                let run = match self
                    .client
                    .find_run_by_tag(&experiment_id, RUN_ID_TAG, run_id)?
                {
                    Some(run) => run,
                    None => {
                        // The training run never reached MLflow (trained before tracking was
                        // configured): a promotion run carries the files instead.
                        let mut record =
                            RunRecord::new(RunKind::Promotion, format!("champion {version}"));
                        record.run_id = format!("{run_id}-champion");
                        record.tag("sentimentd.trained_by_run", run_id.clone());
                        record.tag(VERSION_TAG, version.clone());
                        self.client.log_run(&experiment_id, &record)?
                    }
                };
                let registered = self.client.register_champion(
                    &self.registered_model,
                    &run,
                    version,
                    files,
                    tags,
                )?;
                match registered.superseded_by {
                    None => tracing::info!(
                        model = %self.registered_model,
                        version = %version,
                        registry_version = %registered.registry_version,
                        mlflow_run_id = %run.run_id,
                        alias = CHAMPION_ALIAS,
                        "champion registered in MLflow"
                    ),
                    Some(s) => tracing::warn!(
                        model = %self.registered_model,
                        version = %version,
                        registry_version = %registered.registry_version,
                        fencing_token = s.ours,
                        champion = %s.store_version,
                        champion_registry_version = %s.registry_version,
                        champion_fencing_token = s.token,
                        alias = CHAMPION_ALIAS,
                        "version registered in MLflow, but the champion alias was left on a version promoted under a newer training lease: this registration is stale"
                    ),
                }
            }
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        op: MlflowOp,
        error: Option<&TrackingError>,
    ) -> Result<(), TrackingError> {
        let mut entry = PendingEntry::new(op);
        if let Some(e) = error {
            entry.failed(e);
        }
        let mut line = serde_json::to_vec(&entry).map_err(|source| TrackingError::Encode {
            run_id: entry.id.clone(),
            source,
        })?;
        line.push(b'\n');
        self.locked(|sink| {
            append_line(&sink.pending_path, line)?;
            sink.pending.push_back(entry);
            if sink.pending.len() > MAX_PENDING {
                let mut entries: Vec<PendingEntry> = read_jsonl(&sink.pending_path)?;
                let excess = entries.len().saturating_sub(MAX_PENDING);
                if excess > 0 {
                    entries.drain(..excess);
                    tracing::warn!(
                        dropped = excess,
                        max = MAX_PENDING,
                        "MLflow retry queue full; dropped the oldest (kept in the local run log)"
                    );
                }
                sink.rewrite(&entries)?;
                sink.pending = entries.into();
            }
            Ok(())
        })
    }

    fn reload(&mut self) -> Result<(), TrackingError> {
        let entries: Vec<PendingEntry> = self.locked(|sink| read_jsonl(&sink.pending_path))?;
        self.pending = entries.into();
        Ok(())
    }

    /// Replaces the pending file atomically (write aside, fsync, rename).
    fn rewrite(&self, entries: &[PendingEntry]) -> Result<(), TrackingError> {
        let path = &self.pending_path;
        if entries.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(TrackingError::io(path, e)),
            };
        }
        let mut text = Vec::new();
        for e in entries {
            let line = serde_json::to_vec(e).map_err(|source| TrackingError::Encode {
                run_id: e.id.clone(),
                source,
            })?;
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp).map_err(|e| TrackingError::io(&tmp, e))?;
        f.write_all(&text).map_err(|e| TrackingError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrackingError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| TrackingError::io(path, e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut MlflowSink) -> Result<T, TrackingError>,
    ) -> Result<T, TrackingError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| TrackingError::io(&self.lock_path, e))?;
        lock.lock()
            .map_err(|e| TrackingError::io(&self.lock_path, e))?;
        let result = f(self);
        // Closing the file releases the lock too; unlocking explicitly just makes it prompt.
        let _ = lock.unlock();
        result
    }
}
