//! What the model's test binaries share: the bundled data and a small, fast training setup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sentimentd_config::Config;

/// A bundled TweetEval split.
pub fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/datasets/tweeteval")
        .join(file)
}

/// The header and the first `rows` records of a bundled split (TweetEval texts are one line).
pub fn head(file: &str, rows: usize, out: &Path) {
    let text = std::fs::read_to_string(data(file)).unwrap();
    let lines: Vec<&str> = text.lines().take(rows + 1).collect();
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

/// `train` and `val` rows of the bundled splits written into `dir`, and a config that trains
/// a small fast model on them into a store in `dir`.
pub fn small_config(dir: &Path, train: usize, val: usize) -> Config {
    head("train.csv", train, &dir.join("train.csv"));
    head("val.csv", val, &dir.join("val.csv"));
    let mut cfg = Config::default();
    cfg.data.train = vec![dir.join("train.csv")];
    cfg.data.val = dir.join("val.csv");
    cfg.paths.model_store = dir.join("models");
    cfg.model.embedding_dim = 16;
    cfg.model.vocab_size = 2000;
    cfg.model.buckets = 4096;
    cfg.train.epochs = 2;
    cfg
}
