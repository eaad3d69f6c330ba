//! Drift baselines and one-shot drift checks of a model over texts: the ML side of the
//! Baseliner and of `sentimentd baseline` / `sentimentd drift`. The statistics themselves live
//! in `sentimentd_data::drift`.

use std::path::PathBuf;

use sentimentd_config::Config;
use sentimentd_data::drift::{self, Baseline, DriftReport, Observation};
use sentimentd_data::{ReadOptions, read_batch};

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::promotion::BASELINE;
use crate::store::ModelStore;

/// What the model says about each text, as drift detection records it while serving.
pub fn observe(model: &dyn Classifier, texts: &[&str]) -> Vec<Observation> {
    model
        .analyse_batch(texts)
        .into_iter()
        .zip(texts)
        .map(|(a, t)| Observation::new(a.prediction.label, a.embedding, a.oov_share, t))
        .collect()
}

/// Texts of CSV files with a `text` column (labels, if any, are not needed); bad rows are
/// left out as everywhere else.
pub fn read_texts(paths: &[PathBuf], max_text_chars: usize) -> Result<Vec<String>, ModelError> {
    let opts = ReadOptions {
        max_text_chars,
        require_label: false,
    };
    let mut out = Vec::new();
    for p in paths {
        let batch = read_batch(p, &opts)?;
        let col = batch.text_col;
        out.extend(
            batch
                .rows
                .into_iter()
                .map(|mut r| std::mem::take(&mut r.fields[col])),
        );
    }
    Ok(out)
}

/// The configured reference files: `[drift] reference`, or the reporting split.
pub fn reference_paths(cfg: &Config) -> Vec<PathBuf> {
    if cfg.drift.reference.is_empty() {
        vec![cfg.data.val.clone()]
    } else {
        cfg.drift.reference.clone()
    }
}

/// A baseline of `model` over the reference texts plus `extra` texts (after a drift-driven
/// promotion: the recent labelled texts the new model was trained and gated for).
pub fn compute(
    cfg: &Config,
    model: &dyn Classifier,
    reference: &[PathBuf],
    extra: &[String],
    extra_description: Option<String>,
) -> Result<Baseline, ModelError> {
    let mut texts = read_texts(reference, cfg.data.max_text_chars)?;
    texts.extend(extra.iter().cloned());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let obs = observe(model, &refs);
    let mut described: Vec<String> = reference.iter().map(|p| p.display().to_string()).collect();
    described.extend(extra_description);
    Ok(Baseline::build(
        model.version(),
        &chrono::Utc::now().to_rfc3339(),
        described,
        &obs,
        cfg.drift.baseline_sample,
        cfg.train.seed,
    ))
}

/// Computes a version's baseline (see [`compute`]) and stores it, checksummed, in its
/// directory.
pub fn compute_and_attach(
    cfg: &Config,
    store: &ModelStore,
    model: &dyn Classifier,
    reference: &[PathBuf],
    extra: &[String],
    extra_description: Option<String>,
) -> Result<Baseline, ModelError> {
    let b = compute(cfg, model, reference, extra, extra_description)?;
    store.attach_file(model.version(), BASELINE, &b.to_json())?;
    Ok(b)
}

/// The stored baseline of a version, verified; `None` when it has none yet.
pub fn load(store: &ModelStore, version: &str) -> Result<Option<Baseline>, ModelError> {
    match store.read_attached(version, BASELINE)? {
        Some(bytes) => Baseline::from_json(&bytes)
            .map(Some)
            .map_err(|e| ModelError::Corrupt {
                path: store.version_dir(version).join(BASELINE),
                reason: e.to_string(),
            }),
        None => Ok(None),
    }
}

/// One drift check of `texts` against `baseline`, as the daemon runs it on recent traffic.
pub fn check_texts(
    cfg: &Config,
    model: &dyn Classifier,
    baseline: &Baseline,
    texts: &[String],
) -> DriftReport {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let obs = observe(model, &refs);
    drift::check(
        baseline,
        &obs,
        &cfg.drift,
        model.version(),
        &chrono::Utc::now().to_rfc3339(),
        cfg.train.seed,
    )
}
