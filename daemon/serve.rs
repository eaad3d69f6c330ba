//! `sentimentd serve`: builds the actor topology, serves until SIGTERM/SIGINT, drains.

use actix::{Actor, AsyncContext, SyncArbiter};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use clap::Args;
use sentimentd_actors::baseliner::Baseliner;
use sentimentd_actors::drift_monitor::{DriftMonitor, new_report_cell};
use sentimentd_actors::http::{self, AdminApi, HttpState};
use sentimentd_actors::messages::StopIntake;
use sentimentd_actors::observations::ObservationSink;
use sentimentd_actors::systemd::Notifier;
use sentimentd_actors::tracker::Tracker;
use sentimentd_actors::trainer::Trainer;
use sentimentd_actors::{
    BatchProcessor, Faults, FolderWatcher, Inference, Lifecycle, Metrics, ModelRegistry,
    new_model_cell,
};
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

pub fn serve(cfg: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    if let Some(port) = args.port {
        cfg.server.port = port;
    }
    let system = actix::System::new();
    system.block_on(run(Arc::new(cfg)))
}

async fn run(cfg: Arc<Config>) -> anyhow::Result<()> {
    use actix_rt::signal::unix::{SignalKind, signal};
    // Installed first so a signal during start-up still drains instead of killing the process.
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;

    // One log line per panic instead of a multi-line backtrace on stderr; the containment
    // that catches it logs which actor it hit.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), panic = %info, "panic");
    }));
    let notifier = Arc::new(Notifier::from_env());
    let metrics = Arc::new(Metrics::new());
    if cfg.server.test_faults && !sentimentd_actors::supervisor::FAULTS_COMPILED {
        anyhow::bail!(
            "server.test_faults = true, but this build has no fault hooks (only test builds \
             with the cargo feature test-faults have them): remove the key"
        );
    }
    let faults = Faults::new(cfg.server.test_faults);
    let cell = new_model_cell();
    let lifecycle = Arc::new(Lifecycle::default());

    // A configured but unreadable admin token stops the start, before anything runs.
    let admin_token = match &cfg.admin.token_file {
        Some(path) => Some(http::read_admin_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };

    // Crash leftovers are cleared before any file can be taken; claimed files left
    // unfinished are resumed first.
    let resume = BatchProcessor::recover(&cfg).map_err(anyhow::Error::msg)?;

    // The MLOps loop: registry -> baseliner -> drift monitor -> trainer -> registry. The
    // registry's address exists before it starts, which closes the cycle.
    let observations = ObservationSink::new(cfg.drift.window, cfg.drift.enabled);
    let reports = new_report_cell();
    let tracker = Tracker::new(&cfg, metrics.clone())
        .context("cannot open the run log")?
        .start();
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
    // Drift checks take up to a few hundred milliseconds: an arbiter of their own.
    let drift_arbiter = actix::Arbiter::new();
    let monitor = {
        let (cfg, observations, metrics, reports) = (
            cfg.clone(),
            observations.clone(),
            metrics.clone(),
            reports.clone(),
        );
        let trainer = trainer.clone().recipient();
        let tracker = tracker.clone().recipient();
        DriftMonitor::start_in_arbiter(&drift_arbiter.handle(), move |_| {
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
        let monitor = monitor.recipient();
        SyncArbiter::start(1, move || {
            Baseliner::new(cfg.clone(), monitor.clone(), metrics.clone())
        })
    };
    registry_ctx.run(ModelRegistry::new(
        cfg.clone(),
        cell.clone(),
        metrics.clone(),
        Some(baseliner.recipient()),
        Some(tracker.clone()),
    ));
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
    let inference_for_http = inference.clone().recipient();
    let processor = {
        let (cfg, metrics, lifecycle, faults) = (
            cfg.clone(),
            metrics.clone(),
            lifecycle.clone(),
            faults.clone(),
        );
        SyncArbiter::start(1, move || {
            BatchProcessor::new(
                cfg.clone(),
                inference.clone(),
                metrics.clone(),
                lifecycle.clone(),
                faults.clone(),
            )
        })
    };
    let watcher = {
        let inbox = cfg.ingest.inbox.clone();
        let settle = Duration::from_millis(cfg.ingest.settle_ms);
        let metrics = metrics.clone();
        actix::Supervisor::start(move |_| {
            FolderWatcher::new(
                inbox,
                settle,
                processor.recipient(),
                metrics,
                resume.clone(),
            )
        })
    };

    let state = web::Data::new(
        HttpState::new(
            &cfg,
            cell.clone(),
            metrics.clone(),
            faults,
            observations,
            reports,
            admin,
        )
        .with_inference(inference_for_http),
    );
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

    let signal_name = tokio_select(&mut sigterm, &mut sigint).await;
    let started = Instant::now();
    let bound = Duration::from_secs(cfg.server.shutdown_timeout_secs);
    tracing::info!(
        signal = signal_name,
        timeout_secs = bound.as_secs(),
        "shutting down: no new work, draining"
    );
    notifier.stopping();
    lifecycle.stopping.store(true, Ordering::SeqCst);
    watcher.do_send(StopIntake);
    // The journal makes an unfinished batch safe to abandon, so the bound is enforced even if
    // something hangs: nothing is lost by exiting.
    std::thread::spawn(move || {
        std::thread::sleep(bound + Duration::from_millis(500));
        tracing::warn!("drain exceeded server.shutdown_timeout_secs; exiting now");
        std::process::exit(0);
    });
    handle.stop(true).await;
    let _ = server_task.await;
    while lifecycle.busy.load(Ordering::SeqCst) > 0 && started.elapsed() < bound {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "drained; exiting"
    );
    drift_arbiter.stop();
    actix::System::current().stop();
    Ok(())
}

/// Waits for the first of SIGTERM and SIGINT and names it.
async fn tokio_select(
    sigterm: &mut actix_rt::signal::unix::Signal,
    sigint: &mut actix_rt::signal::unix::Signal,
) -> &'static str {
    use std::future::Future;
    use std::task::Poll;
    let mut term = std::pin::pin!(sigterm.recv());
    let mut int = std::pin::pin!(sigint.recv());
    std::future::poll_fn(move |cx| {
        if term.as_mut().poll(cx).is_ready() {
            Poll::Ready("SIGTERM")
        } else if int.as_mut().poll(cx).is_ready() {
            Poll::Ready("SIGINT")
        } else {
            Poll::Pending
        }
    })
    .await
}
