//! The CLI end to end: train, eval, predict, model list/show, config check, run as the real
//! binary on a temp directory with a small slice of the bundled data.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    common::sentimentd()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The header and the first `rows` records of a bundled split (TweetEval texts are one line).
fn head(file: &str, rows: usize, out: &Path) {
    let text = std::fs::read_to_string(repo().join("data/datasets/tweeteval").join(file)).unwrap();
    let lines: Vec<&str> = text.lines().take(rows + 1).collect();
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

type Env = common::CliEnv;

/// A small, fast training setup; the store lives in the temp dir.
fn small_env() -> Env {
    Env::write(|d| {
        head("train.csv", 3000, &d.join("train.csv"));
        head("val.csv", 400, &d.join("val.csv"));
        format!(
            r#"[paths]
model_store = "{d}/models"

[data]
train = ["{d}/train.csv"]
val = "{d}/val.csv"

[model]
embedding_dim = 16
vocab_size = 2000
buckets = 4096

[train]
epochs = 2
"#,
            d = d.display()
        )
    })
}

impl Env {
    /// Standard output of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(self.success(args).stdout).unwrap()
    }
}

fn current_version(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("models/current"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn train_eval_predict_and_inspect() {
    let env = small_env();

    let out = env.ok(&["train"]);
    assert!(out.contains("version"), "{out}");
    assert!(out.contains("macro-recall"), "{out}");
    assert!(out.contains("wall time"), "{out}");
    // Both splits are printed, and it says which one early stopping used.
    assert!(
        out.contains("early stopping on selection macro-recall"),
        "{out}"
    );
    assert!(out.contains("\nselection (picked the epoch"), "{out}");
    assert!(out.contains("\nvalidation (reporting split"), "{out}");
    let version = current_version(&env);
    assert!(out.contains(&version), "{out}");
    let vdir = env.dir.path().join("models/versions").join(&version);
    for f in [
        "manifest.json",
        "weights.safetensors",
        "tokenizer.json",
        "confusion_matrix.png",
    ] {
        assert!(vdir.join(f).exists(), "{f} missing");
    }

    // eval --json: the documented keys, and the numbers match the confusion matrix.
    let out_dir = env.dir.path().join("eval-out");
    let json = env.ok(&["eval", "--json", "--out", out_dir.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "accuracy",
        "macro_recall",
        "macro_f1",
        "per_class",
        "confusion_matrix",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {json}");
    }
    let cm = v["confusion_matrix"].as_array().unwrap();
    let total: u64 = cm
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 400);
    // `eval` on the reporting split reproduces what `train` recorded for it.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vdir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        v["confusion_matrix"],
        manifest["metrics"]["validation"]["confusion_matrix"]
    );
    assert!(out_dir.join("confusion_matrix.png").exists());
    assert!(out_dir.join("metrics.json").exists());
    let table = env.ok(&["eval"]);
    assert!(table.contains("confusion matrix"), "{table}");

    // predict: arguments, stdin, JSON.
    let out = env.ok(&["predict", "I love this so much", "worst day ever"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let mut child = common::with_config(&env.config)
        .args(["predict", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"great game tonight\nthis is awful\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for p in &lines {
        assert_eq!(p["model_version"], version.as_str());
        let probs = &p["probabilities"];
        let sum: f64 = ["negative", "neutral", "positive"]
            .iter()
            .map(|k| probs[k].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4);
        assert!(["negative", "neutral", "positive"].contains(&p["label"].as_str().unwrap()));
    }

    // predict --csv: good rows scored, bad rows reported with their line.
    let input = env.dir.path().join("batch.csv");
    std::fs::write(&input, "id,text\n1,great stuff\n2,\n3,\"awful, really\"\n").unwrap();
    let out = env.ok(&["predict", "--csv", input.to_str().unwrap()]);
    assert!(out.contains("scored   2 rows"), "{out}");
    let scored = std::fs::read_to_string(env.dir.path().join("batch.scored.csv")).unwrap();
    let mut lines = scored.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,text,label,score,p_negative,p_neutral,p_positive,model_version"
    );
    assert_eq!(lines.count(), 2);
    let errors = std::fs::read_to_string(env.dir.path().join("batch.scored.errors.csv")).unwrap();
    assert!(
        errors.contains("\n3,"),
        "line 3 is the empty text: {errors}"
    );

    // model list / show
    let list = env.ok(&["model", "list"]);
    assert!(list.contains(&format!("*  {version}")), "{list}");
    assert!(list.contains("sel-rec"), "{list}");
    let show = env.ok(&["model", "show", &version]);
    let m: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(m["version"], version.as_str());
    assert_eq!(m["kind"], "fast");
    assert!(m["metrics"]["validation"]["macro_recall"].as_f64().unwrap() > 0.4);
    assert!(m["metrics"]["selection"]["macro_recall"].as_f64().is_some());
    // The selection split is 10% of the 3000 training rows; the reporting split is val.csv.
    let splits = &m["splits"];
    let sel_rows = splits["selection"]["rows"].as_u64().unwrap();
    assert!((280..=320).contains(&sel_rows), "{splits}");
    assert_eq!(
        splits["train"]["rows"].as_u64().unwrap() + sel_rows,
        3000,
        "{splits}"
    );
    assert_eq!(m["training_rows"], splits["train"]["rows"]);
    assert_eq!(splits["validation"]["rows"], 400);
    assert_eq!(splits["selection"]["seed"], 42);
    assert_eq!(m["labelled_files"], serde_json::json!([]));
    let missing = env.run(&["model", "show", "no-such-version"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-version"));

    // A second training run records the first as its parent and becomes current.
    env.ok(&["train"]);
    let second = current_version(&env);
    assert_ne!(second, version);
    let show = env.ok(&["model", "show", &second]);
    let m: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(m["parent"], version.as_str());
}

#[test]
fn predict_without_a_model_uses_the_lexicon_fallback() {
    let env = small_env();
    let out = env.run(&["predict", "I love it"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("positive"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lexicon fallback"));
}

#[test]
fn train_reports_a_bad_data_file() {
    let env = small_env();
    let bad = env.dir.path().join("bad.csv");
    std::fs::write(&bad, "id,body\n1,hello\n").unwrap();
    let out = env.run(&["train", "--data", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv") && err.contains("text"), "{err}");
    assert!(!env.dir.path().join("models/current").exists());
    // A file that is not there: named once, its cause said once.
    let gone = env.dir.path().join("gone.csv");
    let out = env.run(&["eval", "--data", gone.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains("gone.csv"), "{err}");
    assert_eq!(line.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn config_check_names_file_line_and_key() {
    let env = small_env();
    let out = env.run(&["config", "check"]);
    assert!(out.status.success());
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("embedding_dim = 16"), "{effective}");

    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nport = 8080\nprot = 1\n").unwrap();
    let out = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3"), "{err}");
    assert!(err.contains("prot"), "{err}");

    // The labelled store in a folder the batch pipeline moves files through is refused,
    // whichever folder it is.
    for folder in ["processing", "outbox", "archive", "rejected", "inbox"] {
        std::fs::write(
            &bad,
            format!(
                "[ingest]\n{folder} = \"/srv/s/{folder}\"\nlabelled_dir = \"/srv/s/{folder}/labelled\"\n"
            ),
        )
        .unwrap();
        let out = env.run(&["config", "check", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "{folder}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ingest.labelled_dir") && err.contains(&format!("ingest.{folder}")),
            "{err}"
        );
    }

    std::fs::write(&bad, "[train]\nlearning_rate = -1\n").unwrap();
    let out = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train.learning_rate"), "{err}");

    // Every other command refuses a broken config too, before doing anything.
    let out = bin()
        .args(["--config", bad.to_str().unwrap(), "predict", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Settings that work against each other, spelt out by files of earlier versions (the old
    // shipped file's defaults): the check passes and says what will go wrong.
    let old = env.dir.path().join("old.toml");
    std::fs::write(
        &old,
        "[retrain]\nmin_new_rows = 200\n[admin]\ntoken_file = \"t\"\n\
         [feedback]\nmax_store_bytes = 1073741824\n",
    )
    .unwrap();
    let out = env.run(&["config", "check", old.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: retrain.min_new_rows")
            && err.contains("warning: feedback.max_store_bytes"),
        "{err}"
    );
}

/// `[logging] level` is checked with its key; the filter then comes from `--log` /
/// `SENTIMENTD_LOG`, else `RUST_LOG`, else the file.
#[test]
fn log_filter_is_checked_and_rust_log_sits_between_the_flag_and_the_file() {
    let env = Env::write(|d| {
        // A version directory without a manifest: `model list` warns that it skips it.
        std::fs::create_dir_all(d.join("models/versions/broken")).unwrap();
        format!(
            "[paths]\nmodel_store = \"{}/models\"\n\n[logging]\nlevel = \"error\"\n",
            d.display()
        )
    });
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[logging]\nlevel = \"info,foo=bogus\"\n").unwrap();
    let out = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2") && err.contains("logging.level"),
        "{err}"
    );

    let warning = "skipping unreadable model version";
    let list = |vars: &[(&str, &str)]| {
        let mut c = common::with_config(&env.config);
        c.args(["model", "list"]).current_dir(env.root());
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let file_only = list(&[]);
    assert!(file_only.status.success(), "{}", stderr(&file_only));
    assert!(
        !stderr(&file_only).contains(warning),
        "{}",
        stderr(&file_only)
    );
    let rust_log = list(&[("RUST_LOG", "warn")]);
    assert!(stderr(&rust_log).contains(warning), "{}", stderr(&rust_log));
    let flag = list(&[("RUST_LOG", "warn"), ("SENTIMENTD_LOG", "error")]);
    assert!(!stderr(&flag).contains(warning), "{}", stderr(&flag));
    let broken = list(&[("RUST_LOG", "info,foo=bogus")]);
    assert!(!broken.status.success());
    assert!(stderr(&broken).contains("RUST_LOG"), "{}", stderr(&broken));
    // The flag wins without RUST_LOG being parsed at all.
    let over = list(&[("RUST_LOG", "info,foo=bogus"), ("SENTIMENTD_LOG", "warn")]);
    assert!(over.status.success(), "{}", stderr(&over));
    // Nor read at all: a RUST_LOG that is not UTF-8 stops nothing the flag sets.
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b"info\xff")
    };
    let mut c = common::with_config(&env.config);
    c.args(["model", "list"]).current_dir(env.root());
    c.env("RUST_LOG", bytes).env("SENTIMENTD_LOG", "warn");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let alone = {
        let mut c = common::with_config(&env.config);
        c.args(["model", "list"]).current_dir(env.root());
        c.env("RUST_LOG", bytes).env_remove("SENTIMENTD_LOG");
        c.output().unwrap()
    };
    assert!(
        !alone.status.success() && stderr(&alone).contains("RUST_LOG is not valid UTF-8"),
        "{}",
        stderr(&alone)
    );
}

/// `publish --nats` uses `[cluster]` as a node does, so it validates it first even when
/// the file names no NATS server (which is what turns the section's checks on).
#[test]
fn publish_with_nats_validates_the_cluster_section_before_connecting() {
    let env = Env::write(|d| {
        std::fs::write(d.join("rows.csv"), "text\nhello\n").unwrap();
        "[cluster]\nduplicate_window_secs = 100000000000\n".to_string()
    });
    // Nothing listens on port 1: without the check, the command fails on connecting.
    let out = env.run(&[
        "publish",
        "--csv",
        "rows.csv",
        "--nats",
        "nats://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.duplicate_window_secs must be at most"),
        "{err}"
    );
    assert!(!err.contains("cannot connect"), "{err}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["predict", "--help"],
        vec!["model", "--help"],
        vec!["model", "list", "--help"],
        vec!["config", "check", "--help"],
        vec!["serve", "--help"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}
