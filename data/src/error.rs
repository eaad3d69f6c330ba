use std::path::PathBuf;

/// A problem with a whole file (or a write), as opposed to a single rejected row.
/// Messages start with the file name so they can go straight into a `.error.txt` report.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: file is empty (expected a CSV header with a `text` column)")]
    Empty { name: String },
    #[error("{name}: not a CSV file: {reason}")]
    NotCsv { name: String, reason: String },
    #[error("{name}: no `{column}` column (found: {})", found.join(", "))]
    MissingColumn {
        name: String,
        column: &'static str,
        found: Vec<String>,
    },
    #[error("{name}: more than one `{column}` column in the header")]
    DuplicateColumn { name: String, column: &'static str },
    #[error("{name}: no usable rows ({rejected} rejected{})", first_reason.as_ref().map(|r| format!("; first: {r}")).unwrap_or_default())]
    NoValidRows {
        name: String,
        rejected: usize,
        first_reason: Option<String>,
    },
    #[error("{name}: {reason}")]
    BadRow { name: String, reason: String },
    #[error("drift baseline: {reason}")]
    Baseline { reason: String },
    #[error("no dataset files given")]
    NoInput,
    #[error("{name}: {source}")]
    Csv {
        name: String,
        #[source]
        source: csv::Error,
    },
    #[error("data frame: {0}")]
    Polars(#[from] polars::error::PolarsError),
}
