//! The jobs the CLI and the daemon run: train a version from config, evaluate a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sentimentd_config::{Config, TrainableKind};
use sentimentd_data::{Dataset, Label, load_dataset};

use crate::classifier::Classifier;
use crate::error::ModelError;
use crate::fast::FastModel;
use crate::features::FeatureConfig;
use crate::metrics::EvalMetrics;
use crate::store::{Manifest, ModelStore, NewModel, NewVersion, SplitInfo};
use crate::train::{self, TrainObserver, TrainParams};

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
            lr_decay: t.lr_decay,
            weight_decay: t.weight_decay,
            dropout: t.dropout,
            patience: t.patience,
            seed: t.seed,
            balanced_class_weights: matches!(t.class_weights, c::ClassWeights::Balanced),
            backend: t.backend,
            threads: t.threads,
        }
    }
}

/// Where a training job reads from and writes to; `None` fields fall back to the config.
#[derive(Clone, Debug, Default)]
pub struct TrainJob {
    pub train: Vec<PathBuf>,
    /// The reporting split (default `data.val`): scored once after training, never selects.
    pub val: Option<PathBuf>,
    pub store: Option<PathBuf>,
    /// Make the new version current once stored.
    pub promote: bool,
    /// Labelled rows appended to the training data before the selection split is carved
    /// (already deduplicated by the caller).
    pub extra: Option<Dataset>,
    /// Lineage: the labelled-data files `extra` came from, copied into the manifest.
    pub labelled_files: Vec<String>,
    /// Most threads training may use; `None` = `train.threads`, 0 = all cores.
    pub threads: Option<usize>,
    /// The model kind to train; `None` = `[model] kind`.
    pub kind: Option<TrainableKind>,
}

/// The result of [`train_and_store`].
pub struct Trained {
    pub manifest: Manifest,
    pub store_root: PathBuf,
}

/// Salt for the carve's random stream, so it is not the stream that shuffles the epochs.
const SELECTION_SALT: u64 = 0x5E1E_C710_0000_0001;

/// Which rows of a labelled set go to the selection split (`true`): within each label, a
/// seeded shuffle and the first `round(share * n)` rows, so the split keeps the label mix.
/// Every label keeps at least one training row, and a non-empty share with two or more rows
/// selects at least one row.
pub fn selection_mask(labels: &[Label], share: f64, seed: u64) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(seed ^ SELECTION_SALT);
    let mut mask = vec![false; labels.len()];
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut largest: Option<Vec<usize>> = None;
    for label in Label::ALL {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == label).collect();
        rows.shuffle(&mut rng);
        let k = ((rows.len() as f64 * share).round() as usize).min(rows.len().saturating_sub(1));
        for &i in &rows[..k] {
            mask[i] = true;
        }
        if largest.as_ref().is_none_or(|l| rows.len() > l.len()) {
            largest = Some(rows);
        }
    }
    if share > 0.0
        && labels.len() >= 2
        && !mask.contains(&true)
        && let Some(&i) = largest.as_ref().and_then(|l| l.first())
    {
        mask[i] = true;
    }
    mask
}

/// Splits `data` by `mask` into (training rows, selection rows), keeping file order.
fn carve(data: Dataset, mask: &[bool]) -> (Dataset, Dataset) {
    let (mut tt, mut tl, mut st, mut sl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((text, label), &selected) in data.texts.into_iter().zip(data.labels).zip(mask) {
        if selected {
            st.push(text);
            sl.push(label);
        } else {
            tt.push(text);
            tl.push(label);
        }
    }
    (
        Dataset::from_examples(tt, tl),
        Dataset::from_examples(st, sl),
    )
}

fn fingerprint(parts: &[&Dataset]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (i, d) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"|");
        }
        h.update(d.fingerprint.as_bytes());
    }
    hex::encode(h.finalize())
}

fn split_info(d: &Dataset, source: String, share: Option<f64>, seed: Option<u64>) -> SplitInfo {
    SplitInfo {
        rows: d.len(),
        fingerprint: d.fingerprint.clone(),
        source,
        share,
        seed,
    }
}

fn paths_text(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Trains the configured model kind on the job's data and stores it as a new version.
///
/// Three splits, each with one job: the training rows fit the weights; the selection split,
/// carved from the training data (`train.selection_share`, stratified, seeded by
/// `train.seed`), picks the epoch and fits the temperature; the reporting split (`data.val`)
/// is scored once at the end with the serving path and selects nothing, so its figures in
/// `metrics["validation"]` are honest.
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
    let mut all = load_dataset(&train_paths, cfg.data.max_text_chars)?;
    let extra_rows = job.extra.as_ref().map_or(0, Dataset::len);
    if let Some(extra) = &job.extra {
        all.extend(extra.clone());
    }
    let val_set = load_dataset(std::slice::from_ref(&val_path), cfg.data.max_text_chars)?;

    let share = cfg.train.selection_share;
    let seed = cfg.train.seed;
    let total = all.len();
    let mask = selection_mask(&all.labels, share, seed);
    let (train_set, sel_set) = carve(all, &mask);
    if train_set.is_empty() || sel_set.is_empty() {
        return Err(ModelError::Training(format!(
            "{total} training rows are too few to carve a selection split of {share}"
        )));
    }
    let pct = (share * 1000.0).round() / 10.0;
    observer.on_message(&format!(
        "selection split: {} of {total} training rows ({pct}%, stratified, seed {seed}); \
         early stopping and calibration use it; the {} rows of {} only report",
        sel_set.len(),
        val_set.len(),
        val_path.display()
    ));

    let mut params = TrainParams::from_config(cfg);
    if let Some(threads) = job.threads {
        params.threads = threads;
    }
    let built = match job.kind.unwrap_or(cfg.model.kind) {
        TrainableKind::Fast => {
            let trained = train_fast(&params, &train_set, &sel_set, observer)?;
            let selection = evaluate(&trained.model, &sel_set);
            Built::Fast {
                trained,
                params,
                selection,
            }
        }
        TrainableKind::Transformer => Built::Transformer(Box::new(crate::transformer::train(
            cfg, &params, &train_set, &sel_set, observer,
        )?)),
    };
    // Scored through the serving path, so `sentimentd eval` on the stored version reproduces
    // these figures exactly.
    observer.on_message(&format!(
        "scoring the reporting split {}",
        val_path.display()
    ));
    let validation = evaluate(built.classifier(), &val_set);
    let selection = built.selection().clone();
    observer.on_message(&format!(
        "reporting split {}: macro-recall {:.4} (selection split: {:.4})",
        val_path.display(),
        validation.macro_recall,
        selection.macro_recall
    ));
    let mut metrics = BTreeMap::new();
    metrics.insert("validation".to_string(), validation);
    metrics.insert("selection".to_string(), selection);

    let mut train_source = paths_text(&train_paths);
    if extra_rows > 0 || !job.labelled_files.is_empty() {
        train_source.push_str(&format!(
            " + {extra_rows} labelled rows from {} files",
            job.labelled_files.len()
        ));
    }
    train_source.push_str(", less the selection split");
    let mut splits = BTreeMap::new();
    splits.insert(
        "train".to_string(),
        split_info(&train_set, train_source, None, None),
    );
    splits.insert(
        "selection".to_string(),
        split_info(
            &sel_set,
            format!("selection: {pct}% of training data, stratified, seed {seed}"),
            Some(share),
            Some(seed),
        ),
    );
    splits.insert(
        "validation".to_string(),
        split_info(&val_set, val_path.display().to_string(), None, None),
    );

    let store_root = job
        .store
        .clone()
        .unwrap_or_else(|| cfg.paths.model_store.clone());
    let store = ModelStore::for_config(cfg, Some(&store_root))?;
    let (model, history, best_epoch, train_seconds) = match &built {
        Built::Fast {
            trained, params, ..
        } => (
            NewModel::Fast {
                featurizer: &trained.model.featurizer,
                weights: &trained.model.weights,
                params,
            },
            trained.history.clone(),
            trained.best_epoch,
            trained.seconds,
        ),
        Built::Transformer(t) => (
            NewModel::Transformer {
                head: &t.model.head,
                partner: t
                    .model
                    .partner
                    .as_ref()
                    .map(|(f, _)| (&f.featurizer, &f.weights)),
                tuned: t.tuned.as_deref(),
                params: &t.params,
            },
            t.history.clone(),
            t.head_report.best_epoch,
            t.seconds,
        ),
    };
    let manifest = store.save(NewVersion {
        model,
        data_fingerprint: fingerprint(&[&train_set, &sel_set, &val_set]),
        training_rows: train_set.len(),
        metrics,
        history,
        best_epoch,
        train_seconds,
        splits,
        labelled_files: job.labelled_files.clone(),
    })?;
    // Stored: the fine-tuning checkpoints have served their purpose.
    if let Built::Transformer(t) = &built
        && let Some(dir) = &t.checkpoints
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the fine-tuning checkpoints");
    }
    if job.promote {
        store.set_current(&manifest.version)?;
    }
    Ok(Trained {
        manifest,
        store_root,
    })
}

/// A fast model, ready to serve, with how its training went.
pub(crate) struct FastTrained {
    pub model: FastModel,
    pub history: Vec<crate::train::EpochReport>,
    pub best_epoch: usize,
    pub seconds: f64,
}

/// Trains a fast model on `train_set`, its epoch and temperature chosen on `sel_set`: the
/// fast kind, and the transformer kind's ensemble partner.
pub(crate) fn train_fast(
    params: &TrainParams,
    train_set: &Dataset,
    sel_set: &Dataset,
    observer: &mut dyn TrainObserver,
) -> Result<FastTrained, ModelError> {
    let outcome = train::train(
        params,
        &train_set.texts,
        &train_set.labels,
        &sel_set.texts,
        &sel_set.labels,
        observer,
    )?;
    Ok(FastTrained {
        model: FastModel::new(outcome.featurizer, outcome.weights, "candidate".into())?,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        seconds: outcome.seconds,
    })
}

/// A trained candidate of either kind, before it is stored.
// One per training run, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Built {
    Fast {
        trained: FastTrained,
        params: TrainParams,
        selection: EvalMetrics,
    },
    Transformer(Box<crate::transformer::Trained>),
}

impl Built {
    fn classifier(&self) -> &dyn Classifier {
        match self {
            Built::Fast { trained, .. } => &trained.model,
            Built::Transformer(t) => &t.model,
        }
    }

    fn selection(&self) -> &EvalMetrics {
        match self {
            Built::Fast { selection, .. } => selection,
            Built::Transformer(t) => &t.selection,
        }
    }
}

/// Scores every text of a labelled dataset and compares with its labels.
pub fn evaluate(model: &dyn Classifier, data: &Dataset) -> EvalMetrics {
    let texts: Vec<&str> = data.texts.iter().map(|s| s.as_str()).collect();
    let predicted: Vec<_> = model
        .predict_batch(&texts)
        .into_iter()
        .map(|p| p.label)
        .collect();
    EvalMetrics::compute(&data.labels, &predicted)
}
