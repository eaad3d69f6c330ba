//! `POST /predict`: one text or a batch, through the [`Scorer`](crate::serving::scorer::Scorer),
//! which chooses where they are scored.

use crate::serving::model_cell::ServingModel;
use crate::serving::scorer::{Route, ScoreError};
use crate::telemetry::metrics::{Channel, RequestOutcome};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use sentimentd_model::Prediction;
use std::borrow::Cow;
use std::time::Instant;

use super::errors::*;
use super::state::*;
use super::types::*;

/// What `/predict` does with a request: answered on the worker, or texts scored elsewhere.
pub(crate) enum Work {
    Done(HttpResponse),
    Routed {
        route: Route,
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

pub(crate) fn predict_inner(
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
        && state.scorer.has_pool()
        && state.scorer.inflight_texts() >= state.scorer.max_inflight_texts()
    {
        return Work::Done(throttled(state));
    }
    if is_json_non_object(&body) {
        return ApiError::BadRequest(
            "wrong type in request: expected a JSON object with \"text\" or \"texts\"".into(),
        )
        .response()
        .into();
    }
    let request: PredictRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Data => "wrong type in request",
                _ => "malformed JSON",
            };
            return ApiError::BadRequest(format!("{what}: {e}"))
                .response()
                .into();
        }
    };
    // A guard, not an `Arc` clone: no reference-count traffic shared by all workers.
    let guard = state.cell.load();
    let Some(model) = guard.as_deref() else {
        return ApiError::from(ScoreError::NoModel).response().into();
    };
    let source = request.source.as_deref();
    match (request.text, request.texts) {
        (Some(text), None) => {
            if let Err(message) = check_text(&text, state.limits.max_text_chars(), "text") {
                return ApiError::Unprocessable(message).response().into();
            }
            let route = state.scorer.route(model, 1);
            if route != Route::Inline {
                return Work::Routed {
                    route,
                    texts: vec![text.into_owned()],
                    source: source.map(str::to_string),
                    single: true,
                };
            }
            match state.scorer.score_one(model, &text) {
                Ok(p) => {
                    state.scorer.record(Channel::http, source, [p.label]);
                    json_ok(&PredictionBody::new(&p, &model.version)).into()
                }
                Err(e) => ApiError::from(e).response().into(),
            }
        }
        (None, Some(texts)) => predict_batch(state, model, &texts, source),
        (Some(_), Some(_)) => {
            ApiError::BadRequest("give either \"text\" or \"texts\", not both".into())
                .response()
                .into()
        }
        (None, None) => ApiError::BadRequest(
            "missing field \"text\" (a string), or \"texts\" (an array of strings)".into(),
        )
        .response()
        .into(),
    }
}

pub(crate) fn predict_batch(
    state: &HttpState,
    model: &ServingModel,
    texts: &[Cow<'_, str>],
    source: Option<&str>,
) -> Work {
    if texts.is_empty() {
        return ApiError::Unprocessable("\"texts\" is empty".into())
            .response()
            .into();
    }
    if texts.len() > state.limits.max_batch_texts() {
        return ApiError::Unprocessable(format!(
            "too many texts: {} (at most {})",
            texts.len(),
            state.limits.max_batch_texts()
        ))
        .response()
        .into();
    }
    for (i, t) in texts.iter().enumerate() {
        if let Err(message) = check_text(t, state.limits.max_text_chars(), &format!("texts[{i}]")) {
            return ApiError::Unprocessable(message).response().into();
        }
    }
    let route = state.scorer.route(model, texts.len());
    if route != Route::Inline {
        return Work::Routed {
            route,
            texts: texts.iter().map(|t| t.to_string()).collect(),
            source: source.map(str::to_string),
            single: false,
        };
    }
    let refs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
    match state.scorer.score_inline(model, &refs) {
        Ok(predictions) => batch_answer(state, &predictions, &model.version, source).into(),
        Err(e) => ApiError::from(e).response().into(),
    }
}

pub(crate) fn batch_answer(
    state: &HttpState,
    predictions: &[Prediction],
    version: &str,
    source: Option<&str>,
) -> HttpResponse {
    state
        .scorer
        .record(Channel::http, source, predictions.iter().map(|p| p.label));
    json_ok(&BatchBody {
        predictions: predictions
            .iter()
            .map(|p| PredictionBody::new(p, version))
            .collect(),
    })
}

/// 429 with `Retry-After`, before the body is parsed.
pub(crate) fn throttled(state: &HttpState) -> HttpResponse {
    too_busy(
        state.scorer.inflight_texts(),
        None,
        state.scorer.max_inflight_texts(),
    )
}

/// 429 with `Retry-After`; `texts`: the batch's size, when it was parsed.
fn too_busy(busy: usize, texts: Option<usize>, limit: usize) -> HttpResponse {
    let this = texts.map_or(String::new(), |n| format!(" and this batch has {n}"));
    HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
        .insert_header(ContentType::json())
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .body(
            serde_json::json!({
                "error": format!(
                    "busy: {busy} texts are being scored{this} (limit: server.max_inflight_texts = {limit}); retry after {RETRY_AFTER_SECS} s"
                )
            })
            .to_string(),
        )
}

/// Scores texts where the scorer routed them (the batcher or the inference pool).
pub(crate) async fn score_routed(
    state: &HttpState,
    route: Route,
    texts: Vec<String>,
    source: Option<&str>,
    single: bool,
) -> HttpResponse {
    match state.scorer.score_routed(route, texts).await {
        Ok(scored) if single => {
            state.scorer.record(
                Channel::http,
                source,
                scored.predictions.iter().map(|p| p.label),
            );
            match scored.predictions.first() {
                Some(first) => json_ok(&PredictionBody::new(first, &scored.version)),
                None => ApiError::from(ScoreError::Failed("no prediction".into())).response(),
            }
        }
        Ok(scored) => batch_answer(state, &scored.predictions, &scored.version, source),
        Err(ScoreError::Busy { busy, texts, limit }) => too_busy(busy, Some(texts), limit),
        Err(e) => ApiError::from(e).response(),
    }
}

#[utoipa::path(post, path = "/predict", tag = "predict",
    description = "Scores one text or a batch.",
    request_body(content = crate::http::types::PredictInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The prediction, or the batch's predictions", body = crate::http::types::PredictResponse),
        JsonBodyErrors,
        (status = 422, description = "A blank or too long text, an empty or too large batch", body = ErrorBody),
        (status = 429, description = "Too many texts of batches are being scored (`server.max_inflight_texts`)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 500, description = "Scoring failed; the error was logged", body = ErrorBody),
        (status = 503, description = "No model is loaded yet", body = ErrorBody)))]
pub(crate) async fn predict(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let started = Instant::now();
    let response = match predict_inner(&req, body, &state) {
        Work::Done(r) => r,
        Work::Routed {
            route,
            texts,
            source,
            single,
        } => score_routed(&state, route, texts, source.as_deref(), single).await,
    };
    let outcome = match response.status().as_u16() {
        200..=399 => RequestOutcome::ok,
        429 => RequestOutcome::throttled,
        400..=499 => RequestOutcome::client_error,
        _ => RequestOutcome::server_error,
    };
    state.metrics.serving.request(outcome);
    state
        .metrics
        .serving
        .latency
        .observe(started.elapsed().as_secs_f64());
    response
}
