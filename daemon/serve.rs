//! `sentimentd serve`: builds the actor topology, serves until SIGTERM/SIGINT, drains.

use actix_web::{App, HttpServer};
use anyhow::Context as _;
use clap::Args;
use sentimentd_actors::http;
use sentimentd_actors::runtime::systemd::Notifier;
use sentimentd_actors::topology::Topology;
use sentimentd_actors::{Faults, Metrics};
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
    /// None when `--log` / `SENTIMENTD_LOG` or `RUST_LOG` set the filter: they win on reload
    /// too.
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

/// SIGHUP: re-reads and validates the file, applies what a running daemon can change, and
/// says which changed keys wait for a restart. An invalid file changes nothing.
fn reload(
    running: &Config,
    port: Option<u16>,
    source: &ReloadSource,
    topology: &Topology,
) -> Config {
    topology.reload_tokens();
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
                "logging.level changed, but --log / SENTIMENTD_LOG or RUST_LOG set the filter \
                 and win"
            ),
        }
    }
    topology.reconfigure(Arc::new(plan.effective.clone()));
    warn_about(&plan.effective);
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
    // Bound before any actor starts: a port in use (the commonest failed start) then stops the
    // start with its one clear line, not after actors that must be torn down again.
    let listeners = listen(&cfg.server.bind, cfg.server.port)
        .with_context(|| format!("cannot listen on {}:{}", cfg.server.bind, cfg.server.port))?;
    warn_about(&cfg);
    let topology = match Topology::build(&cfg, metrics, faults) {
        Ok(t) => t,
        Err(e) => {
            // The actors built before the failure are dropped with the runtime, and actix's
            // timers panic when polled outside it ("there is no reactor running"): noise
            // that would precede the real error in the journal. The process is exiting with
            // that error, so panics from here on are not logged.
            std::panic::set_hook(Box::new(|_| {}));
            return Err(e.into());
        }
    };
    let state = topology.http.clone();
    let mut server = HttpServer::new(move || App::new().configure(http::configure(state.clone())))
        .workers(cfg.server.workers)
        .disable_signals()
        .shutdown_timeout(cfg.server.shutdown_timeout_secs);
    for l in listeners {
        server = server
            .listen(l)
            .context("cannot serve on the bound listener")?;
    }
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
    while topology.cell.load().is_none() && waiting.elapsed() < Duration::from_secs(60) {
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

    let mut running = (*cfg).clone();
    let signal_name = loop {
        match next_signal(&mut sigterm, &mut sigint, &mut sighup).await {
            "SIGHUP" => running = reload(&running, port, &source, &topology),
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
    topology.stop_intake();
    // The journal makes an unfinished batch safe to abandon, so the bound is enforced even if
    // something hangs: nothing is lost by exiting. The reputation counts are saved first,
    // and the exit status says the drain did not finish, so systemd records it.
    let forced_reputation = topology.reputation.clone();
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
    while topology.lifecycle.busy.load(Ordering::SeqCst) > 0 && started.elapsed() < bound {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = topology.reputation.save() {
        tracing::warn!(error = %e, "cannot save the reputation state");
    }
    if topology.lifecycle.busy.load(Ordering::SeqCst) > 0 {
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
    topology.stop();
    actix::System::current().stop();
    Ok(())
}

/// Exit status when the drain outlasts `server.shutdown_timeout_secs`.
pub const FORCED_EXIT_CODE: i32 = 2;

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

/// A listening socket on every address `bind` resolves to (as actix-server's own `bind`
/// makes them: SO_REUSEADDR, a backlog of 1024); an error only when none can be bound.
fn listen(bind: &str, port: u16) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut listeners = Vec::new();
    let mut last_error = None;
    for addr in (bind, port).to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, None).and_then(|s| {
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(s)
        });
        match bound {
            Ok(s) => listeners.push(s.into()),
            Err(e) => last_error = Some(e),
        }
    }
    match (listeners.is_empty(), last_error) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "the name resolves to no address",
        )),
        (false, _) => Ok(listeners),
    }
}

/// One warning line per pair of settings that work against each other ([`Config::warnings`]).
fn warn_about(cfg: &Config) {
    for w in cfg.warnings() {
        tracing::warn!(key = %w.key, "config warning: {w}");
    }
}
