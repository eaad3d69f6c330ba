//! HTTP ingestion (actix-web): `/predict`, `/feedback`, `/health`, `/ready`, `/model`,
//! `/metrics`, `/drift`, and the admin API (`/admin/retrain`, `/admin/promote`,
//! `/admin/rollback`, bearer token from `[admin] token_file`). Each handler's
//! `#[utoipa::path]` documents it in `GET /openapi.json` (see `openapi.rs`).
//!
//! `/predict` is the hot path. It scores through the [`Scorer`], which reads the serving model
//! from the lock-free model cell and scores one text or a few on the HTTP worker (a mailbox
//! round-trip would cost more than scoring one short text). Larger batches go to the inference
//! pool, off the HTTP workers, so a flood of them cannot starve `/health` or single texts; at
//! most `server.max_inflight_texts` of their texts are in flight, and a batch beyond that gets
//! 429 with `Retry-After`.
//!
//! [`Scorer`]: crate::serving::scorer::Scorer
//!
//! Every error is JSON `{"error": "..."}` and bad input never yields a 500.

mod admin;
mod errors;
mod feedback;
mod health;
pub mod openapi;
mod predict;
mod reports;
pub mod state;
pub mod status_page;
pub mod types;

pub use crate::serving::scorer::INLINE_BATCH_TEXTS;
pub use errors::json_error;
pub use state::{AdminApi, HttpState, Limits, TokenFile};

use actix_web::http::header::{self};
use actix_web::{HttpRequest, HttpResponse, web};

use self::admin::{admin_promote, admin_retrain, admin_rollback};
use self::errors::ApiError;
use self::feedback::feedback;
use self::health::{health, ready};
use self::predict::predict;
use self::reports::{drift, drift_html, metrics, model, reputation};

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
                    .route(get().to(health))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource(["/ready", "/readyz"])
                    .route(get().to(ready))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/model")
                    .route(get().to(model))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/metrics")
                    .route(get().to(metrics))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/feedback")
                    .route(web::post().to(feedback))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/drift")
                    .route(get().to(drift))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/")
                    .route(get().to(status_page::page))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/reputation")
                    .route(get().to(reputation))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/drift/report.html")
                    .route(get().to(drift_html))
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
                    .route(get().to(openapi::openapi_json))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found));
    }
}

/// GET, and HEAD with it: RFC 9110 wants HEAD wherever GET is, and uptime checks and load
/// balancers probe with it (actix sends a HEAD answer's headers without its body).
fn get() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!("no such endpoint: {} {}", req.method(), req.path())).response()
}

/// 405 with the `Allow` header RFC 9110 requires: the path's documented methods.
async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut response = ApiError::MethodNotAllowed(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.path()
    ))
    .response();
    if let Some(allow) = crate::http::openapi::allowed_methods(req.path()) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}
