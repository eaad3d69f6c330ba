//! Metrics of the process itself: contained panics per actor, the build.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::zero_series;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabels {
    actor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every actor name `Containment` uses, so `sentiment_actor_restarts_total` has a zero series
/// for each from the start.
pub const ACTORS: [&str; 11] = [
    "baseliner",
    "batch_processor",
    "champion_follower",
    "drift_monitor",
    "folder_watcher",
    "http",
    "inference",
    "model_registry",
    "reputation",
    "tracker",
    "trainer",
];

pub struct RuntimeMetrics {
    restarts: Family<ActorLabels, Counter>,
}

impl RuntimeMetrics {
    pub(super) fn register(registry: &mut Registry) -> RuntimeMetrics {
        registered!(registry;
            restarts: Family<ActorLabels, Counter> = ("sentiment_actor_restarts", "Panics contained in an actor or handler (the actor kept serving)"),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("sentiment_build_info", "Build information (value 1)", build);
        // A zero series per actor from the start, for the dashboard and the alert.
        zero_series(&restarts, ACTORS.map(|actor| ActorLabels { actor }));
        RuntimeMetrics { restarts }
    }

    pub fn actor_restart(&self, actor: &'static str) {
        self.restarts.get_or_create(&ActorLabels { actor }).inc();
    }
}
