//! The TOML schema. Every section is `deny_unknown_fields` so a typo is an error rather than a
//! silently ignored setting, and `default` so an empty file (or no file) is a complete config.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub paths: PathsConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub logging: LoggingConfig,
    pub drift: DriftConfig,
    pub retrain: RetrainConfig,
    pub gate: GateConfig,
    pub admin: AdminConfig,
    pub feedback: FeedbackConfig,
    pub tracking: TrackingConfig,
    pub reputation: ReputationConfig,
    pub transformer: TransformerConfig,
    pub cluster: ClusterConfig,
}

/// `[paths]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Directory holding one sub-directory per model version plus the `current` pointer.
    pub model_store: PathBuf,
    /// Root of the daemon's mutable state.
    pub state_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            model_store: PathBuf::from("state/models"),
            state_dir: PathBuf::from("state"),
        }
    }
}

/// Where each kind of state lives inside `state_dir`: named here once, so the daemon, the CLI
/// and the training code cannot disagree.
impl PathsConfig {
    /// The local run log (`runs.jsonl`, artifacts, the MLflow queue).
    pub fn runs(&self) -> PathBuf {
        self.state_dir.join("runs")
    }

    /// Drift reports (JSON and HTML).
    pub fn drift_reports(&self) -> PathBuf {
        self.state_dir.join("drift")
    }

    /// The retrain loop's own state (cooldown, seen labelled files).
    pub fn retrain_state(&self) -> PathBuf {
        self.state_dir.join("retrain").join("state.json")
    }

    /// The reputation view's counts.
    pub fn reputation(&self) -> PathBuf {
        self.state_dir.join("reputation.json")
    }

    /// The transformer kind's cache of sentence embeddings.
    pub fn embeddings(&self) -> PathBuf {
        self.state_dir.join("embeddings")
    }

    /// The transformer kind's fine-tuning checkpoints.
    pub fn finetune(&self) -> PathBuf {
        self.state_dir.join("finetune")
    }

    /// The folders the daemon writes atomically, where a crash can leave temp files.
    pub fn atomic_dirs(&self) -> Vec<PathBuf> {
        let retrain = self.retrain_state();
        vec![
            self.state_dir.clone(),
            self.drift_reports(),
            retrain.parent().map(PathBuf::from).unwrap_or_default(),
            self.runs(),
        ]
    }
}

/// `[data]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Labelled CSV files the base model is trained on.
    pub train: Vec<PathBuf>,
    /// Labelled CSV: the reporting split (metrics in the manifest) and the promotion gate's
    /// base set; never used to select anything.
    pub val: PathBuf,
    /// VADER-format lexicon of the lexicon fallback (served while no trained model exists);
    /// unset, the bundled VADER lexicon. Trained models keep the bundled lexicon's features,
    /// which are part of the model.
    pub lexicon: Option<PathBuf>,
    /// Texts longer than this many characters are rejected (CSV row) or answered with 422 (HTTP).
    pub max_text_chars: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            train: vec![PathBuf::from("data/datasets/tweeteval/train.csv")],
            val: PathBuf::from("data/datasets/tweeteval/val.csv"),
            lexicon: None,
            max_text_chars: 1000,
        }
    }
}

/// Which model family `[model] kind` trains. The model crate's `ModelKind` is what can serve,
/// which also includes the lexicon fallback that is never trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainableKind {
    /// fastText-style classifier trained in burn.
    Fast,
    /// A pretrained sentence encoder with a trained head (`[transformer]`).
    Transformer,
}

/// `[model]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub kind: TrainableKind,
    pub embedding_dim: usize,
    /// 0 means no hidden layer: mean-pooled embedding straight into the output layer.
    pub hidden_dim: usize,
    pub vocab_size: usize,
    pub min_token_frequency: usize,
    /// Hash buckets shared by word and character n-grams.
    pub buckets: usize,
    /// Longest word n-gram (1 = unigrams only).
    pub word_ngrams: usize,
    pub char_ngram_min: usize,
    /// 0 disables character n-grams.
    pub char_ngram_max: usize,
    pub negation: bool,
    pub lexicon_features: bool,
    /// Tokens beyond this many per text are dropped.
    pub max_tokens: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: TrainableKind::Fast,
            embedding_dim: 64,
            hidden_dim: 0,
            vocab_size: 15000,
            min_token_frequency: 2,
            buckets: 131_072,
            word_ngrams: 2,
            char_ngram_min: 3,
            char_ngram_max: 0,
            negation: true,
            lexicon_features: true,
            max_tokens: 256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    None,
    Linear,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// Inverse class frequency, so the minority class counts as much as the majority.
    Balanced,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Flex,
    Ndarray,
}

/// How the encoder's serving forward multiplies its dense layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 products with f32 sums where the CPU has AVX512-BF16, f32 elsewhere.
    #[default]
    Auto,
    F32,
}

/// `[transformer] finetune_layers`: `"auto"`, the best measured recipe that fits
/// `time_budget_mins`, or a number of the encoder's top layers (0 keeps it frozen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FineTuneLayers {
    #[default]
    Auto,
    Fixed(usize),
}

impl Serialize for FineTuneLayers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FineTuneLayers::Auto => s.serialize_str("auto"),
            FineTuneLayers::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for FineTuneLayers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected \"auto\" or a number of layers (0 = frozen)")
        })? {
            Raw::Number(n) => Ok(FineTuneLayers::Fixed(n)),
            Raw::Word(w) if w == "auto" => Ok(FineTuneLayers::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number of layers (0 = frozen), found \"{w}\""
            ))),
        }
    }
}

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub lr_decay: LrDecay,
    pub weight_decay: f64,
    /// Epochs without improvement of selection-split macro-recall before stopping; 0 disables.
    pub patience: usize,
    pub seed: u64,
    pub class_weights: ClassWeights,
    pub backend: Backend,
    /// 0 means all cores.
    pub threads: usize,
    pub dropout: f64,
    /// What `serve` does when the model store has no current model.
    pub on_start: TrainOnStart,
    /// Share of the training data carved out (stratified, seeded) as the selection split that
    /// early stopping and calibration use; the reporting split (`data.val`) never selects.
    pub selection_share: f64,
}

/// `[train] on_start`: whether `serve` trains a model when none exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainOnStart {
    /// Train one in the background (the lexicon fallback answers meanwhile).
    IfMissing,
    /// Serve the lexicon fallback until a model is trained by other means.
    Never,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 2,
            batch_size: 256,
            learning_rate: 0.02,
            lr_decay: LrDecay::Linear,
            weight_decay: 0.0,
            patience: 3,
            seed: 42,
            class_weights: ClassWeights::Balanced,
            backend: Backend::Flex,
            threads: 0,
            dropout: 0.0,
            on_start: TrainOnStart::IfMissing,
            selection_share: 0.1,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    /// 0 asks the OS for a free port (tests use this).
    pub port: u16,
    pub workers: usize,
    pub inference_threads: usize,
    pub max_body_bytes: usize,
    pub max_batch_texts: usize,
    /// Texts of `/predict` batches being scored by the inference pool at once; a batch that
    /// would go over gets 429 with `Retry-After`, so a flood cannot queue without bound.
    pub max_inflight_texts: usize,
    pub shutdown_timeout_secs: u64,
    /// Test-only fault injection (magic texts that panic or crash); never enable in production.
    pub test_faults: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1".to_string(),
            port: 8080,
            workers: 2,
            inference_threads: 2,
            max_body_bytes: 1_048_576,
            max_batch_texts: 1024,
            max_inflight_texts: 8192,
            shutdown_timeout_secs: 10,
            test_faults: false,
        }
    }
}

/// `[ingest]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    pub rejected: PathBuf,
    /// A complete inbox file is claimed by renaming it here before it is read; it stays here
    /// while it is scored (and between retries). Same filesystem as the other folders.
    pub processing: PathBuf,
    pub journal: PathBuf,
    /// Folder of labelled rows for retraining: one immutable CSV per batch or feedback request.
    pub labelled_dir: PathBuf,
    /// Retention of the labelled store: the oldest files go once the store holds more
    /// than this many bytes (0 = no size limit).
    pub labelled_max_bytes: u64,
    /// Retention of the labelled store: files older than this many days go (0 = kept).
    pub labelled_max_age_days: u64,
    /// A file's size must stay unchanged this long before it is taken.
    pub settle_ms: u64,
    pub chunk_rows: usize,
    pub max_file_bytes: u64,
    /// A file that fails for a reason other than its content (I/O error, model failure) is
    /// tried again after this long, doubling each time up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// After this many failed attempts the file moves to `rejected/` with an `error.txt`
    /// listing every attempt.
    pub max_attempts: u32,
    /// Output CSV fields that a spreadsheet would run as a formula (leading `=`, `+`, `-`, `@`,
    /// tab or carriage return) get a leading `'` (OWASP's CSV-injection advice).
    pub neutralize_formulas: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            inbox: PathBuf::from("state/inbox"),
            outbox: PathBuf::from("state/outbox"),
            archive: PathBuf::from("state/archive"),
            rejected: PathBuf::from("state/rejected"),
            processing: PathBuf::from("state/processing"),
            journal: PathBuf::from("state/journal"),
            labelled_dir: PathBuf::from("state/labelled"),
            labelled_max_bytes: 2 << 30,
            labelled_max_age_days: 0,
            settle_ms: 500,
            chunk_rows: 4096,
            max_file_bytes: 536_870_912,
            retry_initial_ms: 5_000,
            retry_max_ms: 300_000,
            max_attempts: 5,
            neutralize_formulas: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[logging]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A `tracing` filter: a level (`info`) or directives (`info,sentimentd_model=debug`).
    /// `RUST_LOG`, when set, takes precedence, and `--log` / `SENTIMENTD_LOG` over both.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// `[drift]`: drift checks of recent traffic against the serving model's baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Observe predictions and run drift checks; false turns both off.
    pub enabled: bool,
    /// A check runs this often, in seconds...
    pub check_every_secs: u64,
    /// ...and also after this many new observations...
    pub check_every_samples: u64,
    /// ...but a check triggered by the sample count waits until at least this many seconds
    /// have passed since the previous one, so heavy traffic cannot turn checks into a load.
    pub min_check_interval_secs: u64,
    /// The most recent observations a check looks at.
    pub window: usize,
    /// Below this many observations in the window a check gives no verdict.
    pub min_samples: usize,
    /// Reference CSV files the baseline is computed from; empty = `data.val`.
    pub reference: Vec<PathBuf>,
    /// Reference embeddings kept in the baseline (reservoir sample).
    pub baseline_sample: usize,
    /// Label drift: population stability index of predicted labels; fires above.
    pub psi_threshold: f64,
    /// Label drift: Jensen-Shannon distance (base 2) of predicted labels; fires above.
    pub js_distance_threshold: f64,
    /// Label drift: chi-square test of predicted-label counts; fires below this p-value.
    pub chi2_p_value: f64,
    /// Embedding drift: standardised mean shift of sentence embeddings; fires above.
    pub mean_shift_threshold: f64,
    /// Embedding drift: MMD (RBF kernel) permutation test; fires below this p-value.
    pub mmd_p_value: f64,
    /// Permutations of the MMD test.
    pub mmd_permutations: usize,
    /// Observations per side the MMD test samples (its cost grows with the square).
    pub mmd_max_samples: usize,
    /// Text drift: Kolmogorov-Smirnov statistic of text length (characters); fires above.
    pub length_ks_threshold: f64,
    /// Text drift: Kolmogorov-Smirnov statistic of the out-of-vocabulary word share; fires above.
    pub oov_ks_threshold: f64,
    /// Drift reports (JSON + HTML) kept under `<state_dir>/drift`; older ones are deleted.
    pub reports_kept: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            check_every_secs: 300,
            check_every_samples: 5000,
            min_check_interval_secs: 30,
            window: 10_000,
            min_samples: 500,
            reference: Vec::new(),
            baseline_sample: 1000,
            psi_threshold: 0.1,
            js_distance_threshold: 0.1,
            chi2_p_value: 0.001,
            mean_shift_threshold: 0.15,
            mmd_p_value: 0.005,
            mmd_permutations: 200,
            mmd_max_samples: 500,
            length_ks_threshold: 0.1,
            oov_ks_threshold: 0.15,
            reports_kept: 200,
        }
    }
}

/// `[retrain]`: retraining a candidate model from labelled data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// Allow retraining at all (drift-driven and `POST /admin/retrain`).
    pub enabled: bool,
    /// Start a retrain when a drift check fires.
    pub on_drift: bool,
    /// After a retrain (whatever its outcome) no drift-driven retrain starts for this long.
    pub cooldown_secs: u64,
    /// A retrain is skipped (and the reason recorded) with fewer new labelled rows than this.
    /// With retraining on, `ceil(min_new_rows * holdout_share)` should reach
    /// `[gate] min_holdout_rows`, or the first retrain's holdout is too small for the gate
    /// (`config check` and the start warn).
    pub min_new_rows: usize,
    /// Share of the newest labelled rows held out (time-ordered) as the recent gate set.
    pub holdout_share: f64,
    /// Weights tried for a labelled row that arrived since the base data (one such row =
    /// that many base rows); the run keeps the one chosen on the selection split.
    pub recent_weights: Vec<f64>,
    /// Most selection macro-recall the base rows may lose, against the smallest weight, for a
    /// larger weight to be kept.
    pub recent_weight_tolerance: f64,
    /// Threads a background retrain may use (it never takes every core from serving).
    pub threads: usize,
    /// Linux nice value of the training thread (0..=19): serving wins the CPU when both want it.
    pub nice: i32,
}

impl RetrainConfig {
    /// The newest rows a retrain over `rows` deduplicated labelled rows holds out for the
    /// gate: `ceil(rows * holdout_share)`. The trainer and `config check` both use it.
    pub fn held_out(&self, rows: usize) -> usize {
        held_out(rows, self.holdout_share)
    }
}

/// [`RetrainConfig::held_out`] at another share (what `config check` suggests).
pub(crate) fn held_out(rows: usize, share: f64) -> usize {
    ((rows as f64) * share).ceil() as usize
}

impl Default for RetrainConfig {
    fn default() -> Self {
        RetrainConfig {
            enabled: true,
            on_drift: true,
            cooldown_secs: 3600,
            min_new_rows: 250,
            holdout_share: 0.2,
            recent_weights: vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
            recent_weight_tolerance: 0.005,
            threads: 1,
            nice: 10,
        }
    }
}

/// `[gate]`: rules a candidate must pass, against the serving model, to be promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Most macro-recall the candidate may lose on the reporting split (`data.val`).
    pub max_val_drop: f64,
    /// Least macro-recall the candidate must gain on the recent labelled holdout.
    pub min_holdout_gain: f64,
    /// The candidate's reporting-split macro-recall must be at least this.
    pub min_val_macro_recall: f64,
    /// Fewest rows the recent holdout needs for its comparison to count.
    pub min_holdout_rows: usize,
    /// Least share of the recent holdout's negative/positive labels that agree with the
    /// serving model's negative/positive predictions: labels that contradict what the model
    /// knows more often than they confirm it (swapped labels) are refused.
    pub min_label_agreement: f64,
    /// Most of the recent holdout one origin (a batch file, or `feedback`) may fill while
    /// older rows of other origins are there to take the rest.
    pub holdout_max_origin_share: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_val_drop: 0.01,
            min_holdout_gain: 0.02,
            min_val_macro_recall: 0.5,
            min_holdout_rows: 50,
            min_label_agreement: 0.5,
            holdout_max_origin_share: 0.5,
        }
    }
}

/// `[feedback]`: who may post labelled rows to `/feedback`, and how much of a row is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// File holding the bearer token of `/feedback` (first line). Unset = the admin token;
    /// with neither, `/feedback` answers 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Longest `source` a feedback row may name, in characters.
    pub max_source_chars: usize,
    /// The labelled-data store takes no more feedback once its files hold this many bytes
    /// (`/feedback` answers 507 until retention or an operator makes room). Above
    /// `[ingest] labelled_max_bytes` (when that is set), so the hourly retention makes room.
    pub max_store_bytes: u64,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            token_file: None,
            max_source_chars: 200,
            max_store_bytes: 3 << 30,
        }
    }
}

/// `[admin]`: the admin API (`/admin/*`: retrain, promote, rollback).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the bearer token (first line). Unset = the admin API is disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[tracking]`: where training runs, drift checks and promotion decisions are recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// MLflow tracking server, e.g. "http://127.0.0.1:5000". Unset = local run log only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow_uri: Option<String>,
    /// MLflow experiment the runs go to (created when missing).
    pub experiment: String,
    /// Registered model name in the MLflow model registry.
    pub registered_model: String,
    /// Artifacts of the newest this-many runs of each kind are kept in the local run log;
    /// older runs keep their record, their artifact folder is removed.
    pub keep_runs: usize,
    /// A record MLflow answered but did not take (an error status, a body that is not its
    /// JSON) this many times is moved to the dead-letter file instead of blocking the queue.
    pub record_max_attempts: u32,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            mlflow_uri: None,
            experiment: "sentimentd".to_string(),
            registered_model: "sentimentd".to_string(),
            keep_runs: 200,
            record_max_attempts: 5,
        }
    }
}

/// `[reputation]`: sentiment per source (brand, channel, account) over time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// CSV columns that name a row's source; the first one a batch has is used.
    pub source_columns: Vec<String>,
    /// The sources tracked by name. Empty: the `max_sources` busiest ones. Any other source
    /// is counted as `other`, so metric cardinality stays bounded whatever the input.
    pub sources: Vec<String>,
    /// With `sources` empty, how many sources are tracked (the busiest, re-ranked each bucket).
    pub max_sources: usize,
    /// Length of a time bucket, in seconds.
    pub bucket_secs: u64,
    /// Buckets of history kept per source besides the latest: the trend `GET /reputation`
    /// returns and the history the spike detector compares the latest bucket with.
    pub history_buckets: usize,
    /// A bucket is a spike when its negative share lies this many standard errors above the
    /// source's share over the previous `history_buckets` buckets...
    pub spike_z: f64,
    /// ...and at least this much above it (absolute share, 0.10 = 10 points)...
    pub spike_min_increase: f64,
    /// ...and both the bucket and the history hold at least this many texts.
    pub spike_min_texts: u64,
    /// CSV column with each row's time; files without the column use the arrival time, and
    /// so do rows whose time is empty, unreadable or later than the current bucket (unless
    /// `strict_time`). RFC 3339, `YYYY-MM-DD HH:MM:SS`, a date, Unix seconds or
    /// milliseconds, and Twitter's `Wed Oct 10 20:19:24 +0000 2018` are understood.
    pub time_column: String,
    /// Reject rows whose time cannot be read (a row rejection in the report) instead of
    /// using the arrival time.
    pub strict_time: bool,
    /// The state is saved under `<state_dir>/reputation.json` this often, and at shutdown.
    pub save_every_secs: u64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            source_columns: vec![
                "source".to_string(),
                "brand".to_string(),
                "entity".to_string(),
            ],
            sources: Vec::new(),
            max_sources: 20,
            bucket_secs: 3600,
            history_buckets: 24,
            spike_z: 3.0,
            spike_min_increase: 0.1,
            spike_min_texts: 30,
            time_column: "created_at".to_string(),
            strict_time: false,
            save_every_secs: 30,
        }
    }
}

/// `[transformer]`: the pretrained-encoder model kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Directory of pretrained encoders, one sub-directory each (`scripts/fetch-pretrained.sh`).
    pub pretrained_dir: PathBuf,
    /// The encoder: a sub-directory of `pretrained_dir`.
    pub encoder: String,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included; longer texts are cut.
    pub max_seq_len: usize,
    /// Texts per encoder batch, in training and when scoring.
    pub embed_batch: usize,
    /// Most epochs of the classifier head (full-batch; early stopping on the selection split).
    pub head_epochs: usize,
    pub head_learning_rate: f64,
    /// L2 penalty on the head's weights.
    pub head_l2: f64,
    /// Epochs without a better selection macro-recall before the head stops.
    pub head_patience: usize,
    /// Also train a fast model on the same rows and average the two models' probabilities,
    /// with the weight fitted on the selection split.
    pub ensemble: bool,
    /// Fine-tune this many of the encoder's top layers with the head (0 = keep the encoder
    /// frozen), or `auto`: the best measured recipe whose estimated time fits
    /// `time_budget_mins`. A job with checkpoints.
    pub finetune_layers: FineTuneLayers,
    /// Epochs of a fixed `finetune_layers` (`auto` brings its own).
    pub finetune_epochs: usize,
    /// What `finetune_layers = "auto"` may spend on one training run, in minutes, as planned
    /// from a calibration on this machine and held to at each fine-tuning epoch's end.
    pub time_budget_mins: f64,
    pub finetune_batch: usize,
    pub finetune_learning_rate: f64,
    /// Steps between fine-tuning checkpoints (one is also written at each epoch's end).
    pub checkpoint_every_steps: usize,
    /// Serving: texts of concurrent requests encoded together, at most this many at once.
    pub max_batch: usize,
    /// Serving: how long a request may wait for others to join its batch, in milliseconds.
    pub max_wait_ms: u64,
    /// The dense layers' products when encoding (serving and training embeddings alike).
    pub precision: Precision,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            pretrained_dir: PathBuf::from("state/pretrained"),
            encoder: "all-minilm-l6-v2".to_string(),
            max_seq_len: 128,
            embed_batch: 32,
            head_epochs: 400,
            head_learning_rate: 0.05,
            head_l2: 1e-4,
            head_patience: 40,
            ensemble: true,
            finetune_layers: FineTuneLayers::Auto,
            finetune_epochs: 3,
            time_budget_mins: 30.0,
            finetune_batch: 32,
            finetune_learning_rate: 5e-5,
            checkpoint_every_steps: 200,
            max_batch: 32,
            max_wait_ms: 2,
            precision: Precision::Auto,
        }
    }
}

impl TransformerConfig {
    /// Whether `name` can name an encoder: a plain directory name, which keeps it inside
    /// `pretrained_dir` (a manifest's encoder name is held to the same rule).
    pub fn is_encoder_name(name: &str) -> bool {
        !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
    }

    /// The encoder's directory.
    pub fn encoder_dir(&self) -> PathBuf {
        self.pretrained_dir.join(&self.encoder)
    }
}

/// `[cluster]`: shared ingestion through NATS JetStream. Without `nats_url` the node takes no
/// part in a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `nats://host:port` of the NATS server (JetStream enabled). Unset = no cluster source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and NKey seed), when the server wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Work-queue stream of input messages, and the subject they are published on.
    pub input_stream: String,
    pub input_subject: String,
    /// Stream of scored messages, and their subject.
    pub output_stream: String,
    pub output_subject: String,
    /// Subject of messages refused (malformed, or past `max_deliver`), with the reason.
    pub rejected_subject: String,
    /// The durable pull consumer every node shares.
    pub consumer: String,
    /// Seconds a node has to acknowledge a message before it is delivered again.
    pub ack_wait_secs: u64,
    /// Deliveries of one message before it is refused.
    pub max_deliver: i64,
    /// Seconds within which a repeated message id is dropped by the streams; at least
    /// `ack_wait_secs * max_deliver` plus a minute, so a redelivered message never yields a
    /// second output, and at most a week.
    pub duplicate_window_secs: u64,
    /// Messages fetched and scored together.
    pub batch: usize,
    /// Messages the whole cluster holds unacknowledged at most: the shared consumer's
    /// `max_ack_pending`, so every node must say the same. A node holds two batches at once
    /// (one scored while the next is fetched), so full speed wants `2 * batch * nodes`.
    pub max_in_flight: usize,
    /// This node's name in the training lease, logs and `/model`; empty = `hostname-pid`.
    pub node_name: String,
    /// JetStream KV bucket of the training lease: exactly one node trains, retrains and
    /// switches models.
    pub lease_bucket: String,
    /// Seconds a lease lasts unless renewed (renewed every third of it): how long the
    /// cluster goes without a trainer when the holder dies.
    pub lease_ttl_secs: u64,
    /// Seconds between a follower's looks at the MLflow alias `champion` (with
    /// `[tracking] mlflow_uri`): a version the leader switched to is downloaded, verified and
    /// served within this plus the download.
    pub champion_poll_secs: u64,
    /// Subject on which followers send a share of their drift observations to the lease
    /// holder, so its drift checks judge all of the cluster's traffic.
    pub observations_subject: String,
    /// Share of a follower's observations it sends (0 to 1; 0 = none; otherwise every
    /// `round(1 / share)`-th).
    pub observation_share: f64,
    /// Files dropped in this node's watched folder are published to the input stream row by
    /// row (ids `<file fingerprint>:<line>`, as `sentimentd publish --csv`) instead of being
    /// scored here: every node shares them, and the results go to the output stream.
    pub publish_inbox: bool,
}

impl ClusterConfig {
    /// [`ClusterConfig::node_name`], or `hostname-pid` when it is empty.
    pub fn node(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host = if host.is_empty() {
            "node".to_string()
        } else {
            host
        };
        format!("{host}-{}", std::process::id())
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            input_stream: "SENTIMENTD_IN".into(),
            input_subject: "sentimentd.in".into(),
            output_stream: "SENTIMENTD_OUT".into(),
            output_subject: "sentimentd.out".into(),
            rejected_subject: "sentimentd.rejected".into(),
            consumer: "sentimentd".into(),
            ack_wait_secs: 30,
            max_deliver: 5,
            duplicate_window_secs: 300,
            batch: 256,
            max_in_flight: 4096,
            credentials_file: None,
            node_name: String::new(),
            lease_bucket: "sentimentd_lease".into(),
            lease_ttl_secs: 15,
            champion_poll_secs: 10,
            observations_subject: "sentimentd.observations".into(),
            observation_share: 0.25,
            publish_inbox: false,
        }
    }
}
