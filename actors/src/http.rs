//! HTTP ingestion (actix-web): `/predict`, `/feedback`, `/health`, `/ready`, `/model`,
//! `/metrics`, `/drift`, and the admin API (`/admin/retrain`, `/admin/promote`,
//! `/admin/rollback`, bearer token from `[admin] token_file`). Each handler's
//! `#[utoipa::path]` documents it in `GET /openapi.json` (see `openapi.rs`).
//!
//! `/predict` is the hot path: for one text or a few, the handler reads the serving model from
//! the lock-free [`ModelCell`] and records metrics with atomic counters, instead of a mailbox
//! round-trip to the inference pool, which would cost more than scoring one short text.
//! Larger batches go to the inference pool, off the HTTP workers, so a flood of them cannot
//! starve `/health` or single texts; at most `server.max_inflight_texts` of their texts are in
//! flight, and a batch beyond that gets 429 with `Retry-After`.
//!
//! Every error is JSON `{"error": "..."}` and bad input never yields a 500.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use sentimentd_data::Label;
use sentimentd_model::Prediction;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::drift_monitor::ReportCell;
use crate::events::{FeedbackReceived, InternalEvent};
use crate::messages::{
    BatchError, Enqueue, InferenceError, PromoteVersion, Retrain, RetrainTrigger, Rollback,
    ScoreChunk, ScoredChunk, Switched,
};
use crate::metrics::{Channel, Metrics, RequestOutcome};
use crate::model_registry::{ModelCell, ServingModel};
use crate::observations::ObservationSink;
use crate::openapi::{AdminErrors, ErrorBody, FeedbackAuthErrors, JsonBodyErrors, SwitchResponses};
use crate::reputation::Reputation;
use crate::supervisor::{Containment, Faults};

/// Where the admin API sends its requests.
pub struct AdminApi {
    /// The bearer token from `[admin] token_file`, re-read on SIGHUP.
    pub token: Arc<TokenFile>,
    pub retrain: actix::Recipient<Retrain>,
    pub promote: actix::Recipient<PromoteVersion>,
    pub rollback: actix::Recipient<Rollback>,
}

pub struct HttpState {
    pub cell: ModelCell,
    pub metrics: Arc<Metrics>,
    pub containment: Containment,
    pub faults: Faults,
    /// Request limits; a config reload (SIGHUP) changes them in place.
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub observations: Arc<ObservationSink>,
    pub reports: ReportCell,
    pub drift_dir: std::path::PathBuf,
    pub labelled_dir: std::path::PathBuf,
    pub admin: Option<AdminApi>,
    /// Who may post `/feedback`: `[feedback] token_file`, else the admin token; none
    /// configured, and `/feedback` is disabled (the newest labelled rows are the gate's
    /// holdout, so anonymous feedback would let anyone steer promotions).
    pub feedback_token: Option<Arc<TokenFile>>,
    pub feedback_limits: sentimentd_config::FeedbackConfig,
    /// The inference pool for larger batches; without it every batch is scored in place.
    pub inference: Option<actix::Recipient<ScoreChunk>>,
    /// Gathers the texts of concurrent requests into chunks for models that prefer batches.
    pub batcher: Option<actix::Recipient<Enqueue>>,
    /// Texts of batches in the inference pool right now.
    inflight: AtomicUsize,
    pub reputation: Arc<Reputation>,
    /// The model store, for the status page's promotion history.
    pub model_store: std::path::PathBuf,
}

/// Batches up to this size are scored on the HTTP worker: a mailbox round-trip would cost
/// more than the scoring.
pub const INLINE_BATCH_TEXTS: usize = 32;

/// A `/predict` body larger than this (more than one text can be) is refused before it is
/// parsed while the pool is full.
const EARLY_THROTTLE_BYTES: usize = 16 << 10;

/// Seconds a throttled client is asked to wait.
const RETRY_AFTER_SECS: u32 = 1;

impl HttpState {
    // Every shared view the handlers read is wired here once, by the daemon and the tests.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &sentimentd_config::Config,
        cell: ModelCell,
        metrics: Arc<Metrics>,
        faults: Faults,
        observations: Arc<ObservationSink>,
        reports: ReportCell,
        admin: Option<AdminApi>,
        feedback_token: Option<Arc<TokenFile>>,
        reputation: Arc<Reputation>,
    ) -> HttpState {
        HttpState {
            cell,
            containment: Containment::new("http", metrics.clone()),
            metrics,
            faults,
            limits: Limits::new(cfg),
            max_body_bytes: cfg.server.max_body_bytes,
            observations,
            reports,
            drift_dir: crate::drift_monitor::DriftMonitor::reports_dir(cfg),
            labelled_dir: cfg.ingest.labelled_dir.clone(),
            admin,
            feedback_token,
            feedback_limits: cfg.feedback.clone(),
            inference: None,
            batcher: None,
            inflight: AtomicUsize::new(0),
            reputation,
            model_store: cfg.paths.model_store.clone(),
        }
    }

    /// Scores larger batches in `pool`, off the HTTP workers.
    pub fn with_inference(mut self, pool: actix::Recipient<ScoreChunk>) -> HttpState {
        self.inference = Some(pool);
        self
    }

    /// Scores the requests of models that prefer batches (the transformer kind) through
    /// `batcher`, which encodes concurrent requests together.
    pub fn with_batcher(mut self, batcher: actix::Recipient<Enqueue>) -> HttpState {
        self.batcher = Some(batcher);
        self
    }
}

/// The limits of `/predict` and `/feedback` requests.
pub struct Limits {
    max_text_chars: AtomicUsize,
    max_batch_texts: AtomicUsize,
    max_inflight_texts: AtomicUsize,
}

impl Limits {
    pub fn new(cfg: &sentimentd_config::Config) -> Limits {
        let limits = Limits {
            max_text_chars: AtomicUsize::new(0),
            max_batch_texts: AtomicUsize::new(0),
            max_inflight_texts: AtomicUsize::new(0),
        };
        limits.set(cfg);
        limits
    }

    /// Takes the limits of `cfg` (a reloaded config).
    pub fn set(&self, cfg: &sentimentd_config::Config) {
        let set = |a: &AtomicUsize, v| a.store(v, Ordering::Relaxed);
        set(&self.max_text_chars, cfg.data.max_text_chars);
        set(&self.max_batch_texts, cfg.server.max_batch_texts);
        set(&self.max_inflight_texts, cfg.server.max_inflight_texts);
    }

    pub fn max_text_chars(&self) -> usize {
        self.max_text_chars.load(Ordering::Relaxed)
    }

    pub fn max_batch_texts(&self) -> usize {
        self.max_batch_texts.load(Ordering::Relaxed)
    }

    pub fn max_inflight_texts(&self) -> usize {
        self.max_inflight_texts.load(Ordering::Relaxed)
    }
}

/// Releases a batch's share of `max_inflight_texts` however its request ends.
struct Inflight<'a> {
    state: &'a HttpState,
    texts: usize,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(self.texts, Ordering::SeqCst);
    }
}

/// A bearer token kept in a file (the first line, trimmed), read at start and again on
/// SIGHUP, so a token is rotated without a restart.
pub struct TokenFile {
    /// The config key, for messages: `[admin] token_file`.
    key: &'static str,
    path: std::path::PathBuf,
    /// The token, or why the file cannot be used: then every request is refused with it
    /// (a rotation that went wrong must not leave the old, possibly leaked, token valid).
    token: std::sync::RwLock<Result<String, String>>,
}

impl TokenFile {
    /// Reads the file; one that cannot be read, is open to others or holds no token stops
    /// the start-up with a message naming the key and the file.
    pub fn open(key: &'static str, path: &std::path::Path) -> Result<TokenFile, String> {
        let token = read_token(key, path)?;
        Ok(TokenFile {
            key,
            path: path.to_path_buf(),
            token: std::sync::RwLock::new(Ok(token)),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the file again (SIGHUP). On failure the token is unusable until a reload that
    /// succeeds; the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let read = read_token(self.key, &self.path);
        let result = read.as_ref().map(|_| ()).map_err(Clone::clone);
        match self.token.write() {
            Ok(mut t) => *t = read,
            Err(poisoned) => *poisoned.into_inner() = read,
        }
        result
    }

    /// `Ok` when the request carries this token as `Authorization: Bearer`.
    fn check(&self, req: &HttpRequest) -> Result<(), Box<HttpResponse>> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // RFC 9110: the scheme name is case-insensitive.
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let guard = match self.token.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let token = match &*guard {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(path = req.path(), error = %why, "request refused: the token file is unusable");
                return Err(Box::new(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{why}; fix it and reload (SIGHUP)"),
                )));
            }
        };
        use subtle::ConstantTimeEq;
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Ok(());
        }
        tracing::warn!(path = req.path(), peer = ?req.peer_addr(), key = self.key, "request refused: missing or wrong bearer token");
        Err(Box::new(
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .insert_header(ContentType::json())
                .body(r#"{"error":"missing or wrong bearer token"}"#),
        ))
    }
}

/// The first line of a token file, trimmed; `key` names the setting in errors.
fn read_token(key: &str, path: &std::path::Path) -> Result<String, String> {
    // Like ssh with a private key: a secret others can read is no secret.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{key} {}: group or others may access it (mode {mode:04o}); \
                 make it readable by the service user only (chmod 600)",
                path.display()
            ));
        }
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{key} {}: the token must be at least 16 characters on the first line",
            path.display()
        ));
    }
    Ok(token)
}

/// Registers the routes; `state` is shared by every worker.
pub fn configure(state: web::Data<HttpState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let limit = state.max_body_bytes;
        cfg.app_data(state)
            .app_data(web::PayloadConfig::new(limit))
            .service(
                web::resource("/predict")
                    .route(web::post().to(predict))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource(["/health", "/healthz"])
                    .route(web::get().to(health))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource(["/ready", "/readyz"])
                    .route(web::get().to(ready))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/model")
                    .route(web::get().to(model))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/metrics")
                    .route(web::get().to(metrics))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/feedback")
                    .route(web::post().to(feedback))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/drift")
                    .route(web::get().to(drift))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/")
                    .route(web::get().to(crate::status_page::page))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/reputation")
                    .route(web::get().to(reputation))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/drift/report.html")
                    .route(web::get().to(drift_html))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/admin/retrain")
                    .route(web::post().to(admin_retrain))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/admin/promote")
                    .route(web::post().to(admin_promote))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/admin/rollback")
                    .route(web::post().to(admin_rollback))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/openapi.json")
                    .route(web::get().to(crate::openapi::openapi_json))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found));
    }
}

pub fn json_error(status: StatusCode, message: impl AsRef<str>) -> HttpResponse {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
    }
    let body = serde_json::to_vec(&Body {
        error: message.as_ref(),
    })
    .unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec());
    HttpResponse::build(status)
        .insert_header(ContentType::json())
        .body(body)
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}

/// 405 with the `Allow` header RFC 9110 requires: the path's documented methods.
async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {}", req.method(), req.path()),
    );
    if let Some(allow) = crate::openapi::allowed_methods(req.path()) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

#[utoipa::path(get, path = "/health", tag = "health",
    description = "Liveness: 200 while the process is alive (also at `/healthz`).",
    responses((status = 200, description = "Alive", body = crate::openapi::Health)))]
async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}

#[utoipa::path(get, path = "/ready", tag = "health",
    description = "Readiness: 200 once a model answers, the lexicon fallback included (also at `/readyz`).",
    responses(
        (status = 200, description = "A model serves", body = crate::openapi::Ready),
        (status = 503, description = "No model is loaded yet", body = crate::openapi::NotReady)))]
async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    match state.cell.load_full() {
        Some(m) => HttpResponse::Ok().json(serde_json::json!({
            "ready": true,
            "model_version": m.info.version,
            "kind": m.info.kind,
            "fallback": m.info.fallback,
        })),
        None => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "ready": false,
            "error": "no model is loaded yet",
        })),
    }
}

#[utoipa::path(get, path = "/model", tag = "model",
    description = "The serving model: version, kind, whether it is the lexicon fallback, metrics per split, what each part of its training data weighed, and the newest retrain candidates with the gate's decision.",
    responses(
        (status = 200, description = "The serving model", body = crate::model_registry::ModelInfo),
        (status = 503, description = "No model is loaded yet", body = ErrorBody)))]
async fn model(state: web::Data<HttpState>) -> HttpResponse {
    let Some(m) = state.cell.load_full() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet");
    };
    let store = state.model_store.clone();
    let candidates = web::block(move || crate::model_registry::recent_candidates(&store, 5))
        .await
        .unwrap_or_default();
    let mut info = m.info.clone();
    info.candidates = candidates;
    HttpResponse::Ok().json(&info)
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic text format 0.0.4
/// otherwise.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    description = "Prometheus metrics: OpenMetrics 1.0.0 when `Accept` names `application/openmetrics-text`, the text format 0.0.4 otherwise.",
    responses(
        (status = 200, description = "The metrics", content(
            (String = "text/plain"),
            (String = "application/openmetrics-text"))),
        (status = 500, description = "The metrics cannot be encoded", body = ErrorBody)))]
async fn metrics(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (rendered, content_type) = if openmetrics {
        (
            state.metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            state.metrics.render_classic(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    match rendered {
        Ok(text) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, content_type))
            .body(text),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}

/// The fields of a `/predict` request; `openapi::PredictInput` adds that exactly one of
/// `text` and `texts` is given.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PredictRequest<'a> {
    /// One text; null is as if absent.
    #[serde(borrow, default)]
    #[schema(value_type = Option<crate::openapi::Text>)]
    text: Option<Cow<'a, str>>,
    /// A batch of at most `server.max_batch_texts` texts, answered in input order; null is as
    /// if absent.
    #[serde(borrow, default)]
    #[schema(value_type = Option<Vec<crate::openapi::Text>>, min_items = 1)]
    texts: Option<Vec<Cow<'a, str>>>,
    /// Who or what the texts are about (a brand, channel, account): the reputation view's
    /// source (`GET /reputation`), cut to 100 characters. Absent, null or blank: `unknown`.
    #[serde(borrow, default)]
    #[schema(value_type = Option<String>)]
    source: Option<Cow<'a, str>>,
}

/// Calibrated class probabilities; they sum to 1.
#[derive(Serialize, utoipa::ToSchema)]
struct Probabilities {
    #[schema(minimum = 0, maximum = 1)]
    negative: f32,
    #[schema(minimum = 0, maximum = 1)]
    neutral: f32,
    #[schema(minimum = 0, maximum = 1)]
    positive: f32,
}

/// The prediction for one text.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PredictionBody<'a> {
    #[schema(value_type = crate::openapi::LabelName)]
    label: &'static str,
    /// The probability of `label`.
    #[schema(minimum = 0, maximum = 1)]
    score: f32,
    probabilities: Probabilities,
    #[schema(value_type = String)]
    model_version: &'a str,
}

impl<'a> PredictionBody<'a> {
    fn new(p: &Prediction, model_version: &'a str) -> Self {
        PredictionBody {
            label: p.label.as_str(),
            score: p.score,
            probabilities: Probabilities {
                negative: p.probabilities[Label::Negative.index()],
                neutral: p.probabilities[Label::Neutral.index()],
                positive: p.probabilities[Label::Positive.index()],
            },
            model_version,
        }
    }
}

/// The predictions of a batch, in input order.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchBody<'a> {
    predictions: Vec<PredictionBody<'a>>,
}

/// JSON unless the client said otherwise; a missing header is accepted the way the Python
/// service accepted it.
fn content_type_ok(req: &HttpRequest) -> Result<(), String> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let value = value.to_str().unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(format!(
            "content type must be application/json, got {value:?}"
        ))
    }
}

#[utoipa::path(post, path = "/predict", tag = "predict",
    description = "Scores one text or a batch.",
    request_body(content = crate::openapi::PredictInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The prediction, or the batch's predictions", body = crate::openapi::PredictResponse),
        JsonBodyErrors,
        (status = 422, description = "A blank or too long text, an empty or too large batch", body = ErrorBody),
        (status = 429, description = "Too many texts of batches are being scored (`server.max_inflight_texts`)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 500, description = "Scoring failed; the error was logged", body = ErrorBody),
        (status = 503, description = "No model is loaded yet", body = ErrorBody)))]
async fn predict(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let started = Instant::now();
    let response = match predict_inner(&req, body, &state) {
        Work::Done(r) => r,
        Work::Pool {
            texts,
            source,
            single,
        } => score_in_pool(&state, texts, source.as_deref(), single).await,
    };
    let outcome = match response.status().as_u16() {
        200..=399 => RequestOutcome::ok,
        429 => RequestOutcome::throttled,
        400..=499 => RequestOutcome::client_error,
        _ => RequestOutcome::server_error,
    };
    state.metrics.request(outcome);
    state
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    response
}

/// What `/predict` does with a request: answered on the worker, or texts for the pool.
enum Work {
    Done(HttpResponse),
    Pool {
        texts: Vec<String>,
        source: Option<String>,
        /// A `{"text": ...}` request, answered with one prediction.
        single: bool,
    },
}

impl From<HttpResponse> for Work {
    fn from(r: HttpResponse) -> Work {
        Work::Done(r)
    }
}

fn predict_inner(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: &HttpState,
) -> Work {
    let body = match json_body(req, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(r) => return Work::Done(*r),
    };
    // A body this large is a batch for the pool; when the pool is full it would be refused
    // after parsing anyway, and a flood should not cost a parse per refused request.
    if body.len() > EARLY_THROTTLE_BYTES
        && state.inference.is_some()
        && state.inflight.load(Ordering::SeqCst) >= state.limits.max_inflight_texts()
    {
        return Work::Done(throttled(state, None));
    }
    // serde would also read a struct from a JSON array by position; only objects are requests.
    if let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace())
        && *first != b'{'
        && (*first == b'[' || first.is_ascii_digit() || b"\"tfn-".contains(first))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "wrong type in request: expected a JSON object with \"text\" or \"texts\"",
        )
        .into();
    }
    let request: PredictRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Data => "wrong type in request",
                _ => "malformed JSON",
            };
            return json_error(StatusCode::BAD_REQUEST, format!("{what}: {e}")).into();
        }
    };
    // A guard, not an `Arc` clone: no reference-count traffic shared by all workers.
    let guard = state.cell.load();
    let Some(model) = guard.as_deref() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet").into();
    };
    let source = request.source.as_deref();
    match (request.text, request.texts) {
        (Some(text), None) => {
            if let Err(message) = check_text(&text, state.limits.max_text_chars(), "text") {
                return json_error(StatusCode::UNPROCESSABLE_ENTITY, message).into();
            }
            if state.batcher.is_some() && model.classifier.prefers_batches() {
                return Work::Pool {
                    texts: vec![text.into_owned()],
                    source: source.map(str::to_string),
                    single: true,
                };
            }
            let scored = state.containment.run(|| {
                state.faults.on_text(&text);
                state
                    .observations
                    .predict(model.classifier.as_ref(), &model.version, &text)
            });
            match scored {
                Ok(p) => {
                    state.reputation.record(Channel::http, source, [p.label]);
                    json_ok(&PredictionBody::new(&p, &model.version)).into()
                }
                Err(_) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while scoring; the error was logged",
                )
                .into(),
            }
        }
        (None, Some(texts)) => predict_batch(state, model, &texts, source),
        (Some(_), Some(_)) => json_error(
            StatusCode::BAD_REQUEST,
            "give either \"text\" or \"texts\", not both",
        )
        .into(),
        (None, None) => json_error(
            StatusCode::BAD_REQUEST,
            "missing field \"text\" (a string), or \"texts\" (an array of strings)",
        )
        .into(),
    }
}

fn predict_batch(
    state: &HttpState,
    model: &ServingModel,
    texts: &[Cow<'_, str>],
    source: Option<&str>,
) -> Work {
    if texts.is_empty() {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "\"texts\" is empty").into();
    }
    if texts.len() > state.limits.max_batch_texts() {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "too many texts: {} (at most {})",
                texts.len(),
                state.limits.max_batch_texts()
            ),
        )
        .into();
    }
    for (i, t) in texts.iter().enumerate() {
        if let Err(message) = check_text(t, state.limits.max_text_chars(), &format!("texts[{i}]")) {
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, message).into();
        }
    }
    let off_worker = (texts.len() > INLINE_BATCH_TEXTS && state.inference.is_some())
        || (state.batcher.is_some() && model.classifier.prefers_batches());
    if off_worker {
        return Work::Pool {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            source: source.map(str::to_string),
            single: false,
        };
    }
    let refs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    let scored = state.containment.run(|| {
        for t in &refs {
            state.faults.on_text(t);
        }
        state
            .observations
            .predict_batch(model.classifier.as_ref(), &model.version, &refs)
    });
    match scored {
        Ok(predictions) if predictions.len() == refs.len() => {
            batch_answer(state, &predictions, &model.version, source).into()
        }
        _ => scoring_failed().into(),
    }
}

fn scoring_failed() -> HttpResponse {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while scoring; the error was logged",
    )
}

fn batch_answer(
    state: &HttpState,
    predictions: &[Prediction],
    version: &str,
    source: Option<&str>,
) -> HttpResponse {
    state
        .reputation
        .record(Channel::http, source, predictions.iter().map(|p| p.label));
    json_ok(&BatchBody {
        predictions: predictions
            .iter()
            .map(|p| PredictionBody::new(p, version))
            .collect(),
    })
}

/// 429 with `Retry-After`; `texts`: the batch's size, when it was parsed.
fn throttled(state: &HttpState, texts: Option<usize>) -> HttpResponse {
    let busy = state.inflight.load(Ordering::SeqCst);
    let this = texts.map_or(String::new(), |n| format!(" and this batch has {n}"));
    HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
        .insert_header(ContentType::json())
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .body(
            serde_json::json!({
                "error": format!(
                    "busy: {busy} texts are being scored{this} (limit: server.max_inflight_texts = {}); retry after {RETRY_AFTER_SECS} s",
                    state.limits.max_inflight_texts()
                )
            })
            .to_string(),
        )
}

/// Scores texts off the HTTP workers, within `max_inflight_texts`: small requests of a model
/// that prefers batches through the batcher, larger batches straight in the inference pool.
async fn score_in_pool(
    state: &HttpState,
    texts: Vec<String>,
    source: Option<&str>,
    single: bool,
) -> HttpResponse {
    let n = texts.len();
    let before = state.inflight.fetch_add(n, Ordering::SeqCst);
    let _inflight = Inflight { state, texts: n };
    if before + n > state.limits.max_inflight_texts() {
        return throttled(state, Some(n));
    }
    let batched = state.batcher.as_ref().filter(|_| n <= INLINE_BATCH_TEXTS);
    let reply: Result<ScoredChunk, BatchError> = match (batched, state.inference.as_ref()) {
        (Some(batcher), _) => match batcher.send(Enqueue { texts }).await {
            Ok(r) => r,
            Err(e) => Err(BatchError::Failed(e.to_string())),
        },
        (None, Some(pool)) => {
            let sent = pool
                .send(ScoreChunk {
                    texts: Arc::new(texts),
                    start: 0,
                    end: n,
                })
                .await;
            match sent {
                Ok(Ok(scored)) => Ok(scored),
                Ok(Err(InferenceError::NoModel)) => Err(BatchError::NoModel),
                Ok(Err(e)) => Err(BatchError::Failed(e.to_string())),
                Err(e) => Err(BatchError::Failed(e.to_string())),
            }
        }
        (None, None) => return scoring_failed(),
    };
    match reply {
        Ok(scored) if scored.results.len() == n => {
            let predictions: Result<Vec<Prediction>, String> = scored.results.into_iter().collect();
            match predictions {
                Ok(p) if single => {
                    state
                        .reputation
                        .record(Channel::http, source, p.iter().map(|p| p.label));
                    match p.first() {
                        Some(first) => json_ok(&PredictionBody::new(first, &scored.model_version)),
                        None => scoring_failed(),
                    }
                }
                Ok(p) => batch_answer(state, &p, &scored.model_version, source),
                Err(_) => scoring_failed(),
            }
        }
        Err(BatchError::NoModel) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet")
        }
        _ => scoring_failed(),
    }
}

fn check_text(text: &str, max_chars: usize, what: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    // Byte length bounds the char count from above, so most texts skip the count.
    if text.len() > max_chars {
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(format!(
                "{what} is too long: {chars} characters (at most {max_chars})"
            ));
        }
    }
    Ok(())
}

fn json_ok<T: Serialize>(value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => HttpResponse::Ok()
            .insert_header(ContentType::json())
            .body(body),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        ),
    }
}

/// Checks a JSON request's body and content type (`/predict`, `/feedback`,
/// `/admin/promote`); `Err` is the response to send.
fn json_body(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    limit: usize,
) -> Result<web::Bytes, Box<HttpResponse>> {
    let body = body
        .map_err(|e| {
            let status = e.as_response_error().status_code();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                json_error(
                    status,
                    format!("request body is larger than the limit of {limit} bytes"),
                )
            } else {
                json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            }
        })
        .map_err(Box::new)?;
    content_type_ok(req)
        .map_err(|m| Box::new(json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, m)))?;
    Ok(body)
}

/// One labelled text.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FeedbackItem {
    #[schema(value_type = crate::openapi::Text)]
    text: String,
    #[schema(value_type = crate::openapi::FeedbackLabel)]
    label: serde_json::Value,
    /// Where the text came from (a channel, a brand account).
    #[serde(default)]
    source: Option<String>,
}

/// One labelled text, or `items` (at most `server.max_batch_texts`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum FeedbackRequest {
    Many {
        #[schema(min_items = 1)]
        items: Vec<FeedbackItem>,
    },
    One(FeedbackItem),
}

/// `POST /feedback {"text", "label"[, "source"]}` or `{"items": [...]}`: labelled rows for
/// retraining. The rows are on disk (one immutable file per request) before the 200.
#[utoipa::path(post, path = "/feedback", tag = "feedback", security(("bearer" = [])),
    description = "Stores labelled texts for retraining; they are on disk before the answer. Needs the bearer token of `[feedback] token_file` (else of `[admin] token_file`).",
    request_body(content = FeedbackRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = crate::openapi::FeedbackStored),
        FeedbackAuthErrors,
        JsonBodyErrors,
        (status = 422, description = "A blank or too long text or source, a label that is not one of the three, an empty or too large `items`", body = ErrorBody),
        (status = 500, description = "The rows cannot be stored; the error was logged", body = ErrorBody),
        (status = 503, description = "The token file cannot be used since the last reload", body = ErrorBody)))]
async fn feedback(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let Some(token) = &state.feedback_token else {
        return json_error(
            StatusCode::NOT_FOUND,
            "feedback is disabled: set [feedback] token_file or [admin] token_file to enable it",
        );
    };
    if let Err(refused) = token.check(&req) {
        return *refused;
    }
    let body = match json_body(&req, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed: FeedbackRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"text\": string, \"label\": \"negative\"|\"neutral\"|\"positive\", \"source\"?: string}} or {{\"items\": [...]}}: {e}"
                ),
            );
        }
    };
    let items = match parsed {
        FeedbackRequest::One(i) => vec![i],
        FeedbackRequest::Many { items } => items,
    };
    if items.is_empty() {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "\"items\" is empty");
    }
    if items.len() > state.limits.max_batch_texts() {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "too many items: {} (at most {})",
                items.len(),
                state.limits.max_batch_texts()
            ),
        );
    }
    let arrived_at = chrono::Utc::now();
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let what = format!("items[{i}]");
        if let Err(m) = check_text(
            &item.text,
            state.limits.max_text_chars(),
            &format!("{what}.text"),
        ) {
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, m);
        }
        let label = match &item.label {
            serde_json::Value::String(s) => Label::parse(s),
            // 1.0 is the integer 1 to JSON (and JSON Schema) as much as 1 is.
            serde_json::Value::Number(n) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .and_then(|f| Label::from_index(f as usize)),
            _ => None,
        };
        let Some(label) = label else {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{what}.label must be negative, neutral or positive (or 0, 1, 2), got {}",
                    item.label
                ),
            );
        };
        if let Some(source) = &item.source
            && source.chars().count() > state.feedback_limits.max_source_chars
        {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{what}.source is longer than {} characters ([feedback] max_source_chars)",
                    state.feedback_limits.max_source_chars
                ),
            );
        }
        rows.push(sentimentd_data::labelled::LabelledRow {
            text: item.text,
            label,
            source: item.source.unwrap_or_default(),
            origin: "feedback".into(),
            line: i as u64 + 1,
            arrived_at: arrived_at.to_rfc3339(),
        });
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = sentimentd_data::labelled::file_name(
        &arrived_at.format("%Y%m%dT%H%M%S%.6fZ").to_string(),
        "feedback",
        &format!("{}-{seq}", std::process::id()),
    );
    let dir = state.labelled_dir.clone();
    let n = rows.len();
    let file = name.clone();
    let max_bytes = state.feedback_limits.max_store_bytes;
    let written = web::block(move || {
        let store = sentimentd_data::labelled::LabelledStore::open(&dir)?;
        let held = store.total_bytes()?;
        if held >= max_bytes {
            return Ok(Err(held));
        }
        store.write(&file, &rows).map(Ok)
    })
    .await;
    match written {
        Ok(Ok(Err(held))) => json_error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the labelled-data store holds {held} bytes, at its limit of {max_bytes} \
                 ([feedback] max_store_bytes); no more feedback is taken until there is room"
            ),
        ),
        Ok(Ok(Ok(_))) => {
            FeedbackReceived {
                rows: n,
                file: &name,
            }
            .emit(&state.metrics);
            HttpResponse::Ok().json(serde_json::json!({"stored": n, "file": name}))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store feedback");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the feedback; the error was logged",
            )
        }
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot store the feedback",
        ),
    }
}

#[utoipa::path(get, path = "/drift", tag = "drift",
    description = "The latest drift report.",
    responses(
        (status = 200, description = "The latest drift report", body = sentimentd_data::drift::DriftReport),
        (status = 404, description = "No drift check has run yet", body = ErrorBody)))]
async fn drift(state: web::Data<HttpState>) -> HttpResponse {
    match state.reports.load_full() {
        Some(r) => HttpResponse::Ok().json(&*r),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no drift check has run yet (see [drift] check_every_secs and check_every_samples)",
        ),
    }
}

#[utoipa::path(get, path = "/reputation", tag = "reputation",
    description = "Sentiment per source over time: totals, the negative share of each source's \
                   latest bucket, the trend per time bucket with spike tests, and the alerts. \
                   Busiest source first.",
    responses(
        (status = 200, description = "The per-source summary and trend",
            body = sentimentd_data::reputation::Report)))]
pub(crate) async fn reputation(state: web::Data<HttpState>) -> HttpResponse {
    json_ok(&state.reputation.report(crate::reputation::now_unix()))
}

#[utoipa::path(get, path = "/drift/report.html", tag = "drift",
    description = "The latest drift report as a self-contained HTML page.",
    responses(
        (status = 200, description = "The latest drift report", body = String, content_type = "text/html"),
        (status = 404, description = "No drift check has run yet", body = ErrorBody)))]
async fn drift_html(state: web::Data<HttpState>) -> HttpResponse {
    match state.reports.load_full() {
        Some(r) => HttpResponse::Ok()
            .insert_header(ContentType::html())
            .body(sentimentd_data::drift::render_html(&r)),
        None => json_error(StatusCode::NOT_FOUND, "no drift check has run yet"),
    }
}

/// The admin API, or the response that refuses the request: 404 when no token file is
/// configured (the API does not exist), 401 without the right bearer token.
fn admin<'a>(req: &HttpRequest, state: &'a HttpState) -> Result<&'a AdminApi, Box<HttpResponse>> {
    let Some(api) = &state.admin else {
        return Err(Box::new(json_error(
            StatusCode::NOT_FOUND,
            "the admin API is disabled (set [admin] token_file to enable it)",
        )));
    };
    api.token.check(req)?;
    Ok(api)
}

fn switched(r: Result<Result<Switched, String>, actix::MailboxError>) -> HttpResponse {
    match r {
        Ok(Ok(s)) => HttpResponse::Ok().json(s),
        Ok(Err(e)) => json_error(StatusCode::CONFLICT, e),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model registry unavailable: {e}"),
        ),
    }
}

#[utoipa::path(post, path = "/admin/retrain", tag = "admin", security(("bearer" = [])),
    description = "Starts a retrain in the background: a candidate trained on the base data and the labelled rows, promoted only if it passes the gate.",
    responses(
        (status = 202, description = "The retrain started", body = crate::openapi::RetrainStarted),
        AdminErrors,
        (status = 409, description = "The retrain cannot start (one is running, too few new labelled rows, retraining disabled)", body = ErrorBody),
        (status = 503, description = "The trainer is unavailable", body = ErrorBody)))]
async fn admin_retrain(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let api = match admin(&req, &state) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match api
        .retrain
        .send(Retrain {
            trigger: RetrainTrigger::Admin,
        })
        .await
    {
        Ok(Ok(m)) => HttpResponse::Accepted().json(serde_json::json!({"status": m})),
        Ok(Err(reason)) => json_error(StatusCode::CONFLICT, reason),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("trainer unavailable: {e}"),
        ),
    }
}

/// A version in the model store.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    version: String,
}

#[utoipa::path(post, path = "/admin/promote", tag = "admin", security(("bearer" = [])),
    description = "Serves a stored version.",
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses(SwitchResponses, AdminErrors, JsonBodyErrors))]
async fn admin_promote(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let api = match admin(&req, &state) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let body = match json_body(&req, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let r: PromoteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"version\": string}}: {e}"),
            );
        }
    };
    switched(
        api.promote
            .send(PromoteVersion {
                version: r.version,
                reason: "POST /admin/promote".into(),
            })
            .await,
    )
}

#[utoipa::path(post, path = "/admin/rollback", tag = "admin", security(("bearer" = [])),
    description = "Puts the previously served version back.",
    responses(SwitchResponses, AdminErrors))]
async fn admin_rollback(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let api = match admin(&req, &state) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    switched(
        api.rollback
            .send(Rollback {
                reason: "POST /admin/rollback".into(),
            })
            .await,
    )
}
