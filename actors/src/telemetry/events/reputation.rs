//! Events of the reputation view.

use super::InternalEvent;
use crate::telemetry::metrics::Metrics;

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
        metrics
            .reputation
            .set(self.source, self.negative_share, self.alert);
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
