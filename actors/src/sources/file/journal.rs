//! The processing journal: one small JSON file per batch file in progress, written
//! atomically before the file is claimed and removed after it has left the processing folder.
//!
//! The protocol, each step idempotent:
//! 1. an entry with the output names (chosen once) is written under the claimed name;
//! 2. the inbox file is renamed into the processing folder under that name (the claim), and
//!    its identity (device, inode, size, fingerprint) is added to the entry;
//! 3. outputs are streamed to temporary files and renamed into place whole;
//! 4. the claimed file moves to `archive/` (or `rejected/`), then the entry is removed.
//!
//! After a crash the batch is simply run again under the same entry, which overwrites the
//! same output names, its labelled-data file included: nothing is lost and nothing is
//! duplicated. Attempts are kept in the entry, so the retry count survives restarts: each is
//! recorded as running *before* the file is read, so an attempt that takes the process down
//! (an abort, an out-of-memory kill) still counts, and a file that does so on every start is
//! quarantined after `ingest.max_attempts` starts instead of crash-looping the daemon.

use sentimentd_data::atomic::{sync_dir, write_bytes_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::sources::file::claim::FileIdentity;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Input file name in the inbox.
    pub input: String,
    /// Output names, chosen once so a rerun writes exactly the same files.
    pub output: String,
    pub errors: String,
    /// Name in `archive/` or `rejected/`, which is also its name in the processing folder and
    /// the entry's key.
    pub archived: String,
    pub started_at: String,
    /// Name of the batch's file in the labelled-data store (written only if it has labels).
    #[serde(default)]
    pub labelled: Option<String>,
    /// Set once the file is in the processing folder.
    #[serde(default)]
    pub claimed: Option<FileIdentity>,
    /// Failed attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// One attempt at a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: String,
    pub error: String,
    /// Recorded when the attempt started and not yet ended; found so by the next start, the
    /// process died during it and `error` says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
}

/// The error an attempt carries while it runs: what it was if the process never came back.
pub const DIED_DURING_ATTEMPT: &str = "the process stopped during this attempt (an abort, an \
    out-of-memory kill or a power cut; see the previous run's log)";

impl Attempt {
    pub fn started() -> Attempt {
        Attempt {
            at: chrono::Utc::now().to_rfc3339(),
            error: DIED_DURING_ATTEMPT.to_string(),
            running: true,
        }
    }
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

    fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Whether an entry has this key.
    pub fn has(&self, key: &str) -> bool {
        self.path_for(key).exists()
    }

    pub fn get(&self, key: &str) -> std::io::Result<Option<JournalEntry>> {
        match std::fs::read(self.path_for(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the entry under its key, `archived`.
    pub fn put(&self, entry: &JournalEntry) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(entry)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_bytes_atomic(&self.path_for(&entry.archived), &bytes)
    }

    pub fn remove(&self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_for(key)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every entry, with its key.
    pub fn entries(&self) -> std::io::Result<Vec<(String, JournalEntry)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(key) = name.strip_suffix(".json")
                && !name.starts_with('.')
                && let Some(e) = self.get(key)?
            {
                out.push((key.to_string(), e));
            }
        }
        Ok(out)
    }

    /// An entry written for an inbox file that was never claimed (a crash came between the
    /// entry and the claim, or the entry predates claiming): its names are reused so a rerun
    /// writes the same outputs.
    pub fn unclaimed_for(&self, input: &str) -> std::io::Result<Option<(String, JournalEntry)>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(_, e)| e.claimed.is_none() && e.input == input))
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
            output: "a.1.csv".into(),
            errors: "a.1.csv.errors.csv".into(),
            archived: "a.1.csv".into(),
            started_at: "now".into(),
            labelled: Some("x-batch-a.csv".into()),
            claimed: None,
            attempts: Vec::new(),
        };
        j.put(&e)?;
        assert_eq!(j.get("a.1.csv")?, Some(e.clone()));
        assert_eq!(j.entries()?, vec![("a.1.csv".to_string(), e.clone())]);
        assert_eq!(j.unclaimed_for("a.csv")?, Some(("a.1.csv".to_string(), e)));
        j.remove("a.1.csv")?;
        assert_eq!(j.get("a.1.csv")?, None);
        j.remove("a.csv")?;
        assert_eq!(j.get("a.csv")?, None);
        assert!(j.entries()?.is_empty());
        Ok(())
    }
}
