use std::path::PathBuf;

/// Everything the ML core can fail with. Messages name the file or version involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model at {path} is corrupt or incomplete: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A well-formed version this build cannot load (a newer format, another model kind).
    #[error("model version `{version}` cannot be loaded by this build: {reason}")]
    Unsupported { version: String, reason: String },
    #[error("model version `{0}` is not in the store")]
    UnknownVersion(String),
    #[error("the model store at {0} has no current model yet (run `sentimentd train`)")]
    NoCurrent(PathBuf),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("json: {0}")]
    Json(String),
    #[error("training: {0}")]
    Training(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error(transparent)]
    Data(#[from] sentimentd_data::DataError),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.into();
        move |source| ModelError::Io { path, source }
    }

    pub fn json(e: serde_json::Error) -> ModelError {
        ModelError::Json(e.to_string())
    }
}
