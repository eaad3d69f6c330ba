//! Baseliner: keeps a drift baseline for whichever model serves. When the registry publishes
//! a model it loads the version's `baseline.json` (checksummed in the manifest), or computes it
//! from the reference data (plus, after a drift-driven promotion, the recent labelled texts the
//! new model was trained for) and stores it in the version directory. The lexicon fallback gets
//! an in-memory baseline. The result goes to the DriftMonitor.
//!
//! A `SyncArbiter` actor: computing a baseline runs the model over the reference texts, which
//! must not hold up the arbiter that the registry and the watcher share. Nor may it take the
//! CPU from serving: it runs at `[retrain] nice` on a pool of `[retrain] threads`, not on
//! rayon's global pool, which is serving's (a transformer's baseline computed there held
//! `/predict` up to a second).

use actix::{Actor, Handler, Recipient, SyncContext};
use sentimentd_config::Config;
use sentimentd_data::drift::Baseline;
use sentimentd_model::{ModelError, ModelStore, baseline};
use std::sync::Arc;

use crate::messages::{BaselineReady, ModelServing};
use crate::runtime::containment::Containment;
use crate::telemetry::metrics::Metrics;

pub struct Baseliner {
    cfg: Arc<Config>,
    monitor: Recipient<BaselineReady>,
    containment: Containment,
    /// Made on the actor's thread once its priority is lowered, so its threads inherit it.
    pool: Option<rayon::ThreadPool>,
}

impl Baseliner {
    pub fn new(cfg: Arc<Config>, monitor: Recipient<BaselineReady>, metrics: Arc<Metrics>) -> Self {
        Baseliner {
            cfg,
            monitor,
            containment: Containment::new("baseliner", metrics),
            pool: None,
        }
    }

    fn baseline_for(&self, msg: &ModelServing) -> Result<(Baseline, &'static str), ModelError> {
        let model = msg.classifier.as_ref();
        let extra_description = (!msg.extra_reference.is_empty()).then(|| {
            format!(
                "{} recent labelled texts the model was trained and gated for",
                msg.extra_reference.len()
            )
        });
        if msg.manifest.is_none() {
            let b = baseline::compute(
                &self.cfg,
                model,
                &baseline::reference_paths(&self.cfg),
                &[],
                None,
            )?;
            return Ok((b, "computed (not stored: fallback model)"));
        }
        let store = ModelStore::open(&self.cfg.paths.model_store)?;
        if msg.extra_reference.is_empty()
            && let Some(b) = baseline::load(&store, model.version())?
        {
            return Ok((b, "loaded"));
        }
        let b = baseline::compute_and_attach(
            &self.cfg,
            &store,
            model,
            &baseline::reference_paths(&self.cfg),
            &msg.extra_reference,
            extra_description,
        )?;
        Ok((b, "computed and stored"))
    }
}

impl Actor for Baseliner {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut SyncContext<Self>) {
        crate::runtime::background::lower_priority(self.cfg.retrain.nice);
        match rayon::ThreadPoolBuilder::new()
            .num_threads(self.cfg.retrain.threads.max(1))
            .thread_name(|i| format!("baseline-{i}"))
            .build()
        {
            Ok(pool) => self.pool = Some(pool),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot start the baseline threads; baselines are computed on serving's pool"
            ),
        }
    }
}

impl Handler<ModelServing> for Baseliner {
    type Result = ();

    fn handle(&mut self, msg: ModelServing, _ctx: &mut SyncContext<Self>) {
        let version = msg.classifier.version().to_string();
        let compute = || match &self.pool {
            Some(pool) => pool.install(|| self.baseline_for(&msg)),
            None => self.baseline_for(&msg),
        };
        match self.containment.run(compute) {
            Ok(Ok((b, how))) => {
                tracing::info!(
                    model_version = %version,
                    reference_texts = b.count,
                    how,
                    "drift baseline ready"
                );
                self.monitor.do_send(BaselineReady {
                    model_version: version,
                    baseline: Some(Arc::new(b)),
                });
            }
            Ok(Err(e)) => {
                tracing::error!(
                    model_version = %version,
                    error = %e,
                    "cannot build the drift baseline; drift checks wait for one"
                );
                self.monitor.do_send(BaselineReady {
                    model_version: version,
                    baseline: None,
                });
            }
            Err(_) => self.monitor.do_send(BaselineReady {
                model_version: version,
                baseline: None,
            }),
        }
    }
}
