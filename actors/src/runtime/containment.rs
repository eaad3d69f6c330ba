//! Panic containment. `actix::Supervisor` restarts an actor that *stops*, but a panic inside a
//! handler unwinds through the arbiter (or kills a `SyncArbiter` thread) instead of stopping
//! the actor cleanly. Every handler body therefore runs inside [`Containment::run`]: a panic is
//! caught, logged with the actor's name, counted in `sentiment_actor_restarts_total{actor}`,
//! and turned into an error for that one message; the actor keeps its state and serves the
//! next message.
//!
//! Also home of the test-only fault hooks, compiled only into tests and builds with the
//! `test-faults` feature, and live only with `server.test_faults = true`.

use crate::telemetry::metrics::Metrics;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// A handler panicked; the message it was handling produced no result.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error in actor {actor}: {message}")]
pub struct Panicked {
    pub actor: &'static str,
    pub message: String,
}

#[derive(Clone)]
pub struct Containment {
    actor: &'static str,
    metrics: Arc<Metrics>,
}

impl Containment {
    pub fn new(actor: &'static str, metrics: Arc<Metrics>) -> Containment {
        Containment { actor, metrics }
    }

    /// Runs `f`; a panic becomes `Err(Panicked)` after being logged and counted.
    ///
    /// `AssertUnwindSafe` is sound here because every caller's state is either rebuilt per
    /// message or only mutated through operations that leave it consistent at each step
    /// (the batch processor's journal exists precisely for that).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, Panicked> {
        catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
            let message = panic_message(payload.as_ref());
            tracing::error!(
                actor = self.actor,
                panic = %message,
                "actor handler panicked; contained, the actor keeps serving"
            );
            self.metrics.runtime.actor_restart(self.actor);
            Panicked {
                actor: self.actor,
                message,
            }
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Whether this build has the fault hooks: only unit tests and builds with the `test-faults`
/// cargo feature (which `scripts/test.sh` enables for the integration tests). A release
/// build has none of their code or magic strings.
pub const FAULTS_COMPILED: bool = cfg!(any(test, feature = "test-faults"));

/// A text equal to this makes the handler that sees it panic (only with test faults enabled).
#[cfg(any(test, feature = "test-faults"))]
pub const FAULT_PANIC_TEXT: &str = "__sentimentd_test_fault_panic__";
/// A text equal to this makes batch scoring of its chunk sleep 200 ms (test faults only),
/// so a test can kill the process in the middle of a batch.
#[cfg(any(test, feature = "test-faults"))]
pub const FAULT_SLOW_TEXT: &str = "__sentimentd_test_fault_slow__";
/// With test faults enabled, the batch processor calls `abort()` (as abrupt as `kill -9`)
/// on reaching the step named by this environment variable.
#[cfg(any(test, feature = "test-faults"))]
pub const FAULT_CRASH_ENV: &str = "SENTIMENTD_TEST_CRASH_AT";
/// With test faults enabled and this environment variable set, the folder watcher does not
/// ask whether a writer holds a file open.
#[cfg(any(test, feature = "test-faults"))]
pub const FAULT_NO_LEASES_ENV: &str = "SENTIMENTD_TEST_NO_LEASES";

/// With test faults on (`enabled`), sleeps as many milliseconds as the environment variable
/// `SENTIMENTD_TEST_PAUSE_<STEP>_MS` says, so a test can act inside a window that is
/// otherwise milliseconds wide.
#[cfg(any(test, feature = "test-faults"))]
pub fn test_pause(enabled: bool, step: &str) {
    let var = format!("SENTIMENTD_TEST_PAUSE_{}_MS", step.to_ascii_uppercase());
    if let Some(ms) = enabled
        .then(|| std::env::var(&var).ok())
        .flatten()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(step, ms, "injected pause");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(any(test, feature = "test-faults")))]
#[inline(always)]
pub fn test_pause(_enabled: bool, _step: &str) {}

/// Test-only fault hooks; every method is a no-op unless the build has them
/// ([`FAULTS_COMPILED`]) and `server.test_faults = true`.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    enabled: bool,
    #[cfg_attr(not(any(test, feature = "test-faults")), allow(dead_code))]
    crash_at: Option<String>,
}

impl Faults {
    /// `enabled` is ignored by a build without the hooks; the daemon refuses to start with
    /// `server.test_faults = true` then, rather than pretend.
    pub fn new(enabled: bool) -> Faults {
        let enabled = enabled && FAULTS_COMPILED;
        #[cfg(any(test, feature = "test-faults"))]
        let crash_at = if enabled {
            std::env::var(FAULT_CRASH_ENV).ok()
        } else {
            None
        };
        #[cfg(not(any(test, feature = "test-faults")))]
        let crash_at = None;
        if enabled {
            tracing::warn!(
                crash_at = crash_at.as_deref().unwrap_or(""),
                "server.test_faults is on: fault-injection hooks are live (tests only)"
            );
        }
        Faults { enabled, crash_at }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    #[cfg(any(test, feature = "test-faults"))]
    pub fn on_text(&self, text: &str) {
        if self.enabled {
            if text == FAULT_PANIC_TEXT {
                panic!("injected test fault");
            }
            if text == FAULT_SLOW_TEXT {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }

    #[cfg(not(any(test, feature = "test-faults")))]
    #[inline(always)]
    pub fn on_text(&self, _text: &str) {}

    /// Whether the folder watcher must act as if Linux could not say who holds a file open
    /// (a daemon not the file's owner, without CAP_LEASE), so tests reach the fallback.
    #[cfg(any(test, feature = "test-faults"))]
    pub fn no_leases(&self) -> bool {
        self.enabled && std::env::var_os(FAULT_NO_LEASES_ENV).is_some()
    }

    #[cfg(not(any(test, feature = "test-faults")))]
    #[inline(always)]
    pub fn no_leases(&self) -> bool {
        false
    }

    #[cfg(any(test, feature = "test-faults"))]
    pub fn crash_point(&self, step: &str) {
        if self.crash_at.as_deref() == Some(step) {
            tracing::warn!(step, "injected crash");
            std::process::abort();
        }
    }

    #[cfg(not(any(test, feature = "test-faults")))]
    #[inline(always)]
    pub fn crash_point(&self, _step: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_is_contained_counted_and_the_next_call_works() {
        let metrics = Arc::new(Metrics::new());
        let c = Containment::new("inference", metrics.clone());
        let faults = Faults::new(true);
        let r = c.run(|| {
            faults.on_text(FAULT_PANIC_TEXT);
            1
        });
        assert!(matches!(
            r,
            Err(Panicked {
                actor: "inference",
                ..
            })
        ));
        assert_eq!(c.run(|| 2).ok(), Some(2));
        let text = metrics.render().unwrap_or_default();
        assert!(text.contains("sentiment_actor_restarts_total{actor=\"inference\"} 1"));
    }

    #[test]
    fn faults_are_inert_when_disabled() {
        let faults = Faults::new(false);
        faults.on_text(FAULT_PANIC_TEXT);
        faults.crash_point("anything");
    }
}
