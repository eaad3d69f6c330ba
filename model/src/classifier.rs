//! The one interface every model kind serves through, so callers never branch on the kind.

use sentimentd_data::Label;
use serde::{Deserialize, Serialize};

/// What a model says about one text.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: Label,
    /// Probability of `label` (the largest of the three).
    pub score: f32,
    /// Probabilities in `Label::ALL` order: negative, neutral, positive.
    pub probabilities: [f32; 3],
}

impl Prediction {
    pub fn from_probabilities(probabilities: [f32; 3]) -> Prediction {
        let mut best = 0;
        for i in 1..3 {
            if probabilities[i] > probabilities[best] {
                best = i;
            }
        }
        Prediction {
            label: Label::from_index(best).unwrap_or(Label::Neutral),
            score: probabilities[best],
            probabilities,
        }
    }
}

/// The kind of a model; `lexicon` is the fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// fastText-style classifier trained in burn.
    Fast,
    /// Pretrained MiniLM encoder with a trained head.
    Transformer,
    /// VADER-style lexicon rules: the fallback when no trained model exists.
    Lexicon,
}

impl From<sentimentd_config::TrainableKind> for ModelKind {
    fn from(k: sentimentd_config::TrainableKind) -> ModelKind {
        match k {
            sentimentd_config::TrainableKind::Fast => ModelKind::Fast,
            sentimentd_config::TrainableKind::Transformer => ModelKind::Transformer,
        }
    }
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Fast => "fast",
            ModelKind::Transformer => "transformer",
            ModelKind::Lexicon => "lexicon",
        }
    }
}

/// A prediction plus what drift detection records about the text, from one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub prediction: Prediction,
    /// The sentence embedding (the fast model's mean-pooled vector); `None` for kinds without.
    pub embedding: Option<Vec<f32>>,
    /// Share of the text's words that are not whole entries of the model's vocabulary;
    /// `None` for kinds without a vocabulary.
    pub oov_share: Option<f32>,
}

/// A loaded, ready-to-serve model. Implementations are immutable after loading, so one
/// instance can be shared by many threads behind an `Arc`.
pub trait Classifier: Send + Sync {
    /// Version string of the model store entry, or a fixed name for the fallback.
    fn version(&self) -> &str;
    fn kind(&self) -> ModelKind;
    /// True for the lexicon fallback that answers while no trained model exists.
    fn is_fallback(&self) -> bool {
        self.kind() == ModelKind::Lexicon
    }
    fn predict(&self, text: &str) -> Prediction;
    /// True for models that score many texts at once much faster than one by one (the
    /// transformer): the server then gathers concurrent requests into batches.
    fn prefers_batches(&self) -> bool {
        false
    }
    fn predict_batch(&self, texts: &[&str]) -> Vec<Prediction> {
        texts.iter().map(|t| self.predict(t)).collect()
    }
    /// Sentence embedding used for drift detection; `None` for kinds that have none.
    fn embed(&self, _text: &str) -> Option<Vec<f32>> {
        None
    }
    /// The prediction with the embedding and vocabulary coverage, in one pass over the text.
    fn analyse(&self, text: &str) -> Analysis {
        Analysis {
            prediction: self.predict(text),
            embedding: self.embed(text),
            oov_share: None,
        }
    }
    fn analyse_batch(&self, texts: &[&str]) -> Vec<Analysis> {
        texts.iter().map(|t| self.analyse(t)).collect()
    }
    /// What a student is distilled from: the model's own probabilities, without a partner
    /// trained on the same rows (the transformer's fast model has nearly learnt its training
    /// texts' labels, and would only echo them back as targets).
    fn teaching_probabilities(
        &self,
        texts: &[&str],
    ) -> Result<Vec<[f32; 3]>, crate::error::ModelError> {
        Ok(self
            .predict_batch(texts)
            .iter()
            .map(|p| p.probabilities)
            .collect())
    }
}
