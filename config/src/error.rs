use std::fmt;
use std::path::PathBuf;

/// Where in a configuration file something was found. Every part is optional because
/// `Config::validate` on an in-memory config knows neither file nor line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: Option<u32>,
    /// 1-based, in characters.
    pub column: Option<u32>,
}

impl Location {
    pub fn is_known(&self) -> bool {
        self.file.is_some() || self.line.is_some()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("<config>")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// One failed validation rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationIssue {
    /// Dotted key, e.g. `train.learning_rate`.
    pub key: String,
    /// Reads as a sentence after the key, e.g. `must be > 0, got -1`.
    pub message: String,
    pub location: Location,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_known() {
            write!(f, "{}: ", self.location)?;
        }
        write!(f, "{} {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: TOML syntax error: {message}")]
    Syntax { location: Location, message: String },
    #[error(
        "{location}: unknown key `{key}` in {section} ({})",
        expected_list(expected)
    )]
    UnknownKey {
        location: Location,
        key: String,
        /// `[server]`, or `the top level`.
        section: String,
        expected: Vec<String>,
    },
    #[error("{location}: invalid value for `{key}`: {message}")]
    InvalidValue {
        location: Location,
        key: String,
        message: String,
    },
    /// A deserialisation error that could not be tied to a key.
    #[error("{location}: {message}")]
    Other { location: Location, message: String },
    /// Every failed validation rule, not just the first, so one `config check` shows them all.
    #[error("{}", join_issues(issues))]
    Invalid { issues: Vec<ValidationIssue> },
}

impl ConfigError {
    /// Location of the (first) problem, if known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { location, .. }
            | ConfigError::UnknownKey { location, .. }
            | ConfigError::InvalidValue { location, .. }
            | ConfigError::Other { location, .. } => Some(location),
            ConfigError::Invalid { issues } => issues.first().map(|i| &i.location),
        }
    }
}

fn expected_list(expected: &[String]) -> String {
    if expected.is_empty() {
        "this section has no keys".to_string()
    } else {
        format!("expected one of: {}", expected.join(", "))
    }
}

fn join_issues(issues: &[ValidationIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
