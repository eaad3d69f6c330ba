//! Experiment tracking without actix: the run record, the local run log every record lands in
//! first, a blocking client for MLflow's REST API 2.0, and the retry queue that forwards
//! records to MLflow while it comes and goes.
//!
//! The local log is the record of truth (it is written before anything touches the network);
//! MLflow is a mirror that may lag. Forwarding is idempotent: every MLflow run carries the tag
//! `sentimentd.run_id`, so a record retried after a half-finished attempt finds and completes
//! its run instead of creating a second one.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File names inside the run log directory.
pub const RUNS_FILE: &str = "runs.jsonl";
pub const ARTIFACTS_DIR: &str = "artifacts";
pub const PENDING_FILE: &str = "mlflow-pending.jsonl";
/// Records MLflow refused or kept answering wrongly, with the last error: kept for an operator
/// to inspect or replay, out of the way of the records behind them.
pub const DEAD_LETTER_FILE: &str = "mlflow-dead-letter.jsonl";
const PENDING_LOCK_FILE: &str = "mlflow-pending.lock";

/// Tag on every MLflow run naming the local record it mirrors; the key of idempotent retries.
pub const RUN_ID_TAG: &str = "sentimentd.run_id";
pub const KIND_TAG: &str = "sentimentd.kind";
pub const ERROR_TAG: &str = "sentimentd.error";
/// Tag on a registered model version naming the model store version it is.
pub const VERSION_TAG: &str = "sentimentd.version";
/// The alias the serving version carries in the model registry.
pub const CHAMPION_ALIAS: &str = "champion";
/// Artifact folder of a run that holds a registered model version's files.
pub const MODEL_ARTIFACT_PATH: &str = "model";

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run record {run_id}: cannot encode as JSON: {source}")]
    Encode {
        run_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid run record: {0}")]
    InvalidRecord(String),
    /// The server could not be reached or did not answer in time.
    #[error("MLflow {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// The server answered with an error status.
    #[error("MLflow {endpoint}: HTTP {status} {error_code}: {message}")]
    Server {
        endpoint: String,
        status: u16,
        error_code: String,
        message: String,
    },
    /// The server answered 2xx with a body this client does not understand.
    #[error("MLflow {endpoint}: unexpected response: {message}")]
    Protocol { endpoint: String, message: String },
    /// The server is set up in a way this client cannot work with.
    #[error("MLflow: {0}")]
    Unsupported(String),
}

impl TrackingError {
    fn io(path: &Path, source: std::io::Error) -> TrackingError {
        TrackingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the server answered (an error status, or a 2xx body that is not its JSON):
    /// it is up, so repeating the same failure says something about the record.
    pub fn server_answered(&self) -> bool {
        matches!(
            self,
            TrackingError::Server { .. } | TrackingError::Protocol { .. }
        )
    }

    /// Whether trying the same request later may succeed. A 4xx means the request itself is
    /// wrong, so repeating it would block the queue forever.
    pub fn is_retryable(&self) -> bool {
        match self {
            TrackingError::Transport { .. } | TrackingError::Protocol { .. } => true,
            TrackingError::Server { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            TrackingError::Io { .. }
            | TrackingError::Encode { .. }
            | TrackingError::InvalidRecord(_)
            | TrackingError::Unsupported(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Run records

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

fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn map_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

fn now_rfc3339() -> String {
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

    fn validate(&self) -> Result<(), TrackingError> {
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

fn rfc3339_to_millis(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// Local run log

/// `<state_dir>/runs`: one JSON line per record in `runs.jsonl`, artifacts copied beside it.
#[derive(Clone, Debug)]
pub struct LocalRunLog {
    dir: PathBuf,
}

impl LocalRunLog {
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalRunLog, TrackingError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| TrackingError::io(&dir, e))?;
        Ok(LocalRunLog { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runs_file(&self) -> PathBuf {
        self.dir.join(RUNS_FILE)
    }

    pub fn artifacts_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR).join(run_id)
    }

    /// Appends `record` (artifacts copied first, so a line never names a missing copy).
    pub fn record(&self, record: &RunRecord) -> Result<(), TrackingError> {
        self.store(record).map(|_| ())
    }

    /// Like [`LocalRunLog::record`], returning the record as stored: its artifacts point at
    /// the copies, which outlive the caller's temporary files (what a later retry uploads).
    pub fn store(&self, record: &RunRecord) -> Result<RunRecord, TrackingError> {
        record.validate()?;
        let mut stored = record.clone();
        stored.artifacts = self.copy_artifacts(record)?;
        let mut line = serde_json::to_vec(&stored).map_err(|source| TrackingError::Encode {
            run_id: record.run_id.clone(),
            source,
        })?;
        line.push(b'\n');
        let path = self.runs_file();
        append_line(&path, line)?;
        Ok(stored)
    }

    fn copy_artifacts(&self, record: &RunRecord) -> Result<Vec<PathBuf>, TrackingError> {
        if record.artifacts.is_empty() {
            return Ok(Vec::new());
        }
        let dest_dir = self.artifacts_dir(&record.run_id);
        std::fs::create_dir_all(&dest_dir).map_err(|e| TrackingError::io(&dest_dir, e))?;
        let mut copied = Vec::with_capacity(record.artifacts.len());
        let mut names = HashSet::new();
        for src in &record.artifacts {
            // An artifact is an attachment; losing one must not lose the record itself.
            let is_file = std::fs::metadata(src).map(|m| m.is_file()).unwrap_or(false);
            if !is_file {
                tracing::warn!(
                    run_id = %record.run_id,
                    artifact = %src.display(),
                    "run artifact is missing or not a regular file; recording the run without it"
                );
                continue;
            }
            let base = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "artifact".to_string());
            let mut name = base.clone();
            let mut i = 1;
            while !names.insert(name.clone()) {
                name = format!("{i}-{base}");
                i += 1;
            }
            let dest = dest_dir.join(&name);
            if src.canonicalize().ok() != dest.canonicalize().ok() {
                std::fs::copy(src, &dest).map_err(|e| TrackingError::io(src, e))?;
                File::open(&dest)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| TrackingError::io(&dest, e))?;
            }
            copied.push(dest);
        }
        sync_dir(&dest_dir);
        Ok(copied)
    }

    /// Removes the artifact folders of all but the newest `keep` runs of each kind (a drift
    /// check every few minutes would otherwise fill the disk with reports). Records stay in
    /// `runs.jsonl`; runs still waiting to reach MLflow keep their artifacts, which the retry
    /// uploads. Returns how many folders were removed.
    pub fn prune_artifacts(&self, keep: usize) -> Result<usize, TrackingError> {
        let waiting = pending_run_ids(&self.dir.join(PENDING_FILE))?;
        let mut seen: HashMap<RunKind, usize> = HashMap::new();
        let mut removed = 0;
        for record in self.list()?.iter().rev() {
            if record.artifacts.is_empty() {
                continue;
            }
            let n = seen.entry(record.kind).or_default();
            *n += 1;
            if *n <= keep || waiting.contains(&record.run_id) {
                continue;
            }
            let dir = self.artifacts_dir(&record.run_id);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TrackingError::io(&dir, e)),
            }
        }
        if removed > 0 {
            tracing::debug!(removed, keep, dir = %self.dir.display(), "pruned old run artifacts");
        }
        Ok(removed)
    }

    /// Every record, oldest first. A line that does not parse (the torn tail of a crash, or one
    /// that a crash cut and a later append terminated) is skipped with a warning.
    pub fn list(&self) -> Result<Vec<RunRecord>, TrackingError> {
        read_jsonl(&self.runs_file())
    }

    /// The record with this id, if logged.
    pub fn get(&self, run_id: &str) -> Result<Option<RunRecord>, TrackingError> {
        Ok(self.list()?.into_iter().rev().find(|r| r.run_id == run_id))
    }
}

/// Appends one line with a single `write` (O_APPEND keeps concurrent whole lines apart) and
/// fsyncs. If the file does not end in a newline (a crash tore the last line), the torn line
/// is terminated first so it cannot swallow this one.
fn append_line(path: &Path, mut line: Vec<u8>) -> Result<(), TrackingError> {
    use std::os::unix::fs::FileExt;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| TrackingError::io(path, e))?;
    let len = f.metadata().map_err(|e| TrackingError::io(path, e))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1)
            .map_err(|e| TrackingError::io(path, e))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line).map_err(|e| TrackingError::io(path, e))?;
    f.sync_data().map_err(|e| TrackingError::io(path, e))?;
    if len == 0 {
        // A new file is only durable once its directory entry is.
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
    }
    Ok(())
}

/// Local run ids the MLflow queue at `path` still has to send.
fn pending_run_ids(path: &Path) -> Result<HashSet<String>, TrackingError> {
    let entries: Vec<PendingEntry> = read_jsonl(path)?;
    Ok(entries
        .into_iter()
        .map(|e| match e.op {
            MlflowOp::Run { record } => record.run_id,
            MlflowOp::Champion { run_id, .. } => run_id,
        })
        .collect())
}

fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrackingError> {
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut text)
                .map_err(|e| TrackingError::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrackingError::io(path, e)),
    }
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(v) => out.push(v),
            Err(e) => {
                let torn_tail = i == last;
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    torn_tail,
                    error = %e,
                    "skipping unreadable line of a JSON-lines log (left by a crash mid-write)"
                );
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// MLflow REST client

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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// MLflow's own limits (mlflow/utils/validation.py).
const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAM_VAL_LENGTH: usize = 6000;
const MAX_TAG_VAL_LENGTH: usize = 8000;
const MAX_ENTITY_KEY_LENGTH: usize = 250;
/// Uploaded in one PUT; bigger files stay local (the proxy's multipart path is not worth it
/// for the reports and plots a run carries).
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

/// Blocking client of one MLflow tracking server (REST API 2.0 and the `mlflow-artifacts`
/// proxy). Short timeouts: callers are never held long by a server that is down.
#[derive(Clone)]
pub struct MlflowClient {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient")
            .field("base", &self.base)
            .finish()
    }
}

impl MlflowClient {
    pub fn new(base_uri: &str) -> MlflowClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            .user_agent(concat!("sentimentd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        MlflowClient {
            base: base_uri.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn base_uri(&self) -> &str {
        &self.base
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.base)
    }

    /// Sends a request and returns the JSON body of a 2xx answer; everything else becomes an
    /// error naming the endpoint and, when the server said one, its error code and message.
    fn call(
        &self,
        endpoint: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<serde_json::Value, TrackingError> {
        let mut resp = result.map_err(|e| TrackingError::Transport {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| TrackingError::Transport {
                endpoint: endpoint.to_string(),
                message: format!("reading the response: {e}"),
            })?;
        if (200..300).contains(&status) {
            if body.trim().is_empty() {
                return Ok(serde_json::Value::Object(Default::default()));
            }
            return serde_json::from_str(&body).map_err(|e| TrackingError::Protocol {
                endpoint: endpoint.to_string(),
                message: format!("{e}: {}", truncate(&body, 300)),
            });
        }
        let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Err(TrackingError::Server {
            endpoint: endpoint.to_string(),
            status,
            error_code: field("error_code").unwrap_or_else(|| "-".to_string()),
            message: field("message").unwrap_or_else(|| truncate(body.trim(), 500).to_string()),
        })
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, TrackingError> {
        let endpoint = format!("GET /api/2.0/mlflow/{path}");
        let mut req = self.agent.get(self.api(path));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        self.call(&endpoint, req.call())
    }

    fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, TrackingError> {
        let endpoint = format!("POST /api/2.0/mlflow/{path}");
        self.call(&endpoint, self.agent.post(self.api(path)).send_json(body))
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<(), TrackingError> {
        let endpoint = "GET /health";
        let mut resp = self
            .agent
            .get(format!("{}/health", self.base))
            .call()
            .map_err(|e| TrackingError::Transport {
                endpoint: endpoint.to_string(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if status == 200 {
            Ok(())
        } else {
            Err(TrackingError::Server {
                endpoint: endpoint.to_string(),
                status,
                error_code: "-".to_string(),
                message: truncate(&resp.body_mut().read_to_string().unwrap_or_default(), 200)
                    .to_string(),
            })
        }
    }

    /// The id of the experiment called `name`, created when missing.
    pub fn get_or_create_experiment(&self, name: &str) -> Result<String, TrackingError> {
        match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => {
                return str_at(
                    &v,
                    &["experiment", "experiment_id"],
                    "experiments/get-by-name",
                );
            }
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_DOES_NOT_EXIST" => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", &serde_json::json!({ "name": name })) {
            Ok(v) => str_at(&v, &["experiment_id"], "experiments/create"),
            // Another client created it between our two calls.
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_ALREADY_EXISTS" =>
            {
                let v = self.get("experiments/get-by-name", &[("experiment_name", name)])?;
                str_at(
                    &v,
                    &["experiment", "experiment_id"],
                    "experiments/get-by-name",
                )
            }
            Err(e) => Err(e),
        }
    }

    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time_ms: i64,
        tags: &BTreeMap<String, String>,
    ) -> Result<MlflowRun, TrackingError> {
        let body = serde_json::json!({
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_time_ms,
            "tags": key_values(tags.iter(), MAX_TAG_VAL_LENGTH),
        });
        let v = self.post("runs/create", &body)?;
        parse_run(&v, "runs/create")
    }

    pub fn get_run(&self, run_id: &str) -> Result<MlflowRun, TrackingError> {
        let v = self.get("runs/get", &[("run_id", run_id)])?;
        parse_run(&v, "runs/get")
    }

    /// The newest active run of the experiment whose tag `key` equals `value`.
    pub fn find_run_by_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<MlflowRun>, TrackingError> {
        let body = serde_json::json!({
            "experiment_ids": [experiment_id],
            "filter": format!("tags.`{key}` = '{}'", escape_filter_value(value)),
            "max_results": 1,
            "order_by": ["attributes.start_time DESC"],
        });
        let v = self.post("runs/search", &body)?;
        match v
            .get("runs")
            .and_then(|r| r.as_array())
            .and_then(|r| r.first())
        {
            Some(run) => parse_run(&serde_json::json!({ "run": run }), "runs/search").map(Some),
            None => Ok(None),
        }
    }

    /// Logs params, metrics and tags, split into requests within MLflow's batch limits.
    pub fn log_batch(
        &self,
        run_id: &str,
        params: &BTreeMap<String, String>,
        metrics: &[MlflowMetric],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), TrackingError> {
        let params = key_values(params.iter(), MAX_PARAM_VAL_LENGTH);
        let tags = key_values(tags.iter(), MAX_TAG_VAL_LENGTH);
        let metrics: Vec<serde_json::Value> = metrics
            .iter()
            .map(|m| {
                serde_json::json!({
                    "key": sanitize_key(&m.key),
                    "value": metric_json(m.value),
                    "timestamp": m.timestamp_ms,
                    "step": m.step,
                })
            })
            .collect();
        let mut p = params.chunks(MAX_PARAMS_TAGS_PER_BATCH);
        let mut t = tags.chunks(MAX_PARAMS_TAGS_PER_BATCH);
        // Leave room for the params and tags in the 1000-entity cap of one request.
        let mut m = metrics.chunks(MAX_METRICS_PER_BATCH - 2 * MAX_PARAMS_TAGS_PER_BATCH);
        loop {
            let (ps, ts, ms) = (p.next(), t.next(), m.next());
            if ps.is_none() && ts.is_none() && ms.is_none() {
                return Ok(());
            }
            let body = serde_json::json!({
                "run_id": run_id,
                "params": ps.unwrap_or_default(),
                "tags": ts.unwrap_or_default(),
                "metrics": ms.unwrap_or_default(),
            });
            self.post("runs/log-batch", &body)?;
        }
    }

    /// The HTTP base of a run's artifact root. Only roots the server proxies
    /// (`mlflow-artifacts:`, or its HTTP form) can be written through the REST API.
    pub fn artifact_base(&self, run: &MlflowRun) -> Result<String, TrackingError> {
        const ROUTE: &str = "/api/2.0/mlflow-artifacts/artifacts";
        let uri = run.artifact_uri.trim_end_matches('/');
        if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host:port/1/...`.
            let (authority, path) = match rest.strip_prefix("//") {
                Some(r) => match r.find('/') {
                    Some(i) => (Some(&r[..i]), &r[i..]),
                    None => (Some(r), ""),
                },
                None => (None, rest),
            };
            let base = match authority {
                Some(a) if !a.is_empty() => {
                    let scheme = self.base.split("://").next().unwrap_or("http");
                    format!("{scheme}://{a}")
                }
                _ => self.base.clone(),
            };
            return Ok(format!("{base}{ROUTE}/{}", path.trim_start_matches('/')));
        }
        if (uri.starts_with("http://") || uri.starts_with("https://")) && uri.contains(ROUTE) {
            return Ok(uri.to_string());
        }
        Err(TrackingError::Unsupported(format!(
            "run {} stores artifacts at {uri}, which the server does not proxy; start it with \
             --serve-artifacts (the default) and no --default-artifact-root outside \
             mlflow-artifacts:/",
            run.run_id
        )))
    }

    /// Uploads `file` as `<run artifacts>/<artifact_path>` through the `mlflow-artifacts` proxy.
    pub fn upload_artifact(
        &self,
        run: &MlflowRun,
        artifact_path: &str,
        file: &Path,
    ) -> Result<(), TrackingError> {
        let size = std::fs::metadata(file)
            .map_err(|e| TrackingError::io(file, e))?
            .len();
        if size > MAX_ARTIFACT_BYTES {
            return Err(TrackingError::InvalidRecord(format!(
                "artifact {} has {size} bytes, over the {MAX_ARTIFACT_BYTES}-byte upload limit",
                file.display()
            )));
        }
        let data = std::fs::read(file).map_err(|e| TrackingError::io(file, e))?;
        let path = encode_path(artifact_path.trim_matches('/'));
        let url = format!("{}/{path}", self.artifact_base(run)?);
        let endpoint = format!(
            "PUT /api/2.0/mlflow-artifacts/artifacts/.../{}/artifacts/{path}",
            run.run_id
        );
        let req = self
            .agent
            .put(&url)
            .config()
            .timeout_global(Some(UPLOAD_TIMEOUT))
            .build()
            .header("Content-Type", "application/octet-stream");
        self.call(&endpoint, req.send(data)).map(|_| ())
    }

    /// Artifact paths directly under `path` of a run (`""` = its root).
    pub fn list_artifacts(
        &self,
        run: &MlflowRun,
        path: &str,
    ) -> Result<Vec<String>, TrackingError> {
        let v = self.get("artifacts/list", &[("run_id", &run.run_id), ("path", path)])?;
        Ok(v.get("files")
            .and_then(|f| f.as_array())
            .map(|files| {
                files
                    .iter()
                    .filter_map(|f| f.get("path").and_then(|p| p.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn update_run(
        &self,
        run_id: &str,
        status: RunStatus,
        end_time_ms: i64,
    ) -> Result<(), TrackingError> {
        let body = serde_json::json!({
            "run_id": run_id,
            "status": status.mlflow_name(),
            "end_time": end_time_ms,
        });
        self.post("runs/update", &body).map(|_| ())
    }

    pub fn get_metric_history(
        &self,
        run_id: &str,
        key: &str,
    ) -> Result<Vec<MlflowMetric>, TrackingError> {
        let v = self.get(
            "metrics/get-history",
            &[("run_id", run_id), ("metric_key", key)],
        )?;
        let metrics = v.get("metrics").and_then(|m| m.as_array());
        Ok(metrics
            .map(|ms| {
                ms.iter()
                    .map(|m| MlflowMetric {
                        key: m["key"].as_str().unwrap_or(key).to_string(),
                        value: m["value"].as_f64().unwrap_or(f64::NAN),
                        timestamp_ms: int_field(&m["timestamp"]),
                        step: int_field(&m["step"]),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Creates the registered model unless it exists.
    pub fn ensure_registered_model(&self, name: &str) -> Result<(), TrackingError> {
        match self.post(
            "registered-models/create",
            &serde_json::json!({ "name": name }),
        ) {
            Ok(_) => Ok(()),
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_ALREADY_EXISTS" =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn create_model_version(
        &self,
        name: &str,
        source: &str,
        run_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<MlflowModelVersion, TrackingError> {
        let body = serde_json::json!({
            "name": name,
            "source": source,
            "run_id": run_id,
            "tags": key_values(tags.iter(), MAX_TAG_VAL_LENGTH),
        });
        let v = self.post("model-versions/create", &body)?;
        parse_model_version(&v["model_version"], "model-versions/create")
    }

    /// Versions of `name` registered from `run_id`.
    pub fn model_versions_of_run(
        &self,
        name: &str,
        run_id: &str,
    ) -> Result<Vec<MlflowModelVersion>, TrackingError> {
        let filter = format!(
            "name = '{}' and run_id = '{}'",
            escape_filter_value(name),
            escape_filter_value(run_id)
        );
        let v = self.get("model-versions/search", &[("filter", &filter)])?;
        v.get("model_versions")
            .and_then(|m| m.as_array())
            .map(|ms| {
                ms.iter()
                    .map(|m| parse_model_version(m, "model-versions/search"))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    pub fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<(), TrackingError> {
        let body = serde_json::json!({ "name": name, "alias": alias, "version": version });
        self.post("registered-models/alias", &body).map(|_| ())
    }

    /// The version `alias` points at, `None` when the model or the alias does not exist.
    pub fn get_model_version_by_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<MlflowModelVersion>, TrackingError> {
        // `registered-models/alias` answers a missing alias with a generic 400, which cannot be
        // told from a bad request without matching its text; the model's alias list can.
        let model = match self.get("registered-models/get", &[("name", name)]) {
            Ok(v) => v,
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_DOES_NOT_EXIST" =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let version = model["registered_model"]["aliases"]
            .as_array()
            .and_then(|aliases| {
                aliases
                    .iter()
                    .find(|a| a["alias"].as_str() == Some(alias))
                    .map(|a| str_at(a, &["version"], "registered-models/get"))
            })
            .transpose()?;
        let Some(version) = version else {
            return Ok(None);
        };
        let v = self.get(
            "model-versions/get",
            &[("name", name), ("version", version.as_str())],
        )?;
        parse_model_version(&v["model_version"], "model-versions/get").map(Some)
    }

    /// Mirrors a local record as one MLflow run, idempotently: a run already tagged with this
    /// record's id is completed rather than duplicated (params and identical metric values
    /// re-logged are no-ops on the server; artifacts are overwritten).
    pub fn log_run(
        &self,
        experiment_id: &str,
        record: &RunRecord,
    ) -> Result<MlflowRun, TrackingError> {
        record.validate()?;
        let start_ms = rfc3339_to_millis(&record.started_at).unwrap_or_else(now_millis);
        let end_ms = rfc3339_to_millis(&record.ended_at).unwrap_or(start_ms);
        let existing = self.find_run_by_tag(experiment_id, RUN_ID_TAG, &record.run_id)?;
        if let Some(run) = &existing
            && run.status != "RUNNING"
        {
            // Status is set last, so a terminal run was mirrored completely.
            return Ok(run.clone());
        }
        let run = match existing {
            Some(run) => run,
            None => {
                let mut tags = BTreeMap::new();
                tags.insert(RUN_ID_TAG.to_string(), record.run_id.clone());
                tags.insert(KIND_TAG.to_string(), record.kind.as_str().to_string());
                self.create_run(experiment_id, &record.name, start_ms, &tags)?
            }
        };
        let mut metrics: Vec<MlflowMetric> = record
            .metrics
            .iter()
            .map(|(k, v)| MlflowMetric {
                key: k.clone(),
                value: *v,
                timestamp_ms: end_ms,
                step: 0,
            })
            .collect();
        metrics.extend(record.metric_steps.iter().map(|m| MlflowMetric {
            key: m.key.clone(),
            value: m.value,
            timestamp_ms: end_ms,
            step: m.step,
        }));
        let mut tags = record.tags.clone();
        if let Some(error) = &record.error {
            tags.insert(ERROR_TAG.to_string(), error.clone());
        }
        self.log_batch(&run.run_id, &record.params, &metrics, &tags)?;
        for file in &record.artifacts {
            let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if !uploadable(file) {
                tracing::warn!(
                    run_id = %record.run_id,
                    artifact = %file.display(),
                    max_bytes = MAX_ARTIFACT_BYTES,
                    "artifact missing or too big to upload; MLflow run mirrored without it"
                );
                continue;
            }
            self.upload_artifact(&run, &name, file)?;
        }
        self.update_run(&run.run_id, record.status, end_ms)?;
        Ok(MlflowRun {
            status: record.status.mlflow_name().to_string(),
            ..run
        })
    }

    /// Uploads a model version's files to `model/` of `run`, registers them as a version of
    /// `registered_model` (once per run and store version) and points `champion` at it.
    /// Returns the registry's version number.
    pub fn register_champion(
        &self,
        registered_model: &str,
        run: &MlflowRun,
        store_version: &str,
        files: &[PathBuf],
    ) -> Result<String, TrackingError> {
        for file in files {
            let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if !uploadable(file) {
                tracing::warn!(
                    version = store_version,
                    artifact = %file.display(),
                    max_bytes = MAX_ARTIFACT_BYTES,
                    "model file missing or too big to upload; version registered without it"
                );
                continue;
            }
            self.upload_artifact(run, &format!("{MODEL_ARTIFACT_PATH}/{name}"), file)?;
        }
        self.ensure_registered_model(registered_model)?;
        let existing = self
            .model_versions_of_run(registered_model, &run.run_id)?
            .into_iter()
            .find(|v| v.tags.get(VERSION_TAG).map(String::as_str) == Some(store_version));
        let version = match existing {
            Some(v) => v,
            None => {
                let mut tags = BTreeMap::new();
                tags.insert(VERSION_TAG.to_string(), store_version.to_string());
                let source = format!(
                    "{}/{MODEL_ARTIFACT_PATH}",
                    run.artifact_uri.trim_end_matches('/')
                );
                self.create_model_version(registered_model, &source, &run.run_id, &tags)?
            }
        };
        self.set_alias(registered_model, CHAMPION_ALIAS, &version.version)?;
        Ok(version.version)
    }
}

/// A file `upload_artifact` would accept. Checked up front because its refusal is final, and
/// one oversized attachment must not cost the whole record its place in MLflow.
fn uploadable(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() <= MAX_ARTIFACT_BYTES)
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// MLflow accepts only these characters in param, metric and tag keys.
fn sanitize_key(key: &str) -> String {
    let cleaned: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-. :/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    truncate(&cleaned, MAX_ENTITY_KEY_LENGTH).to_string()
}

fn key_values<'a>(
    items: impl Iterator<Item = (&'a String, &'a String)>,
    max_value: usize,
) -> Vec<serde_json::Value> {
    items
        .map(
            |(k, v)| serde_json::json!({ "key": sanitize_key(k), "value": truncate(v, max_value) }),
        )
        .collect()
}

/// Protobuf's JSON mapping spells non-finite doubles as strings; JSON has no NaN.
fn metric_json(v: f64) -> serde_json::Value {
    if v.is_nan() {
        serde_json::json!("NaN")
    } else if v == f64::INFINITY {
        serde_json::json!("Infinity")
    } else if v == f64::NEG_INFINITY {
        serde_json::json!("-Infinity")
    } else {
        serde_json::json!(v)
    }
}

/// Protobuf's JSON mapping writes int64 as a string.
fn int_field(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn escape_filter_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Percent-encodes each segment of a relative artifact path.
fn encode_path(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            for b in seg.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn str_at(v: &serde_json::Value, path: &[&str], endpoint: &str) -> Result<String, TrackingError> {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    match cur {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(TrackingError::Protocol {
            endpoint: endpoint.to_string(),
            message: format!("no {} in the answer", path.join(".")),
        }),
    }
}

fn parse_run(v: &serde_json::Value, endpoint: &str) -> Result<MlflowRun, TrackingError> {
    let info = &v["run"]["info"];
    let run_id =
        str_at(info, &["run_id"], endpoint).or_else(|_| str_at(info, &["run_uuid"], endpoint))?;
    Ok(MlflowRun {
        run_id,
        experiment_id: str_at(info, &["experiment_id"], endpoint)?,
        artifact_uri: str_at(info, &["artifact_uri"], endpoint).unwrap_or_default(),
        status: str_at(info, &["status"], endpoint).unwrap_or_else(|_| "RUNNING".to_string()),
    })
}

fn parse_model_version(
    v: &serde_json::Value,
    endpoint: &str,
) -> Result<MlflowModelVersion, TrackingError> {
    let tags = v["tags"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some((
                        t["key"].as_str()?.to_string(),
                        t["value"].as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(MlflowModelVersion {
        name: str_at(v, &["name"], endpoint)?,
        version: str_at(v, &["version"], endpoint)?,
        source: str_at(v, &["source"], endpoint).unwrap_or_default(),
        run_id: str_at(v, &["run_id"], endpoint).unwrap_or_default(),
        tags,
    })
}

// ---------------------------------------------------------------------------------------------
// Forwarding with a persistent retry queue

/// What is forwarded to MLflow. Persisted in the pending file, so keep it backward-compatible.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MlflowOp {
    /// Mirror a run record (its artifacts point at the run log's copies).
    Run { record: RunRecord },
    /// Register a model store version as a registry version and make it the champion.
    /// `run_id` is the local id of the run that trained it.
    Champion {
        version: String,
        run_id: String,
        files: Vec<PathBuf>,
    },
}

impl MlflowOp {
    fn describe(&self) -> String {
        match self {
            MlflowOp::Run { record } => format!("run {} ({})", record.run_id, record.kind.as_str()),
            MlflowOp::Champion { version, .. } => format!("champion {version}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingEntry {
    id: String,
    queued_at: String,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    last_error: Option<String>,
    /// Failed attempts the server answered (see [`TrackingError::server_answered`]); at
    /// [`MlflowSink::with_max_attempts`] the entry goes to the dead-letter file.
    #[serde(default)]
    answered: u32,
    /// When it was given up on (dead-letter file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_at: Option<String>,
    #[serde(flatten)]
    op: MlflowOp,
}

/// A record taken off the queue without reaching MLflow; it is in the dead-letter file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRecord {
    /// What it was, e.g. `run 3f2a… (training)`.
    pub op: String,
    pub attempts: u32,
    pub error: String,
}

impl PendingEntry {
    fn new(op: MlflowOp) -> PendingEntry {
        PendingEntry {
            id: new_run_id(),
            queued_at: now_rfc3339(),
            attempts: 0,
            last_error: None,
            answered: 0,
            dead_at: None,
            op,
        }
    }

    /// Counts one failed attempt.
    fn failed(&mut self, e: &TrackingError) {
        self.attempts += 1;
        if e.server_answered() {
            self.answered += 1;
        }
        self.last_error = Some(e.to_string());
    }
}

/// Exponential backoff between retries of a down server.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    next_at: Option<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
            next_at: None,
        }
    }

    /// Records a failure; returns how long until the next try.
    pub fn failed(&mut self) -> Duration {
        let wait = self.current;
        self.next_at = Some(Instant::now() + wait);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    pub fn succeeded(&mut self) {
        self.current = self.initial;
        self.next_at = None;
    }

    pub fn is_due(&self) -> bool {
        self.next_at.is_none_or(|t| Instant::now() >= t)
    }

    pub fn wait(&self) -> Option<Duration> {
        self.next_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// What one pass over the queue did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub sent: usize,
    /// Rejected by the server (4xx) and dropped; they stay in the local run log.
    pub dropped: usize,
    pub remaining: usize,
}

/// What became of one submitted operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Arrived on the first attempt.
    Sent,
    /// Went through the retry queue (a due backlog flush may already have sent it).
    Queued,
    /// Rejected by the server (4xx); not retried. The local run log keeps it.
    Dropped,
}

/// Default of [`MlflowSink::with_max_attempts`] (`[tracking] record_max_attempts`).
pub const RECORD_MAX_ATTEMPTS: u32 = 5;

/// Oldest pending entries beyond this are dropped: the local run log keeps them regardless,
/// and an unbounded file would make every rewrite slower during a long outage.
pub const MAX_PENDING: usize = 10_000;

/// Forwards operations to one MLflow server; what cannot be sent now waits in
/// `<dir>/mlflow-pending.jsonl` and is retried in order with exponential backoff.
///
/// The pending file, not memory, is the queue's truth, so several processes (the daemon and a
/// `sentimentd train` run) can share one: appends and rewrites happen under an exclusive lock
/// on `mlflow-pending.lock`, and network calls happen outside it.
pub struct MlflowSink {
    client: MlflowClient,
    experiment: String,
    registered_model: String,
    experiment_id: Option<String>,
    pending_path: PathBuf,
    lock_path: PathBuf,
    pending: VecDeque<PendingEntry>,
    backoff: Backoff,
    max_attempts: u32,
    /// Given up on since the last [`MlflowSink::take_dropped`].
    dropped: Vec<DroppedRecord>,
}

impl MlflowSink {
    /// Opens the queue in `dir`; nothing is sent until the first submit or flush.
    pub fn open(
        client: MlflowClient,
        experiment: &str,
        registered_model: &str,
        dir: &Path,
    ) -> Result<MlflowSink, TrackingError> {
        std::fs::create_dir_all(dir).map_err(|e| TrackingError::io(dir, e))?;
        let mut sink = MlflowSink {
            client,
            experiment: experiment.to_string(),
            registered_model: registered_model.to_string(),
            experiment_id: None,
            pending_path: dir.join(PENDING_FILE),
            lock_path: dir.join(PENDING_LOCK_FILE),
            pending: VecDeque::new(),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            max_attempts: RECORD_MAX_ATTEMPTS,
            dropped: Vec::new(),
        };
        sink.reload()?;
        if !sink.pending.is_empty() {
            tracing::info!(
                pending = sink.pending.len(),
                file = %sink.pending_path.display(),
                "MLflow records left from an earlier run will be retried"
            );
        }
        Ok(sink)
    }

    pub fn client(&self) -> &MlflowClient {
        &self.client
    }

    /// A record the server answered but did not take this many times is given up on.
    pub fn with_max_attempts(mut self, n: u32) -> MlflowSink {
        self.max_attempts = n.max(1);
        self
    }

    /// Records given up on since the last call (each already in the dead-letter file).
    pub fn take_dropped(&mut self) -> Vec<DroppedRecord> {
        std::mem::take(&mut self.dropped)
    }

    pub fn pending_path(&self) -> &Path {
        &self.pending_path
    }

    /// Entries waiting, as of the last look at the pending file.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Time until the next retry is due, `None` when nothing waits.
    pub fn next_retry_in(&self) -> Option<Duration> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.backoff.wait().unwrap_or(Duration::ZERO))
        }
    }

    /// Sends `op` now (one attempt), unless older entries wait or the server is in a backoff
    /// window: then it queues behind them so order is kept and a down server is not hammered.
    pub fn submit(&mut self, op: MlflowOp) -> Result<Submitted, TrackingError> {
        if !self.pending.is_empty() || !self.backoff.is_due() {
            let what = op.describe();
            self.enqueue(op, None)?;
            tracing::debug!(
                op = %what,
                pending = self.pending.len(),
                "MLflow record queued behind the backlog"
            );
            if self.backoff.is_due() {
                self.flush_pending()?;
            }
            return Ok(Submitted::Queued);
        }
        match self.send(&op) {
            Ok(()) => {
                self.backoff.succeeded();
                Ok(Submitted::Sent)
            }
            Err(e) if e.is_retryable() && !(e.server_answered() && self.max_attempts <= 1) => {
                let wait = self.backoff.failed();
                tracing::warn!(
                    op = %op.describe(),
                    error = %e,
                    retry_in_s = wait.as_secs_f64(),
                    "MLflow unreachable; record queued for retry (kept in the local run log)"
                );
                self.enqueue(op, Some(&e))?;
                Ok(Submitted::Queued)
            }
            Err(e) => {
                let mut entry = PendingEntry::new(op);
                entry.failed(&e);
                self.dead_letter(entry)?;
                Ok(Submitted::Dropped)
            }
        }
    }

    /// Retries the queue if the backoff window has passed (and re-reads the pending file when
    /// another process may have added to it).
    pub fn retry_due(&mut self) -> Result<FlushReport, TrackingError> {
        if !self.backoff.is_due() {
            return Ok(FlushReport {
                remaining: self.pending.len(),
                ..FlushReport::default()
            });
        }
        self.flush_pending()
    }

    /// Sends every pending entry now, oldest first, ignoring the backoff; stops at the first
    /// that fails for a reason worth retrying. Deterministic: tests and shutdown drive it.
    pub fn flush_pending(&mut self) -> Result<FlushReport, TrackingError> {
        let result = self.flush_inner();
        if result.is_err() {
            // Trouble with the pending file itself: back off too, or a caller that retries
            // whenever `next_retry_in` says so would spin on it.
            self.backoff.failed();
        }
        result
    }

    fn flush_inner(&mut self) -> Result<FlushReport, TrackingError> {
        self.reload()?;
        let mut report = FlushReport::default();
        let mut done: HashSet<String> = HashSet::new();
        let mut failed: Option<PendingEntry> = None;
        let entries: Vec<PendingEntry> = self.pending.iter().cloned().collect();
        for entry in &entries {
            match self.send(&entry.op) {
                Ok(()) => {
                    report.sent += 1;
                    done.insert(entry.id.clone());
                }
                Err(e) => {
                    let mut entry = entry.clone();
                    entry.failed(&e);
                    if e.is_retryable() && entry.answered < self.max_attempts {
                        failed = Some(entry);
                        break;
                    }
                    // Refused (4xx), or answered wrongly time after time: kept aside, so the
                    // records behind it go on.
                    done.insert(entry.id.clone());
                    self.dead_letter(entry)?;
                    report.dropped += 1;
                }
            }
        }
        if done.is_empty() && failed.is_none() {
            return Ok(report);
        }
        let remaining = self.locked(|sink| {
            let mut entries: Vec<PendingEntry> = read_jsonl(&sink.pending_path)?;
            entries.retain(|e| !done.contains(&e.id));
            if let Some(f) = &failed
                && let Some(e) = entries.iter_mut().find(|e| e.id == f.id)
            {
                *e = f.clone();
            }
            sink.rewrite(&entries)?;
            sink.pending = entries.into();
            Ok(sink.pending.len())
        })?;
        report.remaining = remaining;
        match failed.as_ref().and_then(|f| f.last_error.as_ref()) {
            Some(error) => {
                let wait = self.backoff.failed();
                tracing::warn!(
                    sent = report.sent,
                    remaining,
                    error = %error,
                    retry_in_s = wait.as_secs_f64(),
                    "MLflow still unreachable; backlog kept for retry"
                );
            }
            None => {
                self.backoff.succeeded();
                if report.sent > 0 {
                    tracing::info!(
                        sent = report.sent,
                        dropped = report.dropped,
                        remaining,
                        "MLflow backlog flushed"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Appends `entry` to the dead-letter file and reports it through
    /// [`MlflowSink::take_dropped`].
    fn dead_letter(&mut self, mut entry: PendingEntry) -> Result<(), TrackingError> {
        entry.dead_at = Some(now_rfc3339());
        let mut line = serde_json::to_vec(&entry).map_err(|source| TrackingError::Encode {
            run_id: entry.id.clone(),
            source,
        })?;
        line.push(b'\n');
        let path = self.pending_path.with_file_name(DEAD_LETTER_FILE);
        append_line(&path, line)?;
        self.dropped.push(DroppedRecord {
            op: entry.op.describe(),
            attempts: entry.attempts,
            error: entry.last_error.unwrap_or_default(),
        });
        Ok(())
    }

    fn experiment_id(&mut self) -> Result<String, TrackingError> {
        if let Some(id) = &self.experiment_id {
            return Ok(id.clone());
        }
        let id = self.client.get_or_create_experiment(&self.experiment)?;
        self.experiment_id = Some(id.clone());
        Ok(id)
    }

    fn send(&mut self, op: &MlflowOp) -> Result<(), TrackingError> {
        let result = self.send_inner(op);
        if let Err(e) = &result
            && !e.is_retryable()
        {
            // The experiment may have been deleted or renamed; look it up afresh next time.
            self.experiment_id = None;
        }
        result
    }

    fn send_inner(&mut self, op: &MlflowOp) -> Result<(), TrackingError> {
        let experiment_id = self.experiment_id()?;
        match op {
            MlflowOp::Run { record } => {
                let run = self.client.log_run(&experiment_id, record)?;
                tracing::info!(
                    run_id = %record.run_id,
                    kind = record.kind.as_str(),
                    mlflow_run_id = %run.run_id,
                    experiment_id = %experiment_id,
                    "run mirrored to MLflow"
                );
            }
            MlflowOp::Champion {
                version,
                run_id,
                files,
            } => {
                let run = match self
                    .client
                    .find_run_by_tag(&experiment_id, RUN_ID_TAG, run_id)?
                {
                    Some(run) => run,
                    None => {
                        // The training run never reached MLflow (trained before tracking was
                        // configured): a promotion run carries the files instead.
                        let mut record =
                            RunRecord::new(RunKind::Promotion, format!("champion {version}"));
                        record.run_id = format!("{run_id}-champion");
                        record.tag("sentimentd.trained_by_run", run_id.clone());
                        record.tag(VERSION_TAG, version.clone());
                        self.client.log_run(&experiment_id, &record)?
                    }
                };
                let registry_version =
                    self.client
                        .register_champion(&self.registered_model, &run, version, files)?;
                tracing::info!(
                    model = %self.registered_model,
                    version = %version,
                    registry_version = %registry_version,
                    mlflow_run_id = %run.run_id,
                    alias = CHAMPION_ALIAS,
                    "champion registered in MLflow"
                );
            }
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        op: MlflowOp,
        error: Option<&TrackingError>,
    ) -> Result<(), TrackingError> {
        let mut entry = PendingEntry::new(op);
        if let Some(e) = error {
            entry.failed(e);
        }
        let mut line = serde_json::to_vec(&entry).map_err(|source| TrackingError::Encode {
            run_id: entry.id.clone(),
            source,
        })?;
        line.push(b'\n');
        self.locked(|sink| {
            append_line(&sink.pending_path, line)?;
            sink.pending.push_back(entry);
            if sink.pending.len() > MAX_PENDING {
                let mut entries: Vec<PendingEntry> = read_jsonl(&sink.pending_path)?;
                let excess = entries.len().saturating_sub(MAX_PENDING);
                if excess > 0 {
                    entries.drain(..excess);
                    tracing::warn!(
                        dropped = excess,
                        max = MAX_PENDING,
                        "MLflow retry queue full; dropped the oldest (kept in the local run log)"
                    );
                }
                sink.rewrite(&entries)?;
                sink.pending = entries.into();
            }
            Ok(())
        })
    }

    fn reload(&mut self) -> Result<(), TrackingError> {
        let entries: Vec<PendingEntry> = self.locked(|sink| read_jsonl(&sink.pending_path))?;
        self.pending = entries.into();
        Ok(())
    }

    /// Replaces the pending file atomically (write aside, fsync, rename).
    fn rewrite(&self, entries: &[PendingEntry]) -> Result<(), TrackingError> {
        let path = &self.pending_path;
        if entries.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(TrackingError::io(path, e)),
            };
        }
        let mut text = Vec::new();
        for e in entries {
            let line = serde_json::to_vec(e).map_err(|source| TrackingError::Encode {
                run_id: e.id.clone(),
                source,
            })?;
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp).map_err(|e| TrackingError::io(&tmp, e))?;
        f.write_all(&text).map_err(|e| TrackingError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrackingError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| TrackingError::io(path, e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut MlflowSink) -> Result<T, TrackingError>,
    ) -> Result<T, TrackingError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| TrackingError::io(&self.lock_path, e))?;
        lock.lock()
            .map_err(|e| TrackingError::io(&self.lock_path, e))?;
        let result = f(self);
        // Closing the file releases the lock too; unlocking explicitly just makes it prompt.
        let _ = lock.unlock();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> RunRecord {
        let mut r = RunRecord::new(RunKind::Training, name);
        r.param("lr", 0.5)
            .param("epochs", 3)
            .metric("val_macro_recall", 0.71)
            .metric("nan_metric", f64::NAN)
            .metric_step("epoch_loss", 0, 1.2)
            .metric_step("epoch_loss", 1, 0.8)
            .tag("model_kind", "fast");
        r.finish()
    }

    #[test]
    fn run_ids_are_unique_hex() {
        let ids: HashSet<String> = (0..1000).map(|_| new_run_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn records_append_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalRunLog::open(dir.path().join("runs")).unwrap();
        assert!(log.list().unwrap().is_empty());
        let a = sample("a");
        let b = sample("b").fail("boom");
        log.record(&a).unwrap();
        log.record(&b).unwrap();
        let listed = log.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].run_id, a.run_id);
        assert_eq!(listed[0].params["lr"], "0.5");
        assert_eq!(listed[0].metric_steps.len(), 2);
        assert!(
            listed[0].metrics["nan_metric"].is_nan(),
            "NaN survives as NaN"
        );
        assert_eq!(listed[1].status, RunStatus::Failed);
        assert_eq!(listed[1].error.as_deref(), Some("boom"));
        let text = std::fs::read_to_string(log.runs_file()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        assert_eq!(log.get(&b.run_id).unwrap().unwrap().name, "b");
    }

    #[test]
    fn torn_last_line_is_skipped_and_the_next_append_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalRunLog::open(dir.path()).unwrap();
        let a = sample("a");
        log.record(&a).unwrap();
        // A crash mid-write leaves half a line without its newline.
        let whole = serde_json::to_string(&sample("torn")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(log.runs_file())
            .unwrap();
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        drop(f);
        let listed = log.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].run_id, a.run_id);

        let c = sample("c");
        log.record(&c).unwrap();
        let names: Vec<String> = log.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["a", "c"]);
    }

    #[test]
    fn artifacts_are_copied_and_the_log_points_at_the_copies() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalRunLog::open(dir.path().join("runs")).unwrap();
        let src = dir.path().join("report.json");
        std::fs::write(&src, b"{\"ok\":true}").unwrap();
        let other = dir.path().join("sub");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("report.json"), b"second").unwrap();
        let mut r = sample("with-artifacts");
        r.artifact(&src)
            .artifact(other.join("report.json"))
            .artifact(dir.path().join("missing.png"));
        let stored = log.store(&r).unwrap();
        let copies = log.artifacts_dir(&r.run_id);
        assert_eq!(
            stored.artifacts,
            vec![copies.join("report.json"), copies.join("1-report.json")]
        );
        std::fs::remove_file(&src).unwrap();
        assert_eq!(
            std::fs::read(copies.join("report.json")).unwrap(),
            b"{\"ok\":true}"
        );
        assert_eq!(log.list().unwrap()[0].artifacts, stored.artifacts);
    }

    #[test]
    fn a_run_id_that_could_escape_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalRunLog::open(dir.path()).unwrap();
        let mut r = sample("x");
        r.run_id = "../../etc".to_string();
        assert!(matches!(
            log.record(&r),
            Err(TrackingError::InvalidRecord(_))
        ));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert!(b.is_due());
        let waits: Vec<u64> = (0..5).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        assert!(!b.is_due());
        b.succeeded();
        assert!(b.is_due());
        assert_eq!(b.failed().as_secs(), 1);
    }

    #[test]
    fn helpers_encode_what_mlflow_expects() {
        assert_eq!(encode_path("model/a b.json"), "model/a%20b.json");
        assert_eq!(encode_path("../x/./y"), "x/y");
        assert_eq!(sanitize_key("val loss (ℓ)"), "val loss ___");
        assert_eq!(metric_json(f64::NAN), serde_json::json!("NaN"));
        assert_eq!(escape_filter_value("it's"), "it\\'s");
        assert_eq!(int_field(&serde_json::json!("17")), 17);
        let c = MlflowClient::new("http://127.0.0.1:5000/");
        let run = |uri: &str| MlflowRun {
            run_id: "r".into(),
            experiment_id: "1".into(),
            artifact_uri: uri.into(),
            status: "RUNNING".into(),
        };
        assert_eq!(
            c.artifact_base(&run("mlflow-artifacts:/1/r/artifacts"))
                .unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts"
        );
        assert_eq!(
            c.artifact_base(&run("mlflow-artifacts://other:81/1/r/artifacts"))
                .unwrap(),
            "http://other:81/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts"
        );
        assert!(matches!(
            c.artifact_base(&run("/srv/mlruns/1/r/artifacts")),
            Err(TrackingError::Unsupported(_))
        ));
    }

    fn dead_server() -> String {
        // Bound then released: connecting is refused at once, like a server that is down.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    #[test]
    fn a_down_server_queues_persistently_and_fast() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dead_server();
        let mut sink =
            MlflowSink::open(MlflowClient::new(&uri), "exp", "model", dir.path()).unwrap();
        let t = Instant::now();
        let r = sample("offline");
        let outcome = sink.submit(MlflowOp::Run { record: r.clone() }).unwrap();
        assert_eq!(outcome, Submitted::Queued);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Inside the backoff window the next one queues without a network attempt.
        let outcome = sink
            .submit(MlflowOp::Champion {
                version: "v1".into(),
                run_id: r.run_id.clone(),
                files: vec![],
            })
            .unwrap();
        assert_eq!(outcome, Submitted::Queued);
        assert_eq!(sink.pending_len(), 2);
        assert!(sink.next_retry_in().unwrap() <= Duration::from_secs(1));

        // A restart finds both, in order.
        drop(sink);
        let mut sink =
            MlflowSink::open(MlflowClient::new(&uri), "exp", "model", dir.path()).unwrap();
        assert_eq!(sink.pending_len(), 2);
        let report = sink.flush_pending().unwrap();
        assert_eq!(
            report,
            FlushReport {
                sent: 0,
                dropped: 0,
                remaining: 2
            }
        );
        let entries: Vec<PendingEntry> = read_jsonl(sink.pending_path()).unwrap();
        assert!(matches!(&entries[0].op, MlflowOp::Run { record } if record.run_id == r.run_id));
        assert_eq!(entries[0].attempts, 2);
        assert!(
            entries[0]
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("experiments/get-by-name"),
            "{entries:?}"
        );
        assert!(matches!(&entries[1].op, MlflowOp::Champion { .. }));
    }
}
