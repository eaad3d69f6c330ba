//! The jobs the CLI and the daemon run: train a version from config, evaluate a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sentimentd_config::Config;
use sentimentd_data::{Dataset, load_dataset};

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::features::FeatureConfig;
use crate::metrics::Metrics;
use crate::store::{Manifest, ModelStore, NewVersion};
use crate::train::{self, Backend, LrDecay, TrainObserver, TrainParams};

impl TrainParams {
    pub fn from_config(cfg: &Config) -> TrainParams {
        use sentimentd_config as c;
        let m = &cfg.model;
        let t = &cfg.train;
        TrainParams {
            features: FeatureConfig {
                buckets: m.buckets,
                word_ngrams: m.word_ngrams,
                char_ngram_min: m.char_ngram_min,
                char_ngram_max: m.char_ngram_max,
                negation: m.negation,
                lexicon_features: m.lexicon_features,
                max_tokens: m.max_tokens,
            },
            vocab_size: m.vocab_size,
            min_token_frequency: m.min_token_frequency as u64,
            embedding_dim: m.embedding_dim,
            hidden_dim: m.hidden_dim,
            epochs: t.epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            lr_decay: match t.lr_decay {
                c::LrDecay::None => LrDecay::None,
                c::LrDecay::Linear => LrDecay::Linear,
                c::LrDecay::Cosine => LrDecay::Cosine,
            },
            weight_decay: t.weight_decay,
            dropout: t.dropout,
            patience: t.patience,
            seed: t.seed,
            balanced_class_weights: matches!(t.class_weights, c::ClassWeights::Balanced),
            backend: match t.backend {
                c::Backend::Flex => Backend::Flex,
                c::Backend::Ndarray => Backend::Ndarray,
            },
        }
    }
}

/// Where a training job reads from and writes to; `None` fields fall back to the config.
#[derive(Clone, Debug, Default)]
pub struct TrainJob {
    pub train: Vec<PathBuf>,
    pub val: Option<PathBuf>,
    pub store: Option<PathBuf>,
    /// Make the new version current once stored.
    pub promote: bool,
}

/// The result of [`train_and_store`].
pub struct Trained {
    pub manifest: Manifest,
    pub store_root: PathBuf,
}

fn fingerprint(train: &Dataset, val: &Dataset) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(train.fingerprint.as_bytes());
    h.update(b"|");
    h.update(val.fingerprint.as_bytes());
    hex::encode(h.finalize())
}

/// Trains the configured model kind on the job's data and stores it as a new version.
pub fn train_and_store(
    cfg: &Config,
    job: &TrainJob,
    observer: &mut dyn TrainObserver,
) -> Result<Trained, ModelError> {
    let train_paths = if job.train.is_empty() {
        cfg.data.train.clone()
    } else {
        job.train.clone()
    };
    let val_path = job.val.clone().unwrap_or_else(|| cfg.data.val.clone());
    observer.on_message("loading data");
    let train_set = load_dataset(&train_paths, cfg.data.max_text_chars)?;
    let val_set = load_dataset(std::slice::from_ref(&val_path), cfg.data.max_text_chars)?;
    let params = TrainParams::from_config(cfg);
    let outcome = train::train(
        &params,
        &train_set.texts,
        &train_set.labels,
        &val_set.texts,
        &val_set.labels,
        observer,
    )?;
    let store_root = job
        .store
        .clone()
        .unwrap_or_else(|| cfg.paths.model_store.clone());
    let store = ModelStore::open(&store_root)?;
    let mut metrics = BTreeMap::new();
    metrics.insert("validation".to_string(), outcome.val_metrics.clone());
    let manifest = store.save(NewVersion {
        featurizer: &outcome.featurizer,
        weights: &outcome.weights,
        params: &params,
        data_fingerprint: fingerprint(&train_set, &val_set),
        training_rows: train_set.texts.len(),
        metrics,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        train_seconds: outcome.seconds,
    })?;
    if job.promote {
        store.set_current(&manifest.version)?;
    }
    Ok(Trained {
        manifest,
        store_root,
    })
}

/// Scores every text of a labelled dataset and compares with its labels.
pub fn evaluate(model: &dyn Classifier, data: &Dataset) -> Metrics {
    let texts: Vec<&str> = data.texts.iter().map(|s| s.as_str()).collect();
    let predicted: Vec<_> = model
        .predict_batch(&texts)
        .into_iter()
        .map(|p| p.label)
        .collect();
    Metrics::compute(&data.labels, &predicted)
}
