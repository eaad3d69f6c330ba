//! `POST /feedback`: labelled rows for retraining, stored before the answer.

use crate::telemetry::events::{FeedbackReceived, InternalEvent};
use actix_web::{HttpRequest, HttpResponse, web};
use sentimentd_data::Label;

use super::errors::*;
use super::state::*;
use super::types::*;

/// `POST /feedback {"text", "label"[, "source"]}` or `{"items": [...]}`: labelled rows for
/// retraining. The rows are on disk (one immutable file per request) before the 200.
#[utoipa::path(post, path = "/feedback", tag = "feedback", security(("bearer" = [])),
    description = "Stores labelled texts for retraining; they are on disk before the answer. Needs the bearer token of `[feedback] token_file` (else of `[admin] token_file`).",
    request_body(content = FeedbackRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = crate::http::types::FeedbackStored),
        FeedbackAuthErrors,
        JsonBodyErrors,
        (status = 422, description = "A blank or too long text or source, a label that is not one of the three, an empty or too large `items`", body = ErrorBody),
        (status = 500, description = "The rows cannot be stored; the error was logged", body = ErrorBody),
        (status = 503, description = "The token file cannot be used since the last reload", body = ErrorBody)))]
pub(crate) async fn feedback(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    let Some(token) = &state.feedback_token else {
        return ApiError::NotFound(
            "feedback is disabled: set [feedback] token_file or [admin] token_file to enable it"
                .into(),
        )
        .response();
    };
    if let Err(refused) = token.check(&req) {
        return *refused;
    }
    let expected = r#"{"text": string, "label": "negative"|"neutral"|"positive", "source"?: string} or {"items": [...]}"#;
    let parsed: FeedbackBody = match json_request(&req, body, state.max_body_bytes, expected) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let bad = |m: &str| ApiError::BadRequest(format!("{m}; expected {expected}")).response();
    // Errors name a row's fields as the client sent them: `text`, or `items[3].text`.
    let (items, batch) = match parsed {
        FeedbackBody {
            items: Some(items),
            text: None,
            label: None,
            source: None,
        } => (items, true),
        FeedbackBody { items: Some(_), .. } => {
            return bad("give either \"text\" and \"label\" or \"items\", not both");
        }
        FeedbackBody {
            text: Some(text),
            label: Some(label),
            source,
            items: None,
        } => (
            vec![FeedbackItem {
                text,
                label,
                source,
            }],
            false,
        ),
        FeedbackBody { text: None, .. } => return bad("missing field `text`"),
        FeedbackBody { label: None, .. } => return bad("missing field `label`"),
    };
    if items.is_empty() {
        return ApiError::Unprocessable("\"items\" is empty".into()).response();
    }
    if items.len() > state.limits.max_batch_texts() {
        return ApiError::Unprocessable(format!(
            "too many items: {} (at most {})",
            items.len(),
            state.limits.max_batch_texts()
        ))
        .response();
    }
    let arrived_at = chrono::Utc::now();
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = |name: &str| {
            if batch {
                format!("items[{i}].{name}")
            } else {
                name.to_string()
            }
        };
        if let Err(m) = check_text(&item.text, state.limits.max_text_chars(), &field("text")) {
            return ApiError::Unprocessable(m).response();
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
            return ApiError::Unprocessable(format!(
                "{} must be negative, neutral or positive (or 0, 1, 2), got {}",
                field("label"),
                item.label
            ))
            .response();
        };
        if let Some(source) = &item.source
            && source.chars().count() > state.feedback_limits.max_source_chars
        {
            return ApiError::Unprocessable(format!(
                "{} is longer than {} characters ([feedback] max_source_chars)",
                field("source"),
                state.feedback_limits.max_source_chars
            ))
            .response();
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
    let name = sentimentd_data::labelled::unique_file_name(arrived_at, "feedback");
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
        Ok(Ok(Err(held))) => ApiError::InsufficientStorage(format!(
            "the labelled-data store holds {held} bytes, at its limit of {max_bytes} \
                 ([feedback] max_store_bytes); no more feedback is taken until there is room: \
                 retention trims the store to [ingest] labelled_max_bytes every hour"
        ))
        .response(),
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
            ApiError::Internal("cannot store the feedback; the error was logged".into()).response()
        }
        Err(_) => ApiError::Internal("cannot store the feedback".into()).response(),
    }
}
