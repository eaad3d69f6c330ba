//! sentimentd: parse the command line, load the config, run one command.

mod cluster;
mod commands;
mod mlops;
mod progress;
mod serve;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sentimentd",
    version,
    about = "Sentiment classification daemon: train, evaluate, predict and serve",
    long_about = "Classifies short social-media texts as negative, neutral or positive. \
                  Every command works with no flags on the bundled data and a local model store; \
                  `--config` points at a TOML file to change that (see config/sentimentd.toml)."
)]
struct Cli {
    /// TOML configuration file; without it the built-in defaults apply.
    #[arg(long, short, global = true, env = "SENTIMENTD_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `sentimentd=debug` (overrides RUST_LOG, which overrides
    /// [logging] level).
    #[arg(long, global = true, env = "SENTIMENTD_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: HTTP API, watched inbox folder, metrics (see [server] and [ingest]).
    Serve(serve::ServeArgs),
    /// Train a new model version on labelled CSV data and make it current.
    Train(commands::TrainArgs),
    /// Evaluate a model version on a labelled CSV file.
    Eval(commands::EvalArgs),
    /// Classify texts given as arguments, on stdin (one per line), or in a CSV file.
    Predict(commands::PredictArgs),
    /// Inspect the model store.
    #[command(subcommand)]
    Model(commands::ModelCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(commands::ConfigCommand),
    /// Compute and store the drift baseline of a model version.
    Baseline(mlops::BaselineArgs),
    /// Check texts for drift against a version's baseline; exits 0 (no drift), 3 (drift) or 4
    /// (fewer texts than [drift] min_samples: no verdict).
    Drift(mlops::DriftArgs),
    /// List the recorded runs: trainings, drift checks, gate decisions, skipped retrains.
    Runs(mlops::RunsArgs),
    /// Load a CSV file into the cluster's input stream ([cluster]); loading it again within
    /// the duplicate window publishes nothing new.
    Publish(cluster::PublishArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": " as `{:#}` joins them, except a cause whose text
/// the message already ends with: the libraries' messages name the file and say the cause
/// themselves (they go into reports on their own), so `{:#}` would say it twice.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out == text || out.ends_with(&format!(": {text}")) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    // `config check` reports a broken file itself instead of failing before it runs.
    if let Command::Config(c) = &cli.command {
        commands::config(c, cli.config.as_deref())?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let mut cfg = sentimentd_config::Config::load_or_default(cli.config.as_deref())?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    cfg.resolve_paths(&cwd);
    cfg.validate()?;
    // --log / SENTIMENTD_LOG, then RUST_LOG (what Rust programs are usually told), then the
    // file; an empty RUST_LOG counts as unset, as most programs read it.
    // Read only when --log does not win over it: a flag must work whatever RUST_LOG holds.
    let rust_log = match std::env::var("RUST_LOG") {
        _ if cli.log.is_some() => None,
        Ok(f) if !f.trim().is_empty() => Some(f),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("RUST_LOG is not valid UTF-8; unset it or give the filter with --log")
        }
    };
    let (filter, origin) = match (&cli.log, &rust_log) {
        (Some(f), _) => (f.as_str(), "--log / SENTIMENTD_LOG"),
        (None, Some(f)) => (f.as_str(), "RUST_LOG"),
        (None, None) => (cfg.logging.level.as_str(), "logging.level"),
    };
    let from_file = cli.log.is_none() && rust_log.is_none();
    let log_reload = init_logging(filter, origin, &cfg)?;
    match cli.command {
        Command::Serve(a) => serve::serve(
            &cfg,
            a,
            serve::ReloadSource {
                path: cli.config.clone(),
                cwd,
                // --log / SENTIMENTD_LOG and RUST_LOG win over the file, on reload too.
                log: if from_file { Some(log_reload) } else { None },
            },
        ),
        Command::Train(a) => commands::train(&cfg, a),
        Command::Eval(a) => commands::eval(&cfg, a),
        Command::Predict(a) => commands::predict(&cfg, a),
        Command::Model(m) => commands::model(&cfg, m),
        Command::Baseline(a) => mlops::baseline(&cfg, a),
        Command::Drift(a) => return mlops::drift(&cfg, a),
        Command::Runs(a) => mlops::runs(&cfg, a),
        Command::Publish(a) => cluster::publish(&cfg, a),
        Command::Config(_) => Ok(()),
    }?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Installs the log subscriber; returns how to change its filter later (a config reload).
/// `origin` names where the filter came from, for the error.
fn init_logging(
    filter: &str,
    origin: &str,
    cfg: &sentimentd_config::Config,
) -> anyhow::Result<serve::LogReload> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter)
        .with_context(|| format!("bad log filter {filter:?} (from {origin})"))?;
    use std::io::IsTerminal;
    // No colour codes in the journal or in redirected logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    fn reloader<S: 'static>(
        handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
    ) -> serve::LogReload {
        Box::new(move |filter: &str| {
            let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    Ok(match cfg.logging.format {
        sentimentd_config::LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            reloader(handle)
        }
        sentimentd_config::LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            reloader(handle)
        }
    })
}
