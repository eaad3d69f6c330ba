//! Promotion, rollback and decisions on the model store.
//!
//! ```text
//! <root>/history.jsonl                    one line per change of `current`
//! <root>/versions/<v>/decision.json       why a candidate was promoted or rejected
//! <root>/versions/<v>/baseline.json       drift baseline, checksummed in the manifest
//! ```
//! `current` only moves after every file of the version and its directory are on disk
//! (fsync), so a power cut can never leave `current` naming a version with empty files.
//! The history is what rollback walks back; it is append-only JSON lines, written before
//! `current` moves, so a switch that cannot be recorded is refused rather than made.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::manifest::MANIFEST;
use crate::store::{ModelStore, write_atomic};
use std::sync::Arc;

pub const HISTORY: &str = "history.jsonl";
pub const DECISION: &str = "decision.json";
pub use crate::manifest::BASELINE;
/// History action of a switch that was recorded but could not be made; the walk back treats
/// it as a return to `version` (the one that kept serving).
pub const ABORTED: &str = "aborted";

/// One change of `current`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    pub version: String,
    pub from: Option<String>,
    /// `promote`, `rollback`, `train`, `gate`, ...
    pub action: String,
    pub reason: String,
}

/// The gate's verdict on a candidate, kept next to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub version: String,
    pub decided_at: String,
    /// `promoted` or `rejected`.
    pub status: String,
    pub reason: String,
    pub against: Option<String>,
    /// Metrics of both models on the gate sets, with the rules and whether each passed.
    pub details: serde_json::Value,
}

fn sync_path(path: &Path) -> Result<(), ModelError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ModelError::io(path))
}

impl ModelStore {
    fn history_path(&self) -> PathBuf {
        self.root().join(HISTORY)
    }

    pub fn history(&self) -> Result<Vec<HistoryEntry>, ModelError> {
        let path = self.history_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ModelError::io(&path)(e)),
        };
        // A torn last line (crash mid-append) is ignored: the switch it describes either
        // happened (and `current` says so) or not.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Appends one line and fsyncs. A torn last line (a crash mid-append) is terminated
    /// first, so it cannot glue onto this entry and take it down with it.
    fn append_history(&self, entry: &HistoryEntry) -> Result<(), ModelError> {
        use std::os::unix::fs::FileExt;
        let path = self.history_path();
        let mut line = serde_json::to_vec(entry).map_err(ModelError::json)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(ModelError::io(&path))?;
        let len = f.metadata().map_err(ModelError::io(&path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            f.read_exact_at(&mut last, len - 1)
                .map_err(ModelError::io(&path))?;
            if last[0] != b'\n' {
                tracing::warn!(file = %path.display(), "the model history ends in a torn line (a crash mid-write); it is closed off and ignored");
                line.insert(0, b'\n');
            }
        }
        f.write_all(&line).map_err(ModelError::io(&path))?;
        f.sync_all().map_err(ModelError::io(&path))
    }

    /// Makes `version` current: verifies it loads, fsyncs its files and directory, switches
    /// `current` atomically and records the change. Returns the model it verified, so a caller
    /// that serves it next does not load and checksum it a second time.
    pub fn promote(
        &self,
        version: &str,
        action: &str,
        reason: &str,
    ) -> Result<Arc<dyn Classifier>, ModelError> {
        let model = self.load(version)?;
        let dir = self.version_dir(version);
        for entry in std::fs::read_dir(&dir).map_err(ModelError::io(&dir))? {
            let entry = entry.map_err(ModelError::io(&dir))?;
            if entry.path().is_file() {
                sync_path(&entry.path())?;
            }
        }
        sync_path(&dir)?;
        sync_path(&self.root().join("versions"))?;
        let from = self.current_version()?;
        // The history first: a switch that cannot be recorded does not happen (rollback
        // walks the history, so an unrecorded switch would be skipped by it).
        self.append_history(&HistoryEntry {
            at: chrono::Utc::now().to_rfc3339(),
            version: version.to_string(),
            from: from.clone(),
            action: action.to_string(),
            reason: reason.to_string(),
        })?;
        if let Err(e) = write_atomic(
            &self.root().join("current"),
            format!("{version}\n").as_bytes(),
        ) {
            // Recorded but not done: an `aborted` entry undoes it for the walk back.
            let undo = HistoryEntry {
                at: chrono::Utc::now().to_rfc3339(),
                version: from.clone().unwrap_or_default(),
                from: Some(version.to_string()),
                action: ABORTED.to_string(),
                reason: format!("switching `current` failed: {e}"),
            };
            if let Some(from) = &from
                && let Err(undo_err) = self.append_history(&undo)
            {
                tracing::error!(version, from = %from, error = %undo_err, "cannot record that a switch of the model store's current version failed");
            }
            return Err(e);
        }
        Ok(model)
    }

    /// The version served before the current one, walking the history as a stack (a
    /// promotion pushes, a rollback pops), so repeated rollbacks keep going back.
    pub fn rollback_target(&self) -> Result<Option<String>, ModelError> {
        let mut stack: Vec<String> = Vec::new();
        for e in self.history()? {
            if e.action == "rollback" || e.action == ABORTED {
                while stack.last().is_some_and(|v| v != &e.version) {
                    stack.pop();
                }
                if stack.is_empty() {
                    stack.push(e.version);
                }
            } else {
                if stack.is_empty()
                    && let Some(from) = e.from
                {
                    stack.push(from);
                }
                // Promoting the version that already serves changes nothing to go back to.
                if stack.last() != Some(&e.version) {
                    stack.push(e.version);
                }
            }
        }
        let current = self.current_version()?;
        // `current` may have been switched without history (an older build): it is the top.
        if current.is_some() && stack.last() != current.as_ref() {
            stack.extend(current);
        }
        stack.pop();
        Ok(stack.pop())
    }

    /// Writes `name` into a version directory and records its checksum in the manifest, so a
    /// damaged file is refused like the weights are.
    pub fn attach_file(&self, version: &str, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let mut manifest = self.manifest(version)?;
        let dir = self.version_dir(version);
        write_atomic(&dir.join(name), bytes)?;
        use sha2::{Digest, Sha256};
        manifest
            .files
            .insert(name.to_string(), hex::encode(Sha256::digest(bytes)));
        let json = serde_json::to_vec_pretty(&manifest).map_err(ModelError::json)?;
        write_atomic(&dir.join(MANIFEST), &json)
    }

    /// A file of a version, verified against the manifest's checksum; `None` if not attached.
    pub fn read_attached(&self, version: &str, name: &str) -> Result<Option<Vec<u8>>, ModelError> {
        let manifest = self.manifest(version)?;
        let Some(expected) = manifest.files.get(name) else {
            return Ok(None);
        };
        let path = self.version_dir(version).join(name);
        let bytes = std::fs::read(&path).map_err(ModelError::io(&path))?;
        use sha2::{Digest, Sha256};
        if &hex::encode(Sha256::digest(&bytes)) != expected {
            return Err(ModelError::Corrupt {
                path,
                reason: "checksum does not match the manifest".into(),
            });
        }
        Ok(Some(bytes))
    }

    pub fn write_decision(&self, d: &Decision) -> Result<(), ModelError> {
        let json = serde_json::to_vec_pretty(d).map_err(ModelError::json)?;
        write_atomic(&self.version_dir(&d.version).join(DECISION), &json)
    }

    /// The gate's reason, when it rejected `version`: such a version is served only when the
    /// operator insists (`model promote --force`, `"force": true`).
    pub fn rejected_by_gate(&self, version: &str) -> Option<String> {
        self.decision(version)
            .filter(|d| d.status == "rejected")
            .map(|d| d.reason)
    }

    pub fn decision(&self, version: &str) -> Option<Decision> {
        let bytes = std::fs::read(self.version_dir(version).join(DECISION)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every version that has a gate decision, with it, oldest version first.
    pub fn decisions(&self) -> Vec<(crate::Manifest, Decision)> {
        self.list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| self.decision(&m.version).map(|d| (m, d)))
            .collect()
    }

    /// Removes version directories a crash left half-written (they were never visible under
    /// their final name). Returns how many were removed.
    pub fn remove_stale_temp_dirs(&self) -> usize {
        let versions = self.root().join("versions");
        let Ok(entries) = std::fs::read_dir(&versions) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| n.starts_with(".tmp-"))
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                tracing::info!(dir = %e.path().display(), "removed a half-written model version left by a crash");
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(
        history: &[(&str, Option<&str>, &str)],
        current: &str,
    ) -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ModelStore::open(dir.path()).expect("store");
        for (version, from, action) in history {
            store
                .append_history(&HistoryEntry {
                    at: "t".into(),
                    version: version.to_string(),
                    from: from.map(str::to_string),
                    action: action.to_string(),
                    reason: String::new(),
                })
                .expect("history");
        }
        std::fs::write(dir.path().join("current"), format!("{current}\n")).expect("current");
        (dir, store)
    }

    #[test]
    fn rollback_walks_back_through_promotions() {
        let (_d, s) = store_with(
            &[
                ("a", None, "promote"),
                ("b", Some("a"), "gate"),
                ("c", Some("b"), "promote"),
            ],
            "c",
        );
        assert_eq!(s.rollback_target().ok().flatten().as_deref(), Some("b"));
        let (_d, s) = store_with(
            &[
                ("a", None, "promote"),
                ("b", Some("a"), "gate"),
                ("c", Some("b"), "promote"),
                ("b", Some("c"), "rollback"),
            ],
            "b",
        );
        assert_eq!(s.rollback_target().ok().flatten().as_deref(), Some("a"));
        let (_d, s) = store_with(
            &[
                ("a", None, "promote"),
                ("b", Some("a"), "gate"),
                ("a", Some("b"), "rollback"),
            ],
            "a",
        );
        assert_eq!(s.rollback_target().ok().flatten(), None, "nothing before a");
    }

    #[test]
    fn an_aborted_switch_is_walked_back_like_a_rollback() {
        let (_d, s) = store_with(
            &[
                ("a", None, "promote"),
                ("b", Some("a"), "promote"),
                ("c", Some("b"), "promote"),
                ("b", Some("c"), ABORTED),
            ],
            "b",
        );
        assert_eq!(s.rollback_target().ok().flatten().as_deref(), Some("a"));
    }

    #[test]
    fn a_current_switched_without_history_is_the_top() {
        // Promoting the current version again does not trap rollback on it.
        let (_d, s) = store_with(
            &[
                ("a", None, "promote"),
                ("b", Some("a"), "promote"),
                ("b", Some("b"), "promote"),
            ],
            "b",
        );
        assert_eq!(s.rollback_target().ok().flatten().as_deref(), Some("a"));
        let (_d, s) = store_with(&[("a", None, "promote")], "x");
        assert_eq!(s.rollback_target().ok().flatten().as_deref(), Some("a"));
        let (dir, s) = store_with(&[], "x");
        assert_eq!(s.rollback_target().ok().flatten(), None);
        // A torn last line is ignored.
        std::fs::write(dir.path().join(HISTORY), "{\"at\":").expect("torn");
        assert_eq!(s.history().map(|h| h.len()).ok(), Some(0));
    }
}
