//! A model version's manifest: what it is, how it was trained and scored, the checksums of
//! its files, and the parameters of its kind.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

use crate::classifier::ModelKind;
use crate::error::ModelError;
use crate::kinds::fast::train::{EpochReport, TrainParams};
use crate::kinds::transformer::params::TransformerParams;
use crate::metrics::EvalMetrics;

/// The first characters of a fingerprint, enough to tell two apart in a message.
pub(crate) fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

pub const MANIFEST: &str = "manifest.json";

pub const WEIGHTS: &str = "weights.safetensors";

pub const TOKENIZER: &str = "tokenizer.json";

pub const CONFUSION_PNG: &str = "confusion_matrix.png";

/// Format 2 tags the parameters with the model kind (`"params": {"fast": {...}}`); format 1
/// (fast models only, untagged parameters) is read as the same thing.
pub(crate) const FORMAT: u32 = 2;

/// The model kinds whose versions this build can load from a store.
pub(crate) const LOADABLE_KINDS: [&str; 2] = ["fast", "transformer"];

/// The parameters of a version, tagged with its kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelParams {
    Fast(TrainParams),
    Transformer(TransformerParams),
}

impl ModelParams {
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelParams::Fast(_) => ModelKind::Fast,
            ModelParams::Transformer(_) => ModelKind::Transformer,
        }
    }

    /// The fast model's parameters: the model's own, or its ensemble partner's.
    pub fn fast(&self) -> Option<&TrainParams> {
        match self {
            ModelParams::Fast(p) => Some(p),
            ModelParams::Transformer(t) => t.ensemble.as_ref().map(|e| &e.fast),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: String,
    pub parent: Option<String>,
    pub created_at: String,
    pub kind: ModelKind,
    pub labels: Vec<String>,
    pub data_fingerprint: String,
    pub training_rows: usize,
    pub params: ModelParams,
    /// Metrics per split: `validation` is the reporting split, which selected nothing;
    /// `selection` picked the epoch and the temperature, so it reads optimistic.
    pub metrics: BTreeMap<String, EvalMetrics>,
    pub history: Vec<EpochReport>,
    pub best_epoch: usize,
    pub train_seconds: f64,
    /// SHA-256 of every file of the version, by file name.
    pub files: BTreeMap<String, String>,
    /// The data of each split (`train`, `selection`, `validation`); empty in versions written
    /// before splits were recorded.
    #[serde(default)]
    pub splits: BTreeMap<String, SplitInfo>,
    /// Lineage: the labelled-data files whose rows were added to the training data.
    #[serde(default)]
    pub labelled_files: Vec<String>,
    /// How much each part of the training data (base files, recent labelled rows) weighed;
    /// absent in versions written before rows were weighed.
    #[serde(default)]
    pub weighting: Option<DataWeighting>,
}

/// How much each part of a run's training data weighed, and how the recent rows' weight was
/// chosen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataWeighting {
    pub parts: Vec<PartWeight>,
    /// Each recent-row weight tried, with its selection-split figures; empty when there was
    /// nothing to choose.
    #[serde(default)]
    pub trials: Vec<WeightTrial>,
    /// Most selection macro-recall the base rows could lose against the smallest weight.
    #[serde(default)]
    pub tolerance: Option<f64>,
}

/// The name of the recent labelled rows' part in [`DataWeighting::parts`].
pub const RECENT: &str = "recent";

impl DataWeighting {
    /// The recent labelled rows' part, if the run had any.
    pub fn recent(&self) -> Option<&PartWeight> {
        self.parts.iter().find(|p| p.name == RECENT)
    }
}

/// One recent-row weight tried by a retrain, judged on the selection split only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightTrial {
    /// One recent row weighs this many base rows.
    pub row_weight: f64,
    /// The recent rows' share of the training weight.
    pub share: f64,
    /// Macro-recall on the selection split's base rows.
    pub selection_base: f64,
    /// Macro-recall on the selection split's recent rows (over the classes they have).
    pub selection_recent: f64,
    pub seconds: f64,
    /// The weight the run kept.
    pub chosen: bool,
}

/// One part of the training data: `base` (the configured training files) or `recent` (the
/// labelled rows that arrived since).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartWeight {
    pub name: String,
    /// Rows that trained the weights.
    pub train_rows: usize,
    /// Rows carved into the selection split.
    pub selection_rows: usize,
    /// Weight of one row against one base row, in the loss and in selection.
    pub row_weight: f64,
    /// Share of the whole training weight (rows times row weight).
    pub share: f64,
}

/// Where one split's rows came from, exactly enough to tell two runs' data apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub rows: usize,
    /// `sentimentd_data::fingerprint` of the split's texts and labels, in order.
    pub fingerprint: String,
    /// File paths, or how the split was carved (`selection: 10% of training data, ...`).
    pub source: String,
    /// Share of the training data, for a carved split.
    #[serde(default)]
    pub share: Option<f64>,
    /// Seed of the carve, for a carved split.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The drift baseline a version gets attached once it serves (after training).
pub const BASELINE: &str = "baseline.json";

pub(crate) fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(ModelError::io(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Checks the files of a version against the checksums in its manifest.
pub(crate) fn verify(m: &Manifest, dir: &Path, files: &[&str]) -> Result<(), ModelError> {
    for &file in files {
        let expected = m.files.get(file).ok_or_else(|| ModelError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("manifest lists no checksum for {file}"),
        })?;
        let path = dir.join(file);
        let actual = sha256_file(&path).map_err(|e| ModelError::Corrupt {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if &actual != expected {
            return Err(ModelError::Corrupt {
                path,
                reason: "checksum does not match the manifest".into(),
            });
        }
    }
    Ok(())
}
