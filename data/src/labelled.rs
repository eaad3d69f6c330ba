//! The labelled-data store: labelled rows that arrive while serving (inbox batches with a
//! `label` column, `POST /feedback`), kept for retraining.
//!
//! One immutable CSV per processed batch or feedback request, written whole (temp file +
//! rename) under a name chosen before it is written, so a rerun after a crash rewrites the
//! same file instead of appending twice, and no writer ever touches another's rows. Every row
//! keeps its provenance: where it came from (`origin`: the batch file or `feedback`), its line
//! there, when it arrived, and the source the producer named.

use crate::error::DataError;
use crate::label::Label;
use crate::write::write_atomic;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const LABELLED_COLUMNS: [&str; 6] = ["text", "label", "source", "origin", "line", "arrived_at"];

/// One labelled row with its provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledRow {
    pub text: String,
    pub label: Label,
    /// What the producer called the source (a channel, brand or feed); may be empty.
    pub source: String,
    /// The batch file the row came from, `feedback`, or `jetstream` (a cluster's input).
    pub origin: String,
    /// Line in the batch file (1 = header), or position in the feedback request or the
    /// fetched JetStream batch (1-based).
    pub line: u64,
    /// RFC 3339 arrival time; rows are time-ordered by it.
    pub arrived_at: String,
}

/// Rows of one store file.
#[derive(Clone, Debug)]
pub struct LabelledFile {
    pub name: String,
    pub rows: Vec<LabelledRow>,
}

pub struct LabelledStore {
    dir: PathBuf,
}

/// Writes a store file row by row (header first), for batches too large to hold.
pub struct LabelledWriter<W: std::io::Write> {
    out: csv::Writer<W>,
    name: String,
    line: String,
}

impl<W: std::io::Write> LabelledWriter<W> {
    pub fn new(out: W, name: &str) -> Result<Self, DataError> {
        let mut w = LabelledWriter {
            out: csv::Writer::from_writer(out),
            name: name.to_string(),
            line: String::new(),
        };
        w.out
            .write_record(LABELLED_COLUMNS)
            .map_err(|e| w.csv_error(e))?;
        Ok(w)
    }

    fn csv_error(&self, source: csv::Error) -> DataError {
        DataError::Csv {
            name: self.name.clone(),
            source,
        }
    }

    pub fn write(
        &mut self,
        text: &str,
        label: Label,
        source: &str,
        origin: &str,
        line: u64,
        arrived_at: &str,
    ) -> Result<(), DataError> {
        use std::fmt::Write as _;
        self.line.clear();
        let _ = write!(self.line, "{line}");
        let record = [
            text,
            label.as_str(),
            source,
            origin,
            self.line.as_str(),
            arrived_at,
        ];
        self.out.write_record(record).map_err(|e| self.csv_error(e))
    }

    pub fn finish(self) -> Result<W, DataError> {
        let name = self.name;
        self.out.into_inner().map_err(|e| DataError::Io {
            path: name.into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// A store file name. `stamp` is a sortable UTC time stamp such as `20260101T120000.123456Z`
/// (the caller's clock), so name order is arrival order; `tag` is made file-name safe.
pub fn file_name(stamp: &str, kind: &str, tag: &str) -> String {
    let safe: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    format!("{stamp}-{kind}-{safe}.csv")
}

/// A store file name no other writer of this process or another one takes: the arrival
/// time, `kind` (`feedback`, `jetstream`), the process id and a sequence number.
pub fn unique_file_name(arrived_at: chrono::DateTime<chrono::Utc>, kind: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    file_name(
        &arrived_at.format("%Y%m%dT%H%M%S%.6fZ").to_string(),
        kind,
        &format!("{}-{seq}", std::process::id()),
    )
}

impl LabelledStore {
    pub fn open(dir: &Path) -> Result<LabelledStore, DataError> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(LabelledStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `rows` as the file `name`, whole or not at all; writing the same name again
    /// replaces it (a rerun after a crash).
    pub fn write(&self, name: &str, rows: &[LabelledRow]) -> Result<PathBuf, DataError> {
        let path = self.dir.join(name);
        write_atomic(&path, |w| {
            let mut out = LabelledWriter::new(w, name)?;
            for r in rows {
                out.write(
                    &r.text,
                    r.label,
                    &r.source,
                    &r.origin,
                    r.line,
                    &r.arrived_at,
                )?;
            }
            out.finish().map(|_| ())
        })?;
        Ok(path)
    }

    /// Where the store file `name` lives (for callers that stream it through their own
    /// atomic writer).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes temp files a crash left behind (they were never visible as store files).
    pub fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(crate::atomic::is_temp_name)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Names of the store files, oldest first.
    pub fn names(&self) -> Result<Vec<String>, DataError> {
        let io = |source| DataError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io)? {
            let e = e.map_err(io)?;
            if let Some(n) = e.file_name().to_str()
                && !n.starts_with('.')
                && n.ends_with(".csv")
            {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes the oldest files until the store holds at most `max_bytes` (0: no limit),
    /// and every file last written more than `max_age` ago (`None`: no limit). Returns the
    /// names removed with their sizes, oldest first.
    pub fn apply_retention(
        &self,
        max_bytes: u64,
        max_age: Option<std::time::Duration>,
    ) -> Result<Vec<(String, u64)>, DataError> {
        let now = std::time::SystemTime::now();
        let mut files = Vec::new();
        for name in self.names()? {
            let Ok(meta) = std::fs::metadata(self.dir.join(&name)) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            files.push((name, meta.len(), age));
        }
        // The files past their age go first, so the size limit counts only what stays.
        let too_old = |age: &std::time::Duration| max_age.is_some_and(|m| *age > m);
        let mut total: u64 = files.iter().filter(|f| !too_old(&f.2)).map(|f| f.1).sum();
        let mut removed = Vec::new();
        // Names start with the arrival time: name order is arrival order.
        for (name, size, age) in files {
            let old = too_old(&age);
            let over = max_bytes > 0 && total > max_bytes;
            if !old && !over {
                continue;
            }
            if !old {
                total -= size;
            }
            let path = self.dir.join(&name);
            std::fs::remove_file(&path).map_err(|source| DataError::Io { path, source })?;
            removed.push((name, size));
        }
        Ok(removed)
    }

    /// Bytes the store's files hold (what `[feedback] max_store_bytes` bounds).
    pub fn total_bytes(&self) -> Result<u64, DataError> {
        let mut total = 0;
        for name in self.names()? {
            total += std::fs::metadata(self.dir.join(&name))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(total)
    }

    pub fn read(&self, name: &str) -> Result<LabelledFile, DataError> {
        let path = self.dir.join(name);
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(&path)
            .map_err(|e| DataError::Csv {
                name: path.display().to_string(),
                source: e,
            })?;
        let mut rows = Vec::new();
        for (i, rec) in r.records().enumerate() {
            let bad = |reason: String| DataError::BadRow {
                name: format!("{}:{}", path.display(), i + 2),
                reason,
            };
            let rec = rec.map_err(|e| bad(e.to_string()))?;
            let field = |k: usize| rec.get(k).unwrap_or("").to_string();
            let label = Label::parse(&field(1))
                .ok_or_else(|| bad(format!("unknown label {:?}", field(1))))?;
            rows.push(LabelledRow {
                text: field(0),
                label,
                source: field(2),
                origin: field(3),
                line: field(4).parse().unwrap_or(0),
                arrived_at: field(5),
            });
        }
        Ok(LabelledFile {
            name: name.to_string(),
            rows,
        })
    }

    /// Every file, oldest first. A file that cannot be read is reported and left out rather
    /// than stopping retraining on the rest.
    pub fn read_all(&self) -> Result<Vec<LabelledFile>, DataError> {
        let mut out = Vec::new();
        for name in self.names()? {
            match self.read(&name) {
                Ok(f) => out.push(f),
                Err(e) => tracing::warn!(file = %name, error = %e, "labelled file skipped"),
            }
        }
        Ok(out)
    }
}

/// The text as training sees it for deduplication: trimmed, lower-cased, whitespace folded.
pub fn normalise_text(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rows of `files` deduplicated by normalised text, a text labelled more than once keeping
/// its latest label (by arrival time, then file order), returned oldest first.
pub fn deduplicate(files: &[LabelledFile]) -> Vec<LabelledRow> {
    deduplicate_with_files(files)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// [`deduplicate`], each row with the name of the store file it came from (lineage).
pub fn deduplicate_with_files(files: &[LabelledFile]) -> Vec<(LabelledRow, String)> {
    let mut rows: Vec<(&LabelledRow, usize, &str)> = Vec::new();
    let mut order = 0usize;
    for f in files {
        for r in &f.rows {
            rows.push((r, order, f.name.as_str()));
            order += 1;
        }
    }
    // Stable by arrival time, so equal times keep file order.
    rows.sort_by(|a, b| a.0.arrived_at.cmp(&b.0.arrived_at).then(a.1.cmp(&b.1)));
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, (r, _, _)) in rows.iter().enumerate() {
        latest.insert(normalise_text(&r.text), i);
    }
    rows.iter()
        .enumerate()
        .filter(|(i, (r, _, _))| latest.get(&normalise_text(&r.text)) == Some(i))
        .map(|(_, (r, _, file))| ((*r).clone(), file.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &str, label: Label, at: &str) -> LabelledRow {
        LabelledRow {
            text: text.into(),
            label,
            source: "s".into(),
            origin: "o.csv".into(),
            line: 2,
            arrived_at: at.into(),
        }
    }

    #[test]
    fn write_read_round_trip_and_order() -> Result<(), DataError> {
        let dir = tempfile::tempdir().map_err(|source| DataError::Io {
            path: "tmp".into(),
            source,
        })?;
        let store = LabelledStore::open(dir.path())?;
        let rows = vec![
            row(
                "a, \"quoted\"\nline",
                Label::Positive,
                "2026-01-01T00:00:00Z",
            ),
            row("b", Label::Negative, "2026-01-01T00:00:01Z"),
        ];
        store.write(
            &file_name("20260102T000000.000000Z", "batch", "x y.csv"),
            &rows,
        )?;
        store.write(
            &file_name("20260101T000000.000000Z", "feedback", "1"),
            &rows[1..],
        )?;
        let names = store.names()?;
        assert_eq!(
            names,
            [
                "20260101T000000.000000Z-feedback-1.csv",
                "20260102T000000.000000Z-batch-x_y.csv.csv"
            ]
        );
        assert_eq!(store.read(&names[1])?.rows, rows);
        Ok(())
    }

    #[test]
    fn dedup_keeps_latest_label_by_normalised_text() {
        let files = vec![
            LabelledFile {
                name: "1".into(),
                rows: vec![
                    row("Great  phone", Label::Positive, "2026-01-01T00:00:00Z"),
                    row("meh", Label::Neutral, "2026-01-01T00:00:00Z"),
                ],
            },
            LabelledFile {
                name: "2".into(),
                rows: vec![row(
                    " great phone ",
                    Label::Negative,
                    "2026-01-02T00:00:00Z",
                )],
            },
        ];
        let d = deduplicate(&files);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].text, "meh");
        assert_eq!(d[1].label, Label::Negative);
    }
}
