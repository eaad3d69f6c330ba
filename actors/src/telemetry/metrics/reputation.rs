//! Metrics of what is said, per source: texts by predicted label and channel, each source's
//! negative share and spike alert.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sentimentd_data::Label;
use std::sync::atomic::AtomicU64;

use super::serving::Channel;

/// Prediction counters of one tracked source, `[channel][label index]`, resolved once so the
/// hot path never touches the family lock.
pub type SourceCounters = [[Counter; 3]; 2];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PredictionLabels {
    label: &'static str,
    channel: Channel,
    /// A tracked source, `other` or `unknown`: bounded by `[reputation]`.
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

pub struct ReputationMetrics {
    predictions: Family<PredictionLabels, Counter>,
    negative_share: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    reputation_alert: Family<SourceLabels, Gauge>,
}

impl ReputationMetrics {
    pub(super) fn register(registry: &mut Registry) -> ReputationMetrics {
        registered!(registry;
            predictions: Family<PredictionLabels, Counter> = ("sentiment_predictions", "Texts classified, by predicted label, channel (http or batch) and source ([reputation])"),
            negative_share: Family<SourceLabels, Gauge<f64, AtomicU64>> = ("sentiment_negative_share", "Share of negative predictions in each source's latest time bucket ([reputation] bucket_secs)"),
            reputation_alert: Family<SourceLabels, Gauge> = ("sentiment_reputation_alert", "1 while a source's latest bucket is a negative spike against its own history"),
        );
        ReputationMetrics {
            predictions,
            negative_share,
            reputation_alert,
        }
    }

    /// The prediction counters of `source` (created at zero), and its reputation gauges.
    pub fn source_counters(&self, source: &str) -> SourceCounters {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        drop(self.negative_share.get_or_create(&labels));
        drop(self.reputation_alert.get_or_create(&labels));
        Channel::ALL.map(|channel| {
            Label::ALL.map(|label| {
                self.predictions
                    .get_or_create(&PredictionLabels {
                        label: label.as_str(),
                        channel,
                        source: source.to_string(),
                    })
                    .clone()
            })
        })
    }

    /// Drops every series of a source that is no longer tracked.
    pub fn remove_source(&self, source: &str) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.negative_share.remove(&labels);
        self.reputation_alert.remove(&labels);
        for channel in Channel::ALL {
            for label in Label::ALL {
                self.predictions.remove(&PredictionLabels {
                    label: label.as_str(),
                    channel,
                    source: source.to_string(),
                });
            }
        }
    }

    pub fn set(&self, source: &str, negative_share: f64, alert: bool) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.negative_share
            .get_or_create(&labels)
            .set(negative_share);
        self.reputation_alert
            .get_or_create(&labels)
            .set(i64::from(alert));
    }
}
