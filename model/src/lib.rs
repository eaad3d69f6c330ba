//! The ML core of sentimentd: model kinds (fast, transformer, lexicon fallback), training,
//! evaluation, the gate's rules, the model store and promotion. Free of actors so the CLI,
//! benches and tests use it directly.
pub mod baseline;
mod classifier;
mod error;
pub mod gate;
pub mod kinds;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod promotion;
pub mod store;

pub use classifier::{Analysis, Classifier, ModelKind, Prediction};
pub use error::ModelError;
pub use kinds::fast::model::FastModel;
pub use kinds::lexicon::{LexiconClassifier, LexiconError};
pub use kinds::transformer::model::TransformerModel;
pub use manifest::{Manifest, ModelParams};
pub use metrics::EvalMetrics;
pub use store::ModelStore;
