//! The shutdown state the signal handler sets and the batch work reads.

use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Shared between the shutdown sequence and the batch processor.
#[derive(Default)]
pub struct Lifecycle {
    /// Set on SIGTERM/SIGINT: finish the current chunk, then leave the file for the next run.
    pub stopping: AtomicBool,
    /// Files being processed right now (0 or 1).
    pub busy: AtomicUsize,
}
