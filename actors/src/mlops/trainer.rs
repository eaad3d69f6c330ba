//! Trainer: retrains a candidate when drift fires (and the cooldown allows) or when the admin
//! API asks, evaluates it against the serving model on the same gate sets, and asks the
//! registry to promote it only when the `[gate]` rules pass.
//!
//! A run happens on a background thread with `[retrain] threads` threads at `[retrain] nice`,
//! so serving keeps a core and wins the CPU when both want it. Whatever happens in the run
//! (error, panic, rejection), serving goes on with the current model, the decision is
//! recorded, and no partial version is left (the store assembles versions under a temporary
//! name).

use actix::{Actor, Addr, AsyncContext, Context, Handler};
use sentimentd_config::Config;
use sentimentd_data::labelled::{self, LabelledStore};
use sentimentd_data::{Dataset, Label, load_dataset};
use sentimentd_model::pipeline::{self, RecentWeighting, TrainJob};
use sentimentd_model::promotion::Decision;
use sentimentd_model::{Classifier, EvalMetrics, ModelStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::lease::Lease;
use crate::messages::{DriftDetected, PromoteCandidate, Retrain, RetrainFinished, RetrainTrigger};
use crate::messages::{RegisterChampion, Track};
use crate::mlops::registry::ModelRegistry;
use crate::mlops::train_log::LogObserver;
use crate::runtime::containment::Containment;
use crate::serving::model_cell::ModelCell;
use crate::telemetry::events::{
    CandidatePromoted, CandidateRejected, InternalEvent, RetrainFailed, RetrainSkipped,
};
use crate::telemetry::metrics::Metrics;
use sentimentd_model::gate::{MIN_POLAR_ROWS, gate, pick_holdout, polar_agreement};
use sentimentd_tracking::records::training_record;
use sentimentd_tracking::{RunKind, RunRecord};

/// What the trainer remembers across restarts: when it last ran and which labelled files
/// that run saw, so "new labelled rows" means rows that arrived since.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RetrainState {
    last_attempt_unix: Option<u64>,
    seen_files: Vec<String>,
}

pub struct Trainer {
    cfg: Arc<Config>,
    links: Links,
    containment: Containment,
    running: bool,
}

/// What the trainer hands each run besides the config (which a reload may change between
/// runs): the run works in another thread on clones of these.
#[derive(Clone)]
struct Links {
    cell: ModelCell,
    registry: Addr<ModelRegistry>,
    tracker: Option<actix::Recipient<Track>>,
    champion: Option<actix::Recipient<RegisterChampion>>,
    metrics: Arc<Metrics>,
    serving_val: ServingValCache,
    /// In a cluster only the training lease's holder retrains.
    lease: Lease,
}

/// The serving model's reporting-split figures, scored once by this process for each
/// (version, split fingerprint): later retrains against the same model reuse them. Kept in
/// memory, not read from the version's manifest, because a figure stored by another process
/// may have been scored with other settings (precision, backend).
type ServingValCache = Arc<std::sync::Mutex<Option<(String, String, EvalMetrics)>>>;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Trainer {
    pub fn new(
        cfg: Arc<Config>,
        cell: ModelCell,
        registry: Addr<ModelRegistry>,
        tracker: Option<actix::Addr<crate::mlops::tracker::Tracker>>,
        metrics: Arc<Metrics>,
    ) -> Trainer {
        Trainer {
            containment: Containment::new("trainer", metrics.clone()),
            cfg,
            links: Links {
                cell,
                registry,
                champion: tracker.clone().map(|t| t.recipient()),
                tracker: tracker.map(|t| t.recipient()),
                metrics,
                serving_val: ServingValCache::default(),
                lease: Lease::standalone(),
            },
            running: false,
        }
    }

    pub fn with_lease(mut self, lease: Lease) -> Trainer {
        self.links.lease = lease;
        self
    }

    fn state_path(cfg: &Config) -> PathBuf {
        cfg.paths.retrain_state()
    }

    fn load_state(cfg: &Config) -> RetrainState {
        std::fs::read(Self::state_path(cfg))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_state(cfg: &Config, state: &RetrainState) {
        let path = Self::state_path(cfg);
        let written = serde_json::to_vec_pretty(state)
            .map_err(std::io::Error::other)
            .and_then(|b| sentimentd_data::atomic::write_bytes_atomic(&path, &b));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the retrain state");
        }
    }

    /// The reason a run cannot start now, or `None` when it may.
    fn refusal(&self, trigger: RetrainTrigger) -> Option<String> {
        if let Some(refusal) = self.links.lease.refusal() {
            return Some(refusal);
        }
        if !self.cfg.retrain.enabled {
            return Some("retraining is disabled ([retrain] enabled = false)".into());
        }
        if self.running {
            return Some("a retrain is already running".into());
        }
        let state = Self::load_state(&self.cfg);
        if trigger == RetrainTrigger::Drift {
            if !self.cfg.retrain.on_drift {
                return Some("drift-driven retraining is off ([retrain] on_drift = false)".into());
            }
            if let Some(last) = state.last_attempt_unix {
                let next = last + self.cfg.retrain.cooldown_secs;
                if now_unix() < next {
                    return Some(format!(
                        "cooldown: the last retrain was {} s ago ([retrain] cooldown_secs = {})",
                        now_unix().saturating_sub(last),
                        self.cfg.retrain.cooldown_secs
                    ));
                }
            }
        }
        match new_labelled_rows(&self.cfg, &state) {
            Ok(n) if n < self.cfg.retrain.min_new_rows => Some(format!(
                "only {n} new labelled rows since the last retrain ([retrain] min_new_rows = {})",
                self.cfg.retrain.min_new_rows
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot read the labelled data: {e}")),
        }
    }

    fn start(
        &mut self,
        trigger: RetrainTrigger,
        ctx: &mut Context<Self>,
    ) -> Result<String, String> {
        if let Some(reason) = self.refusal(trigger) {
            RetrainSkipped {
                trigger,
                reason: &reason,
            }
            .emit(&self.links.metrics);
            // A drift check during a retrain is refused each time; the running retrain's own
            // run covers that time, and a run per check would only bury it in the tracker.
            if let Some(t) = self.links.tracker.as_ref().filter(|_| !self.running) {
                let mut rec = RunRecord::new(RunKind::RetrainSkipped, "retrain skipped");
                rec.tags.insert("trigger".into(), trigger.as_str().into());
                rec.tags.insert("reason".into(), reason.clone());
                t.do_send(Track(rec.finish()));
            }
            return Err(reason);
        }
        self.running = true;
        self.links.metrics.mlops.retrain_running.set(1);
        let job = RetrainRun {
            cfg: self.cfg.clone(),
            links: self.links.clone(),
            trigger,
            fencing: self.links.lease.token(),
        };
        let me = ctx.address();
        let containment = Containment::new("trainer", self.links.metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("retrain".into())
            .spawn(move || {
                crate::runtime::background::lower_priority(job.cfg.retrain.nice);
                let trigger = job.trigger;
                let metrics = job.links.metrics.clone();
                let outcome = match containment.run(|| job.run()) {
                    Ok(o) => o,
                    Err(p) => {
                        RetrainFailed {
                            trigger,
                            error: &p.to_string(),
                        }
                        .emit(&metrics);
                        "failed"
                    }
                };
                me.do_send(RetrainFinished { outcome });
            });
        match spawned {
            Ok(_) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    "retrain started in the background"
                );
                Ok("retrain started".into())
            }
            Err(e) => {
                self.running = false;
                self.links.metrics.mlops.retrain_running.set(0);
                Err(format!("cannot start the retrain thread: {e}"))
            }
        }
    }
}

/// Labelled texts in files no retrain has seen yet and that the serving model was not
/// trained on: once per normalised text, as training deduplicates, and only if the seen
/// files do not already hold that text with the same label (a repeat adds nothing; a
/// relabelled text does). Rows a run will hold out for the gate are counted too.
fn new_labelled_rows(cfg: &Config, state: &RetrainState) -> Result<usize, String> {
    let store = LabelledStore::open(&cfg.ingest.labelled_dir).map_err(|e| e.to_string())?;
    let mut seen: BTreeSet<String> = state.seen_files.iter().cloned().collect();
    if let Ok(ms) = ModelStore::for_config(cfg, None)
        && let Ok(Some(v)) = ms.current_version()
        && let Ok(m) = ms.manifest(&v)
    {
        seen.extend(m.labelled_files);
    }
    let files = store.read_all().map_err(|e| e.to_string())?;
    let (old, new): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| seen.contains(&f.name));
    let known: HashSet<(String, Label)> = labelled::deduplicate(&old)
        .into_iter()
        .map(|r| (labelled::normalise_text(&r.text), r.label))
        .collect();
    Ok(labelled::deduplicate(&new)
        .into_iter()
        .filter(|r| !known.contains(&(labelled::normalise_text(&r.text), r.label)))
        .count())
}

struct RetrainRun {
    cfg: Arc<Config>,
    links: Links,
    trigger: RetrainTrigger,
    /// The training lease's token when the run started.
    fencing: Option<u64>,
}

impl RetrainRun {
    fn track(&self, rec: RunRecord) {
        if let Some(t) = &self.links.tracker {
            t.do_send(Track(rec));
        }
    }

    /// The whole run; returns the outcome name for the log and the metrics.
    fn run(&self) -> &'static str {
        // Everything the run computes in parallel (embedding new texts, scoring both models on
        // the gate sets) stays on a pool of `[retrain] threads` threads started here, so they
        // inherit this thread's lowered priority; rayon's global pool is serving's.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.cfg.retrain.threads.max(1))
            .thread_name(|i| format!("retrain-{i}"))
            .build();
        let result = match pool {
            Ok(pool) => pool.install(|| self.try_run()),
            Err(e) => Err(format!("cannot start the retrain threads: {e}")),
        };
        match result {
            Ok(outcome) => outcome,
            Err(error) => {
                RetrainFailed {
                    trigger: self.trigger,
                    error: &error,
                }
                .emit(&self.links.metrics);
                let mut rec = RunRecord::new(RunKind::Training, "retrain");
                rec.tags
                    .insert("trigger".into(), self.trigger.as_str().into());
                self.track(rec.fail(error));
                "failed"
            }
        }
    }

    fn try_run(&self) -> Result<&'static str, String> {
        let cfg = &self.cfg;
        let started = Instant::now();
        let store = LabelledStore::open(&cfg.ingest.labelled_dir).map_err(|e| e.to_string())?;
        let files = store.read_all().map_err(|e| e.to_string())?;
        let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        // The cooldown counts from the start of a run; the files count as seen only once a run
        // reached a decision, so a failed run does not use up its labelled rows.
        let mut state = Trainer::load_state(cfg);
        state.last_attempt_unix = Some(now_unix());
        Trainer::save_state(cfg, &state);

        // Time-ordered holdout: the newest labelled rows never train the candidate, and no
        // single origin fills more than its share of them while other origins have rows.
        let with_files = labelled::deduplicate_with_files(&files);
        let holdout_n = cfg.retrain.held_out(with_files.len());
        let origins: Vec<&str> = with_files.iter().map(|(r, _)| r.origin.as_str()).collect();
        let in_holdout = pick_holdout(&origins, holdout_n, cfg.gate.holdout_max_origin_share);
        // Lineage: the files whose rows train the candidate (holdout-only files do not).
        let train_files: Vec<String> = with_files
            .iter()
            .zip(&in_holdout)
            .filter(|(_, h)| !**h)
            .map(|((_, f), _)| f.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (holdout_rows, train_rows): (Vec<_>, Vec<_>) = with_files
            .into_iter()
            .zip(&in_holdout)
            .partition(|(_, h)| **h);
        let rows_total = holdout_rows.len() + train_rows.len();
        let train_rows: Vec<labelled::LabelledRow> =
            train_rows.into_iter().map(|((r, _), _)| r).collect();
        let holdout_rows: Vec<labelled::LabelledRow> =
            holdout_rows.into_iter().map(|((r, _), _)| r).collect();
        let to_dataset = |rs: &[labelled::LabelledRow]| {
            Dataset::from_examples(
                rs.iter().map(|r| r.text.clone()).collect(),
                rs.iter().map(|r| r.label).collect(),
            )
        };
        let extra = to_dataset(&train_rows);
        let holdout = to_dataset(&holdout_rows);
        // Who supplied the rows the candidate is judged on, so an operator can see that no
        // single sender wrote the test.
        let mut holdout_origins: std::collections::BTreeMap<&str, usize> =
            std::collections::BTreeMap::new();
        for r in &holdout_rows {
            *holdout_origins.entry(r.origin.as_str()).or_default() += 1;
        }
        tracing::info!(
            labelled_files = names.len(),
            labelled_rows = rows_total,
            train_extra = extra.texts.len(),
            holdout = holdout.texts.len(),
            "retrain: training a candidate"
        );

        let job = TrainJob {
            promote: false,
            extra: Some(extra.clone()),
            extra_weight: Some(RecentWeighting {
                grid: cfg.retrain.recent_weights.clone(),
                tolerance: cfg.retrain.recent_weight_tolerance,
            }),
            labelled_files: train_files,
            threads: Some(cfg.retrain.threads),
            ..TrainJob::default()
        };
        let trained = pipeline::train_and_store(cfg, &job, &mut LogObserver)
            .map_err(|e| format!("training the candidate: {e}"))?;
        let version = trained.manifest.version.clone();
        let model_store =
            ModelStore::for_config(cfg, Some(&trained.store_root)).map_err(|e| e.to_string())?;
        let candidate = model_store
            .load(&version)
            .map_err(|e| format!("loading the candidate {version}: {e}"))?;
        let serving = self
            .links
            .cell
            .load_full()
            .ok_or_else(|| "no model is serving".to_string())?;
        let current = serving.classifier.clone();

        let val = load_dataset(std::slice::from_ref(&cfg.data.val), cfg.data.max_text_chars)
            .map_err(|e| format!("loading the reporting split: {e}"))?;
        let eval = |m: &dyn Classifier, d: &Dataset| -> Option<EvalMetrics> {
            (!d.texts.is_empty()).then(|| pipeline::evaluate(m, d))
        };
        // The candidate was scored on this split through the serving path by this run, with
        // these settings (its manifest's figure); the serving model once per version by this
        // process. With the transformer kind each pass over 2,000 texts is seconds.
        let m = &trained.manifest;
        let cand_val = m
            .splits
            .get("validation")
            .filter(|s| s.fingerprint == val.fingerprint)
            .and_then(|_| m.metrics.get("validation").cloned())
            .unwrap_or_else(|| pipeline::evaluate(candidate.as_ref(), &val));
        let cached = self
            .links
            .serving_val
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(v, f, _)| v == current.version() && *f == val.fingerprint)
            .map(|(_, _, m)| m);
        let cur_val = match cached {
            Some(m) => m,
            None => {
                let m = pipeline::evaluate(current.as_ref(), &val);
                if let Ok(mut c) = self.links.serving_val.lock() {
                    *c = Some((
                        current.version().to_string(),
                        val.fingerprint.clone(),
                        m.clone(),
                    ));
                }
                m
            }
        };
        // The serving model scores the holdout once: its figure on the whole holdout and each
        // origin's label agreement come from the same predictions.
        let cur_predicted: Vec<Label> = {
            let texts: Vec<&str> = holdout.texts.iter().map(String::as_str).collect();
            current
                .predict_batch(&texts)
                .into_iter()
                .map(|p| p.label)
                .collect()
        };
        let (cand_hold, cur_hold) = (
            eval(candidate.as_ref(), &holdout),
            (!holdout.texts.is_empty())
                .then(|| EvalMetrics::compute(&holdout.labels, &cur_predicted)),
        );
        // Each origin's labels are judged by themselves too, so honest rows from one sender
        // cannot carry contradicting rows from another past the label-agreement rule.
        let by_origin: Vec<(String, f64, u64)> = if cfg.gate.min_label_agreement > 0.0 {
            holdout_origins
                .keys()
                .filter(|o| holdout_origins[*o] >= MIN_POLAR_ROWS as usize)
                .filter(|_| holdout_origins.len() > 1)
                .map(|o| {
                    let (labels, predicted): (Vec<Label>, Vec<Label>) = holdout_rows
                        .iter()
                        .zip(&cur_predicted)
                        .filter(|(r, _)| r.origin == *o)
                        .map(|(r, p)| (r.label, *p))
                        .unzip();
                    let (agree, n) = polar_agreement(&EvalMetrics::compute(&labels, &predicted));
                    (o.to_string(), agree, n)
                })
                .collect()
        } else {
            Vec::new()
        };
        let verdict = gate(
            cfg,
            &cand_val,
            &cur_val,
            cand_hold.as_ref(),
            cur_hold.as_ref(),
            holdout.texts.len(),
            &by_origin,
        );
        let details = serde_json::json!({
            "trigger": self.trigger.as_str(),
            "gate": &cfg.gate,
            "rules": &verdict,
            "candidate": { "validation": &cand_val, "recent_holdout": &cand_hold },
            "serving": { "version": current.version(), "validation": &cur_val, "recent_holdout": &cur_hold },
            "holdout_rows": holdout.texts.len(),
            "holdout_origins": &holdout_origins,
            "weighting": &trained.manifest.weighting,
            "train_seconds": started.elapsed().as_secs_f64(),
            "fencing_token": self.fencing,
        });
        let mut reason = verdict.reasons.join("; ");
        crate::runtime::containment::test_pause(cfg.server.test_faults, "before_promote");
        // The registry switches only if the model the gate compared with still serves; the
        // decision is written once the switch happened (or not), so it never claims more.
        let promotion = verdict.passed.then(|| {
            let mut extra_reference: Vec<String> = holdout.texts.clone();
            extra_reference.extend(extra.texts.iter().rev().take(2000).cloned());
            futures_executor::block_on(self.links.registry.send(PromoteCandidate {
                version: version.clone(),
                reason: reason.clone(),
                against: current.version().to_string(),
                extra_reference,
                fencing: self.fencing,
            }))
            .map_err(|e| format!("the registry did not answer: {e}"))
            .and_then(|r| r)
        });
        let status = match &promotion {
            None => "rejected",
            Some(Ok(_)) => "promoted",
            Some(Err(e)) => {
                reason = format!("{reason}; promotion failed: {e}");
                "promotion_failed"
            }
        };
        let decision = Decision {
            version: version.clone(),
            decided_at: chrono::Utc::now().to_rfc3339(),
            status: status.into(),
            reason: reason.clone(),
            against: Some(current.version().to_string()),
            details,
        };
        model_store
            .write_decision(&decision)
            .map_err(|e| format!("recording the decision: {e}"))?;

        let dir = model_store.version_dir(&version);
        let mut rec = training_record(&trained.manifest, self.trigger.as_str(), &dir);
        rec.name = "retrain".into();
        rec.tags.insert("decision".into(), status.into());
        rec.tags.insert("reason".into(), reason.clone());
        rec.params
            .insert("serving_version".into(), current.version().into());
        rec.params
            .insert("labelled_rows".into(), rows_total.to_string());
        rec.params
            .insert("holdout_rows".into(), holdout.texts.len().to_string());
        if let Some(w) = &trained.manifest.weighting {
            for p in &w.parts {
                rec.params
                    .insert(format!("{}_train_rows", p.name), p.train_rows.to_string());
                rec.params.insert(
                    format!("{}_selection_rows", p.name),
                    p.selection_rows.to_string(),
                );
                rec.params.insert(
                    format!("{}_row_weight", p.name),
                    format!("{:.3}", p.row_weight),
                );
                rec.metrics
                    .insert(format!("{}_weight_share", p.name), p.share);
            }
        }
        for (k, v) in [
            ("candidate_val_macro_recall", Some(cand_val.macro_recall)),
            ("serving_val_macro_recall", Some(cur_val.macro_recall)),
            (
                "candidate_holdout_macro_recall",
                cand_hold.as_ref().map(|m| m.macro_recall),
            ),
            (
                "serving_holdout_macro_recall",
                cur_hold.as_ref().map(|m| m.macro_recall),
            ),
        ] {
            if let Some(v) = v {
                rec.metrics.insert(k.into(), v);
            }
        }
        if let Some(m) = &cur_hold {
            let (agree, n) = polar_agreement(m);
            rec.metrics.insert("holdout_label_agreement".into(), agree);
            rec.params
                .insert("holdout_polar_rows".into(), n.to_string());
        }
        // The whole run (weight trials, training, both models scored), not just the kept fit.
        rec.metrics
            .insert("retrain_seconds".into(), started.elapsed().as_secs_f64());
        rec.artifacts
            .push(dir.join(sentimentd_model::promotion::DECISION));
        let run_id = rec.run_id.clone();
        self.track(rec.finish());
        // A candidate that passed but could not be promoted (the serving model changed under
        // it) leaves its rows for the next run, as a failed run does.
        if status != "promotion_failed" {
            state.seen_files = names;
            Trainer::save_state(cfg, &state);
        }

        match promotion {
            None => {
                CandidateRejected {
                    version: &version,
                    against: current.version(),
                    reason: &reason,
                }
                .emit(&self.links.metrics);
                Ok("rejected")
            }
            Some(Ok(switched)) => {
                CandidatePromoted {
                    version: &switched.to,
                    from: switched.from.as_deref().unwrap_or("none"),
                    reason: &reason,
                }
                .emit(&self.links.metrics);
                if let Some(t) = &self.links.champion {
                    t.do_send(RegisterChampion {
                        version: version.clone(),
                        run_id,
                        model_dir: dir,
                        fencing: self.fencing,
                    });
                }
                Ok("promoted")
            }
            Some(Err(e)) => {
                RetrainFailed {
                    trigger: self.trigger,
                    error: &format!(
                        "candidate {version} passed the gate but was not promoted: {e}"
                    ),
                }
                .emit(&self.links.metrics);
                Ok("failed")
            }
        }
    }
}

impl Actor for Trainer {
    type Context = Context<Self>;

    /// Retention of the labelled store runs here, off the main arbiter, at start and hourly.
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.apply_retention();
        ctx.run_interval(RETENTION_EVERY, |me, _| me.apply_retention());
    }
}

/// How often the labelled store's retention is applied.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl Trainer {
    fn apply_retention(&self) {
        let g = &self.cfg.ingest;
        if g.labelled_max_bytes == 0 && g.labelled_max_age_days == 0 {
            return;
        }
        let max_age = (g.labelled_max_age_days > 0)
            .then(|| Duration::from_secs(g.labelled_max_age_days.saturating_mul(86_400)));
        let removed = LabelledStore::open(&g.labelled_dir)
            .and_then(|store| store.apply_retention(g.labelled_max_bytes, max_age));
        match removed {
            Ok(removed) => {
                for (name, bytes) in removed {
                    tracing::info!(
                        file = %name,
                        bytes,
                        max_bytes = g.labelled_max_bytes,
                        max_age_days = g.labelled_max_age_days,
                        "labelled file removed by retention (ingest.labelled_max_bytes / labelled_max_age_days)"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(dir = %g.labelled_dir.display(), error = %e, "cannot apply the labelled store's retention")
            }
        }
    }
}

impl Handler<crate::messages::Reconfigure> for Trainer {
    type Result = ();

    /// A retrain already running keeps the settings it started with.
    fn handle(&mut self, msg: crate::messages::Reconfigure, _ctx: &mut Context<Self>) {
        self.cfg = msg.0;
    }
}

impl Handler<DriftDetected> for Trainer {
    type Result = ();

    fn handle(&mut self, msg: DriftDetected, ctx: &mut Context<Self>) {
        tracing::info!(fired = %msg.report.fired.join(","), "drift reported to the trainer");
        let containment = self.containment.clone();
        let _ = containment.run(|| self.start(RetrainTrigger::Drift, ctx));
    }
}

impl Handler<Retrain> for Trainer {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: Retrain, ctx: &mut Context<Self>) -> Self::Result {
        let containment = self.containment.clone();
        containment
            .run(|| self.start(msg.trigger, ctx))
            .map_err(|p| p.to_string())?
    }
}

impl Handler<RetrainFinished> for Trainer {
    type Result = ();

    fn handle(&mut self, msg: RetrainFinished, _ctx: &mut Context<Self>) {
        self.running = false;
        self.links.metrics.mlops.retrain_running.set(0);
        tracing::info!(outcome = msg.outcome, "retrain finished");
    }
}
