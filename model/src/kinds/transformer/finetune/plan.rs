//! Which fine-tuning recipe a run can afford (`finetune_layers = "auto"`): the best measured
//! recipe whose estimated time fits what is left of `[transformer] time_budget_mins`.
//!
//! The estimate comes from this machine, in this run's thread pool: a few hundred training
//! texts go through the serving forward (the frozen layers' cost) and through the deepest
//! recipe's tuned layers' forward, backward and Adam step (a tuned layer's cost), scaled by the
//! token counts of the run's texts and each recipe's layers and epochs. The cost of a layer is
//! nearly linear in its tokens for tweets (attention's square term is small at 30 tokens); the
//! estimate errs high (18% for 4 layers × 3 epochs on an idle 2-core VM), and a machine that
//! gets busier mid-run is what the epoch-end check in [`super::fine_tune`] is for.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use sentimentd_data::Label;

use super::top::{Adam, Packed};
use super::{class_weights, loss_and_grad, top_of};
use crate::error::ModelError;
use crate::kinds::transformer::encoder::SentenceEncoder;
use crate::kinds::transformer::head::LinearHead;

/// A training recipe of the transformer kind: fine-tune the top `layers` layers for `epochs`
/// epochs, or (`layers` 0) keep the encoder frozen and train the head only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub layers: usize,
    pub epochs: usize,
}

impl Recipe {
    pub const FROZEN: Recipe = Recipe {
        layers: 0,
        epochs: 0,
    };
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.layers == 0 {
            write!(f, "frozen encoder, head only")
        } else {
            write!(
                f,
                "fine-tune the top {} layer{} for {} epoch{}",
                self.layers,
                if self.layers == 1 { "" } else { "s" },
                self.epochs,
                if self.epochs == 1 { "" } else { "s" }
            )
        }
    }
}

/// What `auto` chooses from, best first: the validation-free ranking by selection-split
/// macro-recall of the whole version (head, tuned layers and ensemble) on the bundled data,
/// measured with MiniLM-L6 (docs/tuning.md, "The default recipe"). Each recipe also costs
/// less than the one before it, so the first that fits is the best that fits. The frozen
/// recipe always fits: it is what is left when nothing else does.
pub const LADDER: &[Recipe] = &[
    Recipe {
        layers: 6,
        epochs: 3,
    },
    Recipe {
        layers: 4,
        epochs: 3,
    },
    Recipe {
        layers: 2,
        epochs: 2,
    },
    Recipe::FROZEN,
];

/// Seconds per token and layer, measured on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// The serving forward (the frozen layers, and embedding with the tuned encoder).
    pub forward: f64,
    /// A tuned layer's forward, backward and Adam step.
    pub train: f64,
    /// A tuned layer's forward when the selection split is scored.
    pub score: f64,
}

/// Texts the calibration runs (after one untimed batch that warms the caches and the pool).
const CALIBRATION_TEXTS: usize = 256;

/// Measures [`Costs`] on a seeded sample of `texts`, in the calling thread pool, training the
/// top `layers` layers: a layer costs more per token the more layers train with it (their
/// activations kept for the backward outgrow the caches), so the deepest recipe considered is
/// the depth measured. Calibrated at one layer, 4-layer epochs ran 17 to 35% above their
/// estimate; calibrated at six, the 4 × 3 recipe ran 18% below it (docs/tuning.md).
pub fn calibrate(
    encoder: &SentenceEncoder,
    head: &LinearHead,
    texts: &[String],
    batch: usize,
    layers: usize,
    seed: u64,
) -> Result<Costs, ModelError> {
    let total = encoder.config.num_hidden_layers;
    if total == 0 || texts.is_empty() {
        return Err(ModelError::Training(
            "cannot calibrate fine-tuning: no encoder layers or no texts".into(),
        ));
    }
    let layers = layers.clamp(1, total);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xC0575));
    let batch = batch.max(1);
    order.truncate(CALIBRATION_TEXTS + batch);
    let ids: Vec<Vec<u32>> = order
        .iter()
        .map(|&i| encoder.tokenize(&texts[i]))
        .collect::<Result<_, _>>()?;
    let upto = total - layers;
    let mut top = top_of(encoder, layers, head)?;
    let mut optim = Adam::new(&top);
    let mut grads = top.zeros_like();
    let weights = class_weights(&[Label::Negative, Label::Neutral, Label::Positive]);

    let (mut forward, mut train, mut score, mut tokens) = (0.0, 0.0, 0.0, 0usize);
    let mut warm_up = (0.0, 0.0, 0.0, 0usize);
    for (i, chunk) in ids.chunks(batch).enumerate() {
        // The serving forward through every layer: what frozen layers and embedding cost.
        let t = Instant::now();
        std::hint::black_box(encoder.hidden_states(chunk, total)?);
        let forward_secs = t.elapsed().as_secs_f64();
        let packed = Packed {
            x: encoder.hidden_states(chunk, upto)?,
            lens: chunk.iter().map(Vec::len).collect(),
        };
        // Labels do not change what a step costs.
        let labels = vec![Label::Neutral; chunk.len()];
        let t = Instant::now();
        let (cache, logits) = top.forward(&packed);
        let (_, dz) = loss_and_grad(&logits, &labels, &weights);
        for p in grads.params_mut() {
            p.fill(0.0);
        }
        top.backward(&cache, &dz, &mut grads);
        drop(cache);
        optim.step(1e-9, &mut top, &grads);
        let train_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(top.logits(&packed));
        let score_secs = t.elapsed().as_secs_f64();
        if i == 0 {
            let n = packed.lens.iter().sum::<usize>();
            warm_up = (forward_secs, train_secs, score_secs, n);
            continue;
        }
        forward += forward_secs;
        train += train_secs;
        score += score_secs;
        tokens += packed.lens.iter().sum::<usize>();
    }
    // A sample of one batch has nothing timed but its warm-up batch, which stands in (it
    // reads high, which errs on the budget's side).
    if tokens == 0 {
        (forward, train, score, tokens) = warm_up;
    }
    let tokens = tokens.max(1) as f64;
    let per_layer = tokens * layers as f64;
    Ok(Costs {
        forward: forward / (tokens * total as f64),
        train: train / per_layer,
        score: score / per_layer,
    })
}

/// How long `recipe` is expected to take after the head is trained, for `train_tokens` and
/// `selection_tokens` tokens through an encoder of `total` layers.
pub fn estimate_secs(
    recipe: Recipe,
    costs: &Costs,
    train_tokens: usize,
    selection_tokens: usize,
    total: usize,
) -> f64 {
    if recipe.layers == 0 {
        return 0.0;
    }
    let (tr, sel) = (train_tokens as f64, selection_tokens as f64);
    let layers = recipe.layers.min(total) as f64;
    let frozen = (tr + sel) * (total as f64 - layers) * costs.forward;
    let epoch = layers * (tr * costs.train + sel * costs.score);
    // The selection split is embedded again with the tuned encoder for the ensemble's fit.
    let finish = sel * total as f64 * costs.forward;
    frozen + recipe.epochs as f64 * epoch + finish
}

/// One recipe `auto` considered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub layers: usize,
    pub epochs: usize,
    pub estimated_secs: f64,
    pub fits: bool,
}

/// The first recipe of `ladder` whose estimate fits in `available_secs`, the frozen recipe if
/// none does, and every estimate.
pub fn choose(
    ladder: &[Recipe],
    available_secs: f64,
    estimate: impl Fn(Recipe) -> f64,
) -> (Recipe, Vec<Candidate>) {
    let candidates: Vec<Candidate> = ladder
        .iter()
        .map(|&r| {
            let secs = estimate(r);
            Candidate {
                layers: r.layers,
                epochs: r.epochs,
                estimated_secs: secs,
                fits: secs <= available_secs,
            }
        })
        .collect();
    let chosen = candidates
        .iter()
        .find(|c| c.fits)
        .map_or(Recipe::FROZEN, |c| Recipe {
            layers: c.layers,
            epochs: c.epochs,
        });
    (chosen, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSTS: Costs = Costs {
        forward: 10e-6,
        train: 80e-6,
        score: 25e-6,
    };

    #[test]
    fn the_estimate_grows_with_layers_and_epochs_and_the_frozen_recipe_costs_nothing() {
        let e = |layers, epochs| {
            estimate_secs(Recipe { layers, epochs }, &COSTS, 1_200_000, 130_000, 6)
        };
        assert_eq!(e(0, 0), 0.0);
        assert!(
            e(2, 2) < e(4, 3) && e(4, 3) < e(6, 3),
            "{} {} {}",
            e(2, 2),
            e(4, 3),
            e(6, 3)
        );
        // 4 layers: 1.33M tokens × 2 frozen layers forward, 3 epochs of 4 layers, and the
        // selection embedded through all 6.
        let expected = 1_330_000.0 * 2.0 * 10e-6
            + 3.0 * 4.0 * (1_200_000.0 * 80e-6 + 130_000.0 * 25e-6)
            + 130_000.0 * 6.0 * 10e-6;
        assert!(
            (e(4, 3) - expected).abs() < 1e-6,
            "{} vs {expected}",
            e(4, 3)
        );
    }

    #[test]
    fn the_best_recipe_that_fits_is_chosen_and_frozen_when_nothing_does() {
        let est = |r: Recipe| (r.layers * r.epochs * 100) as f64;
        let (r, all) = choose(LADDER, 1_900.0, est);
        assert_eq!(
            r,
            Recipe {
                layers: 6,
                epochs: 3
            }
        );
        assert_eq!(all.len(), LADDER.len());
        let (r, all) = choose(LADDER, 1_500.0, est);
        assert_eq!(
            r,
            Recipe {
                layers: 4,
                epochs: 3
            }
        );
        assert!(!all[0].fits && all[1].fits);
        let (r, _) = choose(LADDER, 500.0, est);
        assert_eq!(
            r,
            Recipe {
                layers: 2,
                epochs: 2
            }
        );
        let (r, _) = choose(LADDER, 10.0, est);
        assert_eq!(r, Recipe::FROZEN);
        let (r, _) = choose(LADDER, -5.0, est);
        assert_eq!(
            r,
            Recipe::FROZEN,
            "a budget already spent leaves the frozen recipe"
        );
    }

    #[test]
    fn the_ladder_ends_with_the_frozen_recipe_and_each_step_is_cheaper() {
        assert_eq!(LADDER.last(), Some(&Recipe::FROZEN));
        let e = |r: Recipe| estimate_secs(r, &COSTS, 1_200_000, 130_000, 6);
        for pair in LADDER.windows(2) {
            assert!(
                e(pair[1]) < e(pair[0]),
                "{:?} is not cheaper than {:?}",
                pair[1],
                pair[0]
            );
        }
    }
}
