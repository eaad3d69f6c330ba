//! What every handler shares: the scorer, the model cell, metrics, limits, tokens.

use crate::cluster::follower::FollowError;
use crate::cluster::lease::Lease;
use crate::messages::{PromoteVersion, Retrain, Rollback};
use crate::mlops::drift_monitor::ReportCell;
use crate::mlops::reputation::Reputation;
use crate::serving::model_cell::ModelCell;
use crate::serving::scorer::Scorer;
use crate::telemetry::metrics::Metrics;
use actix_web::http::header::{self};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::errors::*;

/// Where the admin API sends its requests.
pub struct AdminApi {
    /// The bearer token from `[admin] token_file`, re-read on SIGHUP.
    pub token: Arc<TokenFile>,
    pub retrain: actix::Recipient<Retrain>,
    pub promote: actix::Recipient<PromoteVersion>,
    pub rollback: actix::Recipient<Rollback>,
}

pub struct HttpState {
    /// The one scoring path, shared with the other sources.
    pub scorer: Arc<Scorer>,
    /// The serving model, for what reports on it (the scorer's cell).
    pub cell: ModelCell,
    pub metrics: Arc<Metrics>,
    /// Request limits; a config reload (SIGHUP) changes them in place.
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub reports: ReportCell,
    pub drift_dir: std::path::PathBuf,
    pub labelled_dir: std::path::PathBuf,
    pub admin: Option<AdminApi>,
    /// Who may post `/feedback`: `[feedback] token_file`, else the admin token; none
    /// configured, and `/feedback` is disabled (the newest labelled rows are the gate's
    /// holdout, so anonymous feedback would let anyone steer promotions).
    pub feedback_token: Option<Arc<TokenFile>>,
    pub feedback_limits: sentimentd_config::FeedbackConfig,
    pub reputation: Arc<Reputation>,
    /// The model store, for the status page's promotion history.
    pub model_store: std::path::PathBuf,
    /// This node's role in a cluster, for `/model` and the status page.
    pub lease: Lease,
    /// Why this follower does not serve the leader's champion, if it does not.
    pub champion_error: FollowError,
}

/// A `/predict` body larger than this (more than one text can be) is refused before it is
/// parsed while the pool is full.
pub(crate) const EARLY_THROTTLE_BYTES: usize = 16 << 10;

/// Seconds a throttled client is asked to wait.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

impl HttpState {
    // Every shared view the handlers read is wired here once, by the daemon and the tests.
    pub fn new(
        cfg: &sentimentd_config::Config,
        scorer: Arc<Scorer>,
        metrics: Arc<Metrics>,
        reports: ReportCell,
        admin: Option<AdminApi>,
        feedback_token: Option<Arc<TokenFile>>,
        reputation: Arc<Reputation>,
    ) -> HttpState {
        HttpState {
            cell: scorer.cell().clone(),
            scorer,
            metrics,
            limits: Limits::new(cfg),
            max_body_bytes: cfg.server.max_body_bytes,
            reports,
            drift_dir: crate::mlops::drift_monitor::DriftMonitor::reports_dir(cfg),
            labelled_dir: cfg.ingest.labelled_dir.clone(),
            admin,
            feedback_token,
            feedback_limits: cfg.feedback.clone(),
            reputation,
            model_store: cfg.paths.model_store.clone(),
            lease: Lease::standalone(),
            champion_error: FollowError::default(),
        }
    }

    pub fn with_lease(mut self, lease: Lease, champion_error: FollowError) -> HttpState {
        self.lease = lease;
        self.champion_error = champion_error;
        self
    }

    /// This node's role, and in a cluster the input messages no node has taken yet (`lag`),
    /// for `/model` and the status page.
    pub fn cluster_view(&self) -> serde_json::Value {
        let mut view = serde_json::to_value(self.lease.role()).unwrap_or_default();
        if let Some(o) = view.as_object_mut()
            && o.get("role").and_then(|r| r.as_str()) != Some("standalone")
        {
            o.insert("lag".into(), self.metrics.cluster.pending.get().into());
            let error = self
                .champion_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            o.insert("champion_error".into(), error.into());
        }
        view
    }

    /// Takes the request limits of a reloaded config.
    pub fn set_limits(&self, cfg: &sentimentd_config::Config) {
        self.limits.set(cfg);
        self.scorer.set_limits(cfg);
    }
}

/// The limits of `/predict` and `/feedback` requests.
pub struct Limits {
    pub(crate) max_text_chars: AtomicUsize,
    pub(crate) max_batch_texts: AtomicUsize,
}

impl Limits {
    pub fn new(cfg: &sentimentd_config::Config) -> Limits {
        let limits = Limits {
            max_text_chars: AtomicUsize::new(0),
            max_batch_texts: AtomicUsize::new(0),
        };
        limits.set(cfg);
        limits
    }

    /// Takes the limits of `cfg` (a reloaded config).
    pub fn set(&self, cfg: &sentimentd_config::Config) {
        let set = |a: &AtomicUsize, v| a.store(v, Ordering::Relaxed);
        set(&self.max_text_chars, cfg.data.max_text_chars);
        set(&self.max_batch_texts, cfg.server.max_batch_texts);
    }

    pub fn max_text_chars(&self) -> usize {
        self.max_text_chars.load(Ordering::Relaxed)
    }

    pub fn max_batch_texts(&self) -> usize {
        self.max_batch_texts.load(Ordering::Relaxed)
    }
}

/// A bearer token kept in a file (the first line, trimmed), read at start and again on
/// SIGHUP, so a token is rotated without a restart.
pub struct TokenFile {
    /// The config key, for messages: `[admin] token_file`.
    pub(crate) key: &'static str,
    pub(crate) path: std::path::PathBuf,
    /// The token, or why the file cannot be used: then every request is refused with it
    /// (a rotation that went wrong must not leave the old, possibly leaked, token valid).
    pub(crate) token: std::sync::RwLock<Result<String, String>>,
}

impl TokenFile {
    /// Reads the file; one that cannot be read, is open to others or holds no token stops
    /// the start-up with a message naming the key and the file.
    pub fn open(key: &'static str, path: &std::path::Path) -> Result<TokenFile, String> {
        let token = read_token(key, path)?;
        Ok(TokenFile {
            key,
            path: path.to_path_buf(),
            token: std::sync::RwLock::new(Ok(token)),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the file again (SIGHUP). On failure the token is unusable until a reload that
    /// succeeds; the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let read = read_token(self.key, &self.path);
        let result = read.as_ref().map(|_| ()).map_err(Clone::clone);
        match self.token.write() {
            Ok(mut t) => *t = read,
            Err(poisoned) => *poisoned.into_inner() = read,
        }
        result
    }

    /// `Ok` when the request carries this token as `Authorization: Bearer`.
    pub(crate) fn check(&self, req: &HttpRequest) -> Result<(), Box<HttpResponse>> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // RFC 9110: the scheme name is case-insensitive.
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let guard = match self.token.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let token = match &*guard {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(path = req.path(), error = %why, "request refused: the token file is unusable");
                return Err(Box::new(
                    ApiError::Unavailable(format!("{why}; fix it and reload (SIGHUP)")).response(),
                ));
            }
        };
        use subtle::ConstantTimeEq;
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Ok(());
        }
        tracing::warn!(path = req.path(), peer = ?req.peer_addr(), key = self.key, "request refused: missing or wrong bearer token");
        let mut refused = ApiError::Unauthorized("missing or wrong bearer token".into()).response();
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Err(Box::new(refused))
    }
}

/// The first line of a token file, trimmed; `key` names the setting in errors.
pub(crate) fn read_token(key: &str, path: &std::path::Path) -> Result<String, String> {
    // Like ssh with a private key: a secret others can read is no secret.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{key} {}: group or others may access it (mode {mode:04o}); \
                 make it readable by the service user only (chmod 600)",
                path.display()
            ));
        }
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{key} {}: the token must be at least 16 characters on the first line",
            path.display()
        ));
    }
    Ok(token)
}
