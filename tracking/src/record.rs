//! What one training run, evaluation or drift check leaves behind.

use crate::*;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Training,
    Evaluation,
    DriftCheck,
    Promotion,
    RetrainSkipped,
}

impl RunKind {
    pub const ALL: [RunKind; 5] = [
        RunKind::Training,
        RunKind::Evaluation,
        RunKind::DriftCheck,
        RunKind::Promotion,
        RunKind::RetrainSkipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Training => "training",
            RunKind::Evaluation => "evaluation",
            RunKind::DriftCheck => "drift_check",
            RunKind::Promotion => "promotion",
            RunKind::RetrainSkipped => "retrain_skipped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Finished,
    Failed,
}

impl RunStatus {
    /// MLflow's `RunStatus` enum name.
    pub fn mlflow_name(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
        }
    }
}

/// One value of a metric's history (an epoch's validation loss, say).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricStep {
    pub key: String,
    pub step: i64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub value: f64,
}

/// One training run, evaluation, drift check, promotion decision or skipped retrain.
///
/// `metrics` are final values (logged at step 0); `metric_steps` are histories. Give the two
/// different keys (`val_macro_recall` vs `epoch_val_macro_recall`) so a chart of one is not
/// polluted by the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub kind: RunKind,
    pub name: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub ended_at: String,
    pub status: RunStatus,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    // serde_json writes NaN as null; reading null back must not make the line unreadable.
    #[serde(default, deserialize_with = "map_f64_or_nan")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub metric_steps: Vec<MetricStep>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Files to keep with the run. In the log they point at the copies under
    /// `<runs>/artifacts/<run_id>/`.
    #[serde(default)]
    pub artifacts: Vec<PathBuf>,
    #[serde(default)]
    pub error: Option<String>,
}

pub(crate) fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub(crate) fn map_f64_or_nan<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// 32 lower-case hex digits, unique across processes and restarts: the clock, the pid, a
/// counter and std's per-process random hash keys. No RNG crate needed for an identifier.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(count);
        h.write_usize(i);
        *half = h.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

impl RunRecord {
    /// A record that starts now; end it with [`RunRecord::finish`], [`RunRecord::fail`] or
    /// [`RunRecord::failed`].
    pub fn new(kind: RunKind, name: impl Into<String>) -> RunRecord {
        let now = now_rfc3339();
        RunRecord {
            run_id: new_run_id(),
            kind,
            name: name.into(),
            started_at: now.clone(),
            ended_at: now,
            status: RunStatus::Finished,
            params: BTreeMap::new(),
            metrics: BTreeMap::new(),
            metric_steps: Vec::new(),
            tags: BTreeMap::new(),
            artifacts: Vec::new(),
            error: None,
        }
    }

    /// Same as [`RunRecord::new`]; reads better where the run is about to begin.
    pub fn start(kind: RunKind, name: impl Into<String>) -> RunRecord {
        RunRecord::new(kind, name)
    }

    pub fn param(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        self.params.insert(key.into(), value.to_string());
        self
    }

    pub fn metric(&mut self, key: impl Into<String>, value: f64) -> &mut Self {
        self.metrics.insert(key.into(), value);
        self
    }

    pub fn metric_step(&mut self, key: impl Into<String>, step: i64, value: f64) -> &mut Self {
        self.metric_steps.push(MetricStep {
            key: key.into(),
            step,
            value,
        });
        self
    }

    pub fn tag(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    pub fn artifact(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.artifacts.push(path.into());
        self
    }

    pub fn finish(mut self) -> RunRecord {
        self.ended_at = now_rfc3339();
        self.status = RunStatus::Finished;
        self
    }

    pub fn fail(mut self, error: impl Into<String>) -> RunRecord {
        self.error = Some(error.into());
        self.failed()
    }

    /// Ends the run as failed, keeping whatever `error` the caller set.
    pub fn failed(mut self) -> RunRecord {
        self.ended_at = now_rfc3339();
        self.status = RunStatus::Failed;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TrackingError> {
        // The id names a directory, so it must not be able to climb out of the log.
        let ok = !self.run_id.is_empty()
            && self.run_id.len() <= 64
            && self
                .run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(TrackingError::InvalidRecord(format!(
                "run_id {:?} must be 1-64 characters of [A-Za-z0-9_-]",
                self.run_id
            )))
        }
    }
}

pub(crate) fn rfc3339_to_millis(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
