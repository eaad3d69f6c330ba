//! Claiming inbox files: what may be taken, how it is opened, and how a claimed file is
//! identified.
//!
//! Only a regular file with a single link is taken. It is opened without following symlinks
//! and without blocking (a FIFO swapped in at the last moment cannot hang the reader), and is
//! identified by device, inode, size, modification time and a fingerprint of its content, all
//! recorded in the journal before a row is read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why an inbox entry is not taken. Each is reported once (moved to `rejected/` with an
/// `error.txt`), never silently ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "it is a symbolic link; the inbox takes regular files only (a link could expose any file the service can read)"
    )]
    Symlink,
    #[error(
        "it has {links} hard links; the inbox takes files with a single link only (another link could change it while it is scored, or expose a file from elsewhere)"
    )]
    HardLinks { links: u64 },
    #[error("it is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
}

/// What a claimed file was when it was claimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    /// SHA-256 of the size and the first and last 64 KiB: cheap for any size, and changes
    /// with any rewrite an exporter would do.
    pub fingerprint: String,
}

impl FileIdentity {
    /// Whether the file still has the content it was claimed with (a writer holding it open
    /// could have kept writing after the claim).
    pub fn unchanged(&self, now: &FileIdentity) -> bool {
        self.dev == now.dev
            && self.ino == now.ino
            && self.size == now.size
            && self.mtime_ns == now.mtime_ns
            && self.fingerprint == now.fingerprint
    }
}

fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn refusal(meta: &std::fs::Metadata) -> Option<Refusal> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Some(Refusal::Symlink)
    } else if !ft.is_file() {
        Some(Refusal::NotRegular { kind: kind(ft) })
    } else if meta.nlink() > 1 {
        Some(Refusal::HardLinks {
            links: meta.nlink(),
        })
    } else {
        None
    }
}

/// Looks at an inbox entry without following it: `Ok(None)` if it may be taken.
pub fn inspect(path: &Path) -> std::io::Result<Option<Refusal>> {
    Ok(refusal(&std::fs::symlink_metadata(path)?))
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Opens a claimed file: no symlink is followed, a FIFO does not block, and what was opened
/// must be a regular file with one link.
pub fn open(path: &Path) -> Result<(File, FileIdentity), OpenError> {
    let io = |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Refusal::Symlink.into()),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if let Some(r) = refusal(&meta) {
        return Err(r.into());
    }
    let identity = identify(&file, &meta).map_err(io)?;
    Ok((file, identity))
}

/// The identity of an open file as it is now.
pub fn identity_of(file: &File) -> std::io::Result<FileIdentity> {
    identify(file, &file.metadata()?)
}

const SAMPLE: u64 = 64 << 10;

fn identify(file: &File, meta: &std::fs::Metadata) -> std::io::Result<FileIdentity> {
    let size = meta.len();
    let mut hash = Sha256::new();
    hash.update(size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE as usize];
    let mut sample = |offset: u64, len: u64| -> std::io::Result<()> {
        let part = &mut buf[..len as usize];
        let mut done = 0;
        while done < part.len() {
            let n = file.read_at(&mut part[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        hash.update(&part[..done]);
        Ok(())
    };
    sample(0, size.min(SAMPLE))?;
    if size > SAMPLE {
        let from = size.saturating_sub(SAMPLE).max(SAMPLE);
        sample(from, size - from)?;
    }
    Ok(FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        fingerprint: hex::encode(hash.finalize()),
    })
}

/// Claiming and archiving are renames, which are atomic only within one filesystem: every
/// folder a batch file moves through must be on the same one. The folders must exist.
pub fn check_same_filesystem(folders: &[(&str, &Path)]) -> Result<(), String> {
    let mut first: Option<(&str, &Path, u64)> = None;
    for (key, path) in folders {
        let dev = std::fs::metadata(path)
            .map_err(|e| format!("{key} ({}): {e}", path.display()))?
            .dev();
        match first {
            None => first = Some((key, path, dev)),
            Some((k0, p0, d0)) if d0 != dev => {
                return Err(format!(
                    "{key} ({}) is on a different filesystem from {k0} ({}); batch files are \
                     moved between these folders by rename, which is only atomic within one \
                     filesystem: put them on the same one",
                    path.display(),
                    p0.display()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_link_regular_files_are_taken() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("ok.csv"), "text\nhi\n")?;
        std::os::unix::fs::symlink(d.join("ok.csv"), d.join("link.csv"))?;
        std::fs::write(d.join("a.csv"), "text\nhi\n")?;
        std::fs::hard_link(d.join("a.csv"), d.join("b.csv"))?;
        std::fs::create_dir(d.join("dir.csv"))?;
        let fifo = std::ffi::CString::new(d.join("f.csv").to_string_lossy().as_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: a valid NUL-terminated path; mkfifo does not keep the pointer.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

        assert_eq!(inspect(&d.join("ok.csv"))?, None);
        assert_eq!(inspect(&d.join("link.csv"))?, Some(Refusal::Symlink));
        assert_eq!(
            inspect(&d.join("b.csv"))?,
            Some(Refusal::HardLinks { links: 2 })
        );
        assert_eq!(
            inspect(&d.join("dir.csv"))?,
            Some(Refusal::NotRegular { kind: "directory" })
        );
        assert_eq!(
            inspect(&d.join("f.csv"))?,
            Some(Refusal::NotRegular { kind: "FIFO" })
        );
        // Opening refuses the same things, and a FIFO does not block.
        assert!(matches!(
            open(&d.join("link.csv")),
            Err(OpenError::Refused(Refusal::Symlink))
        ));
        assert!(matches!(
            open(&d.join("f.csv")),
            Err(OpenError::Refused(Refusal::NotRegular { kind: "FIFO" }))
        ));
        let (_, id) = open(&d.join("ok.csv")).map_err(std::io::Error::other)?;
        assert_eq!(id.size, 8);
        Ok(())
    }

    #[test]
    fn identity_changes_with_content() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("x.csv");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &big)?;
        let (f, before) = open(&p).map_err(std::io::Error::other)?;
        assert!(before.unchanged(&identity_of(&f)?));
        let mut changed = big.clone();
        changed[299_990] ^= 1;
        std::fs::write(&p, &changed)?;
        assert!(!before.unchanged(&identity_of(&f)?));
        Ok(())
    }
}
