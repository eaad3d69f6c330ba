//! `sentimentd serve`: builds the actor topology, serves until SIGTERM/SIGINT, drains.

use actix::{Actor, AsyncContext, SyncArbiter};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use clap::Args;
use sentimentd_actors::http::{self, AdminApi, HttpState};
use sentimentd_actors::mlops::baseliner::Baseliner;
use sentimentd_actors::mlops::drift_monitor::{DriftMonitor, new_report_cell};
use sentimentd_actors::mlops::reputation::{Reputation, ReputationKeeper};
use sentimentd_actors::mlops::tracker::Tracker;
use sentimentd_actors::mlops::trainer::Trainer;
use sentimentd_actors::runtime::systemd::Notifier;
use sentimentd_actors::serving::batcher::Batcher;
use sentimentd_actors::serving::observations::ObservationSink;
use sentimentd_actors::serving::scorer::Scorer;
use sentimentd_actors::sources::{self, SourceContext, SourceHandle};
use sentimentd_actors::{Faults, Inference, Lifecycle, Metrics, ModelRegistry, new_model_cell};
use sentimentd_config::Config;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TCP port to listen on (overrides [server] port; 0 picks a free port).
    #[arg(long, short)]
    pub port: Option<u16>,
}

/// Changes the log filter of the running process.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Where a SIGHUP re-reads the config from.
pub struct ReloadSource {
    /// The `--config` file; none means built-in defaults, which a reload cannot change.
    pub path: Option<std::path::PathBuf>,
    /// Relative paths in the file resolve against this, as at start-up.
    pub cwd: std::path::PathBuf,
    /// None when `--log` / `SENTIMENTD_LOG` set the filter: they win on reload too.
    pub log: Option<LogReload>,
}

pub fn serve(cfg: &Config, args: ServeArgs, reload: ReloadSource) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    if let Some(port) = args.port {
        cfg.server.port = port;
    }
    let system = actix::System::new();
    system.block_on(run(Arc::new(cfg), args.port, reload))
}

/// The actors and state a reload reconfigures.
struct ReloadTargets {
    /// Token files, read again on every SIGHUP (a rotation needs no restart).
    token_files: Vec<Arc<http::TokenFile>>,
    /// The sources read their settings from here.
    sources: sources::ConfigSender,
    monitor: actix::Addr<DriftMonitor>,
    trainer: actix::Addr<Trainer>,
    http: web::Data<HttpState>,
}

/// SIGHUP: re-reads and validates the file, applies what a running daemon can change, and
/// says which changed keys wait for a restart. An invalid file changes nothing.
fn reload(
    running: &Config,
    port: Option<u16>,
    source: &ReloadSource,
    targets: &ReloadTargets,
) -> Config {
    for token in &targets.token_files {
        match token.reload() {
            Ok(()) => tracing::info!(file = %token.path().display(), "token file read again"),
            Err(e) => {
                tracing::error!(error = %e, "the token file cannot be used; requests that need it are refused until a reload reads it")
            }
        }
    }
    let Some(path) = &source.path else {
        tracing::warn!(
            "SIGHUP: the daemon runs on built-in defaults (no --config file); nothing to reload"
        );
        return running.clone();
    };
    let loaded = Config::load(path).and_then(|mut c| {
        c.resolve_paths(&source.cwd);
        if let Some(p) = port {
            c.server.port = p;
        }
        c.validate().map(|()| c)
    });
    let reloaded = match loaded {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "config reload refused; the running settings stay");
            return running.clone();
        }
    };
    let plan = match sentimentd_config::reload::plan(running, &reloaded) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "config reload failed; the running settings stay");
            return running.clone();
        }
    };
    if plan.applied.is_empty() && plan.needs_restart.is_empty() {
        tracing::info!(file = %path.display(), "config reloaded: nothing changed");
        return running.clone();
    }
    if plan.applied.iter().any(|k| k == "logging.level") {
        match &source.log {
            Some(set) => {
                if let Err(e) = set(&plan.effective.logging.level) {
                    tracing::error!(error = %e, "cannot apply the new logging.level");
                }
            }
            None => tracing::warn!(
                "logging.level changed, but --log / SENTIMENTD_LOG set the filter and win"
            ),
        }
    }
    let effective = Arc::new(plan.effective.clone());
    let message = sentimentd_actors::messages::Reconfigure(effective.clone());
    // No source is listening only while none runs; nothing is lost then.
    let _ = targets.sources.send(effective.clone());
    targets.monitor.do_send(message.clone());
    targets.trainer.do_send(message);
    targets.http.set_limits(&effective);
    tracing::info!(
        file = %path.display(),
        applied = %plan.applied.join(","),
        needs_restart = %plan.needs_restart.join(","),
        "config reloaded"
    );
    if !plan.needs_restart.is_empty() {
        tracing::warn!(
            keys = %plan.needs_restart.join(","),
            "changed keys take effect only after a restart; their running values stay"
        );
    }
    plan.effective
}

async fn run(cfg: Arc<Config>, port: Option<u16>, source: ReloadSource) -> anyhow::Result<()> {
    use actix_rt::signal::unix::{SignalKind, signal};
    // Installed first so a signal during start-up still drains instead of killing the process.
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;

    // One log line per panic instead of a multi-line backtrace on stderr; the containment
    // that catches it logs which actor it hit.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), panic = %info, "panic");
    }));
    let notifier = Arc::new(Notifier::from_env());
    let metrics = Arc::new(Metrics::new());
    if cfg.server.test_faults && !sentimentd_actors::runtime::containment::FAULTS_COMPILED {
        anyhow::bail!(
            "server.test_faults = true, but this build has no fault hooks (only test builds \
             with the cargo feature test-faults have them): remove the key"
        );
    }
    let faults = Faults::new(cfg.server.test_faults);
    // A configured fallback lexicon that cannot be read stops the start, naming the file.
    if let Some(path) = &cfg.data.lexicon {
        sentimentd_model::LexiconClassifier::load(path)
            .with_context(|| format!("[data] lexicon {}", path.display()))?;
    }
    let cell = new_model_cell();
    remove_stale_state_temp_files(&cfg);
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
            http::TokenFile::open("[admin] token_file", path).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let feedback_token = match &cfg.feedback.token_file {
        Some(path) => Some(Arc::new(
            http::TokenFile::open("[feedback] token_file", path).map_err(anyhow::Error::msg)?,
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
            .map_err(|e| anyhow::anyhow!("source {}: {e}", source.name()))?;
    }
    let (config_tx, config_rx) = sources::config_channel(cfg.clone());

    // The MLOps loop: registry -> baseliner -> drift monitor -> trainer -> registry. The
    // registry's address exists before it starts, which closes the cycle.
    let observations = ObservationSink::new(cfg.drift.window, cfg.drift.enabled);
    let reports = new_report_cell();
    let tracker = Tracker::new(&cfg, metrics.clone())
        .context("cannot open the run log")?
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
        let (cfg, cell, metrics, tracker, observations, reports) = (
            cfg.clone(),
            cell.clone(),
            metrics.clone(),
            tracker.clone(),
            observations.clone(),
            reports.clone(),
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
            .start();
            let monitor = {
                let (cfg, metrics) = (cfg.clone(), metrics.clone());
                let trainer = trainer.clone().recipient();
                let tracker = tracker.clone().recipient();
                DriftMonitor::start_in_arbiter(&drift_handle, move |_| {
                    DriftMonitor::new(
                        cfg,
                        observations,
                        metrics,
                        reports,
                        Some(trainer),
                        Some(tracker),
                    )
                })
            };
            let baseliner = {
                let (cfg, metrics) = (cfg.clone(), metrics.clone());
                let monitor = monitor.clone().recipient();
                SyncArbiter::start(1, move || {
                    Baseliner::new(cfg.clone(), monitor.clone(), metrics.clone())
                })
            };
            registry_ctx.run(ModelRegistry::new(
                cfg,
                cell,
                metrics,
                Some(baseliner.recipient()),
                Some(tracker),
            ));
            let _ = built_tx.send((registry, trainer, monitor));
        });
        if !spawned {
            anyhow::bail!("cannot start the MLOps arbiter");
        }
    }
    let (registry, trainer, monitor) = built_rx
        .recv()
        .context("the MLOps arbiter stopped while starting")?;
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

    let state = web::Data::new(HttpState::new(
        &cfg,
        scorer,
        metrics.clone(),
        reports,
        admin,
        feedback_token,
        reputation.clone(),
    ));
    let http_state = state.clone();
    let server = HttpServer::new(move || App::new().configure(http::configure(state.clone())))
        .workers(cfg.server.workers)
        .disable_signals()
        .shutdown_timeout(cfg.server.shutdown_timeout_secs)
        .bind((cfg.server.bind.as_str(), cfg.server.port))
        .with_context(|| format!("cannot listen on {}:{}", cfg.server.bind, cfg.server.port))?;
    let addrs: Vec<String> = server.addrs().iter().map(ToString::to_string).collect();
    let server = server.run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    tracing::info!(
        listen = %addrs.join(","),
        inbox = %cfg.ingest.inbox.display(),
        workers = cfg.server.workers,
        inference_threads = cfg.server.inference_threads,
        "sentimentd serving"
    );
    // READY=1 means "answers /predict", so wait for the registry's first model (the
    // fallback takes microseconds, a trained model well under a second).
    let waiting = Instant::now();
    while cell.load().is_none() && waiting.elapsed() < Duration::from_secs(60) {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    notifier.ready(&format!("serving on {}", addrs.join(",")));
    if notifier.enabled()
        && let Some(every) = Notifier::watchdog_interval()
    {
        let notifier = notifier.clone();
        // Pinged from the actor system's own thread: if it hangs, the pings stop and systemd
        // restarts the service, which is the point of the watchdog.
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        });
    }

    let targets = ReloadTargets {
        token_files,
        sources: config_tx,
        monitor,
        trainer: trainer.clone(),
        http: http_state,
    };
    let mut running = (*cfg).clone();
    let signal_name = loop {
        match next_signal(&mut sigterm, &mut sigint, &mut sighup).await {
            "SIGHUP" => running = reload(&running, port, &source, &targets),
            other => break other,
        }
    };
    let started = Instant::now();
    let bound = Duration::from_secs(cfg.server.shutdown_timeout_secs);
    tracing::info!(
        signal = signal_name,
        timeout_secs = bound.as_secs(),
        "shutting down: no new work, draining"
    );
    notifier.stopping();
    lifecycle.stopping.store(true, Ordering::SeqCst);
    for source in &sources {
        source.stop_intake();
    }
    // The journal makes an unfinished batch safe to abandon, so the bound is enforced even if
    // something hangs: nothing is lost by exiting. The reputation counts are saved first,
    // and the exit status says the drain did not finish, so systemd records it.
    let forced_reputation = reputation.clone();
    std::thread::spawn(move || {
        std::thread::sleep(bound + Duration::from_millis(500));
        if let Err(e) = forced_reputation.save() {
            tracing::error!(error = %e, "cannot save the reputation state before the forced exit");
        }
        tracing::error!(
            exit_code = FORCED_EXIT_CODE,
            "drain exceeded server.shutdown_timeout_secs; exiting now (unfinished batches resume on the next start)"
        );
        std::process::exit(FORCED_EXIT_CODE);
    });
    handle.stop(true).await;
    let _ = server_task.await;
    while lifecycle.busy.load(Ordering::SeqCst) > 0 && started.elapsed() < bound {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = reputation.save() {
        tracing::warn!(error = %e, "cannot save the reputation state");
    }
    if lifecycle.busy.load(Ordering::SeqCst) > 0 {
        // A batch still holds its thread: what it did is in the journal and resumes on the
        // next start, but the drain did not finish, and the exit status says so.
        tracing::error!(
            exit_code = FORCED_EXIT_CODE,
            seconds = started.elapsed().as_secs_f64(),
            "drain exceeded server.shutdown_timeout_secs; exiting now (unfinished batches resume on the next start)"
        );
        std::process::exit(FORCED_EXIT_CODE);
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "drained; exiting"
    );
    drift_arbiter.stop();
    mlops_arbiter.stop();
    actix::System::current().stop();
    Ok(())
}

/// Exit status when the drain outlasts `server.shutdown_timeout_secs`.
pub const FORCED_EXIT_CODE: i32 = 2;

/// Removes temp files a crash left in the state folders (`<state_dir>` and the folders the
/// daemon writes atomically inside it).
fn remove_stale_state_temp_files(cfg: &Config) {
    for dir in cfg.paths.atomic_dirs() {
        sentimentd_data::atomic::remove_stale_temp_files(&dir);
    }
}

/// Waits for the first of SIGTERM and SIGINT and names it.
async fn next_signal(
    sigterm: &mut actix_rt::signal::unix::Signal,
    sigint: &mut actix_rt::signal::unix::Signal,
    sighup: &mut actix_rt::signal::unix::Signal,
) -> &'static str {
    use std::future::Future;
    use std::task::Poll;
    let mut term = std::pin::pin!(sigterm.recv());
    let mut int = std::pin::pin!(sigint.recv());
    let mut hup = std::pin::pin!(sighup.recv());
    std::future::poll_fn(move |cx| {
        if term.as_mut().poll(cx).is_ready() {
            Poll::Ready("SIGTERM")
        } else if int.as_mut().poll(cx).is_ready() {
            Poll::Ready("SIGINT")
        } else if hup.as_mut().poll(cx).is_ready() {
            Poll::Ready("SIGHUP")
        } else {
            Poll::Pending
        }
    })
    .await
}
