//! Labelled datasets for training and evaluation, and their statistics.

use crate::batch::{ReadOptions, RejectedRow, read_batch};
use crate::error::DataError;
use crate::label::Label;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Texts with their labels, from one or more CSV files, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub texts: Vec<String>,
    pub labels: Vec<Label>,
    /// Files the rows came from, in load order.
    pub sources: Vec<PathBuf>,
    /// Rows left out, with their file; loading goes on without them.
    pub rejected: Vec<(PathBuf, RejectedRow)>,
    /// SHA-256 (hex) of the accepted content, see [`fingerprint`].
    pub fingerprint: String,
}

/// Loads labelled CSV files (`text` and `label` columns required). Rejected rows are logged
/// (one line per file) and kept in `rejected`; a file with no usable row is an error, since
/// training on it silently would hide a broken input.
pub fn load_dataset(paths: &[PathBuf], max_text_chars: usize) -> Result<Dataset, DataError> {
    if paths.is_empty() {
        return Err(DataError::NoInput);
    }
    let opts = ReadOptions {
        max_text_chars,
        require_label: true,
    };
    let mut ds = Dataset::default();
    for path in paths {
        let batch = read_batch(path, &opts)?;
        if batch.rows.is_empty() {
            return Err(DataError::NoValidRows {
                name: path.display().to_string(),
                rejected: batch.rejected.len(),
                first_reason: batch
                    .rejected
                    .first()
                    .map(|r| format!("line {}: {}", r.line, r.reason)),
            });
        }
        if let Some(first) = batch.rejected.first() {
            tracing::warn!(
                file = %path.display(),
                rejected = batch.rejected.len(),
                accepted = batch.rows.len(),
                first_line = first.line,
                first_reason = %first.reason,
                "rows rejected while loading dataset"
            );
        }
        ds.texts.reserve(batch.rows.len());
        ds.labels.reserve(batch.rows.len());
        for row in batch.rows {
            // `require_label` guarantees a label on every accepted row.
            let Some(label) = row.label else { continue };
            ds.labels.push(label);
            let mut fields = row.fields;
            ds.texts.push(std::mem::take(&mut fields[batch.text_col]));
        }
        ds.rejected
            .extend(batch.rejected.into_iter().map(|r| (path.clone(), r)));
        ds.sources.push(path.clone());
    }
    ds.fingerprint = fingerprint(&ds.texts, &ds.labels);
    Ok(ds)
}

/// SHA-256 over (label id, text length, text bytes) of every example, in order. It depends
/// only on the content, not on file names, label spelling (`positive` and `2` are the same)
/// or CSV quoting, so a model manifest can say exactly which data trained it.
pub fn fingerprint(texts: &[String], labels: &[Label]) -> String {
    let mut h = Sha256::new();
    for (text, label) in texts.iter().zip(labels) {
        h.update([label.index() as u8]);
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Count and share of each label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelDistribution {
    /// In `Label::ALL` order.
    pub counts: [usize; 3],
    pub total: usize,
}

impl LabelDistribution {
    pub fn from_labels(labels: &[Label]) -> Self {
        let mut counts = [0; 3];
        for l in labels {
            counts[l.index()] += 1;
        }
        LabelDistribution {
            counts,
            total: labels.len(),
        }
    }

    pub fn count(&self, label: Label) -> usize {
        self.counts[label.index()]
    }

    /// Shares in `Label::ALL` order; zeros for an empty set.
    pub fn shares(&self) -> [f64; 3] {
        let n = self.total.max(1) as f64;
        self.counts.map(|c| c as f64 / n)
    }
}

/// Text length statistics in characters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub p95: f64,
    pub min: u32,
    pub max: u32,
}

/// Length statistics over all texts and per label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextStats {
    pub all: LengthStats,
    /// In `Label::ALL` order; `None` for a label with no example.
    pub per_label: [Option<LengthStats>; 3],
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Builds a dataset from texts and labels already in memory (e.g. feedback rows).
    pub fn from_examples(texts: Vec<String>, labels: Vec<Label>) -> Self {
        let fingerprint = fingerprint(&texts, &labels);
        Dataset {
            texts,
            labels,
            fingerprint,
            ..Dataset::default()
        }
    }

    /// Appends another dataset (e.g. the base data plus newly labelled rows) and refreshes
    /// the fingerprint.
    pub fn extend(&mut self, other: Dataset) {
        self.texts.extend(other.texts);
        self.labels.extend(other.labels);
        self.sources.extend(other.sources);
        self.rejected.extend(other.rejected);
        self.fingerprint = fingerprint(&self.texts, &self.labels);
    }

    /// Columns `text` (str), `label` (str), `label_id` (u32, the model's class index) and
    /// `chars` (u32, text length in characters).
    pub fn to_frame(&self) -> Result<DataFrame, DataError> {
        let labels: Vec<&str> = self.labels.iter().map(|l| l.as_str()).collect();
        let ids: Vec<u32> = self.labels.iter().map(|l| l.index() as u32).collect();
        let df = DataFrame::new(
            self.len(),
            vec![
                Column::new("text".into(), &self.texts),
                Column::new("label".into(), labels),
                Column::new("label_id".into(), ids),
                Column::new("chars".into(), char_lengths(&self.texts)),
            ],
        )?;
        Ok(df)
    }

    pub fn label_distribution(&self) -> LabelDistribution {
        LabelDistribution::from_labels(&self.labels)
    }

    /// Mean, median, 95th percentile, min and max length, overall and per label.
    pub fn text_stats(&self) -> Result<TextStats, DataError> {
        let df = self.to_frame()?;
        let chars = df.column("chars")?.as_materialized_series().clone();
        let ids = df.column("label_id")?.u32()?.clone();
        let all = length_stats(&chars)?;
        let mut per_label = [None, None, None];
        for label in Label::ALL {
            let mask = ids.equal(label.index() as u32);
            let subset = chars.filter(&mask)?;
            if !subset.is_empty() {
                per_label[label.index()] = Some(length_stats(&subset)?);
            }
        }
        Ok(TextStats { all, per_label })
    }
}

/// Lengths in characters, as polars wants them.
pub fn char_lengths(texts: &[String]) -> Vec<u32> {
    texts
        .iter()
        .map(|t| u32::try_from(t.chars().count()).unwrap_or(u32::MAX))
        .collect()
}

/// Statistics of a `u32` length series (zeros for an empty one).
pub fn length_stats(chars: &Series) -> Result<LengthStats, DataError> {
    let quantile = |q: f64| -> Result<f64, DataError> {
        let scalar = chars.quantile_reduce(q, QuantileMethod::Linear)?;
        Ok(scalar.value().extract::<f64>().unwrap_or(0.0))
    };
    let ca = chars.u32()?;
    Ok(LengthStats {
        count: chars.len(),
        mean: chars.mean().unwrap_or(0.0),
        median: chars.median().unwrap_or(0.0),
        p95: quantile(0.95)?,
        min: ca.min().unwrap_or(0),
        max: ca.max().unwrap_or(0),
    })
}
