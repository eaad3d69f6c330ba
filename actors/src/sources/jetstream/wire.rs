//! What travels on the cluster's subjects, as JSON. `sentimentd publish` writes [`Input`]s.

use serde::{Deserialize, Serialize};

/// One input message, on `[cluster] input_subject`, published with `Nats-Msg-Id` = `id`.
#[derive(Debug, Deserialize, Serialize)]
pub struct Input {
    pub id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// A known label (`negative|neutral|positive` or `0|1|2`): the text also goes to the
    /// labelled store, like a labelled row of a batch file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
    /// `label`, parsed once when the message is decoded ([`Input::decode_label`]).
    #[serde(skip)]
    pub known: Option<sentimentd_data::Label>,
}

impl Input {
    /// Parses `label` into `known`; `Err` (the value, as sent) for one not understood.
    pub fn decode_label(&mut self) -> Result<(), String> {
        self.known = self.label()?;
        Ok(())
    }

    /// The label, if the message has one: `Ok(None)` without, `Err` (the value, as sent) for
    /// one not understood.
    pub fn label(&self) -> Result<Option<sentimentd_data::Label>, String> {
        let Some(value) = &self.label else {
            return Ok(None);
        };
        let label = match value {
            serde_json::Value::String(s) => sentimentd_data::Label::parse(s),
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|i| sentimentd_data::Label::from_index(i as usize)),
            serde_json::Value::Null => return Ok(None),
            _ => None,
        };
        label.map(Some).ok_or_else(|| value.to_string())
    }
}

/// One result, on `output_subject`, published with `Nats-Msg-Id` = the input's id.
#[derive(Debug, Serialize)]
pub struct Output<'a> {
    pub id: &'a str,
    pub label: &'static str,
    pub score: f32,
    /// Negative, neutral, positive.
    pub probabilities: [f32; 3],
    pub model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<&'a str>,
}

/// A refused message, on `rejected_subject`.
#[derive(Debug, Serialize)]
pub struct Rejected<'a> {
    pub id: Option<&'a str>,
    pub reason: &'a str,
    /// Deliveries of the message so far.
    pub delivered: i64,
    /// The message as it came (its first 4 KiB), so it can be mended and published again.
    pub payload: &'a str,
}
