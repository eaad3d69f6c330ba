//! The processing journal: one small JSON file per inbox file being processed, written
//! atomically before any output exists and removed after the input has left the inbox.
//!
//! Together with outputs that are written whole (temp file + rename) it makes a batch
//! idempotent: after a crash the batch is simply run again under the same entry, which
//! overwrites the same output names, its labelled-data file included. Nothing is lost and
//! nothing is duplicated.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Input file name in the inbox.
    pub input: String,
    /// Output names, chosen once so a rerun writes exactly the same files.
    pub output: String,
    pub errors: String,
    pub archived: String,
    pub started_at: String,
    /// Name of the batch's file in the labelled-data store (written only if it has labels).
    #[serde(default)]
    pub labelled: Option<String>,
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
        })
    }

    fn path_for(&self, input: &str) -> PathBuf {
        self.dir.join(format!("{input}.json"))
    }

    pub fn get(&self, input: &str) -> std::io::Result<Option<JournalEntry>> {
        match std::fs::read(self.path_for(input)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put(&self, entry: &JournalEntry) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(entry)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_atomic(&self.path_for(&entry.input), &bytes)
    }

    pub fn remove(&self, input: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_for(input)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Entries of every batch that was in progress.
    pub fn entries(&self) -> std::io::Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(input) = name.strip_suffix(".json")
                && !name.starts_with('.')
                && let Some(e) = self.get(input)?
            {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// fsync of a directory, so a rename or unlink in it survives a power cut too.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` whole or not at all: a hidden temp file in the same directory,
/// fsync, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by a writer callback.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).suffix(".tmp");
    // Outputs honour the process umask (group-readable under the unit's UMask=0027).
    #[cfg(unix)]
    builder.permissions(sentimentd_data::shareable_file());
    let mut tmp = builder.tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Prefix of the temp files [`write_atomic`] creates; leftovers of a crash are removed at
/// start-up by [`remove_stale_temp_files`].
pub const TEMP_PREFIX: &str = ".sentimentd-";

pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a temp file left by a crash")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale temp file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_remove() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let j = Journal::open(dir.path())?;
        let e = JournalEntry {
            input: "a.csv".into(),
            output: "a.csv".into(),
            errors: "a.csv.errors.csv".into(),
            archived: "a.csv".into(),
            started_at: "now".into(),
            labelled: Some("x-batch-a.csv".into()),
        };
        j.put(&e)?;
        assert_eq!(j.get("a.csv")?, Some(e.clone()));
        assert_eq!(j.entries()?, vec![e]);
        j.remove("a.csv")?;
        assert_eq!(j.get("a.csv")?, None);
        assert!(j.entries()?.is_empty());
        Ok(())
    }

    #[test]
    fn stale_temp_files_are_removed_and_others_kept() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".sentimentd-x.tmp"), b"partial")?;
        write_atomic(&dir.path().join("out.csv"), b"whole")?;
        remove_stale_temp_files(dir.path());
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["out.csv".to_string()]);
        Ok(())
    }
}
