//! Inference: a `SyncArbiter` pool of `server.inference_threads` threads that score batch
//! chunks. Each chunk is scored by the model published in the [`ModelCell`] when the chunk
//! starts, so a model swap never mixes versions inside one chunk.
//!
//! A panic while scoring a chunk is contained; the chunk is then scored row by row so only
//! the rows the model cannot handle fail, each with a reason.

use actix::{Actor, Handler, SyncContext};
use sentimentd_model::Prediction;
use std::sync::Arc;

use crate::messages::{InferenceError, ScoreChunk, ScoredChunk};
use crate::runtime::containment::{Containment, Faults};
use crate::serving::model_cell::ModelCell;
use crate::serving::observations::ObservationSink;
use crate::telemetry::metrics::Metrics;

pub struct Inference {
    cell: ModelCell,
    containment: Containment,
    faults: Faults,
    observations: Arc<ObservationSink>,
}

impl Inference {
    pub fn new(
        cell: ModelCell,
        metrics: Arc<Metrics>,
        faults: Faults,
        observations: Arc<ObservationSink>,
    ) -> Inference {
        Inference {
            cell,
            containment: Containment::new("inference", metrics),
            faults,
            observations,
        }
    }
}

impl Actor for Inference {
    type Context = SyncContext<Self>;
}

impl Handler<ScoreChunk> for Inference {
    type Result = Result<ScoredChunk, InferenceError>;

    fn handle(&mut self, msg: ScoreChunk, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let Some(model) = self.cell.load_full() else {
            return Err(InferenceError::NoModel);
        };
        let texts = msg
            .texts
            .get(msg.start..msg.end)
            .ok_or(InferenceError::BadRange {
                start: msg.start,
                end: msg.end,
                len: msg.texts.len(),
            })?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let whole = self.containment.run(|| {
            for t in &refs {
                self.faults.on_text(t);
            }
            self.observations
                .predict_batch(model.classifier.as_ref(), &model.version, &refs)
        });
        let results: Vec<Result<Prediction, String>> = match whole {
            Ok(predictions) if predictions.len() == refs.len() => {
                predictions.into_iter().map(Ok).collect()
            }
            Ok(predictions) => {
                // A model returning the wrong number of predictions is a bug; fall back to
                // per-row scoring rather than misalign rows and predictions.
                tracing::error!(
                    expected = refs.len(),
                    got = predictions.len(),
                    "predict_batch returned the wrong number of predictions"
                );
                self.row_by_row(&model.classifier, &refs)
            }
            Err(_) => self.row_by_row(&model.classifier, &refs),
        };
        Ok(ScoredChunk {
            start: msg.start,
            model_version: model.version.clone(),
            results,
        })
    }
}

impl Inference {
    fn row_by_row(
        &self,
        classifier: &Arc<dyn sentimentd_model::Classifier>,
        texts: &[&str],
    ) -> Vec<Result<Prediction, String>> {
        texts
            .iter()
            .map(|t| {
                self.containment
                    .run(|| {
                        self.faults.on_text(t);
                        classifier.predict(t)
                    })
                    .map_err(|p| format!("model failed on this row: {}", p.message))
            })
            .collect()
    }
}
