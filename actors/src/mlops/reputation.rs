//! The reputation view as the daemon runs it: one [`Reputation`] shared by the HTTP workers
//! and the batch processor (recording is a short lock and a few atomic adds, never an actor
//! round-trip), and the [`ReputationKeeper`] actor that re-ranks sources, refreshes the
//! per-source gauges and saves the state on a timer.
//!
//! The state lives in `<state_dir>/reputation.json`, written atomically; it survives a
//! restart. The Prometheus counters start again at zero like every counter of a new process.

use actix::prelude::*;
use sentimentd_config::Config;
use sentimentd_data::Label;
use sentimentd_data::reputation::{Book, BookState, Report, Settings, Tally, bucket_of};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::runtime::containment::Containment;
use crate::telemetry::events::{InternalEvent, ReputationAlert};
use crate::telemetry::metrics::{Channel, Metrics, SourceCounters};
use sentimentd_data::atomic::write_bytes_atomic as write_atomic;

/// How often gauges are refreshed and sources re-ranked.
const REFRESH: Duration = Duration::from_secs(5);

struct Inner {
    book: Book,
    counters: HashMap<String, SourceCounters>,
    alerting: HashSet<String>,
    dirty: bool,
}

pub struct Reputation {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    /// `[reputation]` as the book was opened with it (it changes only with a restart): read
    /// here without the lock.
    pub settings: Settings,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Reputation {
    /// The state saved under `state_dir`, or a new one. A state file that cannot be read is
    /// set aside (renamed `.unreadable`) with a warning: the view starts empty rather than
    /// the daemon not starting.
    pub fn open(cfg: &Config, metrics: Arc<Metrics>) -> Reputation {
        let settings = cfg.reputation.clone();
        let path = cfg.paths.reputation();
        let book = match load(&path) {
            Ok(Some(saved)) => {
                tracing::info!(file = %path.display(), "reputation state restored");
                Book::restore(settings, saved)
            }
            Ok(None) => Book::new(settings),
            Err(LoadError::Parse(why)) => {
                let aside = path.with_extension("json.unreadable");
                let _ = std::fs::rename(&path, &aside);
                tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    error = %why,
                    "reputation state unreadable; set aside, starting a new one"
                );
                Book::new(settings)
            }
            // Not the content: leave the file for the operator (a permission problem, say);
            // the next save replaces it if the folder lets it.
            Err(LoadError::Io(why)) => {
                tracing::error!(
                    file = %path.display(),
                    error = %why,
                    "cannot read the reputation state; starting a new one"
                );
                Book::new(settings)
            }
        };
        let rep = Reputation {
            inner: Mutex::new(Inner {
                book,
                counters: HashMap::new(),
                alerting: HashSet::new(),
                dirty: false,
            }),
            metrics,
            path,
            settings: cfg.reputation.clone(),
        };
        {
            let mut inner = rep.lock();
            let names: Vec<String> = inner.book.tracked().map(str::to_string).collect();
            for name in names {
                rep.counters(&mut inner, &name);
            }
        }
        rep.refresh(now_unix());
        rep
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic contained elsewhere while holding the lock leaves counts that are still
        // consistent (each update is a few additions): keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters<'a>(&self, inner: &'a mut Inner, name: &str) -> &'a SourceCounters {
        if !inner.counters.contains_key(name) {
            let c = self.metrics.reputation.source_counters(name);
            inner.counters.insert(name.to_string(), c);
        }
        &inner.counters[name]
    }

    fn add(
        &self,
        inner: &mut Inner,
        channel: Channel,
        source: Option<&str>,
        bucket: i64,
        counts: [u64; 3],
    ) {
        let total = counts.iter().sum();
        let key = inner.book.resolve(source, total).to_string();
        inner.book.add(&key, bucket, counts);
        let counters = &self.counters(inner, &key)[channel as usize];
        for (i, n) in counts.into_iter().enumerate() {
            if n > 0 {
                counters[i].inc_by(n);
            }
        }
        inner.dirty = true;
    }

    /// Predictions of one HTTP request (all texts of a request share its source), now.
    pub fn record(
        &self,
        channel: Channel,
        source: Option<&str>,
        labels: impl IntoIterator<Item = Label>,
    ) {
        let mut counts = [0u64; 3];
        for l in labels {
            counts[l.index()] += 1;
        }
        let mut inner = self.lock();
        let bucket = bucket_of(&self.settings, now_unix());
        self.add(&mut inner, channel, source, bucket, counts);
    }

    /// A finished batch file's counts.
    pub fn apply(&self, channel: Channel, tally: &Tally) {
        if tally.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (source, bucket, counts) in tally.iter() {
            self.add(&mut inner, channel, source, bucket, counts);
        }
    }

    /// Re-ranks the sources (once per bucket) and refreshes the per-source gauges; a source
    /// whose alert starts or ends is logged.
    pub fn refresh(&self, now: i64) {
        let mut inner = self.lock();
        let removed = inner.book.rerank(now);
        for name in &removed {
            inner.counters.remove(name);
            inner.alerting.remove(name);
            self.metrics.reputation.remove_source(name);
            inner.dirty = true;
        }
        if !removed.is_empty() {
            let names: Vec<String> = inner.book.tracked().map(str::to_string).collect();
            for name in names {
                self.counters(&mut inner, &name);
            }
            tracing::info!(
                untracked = %removed.join(","),
                "reputation: busier sources took the slots of quieter ones (now counted as other)"
            );
        }
        let report = inner.book.report(now);
        for s in &report.sources {
            let was = inner.alerting.contains(&s.source);
            let spike = s.trend.last().and_then(|b| b.spike);
            ReputationAlert {
                source: &s.source,
                negative_share: s.negative_share,
                alert: s.alert,
                changed: was != s.alert,
                baseline: spike.map_or(0.0, |x| x.baseline),
                z: spike.map_or(0.0, |x| x.z),
                texts: s.trend.last().map_or(0, |b| b.total),
            }
            .emit(&self.metrics);
            if s.alert {
                inner.alerting.insert(s.source.clone());
            } else {
                inner.alerting.remove(&s.source);
            }
        }
    }

    pub fn report(&self, now: i64) -> Report {
        self.lock().book.report(now)
    }

    /// Writes the state if it changed since the last save.
    pub fn save(&self) -> Result<(), String> {
        let json = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            serde_json::to_vec(inner.book.state()).map_err(|e| e.to_string())?
        };
        // `write_atomic` creates the folder; on failure the state stays dirty for the next try.
        write_atomic(&self.path, &json).map_err(|e| {
            self.lock().dirty = true;
            format!("{}: {e}", self.path.display())
        })
    }
}

enum LoadError {
    Io(String),
    Parse(String),
}

fn load(path: &Path) -> Result<Option<BookState>, LoadError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LoadError::Parse(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::Io(e.to_string())),
    }
}

/// Refreshes and saves the shared [`Reputation`] on a timer.
pub struct ReputationKeeper {
    reputation: Arc<Reputation>,
    save_every: Duration,
    last_save: Instant,
    containment: Containment,
}

impl ReputationKeeper {
    pub fn new(reputation: Arc<Reputation>, save_every: Duration, metrics: Arc<Metrics>) -> Self {
        ReputationKeeper {
            reputation,
            save_every,
            last_save: Instant::now(),
            containment: Containment::new("reputation", metrics),
        }
    }

    fn tick(&mut self) {
        let rep = self.reputation.clone();
        let save = self.last_save.elapsed() >= self.save_every;
        if save {
            self.last_save = Instant::now();
        }
        let _ = self.containment.run(|| {
            rep.refresh(now_unix());
            if save && let Err(e) = rep.save() {
                tracing::warn!(error = %e, "cannot save the reputation state; retrying later");
            }
        });
    }
}

impl Actor for ReputationKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(REFRESH.min(self.save_every), |act, _| act.tick());
    }
}
