//! Events that write their log line and count their metric in one place, and the metrics.

pub mod events;
pub mod metrics;
