//! Events of `POST /feedback`.

use super::InternalEvent;
use crate::telemetry::metrics::Metrics;

pub struct FeedbackReceived<'a> {
    pub rows: usize,
    pub file: &'a str,
}

impl InternalEvent for FeedbackReceived<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.mlops.feedback_rows(self.rows as u64);
        metrics.ingest.labelled_rows(self.rows as u64);
        tracing::info!(rows = self.rows, file = self.file, "feedback stored");
    }
}
