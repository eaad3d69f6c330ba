//! The bodies of requests and answers, and the schemas the OpenAPI document gives them.

use sentimentd_data::Label;
use sentimentd_model::Prediction;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use utoipa::openapi::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Ref, RefOr, Schema, Type};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

/// The fields of a `/predict` request; `PredictInput` adds that exactly one of
/// `text` and `texts` is given.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PredictRequest<'a> {
    /// One text; null is as if absent.
    #[serde(borrow, default)]
    #[schema(value_type = Option<crate::http::types::Text>)]
    pub(crate) text: Option<Cow<'a, str>>,
    /// A batch of at most `server.max_batch_texts` texts, answered in input order; null is as
    /// if absent.
    #[serde(borrow, default)]
    #[schema(value_type = Option<Vec<crate::http::types::Text>>, min_items = 1)]
    pub(crate) texts: Option<Vec<Cow<'a, str>>>,
    /// Who or what the texts are about (a brand, channel, account): the reputation view's
    /// source (`GET /reputation`), cut to 100 characters. Absent, null or blank: `unknown`.
    #[serde(borrow, default)]
    #[schema(value_type = Option<String>)]
    pub(crate) source: Option<Cow<'a, str>>,
}

/// Calibrated class probabilities; they sum to 1.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Probabilities {
    #[schema(minimum = 0, maximum = 1)]
    pub(crate) negative: f32,
    #[schema(minimum = 0, maximum = 1)]
    pub(crate) neutral: f32,
    #[schema(minimum = 0, maximum = 1)]
    pub(crate) positive: f32,
}

/// The prediction for one text.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PredictionBody<'a> {
    #[schema(value_type = crate::http::types::LabelName)]
    pub(crate) label: &'static str,
    /// The probability of `label`.
    #[schema(minimum = 0, maximum = 1)]
    pub(crate) score: f32,
    pub(crate) probabilities: Probabilities,
    #[schema(value_type = String)]
    pub(crate) model_version: &'a str,
}

impl<'a> PredictionBody<'a> {
    pub(crate) fn new(p: &Prediction, model_version: &'a str) -> Self {
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

/// The predictions of a batch, in input order.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchBody<'a> {
    pub(crate) predictions: Vec<PredictionBody<'a>>,
}

/// One labelled text.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackItem {
    #[schema(value_type = crate::http::types::Text)]
    pub(crate) text: String,
    #[schema(value_type = crate::http::types::FeedbackLabel)]
    pub(crate) label: serde_json::Value,
    /// Where the text came from (a channel, a brand account).
    #[serde(default)]
    pub(crate) source: Option<String>,
}

/// One labelled text, or `items` (at most `server.max_batch_texts`). The schema of the
/// request; it is read as a [`FeedbackBody`], whose errors name the field.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
// Only the OpenAPI document reads it (utoipa takes `untagged` from serde's attributes).
#[allow(dead_code)]
pub(crate) enum FeedbackRequest {
    Many(FeedbackItems),
    One(FeedbackItem),
}

/// Several labelled texts, and nothing else.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct FeedbackItems {
    #[schema(min_items = 1)]
    items: Vec<FeedbackItem>,
}

/// A `/feedback` body as read: either form's fields, so a missing, unknown, duplicate or
/// mistyped field is named in the error (an untagged enum only says that no form matched),
/// and both forms at once can be refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackBody {
    pub(crate) text: Option<String>,
    pub(crate) label: Option<serde_json::Value>,
    pub(crate) source: Option<String>,
    /// Objects only (serde would read a struct from an array by position), and not null.
    #[serde(default, deserialize_with = "item_objects")]
    pub(crate) items: Option<Vec<FeedbackItem>>,
}

/// `items`, present: an array of objects.
fn item_objects<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<FeedbackItem>>, D::Error> {
    struct Object(FeedbackItem);
    impl<'de> Deserialize<'de> for Object {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = FeedbackItem;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object {\"text\", \"label\"[, \"source\"]}")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    map: A,
                ) -> Result<FeedbackItem, A::Error> {
                    // The derived reader, so unknown and duplicate fields are still refused.
                    FeedbackItem::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                }
            }
            d.deserialize_map(Visit).map(Object)
        }
    }
    let items: Vec<Object> = Vec::deserialize(d)?;
    Ok(Some(items.into_iter().map(|o| o.0).collect()))
}

/// A version in the model store.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
    pub(crate) version: String,
    /// Serve the version even if the gate rejected it (refused with 409 otherwise).
    #[serde(default)]
    pub(crate) force: bool,
}

/// Every error: 4xx and 5xx answers are JSON with this body.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// The errors of reading a JSON request body.
#[derive(IntoResponses)]
pub enum JsonBodyErrors {
    /// Malformed JSON, wrong types, a missing or extra field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The body is larger than `server.max_body_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A `Content-Type` other than JSON (a missing one is taken as JSON).
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

/// The refusals of the admin API.
#[derive(IntoResponses)]
pub enum AdminErrors {
    /// Missing or wrong bearer token.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// The admin API is disabled: no `[admin] token_file` is configured.
    #[response(status = 404)]
    Disabled(ErrorBody),
    /// The token file cannot be used (unreadable, open to others, no token) since the last
    /// reload; fix it and send SIGHUP.
    #[response(status = 503)]
    TokenUnusable(ErrorBody),
}

/// How `/feedback` refuses a request that is not allowed to store rows.
#[derive(IntoResponses)]
pub enum FeedbackAuthErrors {
    /// Missing or wrong bearer token.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody),
    /// Feedback is disabled: neither `[feedback] token_file` nor `[admin] token_file` is set.
    #[response(status = 404)]
    Disabled(ErrorBody),
    /// The labelled-data store is at `[feedback] max_store_bytes`.
    #[response(status = 507)]
    StoreFull(ErrorBody),
}

/// What `/admin/promote` and `/admin/rollback` answer (`http::switched`).
#[derive(IntoResponses)]
pub enum SwitchResponses {
    /// The version serves.
    #[response(status = 200)]
    Switched(crate::messages::Switched),
    /// The version does not exist or does not load, the gate rejected it (promote: without
    /// `force`), or there is no earlier one.
    #[response(status = 409)]
    Refused(ErrorBody),
    /// The model registry is unavailable.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `/health`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `/ready` while a model serves.
#[derive(ToSchema)]
pub struct Ready {
    /// Always true.
    pub ready: bool,
    pub model_version: String,
    pub kind: sentimentd_model::ModelKind,
    /// The lexicon fallback serves (no trained model).
    pub fallback: bool,
}

/// `/ready` before a model is loaded.
#[derive(ToSchema)]
pub struct NotReady {
    /// Always false.
    pub ready: bool,
    pub error: String,
}

/// A class.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LabelName {
    Negative,
    Neutral,
    Positive,
}

/// A label as `/feedback` takes it: a class name in any case or its id (0 negative, 1 neutral,
/// 2 positive), as a string or a number; spaces around a string are ignored.
pub struct FeedbackLabel;

impl PartialSchema for FeedbackLabel {
    fn schema() -> RefOr<Schema> {
        let any_case = |word: &str| -> String {
            word.chars()
                .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c))
                .collect()
        };
        let names: Vec<String> = ["negative", "neutral", "positive"]
            .iter()
            .map(|w| any_case(w))
            .collect();
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(format!(r"^\s*({}|[012])\s*$", names.join("|")))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(2)),
            )
            .description(Some(
                "negative, neutral or positive in any case, or 0, 1, 2 (string or number)",
            ))
            .into()
    }
}

impl ToSchema for FeedbackLabel {}

/// A text to score or learn from: not blank, at most `data.max_text_chars` characters.
pub struct Text;

impl PartialSchema for Text {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"\S"))
            .description(Some("Not blank; at most `data.max_text_chars` characters."))
            .into()
    }
}

impl ToSchema for Text {}

/// A `/predict` request: the fields of `PredictRequest`, exactly one of `text` and `texts`.
pub struct PredictInput;

pub(crate) type Fields = crate::http::types::PredictRequest<'static>;

impl PartialSchema for PredictInput {
    fn schema() -> RefOr<Schema> {
        // `field` given (not null), `other` absent or null.
        let only = |field: &str, given: Type, other: &str| {
            ObjectBuilder::new()
                .property(field, ObjectBuilder::new().schema_type(given))
                .required(field)
                .property(other, ObjectBuilder::new().schema_type(Type::Null))
        };
        AllOfBuilder::new()
            .item(Ref::from_schema_name(Fields::name()))
            .item(
                OneOfBuilder::new()
                    .item(only("text", Type::String, "texts"))
                    .item(only("texts", Type::Array, "text")),
            )
            .description(Some("One text (`text`) or a batch (`texts`), not both."))
            .into()
    }
}

impl ToSchema for PredictInput {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Fields::name().into(), Fields::schema()));
        Fields::schemas(schemas);
    }
}

/// `/predict`'s answer: one prediction for `text`, the batch's for `texts`.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only
pub(crate) enum PredictResponse<'a> {
    One(crate::http::types::PredictionBody<'a>),
    Batch(crate::http::types::BatchBody<'a>),
}

/// `/feedback`'s answer.
#[derive(ToSchema)]
pub struct FeedbackStored {
    /// Rows stored.
    pub stored: usize,
    /// The file they are in, under `[ingest] labelled_dir`.
    pub file: String,
}

/// `/admin/retrain`'s answer.
#[derive(ToSchema)]
pub struct RetrainStarted {
    /// What started.
    pub status: String,
}
