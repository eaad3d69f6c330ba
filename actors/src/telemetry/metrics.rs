//! Prometheus metrics. One `Metrics` value is shared by `Arc` between the HTTP workers and the
//! actors: prometheus-client counters are atomics, so recording on the hot path costs a few
//! atomic adds and never an actor round-trip. The hot label sets are resolved once at start-up
//! (a `Family` lookup takes a lock and hashes the labels).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sentimentd_data::Label;
use std::sync::atomic::AtomicU64;

/// How a text arrived: `POST /predict` or an inbox file.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Channel {
    http,
    batch,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::http, Channel::batch];
}

/// Prediction counters of one tracked source, `[channel][label index]`, resolved once so the
/// hot path never touches the family lock.
pub type SourceCounters = [[Counter; 3]; 2];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestOutcome {
    ok,
    client_error,
    server_error,
    /// 429: too much scoring in flight (`server.max_inflight_texts`).
    throttled,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum BatchOutcome {
    /// Scored; the output is in the outbox (some rows may have been rejected).
    processed,
    /// The whole file was rejected (not CSV, no `text` column, too big).
    rejected,
    /// Not taken: a symlink, a file with several hard links, or not a regular file.
    refused,
    /// Failed `ingest.max_attempts` times for reasons other than its content.
    quarantined,
}

/// How one attempt at a batch file ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptResult {
    /// The file reached a final outcome.
    finished,
    /// Failed for a reason other than its content; retried or quarantined.
    failed,
    /// Stopped by shutdown; resumed on the next start.
    interrupted,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: AttemptResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RowOutcome {
    scored,
    rejected,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DriftCheckOutcome {
    no_drift,
    drift,
    /// Fewer observations than `[drift] min_samples`: no verdict.
    insufficient,
    /// No baseline yet, or the check itself failed.
    failed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RetrainOutcome {
    promoted,
    rejected,
    skipped,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftCheckLabels {
    outcome: DriftCheckOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetrainLabels {
    outcome: RetrainOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftTestLabels {
    /// One of the seven fixed test names: bounded cardinality.
    test: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: RequestOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PredictionLabels {
    label: &'static str,
    channel: Channel,
    /// A tracked source, `other` or `unknown`: bounded by `[reputation]`.
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    outcome: BatchOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    outcome: RowOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabels {
    actor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelInfoLabels {
    version: String,
    kind: &'static str,
    fallback: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every actor name `Containment` uses, so `sentiment_actor_restarts_total` has a zero series
/// for each from the start.
pub const ACTORS: [&str; 10] = [
    "baseliner",
    "batch_processor",
    "drift_monitor",
    "folder_watcher",
    "http",
    "inference",
    "model_registry",
    "reputation",
    "tracker",
    "trainer",
];

/// A finished inbox file, as the status page lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentBatch {
    pub file: String,
    pub outcome: BatchOutcome,
    pub rows: u64,
    pub scored: u64,
    pub rejected: u64,
    /// The model version that scored it, or why it was not processed.
    pub detail: String,
    /// RFC 3339.
    pub finished_at: String,
}

/// Finished batches the status page shows.
const RECENT_BATCHES: usize = 20;

pub struct Metrics {
    registry: Registry,
    /// The latest finished batches, newest last; recorded by the same events as the counters.
    recent_batches: std::sync::Mutex<std::collections::VecDeque<RecentBatch>>,
    pub latency: Histogram,
    /// Texts per chunk the batcher sends: how much concurrent requests are batched.
    pub batched_texts: Histogram,
    predictions: Family<PredictionLabels, Counter>,
    negative_share: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    reputation_alert: Family<SourceLabels, Gauge>,
    request_counters: [Counter; 4],
    batches: Family<BatchLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    pub inbox_backlog: Gauge,
    /// 1 while a retrain runs in the background.
    pub retrain_running: Gauge,
    batch_duration: Histogram,
    rows: Family<RowLabels, Counter>,
    labelled_rows: Counter,
    restarts: Family<ActorLabels, Counter>,
    model_info: Family<ModelInfoLabels, Gauge>,
    model_swaps: Counter,
    pub drift_score: Gauge<f64, AtomicU64>,
    drift_test_score: Family<DriftTestLabels, Gauge<f64, AtomicU64>>,
    drift_checks: Family<DriftCheckLabels, Counter>,
    drift_last_check: Gauge<f64, AtomicU64>,
    observations_dropped: Counter,
    retrains: Family<RetrainLabels, Counter>,
    rollbacks: Counter,
    feedback_rows: Counter,
    /// Records waiting in the MLflow retry queue.
    pub tracking_pending: Gauge,
    tracking_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sentiment_requests",
            "POST /predict requests, by outcome",
            requests.clone(),
        );
        // From 50 µs to ~1.6 s: the interesting range of an in-process model.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 16,
        ));
        registry.register(
            "sentiment_request_latency_seconds",
            "Time to answer POST /predict, from parsed request to encoded response",
            latency.clone(),
        );
        let batched_texts = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11),
        );
        registry.register(
            "sentiment_batched_texts",
            "Texts per chunk of /predict requests batched together (models that prefer batches)",
            batched_texts.clone(),
        );
        let predictions = Family::<PredictionLabels, Counter>::default();
        registry.register(
            "sentiment_predictions",
            "Texts classified, by predicted label, channel (http or batch) and source ([reputation])",
            predictions.clone(),
        );
        let negative_share = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sentiment_negative_share",
            "Share of negative predictions in each source's latest time bucket ([reputation] bucket_secs)",
            negative_share.clone(),
        );
        let reputation_alert = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "sentiment_reputation_alert",
            "1 while a source's latest bucket is a negative spike against its own history",
            reputation_alert.clone(),
        );
        let drift_score = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "sentiment_drift_score",
            "Largest threshold-normalised score of the latest drift check (1.0 = at threshold)",
            drift_score.clone(),
        );
        let drift_test_score = Family::<DriftTestLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sentiment_drift_test_score",
            "Threshold-normalised score of each drift test in the latest check (1.0 = at threshold)",
            drift_test_score.clone(),
        );
        let drift_checks = Family::<DriftCheckLabels, Counter>::default();
        registry.register(
            "sentiment_drift_checks",
            "Drift checks, by outcome",
            drift_checks.clone(),
        );
        let drift_last_check = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "sentiment_drift_last_check_timestamp_seconds",
            "Unix time of the last drift check that gave a verdict",
            drift_last_check.clone(),
        );
        let observations_dropped = Counter::default();
        registry.register(
            "sentiment_drift_observations_dropped",
            "Observations dropped because the drift monitor fell behind (serving never waits)",
            observations_dropped.clone(),
        );
        let retrains = Family::<RetrainLabels, Counter>::default();
        registry.register(
            "sentiment_retrains",
            "Retraining runs, by outcome (promoted, rejected by the gate, skipped, failed)",
            retrains.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "sentiment_model_rollbacks",
            "Rollbacks to the previously served model version",
            rollbacks.clone(),
        );
        let feedback_rows = Counter::default();
        registry.register(
            "sentiment_feedback_rows",
            "Labelled rows received by POST /feedback",
            feedback_rows.clone(),
        );
        let tracking_pending = Gauge::default();
        registry.register(
            "sentiment_tracking_pending",
            "Run records waiting to be sent to MLflow (kept in the local run log meanwhile)",
            tracking_pending.clone(),
        );
        let tracking_dropped = Counter::default();
        registry.register(
            "sentiment_tracking_dropped",
            "Run records MLflow refused or kept answering wrongly, moved to the dead-letter file",
            tracking_dropped.clone(),
        );
        let batches = Family::<BatchLabels, Counter>::default();
        registry.register(
            "sentiment_batches",
            "Inbox files by final outcome (processed, rejected, refused, quarantined)",
            batches.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "sentiment_batch_attempts",
            "Attempts at inbox files, by result (a file that fails is attempted again)",
            attempts.clone(),
        );
        let retrain_running = Gauge::default();
        registry.register(
            "sentiment_retrain_running",
            "1 while a retrain runs in the background, else 0",
            retrain_running.clone(),
        );
        let inbox_backlog = Gauge::default();
        registry.register(
            "sentiment_inbox_backlog_files",
            "Batch files waiting in the inbox or claimed and not yet finished",
            inbox_backlog.clone(),
        );
        // From 10 ms to ~45 min.
        let batch_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 19),
        );
        registry.register(
            "sentiment_batch_duration_seconds",
            "Time to process one inbox file, from claim to archive, per attempt that finished",
            batch_duration.clone(),
        );
        let rows = Family::<RowLabels, Counter>::default();
        registry.register(
            "sentiment_batch_rows",
            "Inbox rows handled, by outcome",
            rows.clone(),
        );
        let labelled_rows = Counter::default();
        registry.register(
            "sentiment_labelled_rows",
            "Labelled rows appended to the labelled-data store",
            labelled_rows.clone(),
        );
        let restarts = Family::<ActorLabels, Counter>::default();
        registry.register(
            "sentiment_actor_restarts",
            "Panics contained in an actor or handler (the actor kept serving)",
            restarts.clone(),
        );
        let model_info = Family::<ModelInfoLabels, Gauge>::default();
        registry.register(
            "sentiment_model_info",
            "The model currently serving (value 1)",
            model_info.clone(),
        );
        let model_swaps = Counter::default();
        registry.register(
            "sentiment_model_swaps",
            "Times a new model was swapped in while serving",
            model_swaps.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("sentiment_build_info", "Build information (value 1)", build);

        let request_counters = [
            RequestOutcome::ok,
            RequestOutcome::client_error,
            RequestOutcome::server_error,
            RequestOutcome::throttled,
        ]
        .map(|outcome| requests.get_or_create(&RequestLabels { outcome }).clone());
        // Pre-create so dashboards see zeros rather than missing series.
        for outcome in [
            BatchOutcome::processed,
            BatchOutcome::rejected,
            BatchOutcome::refused,
            BatchOutcome::quarantined,
        ] {
            drop(batches.get_or_create(&BatchLabels { outcome }));
        }
        for result in [
            AttemptResult::finished,
            AttemptResult::failed,
            AttemptResult::interrupted,
        ] {
            drop(attempts.get_or_create(&AttemptLabels { result }));
        }
        // Families written only once they have a series: without these, a dashboard panel or
        // an alert on them would see nothing until the first panic or drift check.
        for actor in ACTORS {
            drop(restarts.get_or_create(&ActorLabels { actor }));
        }
        for test in sentimentd_data::drift::TESTS {
            drop(drift_test_score.get_or_create(&DriftTestLabels {
                test: test.to_string(),
            }));
        }
        for outcome in [RowOutcome::scored, RowOutcome::rejected] {
            drop(rows.get_or_create(&RowLabels { outcome }));
        }
        for outcome in [
            DriftCheckOutcome::no_drift,
            DriftCheckOutcome::drift,
            DriftCheckOutcome::insufficient,
            DriftCheckOutcome::failed,
        ] {
            drop(drift_checks.get_or_create(&DriftCheckLabels { outcome }));
        }
        for outcome in [
            RetrainOutcome::promoted,
            RetrainOutcome::rejected,
            RetrainOutcome::skipped,
            RetrainOutcome::failed,
        ] {
            drop(retrains.get_or_create(&RetrainLabels { outcome }));
        }

        Metrics {
            registry,
            recent_batches: std::sync::Mutex::new(std::collections::VecDeque::new()),
            latency,
            batched_texts,
            predictions,
            negative_share,
            reputation_alert,
            request_counters,
            batches,
            attempts,
            inbox_backlog,
            retrain_running,
            batch_duration,
            rows,
            labelled_rows,
            restarts,
            model_info,
            model_swaps,
            drift_score,
            drift_test_score,
            drift_checks,
            drift_last_check,
            observations_dropped,
            retrains,
            rollbacks,
            feedback_rows,
            tracking_pending,
            tracking_dropped,
        }
    }

    /// The latest check's scores; `verdict` false (insufficient data) leaves them as they were.
    pub fn drift_checked(&self, outcome: DriftCheckOutcome, scores: &[(String, f64)], max: f64) {
        self.drift_checks
            .get_or_create(&DriftCheckLabels { outcome })
            .inc();
        if matches!(
            outcome,
            DriftCheckOutcome::drift | DriftCheckOutcome::no_drift
        ) {
            self.drift_score.set(max);
            for (test, score) in scores {
                self.drift_test_score
                    .get_or_create(&DriftTestLabels { test: test.clone() })
                    .set(*score);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.drift_last_check.set(now);
        }
    }

    pub fn observations_dropped(&self, n: u64) {
        self.observations_dropped.inc_by(n);
    }

    pub fn retrain(&self, outcome: RetrainOutcome) {
        self.retrains
            .get_or_create(&RetrainLabels { outcome })
            .inc();
    }

    pub fn rollback(&self) {
        self.rollbacks.inc();
    }

    pub fn feedback_rows(&self, n: u64) {
        self.feedback_rows.inc_by(n);
    }

    pub fn tracking_dropped(&self) {
        self.tracking_dropped.inc();
    }

    pub fn request(&self, outcome: RequestOutcome) {
        self.request_counters[outcome as usize].inc();
    }

    /// The prediction counters of `source` (created at zero), and its reputation gauges.
    pub fn source_counters(&self, source: &str) -> SourceCounters {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        drop(self.negative_share.get_or_create(&labels));
        drop(self.reputation_alert.get_or_create(&labels));
        Channel::ALL.map(|channel| {
            Label::ALL.map(|label| {
                self.predictions
                    .get_or_create(&PredictionLabels {
                        label: label.as_str(),
                        channel,
                        source: source.to_string(),
                    })
                    .clone()
            })
        })
    }

    /// Drops every series of a source that is no longer tracked.
    pub fn remove_source(&self, source: &str) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.negative_share.remove(&labels);
        self.reputation_alert.remove(&labels);
        for channel in Channel::ALL {
            for label in Label::ALL {
                self.predictions.remove(&PredictionLabels {
                    label: label.as_str(),
                    channel,
                    source: source.to_string(),
                });
            }
        }
    }

    pub fn reputation(&self, source: &str, negative_share: f64, alert: bool) {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.negative_share
            .get_or_create(&labels)
            .set(negative_share);
        self.reputation_alert
            .get_or_create(&labels)
            .set(i64::from(alert));
    }

    /// Counts a file's final outcome and keeps it in the recent list.
    pub fn batch(&self, batch: RecentBatch) {
        self.batches
            .get_or_create(&BatchLabels {
                outcome: batch.outcome,
            })
            .inc();
        let mut recent = self
            .recent_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(batch);
    }

    /// The latest finished batches, newest first.
    pub fn recent_batches(&self) -> Vec<RecentBatch> {
        let recent = self
            .recent_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    pub fn batch_attempt(&self, result: AttemptResult) {
        self.attempts.get_or_create(&AttemptLabels { result }).inc();
    }

    pub fn batch_duration(&self, seconds: f64) {
        self.batch_duration.observe(seconds);
    }

    pub fn rows(&self, outcome: RowOutcome, n: u64) {
        self.rows.get_or_create(&RowLabels { outcome }).inc_by(n);
    }

    pub fn labelled_rows(&self, n: u64) {
        self.labelled_rows.inc_by(n);
    }

    pub fn actor_restart(&self, actor: &'static str) {
        self.restarts.get_or_create(&ActorLabels { actor }).inc();
    }

    /// Replaces the single `sentiment_model_info` series; `swap` counts a change while serving.
    pub fn model_changed(&self, version: &str, kind: &'static str, fallback: bool, swap: bool) {
        self.model_info.clear();
        self.model_info
            .get_or_create(&ModelInfoLabels {
                version: version.to_string(),
                kind,
                fallback: if fallback { "true" } else { "false" },
            })
            .set(1);
        if swap {
            self.model_swaps.inc();
        }
    }

    /// Prometheus text exposition format.
    /// The OpenMetrics text format (what Prometheus asks for).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The classic Prometheus text format 0.0.4, for clients that do not ask for OpenMetrics
    /// (curl, `promtool check metrics`, older scrapers).
    pub fn render_classic(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_classic(&self.render()?))
    }

    pub fn requests_total(&self) -> u64 {
        self.request_counters.iter().map(Counter::get).sum()
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: a counter family's `HELP` and
/// `TYPE` name its samples (`x_total`, not `x`), and the OpenMetrics-only `UNIT` and `EOF`
/// lines go.
pub fn openmetrics_to_classic(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_dashboard_names() {
        let m = Metrics::new();
        m.request(RequestOutcome::ok);
        m.source_counters("acme")[Channel::http as usize][Label::Positive.index()].inc();
        drop(m.source_counters("unknown"));
        m.latency.observe(0.001);
        m.model_changed("lexicon", "lexicon", true, false);
        m.actor_restart("http");
        let text = m.render().unwrap_or_default();
        for needle in [
            "sentiment_requests_total{outcome=\"ok\"} 1",
            "sentiment_predictions_total{label=\"positive\",channel=\"http\",source=\"acme\"} 1",
            "sentiment_predictions_total{label=\"negative\",channel=\"batch\",source=\"unknown\"} 0",
            "sentiment_negative_share{source=\"acme\"} 0",
            "sentiment_reputation_alert{source=\"unknown\"} 0",
            "sentiment_request_latency_seconds_count 1",
            "sentiment_drift_score 0",
            "sentiment_model_info{version=\"lexicon\",kind=\"lexicon\",fallback=\"true\"} 1",
            "sentiment_actor_restarts_total{actor=\"http\"} 1",
            "sentiment_batches_total{outcome=\"processed\"} 0",
            "sentiment_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(m.requests_total(), 1);
        m.remove_source("acme");
        let text = m.render().unwrap_or_default();
        assert!(!text.contains("acme"), "{text}");
    }

    #[test]
    fn model_info_keeps_one_series() {
        let m = Metrics::new();
        m.model_changed("lexicon", "lexicon", true, false);
        m.model_changed("v1", "fast", false, true);
        let text = m.render().unwrap_or_default();
        assert!(!text.contains("version=\"lexicon\""));
        assert!(
            text.contains(
                "sentiment_model_info{version=\"v1\",kind=\"fast\",fallback=\"false\"} 1"
            )
        );
        assert!(text.contains("sentiment_model_swaps_total 1"));
    }
}
