//! The running system, built from the config: the model cell and the MLOps loop (registry,
//! trainer, drift monitor, baseliner, tracker) on their own arbiters, the inference pool, the
//! batcher and the one scorer, the sources, and the state the HTTP API shares. The daemon
//! binds the HTTP server, handles signals and drains; everything it starts is here.

use actix::{Actor, Addr, AsyncContext, SyncArbiter};
use actix_web::web;
use sentimentd_config::Config;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::follower::{ChampionFollower, FollowError};
use crate::cluster::lease::Lease;
use crate::http::{self, AdminApi, HttpState, TokenFile};
use crate::messages::Reconfigure;
use crate::mlops::baseliner::Baseliner;
use crate::mlops::drift_monitor::{DriftLinks, DriftMonitor, new_report_cell};
use crate::mlops::registry::ModelRegistry;
use crate::mlops::reputation::{Reputation, ReputationKeeper};
use crate::mlops::tracker::Tracker;
use crate::mlops::trainer::Trainer;
use crate::runtime::containment::Faults;
use crate::runtime::shutdown::Lifecycle;
use crate::serving::batcher::Batcher;
use crate::serving::inference::Inference;
use crate::serving::model_cell::{ModelCell, new_model_cell};
use crate::serving::observations::ObservationSink;
use crate::serving::scorer::Scorer;
use crate::sources::{self, ConfigSender, SourceContext, SourceHandle};
use crate::telemetry::metrics::Metrics;

/// Why the system could not be built; each stops the start with its reason.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    TokenFile(String),
    #[error("source {name}: {reason}")]
    Source { name: &'static str, reason: String },
    #[error("cannot open the run log: {0}")]
    RunLog(String),
    #[error("cannot start the MLOps arbiter")]
    Arbiter,
    #[error("the MLOps arbiter stopped while starting")]
    ArbiterStopped,
}

/// What the daemon keeps of the running system.
pub struct Topology {
    /// The serving model; the daemon waits for the first one before it says it is ready.
    pub cell: ModelCell,
    pub http: web::Data<HttpState>,
    pub lifecycle: Arc<Lifecycle>,
    pub reputation: Arc<Reputation>,
    sources: Vec<SourceHandle>,
    config: ConfigSender,
    monitor: Addr<DriftMonitor>,
    trainer: Addr<Trainer>,
    /// Token files, read again on every SIGHUP (a rotation needs no restart).
    token_files: Vec<Arc<TokenFile>>,
    drift_arbiter: actix::Arbiter,
    mlops_arbiter: actix::Arbiter,
    /// Tells the training lease's keeper to give the lease back (the drain).
    lease_stop: tokio::sync::watch::Sender<bool>,
}

impl Topology {
    /// Builds and starts everything on the current actix system.
    pub fn build(
        cfg: &Arc<Config>,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Result<Topology, TopologyError> {
        let cfg = cfg.clone();
        let cell = new_model_cell();
        // Temp files a crash left in the state folders go before anything writes there.
        for dir in cfg.paths.atomic_dirs() {
            sentimentd_data::atomic::remove_stale_temp_files(&dir);
        }
        let reputation = Arc::new(Reputation::open(&cfg, metrics.clone()));
        {
            let (reputation, metrics) = (reputation.clone(), metrics.clone());
            let every = Duration::from_secs(cfg.reputation.save_every_secs);
            ReputationKeeper::new(reputation, every, metrics).start();
        }
        let lifecycle = Arc::new(Lifecycle::default());

        // A configured but unreadable token file stops the start, before anything runs.
        let admin_token = match &cfg.admin.token_file {
            Some(path) => Some(Arc::new(
                http::TokenFile::open("[admin] token_file", path)
                    .map_err(TopologyError::TokenFile)?,
            )),
            None => None,
        };
        let feedback_token = match &cfg.feedback.token_file {
            Some(path) => Some(Arc::new(
                http::TokenFile::open("[feedback] token_file", path)
                    .map_err(TopologyError::TokenFile)?,
            )),
            None => admin_token.clone(),
        };
        let mut token_files: Vec<Arc<http::TokenFile>> = admin_token.iter().cloned().collect();
        if let Some(t) = &feedback_token
            && !admin_token.as_ref().is_some_and(|a| Arc::ptr_eq(a, t))
        {
            token_files.push(t.clone());
        }

        // Each source checks its settings and recovers from a crash before anything runs (the
        // folder: leftovers cleared, claimed files left unfinished resumed first).
        let mut sources = sources::from_config(&cfg);
        for source in &mut sources {
            source
                .prepare(&cfg)
                .map_err(|reason| TopologyError::Source {
                    name: source.name(),
                    reason,
                })?;
        }
        let (config_tx, config_rx) = sources::config_channel(cfg.clone());

        // Which node trains: in a cluster the holder of the lease, kept from here on.
        let (lease_stop, lease_stopped) = tokio::sync::watch::channel(false);
        let lease = match &cfg.cluster.nats_url {
            Some(url) => {
                let lease = Lease::clustered(
                    cfg.cluster.node(),
                    Duration::from_secs(cfg.cluster.lease_ttl_secs),
                );
                actix::Arbiter::current().spawn(crate::cluster::lease::keep(
                    lease.clone(),
                    url.clone(),
                    cfg.cluster.clone(),
                    metrics.clone(),
                    lease_stopped,
                ));
                lease
            }
            None => {
                metrics.cluster.lease_holder.set(1);
                Lease::standalone()
            }
        };

        // The MLOps loop: registry -> baseliner -> drift monitor -> trainer -> registry. The
        // registry's address exists before it starts, which closes the cycle.
        let observations = match (&cfg.cluster.nats_url, cfg.cluster.observation_share) {
            (Some(_), share) if share > 0.0 => ObservationSink::sharing(
                cfg.drift.window,
                cfg.drift.enabled,
                (1.0 / share).round() as u64,
            ),
            _ => ObservationSink::new(cfg.drift.window, cfg.drift.enabled),
        };
        let reports = new_report_cell();
        let tracker = Tracker::new(&cfg, metrics.clone())
            .map_err(|e| TopologyError::RunLog(e.to_string()))?
            .start();
        // Drift checks take up to a few hundred milliseconds: an arbiter of their own.
        let drift_arbiter = actix::Arbiter::new();
        // The registry (loads and checksums models) and the trainer (reads the whole labelled
        // store to decide whether a retrain may start) block for seconds at times: an arbiter of
        // their own, so the one that watches the inbox, answers signals and pings the systemd
        // watchdog never waits for them. Built there, since the registry's context must run on
        // the arbiter it lives on; the addresses come back over a channel.
        let mlops_arbiter = actix::Arbiter::new();
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        {
            let (cfg, cell, metrics, tracker, observations, reports, lease) = (
                cfg.clone(),
                cell.clone(),
                metrics.clone(),
                tracker.clone(),
                observations.clone(),
                reports.clone(),
                lease.clone(),
            );
            let drift_handle = drift_arbiter.handle();
            let spawned = mlops_arbiter.spawn_fn(move || {
                let registry_ctx = actix::Context::<ModelRegistry>::new();
                let registry = registry_ctx.address();
                let trainer = Trainer::new(
                    cfg.clone(),
                    cell.clone(),
                    registry.clone(),
                    Some(tracker.clone()),
                    metrics.clone(),
                )
                .with_lease(lease.clone())
                .start();
                let monitor = {
                    let (cfg, metrics) = (cfg.clone(), metrics.clone());
                    let trainer = trainer.clone().recipient();
                    let tracker = tracker.clone().recipient();
                    DriftMonitor::start_in_arbiter(&drift_handle, move |_| {
                        DriftMonitor::new(DriftLinks {
                            cfg,
                            sink: observations,
                            metrics,
                            reports,
                            trainer: Some(trainer),
                            tracker: Some(tracker),
                        })
                    })
                };
                let baseliner = {
                    let (cfg, metrics) = (cfg.clone(), metrics.clone());
                    let monitor = monitor.clone().recipient();
                    SyncArbiter::start(1, move || {
                        Baseliner::new(cfg.clone(), monitor.clone(), metrics.clone())
                    })
                };
                registry_ctx.run(
                    ModelRegistry::new(
                        cfg,
                        cell,
                        metrics,
                        Some(baseliner.recipient()),
                        Some(tracker),
                    )
                    .with_lease(lease),
                );
                let _ = built_tx.send((registry, trainer, monitor));
            });
            if !spawned {
                return Err(TopologyError::Arbiter);
            }
        }
        let (registry, trainer, monitor) =
            built_rx.recv().map_err(|_| TopologyError::ArbiterStopped)?;
        // The lease holder judges drift on the followers' observations too.
        if let Some(url) = &cfg.cluster.nats_url
            && cfg.drift.enabled
        {
            actix::Arbiter::current().spawn(crate::cluster::observations::exchange(
                url.clone(),
                cfg.cluster.clone(),
                lease.clone(),
                observations.clone(),
                metrics.clone(),
            ));
        }
        // Followers serve the leader's model, from MLflow.
        let champion_error: FollowError = Default::default();
        if cfg.cluster.nats_url.is_some() && cfg.tracking.mlflow_uri.is_some() {
            let follower = ChampionFollower {
                highest_token: Default::default(),
                cfg: cfg.clone(),
                lease: lease.clone(),
                cell: cell.clone(),
                registry: registry.clone().recipient(),
                metrics: metrics.clone(),
                error: champion_error.clone(),
                client: Default::default(),
            };
            if let Err(e) = follower.spawn() {
                tracing::error!(error = %e, "cannot start the champion follower; this node serves its own models only");
            }
        }
        let admin = admin_token.map(|token| AdminApi {
            token,
            retrain: trainer.clone().recipient(),
            promote: registry.clone().recipient(),
            rollback: registry.clone().recipient(),
        });

        let inference = {
            let (cell, metrics, faults, observations) = (
                cell.clone(),
                metrics.clone(),
                faults.clone(),
                observations.clone(),
            );
            SyncArbiter::start(cfg.server.inference_threads, move || {
                Inference::new(
                    cell.clone(),
                    metrics.clone(),
                    faults.clone(),
                    observations.clone(),
                )
            })
        };
        let batcher = {
            let (pool, t) = (inference.clone().recipient(), cfg.transformer.clone());
            let slots = cfg.server.inference_threads;
            let metrics = metrics.clone();
            actix::Supervisor::start(move |_| {
                Batcher::new(
                    pool,
                    metrics,
                    t.max_batch,
                    Duration::from_millis(t.max_wait_ms),
                    slots,
                )
            })
        };
        // The one scoring path: HTTP and the folder hand it their texts.
        let scorer = Arc::new(
            Scorer::new(
                &cfg,
                cell.clone(),
                metrics.clone(),
                faults.clone(),
                observations.clone(),
                reputation.clone(),
            )
            .with_pool(inference.recipient())
            .with_batcher(batcher.recipient()),
        );
        let source_cx = SourceContext {
            config: config_rx,
            scorer: scorer.clone(),
            shutdown: lifecycle.clone(),
            metrics: metrics.clone(),
            faults: faults.clone(),
            reputation: reputation.clone(),
        };
        let sources: Vec<SourceHandle> = sources
            .into_iter()
            .map(|source| source.start(source_cx.clone()))
            .collect();

        let http = web::Data::new(
            HttpState::new(
                &cfg,
                scorer,
                metrics.clone(),
                reports,
                admin,
                feedback_token,
                reputation.clone(),
            )
            .with_lease(lease, champion_error),
        );
        Ok(Topology {
            cell,
            http,
            lifecycle,
            reputation,
            sources,
            config: config_tx,
            monitor,
            trainer,
            token_files,
            drift_arbiter,
            mlops_arbiter,
            lease_stop,
        })
    }

    /// Applies a reloaded config's live settings everywhere that reads them.
    pub fn reconfigure(&self, effective: Arc<Config>) {
        // No source is listening only while none runs; nothing is lost then.
        let _ = self.config.send(effective.clone());
        let message = Reconfigure(effective.clone());
        self.monitor.do_send(message.clone());
        self.trainer.do_send(message);
        self.http.set_limits(&effective);
    }

    /// Reads every token file again (SIGHUP).
    pub fn reload_tokens(&self) {
        for token in &self.token_files {
            match token.reload() {
                Ok(()) => tracing::info!(file = %token.path().display(), "token file read again"),
                Err(e) => {
                    tracing::error!(error = %e, "the token file cannot be used; requests that need it are refused until a reload reads it")
                }
            }
        }
    }

    /// Stops every source taking new work (the drain).
    pub fn stop_intake(&self) {
        self.lifecycle
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for source in &self.sources {
            source.stop_intake();
        }
        let _ = self.lease_stop.send(true);
    }

    /// Stops the arbiters of the MLOps loop.
    pub fn stop(&self) {
        self.drift_arbiter.stop();
        self.mlops_arbiter.stop();
    }
}
