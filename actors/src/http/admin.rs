//! The admin API: `/admin/retrain`, `/admin/promote`, `/admin/rollback`, behind a bearer
//! token.

use crate::messages::{PromoteVersion, Retrain, RetrainTrigger, Rollback, Switched};
use actix_web::{HttpRequest, HttpResponse, web};

use super::errors::*;
use super::state::*;
use super::types::*;

/// The admin API, or the response that refuses the request: 404 when no token file is
/// configured (the API does not exist), 401 without the right bearer token.
pub(crate) fn admin<'a>(
    req: &HttpRequest,
    state: &'a HttpState,
) -> Result<&'a AdminApi, Box<HttpResponse>> {
    let Some(api) = &state.admin else {
        return Err(Box::new(
            ApiError::NotFound(
                "the admin API is disabled (set [admin] token_file to enable it)".into(),
            )
            .response(),
        ));
    };
    api.token.check(req)?;
    Ok(api)
}

pub(crate) fn switched(r: Result<Result<Switched, String>, actix::MailboxError>) -> HttpResponse {
    match r {
        Ok(Ok(s)) => HttpResponse::Ok().json(s),
        Ok(Err(e)) => ApiError::Conflict(e).response(),
        Err(e) => ApiError::Unavailable(format!("model registry unavailable: {e}")).response(),
    }
}

#[utoipa::path(post, path = "/admin/retrain", tag = "admin", security(("bearer" = [])),
    description = "Starts a retrain in the background: a candidate trained on the base data and the labelled rows, promoted only if it passes the gate.",
    responses(
        (status = 202, description = "The retrain started", body = crate::http::types::RetrainStarted),
        AdminErrors,
        (status = 409, description = "The retrain cannot start (one is running, too few new labelled rows, retraining disabled)", body = ErrorBody),
        (status = 503, description = "The trainer is unavailable", body = ErrorBody)))]
pub(crate) async fn admin_retrain(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
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
        Ok(Err(reason)) => ApiError::Conflict(reason).response(),
        Err(e) => ApiError::Unavailable(format!("trainer unavailable: {e}")).response(),
    }
}

#[utoipa::path(post, path = "/admin/promote", tag = "admin", security(("bearer" = [])),
    description = "Serves a stored version.",
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses(SwitchResponses, AdminErrors, JsonBodyErrors))]
pub(crate) async fn admin_promote(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let api = match admin(&req, &state) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let expected = r#"{"version": string, "force"?: boolean}"#;
    let r: PromoteRequest = match json_request(&req, body, state.max_body_bytes, expected) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    switched(
        api.promote
            .send(PromoteVersion {
                version: r.version,
                reason: "POST /admin/promote".into(),
                force: r.force,
            })
            .await,
    )
}

#[utoipa::path(post, path = "/admin/rollback", tag = "admin", security(("bearer" = [])),
    description = "Puts the previously served version back.",
    responses(SwitchResponses, AdminErrors))]
pub(crate) async fn admin_rollback(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
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
