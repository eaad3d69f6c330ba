//! The actors of `sentimentd serve`: HTTP ingestion, folder watcher, batch processor,
//! inference pool, model registry, plus the metrics they share and the panic containment
//! they all run under. They talk through the typed messages of [`messages`]; the ML core
//! they call never sees actix.

pub mod baseliner;
pub mod batch_processor;
pub mod batch_stream;
pub mod batcher;
pub mod claim;
pub mod drift_monitor;
pub mod events;
pub mod folder_watcher;
pub mod http;
pub mod inference;
pub mod journal;
pub mod messages;
pub mod metrics;
pub mod model_registry;
pub mod observations;
pub mod openapi;
pub mod output_names;
pub mod reputation;
pub mod status_page;
pub mod supervisor;
pub mod systemd;
pub mod tracker;
pub mod trainer;

pub use batch_processor::{BatchProcessor, Lifecycle};
pub use folder_watcher::FolderWatcher;
pub use inference::Inference;
pub use metrics::Metrics;
pub use model_registry::{ModelCell, ModelInfo, ModelRegistry, ServingModel, new_model_cell};
pub use supervisor::{Containment, Faults};
