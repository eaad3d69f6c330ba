//! Events of the MLOps loop: drift checks, retrains, the gate, rollbacks, run tracking.

use sentimentd_data::drift::{DriftReport, Verdict};

use super::InternalEvent;
use crate::messages::RetrainTrigger;
use crate::telemetry::metrics::{DriftCheckOutcome, Metrics, RetrainOutcome};

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
        metrics.mlops.drift_checked(outcome, &scores, r.drift_score);
        // Every verdict's line starts with the model and the window it judged.
        macro_rules! log {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(model_version = %r.model_version, samples = r.samples, $($rest)+)
            };
        }
        let report = self.report_file;
        match r.verdict {
            Verdict::Drift => log!(
                warn,
                drift_score = r.drift_score,
                fired = %r.fired.join(","),
                report,
                "drift detected"
            ),
            Verdict::NoDrift => log!(
                info,
                drift_score = r.drift_score,
                report,
                "drift check: no drift"
            ),
            Verdict::Insufficient => log!(
                info,
                min_samples = r.min_samples,
                "drift check: too few observations for a verdict"
            ),
        }
    }
}

/// An event that is a struct of borrowed fields, counted by `$count` and logged as one line;
/// the fields are in scope by name in both.
macro_rules! event {
    (
        $name:ident { $($field:ident: $ty:ty),+ $(,)? }
        => |$metrics:ident| $count:expr;
        $level:ident!($($log:tt)+)
    ) => {
        pub struct $name<'a> {
            $(pub $field: $ty),+
        }

        impl InternalEvent for $name<'_> {
            fn emit(self, $metrics: &Metrics) {
                let $name { $($field),+ } = self;
                $count;
                tracing::$level!($($log)+);
            }
        }
    };
}

event! {
    DriftCheckFailed { reason: &'a str }
    => |m| m.mlops.drift_checked(DriftCheckOutcome::failed, &[], 0.0);
    warn!(reason, "drift check not run")
}

event! {
    RetrainSkipped { trigger: RetrainTrigger, reason: &'a str }
    => |m| m.mlops.retrain(RetrainOutcome::skipped);
    info!(trigger = trigger.as_str(), reason, "retrain skipped")
}

event! {
    RetrainFailed { trigger: RetrainTrigger, error: &'a str }
    => |m| m.mlops.retrain(RetrainOutcome::failed);
    error!(trigger = trigger.as_str(), error, "retrain failed; still serving the current model")
}

event! {
    CandidateRejected { version: &'a str, against: &'a str, reason: &'a str }
    => |m| m.mlops.retrain(RetrainOutcome::rejected);
    warn!(
        candidate = version,
        serving = against,
        reason,
        "candidate rejected by the gate; still serving the current model"
    )
}

event! {
    CandidatePromoted { version: &'a str, from: &'a str, reason: &'a str }
    => |m| m.mlops.retrain(RetrainOutcome::promoted);
    info!(candidate = version, from, reason, "candidate passed the gate and was promoted")
}

event! {
    RolledBack { from: &'a str, to: &'a str, reason: &'a str }
    => |m| m.mlops.rollback();
    warn!(from, to, reason, "rolled back to the previous model version")
}

/// A record was taken off the MLflow queue without reaching MLflow.
pub struct TrackingRecordDropped<'a> {
    pub record: &'a sentimentd_tracking::DroppedRecord,
    pub dead_letter: &'a std::path::Path,
}

impl InternalEvent for TrackingRecordDropped<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.mlops.tracking_dropped();
        tracing::error!(
            op = %self.record.op,
            attempts = self.record.attempts,
            error = %self.record.error,
            dead_letter = %self.dead_letter.display(),
            "MLflow did not take a record; moved to the dead-letter file (the local run log keeps it)"
        );
    }
}
