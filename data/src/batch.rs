//! Reading CSV batches with row-level accounting.
//!
//! Every record of the input ends up either in `rows` or in `rejected`, exactly once, with the
//! 1-based line of its first line in the file (the header is line 1). Blank lines are not
//! records (the CSV parser skips them), so they are in neither.
//!
//! Quoting problems, and what this reader does about them:
//! - A quote that is opened and never closed swallows the rest of the file into one field.
//!   This is recognised (the last record ends inside a quoted field): the line where the
//!   quote was opened is rejected as `BrokenQuoting { unterminated: true }`, and reading
//!   restarts on the next line, so the rows after it are still scored.
//! - A stray quote that is closed by another stray quote further down merges the lines in
//!   between into one record. When that record then has the wrong number of fields it is
//!   rejected as `BrokenQuoting { unterminated: false, last_line }` (one rejection covering
//!   those lines). When the field count happens to fit, the record is indistinguishable from
//!   a legitimate multi-line quoted text and is accepted; its text is still subject to
//!   `max_text_chars`, which catches the large cases.
//! - A quote in the middle of an unquoted field (`say "hi"`) is taken literally, as the
//!   `csv` crate and Python's `csv` module both do.

use crate::error::DataError;
use crate::label::Label;
use csv::ByteRecord;
use std::fmt;
use std::path::Path;

/// Longest `raw` kept for a rejected record, so a swallowed file cannot blow up a report.
pub const MAX_RAW_BYTES: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Texts with more characters than this are rejected.
    pub max_text_chars: usize,
    /// Training data: the `label` column is required and an empty label rejects the row.
    pub require_label: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_text_chars: 1000,
            require_label: false,
        }
    }
}

/// Why a record was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    EmptyText,
    TextTooLong {
        chars: usize,
        max: usize,
    },
    /// Name of the first column whose bytes are not UTF-8.
    InvalidUtf8 {
        column: String,
    },
    UnknownLabel {
        value: String,
    },
    MissingLabel,
    WrongFieldCount {
        expected: usize,
        found: usize,
    },
    /// `unterminated`: a quote opened on this line never closes (the following lines were read
    /// as rows of their own). Otherwise a quoted field runs on to `last_line` and the merged
    /// record has the wrong number of fields.
    BrokenQuoting {
        unterminated: bool,
        last_line: u64,
    },
    /// The row parsed but the model could not score it (the caller's reason).
    Unscorable(String),
}

impl RejectReason {
    /// Short stable identifier, suitable as a metric label value.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::EmptyText => "empty_text",
            RejectReason::TextTooLong { .. } => "text_too_long",
            RejectReason::InvalidUtf8 { .. } => "invalid_utf8",
            RejectReason::UnknownLabel { .. } => "unknown_label",
            RejectReason::MissingLabel => "missing_label",
            RejectReason::WrongFieldCount { .. } => "wrong_field_count",
            RejectReason::BrokenQuoting { .. } => "broken_quoting",
            RejectReason::Unscorable(_) => "unscorable",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::EmptyText => f.write_str("empty text"),
            RejectReason::TextTooLong { chars, max } => {
                write!(f, "text too long: {chars} characters, maximum {max}")
            }
            RejectReason::InvalidUtf8 { column } => write!(f, "invalid UTF-8 in column `{column}`"),
            RejectReason::UnknownLabel { value } => write!(
                f,
                "unknown label `{value}` (expected negative, neutral, positive or 0, 1, 2)"
            ),
            RejectReason::MissingLabel => f.write_str("missing label"),
            RejectReason::WrongFieldCount { expected, found } => {
                write!(
                    f,
                    "wrong number of fields: expected {expected}, found {found}"
                )
            }
            RejectReason::BrokenQuoting {
                unterminated: true, ..
            } => f.write_str(
                "broken quoting: a quoted field opened on this line is never closed \
                 (the lines after it were read as separate rows)",
            ),
            RejectReason::BrokenQuoting {
                unterminated: false,
                last_line,
            } => write!(
                f,
                "broken quoting: a quoted field runs from this line to line {last_line} \
                 and the record has the wrong number of fields"
            ),
            RejectReason::Unscorable(why) => write!(f, "not scored: {why}"),
        }
    }
}

/// An accepted record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line of the record's first line; the header is line 1.
    pub line: u64,
    /// All original fields, in header order, unmodified.
    pub fields: Vec<String>,
    /// Index of the text in `fields` (the batch's `text_col`).
    pub text_col: usize,
    pub label: Option<Label>,
}

impl Row {
    pub fn text(&self) -> &str {
        self.fields.get(self.text_col).map_or("", String::as_str)
    }
}

/// A record that was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRow {
    /// 1-based line of the record's first line; the header is line 1.
    pub line: u64,
    pub reason: RejectReason,
    /// The record as it appears in the file (line terminator removed), decoded lossily and cut
    /// to at most `MAX_RAW_BYTES`.
    pub raw: String,
}

/// One input record, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Row(Row),
    Rejected(RejectedRow),
}

/// A whole file, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvBatch {
    /// Header names as written in the file.
    pub headers: Vec<String>,
    pub rows: Vec<Row>,
    pub rejected: Vec<RejectedRow>,
    pub text_col: usize,
    pub label_col: Option<usize>,
}

impl CsvBatch {
    /// Number of input records (accepted plus rejected).
    pub fn records(&self) -> usize {
        self.rows.len() + self.rejected.len()
    }
}

/// Reads a CSV file. File-level problems (unreadable, empty, no header, no `text` column) are
/// errors; problems with single records are rejections.
pub fn read_batch(path: &Path, opts: &ReadOptions) -> Result<CsvBatch, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_batch_bytes(&bytes, &path.display().to_string(), opts)
}

/// Like [`read_batch`] over bytes already in memory; `name` is used in error messages.
pub fn read_batch_bytes(
    bytes: &[u8],
    name: &str,
    opts: &ReadOptions,
) -> Result<CsvBatch, DataError> {
    let reader = BatchReader::new(bytes, name, *opts)?;
    let mut batch = CsvBatch {
        headers: reader.headers().to_vec(),
        rows: Vec::new(),
        rejected: Vec::new(),
        text_col: reader.text_col(),
        label_col: reader.label_col(),
    };
    for record in reader {
        match record {
            Record::Row(r) => batch.rows.push(r),
            Record::Rejected(r) => batch.rejected.push(r),
        }
    }
    Ok(batch)
}

/// Streaming form of [`read_batch_bytes`]: yields records in file order, so a caller can score
/// a large file in chunks or skip records it already processed.
pub struct BatchReader<'a> {
    bytes: &'a [u8],
    opts: ReadOptions,
    headers: Vec<String>,
    text_col: usize,
    label_col: Option<usize>,
    rdr: csv::Reader<&'a [u8]>,
    /// Offset of `rdr`'s input within `bytes`; changes when reading restarts after an
    /// unterminated quote.
    base_offset: usize,
    /// Line number of `rdr`'s first line.
    base_line: u64,
    record: ByteRecord,
    finished: bool,
}

fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
}

impl<'a> BatchReader<'a> {
    pub fn new(bytes: &'a [u8], name: &str, opts: ReadOptions) -> Result<Self, DataError> {
        // Spreadsheet exports often start with a UTF-8 byte order mark.
        let base_offset = if bytes.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        let body = &bytes[base_offset..];
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DataError::Empty {
                name: name.to_string(),
            });
        }
        let not_csv = |reason: &str| DataError::NotCsv {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if body.iter().take(8192).any(|&b| b == 0) {
            return Err(not_csv("it contains NUL bytes (binary data?)"));
        }

        let mut rdr = csv_reader(body);
        let mut header = ByteRecord::new();
        match rdr.read_byte_record(&mut header) {
            Ok(true) => {}
            Ok(false) => {
                return Err(DataError::Empty {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(not_csv(&e.to_string())),
        }
        let mut headers = Vec::with_capacity(header.len());
        for field in header.iter() {
            let field = std::str::from_utf8(field)
                .map_err(|_| not_csv("the header row is not valid UTF-8"))?;
            if field.contains('\n') {
                return Err(not_csv(
                    "the header row has an unterminated quote or a line break in a column name",
                ));
            }
            headers.push(field.to_string());
        }

        let find = |column: &'static str| -> Result<Option<usize>, DataError> {
            let mut found = headers
                .iter()
                .enumerate()
                .filter(|(_, h)| h.trim().eq_ignore_ascii_case(column))
                .map(|(i, _)| i);
            let first = found.next();
            if found.next().is_some() {
                return Err(DataError::DuplicateColumn {
                    name: name.to_string(),
                    column,
                });
            }
            Ok(first)
        };
        let missing = |column: &'static str| DataError::MissingColumn {
            name: name.to_string(),
            column,
            found: headers.clone(),
        };
        let text_col = find("text")?.ok_or_else(|| missing("text"))?;
        let label_col = find("label")?;
        if opts.require_label && label_col.is_none() {
            return Err(missing("label"));
        }

        let header_pos = rdr.position().clone();
        // Continue from just after the header with a fresh reader so offsets are simple.
        let start = base_offset + header_pos.byte() as usize;
        Ok(BatchReader {
            bytes,
            opts,
            rdr: csv_reader(&bytes[start..]),
            base_offset: start,
            base_line: header_pos.line(),
            headers,
            text_col,
            label_col,
            record: ByteRecord::new(),
            finished: false,
        })
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    pub fn text_col(&self) -> usize {
        self.text_col
    }

    pub fn label_col(&self) -> Option<usize> {
        self.label_col
    }

    fn restart_at(&mut self, offset: usize, line: u64) {
        self.rdr = csv_reader(&self.bytes[offset..]);
        self.base_offset = offset;
        self.base_line = line;
    }

    fn classify(&self, line: u64, raw: &[u8]) -> Record {
        let rec = &self.record;
        let reject = |reason| {
            Record::Rejected(RejectedRow {
                line,
                reason,
                raw: lossy_raw(raw),
            })
        };
        let expected = self.headers.len();
        if rec.len() != expected {
            let newlines = raw.iter().filter(|&&b| b == b'\n').count() as u64;
            return reject(if newlines > 0 {
                RejectReason::BrokenQuoting {
                    unterminated: false,
                    last_line: line + newlines,
                }
            } else {
                RejectReason::WrongFieldCount {
                    expected,
                    found: rec.len(),
                }
            });
        }
        let mut fields = Vec::with_capacity(expected);
        for (i, field) in rec.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => {
                    return reject(RejectReason::InvalidUtf8 {
                        column: self.headers[i].clone(),
                    });
                }
            }
        }
        let text = &fields[self.text_col];
        if text.trim().is_empty() {
            return reject(RejectReason::EmptyText);
        }
        // Byte length bounds the char count, so most texts skip the count entirely.
        if text.len() > self.opts.max_text_chars {
            let chars = text.chars().count();
            if chars > self.opts.max_text_chars {
                return reject(RejectReason::TextTooLong {
                    chars,
                    max: self.opts.max_text_chars,
                });
            }
        }
        let label = match self.label_col.map(|i| fields[i].trim()) {
            None => None,
            Some("") if self.opts.require_label => return reject(RejectReason::MissingLabel),
            Some("") => None,
            Some(value) => match Label::parse(value) {
                Some(l) => Some(l),
                None => {
                    return reject(RejectReason::UnknownLabel {
                        value: value.to_string(),
                    });
                }
            },
        };
        Record::Row(Row {
            line,
            fields,
            text_col: self.text_col,
            label,
        })
    }
}

impl Iterator for BatchReader<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.finished {
            return None;
        }
        let read = self.rdr.read_byte_record(&mut self.record);
        let (rel_start, rel_line) = self
            .record
            .position()
            .map_or((0, 1), |p| (p.byte() as usize, p.line()));
        let mut start = self.base_offset + rel_start;
        let mut line = self.base_line + rel_line - 1;
        match read {
            Ok(true) => {}
            Ok(false) => {
                self.finished = true;
                return None;
            }
            Err(e) => {
                // Reading from memory with `flexible` cannot fail today; if it ever does, the
                // rest of the file is reported rather than silently dropped.
                self.finished = true;
                tracing::warn!(error = %e, line, "CSV reader failed; rest of file rejected");
                return Some(Record::Rejected(RejectedRow {
                    line,
                    reason: RejectReason::BrokenQuoting {
                        unterminated: true,
                        last_line: line,
                    },
                    raw: lossy_raw(&self.bytes[start.min(self.bytes.len())..]),
                }));
            }
        }
        // The position is taken right after the previous record's terminator; blank lines
        // and the `\n` of a `\r\n` still lie between it and this record's first byte.
        while let Some(&b) = self.bytes.get(start) {
            match b {
                b'\n' => line += 1,
                b'\r' => {}
                _ => break,
            }
            start += 1;
        }
        let end = (self.base_offset + self.rdr.position().byte() as usize).min(self.bytes.len());
        let start = start.min(end);
        let raw = trim_terminator(&self.bytes[start..end]);

        if end == self.bytes.len() && ends_inside_quotes(raw) {
            let first_line_len = raw.iter().position(|&b| b == b'\n');
            let first = &raw[..first_line_len.unwrap_or(raw.len())];
            let rejected = RejectedRow {
                line,
                reason: RejectReason::BrokenQuoting {
                    unterminated: true,
                    last_line: line,
                },
                raw: lossy_raw(trim_terminator(first)),
            };
            match first_line_len {
                Some(n) => self.restart_at(start + n + 1, line + 1),
                None => self.finished = true,
            }
            return Some(Record::Rejected(rejected));
        }
        Some(self.classify(line, raw))
    }
}

fn trim_terminator(mut raw: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = raw {
        raw = rest;
    }
    raw
}

fn lossy_raw(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&raw[..raw.len().min(MAX_RAW_BYTES)]).into_owned();
    if raw.len() > MAX_RAW_BYTES {
        s.push('…');
    }
    s
}

/// Whether a record, parsed with the `csv` crate's default RFC 4180 rules, ends inside a
/// quoted field: a quote opens only at the start of a field, `""` inside quotes is a literal
/// quote, and a lone quote closes.
fn ends_inside_quotes(raw: &[u8]) -> bool {
    let mut in_quotes = false;
    let mut at_field_start = true;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_quotes {
            if b == b'"' {
                if raw.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    in_quotes = false;
                }
            }
            at_field_start = false;
        } else if b == b'"' && at_field_start {
            in_quotes = true;
            at_field_start = false;
        } else {
            at_field_start = matches!(b, b',' | b'\n' | b'\r');
        }
        i += 1;
    }
    in_quotes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_state_machine() {
        assert!(!ends_inside_quotes(b"\"a\",b"));
        assert!(ends_inside_quotes(b"\"a,b"));
        assert!(!ends_inside_quotes(b"\"a\"\"b\",c"));
        assert!(ends_inside_quotes(b"\"a\"\",c"));
        assert!(!ends_inside_quotes(b"say \"hi,x"));
        assert!(ends_inside_quotes(b"x,\"multi\nline"));
        assert!(!ends_inside_quotes(b"x,\"multi\nline\""));
    }

    #[test]
    fn terminators_are_trimmed() {
        assert_eq!(trim_terminator(b"a,b\r\n"), b"a,b");
        assert_eq!(trim_terminator(b"a,b"), b"a,b");
    }
}
