//! Output CSVs: scored batches and rejection reports, streamed through the `csv` writer.

use crate::batch::RejectedRow;
use crate::error::DataError;
use crate::label::Label;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// Columns appended to every scored output, in this order.
pub const SCORE_COLUMNS: [&str; 6] = [
    "label",
    "score",
    "p_negative",
    "p_neutral",
    "p_positive",
    "model_version",
];

/// What the model said about one row; mirrors the model crate's `Prediction` without
/// depending on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub label: Label,
    /// Probability of `label`.
    pub score: f32,
    /// Negative, neutral, positive.
    pub probabilities: [f32; 3],
}

/// Header of a scored output for an input with `headers`.
///
/// The appended columns always carry exactly the names in [`SCORE_COLUMNS`], because that is
/// what clients read. An input column with one of those names (typically a ground-truth
/// `label`) keeps its values and position but is renamed `input_<name>`, so no output has
/// two columns of the same name.
pub fn scored_headers(headers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = headers
        .iter()
        .map(|h| {
            let clashes = SCORE_COLUMNS
                .iter()
                .any(|c| h.trim().eq_ignore_ascii_case(c));
            if clashes {
                format!("input_{}", h.trim())
            } else {
                h.clone()
            }
        })
        .collect();
    out.extend(SCORE_COLUMNS.iter().map(|c| c.to_string()));
    out
}

/// Characters that make a spreadsheet treat a cell as a formula (OWASP, "CSV Injection").
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A field as it is safe to open in a spreadsheet: one that starts with a formula character
/// gets a leading `'`, except a plain number such as `-5` (no spreadsheet runs it). To keep
/// this reversible, a field that already starts with `'` followed by a formula character or
/// another `'` gets one too; [`recover_formula`] undoes it exactly.
pub fn neutralize_formula(field: &str) -> std::borrow::Cow<'_, str> {
    let mut chars = field.chars();
    let needs = match chars.next() {
        Some('\'') => chars
            .next()
            .is_some_and(|c| c == '\'' || FORMULA_START.contains(&c)),
        Some(c) if FORMULA_START.contains(&c) => field.parse::<f64>().is_err(),
        _ => false,
    };
    if needs {
        std::borrow::Cow::Owned(format!("'{field}"))
    } else {
        std::borrow::Cow::Borrowed(field)
    }
}

/// The original of a field written by [`neutralize_formula`].
pub fn recover_formula(field: &str) -> &str {
    match field.strip_prefix('\'') {
        Some(rest)
            if rest
                .chars()
                .next()
                .is_some_and(|c| c == '\'' || FORMULA_START.contains(&c)) =>
        {
            rest
        }
        _ => field,
    }
}

/// Writes a scored CSV: the input's fields followed by the score columns.
pub struct ScoredWriter<W: Write> {
    writer: csv::Writer<W>,
    width: usize,
    number: String,
    neutralize: bool,
}

impl<W: Write> ScoredWriter<W> {
    /// Writes the header at once.
    pub fn new(out: W, input_headers: &[String]) -> Result<Self, DataError> {
        Self::with_neutralize(out, input_headers, false)
    }

    /// Like [`ScoredWriter::new`]; with `neutralize`, the input's column names and fields go
    /// through [`neutralize_formula`].
    pub fn with_neutralize(
        out: W,
        input_headers: &[String],
        neutralize: bool,
    ) -> Result<Self, DataError> {
        let mut writer = csv::WriterBuilder::new().flexible(false).from_writer(out);
        let headers = scored_headers(input_headers);
        if neutralize {
            writer
                .write_record(headers.iter().map(|h| neutralize_formula(h).into_owned()))
                .map_err(csv_error)?;
        } else {
            writer.write_record(&headers).map_err(csv_error)?;
        }
        Ok(ScoredWriter {
            writer,
            width: input_headers.len(),
            number: String::with_capacity(16),
            neutralize,
        })
    }

    /// `fields` are the row's original fields (as in `Row::fields`). A row with a different
    /// number of fields than the header is padded or cut so the output stays rectangular;
    /// `read_batch` never produces such rows.
    pub fn write_row<S: AsRef<str>>(
        &mut self,
        fields: &[S],
        scores: &Scores,
        model_version: &str,
    ) -> Result<(), DataError> {
        self.write_row_with(fields, None, scores, model_version)
    }

    /// Like [`ScoredWriter::write_row`] with field `column` taken from `value` instead (a
    /// text that was moved out of the row to be scored).
    pub fn write_row_with<S: AsRef<str>>(
        &mut self,
        fields: &[S],
        replace: Option<(usize, &str)>,
        scores: &Scores,
        model_version: &str,
    ) -> Result<(), DataError> {
        for i in 0..self.width {
            let field = match replace {
                Some((col, value)) if col == i => value,
                _ => fields.get(i).map_or("", AsRef::as_ref),
            };
            if self.neutralize {
                self.writer
                    .write_field(neutralize_formula(field).as_ref())
                    .map_err(csv_error)?;
            } else {
                self.writer.write_field(field).map_err(csv_error)?;
            }
        }
        self.writer
            .write_field(scores.label.as_str())
            .map_err(csv_error)?;
        let values = [
            scores.score,
            scores.probabilities[0],
            scores.probabilities[1],
            scores.probabilities[2],
        ];
        for v in values {
            self.number.clear();
            // Shortest representation that reads back as the same f32.
            let _ = write!(self.number, "{v}");
            self.writer
                .write_field(self.number.as_bytes())
                .map_err(csv_error)?;
        }
        self.writer.write_field(model_version).map_err(csv_error)?;
        self.writer.write_record(None::<&[u8]>).map_err(csv_error)?;
        Ok(())
    }

    /// Flushes and returns the inner writer.
    pub fn finish(self) -> Result<W, DataError> {
        self.writer.into_inner().map_err(|e| DataError::Io {
            path: "<scored output>".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// Header of a rejection report.
pub const REJECTION_COLUMNS: [&str; 3] = ["line", "reason", "raw"];

/// Writes a rejection report (`line,reason,raw`) row by row.
pub struct RejectionWriter<W: Write> {
    writer: csv::Writer<W>,
    line: String,
    reason: String,
    neutralize: bool,
    rows: u64,
}

impl<W: Write> RejectionWriter<W> {
    /// Writes the header at once.
    pub fn new(out: W) -> Result<Self, DataError> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(REJECTION_COLUMNS).map_err(csv_error)?;
        Ok(RejectionWriter {
            writer,
            line: String::new(),
            reason: String::new(),
            neutralize: false,
            rows: 0,
        })
    }

    /// Passes `raw` through [`neutralize_formula`].
    pub fn neutralize_formulas(mut self, on: bool) -> Self {
        self.neutralize = on;
        self
    }

    pub fn write_row(&mut self, row: &RejectedRow) -> Result<(), DataError> {
        self.line.clear();
        self.reason.clear();
        let _ = write!(self.line, "{}", row.line);
        let _ = write!(self.reason, "{}", row.reason);
        let raw = if self.neutralize {
            neutralize_formula(&row.raw)
        } else {
            std::borrow::Cow::Borrowed(row.raw.as_str())
        };
        self.writer
            .write_record([self.line.as_str(), self.reason.as_str(), raw.as_ref()])
            .map_err(csv_error)?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(self) -> Result<W, DataError> {
        self.writer.into_inner().map_err(|e| DataError::Io {
            path: "<rejection report>".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// Writes a rejection report (`line,reason,raw`) to any writer.
pub fn write_rejections_to<W: Write>(out: W, rows: &[RejectedRow]) -> Result<W, DataError> {
    let mut writer = RejectionWriter::new(out)?;
    for row in rows {
        writer.write_row(row)?;
    }
    writer.finish()
}

/// Writes a rejection report to `path` atomically (see [`write_atomic`]).
pub fn write_rejections(path: &Path, rows: &[RejectedRow]) -> Result<(), DataError> {
    write_atomic(path, |w| write_rejections_to(w, rows).map(|_| ()))
}

/// Writes `path` so that it either does not exist or is complete, even across a crash
/// (through [`crate::atomic::AtomicFile`]).
pub fn write_atomic<T, F>(path: &Path, write: F) -> Result<T, DataError>
where
    F: FnOnce(&mut crate::atomic::AtomicFile) -> Result<T, DataError>,
{
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::atomic::AtomicFile::create(path).map_err(io)?;
    let value = write(&mut file)?;
    file.commit().map_err(io)?;
    Ok(value)
}

fn csv_error(e: csv::Error) -> DataError {
    DataError::Csv {
        name: "<output>".to_string(),
        source: e,
    }
}
