//! Metrics of the model's life: the serving version, drift checks, retrains, rollbacks,
//! feedback and run tracking.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::zero_series;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DriftCheckOutcome {
    no_drift,
    drift,
    /// Fewer observations than `[drift] min_samples`: no verdict.
    insufficient,
    /// No baseline yet, or the check itself failed.
    failed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RetrainOutcome {
    promoted,
    rejected,
    skipped,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftCheckLabels {
    outcome: DriftCheckOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetrainLabels {
    outcome: RetrainOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftTestLabels {
    /// One of the seven fixed test names: bounded cardinality.
    test: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelInfoLabels {
    version: String,
    kind: &'static str,
    fallback: &'static str,
}

pub struct MlopsMetrics {
    /// 1 while a retrain runs in the background.
    pub retrain_running: Gauge,
    model_info: Family<ModelInfoLabels, Gauge>,
    model_swaps: Counter,
    pub drift_score: Gauge<f64, AtomicU64>,
    drift_test_score: Family<DriftTestLabels, Gauge<f64, AtomicU64>>,
    drift_checks: Family<DriftCheckLabels, Counter>,
    drift_last_check: Gauge<f64, AtomicU64>,
    observations_dropped: Counter,
    retrains: Family<RetrainLabels, Counter>,
    rollbacks: Counter,
    feedback_rows: Counter,
    /// Records waiting in the MLflow retry queue.
    pub tracking_pending: Gauge,
    tracking_dropped: Counter,
}

impl MlopsMetrics {
    pub(super) fn register(registry: &mut Registry) -> MlopsMetrics {
        registered!(registry;
            drift_score: Gauge<f64, AtomicU64> = ("sentiment_drift_score", "Largest threshold-normalised score of the latest drift check (1.0 = at threshold)"),
            drift_test_score: Family<DriftTestLabels, Gauge<f64, AtomicU64>> = ("sentiment_drift_test_score", "Threshold-normalised score of each drift test in the latest check (1.0 = at threshold)"),
            drift_checks: Family<DriftCheckLabels, Counter> = ("sentiment_drift_checks", "Drift checks, by outcome"),
            drift_last_check: Gauge<f64, AtomicU64> = ("sentiment_drift_last_check_timestamp_seconds", "Unix time of the last drift check that gave a verdict"),
            observations_dropped: Counter = ("sentiment_drift_observations_dropped", "Observations dropped because the drift monitor fell behind (serving never waits)"),
            retrains: Family<RetrainLabels, Counter> = ("sentiment_retrains", "Retraining runs, by outcome (promoted, rejected by the gate, skipped, failed)"),
            rollbacks: Counter = ("sentiment_model_rollbacks", "Rollbacks to the previously served model version"),
            feedback_rows: Counter = ("sentiment_feedback_rows", "Labelled rows received by POST /feedback"),
            tracking_pending: Gauge = ("sentiment_tracking_pending", "Run records waiting to be sent to MLflow (kept in the local run log meanwhile)"),
            tracking_dropped: Counter = ("sentiment_tracking_dropped", "Run records MLflow refused or kept answering wrongly, moved to the dead-letter file"),
            retrain_running: Gauge = ("sentiment_retrain_running", "1 while a retrain runs in the background, else 0"),
            model_info: Family<ModelInfoLabels, Gauge> = ("sentiment_model_info", "The model currently serving (value 1)"),
            model_swaps: Counter = ("sentiment_model_swaps", "Times a new model was swapped in while serving"),
        );
        // Families written only once they have a series: without these, a dashboard panel or
        // an alert on them would see nothing until the first drift check.
        zero_series(
            &drift_test_score,
            sentimentd_data::drift::TESTS.map(|t| DriftTestLabels {
                test: t.to_string(),
            }),
        );
        use DriftCheckOutcome as D;
        zero_series(
            &drift_checks,
            [D::no_drift, D::drift, D::insufficient, D::failed]
                .map(|outcome| DriftCheckLabels { outcome }),
        );
        use RetrainOutcome as R;
        zero_series(
            &retrains,
            [R::promoted, R::rejected, R::skipped, R::failed]
                .map(|outcome| RetrainLabels { outcome }),
        );
        MlopsMetrics {
            retrain_running,
            model_info,
            model_swaps,
            drift_score,
            drift_test_score,
            drift_checks,
            drift_last_check,
            observations_dropped,
            retrains,
            rollbacks,
            feedback_rows,
            tracking_pending,
            tracking_dropped,
        }
    }

    /// The latest check's scores; `verdict` false (insufficient data) leaves them as they were.
    pub fn drift_checked(&self, outcome: DriftCheckOutcome, scores: &[(String, f64)], max: f64) {
        self.drift_checks
            .get_or_create(&DriftCheckLabels { outcome })
            .inc();
        if matches!(
            outcome,
            DriftCheckOutcome::drift | DriftCheckOutcome::no_drift
        ) {
            self.drift_score.set(max);
            for (test, score) in scores {
                self.drift_test_score
                    .get_or_create(&DriftTestLabels { test: test.clone() })
                    .set(*score);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.drift_last_check.set(now);
        }
    }

    pub fn observations_dropped(&self, n: u64) {
        self.observations_dropped.inc_by(n);
    }

    pub fn retrain(&self, outcome: RetrainOutcome) {
        self.retrains
            .get_or_create(&RetrainLabels { outcome })
            .inc();
    }

    pub fn rollback(&self) {
        self.rollbacks.inc();
    }

    pub fn feedback_rows(&self, n: u64) {
        self.feedback_rows.inc_by(n);
    }

    pub fn tracking_dropped(&self) {
        self.tracking_dropped.inc();
    }

    /// Replaces the single `sentiment_model_info` series; `swap` counts a change while serving.
    pub fn model_changed(&self, version: &str, kind: &'static str, fallback: bool, swap: bool) {
        self.model_info.clear();
        self.model_info
            .get_or_create(&ModelInfoLabels {
                version: version.to_string(),
                kind,
                fallback: if fallback { "true" } else { "false" },
            })
            .set(1);
        if swap {
            self.model_swaps.inc();
        }
    }
}
