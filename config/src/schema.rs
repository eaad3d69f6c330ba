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

/// `[data]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Labelled CSV files the base model is trained on.
    pub train: Vec<PathBuf>,
    /// Labelled CSV file used for early stopping and the promotion gate.
    pub val: PathBuf,
    /// VADER-format lexicon for the fallback scorer and the lexicon features.
    pub lexicon: PathBuf,
    /// Texts longer than this many characters are rejected (CSV row) or answered with 422 (HTTP).
    pub max_text_chars: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            train: vec![PathBuf::from("data/datasets/tweeteval/train.csv")],
            val: PathBuf::from("data/datasets/tweeteval/val.csv"),
            lexicon: PathBuf::from("data/lexicons/vader/vader_lexicon.txt"),
            max_text_chars: 1000,
        }
    }
}

/// Which model family to train and serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// fastText-style classifier trained in burn.
    Fast,
    /// Pretrained encoder; accepted by the schema, rejected by validation until it exists.
    Transformer,
}

/// `[model]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub kind: ModelKind,
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
            kind: ModelKind::Fast,
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

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub lr_decay: LrDecay,
    pub weight_decay: f64,
    /// Epochs without improvement of validation macro-recall before stopping; 0 disables.
    pub patience: usize,
    pub seed: u64,
    pub class_weights: ClassWeights,
    pub backend: Backend,
    /// 0 means all cores.
    pub threads: usize,
    pub dropout: f64,
    /// What `serve` does when the model store has no current model.
    pub on_start: TrainOnStart,
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
    pub shutdown_timeout_secs: u64,
    /// Bearer token for admin endpoints; admin endpoints are disabled while unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
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
            shutdown_timeout_secs: 10,
            admin_token: None,
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
    pub journal: PathBuf,
    pub labelled_store: PathBuf,
    /// A file's size must stay unchanged this long before it is taken.
    pub settle_ms: u64,
    pub chunk_rows: usize,
    pub max_file_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            inbox: PathBuf::from("state/inbox"),
            outbox: PathBuf::from("state/outbox"),
            archive: PathBuf::from("state/archive"),
            rejected: PathBuf::from("state/rejected"),
            journal: PathBuf::from("state/journal"),
            labelled_store: PathBuf::from("state/labelled/labelled.csv"),
            settle_ms: 500,
            chunk_rows: 4096,
            max_file_bytes: 536_870_912,
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
    /// `RUST_LOG`, when set, takes precedence (the daemon's business).
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
