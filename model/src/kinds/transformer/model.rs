//! The `transformer` model kind: a pretrained sentence encoder (kept outside the model store,
//! in `[transformer] pretrained_dir`, and pinned by its fingerprint), a classifier head trained
//! on its embeddings, and optionally a fast model trained on the same rows whose
//! probabilities are averaged in with a weight fitted on the selection split.

use safetensors::tensor::SafeTensors;
use sentimentd_config::{Backend, FineTuneLayers, Precision, TransformerConfig};
use sentimentd_data::Label;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::classifier::{Analysis, Classifier, ModelKind, Prediction};
use crate::error::ModelError;
use crate::kinds::TrainInputs;
use crate::kinds::fast::model::FastModel;
use crate::kinds::fast::train::{EpochReport, TrainObserver};
use crate::kinds::transformer::encoder::SentenceEncoder;
use crate::kinds::transformer::finetune::plan::{self, Recipe};
use crate::kinds::transformer::finetune::{FineTuneParams, fine_tune};
use crate::kinds::transformer::head::{HeadParams, HeadReport, LinearHead};
use crate::kinds::transformer::params::{
    EnsembleParams, FineTuneInfo, RecipeInfo, TransformerParams,
};
use crate::metrics::EvalMetrics;

/// Loaded encoders, shared by every model over the same files: a hot swap between two
/// versions of this kind holds one encoder in memory, not two.
/// Directory, max_seq_len, backend, precision, and the fingerprint of fine-tuned layers if any.
type EncoderKey = (PathBuf, usize, Backend, Precision, Option<String>);
type EncoderCache = Mutex<Vec<(EncoderKey, Weak<SentenceEncoder>)>>;
static ENCODERS: OnceLock<EncoderCache> = OnceLock::new();

/// The encoder in `dir`, loaded once per process while anything holds it.
pub fn shared_encoder(
    dir: &Path,
    max_seq_len: usize,
    backend: Backend,
    precision: Precision,
    tuned: Option<&[u8]>,
) -> Result<Arc<SentenceEncoder>, ModelError> {
    let tuned_key = tuned.map(|t| {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(t))
    });
    let key = (
        dir.to_path_buf(),
        max_seq_len,
        backend,
        precision,
        tuned_key,
    );
    let cache = ENCODERS.get_or_init(|| Mutex::new(Vec::new()));
    // A poisoned lock only means another thread panicked while loading; the list is intact.
    let mut list = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    list.retain(|(_, w)| w.strong_count() > 0);
    if let Some(e) = list
        .iter()
        .find(|(k, _)| k == &key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(e);
    }
    let encoder = Arc::new(SentenceEncoder::load_tuned(
        dir,
        max_seq_len,
        backend,
        precision,
        tuned,
    )?);
    tracing::info!(
        dir = %dir.display(),
        fine_tuned = tuned.is_some(),
        products = encoder.serving_precision(),
        "loaded the sentence encoder"
    );
    list.push((key, Arc::downgrade(&encoder)));
    Ok(encoder)
}

/// A servable transformer version.
pub struct TransformerModel {
    pub encoder: Arc<SentenceEncoder>,
    pub head: LinearHead,
    /// The fast model and the transformer's weight in the average.
    pub partner: Option<(FastModel, f32)>,
    batch: usize,
    version: String,
}

/// `weight · a + (1 − weight) · b`.
fn blend(a: [f32; 3], b: [f32; 3], weight: f32) -> [f32; 3] {
    [0, 1, 2].map(|i| weight * a[i] + (1.0 - weight) * b[i])
}

impl TransformerModel {
    pub fn new(
        encoder: Arc<SentenceEncoder>,
        head: LinearHead,
        partner: Option<(FastModel, f32)>,
        batch: usize,
        version: String,
    ) -> Result<TransformerModel, ModelError> {
        if head.dim != encoder.dim() {
            return Err(ModelError::Corrupt {
                path: version.into(),
                reason: format!(
                    "the head takes {} features, the encoder gives {}",
                    head.dim,
                    encoder.dim()
                ),
            });
        }
        Ok(TransformerModel {
            encoder,
            head,
            partner,
            batch: batch.max(1),
            version,
        })
    }

    /// Analyses of texts whose embeddings are already computed (training scores the
    /// selection split this way, with the embeddings it cached).
    pub fn analyse_embedded(&self, texts: &[&str], embeddings: Vec<Vec<f32>>) -> Vec<Analysis> {
        texts
            .iter()
            .zip(embeddings)
            .map(|(text, e)| {
                let own = self.head.probabilities(&e);
                let (probabilities, oov_share) = match &self.partner {
                    Some((fast, weight)) => {
                        let a = fast.analyse(text);
                        (blend(own, a.prediction.probabilities, *weight), a.oov_share)
                    }
                    None => (own, None),
                };
                Analysis {
                    prediction: Prediction::from_probabilities(probabilities),
                    embedding: Some(e),
                    oov_share,
                }
            })
            .collect()
    }
}

impl Classifier for TransformerModel {
    fn version(&self) -> &str {
        &self.version
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Transformer
    }

    fn predict(&self, text: &str) -> Prediction {
        self.analyse(text).prediction
    }

    fn prefers_batches(&self) -> bool {
        true
    }

    fn predict_batch(&self, texts: &[&str]) -> Vec<Prediction> {
        self.analyse_batch(texts)
            .into_iter()
            .map(|a| a.prediction)
            .collect()
    }

    fn embed(&self, text: &str) -> Option<Vec<f32>> {
        self.analyse(text).embedding
    }

    fn teaching_probabilities(&self, texts: &[&str]) -> Result<Vec<[f32; 3]>, ModelError> {
        let embeddings = self.encoder.embed(texts, self.batch)?;
        if embeddings.len() != texts.len() {
            return Err(ModelError::Training(format!(
                "the encoder returned {} embeddings for {} texts",
                embeddings.len(),
                texts.len()
            )));
        }
        Ok(embeddings
            .iter()
            .map(|e| self.head.probabilities(e))
            .collect())
    }

    fn analyse(&self, text: &str) -> Analysis {
        // analyse_batch returns one analysis per text or panics (see there).
        match self.analyse_batch(&[text]).pop() {
            Some(a) => a,
            None => panic!("the encoder returned no embedding"),
        }
    }

    fn analyse_batch(&self, texts: &[&str]) -> Vec<Analysis> {
        match self.encoder.embed(texts, self.batch) {
            Ok(embeddings) if embeddings.len() == texts.len() => {
                self.analyse_embedded(texts, embeddings)
            }
            // Tokenising a string cannot fail with the shipped WordPiece tokenizer; should it,
            // the panic is contained by the caller and the rows fail with this reason
            // instead of getting a made-up prediction.
            Ok(_) => panic!("the encoder returned the wrong number of embeddings"),
            Err(e) => panic!("the encoder failed: {e}"),
        }
    }
}

/// Writes the head as safetensors (`head.weight` `[dim, 3]`, `head.bias` `[3]`).
pub fn save_head(head: &LinearHead, path: &Path) -> Result<(), ModelError> {
    let tensors: [(&str, Vec<usize>, &[f32]); 2] = [
        ("head.weight", vec![head.dim, 3], &head.weights),
        ("head.bias", vec![3], &head.bias),
    ];
    let data = crate::kinds::fast::model::f32_safetensors(&tensors, None, path)?;
    std::fs::write(path, data).map_err(ModelError::io(path))
}

pub fn load_head(path: &Path) -> Result<LinearHead, ModelError> {
    let data = std::fs::read(path).map_err(ModelError::io(path))?;
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&data).map_err(|e| corrupt(e.to_string()))?;
    let get = |name: &str| crate::kinds::fast::model::f32_tensor(&st, name, path);
    let (ws, weights) = get("head.weight")?;
    let (bs, bias) = get("head.bias")?;
    let (&[dim, 3], &[3]) = (&ws[..], &bs[..]) else {
        return Err(corrupt(format!(
            "head shapes {ws:?} and {bs:?}, expected [dim, 3] and [3]"
        )));
    };
    if weights.iter().chain(&bias).any(|v| !v.is_finite()) {
        return Err(corrupt("the head has non-finite weights".into()));
    }
    Ok(LinearHead {
        dim,
        weights,
        bias: [bias[0], bias[1], bias[2]],
    })
}

/// The transformer's weight in the average with the fast model: the one of 0, 0.05, ..., 1
/// with the best macro-recall on the selection split, ties to the lower log-loss.
pub fn fit_blend_weight(own: &[[f32; 3]], fast: &[[f32; 3]], labels: &[Label]) -> f32 {
    fit_blend_weight_weighted(own, fast, labels, None)
}

/// [`fit_blend_weight`] with each selection row counted by its weight.
pub fn fit_blend_weight_weighted(
    own: &[[f32; 3]],
    fast: &[[f32; 3]],
    labels: &[Label],
    weights: Option<&[f32]>,
) -> f32 {
    let mut best = (1.0f32, -1.0f64, f64::INFINITY);
    for step in 0..=20 {
        let w = step as f32 / 20.0;
        let probs: Vec<[f32; 3]> = own
            .iter()
            .zip(fast)
            .map(|(a, b)| blend(*a, *b, w))
            .collect();
        let predicted: Vec<Label> = probs
            .iter()
            .map(|p| Prediction::from_probabilities(*p).label)
            .collect();
        let recall = crate::metrics::weighted_macro_recall(labels, &predicted, weights);
        let nll = probs
            .iter()
            .zip(labels)
            .map(|(p, y)| -f64::from(p[y.index()].max(1e-7)).ln());
        let loss = crate::kinds::fast::train::weighted_mean(nll, weights);
        if recall > best.1 || (recall == best.1 && loss < best.2) {
            best = (w, recall, loss);
        }
    }
    best.0
}

/// A trained transformer candidate.
pub struct Trained {
    pub model: TransformerModel,
    pub params: TransformerParams,
    /// The whole model on the selection split (optimistic: it chose the epoch and weight).
    pub selection: EvalMetrics,
    /// The ensemble partner's epochs.
    pub history: Vec<EpochReport>,
    pub head_report: HeadReport,
    /// The fine-tuned layers (safetensors bytes), when fine-tuned.
    pub tuned: Option<Vec<u8>>,
    /// The fine-tuning checkpoints: to delete once the version is stored, not before.
    pub checkpoints: Option<PathBuf>,
    pub seconds: f64,
}

/// Cache files kept (one per encoder); the least recently used go first.
const CACHE_KEEP: usize = 4;

/// Sentence embeddings by text, on disk per encoder (`<fingerprint>.emb`: records of a
/// 16-byte text hash and the embedding). A retrain embeds only texts it has not seen, and an
/// interrupted run resumes where it stopped: records are appended as batches finish, and a
/// torn last record is dropped on open. The file is locked while open, so a CLI run and a
/// daemon retrain never append to it at once. It grows with the distinct texts embedded (1.5
/// KB each for a 384-wide encoder); deleting it only costs the next run the embedding time.
pub struct EmbeddingCache {
    path: PathBuf,
    file: std::fs::File,
    dim: usize,
    index: HashMap<[u8; 16], usize>,
    /// Embeddings in file order, `dim` values each.
    data: Vec<f32>,
    /// Texts this instance embedded (not found in the file).
    computed: usize,
}

fn text_key(text: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl EmbeddingCache {
    pub fn open(dir: &Path, encoder: &SentenceEncoder) -> Result<EmbeddingCache, ModelError> {
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        let fp = encoder.fingerprint();
        // Embeddings from bf16 products differ (slightly) from f32 ones: each has its file,
        // so training reads what serving computes. f32 keeps the name it always had.
        let products = match encoder.serving_precision() {
            "f32" => String::new(),
            p => format!("-{p}"),
        };
        let path = dir.join(format!("{}{products}.emb", &fp[..fp.len().min(32)]));
        EmbeddingCache::read(&path, encoder.dim())
    }

    fn read(path: &Path, dim: usize) -> Result<EmbeddingCache, ModelError> {
        use std::io::{Read, Seek};
        let path = path.to_path_buf();
        let io = |e: std::io::Error| ModelError::io(&path)(e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(&io)?;
        if file.try_lock().is_err() {
            tracing::info!(path = %path.display(), "waiting for another run to release the embedding cache");
            file.lock().map_err(&io)?;
        }
        let record = 16 + 4 * dim;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(&io)?;
        let whole = bytes.len() / record * record;
        if whole != bytes.len() {
            tracing::warn!(path = %path.display(), "embedding cache ends in a torn record; dropping it");
            file.set_len(whole as u64).map_err(&io)?;
        }
        file.seek(std::io::SeekFrom::Start(whole as u64))
            .map_err(&io)?;
        // Marks the file used, for pruning (reads do not update the time).
        let _ = file.set_modified(std::time::SystemTime::now());
        let mut index = HashMap::new();
        let mut data = Vec::with_capacity(whole / record * dim);
        for r in bytes[..whole].chunks_exact(record) {
            let mut key = [0u8; 16];
            key.copy_from_slice(&r[..16]);
            index.insert(key, data.len() / dim);
            data.extend(
                r[16..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(EmbeddingCache {
            path,
            file,
            dim,
            index,
            data,
            computed: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Texts this cache had to embed so far.
    pub fn computed(&self) -> usize {
        self.computed
    }

    /// Embeddings of `texts`, in order: cached ones read, the others computed (`progress`
    /// gets `(done, to_compute)` after each batch) and appended to the file.
    pub fn embed(
        &mut self,
        encoder: &SentenceEncoder,
        texts: &[String],
        batch: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        use std::io::Write;
        let keys: Vec<[u8; 16]> = texts.iter().map(|t| text_key(t)).collect();
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<usize> = (0..texts.len())
            .filter(|&i| !self.index.contains_key(&keys[i]) && seen.insert(keys[i]))
            .collect();
        if !missing.is_empty() {
            let mut done = 0;
            progress(0, missing.len());
            for chunk in missing.chunks(batch.max(1) * 8) {
                let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
                let embedded = encoder.embed(&refs, batch)?;
                if embedded.len() != chunk.len() || embedded.iter().any(|e| e.len() != self.dim) {
                    return Err(ModelError::Training(format!(
                        "the encoder gave {} embeddings for {} texts, or not {} values each",
                        embedded.len(),
                        chunk.len(),
                        self.dim
                    )));
                }
                let mut bytes = Vec::with_capacity(chunk.len() * (16 + 4 * self.dim));
                for (&i, e) in chunk.iter().zip(&embedded) {
                    bytes.extend_from_slice(&keys[i]);
                    bytes.extend(e.iter().flat_map(|v| v.to_le_bytes()));
                    self.index.insert(keys[i], self.data.len() / self.dim);
                    self.data.extend_from_slice(e);
                }
                self.file
                    .write_all(&bytes)
                    .map_err(ModelError::io(&self.path))?;
                done += chunk.len();
                self.computed += chunk.len();
                progress(done, missing.len());
            }
            self.file.sync_all().map_err(ModelError::io(&self.path))?;
        }
        keys.iter()
            .map(|k| {
                let at = self.index.get(k).copied().ok_or_else(|| {
                    ModelError::Training("a text is missing from the embedding cache".into())
                })? * self.dim;
                Ok(self.data[at..at + self.dim].to_vec())
            })
            .collect()
    }
}

/// Deletes all but the `CACHE_KEEP` most recently used cache files.
fn prune_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "emb"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(CACHE_KEEP);
    for (_, path) in files.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot prune the embedding cache");
        }
    }
}

/// Trains a transformer candidate on `train_set`, choosing the head's epoch and the
/// ensemble's weight on `sel_set`. Embeddings are cached under `<state_dir>/embeddings`.
///
/// `fast` trains the ensemble partner, and its `threads` (0 = all cores) size the pool made
/// here for the encoder's parallel work, instead of the global pool serving uses: a daemon
/// retrain then keeps to `[retrain] threads`, and its threads inherit the calling thread's
/// lowered priority.
pub fn train(inputs: TrainInputs<'_>) -> Result<Trained, ModelError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(crate::kinds::fast::train::resolve_threads(
            inputs.params.threads,
        ))
        .thread_name(|i| format!("train-{i}"))
        .build()
        .map_err(|e| ModelError::Training(format!("cannot start the training threads: {e}")))?;
    pool.install(|| train_on_pool(inputs))
}

/// Share of `[transformer] time_budget_mins` kept for what follows fine-tuning: the ensemble's
/// fit, evaluating and saving the version.
const BUDGET_RESERVE: f64 = 0.05;

fn minutes(secs: f64) -> String {
    format!("{:.1} min", secs / 60.0)
}

/// The recipe this run trains with: the configured one, or (`auto`) the first of
/// [`plan::LADDER`] whose estimate fits what is left of the time budget. `interrupted` says
/// whether an unfinished run of a recipe left checkpoints; `auto` resumes that one.
#[allow(clippy::too_many_arguments)]
fn plan_recipe(
    t: &TransformerConfig,
    encoder: &SentenceEncoder,
    head: &LinearHead,
    texts: (&[String], &[String]),
    started: std::time::Instant,
    interrupted: impl Fn(Recipe) -> bool,
    seed: u64,
    observer: &mut dyn TrainObserver,
) -> Result<RecipeInfo, ModelError> {
    let planned_after = started.elapsed().as_secs_f64();
    let info = |choice: &str, r: Recipe| RecipeInfo {
        choice: choice.into(),
        name: r.to_string(),
        layers: r.layers,
        epochs: r.epochs,
        budget_secs: None,
        planned_after_secs: planned_after,
        estimated_secs: None,
        candidates: Vec::new(),
        costs: None,
        stopped_early: None,
        seconds: 0.0,
    };
    let fixed = match t.finetune_layers {
        FineTuneLayers::Fixed(0) => {
            let i = info("configured", Recipe::FROZEN);
            observer.on_message(&format!(
                "recipe: {} ([transformer] finetune_layers = 0)",
                i.name
            ));
            return Ok(i);
        }
        FineTuneLayers::Fixed(layers) => Some(Recipe {
            layers,
            epochs: t.finetune_epochs,
        }),
        FineTuneLayers::Auto => None,
    };
    let total = encoder.config.num_hidden_layers;
    let ladder: Vec<Recipe> = plan::LADDER
        .iter()
        .copied()
        .filter(|r| r.layers <= total)
        .collect();
    // Measured at the depth that matters: the configured one, or the ladder's deepest.
    let depth = fixed.map_or_else(
        || ladder.iter().map(|r| r.layers).max().unwrap_or(1),
        |r| r.layers,
    );
    let costs = plan::calibrate(encoder, head, texts.0, t.finetune_batch, depth, seed)?;
    let tokens = |xs: &[String]| -> Result<usize, ModelError> {
        xs.iter()
            .map(|x| encoder.tokenize(x).map(|ids| ids.len()))
            .sum()
    };
    let (train_tokens, sel_tokens) = (tokens(texts.0)?, tokens(texts.1)?);
    let estimate = |r: Recipe| plan::estimate_secs(r, &costs, train_tokens, sel_tokens, total);
    let calibration = format!(
        "calibrated on this machine, {depth} layers tuned: {:.0} µs per token and tuned layer, \
         {:.0} µs per token and frozen layer; {train_tokens} training and {sel_tokens} selection \
         tokens",
        costs.train * 1e6,
        costs.forward * 1e6
    );
    if let Some(r) = fixed {
        let mut i = info("configured", r);
        let secs = estimate(r);
        i.estimated_secs = Some(secs);
        i.costs = Some(costs);
        observer.on_message(&format!(
            "recipe: {} ([transformer] finetune_layers = {}), estimated {} ({calibration})",
            i.name,
            r.layers,
            minutes(secs)
        ));
        return Ok(i);
    }
    let budget = t.time_budget_mins * 60.0;
    // After the calibration and the token counts, which the budget pays for too.
    let available = budget * (1.0 - BUDGET_RESERVE) - started.elapsed().as_secs_f64();
    let (mut chosen, candidates) = plan::choose(&ladder, available, estimate);
    if let Some(r) = ladder
        .iter()
        .copied()
        .find(|&r| r.layers > 0 && r != chosen && interrupted(r))
    {
        observer.on_message(&format!(
            "recipe: an interrupted run of \"{r}\" left checkpoints; resuming it rather than \
             starting \"{chosen}\""
        ));
        chosen = r;
    }
    let considered: Vec<String> = candidates
        .iter()
        .filter(|c| c.layers > 0)
        .map(|c| {
            format!(
                "{} layers × {} epochs {}{}",
                c.layers,
                c.epochs,
                minutes(c.estimated_secs),
                if c.fits { "" } else { " (does not fit)" }
            )
        })
        .collect();
    let mut i = info("auto", chosen);
    i.budget_secs = Some(budget);
    i.estimated_secs = (chosen.layers > 0).then(|| estimate(chosen));
    i.candidates = candidates;
    i.costs = Some(costs);
    observer.on_message(&format!(
        "recipe (auto): {}; time budget {} min, {} spent, {} left for fine-tuning; estimates: {} \
         ({calibration})",
        i.name,
        t.time_budget_mins,
        minutes(started.elapsed().as_secs_f64()),
        minutes(available.max(0.0)),
        considered.join(", ")
    ));
    Ok(i)
}

fn train_on_pool(inputs: TrainInputs<'_>) -> Result<Trained, ModelError> {
    let TrainInputs {
        cfg,
        params: fast,
        train_set,
        sel_set,
        weights,
        chosen_fast: partner,
        // The pipeline refuses a teacher for this kind: distillation teaches the fast kind.
        teacher: _,
        observer,
    } = inputs;
    let started = std::time::Instant::now();
    let t = &cfg.transformer;
    let base = shared_encoder(
        &t.encoder_dir(),
        t.max_seq_len,
        cfg.train.backend,
        t.precision,
        None,
    )?;
    let encoder = base.clone();
    let cache = cfg.paths.embeddings();
    observer.on_message(&format!(
        "embedding {} training and {} selection texts with {} ({} products; cached in {})",
        train_set.len(),
        sel_set.len(),
        encoder.dir().display(),
        encoder.serving_precision(),
        cache.display()
    ));
    let mut store = EmbeddingCache::open(&cache, &encoder)?;
    let xs = store.embed(&encoder, &train_set.texts, t.embed_batch, |d, n| {
        observer.on_progress("embedding training texts", d, n)
    })?;
    let sel_x = store.embed(&encoder, &sel_set.texts, t.embed_batch, |d, n| {
        observer.on_progress("embedding selection texts", d, n)
    })?;
    let unique = {
        let all: std::collections::HashSet<&str> = train_set
            .texts
            .iter()
            .chain(&sel_set.texts)
            .map(String::as_str)
            .collect();
        all.len()
    };
    observer.on_message(&format!(
        "embeddings: {} of {unique} distinct texts were cached, {} computed ({})",
        unique - store.computed(),
        store.computed(),
        store.path().display()
    ));
    drop(store);
    prune_cache(&cache);

    let hp = HeadParams {
        epochs: t.head_epochs,
        learning_rate: t.head_learning_rate,
        l2: t.head_l2,
        patience: t.head_patience,
    };
    observer.on_message(&format!(
        "training the head: at most {} epochs, lr {}, L2 {}",
        hp.epochs, hp.learning_rate, hp.l2
    ));
    let (head, head_report) = LinearHead::train_weighted(
        &xs,
        &train_set.labels,
        weights.train.as_deref(),
        &sel_x,
        &sel_set.labels,
        weights.selection.as_deref(),
        &hp,
        |e, _| observer.on_progress("training the head", e, hp.epochs),
    );
    observer.on_message(&format!(
        "head: epoch {} of {} run, selection macro-recall {:.4}",
        head_report.best_epoch, head_report.epochs_run, head_report.selection_macro_recall
    ));

    // The ensemble's fast model trains before the recipe is chosen, so the budget left for
    // fine-tuning is known.
    let partner = if t.ensemble {
        Some(match partner {
            // Trained on these rows with these weights already (see `choose_recent_weight`).
            Some(p) => p,
            None => {
                observer.on_message("training the fast model of the ensemble");
                crate::kinds::fast::train_fast(fast, train_set, sel_set, weights, observer)?
            }
        })
    } else {
        None
    };

    let run_key = |fp: &FineTuneParams| -> Result<String, ModelError> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // The checkpoints' format: burn records before, safetensors and frozen f16 now.
        // An unfinished run of another format is removed below, not resumed.
        h.update(b"finetune-format-2");
        h.update(encoder.fingerprint());
        // The frozen layers' output depends on the serving forward's products.
        h.update(encoder.serving_precision());
        h.update(&train_set.fingerprint);
        h.update(&sel_set.fingerprint);
        h.update(serde_json::to_vec(fp).map_err(ModelError::json)?);
        h.update(serde_json::to_vec(&hp).map_err(ModelError::json)?);
        // The starting head was trained with these row weights.
        for w in weights.train.iter().chain(&weights.selection) {
            w.iter().for_each(|x| h.update(x.to_le_bytes()));
        }
        Ok(hex::encode(h.finalize()))
    };
    let params_of = |r: Recipe| FineTuneParams {
        layers: r.layers,
        epochs: r.epochs,
        batch_size: t.finetune_batch,
        learning_rate: t.finetune_learning_rate,
        seed: cfg.train.seed,
        checkpoint_every: t.checkpoint_every_steps,
    };
    let root = cfg.paths.finetune();
    let mut recipe = plan_recipe(
        t,
        &encoder,
        &head,
        (&train_set.texts, &sel_set.texts),
        started,
        |r| {
            // An interrupted `auto` run resumes with the recipe it had chosen, whatever a new
            // calibration says, rather than throwing its checkpoints away.
            run_key(&params_of(r))
                .is_ok_and(|key| root.join(&key[..16]).join("progress.json").is_file())
        },
        cfg.train.seed,
        observer,
    )?;

    // Fine-tuning replaces the head, the encoder and the selection embeddings.
    let mut checkpoints = None;
    let (head, encoder, sel_x, finetune, tuned) = if recipe.layers > 0 {
        let fp = params_of(Recipe {
            layers: recipe.layers,
            epochs: recipe.epochs,
        });
        let key = run_key(&fp)?;
        let dir = root.join(&key[..16]);
        // Only this run's checkpoints are worth keeping: an unfinished run with other data
        // or settings would never resume.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.filter_map(Result::ok) {
                if e.path() != dir && e.path().is_dir() {
                    tracing::info!(dir = %e.path().display(), "removing the checkpoints of an earlier, unfinished fine-tuning run");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // `auto` holds to its budget; a configured recipe runs as configured.
        let deadline = recipe
            .budget_secs
            .map(|b| started + std::time::Duration::from_secs_f64(b * (1.0 - BUDGET_RESERVE)));
        let ft = fine_tune(
            &encoder,
            &head,
            &fp,
            (&train_set.texts, &train_set.labels),
            (&sel_set.texts, &sel_set.labels),
            &key,
            &dir,
            deadline,
            observer,
        )?;
        recipe.stopped_early = ft.stopped_early.clone();
        let tuned = shared_encoder(
            &t.encoder_dir(),
            t.max_seq_len,
            cfg.train.backend,
            t.precision,
            Some(&ft.layers),
        )?;
        let refs: Vec<&str> = sel_set.texts.iter().map(String::as_str).collect();
        let sel_tuned = tuned.embed(&refs, t.embed_batch)?;
        let info = FineTuneInfo {
            params: fp,
            best_epoch: ft.best_epoch,
            history: ft.history,
        };
        checkpoints = Some(dir);
        (ft.head, tuned, sel_tuned, Some(info), Some(ft.layers))
    } else {
        (head, encoder, sel_x, None, None)
    };
    drop(base);

    let mut history = Vec::new();
    let (partner, ensemble) = if let Some(partner) = partner {
        let own: Vec<[f32; 3]> = sel_x.iter().map(|x| head.probabilities(x)).collect();
        let theirs: Vec<[f32; 3]> = sel_set
            .texts
            .iter()
            .map(|text| partner.model.probabilities(text))
            .collect();
        let weight =
            fit_blend_weight_weighted(&own, &theirs, &sel_set.labels, weights.selection.as_deref());
        observer.on_message(&format!(
            "ensemble: the transformer weighs {weight:.2}, the fast model {:.2} (fitted on the \
             selection split)",
            1.0 - weight
        ));
        let ensemble = EnsembleParams {
            weight,
            fast: fast.clone(),
            fast_best_epoch: partner.best_epoch,
        };
        history = partner.history;
        (Some((partner.model, weight)), Some(ensemble))
    } else {
        (None, None)
    };
    recipe.seconds = started.elapsed().as_secs_f64();
    let params = TransformerParams {
        encoder: t.encoder.clone(),
        encoder_fingerprint: encoder.fingerprint().to_string(),
        max_seq_len: encoder.max_seq_len(),
        head: hp,
        head_best_epoch: head_report.best_epoch,
        ensemble,
        finetune,
        recipe: Some(Box::new(recipe)),
    };
    let model = TransformerModel::new(encoder, head, partner, t.embed_batch, "candidate".into())?;
    let texts: Vec<&str> = sel_set.texts.iter().map(String::as_str).collect();
    let predicted: Vec<Label> = model
        .analyse_embedded(&texts, sel_x)
        .into_iter()
        .map(|a| a.prediction.label)
        .collect();
    let selection = EvalMetrics::compute(&sel_set.labels, &predicted);
    Ok(Trained {
        model,
        params,
        selection,
        history,
        head_report,
        tuned,
        checkpoints,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::transformer::HEAD;

    #[test]
    fn the_blend_weight_follows_the_better_model_on_the_selection_split() {
        let labels = [
            Label::Negative,
            Label::Neutral,
            Label::Positive,
            Label::Neutral,
        ];
        let right = labels.map(|l| {
            let mut p = [0.1; 3];
            p[l.index()] = 0.8;
            p
        });
        let wrong = [[0.1, 0.1, 0.8]; 4];
        assert_eq!(fit_blend_weight(&right, &wrong, &labels), 1.0);
        assert_eq!(fit_blend_weight(&wrong, &right, &labels), 0.0);
    }

    #[test]
    fn a_torn_cache_record_is_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.emb");
        let dim = 2;
        let mut bytes = Vec::new();
        for (text, e) in [("a", [1.0f32, 2.0]), ("b", [3.0, 4.0])] {
            bytes.extend_from_slice(&text_key(text));
            bytes.extend(e.iter().flat_map(|v| v.to_le_bytes()));
        }
        bytes.extend_from_slice(&[7u8; 9]);
        std::fs::write(&path, &bytes).expect("write");
        let cache = EmbeddingCache::read(&path, dim).expect("open");
        assert_eq!(cache.len(), 2);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len() as usize,
            2 * (16 + 4 * dim)
        );
        let at = cache.index[&text_key("b")] * dim;
        assert_eq!(&cache.data[at..at + dim], &[3.0, 4.0]);
    }

    #[test]
    fn a_head_round_trips_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = LinearHead {
            dim: 2,
            weights: vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25],
            bias: [0.1, 0.2, 0.3],
        };
        let path = dir.path().join(HEAD);
        save_head(&head, &path).expect("save");
        assert_eq!(load_head(&path).expect("load"), head);
        std::fs::write(&path, b"not safetensors").expect("write");
        let err = load_head(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(HEAD), "{err}");
    }
}
