//! Train on a small sample of the bundled data, store, reload, predict; the store's guarantees.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sentimentd_data::{Label, load_dataset};
use sentimentd_model::features::FeatureConfig;
use sentimentd_model::store::{MANIFEST, NewVersion, TOKENIZER, WEIGHTS};
use sentimentd_model::train::{self, Backend, LrDecay, Quiet, TrainParams};
use sentimentd_model::{Classifier, ModelError, ModelStore};

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/datasets/tweeteval")
        .join(file)
}

fn small_params() -> TrainParams {
    TrainParams {
        features: FeatureConfig {
            buckets: 4096,
            word_ngrams: 2,
            char_ngram_min: 3,
            char_ngram_max: 4,
            negation: true,
            lexicon_features: true,
            max_tokens: 128,
        },
        vocab_size: 2000,
        min_token_frequency: 2,
        embedding_dim: 16,
        hidden_dim: 0,
        epochs: 3,
        batch_size: 128,
        learning_rate: 0.02,
        lr_decay: LrDecay::Linear,
        weight_decay: 0.0,
        dropout: 0.0,
        patience: 2,
        seed: 7,
        balanced_class_weights: true,
        backend: Backend::Flex,
    }
}

struct Sample {
    train_texts: Vec<String>,
    train_labels: Vec<Label>,
    val_texts: Vec<String>,
    val_labels: Vec<Label>,
}

fn sample() -> Sample {
    let train = load_dataset(&[data("train.csv")], 1000).unwrap();
    let val = load_dataset(&[data("val.csv")], 1000).unwrap();
    Sample {
        train_texts: train.texts[..3000].to_vec(),
        train_labels: train.labels[..3000].to_vec(),
        val_texts: val.texts[..500].to_vec(),
        val_labels: val.labels[..500].to_vec(),
    }
}

fn train_sample(s: &Sample, params: &TrainParams) -> train::TrainOutcome {
    train::train(
        params,
        &s.train_texts,
        &s.train_labels,
        &s.val_texts,
        &s.val_labels,
        &mut Quiet,
    )
    .unwrap()
}

fn store_outcome(store: &ModelStore, o: &train::TrainOutcome, params: &TrainParams) -> String {
    let mut metrics = BTreeMap::new();
    metrics.insert("validation".to_string(), o.val_metrics.clone());
    store
        .save(NewVersion {
            featurizer: &o.featurizer,
            weights: &o.weights,
            params,
            data_fingerprint: "0123456789abcdef".into(),
            training_rows: 3000,
            metrics,
            history: o.history.clone(),
            best_epoch: o.best_epoch,
            train_seconds: o.seconds,
        })
        .unwrap()
        .version
}

#[test]
fn trains_saves_reloads_and_predicts_identically() {
    let s = sample();
    let params = small_params();
    let o = train_sample(&s, &params);
    // Better than always answering the majority class (macro-recall 1/3).
    assert!(
        o.val_metrics.macro_recall > 0.45,
        "macro-recall {}",
        o.val_metrics.macro_recall
    );

    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path()).unwrap();
    assert!(store.current_version().unwrap().is_none());
    let version = store_outcome(&store, &o, &params);
    store.set_current(&version).unwrap();
    assert_eq!(store.current_version().unwrap().as_deref(), Some(&*version));

    // The serving tokenizer agrees with the `tokenizers` crate on real tweets.
    let text = &o.featurizer.text;
    for t in s.val_texts.iter().chain(&s.train_texts) {
        assert_eq!(
            text.encode_ids(t),
            text.encode_ids_reference(t).unwrap(),
            "{t}"
        );
    }

    let loaded = store.load_current().unwrap().unwrap();
    assert_eq!(loaded.version(), version);
    let in_memory = sentimentd_model::FastModel::new(
        sentimentd_model::features::Featurizer::new(
            sentimentd_model::text::TextPipeline::load(
                &store.version_dir(&version).join(TOKENIZER),
            )
            .unwrap(),
            params.features.clone(),
        ),
        o.weights.clone(),
        "mem".into(),
    )
    .unwrap();
    for t in s.val_texts.iter().take(200) {
        let a = loaded.predict(t);
        let b = in_memory.predict(t);
        assert_eq!(a.probabilities, b.probabilities, "{t}");
        let e = loaded.embed(t).unwrap();
        assert_eq!(e.len(), params.embedding_dim);
    }
    // The stored metrics are the ones the reloaded model reproduces.
    let preds: Vec<Label> = s
        .val_texts
        .iter()
        .map(|t| loaded.predict(t).label)
        .collect();
    let m = sentimentd_model::Metrics::compute(&s.val_labels, &preds);
    let manifest = store.manifest(&version).unwrap();
    assert_eq!(
        m.confusion_matrix,
        manifest.metrics["validation"].confusion_matrix
    );
    assert!(
        store
            .version_dir(&version)
            .join("confusion_matrix.png")
            .exists()
    );
}

#[test]
fn same_seed_same_metrics() {
    let s = sample();
    let mut params = small_params();
    params.epochs = 2;
    let a = train_sample(&s, &params);
    let b = train_sample(&s, &params);
    assert_eq!(a.val_metrics, b.val_metrics);
    assert_eq!(a.weights, b.weights);
}

#[test]
fn plain_forward_matches_burn() {
    let s = sample();
    let mut params = small_params();
    params.epochs = 1;
    params.hidden_dim = 8;
    let o = train_sample(&s, &params);
    let texts: Vec<String> = s.val_texts[..64].to_vec();
    let burn_probs = train::burn_probabilities(&o, &params, &texts).unwrap();
    let examples = train::featurize_all(&o.featurizer, &texts);
    let plain = train::predict_examples(&o.weights, &examples);
    for (a, b) in burn_probs.iter().zip(&plain) {
        for k in 0..3 {
            assert!((a[k] - b[k]).abs() < 1e-5, "burn {a:?} plain {b:?}");
        }
    }
}

#[test]
fn corrupt_version_is_refused_and_current_is_kept() {
    let s = sample();
    let mut params = small_params();
    params.epochs = 1;
    let o = train_sample(&s, &params);
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path()).unwrap();
    let good = store_outcome(&store, &o, &params);
    store.set_current(&good).unwrap();
    let bad = store_outcome(&store, &o, &params);
    assert_ne!(good, bad);

    // Damaged weights: checksum mismatch.
    let w = store.version_dir(&bad).join(WEIGHTS);
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    std::fs::write(&w, &bytes).unwrap();
    let err = store.set_current(&bad).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(store.current_version().unwrap().as_deref(), Some(&*good));

    // Truncated manifest: a clear error, not a panic.
    std::fs::write(
        store.version_dir(&bad).join(MANIFEST),
        b"{\"format\": 1, \"vers",
    )
    .unwrap();
    let err = store.load(&bad).err().unwrap();
    assert!(err.to_string().contains("manifest.json"), "{err}");
    assert_eq!(store.current_version().unwrap().as_deref(), Some(&*good));

    // Unknown and path-like versions are refused.
    assert!(matches!(
        store.load("../../etc").err().unwrap(),
        ModelError::UnknownVersion(_)
    ));

    // A half-written version (temporary directory left by a crash) is not listed.
    std::fs::create_dir(dir.path().join("versions/.tmp-crashed")).unwrap();
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(listed, vec![good.clone()]);
    assert!(store.load_current().unwrap().is_some());
}

#[test]
fn temperature_scaling_lowers_log_loss_and_keeps_labels() {
    let s = sample();
    let params = small_params();
    let o = train_sample(&s, &params);
    let val = train::featurize_all(&o.featurizer, &s.val_texts);
    let mut raw = o.weights.clone();
    raw.temperature = 1.0;
    let (t, before, after) = train::fit_temperature(&raw, &val, &s.val_labels);
    assert!(
        t > 0.0 && after <= before,
        "t {t} before {before} after {after}"
    );
    assert_eq!(o.weights.temperature, t);
    let calibrated = train::argmax_labels(&train::predict_examples(&o.weights, &val));
    let uncalibrated = train::argmax_labels(&train::predict_examples(&raw, &val));
    assert_eq!(calibrated, uncalibrated);
}
