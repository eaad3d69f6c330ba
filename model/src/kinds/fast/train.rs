//! Training the fast model with burn-autodiff on a pure-Rust CPU backend.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use sentimentd_data::Label;

use crate::error::ModelError;
use crate::kinds::fast::features::{FeatureConfig, Featurizer, LEXICON_FEATURES, Scratch};
use crate::kinds::fast::model::{CLASSES, Weights};
use crate::kinds::fast::text::TextPipeline;
use crate::metrics::EvalMetrics;

/// Which burn CPU backend trains, and the learning-rate schedule: the config's types, so
/// `[train]` and a manifest's parameters are one definition.
pub use sentimentd_config::{Backend, LrDecay};

/// Everything that decides a training run; recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub features: FeatureConfig,
    pub vocab_size: usize,
    pub min_token_frequency: u64,
    pub embedding_dim: usize,
    pub hidden_dim: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub lr_decay: LrDecay,
    pub weight_decay: f64,
    pub dropout: f64,
    pub patience: usize,
    pub seed: u64,
    pub balanced_class_weights: bool,
    pub backend: Backend,
    /// Most threads training may use (0 = all cores). The result does not depend on it, only
    /// the wall time; manifests written before the key existed load as 0.
    #[serde(default)]
    pub threads: usize,
    /// The teacher this model was distilled from, when it was (see [`DistillParams`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillParams>,
}

/// Distillation: the model trained on a teacher's probabilities for the training texts,
/// mixed with the labels: each row's target is `(1 − mix) · label + mix · teacher`. The mix
/// and the softening temperature are chosen on the selection split (true labels only) among
/// [`DISTILL_MIXES`] and [`DISTILL_TEMPERATURES`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillParams {
    /// The version whose probabilities were the soft targets.
    pub teacher: String,
    pub mix: f32,
    /// The teacher's probabilities were softened to `p^(1/T)`, renormalised.
    pub temperature: f32,
    /// Every mix and temperature tried, with its best epoch's selection macro-recall.
    pub trials: Vec<DistillTrial>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillTrial {
    pub mix: f32,
    pub temperature: f32,
    pub selection_macro_recall: f64,
}

/// The mixes distillation tries; 0 (labels only) among them, so it can lose.
pub const DISTILL_MIXES: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// The temperatures the teacher's probabilities are softened with (each with every mix
/// above 0).
pub const DISTILL_TEMPERATURES: [f32; 3] = [1.0, 2.0, 4.0];

/// The dense part of the network. The embedding table is not a module parameter: it is passed
/// to [`FastNet::forward`], whole at inference and as the rows one mini-batch touches while
/// training (see [`EmbeddingTable`]).
#[derive(Module, Debug)]
pub struct FastNet {
    hidden: Option<Linear>,
    output: Linear,
    dropout: Dropout,
}

/// One padded mini-batch of featurised texts.
pub struct Batch {
    ids: Tensor<2, Int>,
    /// `[B, 1, L]`: 1/n for each of a text's n features, 0 for padding.
    weights: Tensor<3>,
    dense: Option<Tensor<2>>,
}

/// A featurised text: feature rows and dense lexicon features.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub dense: [f32; LEXICON_FEATURES],
}

impl FastNet {
    pub fn new(dense: usize, params: &TrainParams, device: &Device) -> FastNet {
        let input = params.embedding_dim + dense;
        let (hidden, out_in) = if params.hidden_dim > 0 {
            (
                Some(LinearConfig::new(input, params.hidden_dim).init(device)),
                params.hidden_dim,
            )
        } else {
            (None, input)
        };
        FastNet {
            hidden,
            output: LinearConfig::new(out_in, CLASSES).init(device),
            dropout: DropoutConfig::new(params.dropout).init(),
        }
    }

    /// Logits for a batch whose ids index rows of `table`.
    pub fn forward(&self, table: Tensor<2>, batch: &Batch) -> Tensor<2> {
        let emb = burn::tensor::module::embedding(table, batch.ids.clone());
        let pooled: Tensor<2> = batch.weights.clone().matmul(emb).squeeze_dim(1);
        let pooled = self.dropout.forward(pooled);
        let x = match &batch.dense {
            Some(d) => Tensor::cat(vec![pooled, d.clone()], 1),
            None => pooled,
        };
        let x = match &self.hidden {
            Some(h) => relu(h.forward(x)),
            None => x,
        };
        self.output.forward(x)
    }

    /// Copies the parameters out for the plain serving path.
    pub fn weights(&self, table: &EmbeddingTable, dense: usize) -> Result<Weights, ModelError> {
        let vec = |t: Tensor<2>| -> Result<(Vec<usize>, Vec<f32>), ModelError> {
            let shape = t.dims().to_vec();
            let v = t
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Training(format!("{e:?}")))?;
            Ok((shape, v))
        };
        let vec1 = |t: Tensor<1>| -> Result<Vec<f32>, ModelError> {
            t.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Training(format!("{e:?}")))
        };
        let bias = |l: &Linear| -> Result<Vec<f32>, ModelError> {
            match &l.bias {
                Some(b) => vec1(b.val()),
                None => Ok(vec![0.0; l.weight.dims()[1]]),
            }
        };
        let (_, out_w) = vec(self.output.weight.val())?;
        let out_b = bias(&self.output)?;
        let (hidden, hidden_w, hidden_b) = match &self.hidden {
            Some(h) => {
                let (hs, hw) = vec(h.weight.val())?;
                (hs[1], hw, bias(h)?)
            }
            None => (0, Vec::new(), Vec::new()),
        };
        Ok(Weights {
            rows: table.rows,
            dim: table.dim,
            dense,
            hidden,
            embedding: table.values.clone(),
            hidden_w,
            hidden_b,
            out_w,
            out_b,
            temperature: 1.0,
        })
    }
}

impl FastNet {
    /// Rebuilds the burn module and its table from exported weights (dropout off).
    pub fn from_weights(w: &Weights, device: &Device) -> (FastNet, Tensor<2>) {
        let t2 = |v: &[f32], shape: [usize; 2]| {
            Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(v.to_vec(), shape),
                device,
            ))
        };
        let t1 = |v: &[f32]| {
            Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                device,
            ))
        };
        let hidden = (w.hidden > 0).then(|| Linear {
            weight: t2(&w.hidden_w, [w.input_dim(), w.hidden]),
            bias: Some(t1(&w.hidden_b)),
        });
        let out_in = if w.hidden > 0 {
            w.hidden
        } else {
            w.input_dim()
        };
        let net = FastNet {
            hidden,
            output: Linear {
                weight: t2(&w.out_w, [out_in, CLASSES]),
                bias: Some(t1(&w.out_b)),
            },
            dropout: DropoutConfig::new(0.0).init(),
        };
        let table = Tensor::<2>::from_data(
            TensorData::new(w.embedding.clone(), [w.rows, w.dim]),
            device,
        );
        (net, table)
    }
}

/// Class probabilities computed by the burn module itself, for checking the serving path.
pub fn burn_probabilities(
    outcome: &TrainOutcome,
    params: &TrainParams,
    texts: &[String],
) -> Result<Vec<[f32; 3]>, ModelError> {
    let device = device_for(params.backend);
    let (net, table) = FastNet::from_weights(&outcome.weights, &device);
    let examples = featurize_all(&outcome.featurizer, texts, params.threads);
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = make_batch(&refs, outcome.weights.dense, None, &device);
    let logits = net
        .forward(table, &batch)
        .div_scalar(outcome.weights.temperature);
    let probs = burn::tensor::activation::softmax(logits, 1);
    let flat = probs
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Training(format!("{e:?}")))?;
    Ok(flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
}

/// Pads a batch. With `remap`, ids are replaced by their slot in the batch's sub-table.
pub fn make_batch(
    examples: &[&Example],
    dense: usize,
    mut remap: Option<&mut SlotMap>,
    device: &Device,
) -> Batch {
    let b = examples.len();
    let l = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![0i64; b * l];
    let mut w = vec![0f32; b * l];
    for (i, e) in examples.iter().enumerate() {
        let inv = 1.0 / e.ids.len().max(1) as f32;
        for (j, &id) in e.ids.iter().enumerate() {
            ids[i * l + j] = match remap.as_deref_mut() {
                Some(m) => m.slot(id) as i64,
                None => id as i64,
            };
            w[i * l + j] = inv;
        }
    }
    let dense = (dense > 0).then(|| {
        let d: Vec<f32> = examples
            .iter()
            .flat_map(|e| e.dense[..dense].iter().copied())
            .collect();
        Tensor::<2>::from_data(TensorData::new(d, [b, dense]), device)
    });
    Batch {
        ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), device),
        weights: Tensor::<3>::from_data(TensorData::new(w, [b, 1, l]), device),
        dense,
    }
}

/// Assigns each distinct row id of a mini-batch a dense slot `0..n`, in first-seen order.
pub struct SlotMap {
    slot_of: Vec<u32>,
    pub ids: Vec<u32>,
}

impl SlotMap {
    pub fn new(rows: usize) -> SlotMap {
        SlotMap {
            slot_of: vec![u32::MAX; rows],
            ids: Vec::new(),
        }
    }

    #[inline]
    fn slot(&mut self, id: u32) -> u32 {
        let s = &mut self.slot_of[id as usize];
        if *s == u32::MAX {
            *s = self.ids.len() as u32;
            self.ids.push(id);
        }
        *s
    }

    fn clear(&mut self) {
        for &id in &self.ids {
            self.slot_of[id as usize] = u32::MAX;
        }
        self.ids.clear();
    }
}

/// The embedding table with sparse Adam state.
///
/// A dense optimizer step touches every row of a table of ~10^7 parameters on every
/// mini-batch, which made an epoch cost a minute; a mini-batch only reads a few thousand rows.
/// So each step hands burn just those rows as a leaf tensor, burn's autodiff computes their
/// gradient through the same `FastNet::forward` used at inference, and the rows are updated in
/// place with Adam's rule applied to touched rows only (PyTorch's `SparseAdam`).
pub struct EmbeddingTable {
    pub rows: usize,
    pub dim: usize,
    pub values: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: i32,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;

impl EmbeddingTable {
    /// Uniform in `[-1/dim, 1/dim]`, as fastText initialises its input vectors.
    pub fn new(rows: usize, dim: usize, seed: u64) -> EmbeddingTable {
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_7AB1E);
        let bound = 1.0 / dim as f32;
        let values = (0..rows * dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        EmbeddingTable {
            rows,
            dim,
            values,
            m: vec![0.0; rows * dim],
            v: vec![0.0; rows * dim],
            step: 0,
        }
    }

    /// The rows `ids` as a `[ids.len(), dim]` tensor that tracks gradients.
    fn gather(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        let d = self.dim;
        let mut sub = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let start = id as usize * d;
            sub.extend_from_slice(&self.values[start..start + d]);
        }
        Tensor::<2>::from_data(TensorData::new(sub, [ids.len(), d]), device).require_grad()
    }

    /// `weight_decay` is decoupled (AdamW) and, like the moments, reaches touched rows only.
    fn apply(&mut self, ids: &[u32], grad: &[f32], lr: f32, weight_decay: f32) {
        self.step += 1;
        let step_size = lr * (1.0 - BETA2.powi(self.step)).sqrt() / (1.0 - BETA1.powi(self.step));
        let d = self.dim;
        for (k, &id) in ids.iter().enumerate() {
            let g = &grad[k * d..(k + 1) * d];
            let start = id as usize * d;
            let p = &mut self.values[start..start + d];
            let m = &mut self.m[start..start + d];
            let v = &mut self.v[start..start + d];
            for j in 0..d {
                m[j] = BETA1 * m[j] + (1.0 - BETA1) * g[j];
                v[j] = BETA2 * v[j] + (1.0 - BETA2) * g[j] * g[j];
                p[j] -= step_size * m[j] / (v[j].sqrt() + EPSILON) + lr * weight_decay * p[j];
            }
        }
    }
}

/// How many worker threads `threads` (a config value, 0 = all cores) allows. All cores stops at
/// 8: featurisation is memory-bound and gains nothing past that.
pub fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    } else {
        threads
    }
}

fn featurize_chunk(featurizer: &Featurizer, texts: &[String]) -> Vec<Example> {
    let mut s = Scratch::default();
    texts
        .iter()
        .map(|t| {
            featurizer.featurize(t, &mut s);
            Example {
                ids: s.ids.clone(),
                dense: s.dense,
            }
        })
        .collect()
}

/// Featurises texts on at most `threads` threads (0 = all cores, see [`resolve_threads`]);
/// order is preserved. With one thread the work stays on the caller's thread, so a bound of 1
/// means no extra thread at all.
pub fn featurize_all(featurizer: &Featurizer, texts: &[String], threads: usize) -> Vec<Example> {
    let threads = resolve_threads(threads);
    let chunk = texts.len().div_ceil(threads).max(1);
    if threads <= 1 || texts.len() <= chunk {
        return featurize_chunk(featurizer, texts);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = texts
            .chunks(chunk)
            .map(|part| scope.spawn(move || featurize_chunk(featurizer, part)))
            .collect();
        // A featuriser panic stays a panic: dropping a chunk would misalign texts and labels.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Predictions of the plain path over featurised examples.
pub fn predict_examples(weights: &Weights, examples: &[Example]) -> Vec<[f32; 3]> {
    example_logits(weights, examples)
        .into_iter()
        .map(|l| weights.calibrated(l))
        .collect()
}

/// Output-layer values of the plain path over featurised examples.
fn example_logits(weights: &Weights, examples: &[Example]) -> Vec<[f32; 3]> {
    let mut pooled = Vec::new();
    let mut hidden = Vec::new();
    examples
        .iter()
        .map(|e| {
            weights.pool(&e.ids, &mut pooled);
            weights.logits(&pooled, &e.dense[..weights.dense], &mut hidden)
        })
        .collect()
}

/// Mean negative log-likelihood of `labels` under logits divided by `t`, each row counted by
/// its weight.
fn log_loss(logits: &[[f32; 3]], labels: &[Label], weights: Option<&[f32]>, t: f32) -> f64 {
    let nll = logits.iter().zip(labels).map(|(l, y)| {
        let p = crate::kinds::fast::model::softmax(l.map(|x| x / t))[y.index()];
        -(p.max(1e-12) as f64).ln()
    });
    weighted_mean(nll, weights)
}

/// Weighted cross-entropy of logits `[B, 3]`: `-Σ w_i log p_i(y_i) / Σ w_i`, the form of burn's
/// class-weighted `CrossEntropyLoss`, with a weight per row instead of per class.
fn weighted_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let [b] = targets.dims();
    let picked = burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, targets.reshape([b, 1]))
        .reshape([b]);
    (picked * weights.clone()).sum().neg() / weights.sum()
}

/// [`weighted_cross_entropy`] against a distribution per row: `-Σ w_i Σ_c t_ic log p_ic / Σ w_i`.
fn soft_cross_entropy(logits: Tensor<2>, targets: Tensor<2>, weights: Tensor<1>) -> Tensor<1> {
    let [b, _] = targets.dims();
    let per_row = (burn::tensor::activation::log_softmax(logits, 1) * targets)
        .sum_dim(1)
        .reshape([b]);
    (per_row * weights.clone()).sum().neg() / weights.sum()
}

/// Temperature scaling (Guo et al. 2017): the one scalar that minimises log-loss on held-out
/// examples (the selection split, never the reporting split), by golden-section search over `[0.05, 20]` in log space. Labels do not change: dividing all
/// three logits by the same positive number keeps their order.
/// Returns `(temperature, log-loss at 1, log-loss at temperature)`.
pub fn fit_temperature(
    weights: &Weights,
    examples: &[Example],
    labels: &[Label],
) -> (f32, f64, f64) {
    fit_temperature_weighted(weights, examples, labels, None)
}

/// [`fit_temperature`] with each held-out row counted by its weight.
pub fn fit_temperature_weighted(
    weights: &Weights,
    examples: &[Example],
    labels: &[Label],
    row_weights: Option<&[f32]>,
) -> (f32, f64, f64) {
    let logits = example_logits(weights, examples);
    let f = |log_t: f64| log_loss(&logits, labels, row_weights, log_t.exp() as f32);
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if f(c) < f(d) {
            b = d;
        } else {
            a = c;
        }
    }
    let t = ((a + b) / 2.0).exp() as f32;
    let (before, after) = (f(0.0), f((t as f64).ln()));
    if after < before {
        (t, before, after)
    } else {
        (1.0, before, before)
    }
}

/// Expected calibration error: examples binned by their top probability into `bins` equal-width
/// bins, and the gap between mean confidence and accuracy averaged over bins weighted by their
/// size. 0 is perfectly calibrated.
pub fn expected_calibration_error(probs: &[[f32; 3]], labels: &[Label], bins: usize) -> f64 {
    let bins = bins.max(1);
    let mut confidence = vec![0f64; bins];
    let mut correct = vec![0f64; bins];
    let mut count = vec![0usize; bins];
    for (p, y) in probs.iter().zip(labels) {
        let prediction = crate::Prediction::from_probabilities(*p);
        let c = prediction.score as f64;
        let b = ((c * bins as f64) as usize).min(bins - 1);
        confidence[b] += c;
        correct[b] += f64::from(u8::from(prediction.label == *y));
        count[b] += 1;
    }
    let n = probs.len().min(labels.len()).max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (confidence[b] - correct[b]).abs() / n)
        .sum()
}

pub fn argmax_labels(probs: &[[f32; 3]]) -> Vec<Label> {
    probs
        .iter()
        .map(|p| crate::Prediction::from_probabilities(*p).label)
        .collect()
}

/// One line of training history. The scores are on the selection split (carved from the
/// training data), the only split early stopping looks at; manifests written before the
/// rename call them `val_*`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    #[serde(alias = "val_macro_recall")]
    pub selection_macro_recall: f64,
    #[serde(alias = "val_accuracy")]
    pub selection_accuracy: f64,
    pub seconds: f64,
    pub improved: bool,
}

/// Receives progress; the CLI draws a progress bar, the daemon logs. `Send`, so a run can
/// move onto its own thread pool.
pub trait TrainObserver: Send {
    fn on_start(&mut self, _epochs: usize, _steps_per_epoch: usize) {}
    fn on_step(&mut self, _epoch: usize, _step: usize, _loss: f64) {}
    fn on_epoch(&mut self, _report: &EpochReport) {}
    fn on_message(&mut self, _message: &str) {}
    /// Progress of a long step that is not epochs (embedding a dataset): `done` of `total`.
    fn on_progress(&mut self, _what: &str, _done: usize, _total: usize) {}
}

/// Observer that ignores everything.
pub struct Quiet;
impl TrainObserver for Quiet {}

pub struct TrainOutcome {
    pub featurizer: Featurizer,
    pub weights: Weights,
    pub history: Vec<EpochReport>,
    pub best_epoch: usize,
    /// The best epoch on the selection split. Selected on it, so optimistic: report a split
    /// that selected nothing instead (see `pipeline::train_and_store`).
    pub selection_metrics: EvalMetrics,
    pub seconds: f64,
}

pub(crate) fn device_for(backend: Backend) -> Device {
    match backend {
        Backend::Flex => Device::flex(),
        #[allow(deprecated)] // kept selectable so the two CPU backends can be measured
        Backend::Ndarray => Device::ndarray(),
    }
}

/// Trains the fast model on `(train_texts, train_labels)` and returns the best epoch's weights.
/// The selection split `(sel_texts, sel_labels)` picks that epoch (macro-recall) and fits the
/// temperature, so its scores are optimistic: it must not be the split the run reports.
pub fn train(
    params: &TrainParams,
    train_texts: &[String],
    train_labels: &[Label],
    sel_texts: &[String],
    sel_labels: &[Label],
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, ModelError> {
    train_rows(
        params,
        Rows::new(train_texts, train_labels),
        Rows::new(sel_texts, sel_labels),
        observer,
    )
}

/// Each row's weight in the training and the selection split (`None`: 1 each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitWeights {
    pub train: Option<Vec<f32>>,
    pub selection: Option<Vec<f32>>,
}

/// Rows of one split: texts, labels, and how much each row counts in the loss (training
/// rows) or in the score that selects (selection rows). `weights: None` counts every row once.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub texts: &'a [String],
    pub labels: &'a [Label],
    pub weights: Option<&'a [f32]>,
    /// Soft targets for training rows (distillation); `None` for labels alone.
    pub soft: Option<Soft<'a>>,
}

/// A teacher's probabilities for each training row, and how much they weigh against the
/// label in the row's target.
#[derive(Clone, Copy, Debug)]
pub struct Soft<'a> {
    pub probabilities: &'a [[f32; 3]],
    pub mix: f32,
}

impl<'a> Rows<'a> {
    pub fn new(texts: &'a [String], labels: &'a [Label]) -> Rows<'a> {
        Rows {
            texts,
            labels,
            weights: None,
            soft: None,
        }
    }

    fn check(&self, what: &str) -> Result<(), ModelError> {
        if self.texts.len() != self.labels.len()
            || self.weights.is_some_and(|w| w.len() != self.texts.len())
        {
            return Err(ModelError::Training(format!(
                "{what}: texts, labels and weights differ in length"
            )));
        }
        if let Some(soft) = self.soft
            && (soft.probabilities.len() != self.texts.len() || !(0.0..=1.0).contains(&soft.mix))
        {
            return Err(ModelError::Training(format!(
                "{what}: {} soft targets for {} rows with mix {}",
                soft.probabilities.len(),
                self.texts.len(),
                soft.mix
            )));
        }
        if let Some(w) = self.weights
            && let Some(bad) = w.iter().find(|w| !(w.is_finite() && **w > 0.0))
        {
            return Err(ModelError::Training(format!(
                "{what}: a row weight is {bad}; weights must be finite and above 0"
            )));
        }
        Ok(())
    }

    fn weight(&self, i: usize) -> f32 {
        self.weights.map_or(1.0, |w| w[i])
    }
}

/// Class weights that make each class weigh the same in the loss, counting each row by its
/// weight (`None`: once): `total / (3 * class total)`, 0 for a class without rows.
pub fn balanced_class_weights(labels: &[Label], weights: Option<&[f32]>) -> [f64; 3] {
    let mut totals = [0f64; 3];
    for (i, l) in labels.iter().enumerate() {
        totals[l.index()] += weights.map_or(1.0, |w| f64::from(w[i]));
    }
    let n: f64 = totals.iter().sum();
    totals.map(|c| if c <= 0.0 { 0.0 } else { n / (3.0 * c) })
}

/// The mean of `values` with each counted by its weight (`None`: once).
pub(crate) fn weighted_mean(values: impl Iterator<Item = f64>, weights: Option<&[f32]>) -> f64 {
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (i, v) in values.enumerate() {
        let w = weights.map_or(1.0, |w| f64::from(w[i]));
        sum += w * v;
        total += w;
    }
    sum / total.max(f64::MIN_POSITIVE)
}

/// Like [`train`], with per-row weights: a training row's loss is scaled by its weight (and
/// its class's weight), and the epoch kept and the temperature are chosen on the selection
/// rows counted by their weights.
pub fn train_rows(
    params: &TrainParams,
    train: Rows,
    sel: Rows,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, ModelError> {
    let (train_texts, train_labels) = (train.texts, train.labels);
    let (sel_texts, sel_labels) = (sel.texts, sel.labels);
    let started = Instant::now();
    if train_texts.is_empty() || sel_texts.is_empty() {
        return Err(ModelError::Training(
            "training and selection data must both have rows".into(),
        ));
    }
    train.check("training rows")?;
    sel.check("selection rows")?;
    observer.on_message("learning the WordPiece vocabulary");
    let text = TextPipeline::train(train_texts, params.vocab_size, params.min_token_frequency)?;
    let featurizer = Featurizer::new(text, params.features.clone());
    observer.on_message("featurising");
    let train_x = featurize_all(&featurizer, train_texts, params.threads);
    let sel_x = featurize_all(&featurizer, sel_texts, params.threads);
    let dense = featurizer.dense_dim();

    let device = device_for(params.backend).autodiff();
    device.seed(params.seed);
    let mut model = FastNet::new(dense, params, &device);
    let mut table = EmbeddingTable::new(featurizer.rows(), params.embedding_dim, params.seed);
    let mut slots = SlotMap::new(featurizer.rows());
    let mut adam = AdamConfig::new();
    if params.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(params.weight_decay as f32)));
    }
    let mut optim = adam.init();

    let class_weights = if params.balanced_class_weights {
        balanced_class_weights(train.labels, train.weights).map(|w| w as f32)
    } else {
        [1.0; 3]
    };
    // Each row's weight in the loss: its class's times its own. Computed once; a mini-batch
    // gathers its rows' weights.
    let row_weights: Vec<f32> = (0..train_labels.len())
        .map(|i| class_weights[train_labels[i].index()] * train.weight(i))
        .collect();

    let batch_size = params.batch_size.max(1);
    let steps_per_epoch = train_x.len().div_ceil(batch_size);
    let total_steps = (steps_per_epoch * params.epochs).max(1);
    observer.on_start(params.epochs, steps_per_epoch);

    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut order: Vec<usize> = (0..train_x.len()).collect();
    let mut history = Vec::new();
    let mut best: Option<(EvalMetrics, f64, usize, Weights)> = None;
    let mut step_global = 0usize;
    for epoch in 1..=params.epochs {
        let epoch_start = Instant::now();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (step, idx) in order.chunks(batch_size).enumerate() {
            let examples: Vec<&Example> = idx.iter().map(|&i| &train_x[i]).collect();
            let batch = make_batch(&examples, dense, Some(&mut slots), &device);
            let sub = table.gather(&slots.ids, &device);
            let targets: Vec<i64> = idx
                .iter()
                .map(|&i| train_labels[i].index() as i64)
                .collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(targets, [idx.len()]), &device);
            let weights: Vec<f32> = idx.iter().map(|&i| row_weights[i]).collect();
            let weights = Tensor::<1>::from_data(TensorData::new(weights, [idx.len()]), &device);
            let logits = model.forward(sub.clone(), &batch);
            let loss = match train.soft.filter(|s| s.mix > 0.0) {
                Some(soft) => {
                    let mix = soft.mix;
                    let targets: Vec<f32> = idx
                        .iter()
                        .flat_map(|&i| {
                            let label = train_labels[i].index();
                            let p = soft.probabilities[i];
                            (0..3).map(move |c| {
                                (1.0 - mix) * f32::from(u8::from(c == label)) + mix * p[c]
                            })
                        })
                        .collect();
                    let targets =
                        Tensor::<2>::from_data(TensorData::new(targets, [idx.len(), 3]), &device);
                    soft_cross_entropy(logits, targets, weights)
                }
                None => weighted_cross_entropy(logits, targets, weights),
            };
            let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
            let mut grads = loss.backward();
            let sub_grad = sub
                .grad_remove(&mut grads)
                .ok_or_else(|| ModelError::Training("no gradient for the embedding rows".into()))?
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Training(format!("{e:?}")))?;
            let grads = GradientsParams::from_grads(grads, &model);
            let progress = step_global as f64 / total_steps as f64;
            let lr = params.learning_rate
                * match params.lr_decay {
                    LrDecay::None => 1.0,
                    LrDecay::Linear => (1.0 - progress).max(0.02),
                    LrDecay::Cosine => {
                        (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.02)
                    }
                };
            model = optim.step(lr, model, grads);
            table.apply(&slots.ids, &sub_grad, lr as f32, params.weight_decay as f32);
            slots.clear();
            step_global += 1;
            loss_sum += loss_value;
            observer.on_step(epoch, step + 1, loss_value);
        }
        let weights = model.weights(&table, dense)?;
        let sel_pred = argmax_labels(&predict_examples(&weights, &sel_x));
        let m = EvalMetrics::compute(sel_labels, &sel_pred);
        let score = crate::metrics::weighted_macro_recall(sel_labels, &sel_pred, sel.weights);
        let improved = best.as_ref().is_none_or(|(_, b, _, _)| score > *b);
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / steps_per_epoch.max(1) as f64,
            selection_macro_recall: score,
            selection_accuracy: m.accuracy,
            seconds: epoch_start.elapsed().as_secs_f64(),
            improved,
        };
        observer.on_epoch(&report);
        history.push(report);
        if improved {
            best = Some((m, score, epoch, weights));
        } else if let Some((_, _, best_epoch, _)) = &best
            && params.patience > 0
            && epoch - best_epoch >= params.patience
        {
            observer.on_message(&format!(
                "early stop: no better selection macro-recall for {} epochs",
                params.patience
            ));
            break;
        }
    }
    // Temperature scaling keeps every label, so the best epoch's metrics stand.
    let (selection_metrics, _, best_epoch, mut weights) =
        best.ok_or_else(|| ModelError::Training("no epoch was run (epochs = 0?)".into()))?;
    let (t, before, after) = fit_temperature_weighted(&weights, &sel_x, sel_labels, sel.weights);
    weights.temperature = t;
    observer.on_message(&format!(
        "calibrated temperature {t:.3} on the selection split: log-loss {before:.4} -> {after:.4}"
    ));
    Ok(TrainOutcome {
        featurizer,
        weights,
        history,
        best_epoch,
        selection_metrics,
        seconds: started.elapsed().as_secs_f64(),
    })
}
