//! Where batches of texts come from. Every source is built from its config section and
//! started with a [`SourceContext`]: the running config (a reload publishes the new one), the
//! one [`Scorer`] it hands its texts to, the shutdown state, metrics, fault hooks and the
//! reputation view. A source never talks to the inference pool itself, and accounts for each
//! record it takes (scored, or rejected with a reason) before it lets go of it.
//!
//! `file`: CSV files dropped into the watched inbox; `jetstream`: a NATS JetStream work queue
//! shared by the nodes of a cluster. Adding a source is a module here, one
//! config section, and one line in [`from_config`].

pub mod file;
pub mod jetstream;

use actix::Recipient;
use sentimentd_config::Config;
use std::sync::Arc;

use crate::messages::StopIntake;
use crate::mlops::reputation::Reputation;
use crate::runtime::containment::Faults;
use crate::runtime::shutdown::Lifecycle;
use crate::serving::scorer::Scorer;
use crate::telemetry::metrics::Metrics;

/// Where the daemon publishes the running config, and where sources read it.
pub type ConfigSender = tokio::sync::watch::Sender<Arc<Config>>;
pub type ConfigReceiver = tokio::sync::watch::Receiver<Arc<Config>>;

/// A channel holding `cfg` until a reload sends the next one.
pub fn config_channel(cfg: Arc<Config>) -> (ConfigSender, ConfigReceiver) {
    tokio::sync::watch::channel(cfg)
}

/// What every source starts with.
#[derive(Clone)]
pub struct SourceContext {
    /// The running config; the daemon publishes a reloaded one here (SIGHUP).
    pub config: ConfigReceiver,
    pub scorer: Arc<Scorer>,
    /// Set on SIGTERM: take nothing new, finish or safely leave what is in hand.
    pub shutdown: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub faults: Faults,
    pub reputation: Arc<Reputation>,
}

/// A started source, as the daemon's shutdown sees it.
pub struct SourceHandle {
    pub name: &'static str,
    stop: Box<dyn Fn()>,
}

impl SourceHandle {
    /// A source whose intake an actor stops on `StopIntake`.
    pub fn new(name: &'static str, stop_intake: Recipient<StopIntake>) -> SourceHandle {
        SourceHandle::with_stop(name, move || stop_intake.do_send(StopIntake))
    }

    /// A source whose intake `stop` stops.
    pub fn with_stop(name: &'static str, stop: impl Fn() + 'static) -> SourceHandle {
        SourceHandle {
            name,
            stop: Box::new(stop),
        }
    }

    /// Stops taking new work (the drain on SIGTERM).
    pub fn stop_intake(&self) {
        (self.stop)();
    }
}

pub trait Source {
    /// The source's name in logs, metrics and errors.
    fn name(&self) -> &'static str;

    /// Checks and crash recovery before anything is served; an error stops the start and
    /// says why.
    fn prepare(&mut self, _cfg: &Config) -> Result<(), String> {
        Ok(())
    }

    /// Starts the source's actors on the current arbiter.
    fn start(self: Box<Self>, cx: SourceContext) -> SourceHandle;
}

/// The sources `cfg` asks for: the watched folder (`[ingest]`) always, and the JetStream
/// work queue when `[cluster] nats_url` is set.
pub fn from_config(cfg: &Config) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(file::FileSource::default())];
    if let Some(url) = &cfg.cluster.nats_url {
        sources.push(Box::new(jetstream::JetStreamSource::new(url.clone())));
    }
    sources
}
