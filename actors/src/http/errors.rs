//! The JSON answers every handler builds: [`ApiError`], one variant per status, answered as
//! `{"error": "..."}`; the mapping from the core's errors to it; and the checks of a
//! request's content type, body and texts that produce them.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::serving::scorer::ScoreError;

/// Every error the API answers with. The message says what was wrong with the request (or,
/// for a 5xx, that the error was logged).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InsufficientStorage(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// The answer: the status, and `{"error": message}`.
    pub fn response(&self) -> HttpResponse {
        json_error(self.status(), self.to_string())
    }
}

/// Why the scorer gave no predictions, as the API says it (a refused admission is answered
/// with `Retry-After` by `/predict` itself).
impl From<ScoreError> for ApiError {
    fn from(e: ScoreError) -> ApiError {
        match e {
            ScoreError::NoModel => ApiError::Unavailable(e.to_string()),
            ScoreError::Busy { .. } | ScoreError::Failed(_) => {
                ApiError::Internal("internal error while scoring; the error was logged".into())
            }
        }
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

/// JSON unless the client said otherwise; a missing header is accepted the way the Python
/// service accepted it.
pub(crate) fn content_type_ok(req: &HttpRequest) -> Result<(), String> {
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

pub(crate) fn check_text(text: &str, max_chars: usize, what: &str) -> Result<(), String> {
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

pub(crate) fn json_ok<T: Serialize>(value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => HttpResponse::Ok()
            .insert_header(ContentType::json())
            .body(body),
        Err(e) => ApiError::Internal(format!("cannot encode the response: {e}")).response(),
    }
}

/// Checks a JSON request's body and content type (`/predict`, `/feedback`,
/// `/admin/promote`); `Err` is the response to send.
pub(crate) fn json_body(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    limit: usize,
) -> Result<web::Bytes, Box<HttpResponse>> {
    let body = body
        .map_err(|e| {
            let status = e.as_response_error().status_code();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than the limit of {limit} bytes"
                ))
                .response()
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}")).response()
            }
        })
        .map_err(Box::new)?;
    content_type_ok(req).map_err(|m| Box::new(ApiError::UnsupportedMediaType(m).response()))?;
    Ok(body)
}

/// Whether `body` starts a JSON value other than an object (an array, string, number, `true`,
/// `false` or `null`). serde would also read a struct from a JSON array by position; only
/// objects are requests. Anything else is left to the parser's own error.
pub(crate) fn is_json_non_object(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&first| first == b'[' || first.is_ascii_digit() || b"\"tfn-".contains(&first))
}

/// [`json_body`] read as a `T`; a body that is not one is a 400 saying what was `expected`.
pub(crate) fn json_request<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    limit: usize,
    expected: &str,
) -> Result<T, Box<HttpResponse>> {
    let body = json_body(req, body, limit)?;
    if is_json_non_object(&body) {
        return Err(Box::new(
            ApiError::BadRequest(format!("expected a JSON object, {expected}")).response(),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| Box::new(ApiError::BadRequest(format!("expected {expected}: {e}")).response()))
}
