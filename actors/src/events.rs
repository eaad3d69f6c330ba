//! Operational events of the MLOps loop. Each is a small struct whose `emit` writes its one
//! journal line and updates its metrics together (Vector's `internal_events` pattern), so a
//! log line and its counter can never disagree, and handlers stay free of logging noise.

use sentimentd_data::drift::{DriftReport, Verdict};

use crate::messages::RetrainTrigger;
use crate::metrics::{DriftCheckOutcome, Metrics, RetrainOutcome};

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
