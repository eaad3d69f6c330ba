//! The transformer model kind through the CLI and the daemon: `sentimentd train --kind
//! transformer` on a slice of the bundled data with the fetched encoder, a store holding both
//! kinds (and a version written by the format-1 store), `/predict` served by the transformer,
//! and the clear errors for a missing or different encoder.
//!
//! Needs the encoder fetched by `scripts/fetch-pretrained.sh` into `$SENTIMENTD_PRETRAINED`
//! (or `~/.cache/sentimentd-pretrained`); `scripts/test.sh` does that first.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, pretrained_root};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The header and the first `rows` records of a bundled split (TweetEval texts are one line).
fn head(file: &str, skip: usize, rows: usize, out: &Path) {
    let text = std::fs::read_to_string(repo().join("data/datasets/tweeteval").join(file))
        .expect("bundled data");
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let body: Vec<&str> = lines.skip(skip).take(rows).collect();
    std::fs::write(out, format!("{header}\n{}\n", body.join("\n"))).expect("write slice");
}

/// Writes `(train, val)` rows of the bundled splits into `dir` and returns the `[data]`,
/// `[model]` and `[transformer]` sections that train the transformer kind on them, with
/// `tuning` added to `[transformer]`.
fn small_transformer(dir: &Path, rows: (usize, usize), pretrained: &Path, tuning: &str) -> String {
    head("train.csv", 0, rows.0, &dir.join("train.csv"));
    head("val.csv", 0, rows.1, &dir.join("val.csv"));
    format!(
        r#"[data]
train = ["{d}/train.csv"]
val = "{d}/val.csv"

[model]
kind = "transformer"
embedding_dim = 16
vocab_size = 2000
buckets = 4096

[transformer]
pretrained_dir = "{p}"
max_seq_len = 64
{tuning}
"#,
        d = dir.display(),
        p = pretrained.display()
    )
}

type Env = common::CliEnv;

impl Env {
    /// Small data and a short head run; `pretrained` is the encoders' directory.
    fn new(pretrained: &Path, extra: &str) -> Env {
        Env::sized(pretrained, extra, 700, 200)
    }

    /// The encoder stays frozen unless `extra` sets `finetune_layers`: the tests of other
    /// things need not pay for a fine-tuning recipe.
    fn sized(pretrained: &Path, extra: &str, train: usize, val: usize) -> Env {
        let frozen = if extra.contains("finetune_layers") {
            ""
        } else {
            "finetune_layers = 0\n"
        };
        Env::write(|d| {
            let sections = small_transformer(
                d,
                (train, val),
                pretrained,
                &format!("head_epochs = 150\n{frozen}{extra}"),
            );
            format!(
                r#"[paths]
model_store = "{d}/models"
state_dir = "{d}/state"

[train]
epochs = 2
threads = 1

{sections}
"#,
                d = d.display(),
            )
        })
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.success(args);
        // Progress and messages go to stderr, results to stdout: both are checked.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Standard output only, for the commands that print JSON.
    fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.success(args).stdout).to_string()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    fn current(&self) -> String {
        std::fs::read_to_string(self.root().join("models/current"))
            .expect("current")
            .trim()
            .to_string()
    }
}

fn validation_recall(manifest: &serde_json::Value) -> f64 {
    manifest["metrics"]["validation"]["macro_recall"]
        .as_f64()
        .expect("validation macro-recall")
}

fn manifest(env: &Env, version: &str) -> serde_json::Value {
    let path = env
        .root()
        .join("models/versions")
        .join(version)
        .join("manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("manifest")).expect("json")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn train_a_transformer_beside_fast_and_format1_versions_and_serve_it() {
    let env = Env::new(&pretrained_root(), "");
    // A store written by the format-1 code (before kinds were tagged) keeps loading, and
    // predicts exactly what that code predicted.
    let fixture = repo().join("model/tests/fixtures/store-format1");
    copy_dir(
        &fixture.join("versions"),
        &env.root().join("models/versions"),
    );
    std::fs::copy(fixture.join("current"), env.root().join("models/current")).expect("current");
    let old = env.current();
    let texts = [
        "I love this phone",
        "worst service ever",
        "the meeting is at noon",
    ];
    let mut args = vec!["predict", "--json"];
    args.extend(texts);
    let expected: Vec<serde_json::Value> =
        std::fs::read_to_string(fixture.join("predictions.jsonl"))
            .expect("fixture predictions")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
    let got: Vec<serde_json::Value> = env
        .stdout(&args)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(got, expected);

    // The transformer: the encoder's embeddings, a head, and the fast model averaged in.
    let out = env.ok(&["train"]);
    #[cfg(target_arch = "x86_64")]
    let bf16 = std::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let bf16 = false;
    let products = if bf16 {
        "(bf16 products;"
    } else {
        "(f32 products;"
    };
    for part in [
        products,
        "kind         transformer",
        "encoder      all-minilm-l6-v2",
        "ensemble     transformer",
        "weight fitted on the selection split",
    ] {
        assert!(out.contains(part), "{part:?} missing in\n{out}");
    }
    let version = env.current();
    assert_ne!(version, old);
    let m = manifest(&env, &version);
    assert_eq!(m["format"], 2);
    assert_eq!(m["kind"], "transformer");
    let t = &m["params"]["transformer"];
    assert_eq!(t["encoder"], "all-minilm-l6-v2");
    assert_eq!(t["max_seq_len"], 64);
    let weight = t["ensemble"]["weight"].as_f64().expect("ensemble weight");
    assert!((0.0..=1.0).contains(&weight), "{weight}");
    for file in ["head.safetensors", "weights.safetensors", "tokenizer.json"] {
        assert!(m["files"][file].is_string(), "{file} not in {}", m["files"]);
    }
    let recall = validation_recall(&m);
    // 700 training rows: far from the full-data figure, well above chance (1/3).
    assert!(recall > 0.5, "validation macro-recall {recall}");
    // Embeddings were cached: a second run on the same data computes none.
    assert!(out.contains("embeddings: 0 of "), "{out}");
    let cache = env.root().join("state/embeddings");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .expect("embedding cache")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one file per encoder in {}",
        cache.display()
    );
    let again = env.ok(&["train", "--no-promote"]);
    assert!(
        again.contains(" distinct texts were cached, 0 computed"),
        "{again}"
    );

    // `eval` through the serving path reproduces the stored validation figure.
    let eval = env.stdout(&["eval", "--json"]);
    let e: serde_json::Value = serde_json::from_str(&eval).expect("eval json");
    let again = e["macro_recall"].as_f64().expect("macro_recall");
    assert!((again - recall).abs() < 1e-9, "{again} vs {recall}");

    // Drift detection observes the encoder's sentence embeddings: the baseline holds 384
    // dimensions, and a check runs the embedding tests on them.
    let val = env.root().join("val.csv").display().to_string();
    let train = env.root().join("train.csv").display().to_string();
    env.ok(&["baseline", "--data", &val]);
    let path = env
        .root()
        .join("models/versions")
        .join(&version)
        .join("baseline.json");
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("baseline")).expect("json");
    assert_eq!(b["embedding_mean"].as_array().map(Vec::len), Some(384));
    let out = env.run(&["drift", "--json", "--data", &train]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("drift json");
    let embedding: Vec<&serde_json::Value> = report["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .filter(|t| t["family"] == "embedding")
        .collect();
    assert!(!embedding.is_empty(), "{report}");
    for t in embedding {
        assert!(t["skipped"].is_null(), "{t}");
    }

    // A fast version in the same store, by flag; all three list with their kinds.
    let out = env.ok(&["train", "--kind", "fast", "--no-promote"]);
    assert!(out.contains("kind         fast"), "{out}");
    let list = env.ok(&["model", "list"]);
    assert_eq!(list.matches(" fast ").count(), 2, "{list}");
    assert_eq!(list.matches(" transformer ").count(), 2, "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with('*') && l.contains(&version) && l.contains(" transformer ")),
        "{list}"
    );

    // The daemon serves the transformer, single texts and batches through the batcher.
    let extra = format!(
        "[transformer]\npretrained_dir = \"{}\"\nmax_wait_ms = 200\n",
        pretrained_root().display()
    );
    let mut d = Daemon::configure("", "", "", &extra);
    copy_dir(&env.root().join("models"), &d.root().join("models"));
    d.spawn(&[]);
    let r = d.predict(r#"{"text": "I love this phone, best purchase this year"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["model_version"], version.as_str(), "{j}");
    assert_eq!(j["label"], "positive", "{j}");
    let r = d.predict(r#"{"texts": ["worst customer service ever, never again", "the meeting is at noon", "I love it"]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let labels: Vec<String> = r.json()["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["label"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(labels, ["negative", "neutral", "positive"], "{}", r.body);
    let ready = d.get("/ready").json();
    assert_eq!(ready["kind"], "transformer", "{ready}");
    assert_eq!(ready["model_version"], version.as_str(), "{ready}");
    // Concurrent single requests are batched and each gets its own answer.
    let texts = [
        "I love it",
        "I hate it",
        "so happy today",
        "this is terrible",
    ];
    let before = common::metric_in(&d.get("/metrics").body, "sentiment_batched_texts_count");
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let d = &d;
                s.spawn(move || {
                    let r = d.predict(&format!(r#"{{"text": "{t}"}}"#));
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["label"].as_str().unwrap_or_default().to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request"))
            .collect()
    });
    assert_eq!(answers, ["positive", "negative", "positive", "negative"]);
    // Four requests arriving within max_wait_ms of each other went out in fewer chunks.
    let text = d.get("/metrics").body;
    let chunks = common::metric_in(&text, "sentiment_batched_texts_count") - before;
    assert!(
        (1.0..4.0).contains(&chunks),
        "{chunks} chunks for 4 requests\n{text}"
    );
}

#[test]
fn a_missing_or_different_encoder_is_a_clear_error() {
    // No encoder at all: training and config check name the fetch script.
    let empty = tempfile::tempdir().expect("temp dir");
    let env = Env::new(empty.path(), "");
    let err = env.fails(&["train"]);
    assert!(err.contains("scripts/fetch-pretrained.sh"), "{err}");
    let err = env.fails(&["config", "check"]);
    assert!(err.contains("scripts/fetch-pretrained.sh"), "{err}");
    let env = Env::new(empty.path(), "precision = \"f16\"");
    let err = env.fails(&["config", "check"]);
    assert!(err.contains("precision") && err.contains("f16"), "{err}");

    // A version refuses to load over an encoder other than the one it was trained on.
    let real = pretrained_root().join("all-minilm-l6-v2");
    let own = tempfile::tempdir().expect("temp dir");
    let enc = own.path().join("all-minilm-l6-v2");
    std::fs::create_dir_all(&enc).expect("mkdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(real.join(f), enc.join(f)).expect("copy encoder");
    }
    // (And the dense products in f32, as `precision = "f32"` asks, where the default would
    // use bf16 on a CPU with AVX512-BF16.)
    let env = Env::new(own.path(), "ensemble = false\nprecision = \"f32\"");
    let out = env.ok(&["train"]);
    assert!(!out.contains("ensemble "), "{out}");
    assert!(out.contains("(f32 products;"), "{out}");
    let version = env.current();
    assert!(env.ok(&["predict", "--json", "good"]).contains(&version));
    let config = std::fs::read_to_string(enc.join("config.json")).expect("config.json");
    std::fs::write(enc.join("config.json"), format!("{config}\n")).expect("edit");
    let err = env.fails(&["predict", "good"]);
    assert!(err.contains(&version), "{err}");
    assert!(err.contains("different"), "{err}");
    assert!(!err.contains("corrupt"), "{err}");
}

#[test]
fn a_fast_model_is_distilled_from_a_stored_transformer() {
    let env = Env::sized(&pretrained_root(), "", 400, 150);
    env.ok(&["train"]);
    let teacher = env.current();

    let out = env.ok(&["train", "--kind", "fast", "--teacher", &teacher]);
    for part in [
        "distillation: scoring the ".to_string(),
        format!("texts with the teacher {teacher} (transformer kind)"),
        format!("distilled    from {teacher}, teacher weight "),
    ] {
        assert!(out.contains(&part), "{part:?} missing in\n{out}");
    }
    let student = env.current();
    assert_ne!(student, teacher);
    let m = manifest(&env, &student);
    assert_eq!(m["kind"], "fast");
    let d = &m["params"]["fast"]["distill"];
    assert_eq!(d["teacher"], teacher.as_str());
    let trials = d["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 13, "{d}");
    // The kept mix is the best trial on the selection split (the first of equals).
    let score = |t: &serde_json::Value| t["selection_macro_recall"].as_f64().expect("score");
    let best = trials
        .iter()
        .fold(None::<&serde_json::Value>, |b, t| match b {
            Some(b) if score(b) >= score(t) => Some(b),
            _ => Some(t),
        })
        .expect("a trial");
    assert_eq!(d["mix"], best["mix"], "{d}");
    assert!(validation_recall(&m) > 0.45, "{m}");
    // It serves as any fast version does.
    let p = env.stdout(&["predict", "--json", "I love this so much"]);
    assert!(p.contains(&student), "{p}");

    assert!(!out.contains("another selection split"), "{out}");
    // A teacher trained on other data may have seen this run's selection rows: said.
    let val = env.root().join("val.csv").display().to_string();
    let other = env.ok(&[
        "train",
        "--kind",
        "fast",
        "--teacher",
        &teacher,
        "--data",
        &val,
        "--no-promote",
    ]);
    assert!(
        other.contains("was trained with another selection split"),
        "{other}"
    );

    // What cannot be done says why.
    let err = env.fails(&["train", "--kind", "fast", "--teacher", "v-none"]);
    assert!(err.contains("cannot load the teacher v-none"), "{err}");
    let err = env.fails(&["train", "--kind", "transformer", "--teacher", &teacher]);
    assert!(err.contains("train with --kind fast"), "{err}");
    assert_eq!(env.current(), student);
}

/// The files of the current version by name, with their checksums.
fn current_files(env: &Env) -> serde_json::Value {
    manifest(env, &env.current())["files"].clone()
}

#[test]
fn fine_tuning_killed_mid_epoch_resumes_to_the_result_of_an_uninterrupted_run() {
    let root = pretrained_root();
    let tuning = "ensemble = false\nfinetune_layers = 1\nfinetune_epochs = 2\n\
                  finetune_batch = 16\ncheckpoint_every_steps = 5\n";
    let whole = Env::sized(&root, tuning, 300, 100);
    let out = whole.ok(&["train"]);
    assert!(out.contains("fine-tuned   top 1 layers"), "{out}");
    assert!(!out.contains("resuming"), "{out}");
    let expected = current_files(&whole);
    assert!(
        expected["encoder_tuned.safetensors"].is_string(),
        "{expected}"
    );
    let m = manifest(&whole, &whole.current());
    assert_eq!(
        m["params"]["transformer"]["finetune"]["params"]["layers"],
        1
    );
    // The checkpoints go once the version is stored.
    let checkpoints = whole.root().join("state/finetune");
    let left = std::fs::read_dir(&checkpoints).map_or(0, |d| d.count());
    assert_eq!(left, 0, "{}", checkpoints.display());

    // The same job, killed after a checkpoint in the second epoch, then run again.
    let cut = Env::sized(&root, tuning, 300, 100);
    let mut child = common::with_config(&cut.config)
        .arg("train")
        .current_dir(cut.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn train");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.expect("line");
        let cue = line.starts_with("checkpoint: epoch 2, step 10 ");
        seen.push(line);
        if cue {
            break;
        }
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed, yet: {}", seen.join("\n"));
    assert!(
        seen.iter()
            .any(|l| l.starts_with("checkpoint: epoch 2, step 10 ")),
        "{}",
        seen.join("\n")
    );
    assert!(!cut.root().join("models/current").exists());
    let out = cut.ok(&["train"]);
    assert!(
        out.contains("resuming fine-tuning from the checkpoint")
            && out.contains("epoch 2, step 10"),
        "{out}"
    );
    let got = current_files(&cut);
    for file in ["encoder_tuned.safetensors", "head.safetensors"] {
        assert_eq!(got[file], expected[file], "{file} differs after the resume");
    }
    assert_eq!(
        validation_recall(&manifest(&cut, &cut.current())),
        validation_recall(&m)
    );
    // The epochs' record too, wall times aside.
    let history = |m: &serde_json::Value| -> Vec<serde_json::Value> {
        let mut h = m["params"]["transformer"]["finetune"]["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for e in &mut h {
            if let Some(o) = e.as_object_mut() {
                o.remove("seconds");
            }
        }
        h
    };
    assert_eq!(history(&manifest(&cut, &cut.current())), history(&m));
    assert_eq!(history(&m).len(), 2);
    // And the tuned version serves: `predict` loads the tuned layers over the pretrained ones.
    let p = cut.stdout(&["predict", "--json", "I love this so much"]);
    assert!(p.contains(&cut.current()), "{p}");
}

/// Labelled rows `skip..skip + rows` of the bundled training split, as `(text, label)`.
fn labelled(skip: usize, rows: usize) -> Vec<(String, String)> {
    let path = repo().join("data/datasets/tweeteval/train.csv");
    let mut r = csv::Reader::from_path(path).expect("bundled data");
    r.records()
        .skip(skip)
        .take(rows)
        .map(|rec| {
            let rec = rec.expect("record");
            (rec[0].to_string(), rec[1].to_string())
        })
        .collect()
}

#[test]
fn the_daemon_trains_retrains_and_gates_the_transformer_kind() {
    const TOKEN: &str = "transformer-admin-token-0123456789";
    let data = tempfile::tempdir().expect("temp dir");
    let d0 = data.path();
    common::write_secret(&d0.join("token"), &format!("{TOKEN}\n"));
    let sections = small_transformer(
        d0,
        (400, 200),
        &pretrained_root(),
        "head_epochs = 100\nfinetune_layers = 0",
    );
    let extra = format!(
        r#"{sections}

[drift]
enabled = false

[retrain]
min_new_rows = 50
threads = 1

[gate]
max_val_drop = 1.0
min_holdout_gain = -1.0
min_val_macro_recall = 0.0
min_holdout_rows = 5

[admin]
token_file = "{d}/token"
"#,
        d = d0.display(),
    );
    // No model yet: the daemon trains the configured kind at start.
    let d = Daemon::start_with("", "", "on_start = \"if-missing\"\nepochs = 2", &extra);
    d.wait_for("the first transformer", Duration::from_secs(300), || {
        let m = d.get("/model");
        m.status == 200 && m.json()["kind"] == "transformer"
    });
    let first = d.get("/model").json()["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Labelled feedback, then a retrain: the candidate is a transformer, judged by the gate.
    let items: Vec<serde_json::Value> = labelled(400, 120)
        .into_iter()
        .map(|(text, label)| serde_json::json!({ "text": text, "label": label }))
        .collect();
    let r = d.post_auth(
        "/feedback",
        TOKEN,
        &serde_json::json!({ "items": items }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = common::agent()
        .post(d.url("/admin/retrain"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send("")
        .expect("retrain request");
    assert_eq!(r.status().as_u16(), 202);
    d.wait_gate_decision(Duration::from_secs(300));
    d.assert_metrics(&[(r#"sentiment_retrains_total{outcome="promoted"}"#, 1.0)]);
    let m = d.get("/model").json();
    assert_eq!(m["kind"], "transformer", "{m}");
    // A retrain runs the configured recipe, and /model says so.
    assert_eq!(m["recipe"]["choice"], "configured", "{m}");
    assert_eq!(m["recipe"]["name"], "frozen encoder, head only", "{m}");
    let second = m["version"].as_str().unwrap_or_default().to_string();
    assert_ne!(second, first);
    let decision: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            d.root()
                .join("models/versions")
                .join(&second)
                .join("decision.json"),
        )
        .expect("decision"),
    )
    .expect("decision json");
    assert_eq!(decision["status"], "promoted", "{decision}");
    assert!(
        decision["details"]["candidate"]["validation"]["macro_recall"].is_number(),
        "{decision}"
    );
    let r = d.predict(r#"{"text": "what a wonderful day, I love it"}"#);
    assert_eq!(r.json()["model_version"], second.as_str(), "{}", r.body);
}

/// `finetune_layers = "auto"` (the default) runs the best measured recipe whose estimate fits
/// `time_budget_mins`: with a budget spent before fine-tuning could start, the frozen recipe;
/// with room, the top of the ladder. The output, the manifest and `/model` say which and why.
#[test]
fn the_auto_recipe_is_the_best_that_fits_the_time_budget_and_says_so() {
    let root = pretrained_root();
    // 0.6 s: less than any fine-tuning recipe is estimated to take, even on these few rows.
    let tight = Env::sized(
        &root,
        "finetune_layers = \"auto\"\ntime_budget_mins = 0.01\nensemble = false\n",
        120,
        60,
    );
    let out = tight.ok(&["train"]);
    for part in [
        "recipe (auto): frozen encoder, head only; time budget 0.01 min",
        "(does not fit)",
        "µs per token and tuned layer",
        "recipe       frozen encoder, head only, auto within a 0.01 min budget",
    ] {
        assert!(out.contains(part), "{part:?} missing in\n{out}");
    }
    assert!(!out.contains("fine-tuned   top"), "{out}");
    let m = manifest(&tight, &tight.current());
    let r = &m["params"]["transformer"]["recipe"];
    assert_eq!(r["choice"], "auto", "{r}");
    assert_eq!(r["layers"], 0, "{r}");
    assert!(
        r["budget_secs"]
            .as_f64()
            .is_some_and(|b| (b - 0.6).abs() < 1e-9),
        "{r}"
    );
    let candidates = r["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 4, "{r}");
    for c in &candidates[..3] {
        assert_eq!(c["fits"], false, "{r}");
        assert!(c["estimated_secs"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    }
    assert!(r["costs"]["train"].as_f64().is_some_and(|c| c > 0.0), "{r}");
    assert!(m["params"]["transformer"]["finetune"].is_null(), "{m}");

    // Room for everything: the ladder's first recipe, six layers for three epochs, runs.
    let roomy = Env::sized(
        &root,
        "finetune_layers = \"auto\"\nfinetune_batch = 16\nensemble = false\n",
        100,
        60,
    );
    let out = roomy.ok(&["train"]);
    for part in [
        "recipe (auto): fine-tune the top 6 layers for 3 epochs; time budget 30 min",
        "fine-tuned   top 6 layers",
        "recipe       fine-tune the top 6 layers for 3 epochs, auto within a 30 min budget \
         (estimated ",
    ] {
        assert!(out.contains(part), "{part:?} missing in\n{out}");
    }
    let version = roomy.current();
    let m = manifest(&roomy, &version);
    let t = &m["params"]["transformer"];
    assert_eq!(t["finetune"]["params"]["layers"], 6, "{t}");
    assert_eq!(
        t["finetune"]["history"].as_array().map(Vec::len),
        Some(3),
        "{t}"
    );
    assert!(t["recipe"]["stopped_early"].is_null(), "{t}");
    assert!(t["recipe"]["candidates"][0]["fits"] == true, "{t}");

    // The daemon serving it says which recipe made it.
    let extra = format!(
        "[transformer]\npretrained_dir = \"{}\"\nmax_seq_len = 64\n",
        root.display()
    );
    let mut d = Daemon::configure("", "", "", &extra);
    copy_dir(&roomy.root().join("models"), &d.root().join("models"));
    d.spawn(&[]);
    let m = d.get("/model").json();
    assert_eq!(m["version"], version.as_str(), "{m}");
    assert_eq!(m["recipe"]["choice"], "auto", "{m}");
    assert_eq!(m["recipe"]["layers"], 6, "{m}");
    assert_eq!(m["recipe"]["epochs"], 3, "{m}");
    assert!(
        m["recipe"]["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{m}"
    );
}
