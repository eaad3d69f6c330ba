//! The bodies of MLflow's REST API 2.0 that this client reads, as types: an answer that
//! lacks a field the client needs is a protocol error naming the endpoint, not a silent
//! default. Protobuf's JSON mapping writes int64 fields as strings and ids as either, so
//! those accept both.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The parts of an MLflow run this crate needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MlflowRun {
    pub run_id: String,
    pub experiment_id: String,
    pub artifact_uri: String,
    pub status: String,
}

/// A model registry version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlflowModelVersion {
    pub name: String,
    pub version: String,
    pub source: String,
    pub run_id: String,
    pub tags: BTreeMap<String, String>,
}

/// One metric value as MLflow stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct MlflowMetric {
    pub key: String,
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// A string, or a number written as one (ids, versions).
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

/// An int64: a number, or a string holding one; absent or unreadable is 0.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0))
}

/// A double: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn double<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN))
}

#[derive(Deserialize)]
pub(crate) struct ExperimentAnswer {
    pub experiment: Experiment,
}

#[derive(Deserialize)]
pub(crate) struct Experiment {
    #[serde(deserialize_with = "id")]
    pub experiment_id: String,
}

#[derive(Deserialize)]
pub(crate) struct CreatedExperiment {
    #[serde(deserialize_with = "id")]
    pub experiment_id: String,
}

#[derive(Deserialize)]
pub(crate) struct RunAnswer {
    pub run: Run,
}

#[derive(Deserialize)]
pub(crate) struct Run {
    pub info: RunInfo,
}

#[derive(Deserialize)]
pub(crate) struct RunInfo {
    #[serde(default)]
    run_id: Option<String>,
    /// The older name of `run_id`, which servers still send beside it.
    #[serde(default)]
    run_uuid: Option<String>,
    #[serde(deserialize_with = "id")]
    experiment_id: String,
    #[serde(default)]
    artifact_uri: String,
    #[serde(default)]
    status: Option<String>,
}

impl Run {
    /// The run, or `None` when the server named no run id.
    pub fn into_run(self) -> Option<MlflowRun> {
        let i = self.info;
        Some(MlflowRun {
            run_id: i.run_id.or(i.run_uuid)?,
            experiment_id: i.experiment_id,
            artifact_uri: i.artifact_uri,
            status: i.status.unwrap_or_else(|| "RUNNING".to_string()),
        })
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct SearchRunsAnswer {
    #[serde(default)]
    pub runs: Vec<Run>,
}

#[derive(Deserialize, Default)]
pub(crate) struct MetricHistoryAnswer {
    #[serde(default)]
    pub metrics: Vec<HistoryMetric>,
}

#[derive(Deserialize)]
pub(crate) struct HistoryMetric {
    #[serde(default)]
    key: Option<String>,
    #[serde(default = "nan", deserialize_with = "double")]
    value: f64,
    #[serde(default, deserialize_with = "int64")]
    timestamp: i64,
    #[serde(default, deserialize_with = "int64")]
    step: i64,
}

fn nan() -> f64 {
    f64::NAN
}

impl HistoryMetric {
    pub fn into_metric(self, asked: &str) -> MlflowMetric {
        MlflowMetric {
            key: self.key.unwrap_or_else(|| asked.to_string()),
            value: self.value,
            timestamp_ms: self.timestamp,
            step: self.step,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ModelVersionAnswer {
    pub model_version: ModelVersion,
}

#[derive(Deserialize, Default)]
pub(crate) struct SearchModelVersionsAnswer {
    #[serde(default)]
    pub model_versions: Vec<ModelVersion>,
}

#[derive(Deserialize)]
pub(crate) struct ModelVersion {
    name: String,
    #[serde(deserialize_with = "id")]
    version: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    run_id: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

/// A tag; one without a key is skipped, a missing or null value is empty.
#[derive(Deserialize)]
struct Tag {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

impl From<ModelVersion> for MlflowModelVersion {
    fn from(v: ModelVersion) -> MlflowModelVersion {
        MlflowModelVersion {
            name: v.name,
            version: v.version,
            source: v.source,
            run_id: v.run_id,
            tags: v
                .tags
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct RegisteredModelAnswer {
    #[serde(default)]
    pub registered_model: RegisteredModel,
}

#[derive(Deserialize, Default)]
pub(crate) struct RegisteredModel {
    #[serde(default)]
    pub aliases: Vec<Alias>,
}

#[derive(Deserialize)]
pub(crate) struct Alias {
    pub alias: String,
    #[serde(deserialize_with = "id")]
    pub version: String,
}

/// An answer whose content this client does not read (any JSON).
pub(crate) type Ignored = serde::de::IgnoredAny;

#[derive(Deserialize, Default)]
pub(crate) struct ArtifactsAnswer {
    #[serde(default)]
    pub files: Vec<ArtifactFile>,
}

/// A listed artifact; one without a path is skipped.
#[derive(Deserialize)]
pub(crate) struct ArtifactFile {
    #[serde(default)]
    pub path: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A key and a value, as params and tags are sent.
#[derive(serde::Serialize)]
pub(crate) struct KeyValue {
    pub key: String,
    pub value: String,
}

/// A metric as `runs/log-batch` takes it (`value` in protobuf's JSON: non-finite as names).
#[derive(serde::Serialize)]
pub(crate) struct MetricBody {
    pub key: String,
    pub value: serde_json::Value,
    pub timestamp: i64,
    pub step: i64,
}

#[derive(serde::Serialize)]
pub(crate) struct Named<'a> {
    pub name: &'a str,
}

#[derive(serde::Serialize)]
pub(crate) struct CreateRun<'a> {
    pub experiment_id: &'a str,
    pub run_name: &'a str,
    pub start_time: i64,
    pub tags: Vec<KeyValue>,
}

#[derive(serde::Serialize)]
pub(crate) struct SearchRuns<'a> {
    pub experiment_ids: [&'a str; 1],
    pub filter: String,
    pub max_results: u32,
    pub order_by: [&'a str; 1],
}

#[derive(serde::Serialize)]
pub(crate) struct LogBatch<'a> {
    pub run_id: &'a str,
    pub params: &'a [KeyValue],
    pub tags: &'a [KeyValue],
    pub metrics: &'a [MetricBody],
}

#[derive(serde::Serialize)]
pub(crate) struct UpdateRun<'a> {
    pub run_id: &'a str,
    pub status: &'a str,
    pub end_time: i64,
}

#[derive(serde::Serialize)]
pub(crate) struct CreateModelVersion<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub run_id: &'a str,
    pub tags: Vec<KeyValue>,
}

#[derive(serde::Serialize)]
pub(crate) struct SetAlias<'a> {
    pub name: &'a str,
    pub alias: &'a str,
    pub version: &'a str,
}
