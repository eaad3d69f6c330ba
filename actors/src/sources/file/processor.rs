//! BatchProcessor: claims one inbox file at a time, scores it as a stream, and accounts for
//! every row.
//!
//! The steps and their journal protocol are in `journal.rs`; claiming and what may be taken
//! in `claim.rs`; naming in `names.rs`; the chunked read-score-write in
//! `stream.rs`. This file ties them together and decides what happens after a
//! failure: a file that fails for a reason other than its content is retried with
//! exponential backoff (`ingest.retry_initial_ms` .. `retry_max_ms`), and after
//! `ingest.max_attempts` failures moves to `rejected/` with an `error.txt` listing each one.
//!
//! The actor runs on its own `SyncArbiter` thread: it blocks on file I/O and on the inference
//! replies, which must not stall the HTTP workers or the watcher.

use actix::{Actor, Handler, SyncContext};
use sentimentd_config::Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::messages::{FileDone, FileOutcome, FileReady, Reconfigure};
use crate::mlops::reputation::Reputation;
use crate::runtime::containment::{Containment, Faults};
use crate::runtime::shutdown::Lifecycle;
use crate::serving::scorer::Scorer;
use crate::sources::file::claim::{self, OpenError, Refusal};
use crate::sources::file::journal::{self, Attempt, Journal, JournalEntry};
use crate::sources::file::names;
use crate::sources::file::stream::{
    BatchError, Destinations, FileRejection, Stream, io_at, write_rejections,
};
use crate::sources::jetstream::publish::{PublishError, publish_csv};
use crate::telemetry::events::{
    BatchAttemptFailed, BatchInterrupted, BatchProcessed, BatchPublished, BatchQuarantined,
    BatchRefused, BatchRejected, InternalEvent,
};
use crate::telemetry::metrics::{Channel, Metrics};

pub struct BatchProcessor {
    cfg: Arc<Config>,
    scorer: Arc<Scorer>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    containment: Containment,
    faults: Faults,
    journal: Option<Journal>,
    /// Journal key of the claimed file being processed, once the claim is done.
    current: Option<String>,
    /// Failures of inbox files whose claim itself failed (nothing in the journal yet).
    claim_failures: HashMap<PathBuf, usize>,
    reputation: Arc<Reputation>,
}

/// Delay before attempt `failures + 1`: `initial`, doubling per failure, at most `max`.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: usize) -> Duration {
    let shift = failures.saturating_sub(1).min(40) as u32;
    Duration::from_millis(
        initial_ms
            .saturating_mul(1u64 << shift)
            .min(max_ms.max(initial_ms)),
    )
}

/// `BatchError::Changed` when the claimed file is no longer what was claimed.
fn unchanged_since_claim(
    claimed: &Path,
    file: &std::fs::File,
    identity: &claim::FileIdentity,
) -> Result<(), BatchError> {
    let now = claim::identity_of(file).map_err(io_at(claimed))?;
    if identity.unchanged(&now) {
        Ok(())
    } else {
        Err(BatchError::Changed {
            before: identity.size,
            after: now.size,
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl BatchProcessor {
    pub fn new(
        cfg: Arc<Config>,
        scorer: Arc<Scorer>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        faults: Faults,
        reputation: Arc<Reputation>,
    ) -> BatchProcessor {
        BatchProcessor {
            containment: Containment::new("batch_processor", metrics.clone()),
            cfg,
            scorer,
            metrics,
            lifecycle,
            faults,
            journal: None,
            current: None,
            claim_failures: HashMap::new(),
            reputation,
        }
    }

    fn journal(&mut self) -> Result<&Journal, BatchError> {
        if self.journal.is_none() {
            let dir = &self.cfg.ingest.journal;
            self.journal = Some(Journal::open(dir).map_err(io_at(dir))?);
        }
        self.journal
            .as_ref()
            .ok_or_else(|| BatchError::Inference("journal unavailable".into()))
    }

    /// Run once before any file is taken: creates the folders, checks that files can move
    /// between them by rename, clears crash leftovers, and returns the claimed files to
    /// resume.
    pub fn recover(cfg: &Config) -> Result<Vec<PathBuf>, String> {
        let g = &cfg.ingest;
        let moved_between = [
            ("ingest.inbox", &g.inbox),
            ("ingest.processing", &g.processing),
            ("ingest.outbox", &g.outbox),
            ("ingest.archive", &g.archive),
            ("ingest.rejected", &g.rejected),
        ];
        for (key, dir) in moved_between {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {key} ({}): {e}", dir.display()))?;
        }
        let folders: Vec<(&str, &Path)> = moved_between
            .iter()
            .map(|(k, p)| (*k, p.as_path()))
            .collect();
        claim::check_same_filesystem(&folders)?;
        // The labelled store too: a batch streams its labelled rows through a temp file there.
        for dir in [&g.outbox, &g.rejected, &g.archive, &g.labelled_dir] {
            sentimentd_data::atomic::remove_stale_temp_files(dir);
        }
        match sentimentd_data::labelled::LabelledStore::open(&g.labelled_dir) {
            Ok(store) => store.remove_stale_temp_files(),
            Err(e) => {
                tracing::error!(dir = %g.labelled_dir.display(), error = %e, "cannot open the labelled-data store")
            }
        }
        let journal = Journal::open(&g.journal)
            .map_err(|e| format!("cannot open the journal {}: {e}", g.journal.display()))?;
        sentimentd_data::atomic::remove_stale_temp_files(&g.journal);
        let entries = journal
            .entries()
            .map_err(|e| format!("cannot read the journal {}: {e}", g.journal.display()))?;
        let mut resume = Vec::new();
        for (key, entry) in entries {
            let claimed = g.processing.join(&entry.archived);
            if claimed.exists() {
                if key != entry.archived {
                    // An entry of an older build, keyed by its input name.
                    if let Err(e) = journal.put(&entry).and_then(|()| journal.remove(&key)) {
                        tracing::error!(file = %entry.input, error = %e, "cannot re-key a journal entry");
                    }
                }
                tracing::info!(file = %entry.input, claimed = %claimed.display(), attempts = entry.attempts.len(), "claimed batch will be processed again");
                resume.push(claimed);
            } else if entry.claimed.is_none() && g.inbox.join(&entry.input).exists() {
                // The claim never happened; the entry's names are reused when it does.
                tracing::info!(file = %entry.input, "batch interrupted before its claim will be taken again");
            } else if let Err(e) = journal.remove(&key) {
                // The claimed file left the processing folder, which is the last step before
                // the entry is dropped: every output was complete.
                tracing::error!(file = %entry.input, error = %e, "cannot drop a finished journal entry");
            }
        }
        // A file in the processing folder without an entry was not put there by the daemon;
        // back into the inbox it goes, where it is claimed like any other.
        if let Ok(listing) = std::fs::read_dir(&g.processing) {
            for item in listing.flatten() {
                let path = item.path();
                let name = file_name(&path);
                if name.starts_with('.') || resume.contains(&path) {
                    continue;
                }
                let back = g.inbox.join(&name);
                if back.exists() {
                    tracing::warn!(file = %path.display(), "a file in the processing folder has no journal entry and its name is taken in the inbox; left where it is");
                } else if let Err(e) = std::fs::rename(&path, &back) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot move an unjournalled file back to the inbox");
                } else {
                    tracing::warn!(file = %name, "a file in the processing folder had no journal entry; moved back to the inbox");
                }
            }
        }
        Ok(resume)
    }

    /// One attempt at `path`: an inbox file (claimed first) or a claimed file.
    fn attempt(&mut self, path: &Path, started: Instant) -> Result<(), BatchError> {
        let g = &self.cfg.ingest;
        let key = if path.parent() == Some(g.processing.as_path()) {
            file_name(path)
        } else {
            match self.claim(path)? {
                Some(key) => key,
                None => return Ok(()),
            }
        };
        self.current = Some(key.clone());
        self.process_claimed(&key, started)
    }

    /// Moves a complete inbox file into the processing folder under a journal entry.
    /// `None`: nothing to process (the file is gone, or was refused).
    fn claim(&mut self, path: &Path) -> Result<Option<String>, BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let input = file_name(path);
        match claim::inspect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(path)(e)),
            Ok(Some(refusal)) => {
                self.refuse(path, &input, &refusal)?;
                return Ok(None);
            }
            Ok(None) => {}
        }
        let journal = self.journal()?;
        let entry = match journal.unclaimed_for(&input).map_err(io_at(&g.journal))? {
            Some((key, entry)) => {
                if key != entry.archived {
                    journal.put(&entry).map_err(io_at(&g.journal))?;
                    journal.remove(&key).map_err(io_at(&g.journal))?;
                }
                entry
            }
            None => {
                let entry = names::new_entry(g, journal, &input);
                journal.put(&entry).map_err(io_at(&g.journal))?;
                entry
            }
        };
        self.faults.crash_point("after_journal");
        let target = g.processing.join(&entry.archived);
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.journal()?
                    .remove(&entry.archived)
                    .map_err(io_at(&g.journal))?;
                return Ok(None);
            }
            Err(e) => return Err(io_at(&target)(e)),
        }
        sentimentd_data::atomic::sync_dir(&g.processing).map_err(io_at(&g.processing))?;
        sentimentd_data::atomic::sync_dir(&g.inbox).map_err(io_at(&g.inbox))?;
        self.claim_failures.remove(path);
        tracing::debug!(file = %input, claimed = %target.display(), "batch file claimed");
        self.faults.crash_point("after_claim");
        Ok(Some(entry.archived))
    }

    fn process_claimed(&mut self, key: &str, started: Instant) -> Result<(), BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let claimed = g.processing.join(key);
        let Some(mut entry) = self.journal()?.get(key).map_err(io_at(&g.journal))? else {
            // Not claimed by the daemon (no entry): back to the inbox, where it is claimed
            // like any new file, with names of its own.
            let back = g.inbox.join(key);
            if claimed.exists() && !back.exists() {
                std::fs::rename(&claimed, &back).map_err(io_at(&back))?;
                tracing::warn!(file = %key, "a file in the processing folder had no journal entry; moved back to the inbox");
            }
            return Ok(());
        };
        let (file, identity) = match claim::open(&claimed) {
            Ok(opened) => opened,
            Err(OpenError::Refused(refusal)) => {
                self.refuse(&claimed, &entry.input, &refusal)?;
                self.journal()?.remove(key).map_err(io_at(&g.journal))?;
                return Ok(());
            }
            Err(OpenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Archived just before a crash; the entry was all that was left.
                self.journal()?.remove(key).map_err(io_at(&g.journal))?;
                return Ok(());
            }
            Err(OpenError::Io { source, .. }) => return Err(io_at(&claimed)(source)),
        };
        if let Some(before) = &entry.claimed
            && (before.dev, before.ino) != (identity.dev, identity.ino)
        {
            tracing::warn!(file = %entry.input, "the claimed file was replaced in the processing folder; scoring what is there now");
        }
        entry.claimed = Some(identity.clone());
        if entry.labelled.is_none() {
            // An entry from an older build: pin the name first, so a rerun rewrites the
            // same file instead of adding a second one.
            entry.labelled = Some(names::labelled_name(&entry.output));
        }
        // Attempts still marked running were cut short by the end of the process (a crash,
        // an OOM kill): each counts, or a file that kills the process would do so forever.
        let died = entry.attempts.iter().filter(|a| a.running).count();
        for a in &mut entry.attempts {
            a.running = false;
        }
        if died > 0 {
            tracing::warn!(file = %entry.input, attempts = entry.attempts.len(), died, max_attempts = g.max_attempts, "the process stopped during an earlier attempt at this batch");
        }
        if entry.attempts.len() >= g.max_attempts as usize {
            self.journal()?.put(&entry).map_err(io_at(&g.journal))?;
            let target = self.quarantine(&claimed, &entry)?;
            let last = entry.attempts.last().map_or("", |a| a.error.as_str());
            BatchQuarantined {
                file: &entry.input,
                attempts: entry.attempts.len(),
                last_error: last,
                moved_to: &target,
            }
            .emit(&self.metrics);
            return Ok(());
        }
        // Recorded before the first byte is read (see the journal's protocol).
        entry.attempts.push(journal::Attempt::started());
        self.journal()?.put(&entry).map_err(io_at(&g.journal))?;
        if identity.size > g.max_file_bytes {
            let why = FileRejection::TooBig {
                size: identity.size,
                limit: g.max_file_bytes,
            };
            return self.reject_file(&claimed, &entry, &why, started);
        }

        if cfg.cluster.publish_inbox
            && let Some(url) = cfg.cluster.nats_url.as_deref()
        {
            return self.publish_claimed(key, (&claimed, &file, &identity), &entry, url, started);
        }

        let stream = Stream {
            scorer: &self.scorer,
            lifecycle: &self.lifecycle,
            chunk_rows: g.chunk_rows,
            in_flight: cfg.server.inference_threads + 1,
            max_text_chars: cfg.data.max_text_chars,
            neutralize_formulas: g.neutralize_formulas,
            faults: &self.faults,
            reputation: &self.reputation,
        };
        let dest = Destinations {
            output: g.outbox.join(&entry.output),
            errors: g.rejected.join(&entry.errors),
            labelled: entry.labelled.as_ref().map(|n| g.labelled_dir.join(n)),
        };
        let (summary, outputs) = match stream.run(&file, identity.size, &entry, dest) {
            Ok(done) => done,
            Err(BatchError::Rejected(why)) => {
                return self.reject_file(&claimed, &entry, &why, started);
            }
            Err(e) => return Err(e),
        };
        // A writer that still held the file open may have written on after the claim: those
        // bytes were not read, so the whole file is scored again rather than half of it.
        unchanged_since_claim(&claimed, &file, &identity)?;
        let faults = self.faults.clone();
        outputs.commit(|step| faults.crash_point(step))?;

        self.archive(&claimed, &entry)?;
        // Counted before the journal entry goes, so whoever sees the batch finished (no entry,
        // input archived) also sees it in the metrics.
        let seconds = started.elapsed().as_secs_f64();
        self.reputation.apply(Channel::batch, &summary.tally);
        // Saved at once: a crash after this loses none of the file's counts.
        if let Err(e) = self.reputation.save() {
            tracing::warn!(file = %entry.input, error = %e, "cannot save the reputation state; retrying later");
        }
        BatchProcessed {
            file: &entry.input,
            output: &entry.output,
            rows: summary.rows(),
            scored: summary.scored,
            rejected: summary.rejected,
            labelled: summary.labelled,
            by_label: summary.by_label,
            model_version: &summary.model_version,
            attempt: entry.attempts.len(),
            seconds,
            rows_per_second: summary.rows() as f64 / seconds.max(1e-9),
        }
        .emit(&self.metrics);
        self.forget_done(key, &entry);
        Ok(())
    }

    /// `[cluster] publish_inbox`: the file's rows go to the cluster's input stream, where
    /// every node takes its share, and nothing is scored here. Each row's id is the file's
    /// fingerprint and line (as `sentimentd publish --csv`), so an attempt after a crash or a
    /// failed one, within `[cluster] duplicate_window_secs`, publishes only what the stream
    /// does not have yet; later, every row again. The file is archived once the stream has
    /// stored every row; rows that cannot be read go to `rejected/` as usual. A file written
    /// on after its claim is published again in full (the rows read before then may be
    /// scored twice, under the first content's fingerprint).
    fn publish_claimed(
        &mut self,
        key: &str,
        (claimed, file, identity): (&Path, &std::fs::File, &claim::FileIdentity),
        entry: &JournalEntry,
        url: &str,
        started: Instant,
    ) -> Result<(), BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        unchanged_since_claim(claimed, file, identity)?;
        let opts = sentimentd_data::ReadOptions {
            max_text_chars: cfg.data.max_text_chars,
            require_label: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_at(claimed))?;
        let published =
            runtime.block_on(publish_csv(url, &cfg.cluster, claimed, opts, None, |_| {}));
        let report = match published {
            Ok(r) => r,
            Err(PublishError::Read { path, source }) => {
                return Err(BatchError::Io { path, source });
            }
            Err(PublishError::Data(sentimentd_data::DataError::Io { source, .. })) => {
                return Err(io_at(claimed)(source));
            }
            Err(PublishError::Data(other)) => {
                let why = FileRejection::Invalid(other.to_string());
                return self.reject_file(claimed, entry, &why, started);
            }
            Err(e) => return Err(BatchError::Publish(e.to_string())),
        };
        unchanged_since_claim(claimed, file, identity)?;
        write_rejections(
            &g.rejected.join(&entry.errors),
            &report.rejected,
            g.neutralize_formulas,
        )?;
        self.archive(claimed, entry)?;
        BatchPublished {
            file: &entry.input,
            fingerprint: &report.fingerprint,
            published: report.published,
            duplicates: report.duplicates,
            rejected: report.rejected.len() as u64,
            stream: &cfg.cluster.input_stream,
            attempt: entry.attempts.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        self.forget_done(key, entry);
        Ok(())
    }

    /// Moves the claimed input to the archive, durably: from then on the batch is done.
    fn archive(&self, claimed: &Path, entry: &JournalEntry) -> Result<(), BatchError> {
        let g = &self.cfg.ingest;
        let archived = g.archive.join(&entry.archived);
        std::fs::rename(claimed, &archived).map_err(io_at(&archived))?;
        sentimentd_data::atomic::sync_dir(&g.archive).map_err(io_at(&g.archive))?;
        sentimentd_data::atomic::sync_dir(&g.processing).map_err(io_at(&g.processing))?;
        self.faults.crash_point("after_archive");
        Ok(())
    }

    /// Drops the journal entry of an archived batch. The batch is done: a leftover entry is
    /// dropped by the next start's recovery, and retrying here would only count it twice.
    fn forget_done(&mut self, key: &str, entry: &JournalEntry) {
        let journal = self.cfg.ingest.journal.clone();
        let removed = self
            .journal()
            .and_then(|j| j.remove(key).map_err(io_at(&journal)));
        if let Err(e) = removed {
            tracing::warn!(file = %entry.input, error = %e, "batch done but its journal entry could not be removed; the next start drops it");
        }
    }

    /// The whole file cannot be processed: it moves to `rejected/` with `<name>.error.txt`.
    fn reject_file(
        &mut self,
        claimed: &Path,
        entry: &JournalEntry,
        why: &FileRejection,
        started: Instant,
    ) -> Result<(), BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let text = format!(
            "file: {}\nrejected_at: {}\nreason: {}\n",
            entry.input,
            chrono::Utc::now().to_rfc3339(),
            why
        );
        let target = self.move_to_rejected(claimed, &entry.archived, &text)?;
        self.journal()?
            .remove(&entry.archived)
            .map_err(io_at(&g.journal))?;
        BatchRejected {
            file: &entry.input,
            reason: &why.to_string(),
            moved_to: &target,
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// Writes `rejected/<name>.error.txt`, then moves `path` to `rejected/<name>`.
    fn move_to_rejected(
        &self,
        path: &Path,
        name: &str,
        report: &str,
    ) -> Result<PathBuf, BatchError> {
        let g = &self.cfg.ingest;
        let report_path = g.rejected.join(format!("{name}.error.txt"));
        sentimentd_data::atomic::write_bytes_atomic(&report_path, report.as_bytes())
            .map_err(io_at(&report_path))?;
        let target = g.rejected.join(name);
        std::fs::rename(path, &target).map_err(io_at(&target))?;
        sentimentd_data::atomic::sync_dir(&g.rejected).map_err(io_at(&g.rejected))?;
        Ok(target)
    }

    /// An inbox entry that is not a single-link regular file is moved aside, unread, with a
    /// report saying why: it is reported once instead of being skipped on every scan.
    fn refuse(&mut self, path: &Path, input: &str, refusal: &Refusal) -> Result<(), BatchError> {
        let name = {
            let g = self.cfg.ingest.clone();
            names::free_name(&g, self.journal()?, input)
        };
        let text = format!(
            "file: {input}\nrefused_at: {}\nreason: {refusal}\nThe entry was moved here unread.\n",
            chrono::Utc::now().to_rfc3339()
        );
        let target = self.move_to_rejected(path, &name, &text)?;
        BatchRefused {
            file: input,
            reason: &refusal.to_string(),
            moved_to: &target,
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// After a failed attempt: the retry, or the quarantine once attempts run out.
    fn failed(&mut self, path: &Path, error: String) -> FileOutcome {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let Some(key) = self.current.take() else {
            // The claim itself failed: the file is still in the inbox.
            let failures = {
                let n = self.claim_failures.entry(path.to_path_buf()).or_insert(0);
                *n += 1;
                *n
            };
            let after = backoff(g.retry_initial_ms, g.retry_max_ms, failures);
            BatchAttemptFailed {
                file: &file_name(path),
                attempt: failures,
                max_attempts: g.max_attempts,
                error: &error,
                retry_in: after,
            }
            .emit(&self.metrics);
            return FileOutcome::Retry {
                path: path.to_path_buf(),
                after,
            };
        };
        let claimed = g.processing.join(&key);
        let recorded = self.record_failure(&key, &error);
        let entry = match recorded {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(file = %key, error = %e, "cannot record a failed attempt in the journal");
                let after = backoff(g.retry_initial_ms, g.retry_max_ms, 1);
                return FileOutcome::Retry {
                    path: claimed,
                    after,
                };
            }
        };
        let failures = entry.attempts.len();
        if failures >= g.max_attempts as usize {
            match self.quarantine(&claimed, &entry) {
                Ok(target) => {
                    BatchQuarantined {
                        file: &entry.input,
                        attempts: failures,
                        last_error: &error,
                        moved_to: &target,
                    }
                    .emit(&self.metrics);
                    return FileOutcome::Finished;
                }
                Err(e) => {
                    tracing::error!(file = %entry.input, error = %e, "cannot quarantine a failing batch file; it stays in the processing folder");
                }
            }
        }
        let after = backoff(g.retry_initial_ms, g.retry_max_ms, failures);
        BatchAttemptFailed {
            file: &entry.input,
            attempt: failures,
            max_attempts: g.max_attempts,
            error: &error,
            retry_in: after,
        }
        .emit(&self.metrics);
        FileOutcome::Retry {
            path: claimed,
            after,
        }
    }

    fn record_failure(&mut self, key: &str, error: &str) -> Result<JournalEntry, BatchError> {
        let dir = self.cfg.ingest.journal.clone();
        let journal = self.journal()?;
        let mut entry = journal
            .get(key)
            .map_err(io_at(&dir))?
            .ok_or_else(|| BatchError::Io {
                path: dir.join(key),
                source: std::io::Error::other("no journal entry"),
            })?;
        // The attempt was recorded as running when it started; it ends with this error.
        match entry.attempts.last_mut() {
            Some(last) if last.running => {
                last.error = error.to_string();
                last.running = false;
            }
            _ => entry.attempts.push(Attempt {
                at: chrono::Utc::now().to_rfc3339(),
                error: error.to_string(),
                running: false,
            }),
        }
        journal.put(&entry).map_err(io_at(&dir))?;
        Ok(entry)
    }

    fn forget_running_attempt(&mut self, key: &str) {
        let dir = self.cfg.ingest.journal.clone();
        let Ok(journal) = self.journal() else { return };
        let result = journal.get(key).and_then(|entry| match entry {
            Some(mut e) if e.attempts.last().is_some_and(|a| a.running) => {
                e.attempts.pop();
                journal.put(&e)
            }
            _ => Ok(()),
        });
        if let Err(e) = result {
            tracing::warn!(file = %key, journal = %dir.display(), error = %e, "cannot take an interrupted attempt off the journal; it will count as a failed one");
        }
    }

    /// Moves a file that keeps failing to `rejected/`, with every attempt's error, and
    /// removes any output an attempt had already put in place: a quarantined file has none.
    fn quarantine(&mut self, claimed: &Path, entry: &JournalEntry) -> Result<PathBuf, BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let mut text = format!(
            "file: {}\nquarantined_at: {}\nreason: failed {} times for reasons other than its content (ingest.max_attempts = {}); none of its rows were delivered. Fix the cause, then move it back into the inbox to process it again.\n",
            entry.input,
            chrono::Utc::now().to_rfc3339(),
            entry.attempts.len(),
            g.max_attempts,
        );
        for (i, a) in entry.attempts.iter().enumerate() {
            text.push_str(&format!("attempt {} at {}: {}\n", i + 1, a.at, a.error));
        }
        let mut outputs = vec![g.outbox.join(&entry.output), g.rejected.join(&entry.errors)];
        outputs.extend(entry.labelled.as_ref().map(|n| g.labelled_dir.join(n)));
        for path in outputs {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => {
                    // The failure that got it quarantined may be the very one that keeps
                    // this output from going: say so rather than keep the file in limbo.
                    tracing::warn!(file = %entry.input, output = %path.display(), error = %e, "cannot remove an output of a quarantined file");
                    text.push_str(&format!(
                        "left in place (cannot remove: {e}): {}\n",
                        path.display()
                    ));
                }
            }
        }
        let target = self.move_to_rejected(claimed, &entry.archived, &text)?;
        self.journal()?
            .remove(&entry.archived)
            .map_err(io_at(&g.journal))?;
        Ok(target)
    }
}

impl Actor for BatchProcessor {
    type Context = SyncContext<Self>;
}

impl Handler<FileReady> for BatchProcessor {
    type Result = ();

    fn handle(&mut self, msg: FileReady, _ctx: &mut SyncContext<Self>) {
        if self.lifecycle.stopping.load(Ordering::SeqCst) {
            msg.done.do_send(FileDone {
                path: msg.path,
                outcome: FileOutcome::Interrupted,
            });
            return;
        }
        self.lifecycle.busy.fetch_add(1, Ordering::SeqCst);
        self.current = None;
        let started = Instant::now();
        let containment = self.containment.clone();
        let result = containment.run(|| self.attempt(&msg.path, started));
        self.lifecycle.busy.fetch_sub(1, Ordering::SeqCst);
        let outcome = match result {
            Ok(Ok(())) => FileOutcome::Finished,
            Ok(Err(BatchError::Interrupted)) => {
                // A shutdown is not a failure of the file: its attempt does not count.
                if let Some(key) = self.current.clone() {
                    self.forget_running_attempt(&key);
                }
                let name = self.current.clone().unwrap_or_else(|| file_name(&msg.path));
                BatchInterrupted { file: &name }.emit(&self.metrics);
                FileOutcome::Interrupted
            }
            Ok(Err(e)) => self.failed(&msg.path, e.to_string()),
            Err(panicked) => self.failed(&msg.path, panicked.to_string()),
        };
        self.current = None;
        msg.done.do_send(FileDone {
            path: msg.path,
            outcome,
        });
        release_freed_memory();
    }
}

impl Handler<Reconfigure> for BatchProcessor {
    type Result = ();

    /// Between files: the next attempt uses the new settings.
    fn handle(&mut self, msg: Reconfigure, _ctx: &mut SyncContext<Self>) {
        self.cfg = msg.0;
    }
}

/// A large batch leaves freed heap that glibc keeps mapped; handing it back keeps the
/// serving RSS at its steady-state size between batches.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of the heaps and in free
    // pages; it does not touch live allocations and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = |n| backoff(100, 1000, n);
        assert_eq!(ms(1), Duration::from_millis(100));
        assert_eq!(ms(2), Duration::from_millis(200));
        assert_eq!(ms(4), Duration::from_millis(800));
        assert_eq!(ms(5), Duration::from_millis(1000));
        assert_eq!(ms(500), Duration::from_millis(1000));
    }
}
