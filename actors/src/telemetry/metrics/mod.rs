//! Prometheus metrics. One `Metrics` value is shared by `Arc` between the HTTP workers and the
//! actors: prometheus-client counters are atomics, so recording on the hot path costs a few
//! atomic adds and never an actor round-trip. The hot label sets are resolved once at start-up
//! (a `Family` lookup takes a lock and hashes the labels).
//!
//! The metrics are split by domain (serving, reputation, ingest, mlops, runtime, cluster), each
//! registered into the one registry `/metrics` renders.

/// Declares each metric as a local and registers it under its name and help, in order. Every
/// metric listed starts from `Default` (histograms, which need buckets, are registered by hand).
macro_rules! registered {
    ($registry:ident; $($var:ident: $ty:ty = ($name:literal, $help:literal)),* $(,)?) => {
        $(
            let $var = <$ty>::default();
            $registry.register($name, $help, $var.clone());
        )*
    };
}

/// Creates a family's series for each label set, so they are exported at zero from the start.
fn zero_series<L, M>(
    family: &prometheus_client::metrics::family::Family<L, M>,
    labels: impl IntoIterator<Item = L>,
) where
    L: Clone + std::hash::Hash + Eq,
{
    for l in labels {
        drop(family.get_or_create(&l));
    }
}

mod cluster;
mod ingest;
mod mlops;
mod reputation;
mod runtime;
mod serving;

pub use cluster::*;
pub use ingest::*;
pub use mlops::*;
pub use reputation::*;
pub use runtime::*;
pub use serving::*;

use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub serving: ServingMetrics,
    pub reputation: ReputationMetrics,
    pub ingest: IngestMetrics,
    pub mlops: MlopsMetrics,
    pub runtime: RuntimeMetrics,
    pub cluster: ClusterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let serving = ServingMetrics::register(&mut registry);
        let reputation = ReputationMetrics::register(&mut registry);
        let mlops = MlopsMetrics::register(&mut registry);
        let ingest = IngestMetrics::register(&mut registry);
        let runtime = RuntimeMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        Metrics {
            registry,
            serving,
            reputation,
            ingest,
            mlops,
            runtime,
            cluster,
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
    use sentimentd_data::Label;

    #[test]
    fn exposition_has_the_dashboard_names() {
        let m = Metrics::new();
        m.serving.request(RequestOutcome::ok);
        m.reputation.source_counters("acme")[Channel::http as usize][Label::Positive.index()].inc();
        drop(m.reputation.source_counters("unknown"));
        m.serving.latency.observe(0.001);
        m.mlops.model_changed("lexicon", "lexicon", true, false);
        m.runtime.actor_restart("http");
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
        assert_eq!(m.serving.requests_total(), 1);
        m.reputation.remove_source("acme");
        let text = m.render().unwrap_or_default();
        assert!(!text.contains("acme"), "{text}");
    }

    #[test]
    fn model_info_keeps_one_series() {
        let m = Metrics::new();
        m.mlops.model_changed("lexicon", "lexicon", true, false);
        m.mlops.model_changed("v1", "fast", false, true);
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
