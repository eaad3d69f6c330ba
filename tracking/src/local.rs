//! The local run log: the record of truth, written before anything touches the network.

use crate::*;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// `<state_dir>/runs`: one JSON line per record in `runs.jsonl`, artifacts copied beside it.
#[derive(Clone, Debug)]
pub struct LocalRunLog {
    dir: PathBuf,
}

impl LocalRunLog {
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalRunLog, TrackingError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| TrackingError::io(&dir, e))?;
        Ok(LocalRunLog { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runs_file(&self) -> PathBuf {
        self.dir.join(RUNS_FILE)
    }

    pub fn artifacts_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR).join(run_id)
    }

    /// Appends `record` (artifacts copied first, so a line never names a missing copy).
    pub fn record(&self, record: &RunRecord) -> Result<(), TrackingError> {
        self.store(record).map(|_| ())
    }

    /// Like [`LocalRunLog::record`], returning the record as stored: its artifacts point at
    /// the copies, which outlive the caller's temporary files (what a later retry uploads).
    pub fn store(&self, record: &RunRecord) -> Result<RunRecord, TrackingError> {
        record.validate()?;
        let mut stored = record.clone();
        stored.artifacts = self.copy_artifacts(record)?;
        let mut line = serde_json::to_vec(&stored).map_err(|source| TrackingError::Encode {
            run_id: record.run_id.clone(),
            source,
        })?;
        line.push(b'\n');
        let path = self.runs_file();
        append_line(&path, line)?;
        Ok(stored)
    }

    fn copy_artifacts(&self, record: &RunRecord) -> Result<Vec<PathBuf>, TrackingError> {
        if record.artifacts.is_empty() {
            return Ok(Vec::new());
        }
        let dest_dir = self.artifacts_dir(&record.run_id);
        std::fs::create_dir_all(&dest_dir).map_err(|e| TrackingError::io(&dest_dir, e))?;
        let mut copied = Vec::with_capacity(record.artifacts.len());
        let mut names = HashSet::new();
        for src in &record.artifacts {
            // An artifact is an attachment; losing one must not lose the record itself.
            let is_file = std::fs::metadata(src).map(|m| m.is_file()).unwrap_or(false);
            if !is_file {
                tracing::warn!(
                    run_id = %record.run_id,
                    artifact = %src.display(),
                    "run artifact is missing or not a regular file; recording the run without it"
                );
                continue;
            }
            let base = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "artifact".to_string());
            let mut name = base.clone();
            let mut i = 1;
            while !names.insert(name.clone()) {
                name = format!("{i}-{base}");
                i += 1;
            }
            let dest = dest_dir.join(&name);
            if src.canonicalize().ok() != dest.canonicalize().ok() {
                std::fs::copy(src, &dest).map_err(|e| TrackingError::io(src, e))?;
                File::open(&dest)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| TrackingError::io(&dest, e))?;
            }
            copied.push(dest);
        }
        sync_dir(&dest_dir);
        Ok(copied)
    }

    /// Removes the artifact folders of all but the newest `keep` runs of each kind (a drift
    /// check every few minutes would otherwise fill the disk with reports). Records stay in
    /// `runs.jsonl`; runs still waiting to reach MLflow keep their artifacts, which the retry
    /// uploads. Returns how many folders were removed.
    pub fn prune_artifacts(&self, keep: usize) -> Result<usize, TrackingError> {
        let waiting = pending_run_ids(&self.dir.join(PENDING_FILE))?;
        let mut seen: HashMap<RunKind, usize> = HashMap::new();
        let mut removed = 0;
        for record in self.list()?.iter().rev() {
            if record.artifacts.is_empty() {
                continue;
            }
            let n = seen.entry(record.kind).or_default();
            *n += 1;
            if *n <= keep || waiting.contains(&record.run_id) {
                continue;
            }
            let dir = self.artifacts_dir(&record.run_id);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TrackingError::io(&dir, e)),
            }
        }
        if removed > 0 {
            tracing::debug!(removed, keep, dir = %self.dir.display(), "pruned old run artifacts");
        }
        Ok(removed)
    }

    /// Every record, oldest first. A line that does not parse (the torn tail of a crash, or one
    /// that a crash cut and a later append terminated) is skipped with a warning.
    pub fn list(&self) -> Result<Vec<RunRecord>, TrackingError> {
        read_jsonl(&self.runs_file())
    }

    /// The record with this id, if logged.
    pub fn get(&self, run_id: &str) -> Result<Option<RunRecord>, TrackingError> {
        Ok(self.list()?.into_iter().rev().find(|r| r.run_id == run_id))
    }
}

/// Appends one line with a single `write` (O_APPEND keeps concurrent whole lines apart) and
/// fsyncs. If the file does not end in a newline (a crash tore the last line), the torn line
/// is terminated first so it cannot swallow this one.
pub(crate) fn append_line(path: &Path, mut line: Vec<u8>) -> Result<(), TrackingError> {
    use std::os::unix::fs::FileExt;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| TrackingError::io(path, e))?;
    let len = f.metadata().map_err(|e| TrackingError::io(path, e))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1)
            .map_err(|e| TrackingError::io(path, e))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line).map_err(|e| TrackingError::io(path, e))?;
    f.sync_data().map_err(|e| TrackingError::io(path, e))?;
    if len == 0 {
        // A new file is only durable once its directory entry is.
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
    }
    Ok(())
}

/// Local run ids the MLflow queue at `path` still has to send.
pub(crate) fn pending_run_ids(path: &Path) -> Result<HashSet<String>, TrackingError> {
    let entries: Vec<PendingEntry> = read_jsonl(path)?;
    Ok(entries
        .into_iter()
        .map(|e| match e.op {
            MlflowOp::Run { record } => record.run_id,
            MlflowOp::Champion { run_id, .. } => run_id,
        })
        .collect())
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Err(e) = sentimentd_data::atomic::sync_dir(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}

pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, TrackingError> {
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut text)
                .map_err(|e| TrackingError::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrackingError::io(path, e)),
    }
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(v) => out.push(v),
            Err(e) => {
                let torn_tail = i == last;
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    torn_tail,
                    error = %e,
                    "skipping unreadable line of a JSON-lines log (left by a crash mid-write)"
                );
            }
        }
    }
    Ok(out)
}
