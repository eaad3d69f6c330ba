//! Real-size figures of the frozen-encoder head (issue: transformer kind): embeds the bundled
//! TweetEval train and validation splits with all-MiniLM-L6-v2 (cached under
//! `target-bench-store/embeddings`), carves a selection split out of train (10 %, seeded), trains
//! the class-balanced logistic-regression head choosing its epoch on the selection split, and
//! reports macro-recall on selection and on the validation split (never used to select), with
//! wall times.
//!
//! `./scripts/fetch-pretrained.sh ~/.cache/sentimentd-pretrained` first, then
//! `cargo bench --bench transformer_head` (`SENTIMENTD_PRETRAINED`, `HEAD_L2`, `HEAD_LR`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use sentimentd_config::Backend;
use sentimentd_data::Label;
use sentimentd_model::kinds::transformer::encoder::SentenceEncoder;
use sentimentd_model::kinds::transformer::head::{HeadParams, LinearHead};
use sentimentd_model::kinds::transformer::model::EmbeddingCache;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let cfg = common::config();
    let dir = common::pretrained_encoder_dir();
    let enc = SentenceEncoder::load(&dir, 128, Backend::Flex).unwrap_or_else(|e| panic!("{e}"));
    let load = |paths: &[PathBuf]| {
        sentimentd_data::load_dataset(paths, cfg.data.max_text_chars)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let train = load(&cfg.data.train);
    let val = load(std::slice::from_ref(&cfg.data.val));
    let cache = common::root().join("target-bench-store/embeddings");
    let mut store = EmbeddingCache::open(&cache, &enc).unwrap_or_else(|e| panic!("{e}"));
    let mut embed = |name: &str, texts: &[String]| {
        let started = Instant::now();
        let mut last = Instant::now();
        let e = store
            .embed(&enc, texts, 32, |done, total| {
                if last.elapsed().as_secs() >= 10 || done == total {
                    last = Instant::now();
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "{name}: {done}/{total} texts, {rate:.0}/s, ETA {:.0} s",
                        (total - done) as f64 / rate.max(1e-9)
                    );
                }
            })
            .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "embedded {name}: {} texts in {:.1} s",
            texts.len(),
            started.elapsed().as_secs_f64()
        );
        e
    };
    let train_x = embed("train", &train.texts);
    let val_x = embed("val", &val.texts);

    // Selection split: every tenth example after a seeded shuffle of indices.
    let mut order: Vec<usize> = (0..train_x.len()).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let (mut tx, mut ty, mut sx, mut sy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, &i) in order.iter().enumerate() {
        if k % 10 == 0 {
            sx.push(train_x[i].clone());
            sy.push(train.labels[i]);
        } else {
            tx.push(train_x[i].clone());
            ty.push(train.labels[i]);
        }
    }
    let params = HeadParams {
        l2: env_f64("HEAD_L2", HeadParams::default().l2),
        learning_rate: env_f64("HEAD_LR", HeadParams::default().learning_rate),
        ..HeadParams::default()
    };
    let started = Instant::now();
    let (head, report) = LinearHead::train(&tx, &ty, &sx, &sy, &params, |epoch, score| {
        if epoch % 50 == 0 {
            eprintln!("epoch {epoch}: selection macro-recall {score:.4}");
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let val_metrics = head.evaluate(&val_x, &val.labels);
    let labels: Vec<Label> = val.labels.clone();
    println!(
        "head {params:?}: best epoch {} of {}, selection macro-recall {:.4}, trained in {seconds:.1} s",
        report.best_epoch, report.epochs_run, report.selection_macro_recall
    );
    println!(
        "validation ({} texts, never used to select): macro-recall {:.4}, accuracy {:.4}, macro-F1 {:.4}",
        labels.len(),
        val_metrics.macro_recall,
        val_metrics.accuracy,
        val_metrics.macro_f1
    );
}
