//! Training progress in the daemon's log, for the registry's first training and retrains.

use sentimentd_model::kinds::fast::train::{EpochReport, TrainObserver};

/// Training progress for the daemon's log.
pub struct LogObserver;

impl TrainObserver for LogObserver {
    fn on_start(&mut self, epochs: usize, steps_per_epoch: usize) {
        tracing::info!(epochs, steps_per_epoch, "training started");
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        tracing::info!(
            epoch = r.epoch,
            train_loss = r.train_loss,
            seconds = r.seconds,
            improved = r.improved,
            "training epoch"
        );
    }

    fn on_message(&mut self, message: &str) {
        tracing::info!(message, "training");
    }
}
