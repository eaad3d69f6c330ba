//! FolderWatcher: finds complete `*.csv` files in the inbox and hands them to the batch
//! processor, one message per file; offers claimed files again when their retry is due.
//!
//! A file is complete when it arrived by rename (writers that write elsewhere and rename in
//! are done by definition), when its writer closed it (inotify's close-after-write), or when
//! its size and modification time have not changed for `ingest.settle_ms` (the fallback for
//! events missed or not given), and in every case only once no process holds it open for
//! writing, where Linux can tell (see [`held_for_writing`]): a writer that pauses longer than
//! the settle time, or creates the file and writes later, is waited for. notify (inotify)
//! gives low latency; a directory scan on every tick catches what events miss (files present
//! at start-up, queue overflow, a restart of this actor). Dotfiles, `*.tmp`, `*.part` and
//! other non-CSV names are ignored. A `*.csv` entry that is not a regular file (symlink,
//! FIFO, directory) is handed over at once, unread, so the processor can refuse it with a
//! report.

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Recipient, Supervised};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::messages::{FileDone, FileOutcome, FileReady, FsEvent, Reconfigure, StopIntake};
use crate::runtime::containment::Containment;
use crate::telemetry::metrics::Metrics;

struct Candidate {
    size: u64,
    modified: Option<SystemTime>,
    since: Instant,
    renamed: bool,
    regular: bool,
    /// When it was first seen held open for writing past its settle time, and whether the
    /// operator was told.
    held_since: Option<Instant>,
    told: bool,
}

/// How long a settled file may stay open for writing before the log says it is waited for.
const HELD_WARNING: Duration = Duration::from_secs(60);

/// Filesystems whose leases answer for local writers only (`statfs` magic numbers): ext2/3/4,
/// XFS, Btrfs, tmpfs, overlayfs, F2FS, ZFS, ReiserFS. A network filesystem's lease says something else
/// (an NFSv4 client refuses one with EAGAIN whenever the server granted it no delegation,
/// CIFS without an oplock), which would hold every file for good.
const LOCAL_FILESYSTEMS: [u32; 8] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x0102_1994,
    0x794C_7630,
    0xF2F5_2010,
    0x2FC1_2FC1,
    0x5265_4973,
];

/// Whether some process holds `path` open for writing, where Linux can tell: it refuses a
/// read lease (EAGAIN) while any descriptor of the file is open for writing. `None` when it
/// cannot be asked: the file is not ours and we lack CAP_LEASE (EACCES), or it is on a
/// filesystem not known to be local; the settle rule alone decides then.
pub fn held_for_writing(path: &Path) -> Option<bool> {
    // A writer opening the file in the microseconds the lease is held breaks it, and the
    // kernel tells the lease holder with SIGIO, whose default action ends the process.
    // Nothing in this process uses SIGIO.
    static IGNORE_SIGIO: std::sync::Once = std::sync::Once::new();
    IGNORE_SIGIO.call_once(|| {
        // SAFETY: installs the SIG_IGN disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    });
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // Another process holds a write lease (Samba's kernel oplocks, say): in use.
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Some(true),
        Err(_) => return None,
    };
    let fd = file.as_raw_fd();
    // SAFETY: `statfs` is plain old data that fstatfs fills in; `fd` is open.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a valid, writable statfs.
    if unsafe { libc::fstatfs(fd, &mut fs) } != 0
        || !LOCAL_FILESYSTEMS.contains(&(fs.f_type as u32))
    {
        return None;
    }
    // SAFETY: fcntl on a descriptor this function owns; F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0 {
        // SAFETY: as above; closing the file would drop the lease too.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        _ => None,
    }
}

pub struct FolderWatcher {
    inbox: PathBuf,
    settle: Duration,
    processor: Recipient<FileReady>,
    containment: Containment,
    watcher: Option<notify::RecommendedWatcher>,
    candidates: HashMap<PathBuf, Candidate>,
    /// Handed to the processor and not yet reported done; survives a restart of this actor so
    /// a file is never queued twice.
    taken: HashSet<PathBuf>,
    /// Files to offer again (claimed files, or inbox files whose claim failed), and when.
    retry_at: HashMap<PathBuf, Instant>,
    metrics: Arc<Metrics>,
    stopped: bool,
    /// Ask Linux whether a writer still holds a file open (off only to test the fallback).
    ask_writers: bool,
}

/// Whether a directory entry name is a batch file.
pub fn is_batch_file(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".csv") && lower.len() > 4
}

impl FolderWatcher {
    /// `resume`: claimed files a previous run left unfinished; they are offered first.
    pub fn new(
        inbox: PathBuf,
        settle: Duration,
        processor: Recipient<FileReady>,
        metrics: Arc<Metrics>,
        resume: Vec<PathBuf>,
        ask_writers: bool,
    ) -> FolderWatcher {
        let now = Instant::now();
        FolderWatcher {
            inbox,
            settle,
            processor,
            containment: Containment::new("folder_watcher", metrics.clone()),
            watcher: None,
            candidates: HashMap::new(),
            taken: HashSet::new(),
            retry_at: resume.into_iter().map(|p| (p, now)).collect(),
            metrics,
            stopped: false,
            ask_writers,
        }
    }

    /// Changes the settle time (a config reload).
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    fn tick_interval(&self) -> Duration {
        (self.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250))
    }

    fn start_watching(&mut self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            me.do_send(FsEvent(event));
        });
        match watcher {
            Ok(mut w) => match w.watch(&self.inbox, RecursiveMode::NonRecursive) {
                Ok(()) => self.watcher = Some(w),
                Err(e) => tracing::warn!(
                    inbox = %self.inbox.display(),
                    error = %e,
                    "cannot watch the inbox; relying on periodic scans"
                ),
            },
            Err(e) => tracing::warn!(error = %e, "no file watcher; relying on periodic scans"),
        }
    }

    fn eligible(&self, path: &Path) -> bool {
        path.parent() == Some(self.inbox.as_path())
            && path
                .file_name()
                // Lossy: a name that is not UTF-8 (Latin-1 from a Windows share or a zip
                // file) is still a batch, named with U+FFFD in its outputs.
                .is_some_and(|n| is_batch_file(&n.to_string_lossy()))
            && !self.taken.contains(path)
            && !self.retry_at.contains_key(path)
    }

    /// `complete`: the file arrived by rename or its writer closed it.
    fn note(&mut self, path: &Path, complete: bool) {
        if !self.eligible(path) {
            return;
        }
        // Not followed: a symlink is judged as itself, and refused.
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            self.candidates.remove(path);
            return;
        };
        // Nothing to wait for in what is not a regular file: hand it over to be refused.
        let renamed = complete || !meta.is_file();
        let (size, modified) = (meta.len(), meta.modified().ok());
        let now = Instant::now();
        let entry = self
            .candidates
            .entry(path.to_path_buf())
            .or_insert(Candidate {
                size,
                modified,
                since: now,
                renamed,
                regular: meta.is_file(),
                held_since: None,
                told: false,
            });
        entry.renamed |= renamed;
        if entry.size != size || entry.modified != modified {
            entry.size = size;
            entry.modified = modified;
            entry.since = now;
        }
    }

    fn scan(&mut self) {
        let entries = match std::fs::read_dir(&self.inbox) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(inbox = %self.inbox.display(), error = %e, "cannot list the inbox");
                return;
            }
        };
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            seen.insert(path.clone());
            self.note(&path, false);
        }
        self.candidates.retain(|p, _| seen.contains(p));
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        let now = Instant::now();
        let mut ready: Vec<PathBuf> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &ready {
            self.retry_at.remove(path);
        }
        let settle = self.settle;
        let due: Vec<PathBuf> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.renamed || now.duration_since(c.since) >= settle)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            let Some(c) = self.candidates.get_mut(&path) else {
                continue;
            };
            // Only a regular file has a writer to wait for; anything else goes at once, unread
            // (opening a FIFO would complete its writer's open, then break its pipe).
            let held = self.ask_writers && c.regular && held_for_writing(&path) == Some(true);
            if !held {
                ready.push(path);
                continue;
            }
            // Still being written: taken once its writer closes it (the close event, or the
            // next settle after it).
            c.renamed = false;
            c.since = now;
            let first = *c.held_since.get_or_insert(now);
            if !c.told && now.duration_since(first) >= HELD_WARNING {
                c.told = true;
                tracing::warn!(
                    file = %path.display(),
                    waited_secs = now.duration_since(first).as_secs(),
                    "an inbox file is still held open for writing by another process; it is \
                     taken once closed (write it under a .part name and rename it in to be \
                     taken at once)"
                );
            }
        }
        for path in ready {
            self.candidates.remove(&path);
            self.taken.insert(path.clone());
            tracing::debug!(file = %path.display(), "inbox file is complete");
            self.processor.do_send(FileReady {
                path,
                done: ctx.address().recipient(),
            });
        }
    }
}

impl Actor for FolderWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = std::fs::create_dir_all(&self.inbox) {
            tracing::error!(inbox = %self.inbox.display(), error = %e, "cannot create the inbox");
        }
        self.start_watching(ctx);
        ctx.run_interval(self.tick_interval(), |act, ctx| {
            let contained = act.containment.clone();
            if contained
                .run(|| {
                    act.scan();
                    act.dispatch(ctx);
                    let backlog = act.candidates.len() + act.taken.len() + act.retry_at.len();
                    act.metrics.ingest.inbox_backlog.set(backlog as i64);
                })
                .is_err()
            {
                // State may be half-updated; a restart rebuilds it from the directory.
                ctx.stop();
            }
        });
    }
}

impl Supervised for FolderWatcher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(actor = "folder_watcher", "restarting");
        self.watcher = None;
        self.candidates.clear();
    }
}

impl Handler<FsEvent> for FolderWatcher {
    type Result = ();

    fn handle(&mut self, msg: FsEvent, ctx: &mut Context<Self>) {
        let event = match msg.0 {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; the periodic scan covers it");
                return;
            }
        };
        let contained = self.containment.clone();
        let _ = contained.run(|| {
            match event.kind {
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    if let Some(to) = event.paths.get(1) {
                        self.note(to, true);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To))
                | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    for p in &event.paths {
                        self.note(p, true);
                    }
                }
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    for p in &event.paths {
                        self.candidates.remove(p);
                    }
                }
                _ => {
                    for p in &event.paths {
                        self.note(p, false);
                    }
                }
            }
            self.dispatch(ctx);
        });
    }
}

impl Handler<FileDone> for FolderWatcher {
    type Result = ();

    fn handle(&mut self, msg: FileDone, _ctx: &mut Context<Self>) {
        self.taken.remove(&msg.path);
        if let FileOutcome::Retry { path, after } = msg.outcome {
            self.retry_at.insert(path, Instant::now() + after);
        }
    }
}

impl Handler<Reconfigure> for FolderWatcher {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, _ctx: &mut Context<Self>) {
        self.set_settle(Duration::from_millis(msg.0.ingest.settle_ms));
    }
}

impl Handler<StopIntake> for FolderWatcher {
    type Result = ();

    fn handle(&mut self, _msg: StopIntake, _ctx: &mut Context<Self>) {
        self.stopped = true;
        self.watcher = None;
    }
}

#[cfg(test)]
mod tests {
    use super::is_batch_file;

    #[test]
    fn only_visible_csv_files_are_batches() {
        assert!(is_batch_file("a.csv"));
        assert!(is_batch_file("B.CSV"));
        assert!(!is_batch_file(".a.csv"));
        assert!(!is_batch_file("a.csv.tmp"));
        assert!(!is_batch_file("a.csv.part"));
        assert!(!is_batch_file("a.txt"));
        assert!(!is_batch_file(".csv"));
    }
}

#[cfg(test)]
mod actor_tests {
    use super::*;
    use actix::{Actor, Context, Handler};
    use std::sync::Mutex;

    struct Collector(Arc<Mutex<Vec<(String, Instant)>>>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<FileReady> for Collector {
        type Result = ();
        fn handle(&mut self, msg: FileReady, _ctx: &mut Context<Self>) {
            let name = msg
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Ok(mut seen) = self.0.lock() {
                seen.push((name, Instant::now()));
            }
        }
    }

    #[test]
    fn renamed_and_closed_files_go_at_once_open_files_after_settling() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let inbox = dir.path().to_path_buf();
        std::fs::write(inbox.join("present.csv"), "text\nhello\n")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let settle = Duration::from_millis(600);
        let started = Instant::now();
        let (renamed_at, written_at, closed_at, released_at) = actix::System::new().block_on({
            let seen = seen.clone();
            let inbox = inbox.clone();
            async move {
                let collector = Collector(seen).start();
                let metrics = Arc::new(Metrics::new());
                let watched = inbox.clone();
                let _watcher = actix::Supervisor::start(move |_| {
                    FolderWatcher::new(
                        watched,
                        settle,
                        collector.recipient(),
                        metrics,
                        Vec::new(),
                        true,
                    )
                });
                actix_rt::time::sleep(Duration::from_millis(100)).await;
                std::fs::write(inbox.join("b.csv.part"), "text\nhi\n").ok();
                std::fs::write(inbox.join(".hidden.csv"), "text\nhi\n").ok();
                std::fs::write(inbox.join("x.tmp"), "text\nhi\n").ok();
                let renamed_at = Instant::now();
                std::fs::rename(inbox.join("b.csv.part"), inbox.join("b.csv")).ok();
                let written_at = Instant::now();
                // Still open: only the settle rule can tell it is complete.
                let mut open = std::fs::File::create(inbox.join("w.csv")).ok();
                if let Some(f) = open.as_mut() {
                    use std::io::Write;
                    f.write_all(b"text\nhi\n").ok();
                }
                let closed_at = Instant::now();
                std::fs::write(inbox.join("c.csv"), "text\nhi\n").ok();
                actix_rt::time::sleep(Duration::from_millis(1500)).await;
                let released_at = Instant::now();
                drop(open);
                actix_rt::time::sleep(Duration::from_millis(1000)).await;
                (renamed_at, written_at, closed_at, released_at)
            }
        });
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let when = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        assert_eq!(names.len(), 4, "{names:?}");
        let (Some(present), Some(b), Some(w), Some(c)) = (
            when("present.csv"),
            when("b.csv"),
            when("w.csv"),
            when("c.csv"),
        ) else {
            panic!("missing files: {names:?}");
        };
        assert!(
            c.duration_since(closed_at) < settle / 2,
            "a file closed after writing goes at once"
        );
        assert!(
            present.duration_since(started) >= settle,
            "present-at-start file settles"
        );
        assert!(
            b.duration_since(renamed_at) < settle / 2,
            "renamed file goes at once"
        );
        assert!(
            w.duration_since(written_at) >= settle,
            "a file still open waits for settle_ms"
        );
        assert!(
            w >= released_at,
            "and, settled, still waits while its writer holds it open"
        );
        Ok(())
    }
}
