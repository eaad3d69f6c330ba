//! BatchProcessor: scores one inbox file at a time and accounts for every row.
//!
//! Steps, each idempotent, under a journal entry (see `journal.rs`):
//! 1. journal entry with the output names (chosen once);
//! 2. read the CSV; a file that cannot be processed at all gets `<name>.error.txt` and moves
//!    to `rejected/`;
//! 3. score the rows in chunks of `ingest.chunk_rows` through the inference pool;
//! 4. write `outbox/<name>` and, if any row was rejected, `rejected/<name>.errors.csv`
//!    (each written whole: temp file + rename);
//! 5. write the batch's labelled rows, if any, as one immutable file of the labelled store,
//!    under the name recorded in the journal entry (a rerun rewrites the same file, so a row
//!    is never lost or stored twice, and no batch touches another's rows);
//! 6. move the input to `archive/`, then drop the journal entry.
//!
//! A crash anywhere reruns the file from step 1 with the same entry on restart.
//!
//! The actor runs on its own `SyncArbiter` thread: it blocks on file I/O and on the inference
//! replies, which must not stall the HTTP workers or the watcher.

use actix::{Actor, Addr, Handler, SyncContext};
use sentimentd_config::Config;
use sentimentd_data::Label;
use sentimentd_model::Prediction;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::csv_input::{self, FileRejection, ReadError};
use crate::inference::Inference;
use crate::journal::{self, Journal, JournalEntry};
use crate::messages::{FileDone, FileReady, ScoreChunk};
use crate::metrics::{BatchOutcome, Metrics, RowOutcome, Source};
use crate::supervisor::{Containment, Faults};
use sentimentd_data::{CsvBatch, RejectedRow, Row, ScoredWriter, Scores};

/// Shared between the shutdown sequence and the batch processor.
#[derive(Default)]
pub struct Lifecycle {
    /// Set on SIGTERM/SIGINT: finish the current chunk, then leave the file for the next run.
    pub stopping: AtomicBool,
    /// Files being processed right now (0 or 1).
    pub busy: AtomicUsize,
}

pub struct BatchProcessor {
    cfg: Arc<Config>,
    inference: Addr<Inference>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    containment: Containment,
    faults: Faults,
    journal: Option<Journal>,
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("interrupted by shutdown; the file will be processed again on the next start")]
    Interrupted,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counts of one processed file, for the log line and the metrics.
struct Summary {
    rows: usize,
    scored: usize,
    rejected: usize,
    labelled: usize,
    model_version: String,
}

/// A row's prediction (or why it has none) and the version of the model that scored it.
type RowResult = (Result<Prediction, String>, Arc<str>);

impl BatchProcessor {
    pub fn new(
        cfg: Arc<Config>,
        inference: Addr<Inference>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        faults: Faults,
    ) -> BatchProcessor {
        BatchProcessor {
            containment: Containment::new("batch_processor", metrics.clone()),
            cfg,
            inference,
            metrics,
            lifecycle,
            faults,
            journal: None,
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

    /// Run once before any file is taken: clears crash leftovers.
    pub fn recover(cfg: &Config) {
        let g = &cfg.ingest;
        for dir in [&g.outbox, &g.rejected, &g.archive] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::error!(dir = %dir.display(), error = %e, "cannot create a state folder");
            }
            journal::remove_stale_temp_files(dir);
        }
        match sentimentd_data::labelled::LabelledStore::open(&g.labelled_dir) {
            Ok(store) => store.remove_stale_temp_files(),
            Err(e) => {
                tracing::error!(dir = %g.labelled_dir.display(), error = %e, "cannot open the labelled-data store")
            }
        }
        let journal = match Journal::open(&g.journal) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(dir = %g.journal.display(), error = %e, "cannot open the journal");
                return;
            }
        };
        journal::remove_stale_temp_files(&g.journal);
        let entries = match journal.entries() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal");
                return;
            }
        };
        for entry in entries {
            if g.inbox.join(&entry.input).exists() {
                tracing::info!(file = %entry.input, "batch interrupted by a crash will be processed again");
            } else {
                // The input left the inbox, which is the last step before the entry is dropped:
                // every output was complete.
                if let Err(e) = journal.remove(&entry.input) {
                    tracing::error!(file = %entry.input, error = %e, "cannot drop a finished journal entry");
                }
            }
        }
    }

    fn new_entry(&self, input: &str) -> JournalEntry {
        let g = &self.cfg.ingest;
        let (stem, ext) = match input.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (input.to_string(), String::new()),
        };
        // An earlier file with the same name keeps its outputs: pick the first free suffix.
        let mut n = 0usize;
        loop {
            let name = if n == 0 {
                input.to_string()
            } else {
                format!("{stem}.{n}{ext}")
            };
            let taken = g.outbox.join(&name).exists()
                || g.archive.join(&name).exists()
                || g.rejected.join(&name).exists()
                || g.rejected.join(format!("{name}.errors.csv")).exists()
                || g.rejected.join(format!("{name}.error.txt")).exists();
            if !taken {
                let now = chrono::Utc::now();
                return JournalEntry {
                    input: input.to_string(),
                    output: name.clone(),
                    errors: format!("{name}.errors.csv"),
                    labelled: Some(sentimentd_data::labelled::file_name(
                        &now.format("%Y%m%dT%H%M%S%.6fZ").to_string(),
                        "batch",
                        &name,
                    )),
                    archived: name,
                    started_at: now.to_rfc3339(),
                };
            }
            n += 1;
        }
    }

    fn process(&mut self, path: &Path) -> Result<Option<Summary>, BatchError> {
        let started = Instant::now();
        let Some(input) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return Err(BatchError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad file name"),
            });
        };
        if !path.exists() {
            return Ok(None);
        }
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let existing = self.journal()?.get(&input).map_err(io_at(&g.journal))?;
        let mut entry = match existing {
            Some(e) => e,
            None => {
                let e = self.new_entry(&input);
                self.journal()?.put(&e).map_err(io_at(&g.journal))?;
                e
            }
        };
        self.faults.crash_point("after_journal");

        let batch = match csv_input::read_input(path, cfg.data.max_text_chars, g.max_file_bytes) {
            Ok(b) => b,
            Err(ReadError::Rejected(why)) => {
                self.reject_file(path, &entry, &why)?;
                return Ok(None);
            }
            Err(ReadError::Io { path: p, source }) => {
                return Err(BatchError::Io {
                    path: PathBuf::from(p),
                    source,
                });
            }
        };
        let CsvBatch {
            headers,
            text_col,
            rows,
            mut rejected,
            ..
        } = batch;
        let source_col = headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case("source"));
        let total = rows.len() + rejected.len();

        // Move the texts out so they can be shared with the inference threads without copies.
        let mut rows = rows;
        let texts: Arc<Vec<String>> = Arc::new(
            rows.iter_mut()
                .map(|r| std::mem::take(&mut r.fields[text_col]))
                .collect(),
        );
        let read_seconds = started.elapsed().as_secs_f64();
        let scoring = Instant::now();
        let (predictions, model_version) = self.score(&texts)?;
        let score_seconds = scoring.elapsed().as_secs_f64();
        let writing = Instant::now();

        let mut scored_rows = Vec::with_capacity(rows.len());
        let mut counts = [0u64; 3];
        for (i, (mut row, (result, version))) in rows.into_iter().zip(predictions).enumerate() {
            row.fields[text_col] = texts[i].clone();
            match result {
                Ok(p) => {
                    counts[p.label.index()] += 1;
                    scored_rows.push((row, p, version));
                }
                Err(reason) => rejected.push(csv_input::unscored(row.line, reason, &row.fields)),
            }
        }
        rejected.sort_by_key(|r| r.line);

        write_scored(&g.outbox.join(&entry.output), &headers, &scored_rows)?;
        self.faults.crash_point("after_output");
        let errors_path = g.rejected.join(&entry.errors);
        if rejected.is_empty() {
            // A rerun after a crash may meet a report from a run that rejected differently
            // (e.g. a model swap in between); the last run's outputs are the truth.
            match std::fs::remove_file(&errors_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&errors_path)(e)),
            }
        } else {
            write_rejections(&errors_path, &rejected)?;
        }
        self.faults.crash_point("after_rejections");

        let labelled: Vec<(&str, Label, u64, &str)> = scored_rows
            .iter()
            .filter_map(|(row, _, _)| {
                row.label.map(|l| {
                    let source = source_col
                        .and_then(|c| row.fields.get(c))
                        .map_or("", String::as_str);
                    (row.fields[text_col].as_str(), l, row.line, source)
                })
            })
            .collect();
        if !labelled.is_empty() {
            if entry.labelled.is_none() {
                // An entry from an older build: pin the name first, so a rerun rewrites the
                // same file instead of adding a second one.
                entry.labelled = Some(sentimentd_data::labelled::file_name(
                    &chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ").to_string(),
                    "batch",
                    &entry.output,
                ));
                self.journal()?.put(&entry).map_err(io_at(&g.journal))?;
            }
            self.write_labelled(&entry, &labelled)?;
        }
        self.faults.crash_point("after_labelled");

        let archived = g.archive.join(&entry.archived);
        std::fs::rename(path, &archived).map_err(io_at(&archived))?;
        journal::sync_dir(&g.archive).map_err(io_at(&g.archive))?;
        self.faults.crash_point("after_archive");
        // Counted before the journal entry goes, so whoever sees the batch finished (no entry,
        // input archived) also sees it in the metrics.
        self.metrics.batch(BatchOutcome::processed);
        self.metrics
            .rows(RowOutcome::scored, scored_rows.len() as u64);
        self.metrics
            .rows(RowOutcome::rejected, rejected.len() as u64);
        self.metrics.predictions_by_label(Source::batch, counts);
        self.metrics.labelled_rows(labelled.len() as u64);
        // The input is archived, so the batch is done: a leftover entry is dropped by the
        // next start's recovery, and retrying here would only count the batch twice.
        let removed = self
            .journal()
            .and_then(|j| j.remove(&input).map_err(io_at(&g.journal)));
        if let Err(e) = removed {
            tracing::warn!(file = %input, error = %e, "batch done but its journal entry could not be removed; the next start drops it");
        }
        let summary = Summary {
            rows: total,
            scored: scored_rows.len(),
            rejected: rejected.len(),
            labelled: labelled.len(),
            model_version: model_version.to_string(),
        };
        tracing::info!(
            file = %input,
            output = %entry.output,
            rows = summary.rows,
            scored = summary.scored,
            rejected = summary.rejected,
            labelled = summary.labelled,
            model_version = %summary.model_version,
            seconds = started.elapsed().as_secs_f64(),
            read_seconds,
            score_seconds,
            write_seconds = writing.elapsed().as_secs_f64(),
            "batch processed"
        );
        Ok(Some(summary))
    }

    /// Scores every text through the inference pool; all chunks are queued at once so every
    /// inference thread works, and collected in order.
    fn score(&self, texts: &Arc<Vec<String>>) -> Result<(Vec<RowResult>, Arc<str>), BatchError> {
        let chunk = self.cfg.ingest.chunk_rows.max(1);
        let requests: Vec<_> = (0..texts.len())
            .step_by(chunk)
            .map(|start| {
                self.inference.send(ScoreChunk {
                    texts: texts.clone(),
                    start,
                    end: (start + chunk).min(texts.len()),
                })
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        let mut version: Option<Arc<str>> = None;
        // Each row carries the version of the model that scored its chunk: a swap in the
        // middle of a file must not mislabel the rows scored before it.
        for request in requests {
            if self.lifecycle.stopping.load(Ordering::SeqCst) {
                return Err(BatchError::Interrupted);
            }
            let scored = futures_executor::block_on(request)
                .map_err(|e| BatchError::Inference(e.to_string()))?
                .map_err(|e| BatchError::Inference(e.to_string()))?;
            version = Some(scored.model_version.clone());
            out.extend(
                scored
                    .results
                    .into_iter()
                    .map(|r| (r, scored.model_version.clone())),
            );
        }
        // A file with no scorable rows was scored by no model.
        let version = version.unwrap_or_else(|| Arc::from(""));
        Ok((out, version))
    }

    fn write_labelled(
        &mut self,
        entry: &JournalEntry,
        labelled: &[(&str, Label, u64, &str)],
    ) -> Result<(), BatchError> {
        let dir = self.cfg.ingest.labelled_dir.clone();
        let name = entry.labelled.clone().ok_or_else(|| BatchError::Io {
            path: self.cfg.ingest.journal.clone(),
            source: std::io::Error::other("the journal entry names no labelled-data file"),
        })?;
        let arrived_at = entry.started_at.clone();
        let rows: Vec<sentimentd_data::labelled::LabelledRow> = labelled
            .iter()
            .map(
                |(text, label, line, source)| sentimentd_data::labelled::LabelledRow {
                    text: text.to_string(),
                    label: *label,
                    source: source.to_string(),
                    origin: entry.input.clone(),
                    line: *line,
                    arrived_at: arrived_at.clone(),
                },
            )
            .collect();
        sentimentd_data::labelled::LabelledStore::open(&dir)
            .and_then(|s| s.write(&name, &rows))
            .map_err(|e| BatchError::Io {
                path: dir.join(&name),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(())
    }

    fn reject_file(
        &mut self,
        path: &Path,
        entry: &JournalEntry,
        why: &FileRejection,
    ) -> Result<(), BatchError> {
        let cfg = self.cfg.clone();
        let g = &cfg.ingest;
        let report = g.rejected.join(format!("{}.error.txt", entry.archived));
        let text = format!(
            "file: {}\nrejected_at: {}\nreason: {}\n",
            entry.input,
            chrono::Utc::now().to_rfc3339(),
            why
        );
        journal::write_atomic(&report, text.as_bytes()).map_err(io_at(&report))?;
        let target = g.rejected.join(&entry.archived);
        std::fs::rename(path, &target).map_err(io_at(&target))?;
        journal::sync_dir(&g.rejected).map_err(io_at(&g.rejected))?;
        self.journal()?
            .remove(&entry.input)
            .map_err(io_at(&g.journal))?;
        self.metrics.batch(BatchOutcome::rejected);
        tracing::warn!(file = %entry.input, reason = %why, moved_to = %target.display(), "batch file rejected");
        Ok(())
    }
}

/// The scored rows with the data crate's writer: input columns, then `label`, `score`,
/// `p_negative`, `p_neutral`, `p_positive`, `model_version` (an input column of one of those
/// names is kept as `input_<name>`, so `label` always means the prediction, as for
/// `sentimentd predict --csv`).
fn write_scored(
    path: &Path,
    headers: &[String],
    rows: &[(Row, Prediction, Arc<str>)],
) -> Result<(), BatchError> {
    journal::write_atomic_with(path, |out| {
        let to_io = |e: sentimentd_data::DataError| std::io::Error::other(e.to_string());
        let mut w = ScoredWriter::new(out, headers).map_err(to_io)?;
        for (row, p, model_version) in rows {
            let scores = Scores {
                label: p.label,
                score: p.score,
                probabilities: p.probabilities,
            };
            w.write_row(&row.fields, &scores, model_version)
                .map_err(to_io)?;
        }
        w.finish().map_err(to_io)?;
        Ok(())
    })
    .map_err(io_at(path))
}

fn write_rejections(path: &Path, rejected: &[RejectedRow]) -> Result<(), BatchError> {
    journal::write_atomic_with(path, |out| {
        sentimentd_data::write_rejections_to(out, rejected)
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(io_at(path))
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
                finished: false,
            });
            return;
        }
        self.lifecycle.busy.fetch_add(1, Ordering::SeqCst);
        let containment = self.containment.clone();
        let outcome = containment.run(|| self.process(&msg.path));
        self.lifecycle.busy.fetch_sub(1, Ordering::SeqCst);
        let finished = match outcome {
            Ok(Ok(_)) => true,
            Ok(Err(BatchError::Interrupted)) => {
                tracing::info!(file = %msg.path.display(), "batch interrupted by shutdown; it resumes on the next start");
                false
            }
            Ok(Err(e)) => {
                self.metrics.batch(BatchOutcome::failed);
                tracing::error!(file = %msg.path.display(), error = %e, "batch failed; it will be retried");
                false
            }
            Err(_) => {
                self.metrics.batch(BatchOutcome::failed);
                false
            }
        };
        msg.done.do_send(FileDone {
            finished: finished && !msg.path.exists(),
            path: msg.path,
        });
        release_freed_memory();
    }
}

/// A large batch leaves tens of MB of freed heap that glibc keeps mapped; handing it back
/// keeps the serving RSS at its steady-state size between batches.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of the heaps and in free
    // pages; it does not touch live allocations and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
