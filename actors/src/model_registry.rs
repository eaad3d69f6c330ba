//! ModelRegistry: decides which model serves. At start it loads the store's current version,
//! or the lexicon fallback when there is none; with `[train] on_start = "if-missing"` it then
//! trains a model on a background thread (serving never waits for it) and swaps it in.
//!
//! The serving model is published in a [`ModelCell`] that HTTP workers and inference threads
//! read without locks, so a swap is one atomic pointer store and in-flight predictions finish
//! on the model they started with.

use actix::{Actor, Addr, AsyncContext, Context, Handler};
use arc_swap::ArcSwapOption;
use sentimentd_config::{Config, TrainOnStart};
use sentimentd_model::pipeline::{self, TrainJob};
use sentimentd_model::train::{EpochReport, TrainObserver};
use sentimentd_model::{Classifier, LexiconClassifier, Manifest, ModelStore};
use std::sync::Arc;
use std::time::Instant;

use crate::messages::{SwapModel, TrainingFailed};
use crate::metrics::Metrics;
use crate::supervisor::Containment;

/// What `/model` and `/ready` report about the serving model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub version: String,
    pub kind: &'static str,
    pub fallback: bool,
    pub created_at: Option<String>,
    pub parent: Option<String>,
    pub metrics: serde_json::Value,
    pub loaded_at: String,
}

pub struct ServingModel {
    pub classifier: Arc<dyn Classifier>,
    pub info: ModelInfo,
    /// `info.version` shared cheaply with every scored row.
    pub version: Arc<str>,
}

impl ServingModel {
    pub fn new(classifier: Arc<dyn Classifier>, manifest: Option<&Manifest>) -> ServingModel {
        let version = classifier.version().to_string();
        let info = ModelInfo {
            version: version.clone(),
            kind: classifier.kind().as_str(),
            fallback: classifier.is_fallback(),
            created_at: manifest.map(|m| m.created_at.clone()),
            parent: manifest.and_then(|m| m.parent.clone()),
            metrics: manifest
                .and_then(|m| serde_json::to_value(&m.metrics).ok())
                .unwrap_or(serde_json::Value::Null),
            loaded_at: chrono::Utc::now().to_rfc3339(),
        };
        ServingModel {
            classifier,
            info,
            version: Arc::from(version),
        }
    }
}

/// The serving model, `None` until the registry has loaded one.
pub type ModelCell = Arc<ArcSwapOption<ServingModel>>;

pub fn new_model_cell() -> ModelCell {
    Arc::new(ArcSwapOption::empty())
}

pub struct ModelRegistry {
    cfg: Arc<Config>,
    cell: ModelCell,
    metrics: Arc<Metrics>,
    containment: Containment,
    training: bool,
}

impl ModelRegistry {
    pub fn new(cfg: Arc<Config>, cell: ModelCell, metrics: Arc<Metrics>) -> ModelRegistry {
        let containment = Containment::new("model_registry", metrics.clone());
        ModelRegistry {
            cfg,
            cell,
            metrics,
            containment,
            training: false,
        }
    }

    fn publish(&self, classifier: Arc<dyn Classifier>, manifest: Option<&Manifest>) {
        let model = ServingModel::new(classifier, manifest);
        let previous = self
            .cell
            .swap(Some(Arc::new(model)))
            .map(|m| m.info.version.clone());
        let Some(now) = self.cell.load_full() else {
            return;
        };
        self.metrics.model_changed(
            &now.info.version,
            now.info.kind,
            now.info.fallback,
            previous.is_some(),
        );
        tracing::info!(
            from = previous.as_deref().unwrap_or("none"),
            to = %now.info.version,
            kind = now.info.kind,
            fallback = now.info.fallback,
            "model swapped in"
        );
    }

    /// Returns true when there is no usable trained model (so training may be wanted).
    fn load_initial(&self) -> bool {
        let loaded = ModelStore::open(&self.cfg.paths.model_store).and_then(|store| {
            let current = store.load_current()?;
            let manifest = match &current {
                Some(c) => store.manifest(c.version()).ok(),
                None => None,
            };
            Ok(current.map(|c| (c, manifest)))
        });
        match loaded {
            Ok(Some((classifier, manifest))) => {
                self.publish(classifier, manifest.as_ref());
                false
            }
            Ok(None) => {
                tracing::info!(
                    store = %self.cfg.paths.model_store.display(),
                    "no trained model in the store; serving the lexicon fallback"
                );
                self.publish(Arc::new(LexiconClassifier::embedded()), None);
                true
            }
            Err(e) => {
                // A broken current model is left in place for an operator to inspect; training
                // over it automatically could hide the problem.
                tracing::error!(
                    store = %self.cfg.paths.model_store.display(),
                    error = %e,
                    "cannot load the current model; serving the lexicon fallback"
                );
                self.publish(Arc::new(LexiconClassifier::embedded()), None);
                false
            }
        }
    }

    fn start_training(&mut self, me: Addr<ModelRegistry>) {
        if self.training {
            return;
        }
        self.training = true;
        let cfg = self.cfg.clone();
        let containment = Containment::new("trainer", self.metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("trainer".to_string())
            .spawn(move || {
                let started = Instant::now();
                tracing::info!("training a model in the background from the configured data");
                let outcome = containment.run(|| {
                    let trained = pipeline::train_and_store(
                        &cfg,
                        &TrainJob {
                            promote: true,
                            ..TrainJob::default()
                        },
                        &mut LogObserver,
                    )
                    .map_err(|e| e.to_string())?;
                    let store = ModelStore::open(&trained.store_root).map_err(|e| e.to_string())?;
                    let classifier = store
                        .load_current()
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| "the trained model is not current".to_string())?;
                    Ok::<_, String>((classifier, trained.manifest))
                });
                match outcome {
                    Ok(Ok((classifier, manifest))) => {
                        tracing::info!(
                            version = %manifest.version,
                            seconds = started.elapsed().as_secs_f64(),
                            "background training finished"
                        );
                        me.do_send(SwapModel {
                            classifier,
                            manifest: Some(manifest),
                        });
                    }
                    Ok(Err(error)) => me.do_send(TrainingFailed { error }),
                    Err(p) => me.do_send(TrainingFailed {
                        error: p.to_string(),
                    }),
                }
            });
        if let Err(e) = spawned {
            self.training = false;
            tracing::error!(error = %e, "cannot start the training thread");
        }
    }
}

impl Actor for ModelRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let wants_training = self
            .containment
            .run(|| self.load_initial())
            .unwrap_or(false);
        if wants_training && self.cfg.train.on_start == TrainOnStart::IfMissing {
            self.start_training(ctx.address());
        }
    }
}

impl Handler<SwapModel> for ModelRegistry {
    type Result = ();

    fn handle(&mut self, msg: SwapModel, _ctx: &mut Context<Self>) {
        self.training = false;
        let _ = self
            .containment
            .run(|| self.publish(msg.classifier, msg.manifest.as_ref()));
    }
}

impl Handler<TrainingFailed> for ModelRegistry {
    type Result = ();

    fn handle(&mut self, msg: TrainingFailed, _ctx: &mut Context<Self>) {
        self.training = false;
        tracing::error!(error = %msg.error, "background training failed; still serving the current model");
    }
}

/// Training progress for the daemon's log: one line per epoch.
struct LogObserver;

impl TrainObserver for LogObserver {
    fn on_start(&mut self, epochs: usize, steps_per_epoch: usize) {
        tracing::info!(epochs, steps_per_epoch, "training started");
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        tracing::info!(
            epoch = r.epoch,
            train_loss = r.train_loss,
            val_macro_recall = r.val_macro_recall,
            val_accuracy = r.val_accuracy,
            seconds = r.seconds,
            improved = r.improved,
            "training epoch"
        );
    }

    fn on_message(&mut self, message: &str) {
        tracing::info!(message, "training");
    }
}
