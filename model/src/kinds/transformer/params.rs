//! What decides a transformer version, recorded in its manifest.

use serde::{Deserialize, Serialize};

use crate::kinds::fast::train::TrainParams;
use crate::kinds::transformer::finetune::plan::{Candidate, Costs};
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
    /// Which recipe ran and why; absent in versions trained before recipes were chosen.
    #[serde(default)]
    pub recipe: Option<Box<RecipeInfo>>,
}

/// The recipe a version was trained with, and how it was chosen (`[transformer]
/// finetune_layers`: a number, or `auto` within `time_budget_mins`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeInfo {
    /// `auto` (the best measured recipe that fitted the time budget) or `configured`.
    pub choice: String,
    /// What ran, in words.
    pub name: String,
    pub layers: usize,
    pub epochs: usize,
    /// `auto`: the time budget of the whole training run.
    pub budget_secs: Option<f64>,
    /// Seconds the run had spent (embedding, head, fast model) before the calibration.
    pub planned_after_secs: f64,
    /// What the recipe was expected to take from there (none for the frozen recipe).
    pub estimated_secs: Option<f64>,
    /// `auto`: every recipe considered, best first, with its estimate.
    pub candidates: Vec<Candidate>,
    /// The calibration the estimates come from: seconds per token and layer on this machine.
    pub costs: Option<Costs>,
    /// Why fewer epochs ran than the recipe names (the budget ran out), if so.
    pub stopped_early: Option<String>,
    /// Seconds the training took, from the data loaded to the version assembled (the
    /// reporting split's scoring and saving are not in it); the budget counts from the same
    /// start.
    pub seconds: f64,
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
