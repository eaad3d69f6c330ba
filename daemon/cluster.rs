//! Commands for a cluster (`[cluster]`): loading a CSV file into the shared input stream.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;

use sentimentd_actors::sources::jetstream::publish::publish_csv;
use sentimentd_config::Config;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// CSV file to publish (column `text`; `source` and `created_at` are carried along).
    #[arg(long, value_name = "FILE")]
    pub csv: PathBuf,
    /// NATS server (default: [cluster] nats_url).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Source of every row, instead of the file's `source` column.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
}

pub fn publish(cfg: &Config, a: PublishArgs) -> anyhow::Result<()> {
    let Some(url) = a.nats.clone().or_else(|| cfg.cluster.nats_url.clone()) else {
        anyhow::bail!("publish needs a NATS server: set [cluster] nats_url, or pass --nats URL");
    };
    // [cluster] is validated only with a nats_url; --nats uses it all the same (stream
    // names, subjects, the duplicate window), so it is checked before the server is touched.
    if cfg.cluster.nats_url.is_none() {
        let mut with_url = cfg.clone();
        with_url.cluster.nats_url = Some(url.clone());
        with_url
            .validate()
            .context("the configuration's [cluster] section, used with --nats")?;
    }
    let size = std::fs::metadata(&a.csv)
        .with_context(|| format!("{}", a.csv.display()))?
        .len();
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} published",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opts = sentimentd_data::ReadOptions {
        max_text_chars: cfg.data.max_text_chars,
        require_label: false,
    };
    let started = std::time::Instant::now();
    let report = actix_rt::System::new().block_on(publish_csv(
        &url,
        &cfg.cluster,
        &a.csv,
        opts,
        a.source.as_deref(),
        |done| bar.set_position(done),
    ));
    bar.finish_and_clear();
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} new rows of {} to {} (subject {}) in {secs:.1} s; ids {}:<line>",
        report.published,
        a.csv.display(),
        url,
        cfg.cluster.input_subject,
        report.fingerprint,
    );
    if report.duplicates > 0 {
        println!(
            "skipped   {} rows the stream already had (published before, within [cluster] duplicate_window_secs)",
            report.duplicates
        );
    }
    for r in report.rejected.iter().take(20) {
        eprintln!("{}:{}: {} ({})", a.csv.display(), r.line, r.reason, r.raw);
    }
    if !report.rejected.is_empty() {
        anyhow::bail!(
            "{} rows of {} were not published (first ones listed above)",
            report.rejected.len(),
            a.csv.display()
        );
    }
    Ok(())
}
