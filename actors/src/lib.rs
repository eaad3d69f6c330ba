//! The actors of `sentimentd serve`, in folders by role:
//!
//! - [`runtime`]: panic containment and fault hooks, the shutdown state, low-priority
//!   background threads, systemd notification;
//! - [`telemetry`]: events that log and count in one place, and the metrics they count into;
//! - [`serving`]: the model cell, the inference pool, the micro-batcher and the observations
//!   every scored text leaves;
//! - [`sources`]: where batches come from (`file/`: the watched folder, its claim, journal,
//!   streaming processor and output names);
//! - [`mlops`]: model registry, trainer, baseliner, drift monitor, run tracker, reputation;
//! - [`http`]: the HTTP API, its OpenAPI document and the status page;
//! - [`topology`]: the running system built from the config.
//!
//! They talk through the typed messages of [`messages`]; the ML core they call never sees
//! actix.

pub mod cluster;
pub mod http;
pub mod messages;
pub mod mlops;
pub mod runtime;
pub mod serving;
pub mod sources;
pub mod telemetry;
pub mod topology;

pub use mlops::registry::ModelRegistry;
pub use runtime::containment::{Containment, Faults};
pub use runtime::shutdown::Lifecycle;
pub use serving::inference::Inference;
pub use serving::model_cell::{ModelCell, ModelInfo, ServingModel, new_model_cell};
pub use sources::file::processor::BatchProcessor;
pub use sources::file::watcher::FolderWatcher;
pub use telemetry::metrics::Metrics;
