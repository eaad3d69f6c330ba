//! The run records of the daemon's and the CLI's work, built from what that work leaves:
//! a trained model's manifest, a drift report.

use crate::{RunKind, RunRecord};
use sentimentd_data::drift::DriftReport;

/// The run-log record of a stored training run: parameters, per-split metrics, the epoch
/// history as metric steps, and the version's small files as artifacts.
pub fn training_record(
    manifest: &sentimentd_model::Manifest,
    trigger: &str,
    version_dir: &std::path::Path,
) -> RunRecord {
    let mut rec = RunRecord::new(RunKind::Training, "train");
    rec.tags.insert("trigger".into(), trigger.into());
    rec.tags
        .insert("model_version".into(), manifest.version.clone());
    if let Some(p) = &manifest.parent {
        rec.tags.insert("parent".into(), p.clone());
    }
    rec.params
        .insert("kind".into(), manifest.kind.as_str().to_string());
    // The parameters are tagged by kind (`{"fast": {...}}`): record the kind's own keys.
    let tagged = serde_json::to_value(&manifest.params).ok();
    let own = tagged
        .as_ref()
        .and_then(|t| t.get(manifest.kind.as_str()))
        .and_then(serde_json::Value::as_object);
    if let Some(params) = own.cloned() {
        for (k, v) in params {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            rec.params.insert(k, v);
        }
    }
    rec.params
        .insert("training_rows".into(), manifest.training_rows.to_string());
    rec.params
        .insert("data_fingerprint".into(), manifest.data_fingerprint.clone());
    for (split, m) in &manifest.metrics {
        rec.metrics
            .insert(format!("{split}_macro_recall"), m.macro_recall);
        rec.metrics.insert(format!("{split}_accuracy"), m.accuracy);
        rec.metrics.insert(format!("{split}_macro_f1"), m.macro_f1);
    }
    for e in &manifest.history {
        rec.metric_step("epoch_train_loss", e.epoch as i64, e.train_loss);
    }
    rec.metrics
        .insert("train_seconds".into(), manifest.train_seconds);
    for f in ["manifest.json", "confusion_matrix.png"] {
        let p = version_dir.join(f);
        if p.exists() {
            rec.artifacts.push(p);
        }
    }
    rec.finish()
}

/// The run-log record of a drift check (the daemon's and `sentimentd drift`'s alike): each
/// test's value and threshold-normalised score, the verdict and what fired.
pub fn drift_record(report: &DriftReport, name: &str) -> RunRecord {
    let mut rec = RunRecord::new(RunKind::DriftCheck, name);
    rec.tags
        .insert("model_version".into(), report.model_version.clone());
    rec.tags
        .insert("verdict".into(), report.verdict.as_str().to_string());
    rec.tags.insert("fired".into(), report.fired.join(","));
    rec.params
        .insert("window".into(), report.samples.to_string());
    rec.metrics.insert("drift_score".into(), report.drift_score);
    for t in &report.tests {
        rec.metrics.insert(format!("{}_score", t.test), t.score);
        rec.metrics.insert(t.test.clone(), t.value);
    }
    rec
}
