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
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Longest `raw` kept for a rejected record, so a swallowed file cannot blow up a report.
pub const MAX_RAW_BYTES: usize = 2048;

/// Longest column name a header may have. A longer one is data or garbage read as a header,
/// and every rejection naming that column would carry it.
pub const MAX_COLUMN_NAME_BYTES: usize = 1024;

/// Most columns a header may have; every row is held as that many fields.
pub const MAX_COLUMNS: usize = 4096;

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
    /// Name of the first column whose bytes are not UTF-8 (shared with the header, so a
    /// file of such rows does not copy the name once per row).
    InvalidUtf8 {
        column: Arc<str>,
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
    /// No record end within this many bytes (see [`StreamOptions::max_record_bytes`]).
    RecordTooLong {
        max_bytes: usize,
    },
    /// The row parsed but the model could not score it (the caller's reason).
    Unscorable(String),
    /// The row's time column could not be read, and the operator asked for strict times.
    BadTime {
        column: String,
        value: String,
    },
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
            RejectReason::RecordTooLong { .. } => "record_too_long",
            RejectReason::Unscorable(_) => "unscorable",
            RejectReason::BadTime { .. } => "bad_time",
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
            RejectReason::RecordTooLong { max_bytes } => write!(
                f,
                "record longer than {max_bytes} bytes (most likely a quote opened on this line \
                 never closes); reading went on from the next line"
            ),
            RejectReason::Unscorable(why) => write!(f, "not scored: {why}"),
            RejectReason::BadTime { column, value } => write!(
                f,
                "unreadable or future time in column `{column}`: {value:?} ([reputation] strict_time)"
            ),
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
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    BatchReader::new(file, &path.display().to_string(), *opts)?.into_batch()
}

/// Like [`read_batch`] over bytes already in memory; `name` is used in error messages.
pub fn read_batch_bytes(
    bytes: &[u8],
    name: &str,
    opts: &ReadOptions,
) -> Result<CsvBatch, DataError> {
    BatchReader::new(bytes, name, *opts)?.into_batch()
}

/// How a [`BatchReader`] reads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Read at most this many bytes (the size a claimed file had when it was claimed), so bytes
    /// a writer appends later are never mixed in.
    pub limit: Option<u64>,
    /// Bytes read from the input at a time.
    pub block_bytes: usize,
    /// A record is never buffered beyond this many bytes: a quote that opens and does not
    /// close would otherwise pull the rest of the file into memory. The record's first line
    /// is rejected and reading restarts on the line after it.
    pub max_record_bytes: usize,
}

/// Default [`StreamOptions::max_record_bytes`].
pub const MAX_RECORD_BYTES: usize = 8 << 20;

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            limit: None,
            block_bytes: 256 << 10,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }
}

/// Streaming form of [`read_batch`]: yields records in file order from any reader, holding
/// only a window of the input (the current record plus one read block), so memory does not
/// depend on the file's size.
pub struct BatchReader<R> {
    input: R,
    name: String,
    stream: StreamOptions,
    /// Bytes the limit still allows.
    remaining: u64,
    eof: bool,
    /// The window: input bytes from `keep` (end of the previous record) to what was read.
    buf: Vec<u8>,
    /// Offset in the input of `buf[0]`.
    buf_offset: u64,
    /// Next byte to give the parser.
    cursor: usize,
    /// Everything before this is done with and may be dropped.
    keep: usize,
    /// Line number of `buf[keep]`.
    keep_line: u64,
    core: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
    opts: ReadOptions,
    headers: Vec<String>,
    /// The header names again, shared by the rejections that name a column.
    names: Vec<Arc<str>>,
    text_col: usize,
    label_col: Option<usize>,
    finished: bool,
}

/// One record as the parser delimited it: `buf[start..end]` holds its raw bytes (terminator
/// included) and `fields`/`ends` its unescaped fields.
enum Raw {
    Record {
        start: usize,
        end: usize,
        line: u64,
        nfields: usize,
    },
    /// No end within `max_record_bytes`; the record begins at `start` on `line`.
    TooLong {
        start: usize,
        line: u64,
    },
    End,
}

impl<R: Read> BatchReader<R> {
    pub fn new(input: R, name: &str, opts: ReadOptions) -> Result<Self, DataError> {
        Self::with_stream(input, name, opts, StreamOptions::default())
    }

    pub fn with_stream(
        input: R,
        name: &str,
        opts: ReadOptions,
        stream: StreamOptions,
    ) -> Result<Self, DataError> {
        let mut r = BatchReader {
            input,
            name: name.to_string(),
            remaining: stream.limit.unwrap_or(u64::MAX),
            stream: StreamOptions {
                block_bytes: stream.block_bytes.max(1),
                max_record_bytes: stream.max_record_bytes.max(1),
                ..stream
            },
            eof: false,
            buf: Vec::new(),
            buf_offset: 0,
            cursor: 0,
            keep: 0,
            keep_line: 1,
            core: csv_core::Reader::new(),
            fields: vec![0; 4096],
            ends: vec![0; 16],
            opts,
            headers: Vec::new(),
            names: Vec::new(),
            text_col: 0,
            label_col: None,
            finished: false,
        };
        // Enough of the start to check what kind of file this is.
        while r.buf.len() < 8192 && !r.eof {
            r.refill()?;
        }
        // Spreadsheet exports often start with a UTF-8 byte order mark.
        if r.buf.starts_with(b"\xEF\xBB\xBF") {
            r.cursor = 3;
            r.keep = 3;
        }
        let head = &r.buf[r.keep..];
        if r.eof && head.iter().all(u8::is_ascii_whitespace) {
            return Err(DataError::Empty {
                name: name.to_string(),
            });
        }
        let not_csv = |reason: &str| DataError::NotCsv {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if head.iter().take(8192).any(|&b| b == 0) {
            return Err(not_csv("it contains NUL bytes (binary data?)"));
        }

        let nfields = match r.read_raw()? {
            Raw::Record { end, nfields, .. } => {
                r.advance_past(end);
                nfields
            }
            Raw::End => {
                return Err(DataError::Empty {
                    name: name.to_string(),
                });
            }
            Raw::TooLong { .. } => {
                return Err(not_csv("the header row has an unterminated quote"));
            }
        };
        if nfields > MAX_COLUMNS {
            return Err(not_csv(&format!(
                "the header row has {nfields} columns, over the limit of {MAX_COLUMNS}"
            )));
        }
        let mut headers = Vec::with_capacity(nfields);
        for i in 0..nfields {
            let bytes = r.field(i).len();
            if bytes > MAX_COLUMN_NAME_BYTES {
                return Err(not_csv(&format!(
                    "column {} of the header row is a name of {bytes} bytes, over the limit of \
                     {MAX_COLUMN_NAME_BYTES} (is the first line data rather than a header?)",
                    i + 1
                )));
            }
            let field = std::str::from_utf8(r.field(i))
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
        r.text_col = find("text")?.ok_or_else(|| missing("text"))?;
        r.label_col = find("label")?;
        if opts.require_label && r.label_col.is_none() {
            return Err(missing("label"));
        }
        r.names = headers.iter().map(|h| Arc::from(h.as_str())).collect();
        r.headers = headers;
        Ok(r)
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Reads every remaining record into a [`CsvBatch`] (the whole file in memory).
    pub fn into_batch(self) -> Result<CsvBatch, DataError> {
        let mut batch = CsvBatch {
            headers: self.headers.clone(),
            rows: Vec::new(),
            rejected: Vec::new(),
            text_col: self.text_col,
            label_col: self.label_col,
        };
        for record in self {
            match record? {
                Record::Row(r) => batch.rows.push(r),
                Record::Rejected(r) => batch.rejected.push(r),
            }
        }
        Ok(batch)
    }

    pub fn text_col(&self) -> usize {
        self.text_col
    }

    pub fn label_col(&self) -> Option<usize> {
        self.label_col
    }

    /// Input bytes fully handled so far (for progress reports).
    pub fn bytes_done(&self) -> u64 {
        self.buf_offset + self.keep as u64
    }

    /// Input bytes read so far; after the last record, the size of what was read.
    pub fn bytes_read(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.fields[start..self.ends[i]]
    }

    /// Drops what lies before `keep` and reads one more block.
    fn refill(&mut self) -> Result<(), DataError> {
        if self.keep > 0 {
            self.buf.drain(..self.keep);
            self.cursor -= self.keep;
            self.buf_offset += self.keep as u64;
            self.keep = 0;
        }
        let want = (self.stream.block_bytes as u64).min(self.remaining) as usize;
        if want == 0 {
            self.eof = true;
            return Ok(());
        }
        let old = self.buf.len();
        let n = self.read_more(want)?;
        if n == 0 {
            self.eof = true;
        } else {
            self.remaining -= n as u64;
            self.lone_crs_to_lf(old)?;
        }
        Ok(())
    }

    /// Appends what one read of at most `want` bytes gives to the window; 0 at the input's end.
    fn read_more(&mut self, want: usize) -> Result<usize, DataError> {
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let n = loop {
            match self.input.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.buf.truncate(old);
                    return Err(DataError::Io {
                        path: self.name.clone().into(),
                        source,
                    });
                }
            }
        };
        self.buf.truncate(old + n);
        Ok(n)
    }

    /// A lone CR ends a line as LF does ("CSV (Macintosh)", old Mac exports): each in
    /// `buf[from..]` becomes an LF, the same length, so offsets hold and line numbers and the
    /// skip past a broken record, which look for LF, see those lines too. A read never ends
    /// on a CR whose next byte is unknown: one byte more is read to tell.
    fn lone_crs_to_lf(&mut self, from: usize) -> Result<(), DataError> {
        while self.buf.last() == Some(&b'\r') && self.remaining > 0 {
            if self.read_more(1)? == 0 {
                break;
            }
            self.remaining -= 1;
        }
        let end = self.buf.len();
        for i in memchr::memchr_iter(b'\r', &self.buf[from..end])
            .map(|i| from + i)
            .collect::<Vec<_>>()
        {
            if self.buf.get(i + 1) != Some(&b'\n') {
                self.buf[i] = b'\n';
            }
        }
        Ok(())
    }

    /// The next record's extent, reading more input as the parser needs it.
    fn read_raw(&mut self) -> Result<Raw, DataError> {
        use csv_core::ReadRecordResult as R;
        let (mut outlen, mut endlen) = (0, 0);
        loop {
            if self.cursor == self.buf.len() && !self.eof {
                if self.cursor - self.keep >= self.stream.max_record_bytes {
                    let (start, line) = self.record_start(self.cursor);
                    return Ok(Raw::TooLong { start, line });
                }
                self.refill()?;
                continue;
            }
            let (res, nin, nout, nend) = self.core.read_record(
                &self.buf[self.cursor..],
                &mut self.fields[outlen..],
                &mut self.ends[endlen..],
            );
            self.cursor += nin;
            outlen += nout;
            endlen += nend;
            match res {
                R::InputEmpty => {}
                R::OutputFull => {
                    let n = self.fields.len().max(64);
                    self.fields.resize(n * 2, 0);
                }
                R::OutputEndsFull => {
                    let n = self.ends.len().max(8);
                    self.ends.resize(n * 2, 0);
                }
                R::Record => {
                    let (start, line) = self.record_start(self.cursor);
                    return Ok(Raw::Record {
                        start,
                        end: self.cursor,
                        line,
                        nfields: endlen,
                    });
                }
                R::End => return Ok(Raw::End),
            }
        }
    }

    /// Where the record that ends before `end` begins: blank lines and the `\n` of a `\r\n`
    /// lie between the previous record's end and its first byte.
    fn record_start(&self, end: usize) -> (usize, u64) {
        let mut start = self.keep;
        let mut line = self.keep_line;
        while start < end {
            match self.buf[start] {
                b'\n' => line += 1,
                b'\r' => {}
                _ => break,
            }
            start += 1;
        }
        (start, line)
    }

    /// The record ending at `end` is handled.
    fn advance_past(&mut self, end: usize) {
        let newlines = memchr::memchr_iter(b'\n', &self.buf[self.keep..end]).count() as u64;
        self.keep_line += newlines;
        self.keep = end;
    }

    /// Continue on the line after the first line of the record at `start`.
    /// A first line longer than the window is skipped to its end, reading on as needed.
    fn restart_after_first_line(&mut self, start: usize, line: u64) -> Result<(), DataError> {
        self.core.reset();
        let mut from = start;
        loop {
            if let Some(n) = memchr::memchr(b'\n', &self.buf[from..]) {
                self.cursor = from + n + 1;
                self.keep = self.cursor;
                self.keep_line = line + 1;
                return Ok(());
            }
            if self.eof {
                self.finished = true;
                return Ok(());
            }
            // Drop what was searched: it belongs to the rejected line.
            self.keep = self.buf.len();
            self.cursor = self.buf.len();
            self.refill()?;
            from = self.cursor;
        }
    }

    fn first_line(&self, start: usize) -> &[u8] {
        let rest = &self.buf[start..];
        let n = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        trim_terminator(&rest[..n])
    }

    fn next_record(&mut self) -> Result<Option<Record>, DataError> {
        if self.finished {
            return Ok(None);
        }
        match self.read_raw()? {
            Raw::End => {
                self.finished = true;
                Ok(None)
            }
            Raw::TooLong { start, line } => {
                let rejected = RejectedRow {
                    line,
                    reason: RejectReason::RecordTooLong {
                        max_bytes: self.stream.max_record_bytes,
                    },
                    raw: lossy_raw(self.first_line(start)),
                };
                self.restart_after_first_line(start, line)?;
                Ok(Some(Record::Rejected(rejected)))
            }
            Raw::Record {
                start,
                end,
                line,
                nfields,
            } => {
                let raw = trim_terminator(&self.buf[start..end]);
                let at_eof = self.eof && end == self.buf.len();
                if at_eof && ends_inside_quotes(raw) {
                    // The quote opened on this line swallowed the rest of the file.
                    let rejected = RejectedRow {
                        line,
                        reason: RejectReason::BrokenQuoting {
                            unterminated: true,
                            last_line: line,
                        },
                        raw: lossy_raw(self.first_line(start)),
                    };
                    self.restart_after_first_line(start, line)?;
                    return Ok(Some(Record::Rejected(rejected)));
                }
                let record = self.classify(line, start, end, nfields);
                self.advance_past(end);
                Ok(Some(record))
            }
        }
    }

    fn classify(&self, line: u64, start: usize, end: usize, nfields: usize) -> Record {
        let raw = trim_terminator(&self.buf[start..end]);
        let reject = |reason| {
            Record::Rejected(RejectedRow {
                line,
                reason,
                raw: lossy_raw(raw),
            })
        };
        let expected = self.headers.len();
        if nfields != expected {
            let newlines = memchr::memchr_iter(b'\n', raw).count() as u64;
            return reject(if newlines > 0 {
                RejectReason::BrokenQuoting {
                    unterminated: false,
                    last_line: line + newlines,
                }
            } else {
                RejectReason::WrongFieldCount {
                    expected,
                    found: nfields,
                }
            });
        }
        let mut fields = Vec::with_capacity(expected);
        for i in 0..nfields {
            match std::str::from_utf8(self.field(i)) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => {
                    return reject(RejectReason::InvalidUtf8 {
                        column: self.names[i].clone(),
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

impl<R: Read> Iterator for BatchReader<R> {
    /// A record, or an error reading the input (the file as a whole then cannot be finished).
    type Item = Result<Record, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
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
