//! The JSON answers every handler builds: `{"error": "..."}` with a status, and the checks of
//! a request's content type, body and texts that produce them.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

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
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        ),
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
