//! Followers serve the leader's model. The lease holder registers every model it switches
//! to in MLflow with all its files and points the alias `champion` at it; every other node
//! polls the alias, downloads a version it does not have into a staging folder, checks every
//! file against the manifest's checksums, installs it into its own store and swaps it in
//! through the registry, like any switch (requests keep being answered throughout). A node
//! that cannot fetch or verify keeps serving what it serves, and says so in `/model`, its
//! log and `sentiment_cluster_champion_synced`.

use sentimentd_config::Config;
use sentimentd_model::ModelStore;
use sentimentd_tracking::{CHAMPION_ALIAS, MODEL_ARTIFACT_PATH, MlflowClient, VERSION_TAG};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lease::Lease;
use crate::messages::FollowChampion;
use crate::mlops::tracker::FENCING_TAG;
use crate::runtime::containment::Containment;
use crate::serving::model_cell::ModelCell;
use crate::telemetry::events::{ChampionFollowed, InternalEvent};
use crate::telemetry::metrics::Metrics;

/// The last poll's outcome, for `/model`: `None` while in step (or leading).
pub type FollowError = Arc<Mutex<Option<String>>>;

pub struct ChampionFollower {
    /// The highest fencing token of a champion followed so far: a champion registered under
    /// an older token comes from a node that has since lost the lease, and is not followed.
    pub highest_token: std::sync::atomic::AtomicU64,
    pub cfg: Arc<Config>,
    pub lease: Lease,
    pub cell: ModelCell,
    pub registry: actix::Recipient<FollowChampion>,
    pub metrics: Arc<Metrics>,
    pub error: FollowError,
    /// Made at the first poll and kept: its connections are reused from poll to poll.
    pub client: std::sync::OnceLock<MlflowClient>,
}

impl ChampionFollower {
    /// Polls every `[cluster] champion_poll_secs` on a thread of its own (the MLflow client
    /// blocks), for as long as the process runs.
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("champion".into())
            .spawn(move || {
                let every = Duration::from_secs(self.cfg.cluster.champion_poll_secs);
                let containment = Containment::new("champion_follower", self.metrics.clone());
                loop {
                    // A panic in one poll is counted and logged; the next poll comes anyway.
                    let _ = containment.run(|| self.poll_once());
                    std::thread::sleep(every);
                }
            })
            .map(drop)
    }

    fn poll_once(&self) {
        let outcome = self.follow();
        let failed = outcome.as_ref().err().cloned();
        let changed = {
            let mut last = self.error.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *last != failed;
            *last = failed;
            changed
        };
        ChampionFollowed {
            version: outcome.as_ref().ok().and_then(|v| v.as_deref()),
            error: outcome.as_ref().err().map(String::as_str),
            // A failure is logged when it starts or changes, not every poll.
            changed,
        }
        .emit(&self.metrics);
    }

    /// The version swapped in, `None` when nothing was to do.
    fn follow(&self) -> Result<Option<String>, String> {
        // The holder sets the alias; it has nothing to follow.
        if self.lease.refusal().is_none() {
            return Ok(None);
        }
        let Some(uri) = &self.cfg.tracking.mlflow_uri else {
            return Ok(None);
        };
        let client = self.client.get_or_init(|| MlflowClient::new(uri));
        let registered = &self.cfg.tracking.registered_model;
        let Some(champion) = client
            .get_model_version_by_alias(registered, CHAMPION_ALIAS)
            .map_err(|e| format!("MLflow {uri}: {e}"))?
        else {
            return Ok(None);
        };
        let version = champion.tags.get(VERSION_TAG).cloned().ok_or_else(|| {
            format!(
                "model {registered} version {} (alias {CHAMPION_ALIAS}) has no {VERSION_TAG} tag",
                champion.version
            )
        })?;
        let token = champion
            .tags
            .get(FENCING_TAG)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        let highest = self.highest_token.load(Ordering::Relaxed);
        if token < highest {
            return Err(format!(
                "the alias {CHAMPION_ALIAS} names {version} under training lease token {token}, \
                 older than token {highest} already followed: set by a node that has lost the \
                 lease, so not followed"
            ));
        }
        let serving = self.cell.load().as_deref().map(|m| m.info.version.clone());
        if serving.as_deref() == Some(version.as_str()) {
            self.highest_token.store(token, Ordering::Relaxed);
            return Ok(None);
        }
        let store = ModelStore::for_config(&self.cfg, None).map_err(|e| e.to_string())?;
        // Checked before the name becomes a path.
        let staging = store
            .staging_dir(&version)
            .map_err(|e| format!("champion tag {VERSION_TAG} = {version:?}: {e}"))?;
        if !store.version_dir(&version).join("manifest.json").exists() {
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
            let fetched = download(client, &champion.run_id, &staging);
            let installed = fetched.and_then(|bytes| {
                store
                    .install(&version, &staging)
                    .map(|_| bytes)
                    .map_err(|e| format!("champion {version} not installed: {e}"))
            });
            let _ = std::fs::remove_dir_all(&staging);
            let bytes = installed?;
            tracing::info!(version = %version, bytes, "champion downloaded, verified and installed");
        }
        futures_executor::block_on(self.registry.send(FollowChampion {
            version: version.clone(),
        }))
        .map_err(|e| format!("the registry did not answer: {e}"))?
        .map_err(|e| format!("champion {version} not swapped in: {e}"))?;
        self.highest_token.store(token, Ordering::Relaxed);
        Ok(Some(version))
    }
}

/// Downloads every file under `model/` of the MLflow run into `dir`; returns the bytes.
fn download(client: &MlflowClient, run_id: &str, dir: &Path) -> Result<u64, String> {
    let run = client
        .get_run(run_id)
        .map_err(|e| format!("run {run_id}: {e}"))?;
    let files = client
        .list_artifacts(&run, MODEL_ARTIFACT_PATH)
        .map_err(|e| format!("run {run_id}: {e}"))?;
    if files.is_empty() {
        return Err(format!(
            "run {run_id} has no files under {MODEL_ARTIFACT_PATH}/"
        ));
    }
    let mut total = 0;
    for path in files {
        let Some(name) = Path::new(&path).file_name() else {
            continue;
        };
        total += client
            .download_artifact(&run, &path, &dir.join(name))
            .map_err(|e| format!("run {run_id}: {e}"))?;
    }
    Ok(total)
}
