//! The model store: one directory per version, and a `current` pointer switched atomically.
//!
//! ```text
//! <root>/versions/<version>/manifest.json
//!                           weights.safetensors
//!                           tokenizer.json
//!                           confusion_matrix.png
//! <root>/current            the current version's name, replaced by rename
//! ```
//! A version directory is assembled under a temporary name and renamed into place, so a
//! half-written version is never visible; the manifest records a SHA-256 of every file, so a
//! version damaged later is refused at load instead of served.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::classifier::{Classifier, ModelKind};
use crate::error::ModelError;
use crate::fast::{FastModel, Weights};
use crate::features::Featurizer;
use crate::head::LinearHead;
use crate::metrics::EvalMetrics;
use crate::text::TextPipeline;
use crate::train::{EpochReport, TrainParams};
use crate::transformer::{
    HEAD, TUNED, TransformerModel, TransformerParams, load_head, save_head, shared_encoder,
};
use sentimentd_config::{Backend, Config, Precision};

/// The first characters of a fingerprint, enough to tell two apart in a message.
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

pub const MANIFEST: &str = "manifest.json";
pub const WEIGHTS: &str = "weights.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
pub const CONFUSION_PNG: &str = "confusion_matrix.png";
/// Format 2 tags the parameters with the model kind (`"params": {"fast": {...}}`); format 1
/// (fast models only, untagged parameters) is read as the same thing.
const FORMAT: u32 = 2;
/// The model kinds whose versions this build can load from a store.
const LOADABLE_KINDS: [&str; 2] = ["fast", "transformer"];

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

/// The trained parts of a new version, by kind.
pub enum NewModel<'a> {
    Fast {
        featurizer: &'a Featurizer,
        weights: &'a Weights,
        params: &'a TrainParams,
    },
    Transformer {
        head: &'a LinearHead,
        /// The ensemble's fast model.
        partner: Option<(&'a Featurizer, &'a Weights)>,
        /// Fine-tuned encoder layers (safetensors bytes).
        tuned: Option<&'a [u8]>,
        params: &'a TransformerParams,
    },
}

/// What a caller hands over to be stored as a new version.
pub struct NewVersion<'a> {
    pub model: NewModel<'a>,
    pub data_fingerprint: String,
    pub training_rows: usize,
    pub metrics: BTreeMap<String, EvalMetrics>,
    pub history: Vec<EpochReport>,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub splits: BTreeMap<String, SplitInfo>,
    pub labelled_files: Vec<String>,
    pub weighting: Option<DataWeighting>,
}

pub struct ModelStore {
    root: PathBuf,
    /// Where transformer versions find their encoder, the backend and the precision it runs
    /// with.
    pretrained: Option<(PathBuf, Backend, Precision)>,
    /// Texts per encoder batch of the transformer versions this store loads.
    embed_batch: usize,
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(ModelError::io(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Writes `bytes` to `path` whole or not at all (the data crate's [`AtomicFile`]).
///
/// [`AtomicFile`]: sentimentd_data::atomic::AtomicFile
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    sentimentd_data::atomic::write_bytes_atomic(path, bytes).map_err(ModelError::io(path))
}

fn valid_version_name(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ModelStore {
    /// Opens (and creates if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<ModelStore, ModelError> {
        let versions = root.join("versions");
        std::fs::create_dir_all(&versions).map_err(ModelError::io(&versions))?;
        Ok(ModelStore {
            root: root.to_path_buf(),
            pretrained: None,
            embed_batch: 32,
        })
    }

    /// Opens the store `root` (default `paths.model_store`) with the config's pretrained
    /// encoders, so it loads transformer versions too.
    pub fn for_config(cfg: &Config, root: Option<&Path>) -> Result<ModelStore, ModelError> {
        let mut store = ModelStore::open(root.unwrap_or(&cfg.paths.model_store))?;
        store.pretrained = Some((
            cfg.transformer.pretrained_dir.clone(),
            cfg.train.backend,
            cfg.transformer.precision,
        ));
        store.embed_batch = cfg.transformer.embed_batch;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(version)
    }

    fn current_path(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The version `current` points at, if any.
    pub fn current_version(&self) -> Result<Option<String>, ModelError> {
        let path = self.current_path();
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let v = s.trim().to_string();
                if valid_version_name(&v) {
                    Ok(Some(v))
                } else {
                    Err(ModelError::Corrupt {
                        path,
                        reason: format!("`current` holds an invalid version name {v:?}"),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ModelError::io(path)(e)),
        }
    }

    /// Points `current` at `version` after checking that the version loads (see
    /// [`ModelStore::promote`]: files synced first, the change recorded in the history).
    pub fn set_current(&self, version: &str) -> Result<(), ModelError> {
        self.promote(version, "promote", "made current by a training run")
            .map(|_| ())
    }

    pub fn manifest(&self, version: &str) -> Result<Manifest, ModelError> {
        if !valid_version_name(version) {
            return Err(ModelError::UnknownVersion(version.to_string()));
        }
        let dir = self.version_dir(version);
        if !dir.is_dir() {
            return Err(ModelError::UnknownVersion(version.to_string()));
        }
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Corrupt {
            path: dir.clone(),
            reason: format!("{MANIFEST}: {e}"),
        })?;
        let corrupt = |e: serde_json::Error| ModelError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        };
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(corrupt)?;
        // A version this build cannot read is not damaged: say what it is instead.
        let unsupported = |reason: String| ModelError::Unsupported {
            version: version.to_string(),
            reason,
        };
        if let Some(format) = raw.get("format").and_then(serde_json::Value::as_u64)
            && format > u64::from(FORMAT)
        {
            return Err(unsupported(format!(
                "its manifest format is {format}, written by a newer sentimentd; this build reads format {FORMAT}"
            )));
        }
        if let Some(kind) = raw.get("kind").and_then(serde_json::Value::as_str)
            && !LOADABLE_KINDS.contains(&kind)
        {
            return Err(unsupported(format!(
                "it is of model kind `{kind}`; this build loads {}",
                LOADABLE_KINDS.join(", ")
            )));
        }
        let mut raw = raw;
        if raw.get("format").and_then(serde_json::Value::as_u64) == Some(1)
            && let Some(obj) = raw.as_object_mut()
        {
            // Format 1 stored only fast models, with untagged parameters.
            if let Some(params) = obj.remove("params") {
                obj.insert("params".into(), serde_json::json!({ "fast": params }));
            }
            obj.insert("format".into(), FORMAT.into());
        }
        let m: Manifest = serde_json::from_value(raw).map_err(corrupt)?;
        if m.params.kind() != m.kind {
            return Err(ModelError::Corrupt {
                path,
                reason: format!(
                    "the manifest is of kind {} with parameters of kind {}",
                    m.kind.as_str(),
                    m.params.kind().as_str()
                ),
            });
        }
        if m.format != FORMAT || m.version != version {
            return Err(ModelError::Corrupt {
                path,
                reason: format!(
                    "manifest says format {} version {:?}, expected format {FORMAT} version {version:?}",
                    m.format, m.version
                ),
            });
        }
        Ok(m)
    }

    /// Every complete version, oldest first.
    pub fn list(&self) -> Result<Vec<Manifest>, ModelError> {
        let dir = self.root.join("versions");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(ModelError::io(&dir))? {
            let entry = entry.map_err(ModelError::io(&dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            match self.manifest(&name) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(version = %name, error = %e, "skipping unreadable model version")
                }
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.version.cmp(&b.version))
        });
        Ok(out)
    }

    /// Checks the files of a version against the checksums in its manifest.
    fn verify(&self, m: &Manifest, dir: &Path, files: &[&str]) -> Result<(), ModelError> {
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

    /// The fast model in `dir` (a fast version, or a transformer version's partner).
    fn load_fast(
        &self,
        m: &Manifest,
        dir: &Path,
        params: &TrainParams,
    ) -> Result<FastModel, ModelError> {
        self.verify(m, dir, &[WEIGHTS, TOKENIZER])?;
        let text = TextPipeline::load(&dir.join(TOKENIZER))?;
        let weights = Weights::load(&dir.join(WEIGHTS))?;
        let featurizer = Featurizer::new(text, params.features.clone());
        FastModel::new(featurizer, weights, m.version.clone()).map_err(|e| match e {
            ModelError::Corrupt { reason, .. } => ModelError::Corrupt {
                path: dir.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    fn load_transformer(
        &self,
        m: &Manifest,
        dir: &Path,
        t: &TransformerParams,
    ) -> Result<TransformerModel, ModelError> {
        let unsupported = |reason: String| ModelError::Unsupported {
            version: m.version.clone(),
            reason,
        };
        let Some((pretrained, backend, precision)) = &self.pretrained else {
            return Err(unsupported(
                "a transformer version needs [transformer] pretrained_dir, and this store was \
                 opened without a config"
                    .into(),
            ));
        };
        // The name comes from the manifest: it must stay inside pretrained_dir.
        if !sentimentd_config::TransformerConfig::is_encoder_name(&t.encoder) {
            return Err(ModelError::Corrupt {
                path: dir.join(MANIFEST),
                reason: format!("encoder name {:?} is not a directory name", t.encoder),
            });
        }
        self.verify(m, dir, &[HEAD])?;
        let tuned = match &t.finetune {
            Some(_) => {
                self.verify(m, dir, &[TUNED])?;
                let path = dir.join(TUNED);
                Some(std::fs::read(&path).map_err(ModelError::io(&path))?)
            }
            None => None,
        };
        let encoder = shared_encoder(
            &pretrained.join(&t.encoder),
            t.max_seq_len,
            *backend,
            *precision,
            tuned.as_deref(),
        )?;
        if encoder.fingerprint() != t.encoder_fingerprint {
            return Err(unsupported(format!(
                "it was trained on encoder {} with fingerprint {}, and {} holds a different one \
                 ({}); put the encoder it was trained with there, or train a new version",
                t.encoder,
                short(&t.encoder_fingerprint),
                encoder.dir().display(),
                short(encoder.fingerprint())
            )));
        }
        let head = load_head(&dir.join(HEAD))?;
        let partner = match &t.ensemble {
            Some(e) => Some((self.load_fast(m, dir, &e.fast)?, e.weight)),
            None => None,
        };
        TransformerModel::new(encoder, head, partner, self.embed_batch, m.version.clone())
    }

    /// Loads and verifies a version, of any kind this build loads.
    pub fn load(&self, version: &str) -> Result<Arc<dyn Classifier>, ModelError> {
        let m = self.manifest(version)?;
        let dir = self.version_dir(version);
        Ok(match &m.params {
            ModelParams::Fast(p) => Arc::new(self.load_fast(&m, &dir, p)?),
            ModelParams::Transformer(t) => Arc::new(self.load_transformer(&m, &dir, t)?),
        })
    }

    /// Loads the current version, if `current` is set.
    pub fn load_current(&self) -> Result<Option<Arc<dyn Classifier>>, ModelError> {
        match self.current_version()? {
            Some(v) => Ok(Some(self.load(&v)?)),
            None => Ok(None),
        }
    }

    fn new_version_name(&self, fingerprint: &str) -> String {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let short = &fingerprint[..fingerprint.len().min(8)];
        let base = format!("{stamp}-{short}");
        let mut name = base.clone();
        let mut n = 1;
        while self.version_dir(&name).exists() {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    }

    /// Writes a new version (not yet current) and returns its manifest.
    pub fn save(&self, v: NewVersion<'_>) -> Result<Manifest, ModelError> {
        let version = self.new_version_name(&v.data_fingerprint);
        let versions = self.root.join("versions");
        let mut builder = tempfile::Builder::new();
        builder.prefix(".tmp-");
        // Readable as the umask allows, like the files in it (a temp dir defaults to 0700).
        #[cfg(unix)]
        builder.permissions(sentimentd_data::shareable_dir());
        let tmp = builder
            .tempdir_in(&versions)
            .map_err(ModelError::io(&versions))?;
        let dir = tmp.path();
        let (kind, params, fast) = match v.model {
            NewModel::Fast {
                featurizer,
                weights,
                params,
            } => (
                ModelKind::Fast,
                ModelParams::Fast(params.clone()),
                Some((featurizer, weights)),
            ),
            NewModel::Transformer {
                head,
                partner,
                tuned,
                params,
            } => {
                save_head(head, &dir.join(HEAD))?;
                if let Some(bytes) = tuned {
                    std::fs::write(dir.join(TUNED), bytes)
                        .map_err(ModelError::io(dir.join(TUNED)))?;
                }
                (
                    ModelKind::Transformer,
                    ModelParams::Transformer(params.clone()),
                    partner,
                )
            }
        };
        if let Some((featurizer, weights)) = fast {
            weights.save(&dir.join(WEIGHTS))?;
            featurizer.text.save(&dir.join(TOKENIZER))?;
        }
        if let Some(m) = v.metrics.get("validation")
            && let Err(e) = crate::plot::confusion_png(&dir.join(CONFUSION_PNG), m, &version)
        {
            // A missing picture must not cost the operator a trained model.
            tracing::warn!(version = %version, error = %e, "confusion matrix image not written");
        }
        let mut files = BTreeMap::new();
        for file in [WEIGHTS, TOKENIZER, HEAD, TUNED, CONFUSION_PNG] {
            let path = dir.join(file);
            if path.exists() {
                files.insert(file.to_string(), sha256_file(&path)?);
            }
        }
        let manifest = Manifest {
            format: FORMAT,
            version: version.clone(),
            parent: self.current_version().ok().flatten(),
            created_at: Utc::now().to_rfc3339(),
            kind,
            labels: sentimentd_data::Label::ALL
                .iter()
                .map(|l| l.as_str().to_string())
                .collect(),
            data_fingerprint: v.data_fingerprint,
            training_rows: v.training_rows,
            params,
            metrics: v.metrics,
            history: v.history,
            best_epoch: v.best_epoch,
            train_seconds: v.train_seconds,
            files,
            splits: v.splits,
            labelled_files: v.labelled_files,
            weighting: v.weighting,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(ModelError::json)?;
        std::fs::write(dir.join(MANIFEST), json).map_err(ModelError::io(dir.join(MANIFEST)))?;
        let final_dir = self.version_dir(&version);
        let tmp_path = tmp.keep();
        std::fs::rename(&tmp_path, &final_dir).map_err(ModelError::io(&final_dir))?;
        Ok(manifest)
    }
}
