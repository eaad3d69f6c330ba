//! sentimentd's configuration: the TOML schema with a default for every key, parsing with
//! errors that name file, line, column and key, and validation of ranges and paths.
//!
//! `config/sentimentd.toml` documents every key at its default value; a test keeps the two equal.

mod error;
mod locate;
pub mod reload;
mod schema;
mod validate;

pub use error::{ConfigError, Location, ValidationIssue};
pub use schema::{
    AdminConfig, Backend, ClassWeights, ClusterConfig, Config, DataConfig, DriftConfig,
    FeedbackConfig, FineTuneLayers, GateConfig, IngestConfig, LogFormat, LoggingConfig, LrDecay,
    ModelConfig, PathsConfig, Precision, ReputationConfig, RetrainConfig, ServerConfig,
    TrackingConfig, TrainConfig, TrainOnStart, TrainableKind, TransformerConfig,
};

/// Longest source name kept; a longer one is cut to this many characters.
pub const MAX_SOURCE_CHARS: usize = 100;
/// Source names the reputation view uses itself: untracked sources and rows without one.
pub const RESERVED_SOURCES: [&str; 2] = ["other", "unknown"];

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::de::DeTable;

impl Config {
    /// Parses and validates a TOML document. `origin` is only used in error messages.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let at = |offset: Option<usize>| {
            let (line, column) = match offset {
                Some(o) => {
                    let (l, c) = locate::line_column(text, o);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            Location {
                file: Some(origin.to_path_buf()),
                line,
                column,
            }
        };

        let doc = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            location: at(e.span().map(|s| s.start)),
            message: first_line(e.message()),
        })?;
        let root = doc.get_ref();

        let config = Config::deserialize(toml::de::Deserializer::from(doc.clone()))
            .map_err(|e| deserialize_error(&e, root, &at))?;

        let issues = validate::validate(&config);
        if issues.is_empty() {
            return Ok(config);
        }
        Err(ConfigError::Invalid {
            issues: issues
                .into_iter()
                .map(|mut issue| {
                    let span = locate::value_span(root, issue.key.split('[').next().unwrap_or(""));
                    issue.location = at(span.map(|s| s.start));
                    issue
                })
                .collect(),
        })
    }

    /// Reads, parses and validates a file; a missing file is an error naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// `None` means built-in defaults only: no implicit search for a file, so what runs is
    /// always what the command line says.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Ok(Config::default()),
        }
    }

    /// Checks ranges and consistency; reports every failed rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issues = validate::validate(self);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { issues })
        }
    }

    /// Settings that work against each other without being invalid one by one (a first
    /// retrain's holdout too small for the gate, a feedback limit retention cannot make room
    /// under): `config check` prints them and `serve` logs them at start and on reload.
    pub fn warnings(&self) -> Vec<ValidationIssue> {
        validate::advise(self)
    }

    /// Makes every relative path absolute against `base` (the daemon passes its working
    /// directory, so behaviour does not change if it later changes directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = validate::lexical(&base.join(&*p));
            }
        };
        fix(&mut self.paths.model_store);
        fix(&mut self.paths.state_dir);
        fix(&mut self.transformer.pretrained_dir);
        self.data.train.iter_mut().for_each(fix);
        fix(&mut self.data.val);
        if let Some(p) = self.data.lexicon.as_mut() {
            fix(p);
        }
        self.drift.reference.iter_mut().for_each(fix);
        if let Some(p) = self.admin.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.feedback.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.cluster.credentials_file.as_mut() {
            fix(p);
        }
        let g = &mut self.ingest;
        for p in [
            &mut g.inbox,
            &mut g.outbox,
            &mut g.archive,
            &mut g.rejected,
            &mut g.processing,
            &mut g.journal,
            &mut g.labelled_dir,
        ] {
            fix(p);
        }
    }

    /// The effective configuration as TOML (for `sentimentd config check`).
    pub fn to_toml_string(&self) -> String {
        // Serialising these plain structs cannot fail short of a non-UTF-8 path; say so in
        // the output rather than panic.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

fn deserialize_error(
    e: &toml::de::Error,
    root: &DeTable<'_>,
    at: &dyn Fn(Option<usize>) -> Location,
) -> ConfigError {
    let offset = e.span().map(|s| s.start);
    let location = at(offset);
    let message = first_line(e.message());
    let key = offset.and_then(|o| locate::key_at(root, o));

    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let section = match key.as_deref().and_then(|k| k.rsplit_once('.')) {
            Some((parent, _)) => format!("[{parent}]"),
            None => "the top level".to_string(),
        };
        return ConfigError::UnknownKey {
            location,
            key: name.to_string(),
            section,
            expected: backticked(tail),
        };
    }
    match key {
        Some(key) => ConfigError::InvalidValue {
            location,
            key,
            message,
        },
        None => ConfigError::Other { location, message },
    }
}

/// The names in serde's "expected one of `a`, `b`" tail.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
