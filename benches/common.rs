//! Shared set-up for the benches: the bundled data and a trained default model.
// Each bench includes this module and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sentimentd_config::Config;
use sentimentd_model::kinds::fast::train::Quiet;
use sentimentd_model::pipeline::{self, TrainJob};
use sentimentd_model::{Classifier, ModelStore};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn config() -> Config {
    let mut cfg = Config::default();
    cfg.resolve_paths(&root());
    // Benches keep their own store so they never touch an operator's models.
    cfg.paths.model_store = std::env::var_os("SENTIMENTD_BENCH_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target-bench-store"));
    cfg
}

/// The fetched pretrained encoder: `$SENTIMENTD_PRETRAINED` (else
/// `~/.cache/sentimentd-pretrained`) + `all-minilm-l6-v2`, as scripts/test.sh fetches it.
pub fn pretrained_encoder_dir() -> PathBuf {
    std::env::var_os("SENTIMENTD_PRETRAINED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sentimentd-pretrained")
        })
        .join("all-minilm-l6-v2")
}

/// The bundled validation texts.
pub fn val_texts(cfg: &Config) -> Vec<String> {
    match sentimentd_data::load_dataset(
        std::slice::from_ref(&cfg.data.val),
        cfg.data.max_text_chars,
    ) {
        Ok(d) => d.texts,
        Err(e) => panic!("bundled validation data: {e}"),
    }
}

/// The current model of the bench store, training the default model first if there is none.
pub fn model(cfg: &Config) -> Arc<dyn Classifier> {
    let store = match ModelStore::open(&cfg.paths.model_store) {
        Ok(s) => s,
        Err(e) => panic!("bench model store: {e}"),
    };
    if let Ok(Some(m)) = store.load_current() {
        return m;
    }
    eprintln!(
        "no model in {}: training the default model once",
        cfg.paths.model_store.display()
    );
    let job = TrainJob {
        promote: true,
        ..TrainJob::default()
    };
    if let Err(e) = pipeline::train_and_store(cfg, &job, &mut Quiet) {
        panic!("training the bench model: {e}");
    }
    match store.load_current() {
        Ok(Some(m)) => m,
        other => panic!("bench model did not load: {:?}", other.err()),
    }
}
