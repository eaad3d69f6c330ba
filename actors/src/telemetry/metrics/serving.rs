//! Metrics of scoring: `/predict` requests, their latency, how requests are batched.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestOutcome {
    ok,
    client_error,
    server_error,
    /// 429: too much scoring in flight (`server.max_inflight_texts`).
    throttled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: RequestOutcome,
}

pub struct ServingMetrics {
    pub latency: Histogram,
    /// Texts per chunk the batcher sends: how much concurrent requests are batched.
    pub batched_texts: Histogram,
    request_counters: [Counter; 4],
}

impl ServingMetrics {
    pub(super) fn register(registry: &mut Registry) -> ServingMetrics {
        registered!(registry;
            requests: Family<RequestLabels, Counter> = ("sentiment_requests", "POST /predict requests, by outcome"),
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
        let request_counters = [
            RequestOutcome::ok,
            RequestOutcome::client_error,
            RequestOutcome::server_error,
            RequestOutcome::throttled,
        ]
        .map(|outcome| requests.get_or_create(&RequestLabels { outcome }).clone());
        ServingMetrics {
            latency,
            batched_texts,
            request_counters,
        }
    }

    pub fn request(&self, outcome: RequestOutcome) {
        self.request_counters[outcome as usize].inc();
    }

    pub fn requests_total(&self) -> u64 {
        self.request_counters.iter().map(Counter::get).sum()
    }
}
