//! CSV batches and datasets for sentimentd: reading with row-level accounting (every input
//! record is accepted or rejected with its line and reason), scored output and rejection
//! reports, labelled datasets with a content fingerprint, and their statistics (polars).
pub mod atomic;
mod batch;
mod dataset;
pub mod drift;
mod error;
mod label;
pub mod labelled;
pub mod reputation;
mod write;

#[cfg(unix)]
pub use atomic::{shareable_dir, shareable_file};
pub use batch::{
    BatchReader, CsvBatch, MAX_RAW_BYTES, MAX_RECORD_BYTES, ReadOptions, Record, RejectReason,
    RejectedRow, Row, StreamOptions, read_batch, read_batch_bytes,
};
pub use dataset::{
    Dataset, LabelDistribution, LengthStats, TextStats, char_lengths, fingerprint, length_stats,
    load_dataset,
};
pub use error::DataError;
pub use label::Label;
pub use write::{
    REJECTION_COLUMNS, RejectionWriter, SCORE_COLUMNS, ScoredWriter, Scores, neutralize_formula,
    recover_formula, scored_headers, write_atomic, write_rejections, write_rejections_to,
};

/// Re-exported so callers use the same polars version for `Dataset::to_frame`.
pub use polars;
