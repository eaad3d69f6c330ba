//! The `fast` kind: a fastText-style classifier trained in burn (tokenizer, hashed features,
//! mean-pooled embeddings, a linear layer), served by a plain forward pass.

pub mod features;
pub mod model;
pub mod text;
pub mod train;

use sentimentd_config::Config;
use sentimentd_data::Dataset;
use std::path::Path;
use std::sync::Arc;

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::kinds::{Candidate, Kind, LoadInputs, TrainInputs, VersionFiles};
use crate::manifest::{Manifest, ModelParams, TOKENIZER, WEIGHTS, verify};
use crate::metrics::{EvalMetrics, evaluate};
use features::Featurizer;
use model::{FastModel, Weights};
use text::TextPipeline;
use train::{
    DISTILL_MIXES, DISTILL_TEMPERATURES, DistillParams, DistillTrial, EpochReport, SplitWeights,
    TrainObserver, TrainParams,
};

pub struct Fast;

impl Kind for Fast {
    fn trains_fast_models(&self, _cfg: &Config) -> bool {
        true
    }

    fn train(&self, t: TrainInputs<'_>) -> Result<Box<dyn Candidate>, ModelError> {
        let mut params = t.params.clone();
        let trained = match (t.teacher, t.chosen_fast) {
            (Some(teacher), _) => {
                let (trained, distill) = distil(
                    t.params,
                    t.train_set,
                    t.sel_set,
                    t.weights,
                    teacher,
                    t.observer,
                )?;
                params.distill = Some(distill);
                trained
            }
            (None, Some(trained)) => trained,
            (None, None) => train_fast(t.params, t.train_set, t.sel_set, t.weights, t.observer)?,
        };
        let selection = evaluate(&trained.model, t.sel_set);
        Ok(Box::new(FastCandidate {
            trained,
            params,
            selection,
        }))
    }

    fn load(&self, l: LoadInputs<'_>) -> Result<Arc<dyn Classifier>, ModelError> {
        let ModelParams::Fast(params) = &l.manifest.params else {
            return Err(ModelError::Corrupt {
                path: l.dir.to_path_buf(),
                reason: "a fast version without fast parameters".into(),
            });
        };
        Ok(Arc::new(load_fast(l.manifest, l.dir, params)?))
    }
}

/// The fast model in `dir` (a fast version, or a transformer version's partner).
pub(crate) fn load_fast(
    m: &Manifest,
    dir: &Path,
    params: &TrainParams,
) -> Result<FastModel, ModelError> {
    verify(m, dir, &[WEIGHTS, TOKENIZER])?;
    let text = TextPipeline::load(&dir.join(TOKENIZER))?;
    let weights = Weights::load(&dir.join(WEIGHTS))?;
    let featurizer = Featurizer::new(text, params.features.clone());
    FastModel::new(featurizer, weights, m.version.clone()).map_err(|e| match e {
        ModelError::Corrupt { reason, .. } => ModelError::Corrupt {
            path: dir.to_path_buf(),
            reason,
        },
        other => other,
    })
}

/// The files of a fast model, as a version (or a transformer version's partner) stores them.
pub struct FastFiles<'a> {
    pub featurizer: &'a Featurizer,
    pub weights: &'a Weights,
    pub params: &'a TrainParams,
}

impl VersionFiles for FastFiles<'_> {
    fn params(&self) -> ModelParams {
        ModelParams::Fast(self.params.clone())
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        save_fast(self.featurizer, self.weights, dir)
    }
}

/// Writes a fast model's weights and tokenizer into a version directory.
pub(crate) fn save_fast(
    featurizer: &Featurizer,
    weights: &Weights,
    dir: &Path,
) -> Result<(), ModelError> {
    weights.save(&dir.join(WEIGHTS))?;
    featurizer.text.save(&dir.join(TOKENIZER))
}

/// A fast model, ready to serve, with how its training went.
pub struct FastTrained {
    pub model: FastModel,
    pub history: Vec<EpochReport>,
    pub best_epoch: usize,
    pub seconds: f64,
}

/// A teacher's probabilities for the training rows, in their order.
pub struct Teacher {
    pub version: String,
    pub probabilities: Vec<[f32; 3]>,
}

/// Trains a fast model on `train_set`, its epoch and temperature chosen on `sel_set`: the
/// fast kind, and the transformer kind's ensemble partner.
pub fn train_fast(
    params: &TrainParams,
    train_set: &Dataset,
    sel_set: &Dataset,
    weights: &SplitWeights,
    observer: &mut dyn TrainObserver,
) -> Result<FastTrained, ModelError> {
    train_fast_soft(params, train_set, sel_set, weights, None, observer)
}

/// A fast model per mix of [`DISTILL_MIXES`] and temperature of [`DISTILL_TEMPERATURES`] on
/// the teacher's probabilities and the labels; the one with the best selection macro-recall
/// is kept (ties go to the earlier trial: the smaller mix, the lower temperature).
pub fn distil(
    params: &TrainParams,
    train_set: &Dataset,
    sel_set: &Dataset,
    weights: &SplitWeights,
    teacher: &Teacher,
    observer: &mut dyn TrainObserver,
) -> Result<(FastTrained, DistillParams), ModelError> {
    let mut best: Option<(FastTrained, DistillTrial)> = None;
    let mut trials = Vec::new();
    for temperature in DISTILL_TEMPERATURES {
        let softened: Vec<[f32; 3]> = teacher
            .probabilities
            .iter()
            .map(|p| soften(*p, temperature))
            .collect();
        for mix in DISTILL_MIXES {
            // Labels alone do not depend on the temperature: trained once.
            if mix == 0.0 && temperature != DISTILL_TEMPERATURES[0] {
                continue;
            }
            observer.on_message(&format!(
                "distillation: training with targets {:.0}% teacher {} (temperature {temperature}), \
                 {:.0}% labels",
                mix * 100.0,
                teacher.version,
                (1.0 - mix) * 100.0
            ));
            let soft = train::Soft {
                probabilities: &softened,
                mix,
            };
            let trained =
                train_fast_soft(params, train_set, sel_set, weights, Some(soft), observer)?;
            let trial = DistillTrial {
                mix,
                temperature,
                selection_macro_recall: trained
                    .history
                    .iter()
                    .find(|e| e.epoch == trained.best_epoch)
                    .map_or(0.0, |e| e.selection_macro_recall),
            };
            trials.push(trial.clone());
            if best
                .as_ref()
                .is_none_or(|(_, b)| trial.selection_macro_recall > b.selection_macro_recall)
            {
                best = Some((trained, trial));
            }
        }
    }
    let (trained, kept) =
        best.ok_or_else(|| ModelError::Training("no distillation mix to try".into()))?;
    observer.on_message(&format!(
        "distillation: mix {} at temperature {} kept (selection macro-recall {:.4}; {})",
        kept.mix,
        kept.temperature,
        kept.selection_macro_recall,
        trials
            .iter()
            .map(|t| format!(
                "{}@{}: {:.4}",
                t.mix, t.temperature, t.selection_macro_recall
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let info = DistillParams {
        teacher: teacher.version.clone(),
        mix: kept.mix,
        temperature: kept.temperature,
        trials,
    };
    Ok((trained, info))
}

/// `p^(1/t)`, renormalised: a flatter distribution for `t > 1`.
fn soften(p: [f32; 3], t: f32) -> [f32; 3] {
    let q = p.map(|v| v.max(1e-12).powf(1.0 / t));
    let sum: f32 = q.iter().sum();
    q.map(|v| v / sum)
}

fn train_fast_soft(
    params: &TrainParams,
    train_set: &Dataset,
    sel_set: &Dataset,
    weights: &SplitWeights,
    soft: Option<train::Soft<'_>>,
    observer: &mut dyn TrainObserver,
) -> Result<FastTrained, ModelError> {
    let outcome = train::train_rows(
        params,
        train::Rows {
            texts: &train_set.texts,
            labels: &train_set.labels,
            weights: weights.train.as_deref(),
            soft,
        },
        train::Rows {
            texts: &sel_set.texts,
            labels: &sel_set.labels,
            weights: weights.selection.as_deref(),
            soft: None,
        },
        observer,
    )?;
    Ok(FastTrained {
        model: FastModel::new(outcome.featurizer, outcome.weights, "candidate".into())?,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        seconds: outcome.seconds,
    })
}

struct FastCandidate {
    trained: FastTrained,
    params: TrainParams,
    selection: EvalMetrics,
}

impl VersionFiles for FastCandidate {
    fn params(&self) -> ModelParams {
        ModelParams::Fast(self.params.clone())
    }

    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        FastFiles {
            featurizer: &self.trained.model.featurizer,
            weights: &self.trained.model.weights,
            params: &self.params,
        }
        .save(dir)
    }
}

impl Candidate for FastCandidate {
    fn classifier(&self) -> &dyn Classifier {
        &self.trained.model
    }

    fn selection(&self) -> &EvalMetrics {
        &self.selection
    }

    fn history(&self) -> &[EpochReport] {
        &self.trained.history
    }

    fn best_epoch(&self) -> usize {
        self.trained.best_epoch
    }

    fn seconds(&self) -> f64 {
        self.trained.seconds
    }
}
