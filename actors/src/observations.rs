//! Observations of served predictions for drift detection, recorded without slowing serving.
//!
//! `/predict` and the inference pool push into a bounded lock-free queue (no mailbox message,
//! no lock per request); the DriftMonitor drains it on its own schedule. When the monitor
//! falls behind, the oldest observation is dropped to make room: drift is about recent
//! traffic, and serving never waits for the monitor.

use crossbeam_queue::ArrayQueue;
use sentimentd_data::drift::Observation;
use sentimentd_model::{Analysis, Classifier, Prediction};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One observation and the model version that produced it: embeddings of different versions
/// live in different spaces and must never be compared with one baseline.
pub struct Observed {
    pub model_version: Arc<str>,
    pub observation: Observation,
}

pub struct ObservationSink {
    queue: ArrayQueue<Observed>,
    enabled: bool,
    recorded: AtomicU64,
    dropped: AtomicU64,
}

impl ObservationSink {
    /// `capacity` bounds memory (observations waiting to be drained); `enabled = false` makes
    /// recording a no-op (drift checks off).
    pub fn new(capacity: usize, enabled: bool) -> Arc<ObservationSink> {
        Arc::new(ObservationSink {
            queue: ArrayQueue::new(capacity.max(1)),
            enabled,
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn record(&self, model_version: &Arc<str>, text: &str, a: Analysis) {
        if !self.enabled {
            return;
        }
        let item = Observed {
            model_version: model_version.clone(),
            observation: Observation::new(a.prediction.label, a.embedding, a.oov_share, text),
        };
        self.recorded.fetch_add(1, Ordering::Relaxed);
        if self.queue.force_push(item).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Scores `text`, recording an observation of it when observation is on (one forward pass
    /// either way).
    pub fn predict(
        &self,
        classifier: &dyn Classifier,
        model_version: &Arc<str>,
        text: &str,
    ) -> Prediction {
        if !self.enabled {
            return classifier.predict(text);
        }
        let a = classifier.analyse(text);
        let p = a.prediction;
        self.record(model_version, text, a);
        p
    }

    /// Scores `texts`, recording an observation of each when observation is on (one forward
    /// pass per text either way).
    pub fn predict_batch(
        &self,
        classifier: &dyn Classifier,
        model_version: &Arc<str>,
        texts: &[&str],
    ) -> Vec<Prediction> {
        if !self.enabled {
            return classifier.predict_batch(texts);
        }
        classifier
            .analyse_batch(texts)
            .into_iter()
            .zip(texts)
            .map(|(a, t)| {
                let p = a.prediction;
                self.record(model_version, t, a);
                p
            })
            .collect()
    }

    /// Moves every waiting observation into `out`, oldest first.
    pub fn drain_into(&self, out: &mut Vec<Observed>) {
        while let Some(o) = self.queue.pop() {
            out.push(o);
        }
    }

    /// Observations recorded since start (including any later dropped).
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
