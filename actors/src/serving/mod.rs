//! Scoring: the one path every source calls (scorer), the model cell that serves, the
//! inference pool, the micro-batcher, and the observations each scored text leaves for drift
//! and metrics.

pub mod batcher;
pub mod inference;
pub mod model_cell;
pub mod observations;
pub mod scorer;
