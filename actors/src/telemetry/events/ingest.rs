//! Events of batch files: processed, rejected, refused, failed attempts, quarantine.

use super::{InternalEvent, now_rfc3339};
use crate::telemetry::metrics::{AttemptResult, BatchOutcome, Metrics, RecentBatch, RowOutcome};

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
        metrics.ingest.batch(RecentBatch {
            file: self.file.to_string(),
            outcome: BatchOutcome::processed,
            rows: self.rows,
            scored: self.scored,
            rejected: self.rejected,
            detail: self.model_version.to_string(),
            finished_at: now_rfc3339(),
        });
        metrics.ingest.batch_attempt(AttemptResult::finished);
        metrics.ingest.batch_duration(self.seconds);
        metrics.ingest.rows(RowOutcome::scored, self.scored);
        metrics.ingest.rows(RowOutcome::rejected, self.rejected);
        metrics.ingest.labelled_rows(self.labelled);
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

/// A batch file whose rows went to the cluster's input stream (`[cluster] publish_inbox`).
pub struct BatchPublished<'a> {
    pub file: &'a str,
    /// The id prefix of its rows: `<fingerprint>:<line>`.
    pub fingerprint: &'a str,
    /// Rows the stream stored as new messages.
    pub published: u64,
    /// Rows the stream already had (the same file within the duplicate window).
    pub duplicates: u64,
    pub rejected: u64,
    pub stream: &'a str,
    pub attempt: usize,
    pub seconds: f64,
}

impl InternalEvent for BatchPublished<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.ingest.batch(RecentBatch {
            file: self.file.to_string(),
            outcome: BatchOutcome::published,
            rows: self.published + self.duplicates + self.rejected,
            scored: 0,
            rejected: self.rejected,
            detail: format!("to {} as {}:<line>", self.stream, self.fingerprint),
            finished_at: now_rfc3339(),
        });
        metrics.ingest.batch_attempt(AttemptResult::finished);
        metrics.ingest.batch_duration(self.seconds);
        metrics.ingest.rows(RowOutcome::published, self.published);
        metrics.ingest.rows(RowOutcome::rejected, self.rejected);
        tracing::info!(
            file = self.file,
            stream = self.stream,
            ids = %format!("{}:<line>", self.fingerprint),
            published = self.published,
            duplicates = self.duplicates,
            rejected = self.rejected,
            attempt = self.attempt,
            seconds = self.seconds,
            "batch published to the cluster"
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
        metrics.ingest.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::rejected,
            self.reason,
        ));
        metrics.ingest.batch_attempt(AttemptResult::finished);
        metrics.ingest.batch_duration(self.seconds);
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
        metrics.ingest.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::refused,
            self.reason,
        ));
        metrics.ingest.batch_attempt(AttemptResult::finished);
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
        metrics.ingest.batch_attempt(AttemptResult::failed);
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
        metrics.ingest.batch(RecentBatch::unread(
            self.file,
            BatchOutcome::quarantined,
            self.last_error,
        ));
        metrics.ingest.batch_attempt(AttemptResult::failed);
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
        metrics.ingest.batch_attempt(AttemptResult::interrupted);
        tracing::info!(
            file = self.file,
            "batch interrupted by shutdown; it resumes on the next start"
        );
    }
}
