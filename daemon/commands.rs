//! The CLI commands over the ML core.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sentimentd_config::{Config, TrainableKind};
use sentimentd_model::pipeline::{self, TrainJob};
use sentimentd_model::{
    Classifier, EvalMetrics, LexiconClassifier, ModelParams, ModelStore, Prediction,
};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Labelled training CSV (columns `text`, `label`); repeat for several files.
    #[arg(long = "data", value_name = "CSV")]
    pub data: Vec<PathBuf>,
    /// Labelled CSV of the reporting split (default: [data] val): scored once after training,
    /// never used to select. Early stopping and calibration use a split carved from the
    /// training data ([train] selection_share).
    #[arg(long, value_name = "CSV")]
    pub val: Option<PathBuf>,
    /// Model store to write the new version into (default: [paths] model_store).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Store the version without making it current.
    #[arg(long)]
    pub no_promote: bool,
    /// Model kind to train (default: [model] kind): `fast`, or `transformer` (a pretrained
    /// encoder from [transformer] pretrained_dir with a trained head).
    #[arg(long, value_name = "KIND", value_parser = ["fast", "transformer"])]
    pub kind: Option<String>,
    /// Distil a fast model from this stored version (a transformer, say): trained on its
    /// probabilities for the training texts mixed with the labels, the mix chosen on the
    /// selection split. The fast model keeps its speed.
    #[arg(long, value_name = "VERSION")]
    pub teacher: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Labelled CSV to evaluate on (default: the configured validation file).
    #[arg(long, value_name = "CSV")]
    pub data: Option<PathBuf>,
    /// Model version (default: current).
    #[arg(long, value_name = "VERSION")]
    pub model: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write metrics.json and confusion_matrix.png into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Texts to classify; with none, one text per line is read from stdin.
    pub texts: Vec<String>,
    /// Score a CSV file (column `text`) instead.
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    pub csv: Option<PathBuf>,
    /// Output CSV for `--csv` (default: FILE with `.scored.csv`).
    #[arg(long, short, value_name = "FILE", requires = "csv")]
    pub output: Option<PathBuf>,
    /// Model version (default: current).
    #[arg(long, value_name = "VERSION")]
    pub model: Option<String>,
    /// Print one JSON object per text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// List the versions in the store with their validation (reporting split) metrics.
    List,
    /// Show one version's manifest.
    Show {
        /// Version name as printed by `model list`.
        version: String,
    },
    /// Make a stored version current (a daemon on this store swaps it in within seconds).
    Promote {
        /// Version name as printed by `model list`.
        version: String,
        /// Serve it even if the gate rejected it.
        #[arg(long)]
        force: bool,
    },
    /// Put back the version that was current before the current one.
    Rollback,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file and print the effective configuration.
    Check {
        /// File to check (default: the one given by --config).
        file: Option<PathBuf>,
    },
}

pub fn train(cfg: &Config, a: TrainArgs) -> anyhow::Result<()> {
    let job = TrainJob {
        train: a.data,
        val: a.val,
        store: a.out,
        promote: !a.no_promote,
        kind: match a.kind.as_deref() {
            Some("transformer") => Some(TrainableKind::Transformer),
            Some(_) => Some(TrainableKind::Fast),
            None => None,
        },
        teacher: a.teacher,
        ..TrainJob::default()
    };
    let started = Instant::now();
    let mut bar = crate::progress::BarObserver::new();
    let result = pipeline::train_and_store(cfg, &job, &mut bar);
    bar.finish();
    let trained = result.context("training failed")?;
    let m = &trained.manifest;
    crate::mlops::record_training(
        cfg,
        m,
        &trained.store_root.join("versions").join(&m.version),
    );
    println!("version      {}", m.version);
    println!("kind         {}", m.kind.as_str());
    println!("store        {}", trained.store_root.display());
    println!(
        "current      {}",
        if job.promote {
            "yes"
        } else {
            "no (--no-promote)"
        }
    );
    println!("train rows   {}", m.training_rows);
    if let Some(sel) = m.splits.get("selection") {
        println!("selection    {} rows ({})", sel.rows, sel.source);
    }
    if let ModelParams::Transformer(t) = &m.params {
        println!(
            "encoder      {} ({}, max {} tokens)",
            t.encoder,
            &t.encoder_fingerprint[..t.encoder_fingerprint.len().min(12)],
            t.max_seq_len
        );
        println!(
            "head         epoch {} (early stopping on selection macro-recall)",
            t.head_best_epoch
        );
        if let Some(r) = &t.recipe {
            let mut line = format!("recipe       {}, {}", r.name, r.choice);
            if let Some(b) = r.budget_secs {
                line.push_str(&format!(
                    " within a {} min budget",
                    (b / 60.0 * 100.0).round() / 100.0
                ));
            }
            if let Some(e) = r.estimated_secs {
                line.push_str(&format!(
                    " (estimated {:.1} min after {:.1} min of embedding and head)",
                    e / 60.0,
                    r.planned_after_secs / 60.0
                ));
            }
            println!("{line}");
            if let Some(why) = &r.stopped_early {
                println!("             {why}");
            }
        }
        if let Some(f) = &t.finetune {
            let recall = f
                .history
                .iter()
                .find(|e| e.epoch == f.best_epoch)
                .map_or(f64::NAN, |e| e.selection_macro_recall);
            println!(
                "fine-tuned   top {} layers, epoch {} of {} (selection macro-recall {recall:.4})",
                f.params.layers,
                f.best_epoch,
                f.history.len()
            );
        }
        if let Some(e) = &t.ensemble {
            println!(
                "ensemble     transformer {:.2} + fast model {:.2} (fast model epoch {} of {}), \
                 weight fitted on the selection split",
                e.weight,
                1.0 - e.weight,
                e.fast_best_epoch,
                m.history.len()
            );
        }
    } else {
        println!(
            "best epoch   {} of {} (early stopping on selection macro-recall)",
            m.best_epoch,
            m.history.len()
        );
        if let ModelParams::Fast(p) = &m.params
            && let Some(d) = &p.distill
        {
            let tried: Vec<String> = d
                .trials
                .iter()
                .map(|t| {
                    format!(
                        "{} at {}: {:.4}",
                        t.mix, t.temperature, t.selection_macro_recall
                    )
                })
                .collect();
            println!(
                "distilled    from {}, teacher weight {} at temperature {} in the targets, \
                 chosen on the selection split ({})",
                d.teacher,
                d.mix,
                d.temperature,
                tried.join(", ")
            );
        }
    }
    println!("wall time    {:.1}s", started.elapsed().as_secs_f64());
    if let Some(s) = m.metrics.get("selection") {
        println!(
            "\nselection (picked the epoch and the temperature, so optimistic)\n\
             rows {}  accuracy {:.4}  macro-recall {:.4}  macro-F1 {:.4}",
            s.count, s.accuracy, s.macro_recall, s.macro_f1
        );
    }
    if let Some(v) = m.metrics.get("validation") {
        let source = m
            .splits
            .get("validation")
            .map_or(String::new(), |s| format!(": {}", s.source));
        println!(
            "\nvalidation (reporting split, never used to select){source}\n{}",
            v.table()
        );
    }
    Ok(())
}

/// The requested version, the current one, or the lexicon fallback when the store is empty.
fn load_model(cfg: &Config, version: Option<&str>) -> anyhow::Result<Arc<dyn Classifier>> {
    let store = ModelStore::for_config(cfg, None)?;
    match version {
        Some(v) => Ok(store.load(v)?),
        None => match store.load_current()? {
            Some(m) => Ok(m),
            None => {
                eprintln!(
                    "warning: no trained model in {}; answering with the lexicon fallback \
                     (run `sentimentd train`)",
                    store.root().display()
                );
                Ok(Arc::new(LexiconClassifier::fallback(
                    cfg.data.lexicon.as_deref(),
                )?))
            }
        },
    }
}

pub fn eval(cfg: &Config, a: EvalArgs) -> anyhow::Result<()> {
    let path = a.data.unwrap_or_else(|| cfg.data.val.clone());
    let model = load_model(cfg, a.model.as_deref())?;
    let data = sentimentd_data::load_dataset(std::slice::from_ref(&path), cfg.data.max_text_chars)?;
    let metrics = pipeline::evaluate(model.as_ref(), &data);
    if let Some(dir) = &a.out {
        write_eval_outputs(dir, &metrics, model.version())?;
    }
    let mut rec =
        sentimentd_tracking::RunRecord::new(sentimentd_tracking::RunKind::Evaluation, "eval");
    rec.tags
        .insert("model_version".into(), model.version().to_string());
    rec.params.insert("data".into(), path.display().to_string());
    rec.params
        .insert("data_fingerprint".into(), data.fingerprint.clone());
    rec.metrics
        .insert("macro_recall".into(), metrics.macro_recall);
    rec.metrics.insert("accuracy".into(), metrics.accuracy);
    rec.metrics.insert("macro_f1".into(), metrics.macro_f1);
    if let Some(dir) = &a.out {
        rec.artifacts.push(dir.join("metrics.json"));
        rec.artifacts.push(dir.join("confusion_matrix.png"));
    }
    crate::mlops::record_run(cfg, rec.finish());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        println!("model {} on {}", model.version(), path.display());
        print!("{}", metrics.table());
    }
    Ok(())
}

fn write_eval_outputs(dir: &Path, m: &EvalMetrics, version: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("metrics.json");
    std::fs::write(&json, serde_json::to_vec_pretty(m)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    sentimentd_model::plot::confusion_png(&dir.join("confusion_matrix.png"), m, version)?;
    Ok(())
}

fn prediction_json(text: &str, p: &Prediction, version: &str) -> serde_json::Value {
    serde_json::json!({
        "text": text,
        "label": p.label.as_str(),
        "score": p.score,
        "probabilities": {
            "negative": p.probabilities[0],
            "neutral": p.probabilities[1],
            "positive": p.probabilities[2],
        },
        "model_version": version,
    })
}

pub fn predict(cfg: &Config, a: PredictArgs) -> anyhow::Result<()> {
    let model = load_model(cfg, a.model.as_deref())?;
    if let Some(csv) = &a.csv {
        return predict_csv(cfg, model.as_ref(), csv, a.output.as_deref());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut emit = |text: &str| -> anyhow::Result<()> {
        let p = model.predict(text);
        if a.json {
            writeln!(out, "{}", prediction_json(text, &p, model.version()))?;
        } else {
            writeln!(
                out,
                "{:<8}  {:.3}  neg {:.3}  neu {:.3}  pos {:.3}  {}",
                p.label.as_str(),
                p.score,
                p.probabilities[0],
                p.probabilities[1],
                p.probabilities[2],
                text
            )?;
        }
        Ok(())
    };
    if a.texts.is_empty() {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("stdin is not valid UTF-8 text")?;
            emit(&line)?;
        }
    } else {
        for t in &a.texts {
            emit(t)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn predict_csv(
    cfg: &Config,
    model: &dyn Classifier,
    input: &Path,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let opts = sentimentd_data::ReadOptions {
        max_text_chars: cfg.data.max_text_chars,
        require_label: false,
    };
    let batch = sentimentd_data::read_batch(input, &opts)?;
    let output = output.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "batch".into());
        input.with_file_name(format!("{stem}.scored.csv"))
    });
    let texts: Vec<&str> = batch.rows.iter().map(|r| r.text()).collect();
    let preds = model.predict_batch(&texts);
    sentimentd_data::write_atomic(&output, |w| {
        let mut out = sentimentd_data::ScoredWriter::new(w, &batch.headers)?;
        for (row, p) in batch.rows.iter().zip(&preds) {
            let scores = sentimentd_data::Scores {
                label: p.label,
                score: p.score,
                probabilities: p.probabilities,
            };
            out.write_row(&row.fields, &scores, model.version())?;
        }
        out.finish().map(|_| ())
    })?;
    println!("scored   {} rows -> {}", batch.rows.len(), output.display());
    if !batch.rejected.is_empty() {
        let report = output.with_file_name(format!(
            "{}.errors.csv",
            output
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        ));
        sentimentd_data::write_rejections(&report, &batch.rejected)?;
        println!(
            "rejected {} rows -> {}",
            batch.rejected.len(),
            report.display()
        );
    }
    Ok(())
}

pub fn model(cfg: &Config, cmd: ModelCommand) -> anyhow::Result<()> {
    let store = ModelStore::for_config(cfg, None)?;
    match cmd {
        ModelCommand::List => {
            let current = store.current_version()?;
            let versions = store.list()?;
            if versions.is_empty() {
                println!(
                    "no model versions in {} (run `sentimentd train`)",
                    store.root().display()
                );
                return Ok(());
            }
            // Validation is the reporting split; the selection split's score is beside it
            // because the gap between the two shows how much selecting flattered it.
            println!(
                "{:<2} {:<28} {:<12} {:<26} {:>10} {:>10} {:>10} {:>9}  gate",
                "", "version", "kind", "created", "macro-rec", "accuracy", "sel-rec", "rows"
            );
            for m in versions {
                let v = m.metrics.get("validation");
                let sel = m.metrics.get("selection");
                // Candidates of the retraining loop carry the gate's decision; others have none.
                let gate = store
                    .decision(&m.version)
                    .map_or(String::new(), |d| d.status);
                println!(
                    "{:<2} {:<28} {:<12} {:<26} {:>10} {:>10} {:>10} {:>9}  {gate}",
                    if current.as_deref() == Some(m.version.as_str()) {
                        "*"
                    } else {
                        ""
                    },
                    m.version,
                    m.kind.as_str(),
                    m.created_at.chars().take(25).collect::<String>(),
                    v.map_or("-".into(), |x| format!("{:.4}", x.macro_recall)),
                    v.map_or("-".into(), |x| format!("{:.4}", x.accuracy)),
                    sel.map_or("-".into(), |x| format!("{:.4}", x.macro_recall)),
                    m.training_rows
                );
            }
            Ok(())
        }
        ModelCommand::Promote { version, force } => crate::mlops::promote(cfg, &version, force),
        ModelCommand::Rollback => crate::mlops::rollback(cfg),
        ModelCommand::Show { version } => {
            let m = store.manifest(&version)?;
            let current = store.current_version()?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            if current.as_deref() == Some(version.as_str()) {
                eprintln!("(current)");
            }
            Ok(())
        }
    }
}

pub fn config(cmd: &ConfigCommand, global: Option<&Path>) -> anyhow::Result<()> {
    let ConfigCommand::Check { file } = cmd;
    let path = file.as_deref().or(global);
    let mut cfg = Config::load_or_default(path)?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    cfg.resolve_paths(&cwd);
    cfg.validate()?;
    match path {
        Some(p) => eprintln!("{}: ok", p.display()),
        None => eprintln!("no file given: built-in defaults"),
    }
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    print!("{}", cfg.to_toml_string());
    let encoder = cfg.transformer.encoder_dir();
    if cfg.model.kind == TrainableKind::Transformer && !encoder.join("config.json").is_file() {
        bail!(
            "model.kind = \"transformer\" needs the encoder in {}, which has no config.json; \
             fetch it with scripts/fetch-pretrained.sh {}",
            encoder.display(),
            cfg.transformer.pretrained_dir.display()
        );
    }
    Ok(())
}
