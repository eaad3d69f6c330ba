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
        metrics
            .mlops
            .drift_checked(DriftCheckOutcome::failed, &[], 0.0);
        tracing::warn!(reason = self.reason, "drift check not run");
    }
}

pub struct RetrainSkipped<'a> {
    pub trigger: RetrainTrigger,
    pub reason: &'a str,
}

impl InternalEvent for RetrainSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.mlops.retrain(RetrainOutcome::skipped);
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
        metrics.mlops.retrain(RetrainOutcome::failed);
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
        metrics.mlops.retrain(RetrainOutcome::rejected);
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
        metrics.mlops.retrain(RetrainOutcome::promoted);
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
        metrics.mlops.rollback();
        tracing::warn!(
            from = self.from,
            to = self.to,
            reason = self.reason,
            "rolled back to the previous model version"
        );
    }
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
