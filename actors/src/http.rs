//! HTTP ingestion (actix-web): `/predict`, `/health`, `/ready`, `/model`, `/metrics`.
//!
//! `/predict` is the hot path: the handler reads the serving model from the lock-free
//! [`ModelCell`] and records metrics with atomic counters, instead of a mailbox round-trip to
//! the inference pool, which would cost more than scoring one short text. Batch files go
//! through the inference actors; requests are small enough to score where they land.
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
use std::time::Instant;

use crate::metrics::{Metrics, RequestOutcome, Source};
use crate::model_registry::{ModelCell, ServingModel};
use crate::supervisor::{Containment, Faults};

pub struct HttpState {
    pub cell: ModelCell,
    pub metrics: Arc<Metrics>,
    pub containment: Containment,
    pub faults: Faults,
    pub max_text_chars: usize,
    pub max_batch_texts: usize,
    pub max_body_bytes: usize,
}

impl HttpState {
    pub fn new(
        cfg: &sentimentd_config::Config,
        cell: ModelCell,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> HttpState {
        HttpState {
            cell,
            containment: Containment::new("http", metrics.clone()),
            metrics,
            faults,
            max_text_chars: cfg.data.max_text_chars,
            max_batch_texts: cfg.server.max_batch_texts,
            max_body_bytes: cfg.server.max_body_bytes,
        }
    }
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

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {}", req.method(), req.path()),
    )
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}

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

async fn model(state: web::Data<HttpState>) -> HttpResponse {
    match state.cell.load_full() {
        Some(m) => HttpResponse::Ok().json(&m.info),
        None => json_error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet"),
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    match state.metrics.render() {
        Ok(text) => HttpResponse::Ok()
            .insert_header((
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
            .body(text),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}

#[derive(Deserialize)]
struct PredictRequest<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    texts: Option<Vec<Cow<'a, str>>>,
}

#[derive(Serialize)]
struct Probabilities {
    negative: f32,
    neutral: f32,
    positive: f32,
}

#[derive(Serialize)]
struct PredictionBody<'a> {
    label: &'static str,
    score: f32,
    probabilities: Probabilities,
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

#[derive(Serialize)]
struct BatchBody<'a> {
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

async fn predict(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let started = Instant::now();
    let response = predict_inner(&req, body, &state);
    let outcome = match response.status().as_u16() {
        200..=399 => RequestOutcome::ok,
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

fn predict_inner(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: &HttpState,
) -> HttpResponse {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.as_response_error().status_code();
            return if status == StatusCode::PAYLOAD_TOO_LARGE {
                json_error(
                    status,
                    format!(
                        "request body is larger than the limit of {} bytes",
                        state.max_body_bytes
                    ),
                )
            } else {
                json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            };
        }
    };
    if let Err(message) = content_type_ok(req) {
        return json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
    }
    // serde would also read a struct from a JSON array by position; only objects are requests.
    if let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace())
        && *first != b'{'
        && (*first == b'[' || first.is_ascii_digit() || b"\"tfn-".contains(first))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "wrong type in request: expected a JSON object with \"text\" or \"texts\"",
        );
    }
    let request: PredictRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Data => "wrong type in request",
                _ => "malformed JSON",
            };
            return json_error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
        }
    };
    // A guard, not an `Arc` clone: no reference-count traffic shared by all workers.
    let guard = state.cell.load();
    let Some(model) = guard.as_deref() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet");
    };
    match (request.text, request.texts) {
        (Some(text), None) => {
            if let Err(message) = check_text(&text, state.max_text_chars, "text") {
                return json_error(StatusCode::UNPROCESSABLE_ENTITY, message);
            }
            let scored = state.containment.run(|| {
                state.faults.on_text(&text);
                model.classifier.predict(&text)
            });
            match scored {
                Ok(p) => {
                    state.metrics.prediction(Source::http, p.label);
                    json_ok(&PredictionBody::new(&p, &model.version))
                }
                Err(_) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error while scoring; the error was logged",
                ),
            }
        }
        (None, Some(texts)) => predict_batch(state, model, &texts),
        (Some(_), Some(_)) => json_error(
            StatusCode::BAD_REQUEST,
            "give either \"text\" or \"texts\", not both",
        ),
        (None, None) => json_error(
            StatusCode::BAD_REQUEST,
            "missing field \"text\" (a string), or \"texts\" (an array of strings)",
        ),
    }
}

fn predict_batch(state: &HttpState, model: &ServingModel, texts: &[Cow<'_, str>]) -> HttpResponse {
    if texts.is_empty() {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "\"texts\" is empty");
    }
    if texts.len() > state.max_batch_texts {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "too many texts: {} (at most {})",
                texts.len(),
                state.max_batch_texts
            ),
        );
    }
    for (i, t) in texts.iter().enumerate() {
        if let Err(message) = check_text(t, state.max_text_chars, &format!("texts[{i}]")) {
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, message);
        }
    }
    let refs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    let scored = state.containment.run(|| {
        for t in &refs {
            state.faults.on_text(t);
        }
        model.classifier.predict_batch(&refs)
    });
    match scored {
        Ok(predictions) if predictions.len() == refs.len() => {
            let mut counts = [0u64; 3];
            for p in &predictions {
                counts[p.label.index()] += 1;
            }
            state.metrics.predictions_by_label(Source::http, counts);
            json_ok(&BatchBody {
                predictions: predictions
                    .iter()
                    .map(|p| PredictionBody::new(p, &model.version))
                    .collect(),
            })
        }
        _ => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while scoring; the error was logged",
        ),
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
