//! `sentimentd publish --csv`: loads a CSV file into the cluster's input stream (a `label`
//! column goes along, for the labelled store). Each row's
//! id is the file's content fingerprint and the row's line, sent as `Nats-Msg-Id`, so loading
//! the same file again within the duplicate window publishes nothing new.

use sentimentd_config::ClusterConfig;
use sentimentd_data::{BatchReader, DataError, ReadOptions, Record, RejectedRow};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::setup::{self, SetupError};
use super::wire::Input;

/// Publishes awaiting their stored ack at most; the client bounds how many may be outstanding.
const WINDOW: usize = 512;

#[derive(Debug, Default)]
pub struct PublishReport {
    /// The first 16 hex digits of the file's SHA-256: the prefix of every id.
    pub fingerprint: String,
    /// Rows the input stream stored as new messages.
    pub published: u64,
    /// Rows the input stream already had (same id within its duplicate window).
    pub duplicates: u64,
    /// Rows not published, with the line and the reason.
    pub rejected: Vec<RejectedRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    /// Not a `source`: the message already says all of it.
    #[error("[cluster] {0}")]
    Setup(SetupError),
    #[error("{}:{line}: not stored by the input stream: {error}", path.display())]
    Publish {
        path: PathBuf,
        line: u64,
        error: String,
    },
}

/// Publishes every accepted row of `path`; `progress` is called with the bytes read so far.
pub async fn publish_csv(
    url: &str,
    cluster: &ClusterConfig,
    path: &Path,
    opts: ReadOptions,
    source: Option<&str>,
    mut progress: impl FnMut(u64),
) -> Result<PublishReport, PublishError> {
    let read_err = |source| PublishError::Read {
        path: path.to_path_buf(),
        source,
    };
    let fingerprint = fingerprint(path).map_err(read_err)?;
    let link = setup::connect(url, cluster)
        .await
        .map_err(PublishError::Setup)?;
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut reader = BatchReader::new(file, &path.display().to_string(), opts)?;
    let column = |name: &str| reader.headers().iter().position(|h| h == name);
    let (source_col, created_col) = (column("source"), column("created_at"));
    let mut report = PublishReport {
        fingerprint,
        ..Default::default()
    };
    let mut pending = VecDeque::with_capacity(WINDOW);
    let mut rows = 0u64;
    while let Some(record) = reader.next() {
        let row = match record? {
            Record::Row(row) => row,
            Record::Rejected(r) => {
                report.rejected.push(r);
                continue;
            }
        };
        let field = |col: Option<usize>| {
            col.and_then(|c| row.fields.get(c))
                .filter(|v| !v.trim().is_empty())
                .cloned()
        };
        let input = Input {
            id: format!("{}:{}", report.fingerprint, row.line),
            text: row.text().to_string(),
            source: source.map(str::to_string).or_else(|| field(source_col)),
            created_at: field(created_col),
            label: row.label.map(|l| l.as_str().into()),
            known: row.label,
        };
        let body = serde_json::to_vec(&input).map_err(|e| PublishError::Publish {
            path: path.to_path_buf(),
            line: row.line,
            error: e.to_string(),
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, input.id.as_str());
        let ack = link
            .js
            .publish_with_headers(cluster.input_subject.clone(), headers, body.into())
            .await
            .map_err(|e| PublishError::Publish {
                path: path.to_path_buf(),
                line: row.line,
                error: e.to_string(),
            })?;
        pending.push_back((row.line, ack));
        if pending.len() >= WINDOW {
            settle(&mut pending, WINDOW / 2, &mut report, path).await?;
        }
        rows += 1;
        if rows.is_multiple_of(4096) {
            progress(reader.bytes_done());
        }
    }
    settle(&mut pending, 0, &mut report, path).await?;
    progress(reader.bytes_done());
    Ok(report)
}

/// Awaits the oldest stored acks until `keep` remain.
async fn settle(
    pending: &mut VecDeque<(u64, async_nats::jetstream::context::PublishAckFuture)>,
    keep: usize,
    report: &mut PublishReport,
    path: &Path,
) -> Result<(), PublishError> {
    while pending.len() > keep {
        let Some((line, ack)) = pending.pop_front() else {
            break;
        };
        match ack.await {
            Ok(a) if a.duplicate => report.duplicates += 1,
            Ok(_) => report.published += 1,
            Err(e) => {
                return Err(PublishError::Publish {
                    path: path.to_path_buf(),
                    line,
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The first 16 hex digits of the SHA-256 of the file's bytes: the same content under any
/// name gets the same ids.
fn fingerprint(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize())[..16].to_string())
}
