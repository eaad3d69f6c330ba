//! The model that serves, published in a [`ModelCell`] that HTTP workers and inference
//! threads read without locks: a swap is one atomic pointer store, and in-flight predictions
//! finish on the model they started with. Only the registry stores into it.

use arc_swap::ArcSwapOption;
use sentimentd_model::{Classifier, Manifest, ModelParams};
use std::sync::Arc;

/// What `/model` and `/ready` report about the serving model.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub version: String,
    #[schema(value_type = sentimentd_model::ModelKind)]
    pub kind: &'static str,
    /// The lexicon fallback serves (no trained model).
    pub fallback: bool,
    /// Null for the fallback.
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    /// The version this one was retrained from.
    #[schema(required = true)]
    pub parent: Option<String>,
    /// Evaluation metrics per split (`selection`, `val`, ...); null for the fallback.
    #[schema(value_type = Option<Object>, required = true)]
    pub metrics: serde_json::Value,
    #[schema(format = DateTime)]
    pub loaded_at: String,
    /// What each part of the training data weighed (`parts`: `base` and, for a retrain,
    /// `recent`: rows, row weight, share of the training weight); null for the fallback and
    /// versions trained before rows were weighed.
    #[schema(value_type = Option<Object>, required = true)]
    pub weighting: Option<serde_json::Value>,
    /// The transformer kind's training recipe and how it was chosen (`choice`: `auto` within
    /// `budget_secs`, or `configured`), with the estimate of every recipe considered and the
    /// seconds the run took; null for other kinds and older versions.
    #[schema(value_type = Option<Object>, required = true)]
    pub recipe: Option<serde_json::Value>,
    /// The newest retrain candidates, newest first: what they weighed and why the gate
    /// promoted or rejected them. Filled in by `GET /model`.
    pub candidates: Vec<CandidateSummary>,
    /// This node's role: `{"role": "standalone"}`, or in a cluster `leader` (with its `node`
    /// and fencing `token`) or `follower` (with its `node` and the `leader`, if known), and
    /// `lag`: input messages no node has taken
    /// yet, as this node last saw it. Only the leader trains and switches models. Filled in by
    /// `GET /model`.
    #[schema(value_type = Object)]
    pub cluster: serde_json::Value,
}

/// One retrain candidate and the gate's decision on it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CandidateSummary {
    pub version: String,
    #[schema(format = DateTime)]
    pub decided_at: String,
    /// `promoted`, `rejected` or `promotion_failed`.
    pub status: String,
    /// Every gate rule with PASS or FAIL, joined by `; `.
    pub reason: String,
    /// The serving version it was compared with.
    #[schema(required = true)]
    pub against: Option<String>,
    /// As `ModelInfo.weighting`, for this candidate.
    #[schema(value_type = Option<Object>, required = true)]
    pub weighting: Option<serde_json::Value>,
    /// Candidate and serving macro-recall on the gate sets (`validation`, `recent_holdout`),
    /// and the recent holdout's rows by origin (`recent_holdout.origins`).
    #[schema(value_type = Object)]
    pub gate_sets: serde_json::Value,
}

pub struct ServingModel {
    pub classifier: Arc<dyn Classifier>,
    pub info: ModelInfo,
    /// `info.version` shared cheaply with every scored row.
    pub version: Arc<str>,
}

impl ServingModel {
    pub fn new(classifier: Arc<dyn Classifier>, manifest: Option<&Manifest>) -> ServingModel {
        let version = classifier.version().to_string();
        let info = ModelInfo {
            version: version.clone(),
            kind: classifier.kind().as_str(),
            fallback: classifier.is_fallback(),
            created_at: manifest.map(|m| m.created_at.clone()),
            parent: manifest.and_then(|m| m.parent.clone()),
            metrics: manifest
                .and_then(|m| serde_json::to_value(&m.metrics).ok())
                .unwrap_or(serde_json::Value::Null),
            loaded_at: chrono::Utc::now().to_rfc3339(),
            weighting: manifest
                .and_then(|m| m.weighting.as_ref())
                .and_then(|w| serde_json::to_value(w).ok()),
            recipe: manifest
                .and_then(|m| match &m.params {
                    ModelParams::Transformer(t) => t.recipe.as_ref(),
                    _ => None,
                })
                .and_then(|r| serde_json::to_value(r).ok()),
            candidates: Vec::new(),
            cluster: serde_json::Value::Null,
        };
        ServingModel {
            classifier,
            info,
            version: Arc::from(version),
        }
    }
}

/// The serving model, `None` until the registry has loaded one.
pub type ModelCell = Arc<ArcSwapOption<ServingModel>>;

pub fn new_model_cell() -> ModelCell {
    Arc::new(ArcSwapOption::empty())
}
