//! `POST /predict`: one text or a batch, scored on the worker, in the pool or the batcher.

use crate::messages::{BatchError, Enqueue, InferenceError, ScoreChunk, ScoredChunk};
use crate::serving::model_cell::ServingModel;
use crate::telemetry::metrics::{Channel, RequestOutcome};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use sentimentd_model::Prediction;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::errors::*;
use super::state::*;
use super::types::*;

/// What `/predict` does with a request: answered on the worker, or texts for the pool.
pub(crate) enum Work {
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

pub(crate) fn predict_batch(
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

pub(crate) fn scoring_failed() -> HttpResponse {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while scoring; the error was logged",
    )
}

pub(crate) fn batch_answer(
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
pub(crate) fn throttled(state: &HttpState, texts: Option<usize>) -> HttpResponse {
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
pub(crate) async fn score_in_pool(
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
