//! Scoring one claimed file as a stream: read a chunk of rows, send it to the inference pool,
//! write the chunks that come back, in file order, to the outputs' temporary files. A few
//! chunks are in flight at once so every inference thread works; memory depends on
//! `ingest.chunk_rows` and [`CHUNK_BYTES`], never on the file's size or on how many of its
//! rows are rejected.
//!
//! The outputs become visible only in [`Outputs::commit`], each whole, so a crash at any
//! chunk boundary leaves nothing half-written, and the rerun under the same journal entry
//! writes the same names.

use sentimentd_data::labelled::LabelledWriter;
use sentimentd_data::reputation::{Tally, bucket_of, parse_time};
use sentimentd_data::{
    BatchReader, DataError, ReadOptions, Record, RejectedRow, RejectionWriter, Row, ScoredWriter,
    Scores, StreamOptions,
};
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::messages::ScoredChunk;
use crate::mlops::reputation::{Reputation, now_unix};
use crate::runtime::containment::Faults;
use crate::runtime::shutdown::Lifecycle;
use crate::serving::scorer::{ChunkRequest, Scorer};
use crate::sources::file::journal::JournalEntry;
use sentimentd_data::atomic::AtomicFile;

/// The file as a whole cannot be processed; it goes to `rejected/` with this reason.
#[derive(Debug, thiserror::Error)]
pub enum FileRejection {
    /// Empty, not CSV, no `text` column, duplicate columns: the data crate's message, which
    /// names the file and what is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("the file is {size} bytes, over the limit of {limit} bytes (ingest.max_file_bytes)")]
    TooBig { size: u64, limit: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file as a whole cannot be processed; it goes to `rejected/`.
    #[error(transparent)]
    Rejected(#[from] FileRejection),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(
        "the file changed after it was claimed (size {before} -> {after} bytes): a writer still had it open; it is scored again"
    )]
    Changed { before: u64, after: u64 },
    #[error("interrupted by shutdown; the file will be processed again on the next start")]
    Interrupted,
    /// `[cluster] publish_inbox`: the input stream did not store every row.
    #[error("publishing to the cluster's input stream failed: {0}")]
    Publish(String),
}

pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn data_at(path: &Path) -> impl FnOnce(DataError) -> BatchError + '_ {
    move |e| BatchError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// What a streamed file produced.
#[derive(Debug, Default)]
pub struct Streamed {
    pub scored: u64,
    pub rejected: u64,
    pub labelled: u64,
    pub by_label: [u64; 3],
    /// Version of the model that scored the last chunk (empty if nothing was scored).
    pub model_version: String,
    /// Scored rows by source and time bucket, for the reputation view once the file is done.
    pub tally: Tally,
}

impl Streamed {
    pub fn rows(&self) -> u64 {
        self.scored + self.rejected
    }
}

/// Where a batch's outputs go.
pub struct Destinations {
    pub output: PathBuf,
    pub errors: PathBuf,
    /// The labelled-data store file, if the entry names one.
    pub labelled: Option<PathBuf>,
}

/// The outputs being written; visible only after [`Outputs::commit`].
pub struct Outputs {
    dest: Destinations,
    scored: ScoredWriter<AtomicFile>,
    errors: Option<RejectionWriter<AtomicFile>>,
    labelled: Option<LabelledWriter<AtomicFile>>,
    neutralize: bool,
}

impl Outputs {
    /// Makes each output visible, in the journal protocol's order; `step` runs after each
    /// (the crash points of the fault tests).
    pub fn commit(self, mut step: impl FnMut(&str)) -> Result<(), BatchError> {
        let d = &self.dest;
        let file = self.scored.finish().map_err(data_at(&d.output))?;
        file.commit().map_err(io_at(&d.output))?;
        step("after_output");
        match self.errors {
            Some(w) => {
                let file = w.finish().map_err(data_at(&d.errors))?;
                file.commit().map_err(io_at(&d.errors))?;
            }
            // A rerun after a crash may meet a report from a run that rejected differently
            // (e.g. a model swap in between); the last run's outputs are the truth.
            None => remove_stale(&d.errors)?,
        }
        step("after_rejections");
        match (self.labelled, &d.labelled) {
            (Some(w), Some(path)) => {
                let file = w.finish().map_err(data_at(path))?;
                file.commit().map_err(io_at(path))?;
            }
            // No labelled row this run: a file an earlier, interrupted run of the same batch
            // stored must not stay behind.
            (None, Some(path)) => remove_stale(path)?,
            _ => {}
        }
        step("after_labelled");
        Ok(())
    }

    fn reject(&mut self, row: &RejectedRow) -> Result<(), BatchError> {
        if self.errors.is_none() {
            self.errors = Some(rejection_writer(&self.dest.errors, self.neutralize)?);
        }
        if let Some(w) = self.errors.as_mut() {
            w.write_row(row).map_err(data_at(&self.dest.errors))?;
        }
        Ok(())
    }
}

/// The report of rejected rows at `path`, written aside until committed.
fn rejection_writer(
    path: &Path,
    neutralize: bool,
) -> Result<RejectionWriter<AtomicFile>, BatchError> {
    let file = AtomicFile::create(path).map_err(io_at(path))?;
    Ok(RejectionWriter::new(file)
        .map_err(data_at(path))?
        .neutralize_formulas(neutralize))
}

/// Removes an output an earlier run of the same batch left at `path`, if any.
fn remove_stale(path: &Path) -> Result<(), BatchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// The whole report of a batch's rejected rows at `path`, as [`Outputs::commit`] leaves it:
/// written in one step, or an earlier run's removed when there are none.
pub fn write_rejections(
    path: &Path,
    rows: &[RejectedRow],
    neutralize: bool,
) -> Result<(), BatchError> {
    if rows.is_empty() {
        return remove_stale(path);
    }
    let mut w = rejection_writer(path, neutralize)?;
    for row in rows {
        w.write_row(row).map_err(data_at(path))?;
    }
    w.finish()
        .map_err(data_at(path))?
        .commit()
        .map_err(io_at(path))
}

/// A chunk ends once it holds this many bytes of records, even before `chunk_rows` records:
/// rows with wide non-text columns would otherwise hold `chunk_rows` times the record limit.
pub const CHUNK_BYTES: usize = 4 << 20;

/// A chunk of consecutive records: the rows to score (their texts moved out into `texts`)
/// and the records rejected while reading, both in file order.
struct Chunk {
    rows: Vec<Row>,
    texts: Arc<Vec<String>>,
    rejected: Vec<RejectedRow>,
    /// The reader has no record left.
    last: bool,
}

/// A chunk's scoring request; none for a chunk without rows (no model needed).
type Pending = Option<ChunkRequest>;

/// The settings of one streaming run.
pub struct Stream<'a> {
    pub scorer: &'a Scorer,
    pub lifecycle: &'a Lifecycle,
    pub chunk_rows: usize,
    /// Chunks sent to the inference pool before the oldest is waited for.
    pub in_flight: usize,
    pub max_text_chars: usize,
    pub neutralize_formulas: bool,
    pub faults: &'a Faults,
    pub reputation: &'a Reputation,
}

/// Where a batch's rows name their source and time.
#[derive(Clone, Copy)]
struct Columns<'h> {
    text: usize,
    source: Option<usize>,
    time: Option<(usize, &'h str)>,
}

impl Stream<'_> {
    /// Reads `file` (at most `size` bytes, its size when claimed), scores it and writes the
    /// outputs' temporary files. A file-level problem (not CSV, no `text` column) is
    /// `BatchError::Rejected`.
    pub fn run(
        &self,
        file: &File,
        size: u64,
        entry: &JournalEntry,
        dest: Destinations,
    ) -> Result<(Streamed, Outputs), BatchError> {
        let opts = ReadOptions {
            max_text_chars: self.max_text_chars,
            require_label: false,
        };
        let stream = StreamOptions {
            limit: Some(size),
            ..StreamOptions::default()
        };
        let mut reader =
            BatchReader::with_stream(file, &entry.input, opts, stream).map_err(|e| match e {
                DataError::Io { source, .. } => BatchError::Io {
                    path: PathBuf::from(&entry.archived),
                    source,
                },
                other => FileRejection::Invalid(other.to_string()).into(),
            })?;
        let headers = reader.headers().to_vec();
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name.trim()))
        };
        let rep = self.reputation;
        let columns = Columns {
            text: reader.text_col(),
            source: rep.settings.source_columns.iter().find_map(|c| find(c)),
            time: find(&rep.settings.time_column).map(|i| (i, headers[i].trim())),
        };

        let scored_file = AtomicFile::create(&dest.output).map_err(io_at(&dest.output))?;
        let scored = ScoredWriter::with_neutralize(scored_file, &headers, self.neutralize_formulas)
            .map_err(data_at(&dest.output))?;
        let mut out = Outputs {
            dest,
            scored,
            errors: None,
            labelled: None,
            neutralize: self.neutralize_formulas,
        };
        let mut summary = Streamed::default();
        let mut pending: VecDeque<(Chunk, Pending)> = VecDeque::new();
        let chunk_rows = self.chunk_rows.max(1);
        let mut last_progress = Instant::now();
        let started = Instant::now();
        loop {
            if self.lifecycle.stopping.load(Ordering::SeqCst) {
                return Err(BatchError::Interrupted);
            }
            let chunk = next_chunk(&mut reader, chunk_rows, &entry.archived)?;
            let done = chunk.last;
            if !chunk.rows.is_empty() {
                let request = self.scorer.score_chunk(chunk.texts.clone());
                pending.push_back((chunk, Some(request)));
            } else if !chunk.rejected.is_empty() {
                pending.push_back((chunk, None));
            }
            while pending.len() >= self.in_flight.max(1) || (done && !pending.is_empty()) {
                let Some((chunk, request)) = pending.pop_front() else {
                    break;
                };
                let scored = match request {
                    Some(request) => futures_executor::block_on(request)
                        .map_err(|e| BatchError::Inference(e.to_string()))?,
                    None => ScoredChunk {
                        start: 0,
                        results: Vec::new(),
                        model_version: Arc::from(""),
                    },
                };
                self.write_chunk(chunk, scored, entry, columns, &mut out, &mut summary)?;
                self.faults.crash_point("after_chunk");
            }
            if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                let done_bytes = reader.bytes_done();
                tracing::info!(
                    file = %entry.input,
                    rows = summary.rows(),
                    bytes = done_bytes,
                    size,
                    percent = (100.0 * done_bytes as f64 / size.max(1) as f64).round(),
                    rows_per_second = (summary.rows() as f64 / started.elapsed().as_secs_f64()).round(),
                    "batch progress"
                );
            }
            if done {
                break;
            }
        }
        Ok((summary, out))
    }

    fn write_chunk(
        &self,
        chunk: Chunk,
        scored: ScoredChunk,
        entry: &JournalEntry,
        columns: Columns<'_>,
        out: &mut Outputs,
        summary: &mut Streamed,
    ) -> Result<(), BatchError> {
        let text_col = columns.text;
        let arrival = now_unix();
        let settings = &self.reputation.settings;
        // Each row carries the version of the model that scored its chunk: a swap in the
        // middle of a file must not mislabel the rows scored before it.
        let version = scored.model_version.clone();
        let mut unscored = Vec::new();
        for ((row, text), result) in chunk
            .rows
            .iter()
            .zip(chunk.texts.iter())
            .zip(scored.results)
        {
            let time = match columns.time {
                Some((col, name)) => {
                    let raw = row.fields.get(col).map_or("", String::as_str);
                    // A time past the current bucket is a clock or time-zone error (a local
                    // time read as UTC); taken as is it would push the source's history out.
                    let latest = arrival + settings.bucket_secs as i64;
                    match parse_time(raw).filter(|&t| t <= latest) {
                        Some(t) => t,
                        None if settings.strict_time => {
                            unscored.push(RejectedRow {
                                line: row.line,
                                reason: sentimentd_data::RejectReason::BadTime {
                                    column: name.to_string(),
                                    value: raw.chars().take(64).collect(),
                                },
                                raw: raw_of(&row.fields, text_col, text),
                            });
                            continue;
                        }
                        None => arrival,
                    }
                }
                None => arrival,
            };
            let source = columns
                .source
                .and_then(|c| row.fields.get(c))
                .map(String::as_str);
            match result {
                Ok(p) => {
                    summary
                        .tally
                        .add(source, bucket_of(settings, time), p.label);
                    let scores = Scores {
                        label: p.label,
                        score: p.score,
                        probabilities: p.probabilities,
                    };
                    out.scored
                        .write_row_with(&row.fields, Some((text_col, text)), &scores, &version)
                        .map_err(data_at(&out.dest.output))?;
                    summary.scored += 1;
                    summary.by_label[p.label.index()] += 1;
                    if let Some(label) = row.label {
                        self.write_labelled(out, entry, row, text, label, source.unwrap_or(""))?;
                        summary.labelled += 1;
                    }
                }
                Err(reason) => unscored.push(RejectedRow {
                    line: row.line,
                    reason: sentimentd_data::RejectReason::Unscorable(reason),
                    raw: raw_of(&row.fields, text_col, text),
                }),
            }
        }
        // Both lists are in file order; the report is too.
        let mut a = chunk.rejected.into_iter().peekable();
        let mut b = unscored.into_iter().peekable();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.line <= y.line => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some(row) = next {
                out.reject(&row)?;
                summary.rejected += 1;
            }
        }
        if !version.is_empty() {
            summary.model_version = version.to_string();
        }
        Ok(())
    }

    fn write_labelled(
        &self,
        out: &mut Outputs,
        entry: &JournalEntry,
        row: &Row,
        text: &str,
        label: sentimentd_data::Label,
        source: &str,
    ) -> Result<(), BatchError> {
        let Some(path) = out.dest.labelled.clone() else {
            return Ok(());
        };
        if out.labelled.is_none() {
            let file = AtomicFile::create(&path).map_err(io_at(&path))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.labelled = Some(LabelledWriter::new(file, &name).map_err(data_at(&path))?);
        }
        if let Some(w) = out.labelled.as_mut() {
            w.write(
                text,
                label,
                source,
                &entry.input,
                row.line,
                &entry.started_at,
            )
            .map_err(data_at(&path))?;
        }
        Ok(())
    }
}

/// The row as CSV-ish text for a rejection report (the text put back in its column).
fn raw_of(fields: &[String], text_col: usize, text: &str) -> String {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| if i == text_col { text } else { f.as_str() })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads records until the chunk holds `chunk_rows` of them, accepted or rejected, or
/// [`CHUNK_BYTES`] of their bytes, whichever comes first.
fn next_chunk(
    reader: &mut BatchReader<&File>,
    chunk_rows: usize,
    claimed: &str,
) -> Result<Chunk, BatchError> {
    let mut rows = Vec::new();
    let mut texts = Vec::new();
    let mut rejected = Vec::new();
    let mut held = 0usize;
    let mut last = false;
    // What a record costs besides its bytes: the struct and one `String` per field.
    const OVERHEAD: usize = 64;
    while rows.len() + rejected.len() < chunk_rows && held < CHUNK_BYTES {
        match reader.next() {
            None => {
                last = true;
                break;
            }
            Some(Ok(Record::Row(mut row))) => {
                held += OVERHEAD
                    + row
                        .fields
                        .iter()
                        .map(|f| f.len() + std::mem::size_of::<String>())
                        .sum::<usize>();
                texts.push(std::mem::take(&mut row.fields[row.text_col]));
                rows.push(row);
            }
            Some(Ok(Record::Rejected(r))) => {
                held += OVERHEAD + r.raw.len();
                rejected.push(r);
            }
            Some(Err(DataError::Io { source, .. })) => {
                return Err(BatchError::Io {
                    path: PathBuf::from(claimed),
                    source,
                });
            }
            Some(Err(e)) => return Err(BatchError::Inference(e.to_string())),
        }
    }
    Ok(Chunk {
        rows,
        texts: Arc::new(texts),
        rejected,
        last,
    })
}
