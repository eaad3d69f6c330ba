//! DriftMonitor: drains the observations that serving recorded, keeps the most recent
//! `[drift] window` of them, and checks them against the serving version's baseline on a
//! timer and after every `check_every_samples` new observations. Each report is written as
//! JSON and as a self-contained HTML page under `<state_dir>/drift/`, published for
//! `GET /drift`, counted in the metrics, and, when drift fired, sent to the Trainer.
//!
//! It runs on an arbiter of its own: a check over a full window takes up to a few hundred
//! milliseconds, which must not delay the registry or the folder watcher.

use actix::{Actor, AsyncContext, Context, Handler, Recipient};
use arc_swap::ArcSwapOption;
use sentimentd_config::Config;
use sentimentd_data::drift::{self, Baseline, DriftReport, Verdict};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::messages::{BaselineReady, DriftDetected};
use crate::runtime::containment::Containment;
use crate::serving::observations::{ObservationSink, Observed};
use crate::telemetry::events::{DriftCheckFailed, DriftChecked, InternalEvent};
use crate::telemetry::metrics::Metrics;
use sentimentd_tracking::records::drift_record;

/// The latest drift report, `None` until the first check.
pub type ReportCell = Arc<ArcSwapOption<DriftReport>>;

pub fn new_report_cell() -> ReportCell {
    Arc::new(ArcSwapOption::empty())
}

/// How often the queue is drained; checks happen on the configured schedule.
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// Nice value of the monitor's thread.
const DRIFT_NICE: i32 = 10;

/// What the monitor is built from; the rest of its state starts empty.
pub struct DriftLinks {
    pub cfg: Arc<Config>,
    pub sink: Arc<ObservationSink>,
    pub metrics: Arc<Metrics>,
    pub reports: ReportCell,
    pub trainer: Option<Recipient<DriftDetected>>,
    pub tracker: Option<Recipient<crate::messages::Track>>,
}

pub struct DriftMonitor {
    links: DriftLinks,
    containment: Containment,
    window: VecDeque<Observed>,
    baseline: Option<(String, Arc<Baseline>)>,
    since_check: u64,
    last_check: Instant,
    dropped_seen: u64,
    checks: u64,
}

impl DriftMonitor {
    pub fn new(links: DriftLinks) -> DriftMonitor {
        DriftMonitor {
            containment: Containment::new("drift_monitor", links.metrics.clone()),
            links,
            window: VecDeque::new(),
            baseline: None,
            since_check: 0,
            last_check: Instant::now(),
            dropped_seen: 0,
            checks: 0,
        }
    }

    pub fn reports_dir(cfg: &Config) -> PathBuf {
        cfg.paths.drift_reports()
    }

    fn drain(&mut self) {
        let mut fresh = Vec::new();
        self.links.sink.drain_into(&mut fresh);
        let dropped = self.links.sink.dropped();
        if dropped > self.dropped_seen {
            self.links
                .metrics
                .mlops
                .observations_dropped(dropped - self.dropped_seen);
            self.dropped_seen = dropped;
        }
        let version = self.baseline.as_ref().map(|(v, _)| v.as_str());
        for o in fresh {
            // Every observation is kept: one of a model whose baseline is still being built
            // (just swapped in) counts once that baseline arrives, which then drops the rest.
            if version.is_none_or(|v| v == &*o.model_version) {
                self.since_check += 1;
            }
            self.window.push_back(o);
        }
        while self.window.len() > self.links.cfg.drift.window {
            self.window.pop_front();
        }
    }

    fn due(&self) -> bool {
        let d = &self.links.cfg.drift;
        let elapsed = self.last_check.elapsed();
        (self.since_check >= d.check_every_samples
            && elapsed >= Duration::from_secs(d.min_check_interval_secs))
            || elapsed >= Duration::from_secs(d.check_every_secs)
    }

    fn check(&mut self) {
        self.since_check = 0;
        self.last_check = Instant::now();
        let Some((version, baseline)) = self.baseline.clone() else {
            DriftCheckFailed {
                reason: "no baseline for the serving model yet",
            }
            .emit(&self.links.metrics);
            return;
        };
        let obs: Vec<_> = self
            .window
            .iter()
            .filter(|o| *o.model_version == *version)
            .map(|o| o.observation.clone())
            .collect();
        self.checks += 1;
        let report = drift::check(
            &baseline,
            &obs,
            &self.links.cfg.drift,
            &version,
            &chrono::Utc::now().to_rfc3339(),
            self.links.cfg.train.seed ^ self.checks,
        );
        let file = match self.write_report(&report) {
            Ok(p) => p.display().to_string(),
            Err(e) => {
                tracing::error!(error = %e, "cannot write the drift report");
                String::new()
            }
        };
        DriftChecked {
            report: &report,
            report_file: &file,
        }
        .emit(&self.links.metrics);
        let report = Arc::new(report);
        if report.verdict != Verdict::Insufficient {
            self.track(&report, &file);
        }
        self.links.reports.store(Some(report.clone()));
        if report.verdict == Verdict::Drift
            && let Some(t) = &self.links.trainer
        {
            t.do_send(DriftDetected { report });
        }
    }

    fn track(&self, report: &DriftReport, file: &str) {
        let Some(tracker) = &self.links.tracker else {
            return;
        };
        let mut rec = drift_record(report, "drift check");
        if !file.is_empty() {
            rec.artifacts.push(PathBuf::from(file));
            rec.artifacts
                .push(PathBuf::from(file).with_extension("html"));
        }
        tracker.do_send(crate::messages::Track(rec.finish()));
    }

    /// `<stamp>.json` and `<stamp>.html`, plus `latest.json` / `latest.html`; old ones pruned.
    fn write_report(&self, report: &DriftReport) -> std::io::Result<PathBuf> {
        let dir = Self::reports_dir(&self.links.cfg);
        std::fs::create_dir_all(&dir)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
        let html = sentimentd_tracking::report::drift_report_html(report);
        let path = dir.join(format!("drift-{stamp}.json"));
        sentimentd_data::atomic::write_bytes_atomic(&path, &json)?;
        sentimentd_data::atomic::write_bytes_atomic(&path.with_extension("html"), html.as_bytes())?;
        sentimentd_data::atomic::write_bytes_atomic(&dir.join("latest.json"), &json)?;
        sentimentd_data::atomic::write_bytes_atomic(&dir.join("latest.html"), html.as_bytes())?;
        prune(&dir, self.links.cfg.drift.reports_kept);
        Ok(path)
    }
}

fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("drift-") && n.ends_with(".json"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        let p = dir.join(n);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(p.with_extension("html"));
    }
}

impl Actor for DriftMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Checks are background work: serving threads win the CPU when both want it.
        crate::runtime::background::lower_priority(DRIFT_NICE);
        ctx.run_interval(DRAIN_EVERY, |me, _ctx| {
            let containment = me.containment.clone();
            let _ = containment.run(|| {
                me.drain();
                if me.due() {
                    me.check();
                }
            });
        });
    }
}

impl Handler<crate::messages::Reconfigure> for DriftMonitor {
    type Result = ();

    fn handle(&mut self, msg: crate::messages::Reconfigure, _ctx: &mut Context<Self>) {
        self.links.cfg = msg.0;
    }
}

impl Handler<BaselineReady> for DriftMonitor {
    type Result = ();

    fn handle(&mut self, msg: BaselineReady, _ctx: &mut Context<Self>) {
        let version = msg.model_version;
        // Observations of another version were embedded in another space.
        self.window.retain(|o| *o.model_version == *version);
        self.since_check = self.window.len() as u64;
        self.last_check = Instant::now();
        self.baseline = msg.baseline.map(|b| (version, b));
    }
}
