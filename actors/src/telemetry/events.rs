//! Operational events of the MLOps loop. Each is a small struct whose `emit` writes its one
//! journal line and updates its metrics together (Vector's `internal_events` pattern), so a
//! log line and its counter can never disagree, and handlers stay free of logging noise.

use sentimentd_data::drift::{DriftReport, Verdict};

use crate::messages::RetrainTrigger;
use crate::telemetry::metrics::{
    AttemptResult, BatchOutcome, DriftCheckOutcome, Metrics, RecentBatch, RetrainOutcome,
    RowOutcome,
};

fn now_rfc3339() -> String {
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

pub struct DriftChecked<'a> {
    pub report: &'a DriftReport,
    pub report_file: &'a str,
}

impl InternalEvent for DriftChecked<'_> {
    fn emit(self, metrics: &Metrics) {
        let r = self.report;
        let outcome = match r.verdict {
            Verdict::Drift => DriftCheckOutcome::drift,
            Verdict::NoDrift => DriftCheckOutcome::no_drift,
            Verdict::Insufficient => DriftCheckOutcome::insufficient,
        };
        let scores: Vec<(String, f64)> =
            r.tests.iter().map(|t| (t.test.clone(), t.score)).collect();
        metrics.drift_checked(outcome, &scores, r.drift_score);
        match r.verdict {
            Verdict::Drift => tracing::warn!(
                model_version = %r.model_version,
                samples = r.samples,
                drift_score = r.drift_score,
                fired = %r.fired.join(","),
                report = self.report_file,
                "drift detected"
            ),
            Verdict::NoDrift => tracing::info!(
                model_version = %r.model_version,
                samples = r.samples,
                drift_score = r.drift_score,
                report = self.report_file,
                "drift check: no drift"
            ),
            Verdict::Insufficient => tracing::info!(
                model_version = %r.model_version,
                samples = r.samples,
                min_samples = r.min_samples,
                "drift check: too few observations for a verdict"
            ),
        }
    }
}

pub struct DriftCheckFailed<'a> {
    pub reason: &'a str,
}

impl InternalEvent for DriftCheckFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.drift_checked(DriftCheckOutcome::failed, &[], 0.0);
        tracing::warn!(reason = self.reason, "drift check not run");
    }
}

pub struct RetrainSkipped<'a> {
    pub trigger: RetrainTrigger,
    pub reason: &'a str,
}

impl InternalEvent for RetrainSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retrain(RetrainOutcome::skipped);
        tracing::info!(
            trigger = self.trigger.as_str(),
            reason = self.reason,
            "retrain skipped"
        );
    }
}

pub struct RetrainFailed<'a> {
    pub trigger: RetrainTrigger,
    pub error: &'a str,
}

impl InternalEvent for RetrainFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retrain(RetrainOutcome::failed);
        tracing::error!(
            trigger = self.trigger.as_str(),
            error = self.error,
            "retrain failed; still serving the current model"
        );
    }
}

pub struct CandidateRejected<'a> {
    pub version: &'a str,
    pub against: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for CandidateRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retrain(RetrainOutcome::rejected);
        tracing::warn!(
            candidate = self.version,
            serving = self.against,
            reason = self.reason,
            "candidate rejected by the gate; still serving the current model"
        );
    }
}

pub struct CandidatePromoted<'a> {
    pub version: &'a str,
    pub from: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for CandidatePromoted<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retrain(RetrainOutcome::promoted);
        tracing::info!(
            candidate = self.version,
            from = self.from,
            reason = self.reason,
            "candidate passed the gate and was promoted"
        );
    }
}

pub struct RolledBack<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for RolledBack<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.rollback();
        tracing::warn!(
            from = self.from,
            to = self.to,
            reason = self.reason,
            "rolled back to the previous model version"
        );
    }
}

pub struct FeedbackReceived<'a> {
    pub rows: usize,
    pub file: &'a str,
}

impl InternalEvent for FeedbackReceived<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.feedback_rows(self.rows as u64);
        metrics.labelled_rows(self.rows as u64);
        tracing::info!(rows = self.rows, file = self.file, "feedback stored");
    }
}

/// A record was taken off the MLflow queue without reaching MLflow.
pub struct TrackingRecordDropped<'a> {
    pub record: &'a sentimentd_tracking::DroppedRecord,
    pub dead_letter: &'a std::path::Path,
}

impl InternalEvent for TrackingRecordDropped<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.tracking_dropped();
        tracing::error!(
            op = %self.record.op,
            attempts = self.record.attempts,
            error = %self.record.error,
            dead_letter = %self.dead_letter.display(),
            "MLflow did not take a record; moved to the dead-letter file (the local run log keeps it)"
        );
    }
}

/// An inbox file was scored; its outputs are in place and it is archived.
pub struct BatchProcessed<'a> {
    pub file: &'a str,
    pub output: &'a str,
    pub rows: u64,
    pub scored: u64,
    pub rejected: u64,
    pub labelled: u64,
    /// Scored rows by predicted label (negative, neutral, positive).
    pub by_label: [u64; 3],
    pub model_version: &'a str,
    pub attempt: usize,
    pub seconds: f64,
    pub rows_per_second: f64,
}

impl InternalEvent for BatchProcessed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch(RecentBatch {
            file: self.file.to_string(),
            outcome: BatchOutcome::processed,
            rows: self.rows,
            scored: self.scored,
            rejected: self.rejected,
            detail: self.model_version.to_string(),
            finished_at: now_rfc3339(),
        });
        metrics.batch_attempt(AttemptResult::finished);
        metrics.batch_duration(self.seconds);
        metrics.rows(RowOutcome::scored, self.scored);
        metrics.rows(RowOutcome::rejected, self.rejected);
        metrics.labelled_rows(self.labelled);
        tracing::info!(
            file = self.file,
            output = self.output,
            rows = self.rows,
            scored = self.scored,
            rejected = self.rejected,
            labelled = self.labelled,
            model_version = self.model_version,
            attempt = self.attempt,
            seconds = self.seconds,
            rows_per_second = self.rows_per_second.round(),
            "batch processed"
        );
    }
}

/// A file that cannot be processed at all (not CSV, no `text` column, too big).
pub struct BatchRejected<'a> {
    pub file: &'a str,
    pub reason: &'a str,
    pub moved_to: &'a std::path::Path,
    pub seconds: f64,
}

impl InternalEvent for BatchRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::rejected,
            self.reason,
        ));
        metrics.batch_attempt(AttemptResult::finished);
        metrics.batch_duration(self.seconds);
        tracing::warn!(
            file = self.file,
            reason = self.reason,
            moved_to = %self.moved_to.display(),
            "batch file rejected"
        );
    }
}

/// An inbox entry that is not a single-link regular file; reported once and moved aside.
pub struct BatchRefused<'a> {
    pub file: &'a str,
    pub reason: &'a str,
    pub moved_to: &'a std::path::Path,
}

impl InternalEvent for BatchRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::refused,
            self.reason,
        ));
        metrics.batch_attempt(AttemptResult::finished);
        tracing::warn!(
            file = self.file,
            reason = self.reason,
            moved_to = %self.moved_to.display(),
            "inbox entry refused"
        );
    }
}

/// An attempt failed for a reason other than the file's content; it will be retried.
pub struct BatchAttemptFailed<'a> {
    pub file: &'a str,
    pub attempt: usize,
    pub max_attempts: u32,
    pub error: &'a str,
    pub retry_in: std::time::Duration,
}

impl InternalEvent for BatchAttemptFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch_attempt(AttemptResult::failed);
        tracing::error!(
            file = self.file,
            attempt = self.attempt,
            max_attempts = self.max_attempts,
            error = self.error,
            retry_in_secs = self.retry_in.as_secs_f64(),
            "batch attempt failed; it will be retried"
        );
    }
}

/// A file failed `max_attempts` times and was moved to `rejected/` with every attempt's error.
pub struct BatchQuarantined<'a> {
    pub file: &'a str,
    pub attempts: usize,
    pub last_error: &'a str,
    pub moved_to: &'a std::path::Path,
}

impl InternalEvent for BatchQuarantined<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::quarantined,
            self.last_error,
        ));
        metrics.batch_attempt(AttemptResult::failed);
        tracing::error!(
            file = self.file,
            attempts = self.attempts,
            last_error = self.last_error,
            moved_to = %self.moved_to.display(),
            "batch file quarantined after repeated failures"
        );
    }
}

/// Shutdown stopped a batch between chunks; the next start resumes it.
pub struct BatchInterrupted<'a> {
    pub file: &'a str,
}

impl InternalEvent for BatchInterrupted<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.batch_attempt(AttemptResult::interrupted);
        tracing::info!(
            file = self.file,
            "batch interrupted by shutdown; it resumes on the next start"
        );
    }
}

/// A source's reputation gauges; a log line when its negative-spike alert starts or ends.
pub struct ReputationAlert<'a> {
    pub source: &'a str,
    pub negative_share: f64,
    pub alert: bool,
    /// The alert state differs from the previous refresh.
    pub changed: bool,
    pub baseline: f64,
    pub z: f64,
    /// Texts in the latest bucket.
    pub texts: u64,
}

impl InternalEvent for ReputationAlert<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.reputation(self.source, self.negative_share, self.alert);
        if !self.changed {
            return;
        }
        if self.alert {
            tracing::warn!(
                source = self.source,
                negative_share = self.negative_share,
                baseline_share = self.baseline,
                z = self.z,
                texts = self.texts,
                "reputation alert: negative spike"
            );
        } else {
            tracing::info!(
                source = self.source,
                negative_share = self.negative_share,
                "reputation alert over"
            );
        }
    }
}
