//! The model's life: the registry that promotes and swaps versions, the trainer and its gate,
//! the baseliner, the drift monitor, the run tracker, and the reputation kept per source.

pub mod baseliner;
pub mod drift_monitor;
pub mod registry;
pub mod reputation;
pub mod tracker;
pub mod train_log;
pub mod trainer;
