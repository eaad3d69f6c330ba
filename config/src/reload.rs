//! What a config reload (SIGHUP) may change in a running daemon.
//!
//! Limits, ingest timing and retries, drift-check and retrain settings, and the log level are
//! read where they are used, so they change at once. Everything else (paths, ports, thread
//! counts, the model, what the drift window holds) is built into the running topology and
//! needs a restart: a reload keeps the running value and says so.

use crate::schema::Config;

/// Keys, or key prefixes ending in `.`, that a running daemon takes from a reloaded file.
pub const LIVE_KEYS: &[&str] = &[
    "logging.level",
    "data.max_text_chars",
    "server.max_batch_texts",
    "server.max_inflight_texts",
    "ingest.settle_ms",
    "ingest.chunk_rows",
    "ingest.max_file_bytes",
    "ingest.retry_initial_ms",
    "ingest.retry_max_ms",
    "ingest.max_attempts",
    "ingest.neutralize_formulas",
    "ingest.labelled_max_bytes",
    "ingest.labelled_max_age_days",
    "drift.",
    "retrain.",
    "gate.",
];

/// Exceptions to [`LIVE_KEYS`]: the observation queue and the baseline are sized and built
/// from these at start-up.
const RESTART_KEYS: &[&str] = &[
    "drift.enabled",
    "drift.window",
    "drift.reference",
    "drift.baseline_sample",
];

/// Whether a running daemon applies a change of `key`.
pub fn is_live(key: &str) -> bool {
    let matches = |pattern: &&str| {
        if pattern.ends_with('.') {
            key.starts_with(*pattern)
        } else {
            key == *pattern
        }
    };
    LIVE_KEYS.iter().any(matches) && !RESTART_KEYS.iter().any(matches)
}

/// The outcome of comparing a reloaded file with the running config.
#[derive(Clone, Debug, PartialEq)]
pub struct ReloadPlan {
    /// Changed keys the running daemon takes.
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart.
    pub needs_restart: Vec<String>,
    /// The running config with the applied changes: what the daemon runs with now.
    pub effective: Config,
}

/// Compares `running` with `reloaded` (both resolved and validated) key by key.
pub fn plan(running: &Config, reloaded: &Config) -> Result<ReloadPlan, String> {
    let old = to_table(running)?;
    let new = to_table(reloaded)?;
    let mut old_flat = Vec::new();
    flatten("", &old, &mut old_flat);
    let mut new_flat = Vec::new();
    flatten("", &new, &mut new_flat);
    let mut keys: Vec<&String> = old_flat
        .iter()
        .map(|(k, _)| k)
        .chain(new_flat.iter().map(|(k, _)| k))
        .collect();
    keys.sort();
    keys.dedup();
    let get = |flat: &[(String, toml::Value)], key: &str| {
        flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut effective = old.clone();
    let (mut applied, mut needs_restart) = (Vec::new(), Vec::new());
    for key in keys {
        let (before, after) = (get(&old_flat, key), get(&new_flat, key));
        if before == after {
            continue;
        }
        if is_live(key) {
            set(&mut effective, key, after);
            applied.push(key.clone());
        } else {
            needs_restart.push(key.clone());
        }
    }
    let effective: Config = toml::Value::Table(effective)
        .try_into()
        .map_err(|e| format!("cannot rebuild the config: {e}"))?;
    // The file was valid alone, but the running values of the keys that wait for a restart
    // stay: the mix must keep every rule too (drift.min_samples <= drift.window, ...).
    effective.validate().map_err(|e| {
        format!(
            "the file's live keys with the running values of the keys that need a restart \
             ({}) break a rule: {e}",
            needs_restart.join(", ")
        )
    })?;
    Ok(ReloadPlan {
        applied,
        needs_restart,
        effective,
    })
}

fn to_table(cfg: &Config) -> Result<toml::Table, String> {
    match toml::Value::try_from(cfg) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(_) => Err("the config is not a table".to_string()),
        Err(e) => Err(format!("cannot serialise the config: {e}")),
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

fn set(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                set(t, rest, value);
            }
        }
        None => match value {
            Some(v) => {
                table.insert(key.to_string(), v);
            }
            None => {
                table.remove(key);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_applied_and_the_rest_wait_for_a_restart() -> Result<(), String> {
        let running = Config::default();
        let mut reloaded = Config::default();
        reloaded.ingest.settle_ms = 2000;
        reloaded.drift.psi_threshold = 0.5;
        reloaded.drift.window = 99;
        reloaded.ingest.inbox = "/elsewhere".into();
        reloaded.logging.level = "debug".into();
        let plan = plan(&running, &reloaded)?;
        assert_eq!(
            plan.applied,
            ["drift.psi_threshold", "ingest.settle_ms", "logging.level"]
        );
        assert_eq!(plan.needs_restart, ["drift.window", "ingest.inbox"]);
        assert_eq!(plan.effective.ingest.settle_ms, 2000);
        assert_eq!(plan.effective.logging.level, "debug");
        assert_eq!(plan.effective.drift.window, running.drift.window);
        assert_eq!(plan.effective.ingest.inbox, running.ingest.inbox);
        let same = super::plan(&running, &running)?;
        assert!(same.applied.is_empty() && same.needs_restart.is_empty());
        Ok(())
    }
}
