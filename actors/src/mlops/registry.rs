//! ModelRegistry: decides which model serves. At start it loads the store's current version,
//! or the lexicon fallback when there is none; with `[train] on_start = "if-missing"` it then
//! trains a model on a background thread (serving never waits for it) and swaps it in.
//!
//! The serving model is published in the [`ModelCell`] that HTTP workers and inference threads
//! read without locks.
//!
//! It is the one actor of the daemon that moves the store's `current`: promotions of gated
//! candidates, admin promotions and rollbacks all go through it. It also notices a `current`
//! changed from outside (`sentimentd train`, `sentimentd model promote|rollback` run against
//! the same store), verifies that version and swaps it in, or keeps serving and says why.
//! Every model it publishes is handed to the Baseliner so drift checks follow it.

use actix::{Actor, Addr, AsyncContext, Context, Handler, Recipient};
use sentimentd_config::{Config, TrainOnStart};
use sentimentd_model::pipeline::{self, TrainJob};
use sentimentd_model::{Classifier, LexiconClassifier, Manifest, ModelStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::lease::Lease;
use crate::messages::{
    FollowChampion, ModelServing, PromoteCandidate, PromoteVersion, Rollback, SwapModel, Switched,
    TrainingFailed, TrainingSkipped,
};
use crate::mlops::train_log::LogObserver;
use crate::runtime::containment::Containment;
use crate::serving::model_cell::{CandidateSummary, ModelCell, ServingModel};
use crate::telemetry::events::{InternalEvent, RolledBack};
use crate::telemetry::metrics::Metrics;

/// How often the registry looks whether `current` was switched from outside the daemon.
const RELOAD_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The newest `limit` candidates with a gate decision in the store at `root`, newest first.
pub fn recent_candidates(root: &std::path::Path, limit: usize) -> Vec<CandidateSummary> {
    let Ok(store) = ModelStore::open(root) else {
        return Vec::new();
    };
    let mut out: Vec<CandidateSummary> = store
        .decisions()
        .into_iter()
        .map(|(m, d)| {
            let recall = |who: &str, set: &str| {
                d.details
                    .get(who)
                    .and_then(|w| w.get(set))
                    .and_then(|s| s.get("macro_recall"))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            };
            let gate_sets = serde_json::json!({
                "validation": {
                    "candidate": recall("candidate", "validation"),
                    "serving": recall("serving", "validation"),
                },
                "recent_holdout": {
                    "candidate": recall("candidate", "recent_holdout"),
                    "serving": recall("serving", "recent_holdout"),
                    "origins": d.details.get("holdout_origins").cloned().unwrap_or(serde_json::Value::Null),
                },
            });
            CandidateSummary {
                version: d.version,
                decided_at: d.decided_at,
                status: d.status,
                reason: d.reason,
                against: d.against,
                weighting: m
                    .weighting
                    .as_ref()
                    .and_then(|w| serde_json::to_value(w).ok()),
                gate_sets,
            }
        })
        .collect();
    out.sort_by(|a, b| b.decided_at.cmp(&a.decided_at));
    out.truncate(limit);
    out
}

pub struct ModelRegistry {
    cfg: Arc<Config>,
    cell: ModelCell,
    metrics: Arc<Metrics>,
    containment: Containment,
    training: bool,
    baseliner: Option<Recipient<ModelServing>>,
    tracker: Option<Addr<crate::mlops::tracker::Tracker>>,
    /// A `current` that failed to load, so a broken version is reported once, not every tick.
    refused: Option<String>,
    /// In a cluster only the training lease's holder switches models.
    lease: Lease,
}

impl ModelRegistry {
    pub fn new(
        cfg: Arc<Config>,
        cell: ModelCell,
        metrics: Arc<Metrics>,
        baseliner: Option<Recipient<ModelServing>>,
        tracker: Option<Addr<crate::mlops::tracker::Tracker>>,
    ) -> ModelRegistry {
        let containment = Containment::new("model_registry", metrics.clone());
        ModelRegistry {
            cfg,
            cell,
            metrics,
            containment,
            training: false,
            baseliner,
            tracker,
            refused: None,
            lease: Lease::standalone(),
        }
    }

    pub fn with_lease(mut self, lease: Lease) -> ModelRegistry {
        self.lease = lease;
        self
    }

    /// The lexicon fallback of `[data] lexicon`. The daemon checked the file at start-up; if
    /// it has become unreadable since, the bundled lexicon answers and the log says why.
    fn fallback(&self) -> LexiconClassifier {
        LexiconClassifier::fallback(self.cfg.data.lexicon.as_deref()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot load [data] lexicon; the bundled lexicon answers");
            LexiconClassifier::embedded()
        })
    }

    fn publish(&self, classifier: Arc<dyn Classifier>, manifest: Option<&Manifest>) {
        self.publish_with(classifier, manifest, Vec::new());
    }

    fn publish_with(
        &self,
        classifier: Arc<dyn Classifier>,
        manifest: Option<&Manifest>,
        extra_reference: Vec<String>,
    ) {
        if let Some(b) = &self.baseliner {
            b.do_send(ModelServing {
                classifier: classifier.clone(),
                manifest: manifest.cloned(),
                extra_reference,
            });
        }
        let model = ServingModel::new(classifier, manifest);
        let previous = self
            .cell
            .swap(Some(Arc::new(model)))
            .map(|m| m.info.version.clone());
        let Some(now) = self.cell.load_full() else {
            return;
        };
        self.metrics.mlops.model_changed(
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

    fn serving_version(&self) -> Option<String> {
        self.cell
            .load()
            .as_deref()
            .filter(|m| !m.info.fallback)
            .map(|m| m.info.version.clone())
    }

    /// Loads `version` from the store and serves it.
    fn load_and_publish(&self, version: &str) -> Result<(), String> {
        let store = ModelStore::for_config(&self.cfg, None).map_err(|e| e.to_string())?;
        let model = store.load(version).map_err(|e| e.to_string())?;
        let manifest = store.manifest(version).map_err(|e| e.to_string())?;
        self.publish_with(model, Some(&manifest), Vec::new());
        Ok(())
    }

    /// Points MLflow's `champion` at `version` after an admin switch (the trainer does it for
    /// a gate promotion), so a cluster's followers follow a promotion or a rollback too. The
    /// local training run's id is not kept with the version, so each admin switch gets an MLflow
    /// run of its own carrying the version's files (the same switch again reuses it).
    fn register_champion(&self, version: &str, action: &str) {
        if let Some(t) = &self.tracker {
            t.do_send(crate::messages::RegisterChampion {
                version: version.to_string(),
                run_id: format!("{action}-{version}"),
                model_dir: self.cfg.paths.model_store.join("versions").join(version),
                fencing: self.lease.token(),
            });
        }
    }

    /// Runs a switch `f` with a panic in it turned into its error, so the actor keeps serving.
    fn switch_contained(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Switched, String>,
    ) -> Result<Switched, String> {
        if let Some(refusal) = self.lease.refusal() {
            return Err(refusal);
        }
        let containment = self.containment.clone();
        containment.run(|| f(self)).map_err(|p| p.to_string())?
    }

    /// Makes `version` current in the store, then serves it.
    fn switch(
        &mut self,
        version: &str,
        action: &str,
        reason: &str,
        extra: Vec<String>,
    ) -> Result<Switched, String> {
        let store = ModelStore::for_config(&self.cfg, None).map_err(|e| e.to_string())?;
        let from = self.serving_version();
        let model = store
            .promote(version, action, reason)
            .map_err(|e| e.to_string())?;
        let manifest = store.manifest(version).map_err(|e| e.to_string())?;
        self.refused = None;
        self.publish_with(model, Some(&manifest), extra);
        Ok(Switched {
            from,
            to: version.to_string(),
        })
    }

    /// A `current` switched by another process: verify and swap in, or keep serving.
    fn reload_if_changed(&mut self) {
        let Ok(store) = ModelStore::for_config(&self.cfg, None) else {
            return;
        };
        let current = match store.current_version() {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                let key = format!("error:{e}");
                if self.refused.as_deref() != Some(key.as_str()) {
                    tracing::error!(error = %e, "cannot read the model store's current pointer; still serving the current model");
                    self.refused = Some(key);
                }
                return;
            }
        };
        if self.serving_version().as_deref() == Some(current.as_str())
            || self.refused.as_deref() == Some(current.as_str())
        {
            return;
        }
        match self.load_and_publish(&current) {
            Ok(()) => {
                self.refused = None;
                tracing::info!(version = %current, "model store's current version changed outside the daemon; swapped it in");
                // `sentimentd model promote` or `rollback` on the lease holder's store: the
                // champion follows, as for a switch through the admin API, so followers do too.
                if self.lease.refusal().is_none() {
                    self.register_champion(&current, "outside");
                }
            }
            Err(e) => {
                tracing::error!(version = %current, error = %e, "the store's current version cannot be loaded; still serving the previous model");
                self.refused = Some(current);
            }
        }
    }

    /// Returns true when there is no usable trained model (so training may be wanted).
    fn load_initial(&self) -> bool {
        let loaded = ModelStore::for_config(&self.cfg, None).and_then(|store| {
            store.remove_stale_temp_dirs();
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
                self.publish(Arc::new(self.fallback()), None);
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
                self.publish(Arc::new(self.fallback()), None);
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
        let tracker = self.tracker.clone();
        let lease = self.lease.clone();
        let spawned = std::thread::Builder::new()
            .name("trainer".to_string())
            .spawn(move || {
                // In a cluster only the lease holder trains. A follower waits, and stops
                // waiting once the leader's champion serves here.
                let mut waiting = false;
                while let Some(why) = lease.refusal() {
                    let has_model = ModelStore::for_config(&cfg, None)
                        .and_then(|s| s.current_version())
                        .is_ok_and(|v| v.is_some());
                    if has_model {
                        me.do_send(TrainingSkipped {
                            reason: "the leader's champion serves".into(),
                        });
                        return;
                    }
                    if !waiting {
                        tracing::info!(reason = %why, "first-start training waits for the training lease or the leader's champion");
                        waiting = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                // The lease this training runs under: what it registers is fenced by it.
                let fencing = lease.token();
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
                    let store = ModelStore::for_config(&cfg, Some(&trained.store_root))
                        .map_err(|e| e.to_string())?;
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
                        if let Some(t) = &tracker {
                            let dir = cfg
                                .paths
                                .model_store
                                .join("versions")
                                .join(&manifest.version);
                            let rec = sentimentd_tracking::records::training_record(
                                &manifest,
                                "first_start",
                                &dir,
                            );
                            let run_id = rec.run_id.clone();
                            t.do_send(crate::messages::Track(rec));
                            // The first model serves at once: it is the champion, unless the
                            // lease was lost meanwhile (the new holder's champion wins).
                            if lease.token() == fencing {
                                t.do_send(crate::messages::RegisterChampion {
                                    version: manifest.version.clone(),
                                    run_id,
                                    model_dir: dir,
                                    fencing,
                                });
                            } else {
                                tracing::warn!(version = %manifest.version, "the training lease was lost during first-start training; the version is not registered as the champion");
                            }
                        }
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
        ctx.run_interval(RELOAD_CHECK_EVERY, |me, _ctx| {
            if me.training {
                return;
            }
            let containment = me.containment.clone();
            let _ = containment.run(|| me.reload_if_changed());
        });
    }
}

impl Handler<PromoteCandidate> for ModelRegistry {
    type Result = Result<Switched, String>;

    fn handle(&mut self, msg: PromoteCandidate, _ctx: &mut Context<Self>) -> Self::Result {
        let now_serving = self.cell.load();
        let serving = now_serving.as_deref().map(|m| m.info.version.clone());
        let on_fallback = now_serving.as_deref().is_some_and(|m| m.info.fallback);
        if serving.as_deref() != Some(msg.against.as_str()) {
            return Err(format!(
                "the gate compared {} with {}, but {} serves now; not promoted",
                msg.version,
                msg.against,
                serving.as_deref().unwrap_or("no model")
            ));
        }
        // The store's pointer too: `sentimentd model promote` or `rollback` moves it outside
        // the daemon, which swaps it in only at its next check, and an operator's switch must
        // not be overridden by a candidate gated against the model it replaced.
        let pointer = ModelStore::for_config(&self.cfg, None)
            .and_then(|s| s.current_version())
            .map_err(|e| format!("cannot read the model store's current pointer: {e}"))?;
        // The lexicon fallback serves when the store names no version, or one this registry
        // could not load.
        let as_gated = pointer.as_deref() == Some(msg.against.as_str())
            || (on_fallback && (pointer.is_none() || self.refused == pointer));
        if !as_gated {
            return Err(format!(
                "the gate compared {} with {}, but the store's current version is {} (switched \
                 outside the daemon, e.g. by `sentimentd model promote` or `rollback`); not \
                 promoted",
                msg.version,
                msg.against,
                pointer.as_deref().unwrap_or("none")
            ));
        }
        let now = self.lease.token();
        if now.is_some() && now != msg.fencing {
            return Err(format!(
                "{} was trained under training lease token {}, but this node holds token {} \
                 now (the lease was lost and taken again meanwhile); not promoted",
                msg.version,
                msg.fencing.map_or("none".into(), |t| t.to_string()),
                now.map_or("none".into(), |t| t.to_string()),
            ));
        }
        self.switch_contained(|me| {
            me.switch(&msg.version, "gate", &msg.reason, msg.extra_reference)
        })
    }
}

impl Handler<PromoteVersion> for ModelRegistry {
    type Result = Result<Switched, String>;

    fn handle(&mut self, msg: PromoteVersion, _ctx: &mut Context<Self>) -> Self::Result {
        if !msg.force {
            let store = ModelStore::for_config(&self.cfg, None).map_err(|e| e.to_string())?;
            if let Some(why) = store.rejected_by_gate(&msg.version) {
                return Err(format!(
                    "{} was rejected by the gate ({why}); send \"force\": true to serve it anyway",
                    msg.version
                ));
            }
        }
        let switched = self
            .switch_contained(|me| me.switch(&msg.version, "promote", &msg.reason, Vec::new()))?;
        tracing::info!(from = switched.from.as_deref().unwrap_or("none"), to = %switched.to, reason = %msg.reason, "model version promoted by the admin API");
        self.register_champion(&switched.to, "promote");
        Ok(switched)
    }
}

impl Handler<Rollback> for ModelRegistry {
    type Result = Result<Switched, String>;

    fn handle(&mut self, msg: Rollback, _ctx: &mut Context<Self>) -> Self::Result {
        let switched = self.switch_contained(|me| {
            let store = ModelStore::for_config(&me.cfg, None).map_err(|e| e.to_string())?;
            let target = store
                .rollback_target()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no earlier version to roll back to".to_string())?;
            me.switch(&target, "rollback", &msg.reason, Vec::new())
        })?;
        RolledBack {
            from: switched.from.as_deref().unwrap_or("none"),
            to: &switched.to,
            reason: &msg.reason,
        }
        .emit(&self.metrics);
        self.register_champion(&switched.to, "rollback");
        Ok(switched)
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

impl Handler<TrainingSkipped> for ModelRegistry {
    type Result = ();

    fn handle(&mut self, msg: TrainingSkipped, _ctx: &mut Context<Self>) {
        self.training = false;
        tracing::info!(reason = %msg.reason, "first-start training not needed");
    }
}

impl Handler<FollowChampion> for ModelRegistry {
    type Result = Result<Switched, String>;

    fn handle(&mut self, msg: FollowChampion, _ctx: &mut Context<Self>) -> Self::Result {
        let containment = self.containment.clone();
        let reason = "the leader's champion (MLflow alias)";
        let switched = containment
            .run(|| self.switch(&msg.version, "follow", reason, Vec::new()))
            .map_err(|p| p.to_string())??;
        tracing::info!(from = switched.from.as_deref().unwrap_or("none"), to = %switched.to, "serving the leader's champion");
        Ok(switched)
    }
}

impl Handler<TrainingFailed> for ModelRegistry {
    type Result = ();

    fn handle(&mut self, msg: TrainingFailed, _ctx: &mut Context<Self>) {
        self.training = false;
        tracing::error!(error = %msg.error, "background training failed; still serving the current model");
    }
}
