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
#[derive(Clone)]
pub struct Observed {
    pub model_version: Arc<str>,
    pub observation: Observation,
}

/// Texts with their position in a chunk.
type Indexed<'a> = Vec<(usize, &'a str)>;

pub struct ObservationSink {
    queue: ArrayQueue<Observed>,
    enabled: bool,
    recorded: AtomicU64,
    dropped: AtomicU64,
    /// In a cluster, every `n`-th observation is also kept here for the lease holder's drift
    /// checks (`[cluster] observation_share`).
    shared: Option<(ArrayQueue<Observed>, u64)>,
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
            shared: None,
        })
    }

    /// Like [`ObservationSink::new`], also keeping every `every`-th observation to share with
    /// the cluster's lease holder.
    pub fn sharing(capacity: usize, enabled: bool, every: u64) -> Arc<ObservationSink> {
        Arc::new(ObservationSink {
            queue: ArrayQueue::new(capacity.max(1)),
            enabled,
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shared: Some((ArrayQueue::new(capacity.max(1)), every.max(1))),
        })
    }

    /// Takes another node's observation (the lease holder judges drift on all traffic).
    pub fn push(&self, observed: Observed) {
        if self.enabled && self.queue.force_push(observed).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves the observations kept for sharing into `out`, oldest first.
    pub fn drain_shared_into(&self, out: &mut Vec<Observed>) {
        if let Some((shared, _)) = &self.shared {
            while let Some(o) = shared.pop() {
                out.push(o);
            }
        }
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
        let n = self.recorded.fetch_add(1, Ordering::Relaxed);
        if let Some((shared, every)) = &self.shared
            && n.is_multiple_of(*every)
        {
            let _ = shared.force_push(item.clone());
        }
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

    /// Scores `texts`, recording observations when observation is on (one forward pass per
    /// text either way).
    ///
    /// A chunk larger than the room left in the queue is sampled evenly down to that room:
    /// the monitor keeps only the newest `window` observations, so observing every row of a
    /// large inbox file would compute (a quarter of the scoring cost) observations that are
    /// dropped unread. HTTP traffic and small batches are observed whole.
    pub fn predict_batch(
        &self,
        classifier: &dyn Classifier,
        model_version: &Arc<str>,
        texts: &[&str],
    ) -> Vec<Prediction> {
        if !self.enabled || texts.is_empty() {
            return classifier.predict_batch(texts);
        }
        let room = self
            .queue
            .capacity()
            .saturating_sub(self.queue.len())
            .max(1);
        // Every `step`-th text is observed.
        let step = texts.len().div_ceil(room);
        if step == 1 {
            return classifier
                .analyse_batch(texts)
                .into_iter()
                .zip(texts)
                .map(|(a, t)| {
                    let p = a.prediction;
                    self.record(model_version, t, a);
                    p
                })
                .collect();
        }
        let (observed, plain): (Indexed<'_>, Indexed<'_>) = texts
            .iter()
            .copied()
            .enumerate()
            .partition(|(i, _)| i % step == 0);
        let observed_texts: Vec<&str> = observed.iter().map(|(_, t)| *t).collect();
        let plain_texts: Vec<&str> = plain.iter().map(|(_, t)| *t).collect();
        let mut out: Vec<Option<Prediction>> = vec![None; texts.len()];
        for ((i, t), a) in observed
            .iter()
            .zip(classifier.analyse_batch(&observed_texts))
        {
            out[*i] = Some(a.prediction);
            self.record(model_version, t, a);
        }
        for ((i, _), p) in plain.iter().zip(classifier.predict_batch(&plain_texts)) {
            out[*i] = Some(p);
        }
        // A classifier that returned too few results leaves gaps; the caller checks the
        // length and falls back to row-by-row scoring.
        out.into_iter().flatten().collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use sentimentd_model::LexiconClassifier;

    #[test]
    fn a_chunk_larger_than_the_room_is_sampled_evenly_and_scored_whole() {
        let classifier = LexiconClassifier::embedded();
        let sink = ObservationSink::new(10, true);
        let version: Arc<str> = Arc::from("v1");
        let owned: Vec<String> = (0..100)
            .map(|i| format!("text {i} is {}", if i % 2 == 0 { "great" } else { "awful" }))
            .collect();
        let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
        let got = sink.predict_batch(&classifier, &version, &texts);
        assert_eq!(
            got,
            classifier.predict_batch(&texts),
            "every text scored, in order"
        );
        assert_eq!(sink.recorded(), 10);
        assert_eq!(sink.dropped(), 0);
        let mut drained = Vec::new();
        sink.drain_into(&mut drained);
        assert_eq!(drained.len(), 10);
        // With room again, a small chunk is observed whole.
        let got = sink.predict_batch(&classifier, &version, &texts[..5]);
        assert_eq!(got.len(), 5);
        assert_eq!(sink.recorded(), 15);
    }
}
