//! What the daemon knows, read-only: `/model`, `/metrics`, `/drift`, `/drift/report.html`,
//! `/reputation`.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};

use super::errors::*;
use super::state::*;
use super::types::*;

#[utoipa::path(get, path = "/model", tag = "model",
    description = "The serving model: version, kind, whether it is the lexicon fallback, metrics per split, what each part of its training data weighed, and the newest retrain candidates with the gate's decision.",
    responses(
        (status = 200, description = "The serving model", body = crate::serving::model_cell::ModelInfo),
        (status = 503, description = "No model is loaded yet", body = ErrorBody)))]
pub(crate) async fn model(state: web::Data<HttpState>) -> HttpResponse {
    let Some(m) = state.cell.load_full() else {
        return ApiError::Unavailable("no model is loaded yet".into()).response();
    };
    let store = state.model_store.clone();
    let candidates = web::block(move || crate::mlops::registry::recent_candidates(&store, 5))
        .await
        .unwrap_or_default();
    let mut info = m.info.clone();
    info.candidates = candidates;
    info.cluster = state.cluster_view();
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
pub(crate) async fn metrics(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
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
        Err(_) => ApiError::Internal("cannot encode the metrics".into()).response(),
    }
}

#[utoipa::path(get, path = "/drift", tag = "drift",
    description = "The latest drift report.",
    responses(
        (status = 200, description = "The latest drift report", body = sentimentd_data::drift::DriftReport),
        (status = 404, description = "No drift check has run yet", body = ErrorBody)))]
pub(crate) async fn drift(state: web::Data<HttpState>) -> HttpResponse {
    match state.reports.load_full() {
        Some(r) => HttpResponse::Ok().json(&*r),
        None => ApiError::NotFound(
            "no drift check has run yet (see [drift] check_every_secs and check_every_samples)"
                .into(),
        )
        .response(),
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
    json_ok(
        &state
            .reputation
            .report(crate::mlops::reputation::now_unix()),
    )
}

#[utoipa::path(get, path = "/drift/report.html", tag = "drift",
    description = "The latest drift report as a self-contained HTML page.",
    responses(
        (status = 200, description = "The latest drift report", body = String, content_type = "text/html"),
        (status = 404, description = "No drift check has run yet", body = ErrorBody)))]
pub(crate) async fn drift_html(state: web::Data<HttpState>) -> HttpResponse {
    match state.reports.load_full() {
        Some(r) => HttpResponse::Ok()
            .insert_header(ContentType::html())
            .body(sentimentd_tracking::report::drift_report_html(&r)),
        None => ApiError::NotFound("no drift check has run yet".into()).response(),
    }
}
