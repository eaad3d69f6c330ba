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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::kinds::fast::train::EpochReport;
use crate::kinds::{self, LoadInputs, VersionFiles};
use crate::manifest::{
    CONFUSION_PNG, DataWeighting, FORMAT, LOADABLE_KINDS, MANIFEST, Manifest, SplitInfo,
    sha256_file,
};
use crate::metrics::EvalMetrics;
use sentimentd_config::{Backend, Config, Precision};

pub use crate::manifest::{ModelParams, PartWeight, WeightTrial};

/// What a caller hands over to be stored as a new version.
pub struct NewVersion<'a> {
    /// The kind's files and parameters.
    pub model: &'a dyn VersionFiles,
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
        read_manifest(&dir, version)
    }

    /// Where a version fetched from another node is put together before [`install`]: beside
    /// the versions (so the install is one rename), under the prefix a start clears. The
    /// name comes from another node, so it is checked before it names any path.
    pub fn staging_dir(&self, version: &str) -> Result<PathBuf, ModelError> {
        if !valid_version_name(version) {
            return Err(ModelError::UnknownVersion(version.to_string()));
        }
        Ok(self
            .root
            .join("versions")
            .join(format!(".tmp-install-{version}")))
    }

    /// Installs a version whose files were fetched into `staged` (from the cluster's leader):
    /// every file its manifest lists must match its checksum, files it does not list are
    /// removed, then the folder becomes `versions/<version>` in one rename. A version already
    /// in the store is left as it is.
    pub fn install(&self, version: &str, staged: &Path) -> Result<Manifest, ModelError> {
        if !valid_version_name(version) {
            return Err(ModelError::UnknownVersion(version.to_string()));
        }
        if self.version_dir(version).join(MANIFEST).exists() {
            return self.manifest(version);
        }
        let mut manifest = read_manifest(staged, version)?;
        // The drift baseline is attached after training, so the leader may have registered
        // the version before it existed: without the file, the entry goes, and this node
        // computes its own baseline when it serves the version.
        let baseline = crate::manifest::BASELINE;
        if manifest.files.contains_key(baseline) && !staged.join(baseline).exists() {
            manifest.files.remove(baseline);
            let json = serde_json::to_vec_pretty(&manifest).map_err(ModelError::json)?;
            std::fs::write(staged.join(MANIFEST), json)
                .map_err(ModelError::io(staged.join(MANIFEST)))?;
        }
        let files: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
        crate::manifest::verify(&manifest, staged, &files)?;
        // Nothing unchecked goes in.
        let entries = std::fs::read_dir(staged).map_err(ModelError::io(staged))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != MANIFEST && !manifest.files.contains_key(&name) {
                std::fs::remove_file(entry.path()).map_err(ModelError::io(entry.path()))?;
            }
        }
        let final_dir = self.version_dir(version);
        std::fs::rename(staged, &final_dir).map_err(ModelError::io(&final_dir))?;
        if let Ok(dir) = std::fs::File::open(self.root.join("versions")) {
            let _ = dir.sync_all();
        }
        Ok(manifest)
    }
}

/// Reads and checks the manifest of `version` in `dir`.
fn read_manifest(dir: &Path, version: &str) -> Result<Manifest, ModelError> {
    let dir = dir.to_path_buf();
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

impl ModelStore {
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

    /// Loads and verifies a version, of any kind this build loads.
    pub fn load(&self, version: &str) -> Result<Arc<dyn Classifier>, ModelError> {
        let m = self.manifest(version)?;
        let dir = self.version_dir(version);
        kinds::of(m.kind).load(LoadInputs {
            manifest: &m,
            dir: &dir,
            pretrained: self.pretrained.as_ref(),
            embed_batch: self.embed_batch,
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
        let params = v.model.params();
        let kind = params.kind();
        v.model.save(dir)?;
        if let Some(m) = v.metrics.get("validation")
            && let Err(e) = crate::plot::confusion_png(&dir.join(CONFUSION_PNG), m, &version)
        {
            // A missing picture must not cost the operator a trained model.
            tracing::warn!(version = %version, error = %e, "confusion matrix image not written");
        }
        // Every file the kind wrote, and the picture.
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(ModelError::io(dir))? {
            let path = entry.map_err(ModelError::io(dir))?.path();
            if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && path.is_file()
            {
                files.insert(name.to_string(), sha256_file(&path)?);
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
