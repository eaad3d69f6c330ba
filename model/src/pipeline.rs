//! The jobs the CLI and the daemon run: train a version from config, evaluate a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sentimentd_config::{Config, TrainableKind};
use sentimentd_data::{Dataset, Label, load_dataset};

use crate::classifier::ModelKind;
use crate::error::ModelError;
use crate::kinds::fast::Teacher;
use crate::kinds::fast::features::FeatureConfig;
use crate::kinds::{self, TrainInputs};
use crate::manifest::{DataWeighting, Manifest, PartWeight, RECENT, SplitInfo, WeightTrial};
use crate::store::{ModelStore, NewVersion};

use crate::kinds::fast::train::{SplitWeights, TrainObserver, TrainParams};
pub use crate::kinds::fast::{FastTrained, train_fast};
pub use crate::metrics::{evaluate, macro_recall_present};

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
            distill: None,
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
    /// How much the rows of `extra` weigh, in the loss and in selection, against the base
    /// data (`None`: each like a base row). See [`RecentWeighting`].
    pub extra_weight: Option<RecentWeighting>,
    /// Lineage: the labelled-data files `extra` came from, copied into the manifest.
    pub labelled_files: Vec<String>,
    /// Most threads training may use; `None` = `train.threads`, 0 = all cores.
    pub threads: Option<usize>,
    /// The model kind to train; `None` = `[model] kind`.
    pub kind: Option<TrainableKind>,
    /// A stored version whose probabilities for the training texts the fast kind is
    /// distilled from (see [`DistillParams`](crate::kinds::fast::train::DistillParams)).
    pub teacher: Option<String>,
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

/// How a retrain weighs its recent labelled rows against the base data: each weight of
/// `grid` (one recent row = that many base rows) trains a fast model, and the run keeps the
/// one with the best macro-recall on the recent part of the selection split whose base part
/// stays within `tolerance` of the smallest weight's. Only the selection split decides: the
/// reporting split and the gate's holdout never see the trials.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentWeighting {
    pub grid: Vec<f64>,
    pub tolerance: f64,
}

impl RecentWeighting {
    /// The valid weights, smallest first, each once; `[1]` when none is valid.
    pub fn grid(&self) -> Vec<f64> {
        let mut grid: Vec<f64> = self
            .grid
            .iter()
            .copied()
            .filter(|w| w.is_finite() && *w > 0.0)
            .collect();
        grid.sort_by(f64::total_cmp);
        grid.dedup();
        if grid.is_empty() {
            grid.push(1.0);
        }
        grid
    }
}

impl Default for RecentWeighting {
    /// Recent rows weigh like base rows.
    fn default() -> Self {
        RecentWeighting {
            grid: vec![1.0],
            tolerance: 0.0,
        }
    }
}

/// The training and selection rows of a run, with each row's weight.
pub struct WeightedSplits {
    pub train: Dataset,
    pub selection: Dataset,
    pub weights: SplitWeights,
    /// What each part weighed, for the manifest.
    pub weighting: DataWeighting,
}

/// Carves the selection split within each part, so it holds base and recent rows in the
/// proportions training sees (stratified by origin and by label, seeded), and weighs each
/// recent (`extra`) row as `weight` says, in training and in selection alike.
///
/// The base part's carve is the one a run without extra rows makes: a retrain selects on the
/// same base rows as the model it may replace.
pub fn weighted_splits(
    base: Dataset,
    extra: Option<Dataset>,
    extra_weight: f64,
    share: f64,
    seed: u64,
) -> WeightedSplits {
    let extra = extra.unwrap_or_default();
    let base_mask = selection_mask(&base.labels, share, seed);
    let (mut train, mut selection) = carve(base, &base_mask);
    let (base_train, base_sel) = (train.len(), selection.len());
    let (extra_train, extra_sel) = if extra.is_empty() {
        (0, 0)
    } else {
        // Another stream than the base carve's, so the two parts are not carved alike.
        let mask = selection_mask(&extra.labels, share, seed ^ 0xEC7A_0000);
        let (t, s) = carve(extra, &mask);
        let counts = (t.len(), s.len());
        train.extend(t);
        selection.extend(s);
        counts
    };
    // Every row at 1 for now; `reweigh` below sets the recent rows' weight.
    let weights = if extra_train + extra_sel == 0 {
        SplitWeights::default()
    } else {
        SplitWeights {
            train: Some(vec![1.0; base_train + extra_train]),
            selection: Some(vec![1.0; base_sel + extra_sel]),
        }
    };
    let part = |name: &str, rows: usize, sel: usize| PartWeight {
        name: name.to_string(),
        train_rows: rows,
        selection_rows: sel,
        row_weight: 1.0,
        share: 0.0,
    };
    let mut parts = vec![part("base", base_train, base_sel)];
    if extra_train + extra_sel > 0 {
        parts.push(part(RECENT, extra_train, extra_sel));
    }
    let mut splits = WeightedSplits {
        train,
        selection,
        weights,
        weighting: DataWeighting {
            parts,
            ..DataWeighting::default()
        },
    };
    // Sets the shares too, also for a run with no recent rows (where it changes nothing else).
    splits.reweigh(extra_weight);
    splits
}

impl WeightedSplits {
    /// The same rows with every recent row weighing `w` base rows; the shares follow.
    pub fn reweigh(&mut self, w: f64) {
        let w = if w.is_finite() && w > 0.0 { w } else { 1.0 };
        // Base rows come first in both splits; the recent rows follow them.
        let base = self
            .weighting
            .parts
            .first()
            .map(|b| (b.train_rows, b.selection_rows));
        if let (Some((base_train, base_sel)), Some(p)) = (
            base,
            self.weighting.parts.iter_mut().find(|p| p.name == RECENT),
        ) {
            p.row_weight = w;
            for (v, from) in [
                (&mut self.weights.train, base_train),
                (&mut self.weights.selection, base_sel),
            ] {
                if let Some(v) = v {
                    v[from..].iter_mut().for_each(|x| *x = w as f32);
                }
            }
        }
        self.refresh_shares();
    }

    /// Each part's share of the training weight (rows times row weight).
    fn refresh_shares(&mut self) {
        let total: f64 = self
            .weighting
            .parts
            .iter()
            .map(|p| p.train_rows as f64 * p.row_weight)
            .sum();
        for p in &mut self.weighting.parts {
            p.share = if total > 0.0 {
                p.train_rows as f64 * p.row_weight / total
            } else {
                0.0
            };
        }
    }

    /// The selection split's base rows and recent rows (base rows come first).
    pub fn selection_parts(&self) -> (Dataset, Dataset) {
        let b = self
            .weighting
            .parts
            .first()
            .map_or(self.selection.len(), |p| p.selection_rows)
            .min(self.selection.len());
        let part = |from: usize, to: usize| {
            Dataset::from_examples(
                self.selection.texts[from..to].to_vec(),
                self.selection.labels[from..to].to_vec(),
            )
        };
        (part(0, b), part(b, self.selection.len()))
    }
}

/// Trains a fast model for each weight of `weighting.grid`, smallest first, on the same rows
/// and keeps the one [`RecentWeighting`] describes; the walk stops at the first weight whose
/// base rows lose more than the tolerance. `splits` ends up weighed as the kept model was.
/// Every trial is recorded in `splits.weighting.trials`.
pub fn choose_recent_weight(
    params: &TrainParams,
    splits: &mut WeightedSplits,
    weighting: &RecentWeighting,
    observer: &mut dyn TrainObserver,
) -> Result<FastTrained, ModelError> {
    let grid = weighting.grid();
    let (sel_base, sel_recent) = splits.selection_parts();
    if grid.len() == 1 || sel_recent.is_empty() || sel_base.is_empty() {
        // Nothing to choose between, or nothing to judge by: the smallest weight.
        splits.reweigh(grid[0]);
        return train_fast(
            params,
            &splits.train,
            &splits.selection,
            &splits.weights,
            observer,
        );
    }
    let mut best: Option<(usize, FastTrained)> = None;
    let mut trials: Vec<WeightTrial> = Vec::new();
    for &w in &grid {
        splits.reweigh(w);
        let trained = train_fast(
            params,
            &splits.train,
            &splits.selection,
            &splits.weights,
            &mut crate::kinds::fast::train::Quiet,
        )?;
        let trial = WeightTrial {
            row_weight: w,
            share: splits.weighting.recent().map_or(0.0, |p| p.share),
            selection_base: macro_recall_present(&trained.model, &sel_base),
            selection_recent: macro_recall_present(&trained.model, &sel_recent),
            seconds: trained.seconds,
            chosen: false,
        };
        observer.on_message(&format!(
            "recent rows weighing {w} base rows ({:.1}% of the training weight): selection \
             macro-recall {:.4} on the base rows, {:.4} on the recent rows",
            trial.share * 100.0,
            trial.selection_base,
            trial.selection_recent
        ));
        let floor = trials
            .first()
            .map_or(trial.selection_base, |r| r.selection_base)
            - weighting.tolerance;
        let better = best
            .as_ref()
            .is_none_or(|(i, _)| trial.selection_recent > trials[*i].selection_recent);
        let i = trials.len();
        let within = trial.selection_base >= floor;
        if within && better {
            best = Some((i, trained));
        }
        trials.push(trial);
        // Larger weights lean further from the base rows (measured: docs/mlops.md), so the
        // first weight past the tolerance ends the walk and saves the rest of the grid.
        if !within {
            break;
        }
    }
    let Some((i, trained)) = best else {
        // The smallest weight is its own floor, so it always qualifies.
        return Err(ModelError::Training("no recent-row weight was kept".into()));
    };
    trials[i].chosen = true;
    let w = trials[i].row_weight;
    observer.on_message(&format!(
        "kept recent rows weighing {w} base rows: the best selection macro-recall on the \
         recent rows whose base rows lose at most {} against weight {}",
        weighting.tolerance, grid[0]
    ));
    splits.reweigh(w);
    splits.weighting.trials = trials;
    splits.weighting.tolerance = Some(weighting.tolerance);
    Ok(trained)
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

/// The probabilities `version` (in the store at `root`) gives the training texts: the soft
/// targets of a distilled fast model.
fn teach(
    cfg: &Config,
    root: &Path,
    version: &str,
    kind: TrainableKind,
    (train_set, sel_set): (&Dataset, &Dataset),
    threads: usize,
    observer: &mut dyn TrainObserver,
) -> Result<Teacher, ModelError> {
    if kind != TrainableKind::Fast {
        return Err(ModelError::Training(format!(
            "a teacher ({version}) is distilled into the fast kind, and this run trains the {} \
             kind; train with --kind fast",
            ModelKind::from(kind).as_str()
        )));
    }
    let store = ModelStore::for_config(cfg, Some(root))?;
    let cannot = |e: ModelError| {
        ModelError::Training(format!(
            "cannot load the teacher {version} from {}: {e}",
            root.display()
        ))
    };
    let manifest = store.manifest(version).map_err(cannot)?;
    let model = store.load(version).map_err(cannot)?;
    // A teacher trained on this run's selection rows hands their labels to the student, and
    // the selection figures then read high: said, not refused (its data may differ on
    // purpose).
    let selection = manifest.splits.get("selection").map(|s| &s.fingerprint);
    if selection != Some(&sel_set.fingerprint) {
        let warning = format!(
            "distillation: the teacher {version} was trained with another selection split than \
             this run's; if it saw this run's selection rows, the selection figures read high \
             (the reporting split is unaffected unless the teacher trained on it)"
        );
        tracing::warn!(teacher = version, "{warning}");
        observer.on_message(&warning);
    }
    observer.on_message(&format!(
        "distillation: scoring the {} training texts with the teacher {version} ({} kind)",
        train_set.len(),
        model.kind().as_str()
    ));
    // On the training threads, as the rest of the run.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(crate::kinds::fast::train::resolve_threads(threads))
        .build()
        .map_err(|e| ModelError::Training(format!("cannot start the training threads: {e}")))?;
    let mut probabilities = Vec::with_capacity(train_set.len());
    for chunk in train_set.texts.chunks(512) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        probabilities.extend(pool.install(|| model.teaching_probabilities(&texts))?);
        observer.on_progress("teacher", probabilities.len(), train_set.len());
    }
    Ok(Teacher {
        version: version.to_string(),
        probabilities,
    })
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
    let base = load_dataset(&train_paths, cfg.data.max_text_chars)?;
    let extra_rows = job.extra.as_ref().map_or(0, Dataset::len);
    let val_set = load_dataset(std::slice::from_ref(&val_path), cfg.data.max_text_chars)?;

    let share = cfg.train.selection_share;
    let seed = cfg.train.seed;
    let total = base.len() + extra_rows;
    let mut splits = weighted_splits(base, job.extra.clone(), 1.0, share, seed);
    if splits.train.is_empty() || splits.selection.is_empty() {
        return Err(ModelError::Training(format!(
            "{total} training rows are too few to carve a selection split of {share}"
        )));
    }
    let pct = (share * 1000.0).round() / 10.0;
    observer.on_message(&format!(
        "selection split: {} of {total} training rows ({pct}%, stratified by origin and label, \
         seed {seed}); early stopping, calibration and the recent rows' weight use it; the {} \
         rows of {} only report",
        splits.selection.len(),
        val_set.len(),
        val_path.display()
    ));

    let mut params = TrainParams::from_config(cfg);
    if let Some(threads) = job.threads {
        params.threads = threads;
    }
    // The recent rows' weight is chosen with fast models, which train in seconds; the
    // transformer kind's head then trains once with it, and the kept fast model is its
    // ensemble partner.
    let weighting_rule = job.extra_weight.clone().unwrap_or_default();
    let kind = job.kind.unwrap_or(cfg.model.kind);
    let chosen_fast = if extra_rows > 0
        && (kinds::of(kind.into()).trains_fast_models(cfg) || weighting_rule.grid().len() > 1)
    {
        Some(choose_recent_weight(
            &params,
            &mut splits,
            &weighting_rule,
            observer,
        )?)
    } else {
        // No fast model to train (a transformer without its ensemble partner) and nothing to
        // choose between: the one weight listed.
        splits.reweigh(weighting_rule.grid()[0]);
        None
    };
    if let Some(recent) = splits.weighting.recent() {
        observer.on_message(&format!(
            "recent labelled rows: {} train, {} select, each weighing {} base rows: {:.1}% of \
             the training weight",
            recent.train_rows,
            recent.selection_rows,
            recent.row_weight,
            recent.share * 100.0
        ));
    }
    let WeightedSplits {
        train: train_set,
        selection: sel_set,
        weights,
        weighting,
    } = splits;
    let store_root = job
        .store
        .clone()
        .unwrap_or_else(|| cfg.paths.model_store.clone());
    let teacher = match &job.teacher {
        Some(version) => Some(teach(
            cfg,
            &store_root,
            version,
            kind,
            (&train_set, &sel_set),
            params.threads,
            observer,
        )?),
        None => None,
    };
    let built = kinds::of(kind.into()).train(TrainInputs {
        cfg,
        params: &params,
        train_set: &train_set,
        sel_set: &sel_set,
        weights: &weights,
        chosen_fast,
        teacher: teacher.as_ref(),
        observer,
    })?;
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

    let store = ModelStore::for_config(cfg, Some(&store_root))?;
    let manifest = store.save(NewVersion {
        model: built.as_ref(),
        data_fingerprint: fingerprint(&[&train_set, &sel_set, &val_set]),
        training_rows: train_set.len(),
        metrics,
        history: built.history().to_vec(),
        best_epoch: built.best_epoch(),
        train_seconds: built.seconds(),
        splits,
        labelled_files: job.labelled_files.clone(),
        weighting: Some(weighting),
    })?;
    built.stored();
    if job.promote {
        store.set_current(&manifest.version)?;
    }
    Ok(Trained {
        manifest,
        store_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::Classifier;

    fn data(prefix: &str, n: usize) -> Dataset {
        let words = ["awful", "plain", "lovely"];
        let (texts, labels) = (0..n)
            .map(|i| {
                let l = Label::ALL[i % 3];
                (format!("{prefix} {} {i}", words[l.index()]), l)
            })
            .unzip();
        Dataset::from_examples(texts, labels)
    }

    #[test]
    fn the_selection_split_holds_both_parts_and_the_base_carve_is_unchanged() {
        let base = data("tweet", 300);
        let extra = data("review", 90);
        let alone = weighted_splits(base.clone(), None, 1.0, 0.1, 7);
        let mut both = weighted_splits(base, Some(extra), 4.0, 0.1, 7);
        let (sel_base, sel_recent) = both.selection_parts();
        assert_eq!(sel_base.texts, alone.selection.texts, "same base carve");
        assert_eq!(sel_recent.len(), 9, "10% of the recent rows, by label");
        assert!(sel_recent.texts.iter().all(|t| t.starts_with("review")));
        assert_eq!(alone.weights, SplitWeights::default());
        let w = both.weights.train.as_deref().unwrap_or_default();
        assert_eq!(w.len(), both.train.len());
        assert!(w[..270].iter().all(|&x| x == 1.0) && w[270..].iter().all(|&x| x == 4.0));
        let parts = &both.weighting.parts;
        assert_eq!((parts[0].train_rows, parts[1].train_rows), (270, 81));
        assert!((parts[1].share - 81.0 * 4.0 / (270.0 + 81.0 * 4.0)).abs() < 1e-12);
        both.reweigh(2.0);
        let sel = both.weights.selection.as_deref().unwrap_or_default();
        assert!(sel[30..].iter().all(|&x| x == 2.0) && sel[..30].iter().all(|&x| x == 1.0));
        assert!((both.weighting.parts.iter().map(|p| p.share).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// With the teacher weighing everything, the model learns the teacher's labels, not the
    /// data's; with it weighing nothing, training is exactly the plain one.
    #[test]
    fn a_distilled_model_follows_its_teacher_by_the_mix() {
        let train = data("tweet", 300);
        let sel = data("held", 60);
        let mut params = tiny_params();
        // One epoch of small batches: early stopping (on the true labels) picks nothing.
        params.epochs = 1;
        params.batch_size = 16;
        // A teacher that calls "awful" positive and "lovely" negative.
        let flipped = |l: Label| match l {
            Label::Negative => Label::Positive,
            Label::Positive => Label::Negative,
            Label::Neutral => Label::Neutral,
        };
        let probabilities = train
            .labels
            .iter()
            .map(|&l| {
                let mut p = [0.02f32; 3];
                p[flipped(l).index()] = 0.96;
                p
            })
            .collect();
        let teacher = Teacher {
            version: "teacher-v".into(),
            probabilities,
        };
        let weights = SplitWeights::default();
        let fit = |mix: f32| {
            let soft = crate::kinds::fast::train::Soft {
                probabilities: &teacher.probabilities,
                mix,
            };
            crate::kinds::fast::train::train_rows(
                &params,
                crate::kinds::fast::train::Rows {
                    soft: Some(soft),
                    ..crate::kinds::fast::train::Rows::new(&train.texts, &train.labels)
                },
                crate::kinds::fast::train::Rows::new(&sel.texts, &sel.labels),
                &mut crate::kinds::fast::train::Quiet,
            )
            .expect("trains")
        };
        let agreement = |outcome: &crate::kinds::fast::train::TrainOutcome,
                         truth: &dyn Fn(Label) -> Label| {
            use crate::kinds::fast::train::{argmax_labels, featurize_all, predict_examples};
            let examples = featurize_all(&outcome.featurizer, &train.texts, 1);
            let predicted = argmax_labels(&predict_examples(&outcome.weights, &examples));
            let hits = predicted
                .iter()
                .zip(&train.labels)
                .filter(|(p, l)| **p == truth(**l))
                .count();
            hits as f64 / train.len() as f64
        };
        let taught = fit(1.0);
        assert!(
            agreement(&taught, &flipped) > 0.9,
            "{}",
            agreement(&taught, &flipped)
        );
        let plain = crate::kinds::fast::train::train_rows(
            &params,
            crate::kinds::fast::train::Rows::new(&train.texts, &train.labels),
            crate::kinds::fast::train::Rows::new(&sel.texts, &sel.labels),
            &mut crate::kinds::fast::train::Quiet,
        )
        .expect("trains");
        assert_eq!(fit(0.0).weights.out_w, plain.weights.out_w);
        assert!(agreement(&plain, &|l| l) > 0.9);

        // Through the kind: every mix is tried and the one the selection split (the true
        // labels) prefers is kept: here the labels alone.
        let (trained, info) = crate::kinds::fast::distil(
            &params,
            &train,
            &sel,
            &weights,
            &teacher,
            &mut crate::kinds::fast::train::Quiet,
        )
        .expect("distils");
        assert_eq!(info.teacher, "teacher-v");
        // Labels alone once, every other mix at every temperature.
        assert_eq!(info.trials.len(), 1 + 4 * 3, "{:?}", info.trials);
        assert_eq!(info.mix, 0.0, "{:?}", info.trials);
        assert_eq!(
            trained.model.predict("tweet lovely 7").label,
            Label::Positive
        );
    }

    fn tiny_params() -> TrainParams {
        let mut cfg = Config::default();
        cfg.model.embedding_dim = 8;
        cfg.model.vocab_size = 200;
        cfg.model.buckets = 1024;
        cfg.train.epochs = 2;
        cfg.train.threads = 1;
        TrainParams::from_config(&cfg)
    }

    #[test]
    fn the_kept_weight_is_the_best_on_recent_selection_rows_within_the_base_tolerance() {
        for tolerance in [0.0, 0.02, 1.0] {
            let rule = RecentWeighting {
                grid: vec![8.0, 1.0, 2.0, 8.0, f64::NAN],
                tolerance,
            };
            // The recent rows say the opposite of the base rows for two of the three words,
            // so leaning on them costs the base rows.
            let mut recent = data("review", 300);
            if tolerance < 1.0 {
                for l in &mut recent.labels {
                    *l = match *l {
                        Label::Negative => Label::Positive,
                        Label::Positive => Label::Negative,
                        other => other,
                    };
                }
            }
            let mut splits = weighted_splits(data("tweet", 600), Some(recent), 1.0, 0.2, 3);
            let kept = choose_recent_weight(
                &tiny_params(),
                &mut splits,
                &rule,
                &mut crate::kinds::fast::train::Quiet,
            );
            assert!(kept.is_ok(), "{:?}", kept.err());
            let trials = &splits.weighting.trials;
            let weights: Vec<f64> = trials.iter().map(|t| t.row_weight).collect();
            let floor = trials[0].selection_base - tolerance;
            // Sorted, deduplicated, valid only; the walk stops at the first weight past the
            // tolerance, and only there.
            assert_eq!(weights, [1.0, 2.0, 8.0][..weights.len()]);
            let (last, before) = trials.split_last().expect("one trial at least");
            assert!(before.iter().all(|t| t.selection_base >= floor));
            assert!(weights.len() == 3 || last.selection_base < floor);
            if tolerance >= 1.0 {
                assert_eq!(weights.len(), 3, "nothing can fall past a tolerance of 1");
            }
            let chosen: Vec<_> = trials.iter().filter(|t| t.chosen).collect();
            assert_eq!(chosen.len(), 1);
            let best = trials
                .iter()
                .filter(|t| t.selection_base >= floor)
                .map(|t| t.selection_recent)
                .fold(f64::NEG_INFINITY, f64::max);
            assert!(chosen[0].selection_base >= floor);
            assert_eq!(chosen[0].selection_recent, best);
            assert_eq!(splits.weighting.parts[1].row_weight, chosen[0].row_weight);
            assert_eq!(splits.weighting.tolerance, Some(tolerance));
        }
    }
}
