//! The ML core of sentimentd: tokenizer, burn network, training, evaluation, model store
//! and the lexicon fallback. Free of actors so the CLI, benches and tests use it directly.
pub mod baseline;
mod classifier;
pub mod encoder;
mod error;
pub mod fast;
pub mod features;
pub mod finetune;
pub mod head;
mod lexicon;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod promotion;
pub mod store;
pub mod text;
pub mod train;
pub mod transformer;

pub use classifier::{Analysis, Classifier, ModelKind, Prediction};
pub use error::ModelError;
pub use fast::FastModel;
pub use lexicon::{LexiconClassifier, LexiconError};
pub use metrics::EvalMetrics;
pub use store::{Manifest, ModelParams, ModelStore};
pub use transformer::TransformerModel;
