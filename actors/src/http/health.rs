//! `/health` and `/ready`: liveness and whether a model serves.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};

use super::state::*;

#[utoipa::path(get, path = "/health", tag = "health",
    description = "Liveness: 200 while the process is alive (also at `/healthz`).",
    responses((status = 200, description = "Alive", body = crate::http::types::Health)))]
pub(crate) async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}

#[utoipa::path(get, path = "/ready", tag = "health",
    description = "Readiness: 200 once a model answers, the lexicon fallback included (also at `/readyz`).",
    responses(
        (status = 200, description = "A model serves", body = crate::http::types::Ready),
        (status = 503, description = "No model is loaded yet", body = crate::http::types::NotReady)))]
pub(crate) async fn ready(state: web::Data<HttpState>) -> HttpResponse {
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
