//! CLI commands of the MLOps loop: drift baselines, one-shot drift checks, manual promotion
//! and rollback, and the run log.

use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

use sentimentd_config::Config;
use sentimentd_data::drift::{DriftReport, Verdict};
use sentimentd_model::{ModelStore, baseline};

/// Exit code of `sentimentd drift` when drift fired.
pub const EXIT_DRIFT: u8 = 3;
/// `sentimentd drift`'s exit code when too few texts allow no verdict: a job that reads the
/// code must not take an empty or short sample for a healthy one.
pub const EXIT_NO_VERDICT: u8 = 4;

#[derive(Args, Debug)]
pub struct BaselineArgs {
    /// Reference CSV (column `text`); repeat for several (default: [drift] reference, or the
    /// reporting split [data] val).
    #[arg(long = "data", value_name = "CSV")]
    pub data: Vec<PathBuf>,
    /// Model version (default: current).
    #[arg(long, value_name = "VERSION")]
    pub model: Option<String>,
}

#[derive(Args, Debug)]
pub struct DriftArgs {
    /// Recent texts to check (CSV with a `text` column).
    #[arg(long = "data", value_name = "CSV", required = true)]
    pub data: Vec<PathBuf>,
    /// Model version whose baseline the texts are checked against (default: current).
    #[arg(long, value_name = "VERSION")]
    pub model: Option<String>,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

fn store_and_version(cfg: &Config, version: Option<&str>) -> anyhow::Result<(ModelStore, String)> {
    let store = ModelStore::for_config(cfg, None)?;
    let version = match version {
        Some(v) => v.to_string(),
        None => store.current_version()?.with_context(|| {
            format!(
                "the model store at {} has no current model (run `sentimentd train`)",
                store.root().display()
            )
        })?,
    };
    Ok((store, version))
}

pub fn baseline(cfg: &Config, a: BaselineArgs) -> anyhow::Result<()> {
    let (store, version) = store_and_version(cfg, a.model.as_deref())?;
    let model = store.load(&version)?;
    let reference = if a.data.is_empty() {
        baseline::reference_paths(cfg)
    } else {
        a.data
    };
    let b = baseline::compute_and_attach(cfg, &store, model.as_ref(), &reference, &[], None)?;
    println!("baseline of {version} from {} texts", b.count);
    for r in &b.reference {
        println!("  reference  {r}");
    }
    let shares = b.label_counts.map(|c| c as f64 / b.count.max(1) as f64);
    println!(
        "  predicted  negative {:.3}  neutral {:.3}  positive {:.3}",
        shares[0], shares[1], shares[2]
    );
    println!(
        "  stored in  {}",
        store
            .version_dir(&version)
            .join(sentimentd_model::promotion::BASELINE)
            .display()
    );
    Ok(())
}

pub fn drift(cfg: &Config, a: DriftArgs) -> anyhow::Result<ExitCode> {
    let (store, version) = store_and_version(cfg, a.model.as_deref())?;
    let model = store.load(&version)?;
    let b = match baseline::load(&store, &version)? {
        Some(b) => b,
        None => {
            eprintln!(
                "note: version {version} has no stored baseline; computing one from the reference \
                 data (store it with `sentimentd baseline`)"
            );
            baseline::compute(
                cfg,
                model.as_ref(),
                &baseline::reference_paths(cfg),
                &[],
                None,
            )?
        }
    };
    let texts = baseline::read_texts(&a.data, cfg.data.max_text_chars)?;
    let report = baseline::check_texts(cfg, model.as_ref(), &b, &texts);
    let mut rec = sentimentd_tracking::records::drift_record(&report, "drift (cli)");
    rec.params.insert(
        "data".into(),
        a.data
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    record_run(cfg, rec.finish());
    if let Some(path) = &a.html {
        std::fs::write(
            path,
            sentimentd_tracking::report::drift_report_html(&report),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, model.version());
    }
    Ok(match report.verdict {
        Verdict::Drift => ExitCode::from(EXIT_DRIFT),
        Verdict::NoDrift => ExitCode::SUCCESS,
        Verdict::Insufficient => {
            eprintln!(
                "warning: {} texts are fewer than [drift] min_samples = {}: no verdict \
                 (exit code {EXIT_NO_VERDICT})",
                report.samples, report.min_samples
            );
            ExitCode::from(EXIT_NO_VERDICT)
        }
    })
}

fn print_report(r: &DriftReport, version: &str) {
    let verdict = match r.verdict {
        Verdict::Drift => "DRIFT",
        Verdict::NoDrift => "no drift",
        Verdict::Insufficient => "no verdict (too few texts)",
    };
    println!(
        "model {version}: {verdict} over {} texts (drift score {:.3}; 1.0 = at threshold)",
        r.samples, r.drift_score
    );
    println!(
        "{:<12} {:<10} {:>12} {:>12} {:>8}  fired",
        "test", "family", "value", "threshold", "score"
    );
    for t in &r.tests {
        match &t.skipped {
            Some(why) => println!("{:<12} {:<10} skipped: {why}", t.test, t.family),
            None => println!(
                "{:<12} {:<10} {:>12.5} {:>12.5} {:>8.3}  {}",
                t.test,
                t.family,
                t.p_value.unwrap_or(t.value),
                t.threshold,
                t.score,
                if t.fired { "YES" } else { "" }
            ),
        }
    }
}

pub fn promote(cfg: &Config, version: &str, force: bool) -> anyhow::Result<()> {
    let store = ModelStore::for_config(cfg, None)?;
    if let Some(why) = store.rejected_by_gate(version).filter(|_| !force) {
        anyhow::bail!("{version} was rejected by the gate ({why}); add --force to serve it anyway");
    }
    let from = store.current_version()?;
    store.promote(version, "promote", "sentimentd model promote")?;
    println!(
        "current: {} -> {version} (a running daemon on this store swaps it in within seconds)",
        from.as_deref().unwrap_or("none")
    );
    Ok(())
}

pub fn rollback(cfg: &Config) -> anyhow::Result<()> {
    let store = ModelStore::for_config(cfg, None)?;
    let Some(target) = store.rollback_target()? else {
        bail!(
            "no earlier version to roll back to in {} (see `sentimentd model list`)",
            store.root().display()
        );
    };
    let from = store.current_version()?;
    store.promote(&target, "rollback", "sentimentd model rollback")?;
    println!(
        "rolled back: {} -> {target} (a running daemon on this store swaps it in within seconds)",
        from.as_deref().unwrap_or("none")
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// Only runs of this kind (a misspelt one is refused, not answered with "no runs").
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        sentimentd_tracking::RunKind::ALL.map(sentimentd_tracking::RunKind::as_str)))]
    pub kind: Option<String>,
    /// Show at most this many of the newest runs.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `sentimentd runs`: the local run log, newest last.
pub fn runs(cfg: &Config, a: RunsArgs) -> anyhow::Result<()> {
    let log = sentimentd_tracking::LocalRunLog::open(cfg.paths.runs())?;
    let mut runs = log.list()?;
    if let Some(kind) = &a.kind {
        runs.retain(|r| r.kind.as_str() == kind);
    }
    let skip = runs.len().saturating_sub(a.limit);
    let runs = &runs[skip..];
    if a.json {
        for r in runs {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if runs.is_empty() {
        let kind = a.kind.map(|k| format!("{k} ")).unwrap_or_default();
        println!("no {kind}runs recorded in {}", log.dir().display());
        return Ok(());
    }
    println!(
        "{:<24} {:<16} {:<9} {:<34} summary",
        "started", "kind", "status", "run id"
    );
    for r in runs {
        let mut summary: Vec<String> = Vec::new();
        for key in ["model_version", "decision", "verdict", "trigger", "reason"] {
            if let Some(v) = r.tags.get(key).or_else(|| r.params.get(key))
                && !v.is_empty()
            {
                summary.push(format!("{key}={v}"));
            }
        }
        if let Some(w) = r.params.get("recent_row_weight") {
            summary.push(format!("recent_row_weight={w}"));
        }
        for key in [
            "val_macro_recall",
            "candidate_val_macro_recall",
            "serving_val_macro_recall",
            "candidate_holdout_macro_recall",
            "serving_holdout_macro_recall",
            "recent_weight_share",
            "drift_score",
        ] {
            if let Some(v) = r.metrics.get(key) {
                summary.push(format!("{key}={v:.4}"));
            }
        }
        if let Some(e) = &r.error {
            summary.push(format!("error={e}"));
        }
        println!(
            "{:<24} {:<16} {:<9} {:<34} {}",
            r.started_at.chars().take(23).collect::<String>(),
            r.kind.as_str(),
            format!("{:?}", r.status).to_lowercase(),
            r.run_id,
            summary.join(" ")
        );
    }
    Ok(())
}

/// Records a finished training run (CLI `train`).
pub fn record_training(
    cfg: &Config,
    manifest: &sentimentd_model::Manifest,
    store_dir: &std::path::Path,
) {
    record_run(
        cfg,
        sentimentd_tracking::records::training_record(manifest, "cli", store_dir),
    );
}

/// Records a CLI run like the daemon's: in the local run log, then (with `[tracking]
/// mlflow_uri`) one attempt to send it to MLflow; if the server is down the record waits in
/// the shared pending file, which the daemon retries. Recording never fails the command.
pub fn record_run(cfg: &Config, rec: sentimentd_tracking::RunRecord) {
    use sentimentd_tracking::{LocalRunLog, MlflowClient, MlflowOp, MlflowSink};
    let dir = cfg.paths.runs();
    let stored = match LocalRunLog::open(&dir).and_then(|log| log.store(&rec)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: the run was not recorded in the run log: {e}");
            return;
        }
    };
    if let Some(uri) = &cfg.tracking.mlflow_uri {
        let sent = MlflowSink::open(
            MlflowClient::new(uri),
            &cfg.tracking.experiment,
            &cfg.tracking.registered_model,
            &dir,
        )
        .map(|sink| sink.with_max_attempts(cfg.tracking.record_max_attempts))
        .and_then(|mut sink| {
            sink.submit(MlflowOp::Run { record: stored })?;
            Ok(sink.take_dropped())
        });
        match sent {
            Err(e) => eprintln!("warning: the run was not sent to MLflow at {uri}: {e}"),
            Ok(dropped) => {
                for d in dropped {
                    eprintln!(
                        "warning: MLflow at {uri} did not take {} ({}); it is in {}",
                        d.op,
                        d.error,
                        dir.join(sentimentd_tracking::DEAD_LETTER_FILE).display()
                    );
                }
            }
        }
    }
}
