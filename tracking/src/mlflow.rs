//! A blocking client for MLflow's REST API 2.0.

use crate::mlflow_api::{
    ArtifactsAnswer, CreatedExperiment, ExperimentAnswer, Ignored, MetricHistoryAnswer,
    ModelVersionAnswer, RegisteredModelAnswer, Run, RunAnswer, SearchModelVersionsAnswer,
    SearchRunsAnswer,
};
use crate::mlflow_api::{
    CreateModelVersion, CreateRun, KeyValue, LogBatch, MetricBody, Named, SearchRuns, SetAlias,
    UpdateRun,
};
pub use crate::mlflow_api::{MlflowMetric, MlflowModelVersion, MlflowRun};
use crate::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// MLflow's own limits (mlflow/utils/validation.py).
pub(crate) const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
pub(crate) const MAX_METRICS_PER_BATCH: usize = 1000;
pub(crate) const MAX_PARAM_VAL_LENGTH: usize = 6000;
pub(crate) const MAX_TAG_VAL_LENGTH: usize = 8000;
pub(crate) const MAX_ENTITY_KEY_LENGTH: usize = 250;
/// Uploaded in one PUT; bigger files stay local (the proxy's multipart path is not worth it
/// for the reports and plots a run carries).
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;
/// A model file (weights) may be this big: it is streamed from and to disk, never held in
/// memory whole.
pub const MAX_MODEL_FILE_BYTES: u64 = 2 << 30;

/// A transfer of `bytes` gets the upload timeout plus a second per 4 MiB.
fn transfer_timeout(bytes: u64) -> Duration {
    UPLOAD_TIMEOUT + Duration::from_secs(bytes / (4 << 20))
}

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
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, TrackingError> {
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
            let text = if body.trim().is_empty() { "{}" } else { &body };
            return serde_json::from_str(text).map_err(|e| TrackingError::Protocol {
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

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, TrackingError> {
        let endpoint = format!("GET /api/2.0/mlflow/{path}");
        let mut req = self.agent.get(self.api(path));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        self.call(&endpoint, req.call())
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, TrackingError> {
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
        match self.get::<ExperimentAnswer>("experiments/get-by-name", &[("experiment_name", name)])
        {
            Ok(v) => return Ok(v.experiment.experiment_id),
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_DOES_NOT_EXIST" => {}
            Err(e) => return Err(e),
        }
        match self.post::<CreatedExperiment>("experiments/create", &Named { name }) {
            Ok(v) => Ok(v.experiment_id),
            // Another client created it between our two calls.
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_ALREADY_EXISTS" =>
            {
                let v: ExperimentAnswer =
                    self.get("experiments/get-by-name", &[("experiment_name", name)])?;
                Ok(v.experiment.experiment_id)
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
        let body = CreateRun {
            experiment_id,
            run_name,
            start_time: start_time_ms,
            tags: key_values(tags.iter(), MAX_TAG_VAL_LENGTH),
        };
        let v: RunAnswer = self.post("runs/create", &body)?;
        run_of(v.run, "runs/create")
    }

    pub fn get_run(&self, run_id: &str) -> Result<MlflowRun, TrackingError> {
        let v: RunAnswer = self.get("runs/get", &[("run_id", run_id)])?;
        run_of(v.run, "runs/get")
    }

    /// The newest active run of the experiment whose tag `key` equals `value`.
    pub fn find_run_by_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<MlflowRun>, TrackingError> {
        let body = SearchRuns {
            experiment_ids: [experiment_id],
            filter: format!("tags.`{key}` = '{}'", escape_filter_value(value)),
            max_results: 1,
            order_by: ["attributes.start_time DESC"],
        };
        let v: SearchRunsAnswer = self.post("runs/search", &body)?;
        match v.runs.into_iter().next() {
            Some(run) => run_of(run, "runs/search").map(Some),
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
        let metrics: Vec<MetricBody> = metrics
            .iter()
            .map(|m| MetricBody {
                key: sanitize_key(&m.key),
                value: metric_json(m.value),
                timestamp: m.timestamp_ms,
                step: m.step,
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
            let body = LogBatch {
                run_id,
                params: ps.unwrap_or_default(),
                tags: ts.unwrap_or_default(),
                metrics: ms.unwrap_or_default(),
            };
            self.post::<Ignored>("runs/log-batch", &body)?;
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
        self.put_file(run, artifact_path, file, MAX_ARTIFACT_BYTES)
    }

    /// Streams `file` (at most `limit` bytes) to `<run artifacts>/<artifact_path>`.
    fn put_file(
        &self,
        run: &MlflowRun,
        artifact_path: &str,
        file: &Path,
        limit: u64,
    ) -> Result<(), TrackingError> {
        // The size of the file opened, not of the path: a file replaced meanwhile (a
        // manifest rewritten by an attach) must not be sent under another length.
        let data = std::fs::File::open(file).map_err(|e| TrackingError::io(file, e))?;
        let size = data
            .metadata()
            .map_err(|e| TrackingError::io(file, e))?
            .len();
        if size > limit {
            return Err(TrackingError::InvalidRecord(format!(
                "artifact {} has {size} bytes, over the {limit}-byte upload limit",
                file.display()
            )));
        }
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
            .timeout_global(Some(transfer_timeout(size)))
            .build()
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string());
        self.call::<Ignored>(&endpoint, req.send(data)).map(|_| ())
    }

    /// Streams the artifact `artifact_path` of `run` into the file `dest`; returns its size.
    pub fn download_artifact(
        &self,
        run: &MlflowRun,
        artifact_path: &str,
        dest: &Path,
    ) -> Result<u64, TrackingError> {
        let path = encode_path(artifact_path.trim_matches('/'));
        let url = format!("{}/{path}", self.artifact_base(run)?);
        let endpoint = format!(
            "GET /api/2.0/mlflow-artifacts/artifacts/.../{}/artifacts/{path}",
            run.run_id
        );
        let transport = |message: String| TrackingError::Transport {
            endpoint: endpoint.clone(),
            message,
        };
        let mut resp = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(transfer_timeout(MAX_MODEL_FILE_BYTES)))
            .build()
            .call()
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(TrackingError::Server {
                endpoint: endpoint.clone(),
                status,
                error_code: "-".into(),
                message: truncate(body.trim(), 300).to_string(),
            });
        }
        let mut out = std::fs::File::create(dest).map_err(|e| TrackingError::io(dest, e))?;
        let mut body = resp
            .body_mut()
            .with_config()
            .limit(MAX_MODEL_FILE_BYTES)
            .reader();
        let bytes = std::io::copy(&mut body, &mut out)
            .map_err(|e| transport(format!("reading into {}: {e}", dest.display())))?;
        out.sync_all().map_err(|e| TrackingError::io(dest, e))?;
        Ok(bytes)
    }

    /// Artifact paths directly under `path` of a run (`""` = its root).
    pub fn list_artifacts(
        &self,
        run: &MlflowRun,
        path: &str,
    ) -> Result<Vec<String>, TrackingError> {
        let v: ArtifactsAnswer =
            self.get("artifacts/list", &[("run_id", &run.run_id), ("path", path)])?;
        Ok(v.files.into_iter().filter_map(|f| f.path).collect())
    }

    pub fn update_run(
        &self,
        run_id: &str,
        status: RunStatus,
        end_time_ms: i64,
    ) -> Result<(), TrackingError> {
        let body = UpdateRun {
            run_id,
            status: status.mlflow_name(),
            end_time: end_time_ms,
        };
        self.post::<Ignored>("runs/update", &body).map(|_| ())
    }

    pub fn get_metric_history(
        &self,
        run_id: &str,
        key: &str,
    ) -> Result<Vec<MlflowMetric>, TrackingError> {
        let v: MetricHistoryAnswer = self.get(
            "metrics/get-history",
            &[("run_id", run_id), ("metric_key", key)],
        )?;
        Ok(v.metrics.into_iter().map(|m| m.into_metric(key)).collect())
    }

    /// Creates the registered model unless it exists.
    pub fn ensure_registered_model(&self, name: &str) -> Result<(), TrackingError> {
        match self.post::<Ignored>("registered-models/create", &Named { name }) {
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
        let body = CreateModelVersion {
            name,
            source,
            run_id,
            tags: key_values(tags.iter(), MAX_TAG_VAL_LENGTH),
        };
        let v: ModelVersionAnswer = self.post("model-versions/create", &body)?;
        Ok(v.model_version.into())
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
        let v: SearchModelVersionsAnswer =
            self.get("model-versions/search", &[("filter", &filter)])?;
        Ok(v.model_versions.into_iter().map(Into::into).collect())
    }

    pub fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<(), TrackingError> {
        let body = SetAlias {
            name,
            alias,
            version,
        };
        self.post::<Ignored>("registered-models/alias", &body)
            .map(|_| ())
    }

    pub fn set_model_version_tag(
        &self,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<(), TrackingError> {
        let body = serde_json::json!({
            "name": name,
            "version": version,
            "key": sanitize_key(key),
            "value": truncate(value, MAX_TAG_VAL_LENGTH),
        });
        self.post::<Ignored>("model-versions/set-tag", &body)
            .map(|_| ())
    }

    /// The version `alias` points at, `None` when the model or the alias does not exist.
    pub fn get_model_version_by_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<MlflowModelVersion>, TrackingError> {
        // `registered-models/alias` answers a missing alias with a generic 400, which cannot be
        // told from a bad request without matching its text; the model's alias list can.
        let model: RegisteredModelAnswer =
            match self.get("registered-models/get", &[("name", name)]) {
                Ok(v) => v,
                Err(TrackingError::Server { error_code, .. })
                    if error_code == "RESOURCE_DOES_NOT_EXIST" =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
        let Some(version) = model
            .registered_model
            .aliases
            .into_iter()
            .find(|a| a.alias == alias)
            .map(|a| a.version)
        else {
            return Ok(None);
        };
        let v: ModelVersionAnswer = self.get(
            "model-versions/get",
            &[("name", name), ("version", version.as_str())],
        )?;
        Ok(Some(v.model_version.into()))
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

    /// Uploads all of a model version's files to `model/` of `run`, registers them as a
    /// version of `registered_model` (once per run and store version, with `tags`) and points
    /// `champion` at it, unless the champion was promoted under a newer fencing token
    /// ([`FENCING_TAG`]) than `tags` carry: a node that lost the training lease, replaying a
    /// registration queued while MLflow was down, must not move the alias back.
    pub fn register_champion(
        &self,
        registered_model: &str,
        run: &MlflowRun,
        store_version: &str,
        files: &[PathBuf],
        tags: &BTreeMap<String, String>,
    ) -> Result<ChampionRegistration, TrackingError> {
        // Every file goes up, weights included: followers install the version from these.
        for file in files {
            let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            self.put_file(
                run,
                &format!("{MODEL_ARTIFACT_PATH}/{name}"),
                file,
                MAX_MODEL_FILE_BYTES,
            )?;
        }
        self.ensure_registered_model(registered_model)?;
        let existing = self
            .model_versions_of_run(registered_model, &run.run_id)?
            .into_iter()
            .find(|v| v.tags.get(VERSION_TAG).map(String::as_str) == Some(store_version));
        let version = match existing {
            Some(v) => v,
            None => {
                let mut tags = tags.clone();
                tags.insert(VERSION_TAG.to_string(), store_version.to_string());
                let source = format!(
                    "{}/{MODEL_ARTIFACT_PATH}",
                    run.artifact_uri.trim_end_matches('/')
                );
                self.create_model_version(registered_model, &source, &run.run_id, &tags)?
            }
        };
        let token = |t: &BTreeMap<String, String>| t.get(FENCING_TAG)?.parse::<u64>().ok();
        if let Some(ours) = token(tags)
            && let Some(current) =
                self.get_model_version_by_alias(registered_model, CHAMPION_ALIAS)?
            && let Some(theirs) = token(&current.tags)
            && theirs > ours
            && current.version != version.version
        {
            // The check and the move are two requests: a new holder's promotion between them
            // can still be overwritten. Followers then refuse the older token's champion
            // and keep serving, and the holder's next registration mends the alias.
            return Ok(ChampionRegistration {
                registry_version: version.version,
                superseded_by: Some(Superseded {
                    registry_version: current.version,
                    store_version: current.tags.get(VERSION_TAG).cloned().unwrap_or_default(),
                    token: theirs,
                    ours,
                }),
            });
        }
        // A version registered before under an older token (a rollback to it) carries the
        // token it is promoted under now, or followers would take it for a stale champion.
        if let Some(ours) = token(tags)
            && token(&version.tags).is_some_and(|had| had < ours)
        {
            self.set_model_version_tag(
                registered_model,
                &version.version,
                FENCING_TAG,
                &ours.to_string(),
            )?;
        }
        self.set_alias(registered_model, CHAMPION_ALIAS, &version.version)?;
        Ok(ChampionRegistration {
            registry_version: version.version,
            superseded_by: None,
        })
    }
}

/// What [`MlflowClient::register_champion`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChampionRegistration {
    /// The registry's version number of the registered store version.
    pub registry_version: String,
    /// Set when the alias was left alone: the champion it names was promoted under a newer
    /// fencing token.
    pub superseded_by: Option<Superseded>,
}

/// The champion a stale registration did not replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub registry_version: String,
    pub store_version: String,
    /// Its fencing token, newer than `ours`.
    pub token: u64,
    pub ours: u64,
}

/// A file `upload_artifact` would accept. Checked up front because its refusal is final, and
/// one oversized attachment must not cost the whole record its place in MLflow.
pub(crate) fn uploadable(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() <= MAX_ARTIFACT_BYTES)
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// MLflow accepts only these characters in param, metric and tag keys.
pub(crate) fn sanitize_key(key: &str) -> String {
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

pub(crate) fn key_values<'a>(
    items: impl Iterator<Item = (&'a String, &'a String)>,
    max_value: usize,
) -> Vec<KeyValue> {
    items
        .map(|(k, v)| KeyValue {
            key: sanitize_key(k),
            value: truncate(v, max_value).to_string(),
        })
        .collect()
}

/// Protobuf's JSON mapping spells non-finite doubles as strings; JSON has no NaN.
pub(crate) fn metric_json(v: f64) -> serde_json::Value {
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

/// The run an answer names; an answer without a run id is a protocol error.
fn run_of(run: Run, endpoint: &str) -> Result<MlflowRun, TrackingError> {
    run.into_run().ok_or_else(|| TrackingError::Protocol {
        endpoint: endpoint.to_string(),
        message: "no run.info.run_id in the answer".into(),
    })
}

pub(crate) fn escape_filter_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Percent-encodes each segment of a relative artifact path.
pub(crate) fn encode_path(path: &str) -> String {
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
