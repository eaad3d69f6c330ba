//! Reading an inbox CSV for scoring: row-level rejection with line numbers, file-level
//! rejection when the file has no header or no `text` column.
//!
//! This streams with the `csv` crate instead of going through a data frame, because the
//! batch path needs every row's original fields back verbatim (the output repeats them) and
//! its own line number, and because it is on the 100,000 rows/s path.

use sentimentd_data::Label;
use std::path::Path;

pub struct InputRow {
    pub line: u64,
    pub fields: Vec<String>,
    pub label: Option<Label>,
}

pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
    pub raw: String,
}

pub struct InputBatch {
    pub headers: Vec<String>,
    pub text_col: usize,
    pub label_col: Option<usize>,
    pub rows: Vec<InputRow>,
    pub rejected: Vec<RejectedRow>,
}

/// The file as a whole cannot be processed; it goes to `rejected/` with this reason.
#[derive(Debug, thiserror::Error)]
pub enum FileRejection {
    #[error("the file is empty (no header row)")]
    Empty,
    #[error("the header row is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("no `text` column (columns: {0})")]
    NoTextColumn(String),
    #[error("not a readable CSV file: {0}")]
    NotCsv(String),
    #[error("the file is {size} bytes, over the limit of {limit} bytes (ingest.max_file_bytes)")]
    TooBig { size: u64, limit: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Rejected(#[from] FileRejection),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn raw_of(record: &csv::ByteRecord) -> String {
    let parts: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    parts.join(",")
}

pub fn read_input(
    path: &Path,
    max_text_chars: usize,
    max_bytes: u64,
) -> Result<InputBatch, ReadError> {
    let io = |source| ReadError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > max_bytes {
        return Err(FileRejection::TooBig {
            size,
            limit: max_bytes,
        }
        .into());
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_input(&bytes, max_text_chars)
}

pub fn parse_input(bytes: &[u8], max_text_chars: usize) -> Result<InputBatch, ReadError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = reader.byte_records();
    let header = match records.next() {
        None => return Err(FileRejection::Empty.into()),
        Some(Err(e)) => return Err(FileRejection::NotCsv(e.to_string()).into()),
        Some(Ok(h)) => h,
    };
    let mut headers = Vec::with_capacity(header.len());
    for f in header.iter() {
        let name = std::str::from_utf8(f).map_err(|_| FileRejection::HeaderNotUtf8)?;
        headers.push(name.trim().to_string());
    }
    let find = |want: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(want));
    let Some(text_col) = find("text") else {
        return Err(FileRejection::NoTextColumn(headers.join(", ")).into());
    };
    let label_col = find("label");

    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                rejected.push(RejectedRow {
                    line,
                    reason: format!("unreadable CSV record: {e}"),
                    raw: String::new(),
                });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
            // A blank line carries no row; not worth a rejection.
            continue;
        }
        let reject = |reason: String| RejectedRow {
            line,
            reason,
            raw: raw_of(&record),
        };
        if record.len() != headers.len() {
            rejected.push(reject(format!(
                "expected {} fields, found {} (broken quoting?)",
                headers.len(),
                record.len()
            )));
            continue;
        }
        let mut fields = Vec::with_capacity(record.len());
        let mut bad_utf8 = None;
        for (i, f) in record.iter().enumerate() {
            match std::str::from_utf8(f) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => {
                    bad_utf8 = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = bad_utf8 {
            rejected.push(reject(format!(
                "invalid UTF-8 in column `{}`",
                headers.get(i).map(String::as_str).unwrap_or("?")
            )));
            continue;
        }
        let text = &fields[text_col];
        if text.trim().is_empty() {
            rejected.push(reject("empty text".to_string()));
            continue;
        }
        if text.len() > max_text_chars {
            let chars = text.chars().count();
            if chars > max_text_chars {
                rejected.push(reject(format!(
                    "text is too long: {chars} characters (at most {max_text_chars})"
                )));
                continue;
            }
        }
        let label = match label_col.map(|c| fields[c].trim()) {
            None | Some("") => None,
            Some(l) => match Label::parse(l) {
                Some(label) => Some(label),
                None => {
                    rejected.push(reject(format!(
                        "unknown label {l:?} (expected negative, neutral, positive or 0, 1, 2)"
                    )));
                    continue;
                }
            },
        };
        rows.push(InputRow {
            line,
            fields,
            label,
        });
    }
    Ok(InputBatch {
        headers,
        text_col,
        label_col,
        rows,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_rows_are_split_with_line_numbers() {
        let input = b"id,text,label\n1,good day,positive\n2,,neutral\n3,\"a,b\",2\n4,x,maybe\n5,too,many,fields\n6,\xff\xfe,0\n7,\"multi\nline\",\n";
        let batch = parse_input(input, 1000).map_err(|e| e.to_string());
        let Ok(batch) = batch else {
            panic!("{batch:?}", batch = batch.err());
        };
        let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 4, 8]);
        assert_eq!(batch.rows[1].fields[1], "a,b");
        assert_eq!(batch.rows[1].label, Some(Label::Positive));
        assert_eq!(batch.rows[2].label, None);
        let rejected: Vec<(u64, &str)> = batch
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(rejected.len(), 4);
        assert_eq!(rejected[0], (3, "empty text"));
        assert_eq!(rejected[1].0, 5);
        assert!(rejected[1].1.starts_with("unknown label"));
        assert_eq!(rejected[2].0, 6);
        assert!(rejected[2].1.starts_with("expected 3 fields, found 4"));
        assert_eq!(rejected[3], (7, "invalid UTF-8 in column `text`"));
    }

    #[test]
    fn file_without_text_column_is_rejected_whole() {
        let r = parse_input(b"id,body\n1,hello\n", 1000);
        assert!(matches!(
            r,
            Err(ReadError::Rejected(FileRejection::NoTextColumn(ref cols))) if cols == "id, body"
        ));
        assert!(matches!(
            parse_input(b"", 1000),
            Err(ReadError::Rejected(FileRejection::Empty))
        ));
    }

    #[test]
    fn over_long_text_is_rejected() {
        let r = parse_input("text\nabcdef\nabc\n".as_bytes(), 3);
        let Ok(batch) = r else { panic!("should parse") };
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rejected[0].line, 2);
        assert!(batch.rejected[0].reason.contains("too long"));
    }
}
