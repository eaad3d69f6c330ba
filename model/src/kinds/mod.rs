//! The model kinds, one folder each, behind one trait. [`of`] is the only place that maps a
//! kind to its code: the store loads a version through it, and a training run trains a
//! candidate through it. Everything else sees a kind through [`Classifier`] (serving) and
//! [`Candidate`] (a trained model on its way into the store).
//!
//! Adding a kind: a folder here with a type that implements [`Kind`], its parameters as a
//! variant of [`ModelParams`], and one arm in [`of`].

pub mod fast;
pub mod lexicon;
pub mod transformer;

use sentimentd_config::{Backend, Config, Precision};
use sentimentd_data::Dataset;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::classifier::{Classifier, ModelKind};
use crate::error::ModelError;
use crate::kinds::fast::train::{EpochReport, SplitWeights, TrainObserver, TrainParams};
use crate::manifest::{Manifest, ModelParams};
use crate::metrics::EvalMetrics;

/// What a training run hands a kind.
pub struct TrainInputs<'a> {
    pub cfg: &'a Config,
    /// The fast model's parameters (the fast kind's own, or the transformer's partner's).
    pub params: &'a TrainParams,
    pub train_set: &'a Dataset,
    pub sel_set: &'a Dataset,
    pub weights: &'a SplitWeights,
    /// The fast model the recent rows' weight was chosen with, when one was trained.
    pub chosen_fast: Option<fast::FastTrained>,
    /// A teacher to distil the fast kind from.
    pub teacher: Option<&'a fast::Teacher>,
    pub observer: &'a mut dyn TrainObserver,
}

/// What loading a stored version needs.
pub struct LoadInputs<'a> {
    pub manifest: &'a Manifest,
    pub dir: &'a Path,
    /// Where transformer versions find their encoder, and the backend and precision it runs
    /// with; `None` for a store opened without a config.
    pub pretrained: Option<&'a (PathBuf, Backend, Precision)>,
    /// Texts per encoder batch.
    pub embed_batch: usize,
}

pub trait Kind: Sync {
    /// Whether a run of this kind trains fast models, so the recent rows' weight can be
    /// chosen among several with them.
    fn trains_fast_models(&self, cfg: &Config) -> bool;

    /// Trains a candidate of this kind.
    fn train(&self, inputs: TrainInputs<'_>) -> Result<Box<dyn Candidate>, ModelError>;

    /// Loads and verifies a stored version of this kind.
    fn load(&self, inputs: LoadInputs<'_>) -> Result<Arc<dyn Classifier>, ModelError>;
}

/// The files and parameters a kind stores in a version directory.
pub trait VersionFiles {
    /// The parameters recorded in the manifest, tagged with the kind.
    fn params(&self) -> ModelParams;

    /// Writes the kind's files into `dir`, the version being assembled.
    fn save(&self, dir: &Path) -> Result<(), ModelError>;
}

/// A trained model, scored on the selection split, before it is stored.
pub trait Candidate: VersionFiles {
    fn classifier(&self) -> &dyn Classifier;
    /// The whole model on the selection split (optimistic: it chose the epoch and more).
    fn selection(&self) -> &EvalMetrics;
    fn history(&self) -> &[EpochReport];
    fn best_epoch(&self) -> usize;
    fn seconds(&self) -> f64;
    /// Called once the version is stored: what training kept until then can go.
    fn stored(&self) {}
}

/// The code of a kind.
pub fn of(kind: ModelKind) -> &'static dyn Kind {
    match kind {
        ModelKind::Fast => &fast::Fast,
        ModelKind::Transformer => &transformer::Transformer,
        ModelKind::Lexicon => &lexicon::Lexicon,
    }
}
