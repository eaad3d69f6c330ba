//! Train on a small sample of the bundled data, store, reload, predict; the store's guarantees;
//! the pipeline's three splits.

mod common;

use std::collections::BTreeMap;

use sentimentd_data::{Dataset, Label, load_dataset};
use sentimentd_model::kinds::fast::FastFiles;
use sentimentd_model::kinds::fast::features::FeatureConfig;
use sentimentd_model::kinds::fast::train::{self, Backend, LrDecay, Quiet, TrainParams};
use sentimentd_model::manifest::{MANIFEST, TOKENIZER, WEIGHTS};
use sentimentd_model::pipeline::{self, TrainJob};
use sentimentd_model::store::NewVersion;
use sentimentd_model::{Classifier, ModelError, ModelStore};

use common::{data, small_config};

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
        threads: 0,
        distill: None,
    }
}

/// Training rows, a selection split from the same file (early stopping and temperature), and
/// rows of the reporting split, which no test lets select anything.
struct Sample {
    train_texts: Vec<String>,
    train_labels: Vec<Label>,
    sel_texts: Vec<String>,
    sel_labels: Vec<Label>,
    val_texts: Vec<String>,
    val_labels: Vec<Label>,
}

fn sample() -> Sample {
    let train = load_dataset(&[data("train.csv")], 1000).unwrap();
    let val = load_dataset(&[data("val.csv")], 1000).unwrap();
    Sample {
        train_texts: train.texts[..3000].to_vec(),
        train_labels: train.labels[..3000].to_vec(),
        sel_texts: train.texts[3000..3500].to_vec(),
        sel_labels: train.labels[3000..3500].to_vec(),
        val_texts: val.texts[..500].to_vec(),
        val_labels: val.labels[..500].to_vec(),
    }
}

fn train_sample(s: &Sample, params: &TrainParams) -> train::TrainOutcome {
    train::train(
        params,
        &s.train_texts,
        &s.train_labels,
        &s.sel_texts,
        &s.sel_labels,
        &mut Quiet,
    )
    .unwrap()
}

fn plain_metrics(
    o: &train::TrainOutcome,
    texts: &[String],
    labels: &[Label],
) -> sentimentd_model::EvalMetrics {
    let examples = train::featurize_all(&o.featurizer, texts, 0);
    let preds = train::argmax_labels(&train::predict_examples(&o.weights, &examples));
    sentimentd_model::EvalMetrics::compute(labels, &preds)
}

fn store_outcome(
    store: &ModelStore,
    s: &Sample,
    o: &train::TrainOutcome,
    params: &TrainParams,
) -> String {
    let mut metrics = BTreeMap::new();
    metrics.insert("selection".to_string(), o.selection_metrics.clone());
    metrics.insert(
        "validation".to_string(),
        plain_metrics(o, &s.val_texts, &s.val_labels),
    );
    store
        .save(NewVersion {
            model: &FastFiles {
                featurizer: &o.featurizer,
                weights: &o.weights,
                params,
            },
            data_fingerprint: "0123456789abcdef".into(),
            training_rows: 3000,
            metrics,
            history: o.history.clone(),
            best_epoch: o.best_epoch,
            train_seconds: o.seconds,
            splits: BTreeMap::new(),
            labelled_files: Vec::new(),
            weighting: None,
        })
        .unwrap()
        .version
}

#[test]
fn trains_saves_reloads_and_predicts_identically() {
    let s = sample();
    let params = small_params();
    let o = train_sample(&s, &params);
    // Better than always answering the majority class (macro-recall 1/3), on rows that
    // selected nothing.
    let reported = plain_metrics(&o, &s.val_texts, &s.val_labels);
    assert!(
        reported.macro_recall > 0.45,
        "macro-recall {}",
        reported.macro_recall
    );
    // The outcome's metrics are the selection split's, at the epoch it chose.
    assert_eq!(
        o.selection_metrics,
        plain_metrics(&o, &s.sel_texts, &s.sel_labels)
    );

    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::open(dir.path()).unwrap();
    assert!(store.current_version().unwrap().is_none());
    let version = store_outcome(&store, &s, &o, &params);
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
        sentimentd_model::kinds::fast::features::Featurizer::new(
            sentimentd_model::kinds::fast::text::TextPipeline::load(
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
    let m = sentimentd_model::EvalMetrics::compute(&s.val_labels, &preds);
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
    assert_eq!(a.selection_metrics, b.selection_metrics);
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
    let examples = train::featurize_all(&o.featurizer, &texts, 0);
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
    let good = store_outcome(&store, &s, &o, &params);
    store.set_current(&good).unwrap();
    let bad = store_outcome(&store, &s, &o, &params);
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

fn log_loss(probs: &[[f32; 3]], labels: &[Label]) -> f64 {
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, y)| -(p[y.index()].max(1e-12) as f64).ln())
        .sum();
    sum / probs.len() as f64
}

/// The temperature is fitted on the selection split; it must hold up on the reporting split,
/// which it never saw: expected calibration error (15 bins) and log-loss on all of val.csv are
/// no worse than with no scaling, and no label changes. The same check catches the classic
/// mistake of fitting on the training rows, which an overfitted model is overconfident on.
#[test]
fn temperature_fitted_on_selection_calibrates_unseen_data() {
    let s = sample();
    let val = load_dataset(&[data("val.csv")], 1000).unwrap();
    let ece = |w: &sentimentd_model::kinds::fast::model::Weights, o: &train::TrainOutcome| {
        let x = train::featurize_all(&o.featurizer, &val.texts, 0);
        let p = train::predict_examples(w, &x);
        let labels = train::argmax_labels(&p);
        (
            train::expected_calibration_error(&p, &val.labels, 15),
            log_loss(&p, &val.labels),
            labels,
        )
    };

    // Two epochs, as the defaults train.
    let mut params = small_params();
    params.epochs = 2;
    let o = train_sample(&s, &params);
    let mut raw = o.weights.clone();
    raw.temperature = 1.0;
    let sel = train::featurize_all(&o.featurizer, &s.sel_texts, 0);
    let (t, _, _) = train::fit_temperature(&raw, &sel, &s.sel_labels);
    assert_eq!(
        o.weights.temperature, t,
        "the stored temperature is the selection fit"
    );
    let (ece_t, loss_t, labels_t) = ece(&o.weights, &o);
    let (ece_1, loss_1, labels_1) = ece(&raw, &o);
    eprintln!(
        "T {t:.3} from the selection split; on val.csv: ECE {ece_1:.4} -> {ece_t:.4}, \
         log-loss {loss_1:.4} -> {loss_t:.4}"
    );
    assert!(
        ece_t <= ece_1 + 0.005 && loss_t <= loss_1 + 0.002,
        "T {t} made calibration worse on unseen data: ECE {ece_1:.4} -> {ece_t:.4}, \
         log-loss {loss_1:.4} -> {loss_t:.4}"
    );
    assert_eq!(labels_t, labels_1);

    // Fitted on the training rows of a model trained to memorise them, the check fails.
    params.epochs = 6;
    params.patience = 0;
    let o = train_sample(&s, &params);
    let mut raw = o.weights.clone();
    raw.temperature = 1.0;
    let train_x = train::featurize_all(&o.featurizer, &s.train_texts, 0);
    let (t_bad, _, _) = train::fit_temperature(&raw, &train_x, &s.train_labels);
    let mut bad = raw.clone();
    bad.temperature = t_bad;
    let (ece_bad, _, _) = ece(&bad, &o);
    let (ece_1, _, _) = ece(&raw, &o);
    assert!(
        ece_bad > ece_1 + 0.02,
        "T {t_bad} fitted on training rows: ECE {ece_1:.4} -> {ece_bad:.4}"
    );
}

#[test]
fn pipeline_selects_on_a_carved_split_and_reports_on_validation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 3000, 400);
    // Labelled rows from "serving", appended before the carve.
    let more = load_dataset(&[data("train.csv")], 1000).unwrap();
    let extra = Dataset::from_examples(
        more.texts[5000..5200].to_vec(),
        more.labels[5000..5200].to_vec(),
    );
    let job = TrainJob {
        extra: Some(extra),
        labelled_files: vec!["20260101T000000Z-batch-a.csv".into()],
        threads: Some(1),
        ..TrainJob::default()
    };
    let trained = pipeline::train_and_store(&cfg, &job, &mut Quiet).unwrap();
    let m = &trained.manifest;

    let (tr, sel, val) = (
        &m.splits["train"],
        &m.splits["selection"],
        &m.splits["validation"],
    );
    assert_eq!(tr.rows + sel.rows, 3200, "the carve keeps every row once");
    assert_eq!(m.training_rows, tr.rows);
    assert!((300..=340).contains(&sel.rows), "10% of 3200: {}", sel.rows);
    assert_eq!(sel.share, Some(0.1));
    assert_eq!(sel.seed, Some(42));
    assert!(
        sel.source.contains("10% of training data"),
        "{}",
        sel.source
    );
    assert!(tr.source.contains("200 labelled rows"), "{}", tr.source);
    assert_eq!(val.rows, 400);
    assert!(val.source.ends_with("val.csv"), "{}", val.source);
    assert_ne!(tr.fingerprint, sel.fingerprint);
    assert_eq!(m.labelled_files, job.labelled_files);
    assert_eq!(m.params.fast().map(|p| p.threads).unwrap(), 1);

    // Stratified: the selection split keeps the training data's label mix.
    let all = load_dataset(&cfg.data.train, 1000).unwrap();
    let mut all_labels = all.labels.clone();
    all_labels.extend(&more.labels[5000..5200]);
    let mask = pipeline::selection_mask(&all_labels, 0.1, 42);
    for label in Label::ALL {
        let n = all_labels.iter().filter(|&&l| l == label).count() as f64;
        let k = all_labels
            .iter()
            .zip(&mask)
            .filter(|&(&l, &s)| l == label && s)
            .count() as f64;
        assert!((k - 0.1 * n).abs() <= 1.0, "{label:?}: {k} of {n}");
    }
    assert_eq!(mask, pipeline::selection_mask(&all_labels, 0.1, 42));
    assert_ne!(mask, pipeline::selection_mask(&all_labels, 0.1, 43));

    // Early stopping looked at the selection split; its best epoch's score is the recorded one.
    let best = &m.history[m.best_epoch - 1];
    assert!(best.improved);
    assert_eq!(
        best.selection_macro_recall,
        m.metrics["selection"].macro_recall
    );

    // metrics["validation"] is what `eval` reproduces on the stored version.
    let store = ModelStore::open(&trained.store_root).unwrap();
    let loaded = store.load(&m.version).unwrap();
    let val_set = load_dataset(std::slice::from_ref(&cfg.data.val), 1000).unwrap();
    assert_eq!(
        pipeline::evaluate(loaded.as_ref(), &val_set),
        m.metrics["validation"]
    );
    assert_eq!(m.metrics["validation"].count, 400);
}

/// Versions written before splits, lineage and the selection rename still load.
#[test]
fn manifest_of_the_old_format_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), 3000, 400);
    let mut cfg = cfg;
    cfg.train.epochs = 1;
    let trained = pipeline::train_and_store(&cfg, &TrainJob::default(), &mut Quiet).unwrap();
    let store = ModelStore::open(&trained.store_root).unwrap();
    let version = trained.manifest.version;
    let path = store.version_dir(&version).join(MANIFEST);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("splits");
    obj.remove("labelled_files");
    // The oldest layout: format 1, untagged fast parameters, without `threads`.
    let mut params = obj.remove("params").unwrap()["fast"].clone();
    params.as_object_mut().unwrap().remove("threads");
    obj.insert("params".into(), params);
    obj.insert("format".into(), 1.into());
    for e in obj["history"].as_array_mut().unwrap() {
        let e = e.as_object_mut().unwrap();
        let r = e.remove("selection_macro_recall").unwrap();
        let a = e.remove("selection_accuracy").unwrap();
        e.insert("val_macro_recall".into(), r);
        e.insert("val_accuracy".into(), a);
    }
    let old = serde_json::to_string_pretty(&json).unwrap();
    assert!(old.contains("val_macro_recall") && !old.contains("splits"));
    assert!(!old.contains("\"fast\": {") && !old.contains("\"threads\""));
    std::fs::write(&path, old).unwrap();

    let m = store.manifest(&version).unwrap();
    assert!(m.splits.is_empty() && m.labelled_files.is_empty());
    assert_eq!(m.params.fast().map(|p| p.threads).unwrap(), 0);
    assert_eq!(
        m.history[0].selection_macro_recall,
        trained.manifest.history[0].selection_macro_recall
    );
    store.load(&version).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

/// A version of a kind or format this build cannot load is named as such, not as corrupt,
/// and never replaces the current model.
#[test]
fn a_version_of_an_unknown_kind_or_newer_format_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 3000, 400);
    cfg.train.epochs = 1;
    let trained = pipeline::train_and_store(&cfg, &TrainJob::default(), &mut Quiet).unwrap();
    let store = ModelStore::open(&trained.store_root).unwrap();
    let good = trained.manifest.version.clone();
    store.set_current(&good).unwrap();
    let job = TrainJob {
        promote: false,
        ..TrainJob::default()
    };
    let other = pipeline::train_and_store(&cfg, &job, &mut Quiet)
        .unwrap()
        .manifest
        .version;
    let path = store.version_dir(&other).join(MANIFEST);
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value, needle) in [
        ("kind", serde_json::json!("quantum"), "model kind `quantum`"),
        ("format", serde_json::json!(3), "newer sentimentd"),
    ] {
        let mut json = original.clone();
        json[key] = value;
        std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
        let err = store.load(&other).err().unwrap();
        assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.to_string().contains(&other), "{err}");
        assert!(store.set_current(&other).is_err());
        assert_eq!(store.current_version().unwrap().as_deref(), Some(&*good));
    }
    // A transformer manifest over a fast model's parameters is damaged, not unsupported.
    let mut json = original.clone();
    json["kind"] = serde_json::json!("transformer");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let err = store.load(&other).err().unwrap();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("parameters of kind fast"), "{err}");
    // Put back, it loads: the check judged the manifest, not the files.
    std::fs::write(&path, serde_json::to_string(&original).unwrap()).unwrap();
    store.load(&other).unwrap();
}

/// A version fetched from another node: installed only when every listed file matches its
/// checksum, with nothing unlisted, and never under a name that is a path.
#[test]
fn install_takes_a_checked_copy_of_another_stores_version_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path(), 3000, 400);
    cfg.train.epochs = 1;
    let trained = pipeline::train_and_store(&cfg, &TrainJob::default(), &mut Quiet).unwrap();
    let source = ModelStore::open(&trained.store_root).unwrap();
    let version = trained.manifest.version.clone();
    let target = ModelStore::open(&dir.path().join("other")).unwrap();
    let copy = |into: &std::path::Path| {
        std::fs::create_dir_all(into).unwrap();
        for e in std::fs::read_dir(source.version_dir(&version)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), into.join(e.file_name())).unwrap();
        }
    };
    assert!(target.staging_dir("../escape").is_err());
    assert!(target.staging_dir("a/b").is_err());

    // A weights file that does not match: refused, nothing installed.
    let staged = target.staging_dir(&version).unwrap();
    copy(&staged);
    std::fs::write(staged.join(WEIGHTS), b"tampered").unwrap();
    let err = target.install(&version, &staged).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    assert!(!target.version_dir(&version).exists());
    std::fs::remove_dir_all(&staged).unwrap();

    // An intact copy with a stray file and a manifest that lists a baseline not sent.
    copy(&staged);
    std::fs::write(staged.join("stray.bin"), b"unchecked").unwrap();
    let path = staged.join(MANIFEST);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["files"]["baseline.json"] = "00".into();
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let m = target.install(&version, &staged).unwrap();
    assert!(!m.files.contains_key("baseline.json"));
    let installed = target.version_dir(&version);
    assert!(!installed.join("stray.bin").exists());
    assert!(!staged.exists());
    let model = target.load(&version).unwrap();
    assert_eq!(model.version(), version);
    assert!(
        !target
            .manifest(&version)
            .unwrap()
            .files
            .contains_key("baseline.json")
    );
}
