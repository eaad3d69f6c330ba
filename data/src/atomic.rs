//! Files written whole or not at all, the one way every crate writes state: a hidden temp file
//! in the target's directory, fsync, rename over the target, fsync of the directory. Readers
//! and a restart after a crash see the old file or the new one, never a torn one.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Prefix of the temp files [`AtomicFile`] creates; a crash's leftovers are removed at start by
/// [`remove_stale_temp_files`], and folders that list their files skip them.
pub const TEMP_PREFIX: &str = ".sentimentd-";

/// A file written under a hidden temporary name in its target's directory and renamed into
/// place by [`AtomicFile::commit`] (after fsync of the file, then of the directory). Dropped
/// without a commit, the temporary file is deleted.
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    /// Creates the temp file (and the target's folder if needed).
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let dir = parent(path);
        std::fs::create_dir_all(dir)?;
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMP_PREFIX).suffix(".tmp");
        // Outputs honour the process umask (group-readable under the unit's UMask=0027).
        #[cfg(unix)]
        builder.permissions(shareable_file());
        let tmp = builder.tempfile_in(dir)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    /// Makes the content the target's, durably.
    pub fn commit(self) -> std::io::Result<()> {
        let tmp = self.out.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        sync_dir(parent(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_bytes_atomic`], with the content produced by a writer callback.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    fill(&mut file)?;
    file.commit()
}

/// fsync of a directory, so a rename or unlink in it survives a power cut too.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Removes the temp files a crash left in `dir` (they were never visible under a real name).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(is_temp_name) {
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

/// Whether `name` is one of [`AtomicFile`]'s temp files (or an older release's `.tmp-`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) || name.starts_with(".tmp-")
}

/// Mode 0666 before the umask, as `File::create` would give: temp files default to 0600, which
/// would keep outputs from the analysts' group whatever the service's `UMask=` says.
#[cfg(unix)]
pub fn shareable_file() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

/// Like [`shareable_file`] for directories (0777 before the umask).
#[cfg(unix)]
pub fn shareable_dir() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o777)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_files_are_removed_and_others_kept() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".sentimentd-x.tmp"), b"partial")?;
        write_bytes_atomic(&dir.path().join("out.csv"), b"whole")?;
        remove_stale_temp_files(dir.path());
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["out.csv".to_string()]);
        Ok(())
    }
}
