//! What decides a transformer version, recorded in its manifest.

use serde::{Deserialize, Serialize};

use crate::kinds::fast::train::TrainParams;
use crate::kinds::transformer::finetune::{FineTuneEpoch, FineTuneParams};
use crate::kinds::transformer::head::HeadParams;

/// What decides a transformer version; recorded in its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerParams {
    /// The encoder's directory name under `[transformer] pretrained_dir`.
    pub encoder: String,
    /// `SentenceEncoder::fingerprint` of the encoder the head was trained on: a version
    /// refuses to load over any other encoder.
    pub encoder_fingerprint: String,
    pub max_seq_len: usize,
    pub head: HeadParams,
    pub head_best_epoch: usize,
    /// The averaged fast model, when there is one.
    #[serde(default)]
    pub ensemble: Option<EnsembleParams>,
    /// The fine-tuning run, when the encoder's top layers were trained (they are stored in
    /// the version as `encoder_tuned.safetensors`).
    #[serde(default)]
    pub finetune: Option<FineTuneInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTuneInfo {
    pub params: FineTuneParams,
    pub best_epoch: usize,
    pub history: Vec<FineTuneEpoch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleParams {
    /// Weight of the transformer's probabilities (the fast model's is `1 - weight`), fitted on
    /// the selection split.
    pub weight: f32,
    pub fast: TrainParams,
    pub fast_best_epoch: usize,
}
