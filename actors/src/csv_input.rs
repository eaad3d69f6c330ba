//! Reading an inbox CSV for scoring: the data crate's row-accounting reader
//! (`sentimentd_data::read_batch_bytes`: line numbers, per-row rejection, broken-quote
//! recovery), plus the inbox's own file-size limit and the split between a file that is
//! rejected whole and one that cannot be read at all.

use std::path::Path;

use sentimentd_data::{CsvBatch, DataError, ReadOptions, RejectedRow};

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
pub enum ReadError {
    #[error(transparent)]
    Rejected(#[from] FileRejection),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub fn read_input(
    path: &Path,
    max_text_chars: usize,
    max_bytes: u64,
) -> Result<CsvBatch, ReadError> {
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
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_input(&bytes, &name, max_text_chars)
}

pub fn parse_input(bytes: &[u8], name: &str, max_text_chars: usize) -> Result<CsvBatch, ReadError> {
    let opts = ReadOptions {
        max_text_chars,
        require_label: false,
    };
    sentimentd_data::read_batch_bytes(bytes, name, &opts).map_err(|e| match e {
        DataError::Io { path, source } => ReadError::Io {
            path: path.display().to_string(),
            source,
        },
        other => FileRejection::Invalid(other.to_string()).into(),
    })
}

/// A row that parsed but could not be scored (the model refused its text).
pub fn unscored(line: u64, reason: String, fields: &[String]) -> RejectedRow {
    RejectedRow {
        line,
        reason: sentimentd_data::RejectReason::Unscorable(reason),
        raw: fields.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentimentd_data::Label;

    #[test]
    fn good_and_bad_rows_are_split_with_line_numbers() {
        let input = b"id,text,label\n1,good day,positive\n2,,neutral\n3,\"a,b\",2\n4,x,maybe\n5,too,many,fields\n6,\xff\xfe,0\n7,\"multi\nline\",\n";
        let batch = parse_input(input, "t.csv", 1000).map_err(|e| e.to_string());
        let Ok(batch) = batch else {
            panic!("{batch:?}", batch = batch.err());
        };
        let lines: Vec<u64> = batch.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 4, 8]);
        assert_eq!(batch.rows[1].fields[1], "a,b");
        assert_eq!(batch.rows[1].label, Some(Label::Positive));
        assert_eq!(batch.rows[2].label, None);
        let rejected: Vec<u64> = batch.rejected.iter().map(|r| r.line).collect();
        assert_eq!(rejected, vec![3, 5, 6, 7]);
    }

    #[test]
    fn file_without_text_column_is_rejected_whole() {
        let r = parse_input(b"id,body\n1,hello\n", "t.csv", 1000);
        let Err(ReadError::Rejected(FileRejection::Invalid(why))) = r else {
            panic!("should be rejected");
        };
        assert!(
            why.contains("no `text` column") && why.contains("id, body"),
            "{why}"
        );
        assert!(matches!(
            parse_input(b"", "t.csv", 1000),
            Err(ReadError::Rejected(FileRejection::Invalid(_)))
        ));
    }
}
