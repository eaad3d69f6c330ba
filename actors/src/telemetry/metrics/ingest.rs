//! Metrics of the watched folder: files by outcome, attempts, rows, durations, the backlog,
//! and the recent files the status page lists.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::zero_series;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum BatchOutcome {
    /// Scored; the output is in the outbox (some rows may have been rejected).
    processed,
    /// Published to the cluster's input stream (`[cluster] publish_inbox`); the results go
    /// to its output stream.
    published,
    /// The whole file was rejected (not CSV, no `text` column, too big).
    rejected,
    /// Not taken: a symlink, a file with several hard links, or not a regular file.
    refused,
    /// Failed `ingest.max_attempts` times for reasons other than its content.
    quarantined,
}

/// How one attempt at a batch file ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptResult {
    /// The file reached a final outcome.
    finished,
    /// Failed for a reason other than its content; retried or quarantined.
    failed,
    /// Stopped by shutdown; resumed on the next start.
    interrupted,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: AttemptResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RowOutcome {
    scored,
    rejected,
    /// Published to the cluster's input stream; scored by whichever node takes them.
    published,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    outcome: BatchOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    outcome: RowOutcome,
}

/// A finished inbox file, as the status page lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentBatch {
    pub file: String,
    pub outcome: BatchOutcome,
    pub rows: u64,
    pub scored: u64,
    pub rejected: u64,
    /// The model version that scored it, or why it was not processed.
    pub detail: String,
    /// RFC 3339.
    pub finished_at: String,
}

/// Finished batches the status page shows.
const RECENT_BATCHES: usize = 20;

pub struct IngestMetrics {
    batches: Family<BatchLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    pub inbox_backlog: Gauge,
    batch_duration: Histogram,
    rows: Family<RowLabels, Counter>,
    labelled_rows: Counter,
    /// The latest finished batches, newest last; recorded by the same events as the counters.
    recent_batches: std::sync::Mutex<std::collections::VecDeque<RecentBatch>>,
}

impl IngestMetrics {
    pub(super) fn register(registry: &mut Registry) -> IngestMetrics {
        registered!(registry;
            batches: Family<BatchLabels, Counter> = ("sentiment_batches", "Inbox files by final outcome (processed, published, rejected, refused, quarantined)"),
            attempts: Family<AttemptLabels, Counter> = ("sentiment_batch_attempts", "Attempts at inbox files, by result (a file that fails is attempted again)"),
            inbox_backlog: Gauge = ("sentiment_inbox_backlog_files", "Batch files waiting in the inbox or claimed and not yet finished"),
        );
        // From 10 ms to ~45 min.
        let batch_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 19),
        );
        registry.register(
            "sentiment_batch_duration_seconds",
            "Time to process one inbox file, from claim to archive, per attempt that finished",
            batch_duration.clone(),
        );
        registered!(registry;
            rows: Family<RowLabels, Counter> = ("sentiment_batch_rows", "Inbox rows handled, by outcome"),
            labelled_rows: Counter = ("sentiment_labelled_rows", "Labelled rows appended to the labelled-data store"),
        );
        // Zero series from the start, so dashboards see zeros rather than missing series.
        use BatchOutcome as B;
        zero_series(
            &batches,
            [B::processed, B::rejected, B::refused, B::quarantined]
                .map(|outcome| BatchLabels { outcome }),
        );
        use AttemptResult as A;
        zero_series(
            &attempts,
            [A::finished, A::failed, A::interrupted].map(|result| AttemptLabels { result }),
        );
        zero_series(
            &rows,
            [RowOutcome::scored, RowOutcome::rejected].map(|outcome| RowLabels { outcome }),
        );
        IngestMetrics {
            batches,
            attempts,
            inbox_backlog,
            batch_duration,
            rows,
            labelled_rows,
            recent_batches: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Counts a file's final outcome and keeps it in the recent list.
    pub fn batch(&self, batch: RecentBatch) {
        self.batches
            .get_or_create(&BatchLabels {
                outcome: batch.outcome,
            })
            .inc();
        let mut recent = self
            .recent_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(batch);
    }

    /// The latest finished batches, newest first.
    pub fn recent_batches(&self) -> Vec<RecentBatch> {
        let recent = self
            .recent_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    pub fn batch_attempt(&self, result: AttemptResult) {
        self.attempts.get_or_create(&AttemptLabels { result }).inc();
    }

    pub fn batch_duration(&self, seconds: f64) {
        self.batch_duration.observe(seconds);
    }

    pub fn rows(&self, outcome: RowOutcome, n: u64) {
        self.rows.get_or_create(&RowLabels { outcome }).inc_by(n);
    }

    pub fn labelled_rows(&self, n: u64) {
        self.labelled_rows.inc_by(n);
    }
}
