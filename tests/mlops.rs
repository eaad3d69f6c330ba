//! The MLOps loop through the real binary: drift checks on served traffic, feedback, the
//! admin API, drift-driven retraining through the gate, rejection of a bad candidate,
//! promotion and rollback under load, and hot reload of a version promoted from outside.
//!
//! Every daemon here trains a small model (a slice of the bundled tweets, small vocabulary
//! and table) in a second or two; the gate and drift checks use the full bundled reporting
//! split.

mod common;

use common::reviews::{reviews, reviews_csv};
use common::{Daemon, agent, names, read_csv};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn val_csv() -> PathBuf {
    repo().join("data/datasets/tweeteval/val.csv")
}

/// Header plus rows `skip..skip+rows` of a bundled split (TweetEval texts are one line each).
fn slice(file: &str, skip: usize, rows: usize) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("data/datasets/tweeteval").join(file))
        .expect("bundled data");
    let mut lines = text.lines();
    let header = lines.next().expect("header").to_string();
    std::iter::once(header)
        .chain(lines.skip(skip).take(rows).map(str::to_string))
        .collect()
}

/// Texts of the bundled validation split (column `text` is the first).
fn val_texts(n: usize) -> Vec<String> {
    let mut r = csv::Reader::from_path(val_csv()).expect("val.csv");
    r.records()
        .take(n)
        .map(|rec| rec.expect("record")[0].to_string())
        .collect()
}

struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    fn new() -> Data {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("train.csv"),
            slice("train.csv", 0, 4000).join("\n") + "\n",
        )
        .expect("train slice");
        common::write_secret(&dir.path().join("token"), &format!("{TOKEN}\n"));
        Data { dir }
    }

    /// `[data]`, `[model]` and the MLOps sections for a small, fast setup.
    fn sections(&self, drift: &str, retrain: &str, gate: &str, admin: bool) -> String {
        let d = self.dir.path();
        format!(
            r#"[data]
train = ["{train}"]
val = "{val}"

[model]
embedding_dim = 16
vocab_size = 3000
buckets = 8192

[drift]
window = 2000
min_samples = 300
check_every_samples = 500
min_check_interval_secs = 0
{timer}{drift}

[retrain]
threads = 1
{retrain}

[gate]
{gate}

{admin}
"#,
            train = d.join("train.csv").display(),
            val = val_csv().display(),
            // Checks by sample count only, unless the test sets a timer.
            timer = if drift.contains("check_every_secs") {
                ""
            } else {
                "check_every_secs = 3600\n"
            },
            admin = if admin {
                format!("[admin]\ntoken_file = \"{}\"", d.join("token").display())
            } else {
                String::new()
            }
        )
    }
}

/// A daemon that trains its small model at start, waited for until it serves it.
fn trained_daemon(data: &Data, drift: &str, retrain: &str, gate: &str) -> Daemon {
    let d = Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &data.sections(drift, retrain, gate, true),
    );
    wait_trained(&d);
    d
}

fn wait_trained(d: &Daemon) {
    d.wait_for(
        "the first model to be trained",
        Duration::from_secs(120),
        || {
            let m = d.get("/model");
            m.status == 200 && m.json()["fallback"] == false
        },
    );
}

fn admin_post(d: &Daemon, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = agent()
        .post(d.url(path))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body).expect("admin request");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn predict_batch(d: &Daemon, texts: &[String]) {
    for chunk in texts.chunks(200) {
        let body = serde_json::json!({ "texts": chunk }).to_string();
        let r = d.predict(&body);
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn model_version(d: &Daemon) -> String {
    d.get("/model").json()["version"]
        .as_str()
        .expect("version")
        .to_string()
}

fn run_log(d: &Daemon) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.root().join("state/runs/runs.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The run log once one of its records matches `wanted`: the tracker writes a record after the
/// event the API already shows.
fn run_log_with(
    d: &Daemon,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    d.wait_for(what, Duration::from_secs(30), || {
        run_log(d).iter().any(&wanted)
    });
    run_log(d)
}

#[test]
fn in_distribution_traffic_does_not_alarm_and_a_new_domain_does() {
    let data = Data::new();
    let d = trained_daemon(&data, "", "enabled = false", "");
    assert_eq!(d.get("/drift").status, 404, "no check has run yet");

    // Traffic like the reference data: a check runs after 500 observations, no drift.
    predict_batch(&d, &val_texts(600));
    d.wait_for("a drift check", Duration::from_secs(30), || {
        d.metric(r#"sentiment_drift_checks_total{outcome="no_drift"}"#) >= 1.0
            || d.metric(r#"sentiment_drift_checks_total{outcome="drift"}"#) >= 1.0
    });
    let report = d.get("/drift").json();
    assert_eq!(report["verdict"], "no_drift", "{report:#}");
    assert!(d.metric("sentiment_drift_score") < 1.0);

    // A new domain (product reviews) dominates the window: drift, with the tests that fired.
    let texts: Vec<String> = reviews(1500, 7).into_iter().map(|(t, _)| t).collect();
    predict_batch(&d, &texts);
    d.wait_for("drift to be detected", Duration::from_secs(30), || {
        d.metric(r#"sentiment_drift_checks_total{outcome="drift"}"#) >= 1.0
    });
    let report = d.get("/drift").json();
    assert_eq!(report["verdict"], "drift", "{report:#}");
    let fired: Vec<&str> = report["fired"]
        .as_array()
        .expect("fired")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        fired.iter().any(|t| ["mean_shift", "mmd"].contains(t)),
        "embedding drift fired: {fired:?}"
    );
    assert!(d.metric("sentiment_drift_score") >= 1.0);
    assert!(d.metric(r#"sentiment_drift_test_score{test="mmd"}"#) > 0.0);
    assert!(d.metric("sentiment_drift_last_check_timestamp_seconds") > 1.7e9);

    // The report is on disk as JSON and as a self-contained HTML page.
    let drift_dir = d.root().join("state/drift");
    let files = names(&drift_dir);
    assert!(files.iter().any(|f| f.ends_with(".html")), "{files:?}");
    assert!(files.contains(&"latest.json".to_string()), "{files:?}");
    let html = d.get("/drift/report.html");
    assert_eq!(html.status, 200);
    assert!(html.body.contains("<svg"), "inline charts");
    assert!(!html.body.contains("<script src"), "no external scripts");
    // Drift checks are in the run log.
    assert!(
        run_log(&d).iter().any(|r| r["kind"] == "drift_check"),
        "drift checks recorded"
    );
}

#[test]
fn feedback_is_stored_with_provenance_and_bad_feedback_is_refused() {
    let data = Data::new();
    // No token configured: nobody may post feedback.
    let without = Daemon::start_with("", "", "", &data.sections("", "", "", false));
    let one = r#"{"text": "the kettle leaks", "label": "negative", "source": "support"}"#;
    let r = without.post_auth("/feedback", TOKEN, one);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("[feedback] token_file"), "{}", r.body);
    drop(without);

    let d = Daemon::start_with("", "", "", &data.sections("", "", "", true));
    // Without the token (the admin one, no [feedback] token_file): 401, nothing stored.
    for _ in 0..3 {
        let r = d.post("/feedback", Some("application/json"), one);
        assert_eq!(r.status, 401, "{}", r.body);
        let r = d.post_auth("/feedback", "wrong-token-wrong-token", one);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert!(names(&d.root().join("labelled")).is_empty());
    let long_source = format!(
        r#"{{"text": "fine", "label": "positive", "source": "{}"}}"#,
        "s".repeat(201)
    );
    let r = d.post_auth("/feedback", TOKEN, &long_source);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("max_source_chars"), "{}", r.body);
    let r = d.post_auth(
        "/feedback",
        TOKEN,
        r#"{"text": "the kettle leaks", "label": "negative", "source": "support"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d.post_auth("/feedback", TOKEN,
        r#"{"items": [{"text": "love it", "label": "positive"}, {"text": "it is blue", "label": 1}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stored"], 2);
    // Refused, nothing stored, and the error names what is wrong as the client sent it.
    for (body, status, says) in [
        (r#"{"text": "x", "label": "great"}"#, 422, "label must be"),
        (
            r#"{"text": "   ", "label": "positive"}"#,
            422,
            "text is empty",
        ),
        (
            r#"{"items": [{"text": "ok", "label": "positive"}, {"text": " ", "label": 0}]}"#,
            422,
            "items[1].text is empty",
        ),
        (r#"{"items": []}"#, 422, "\"items\" is empty"),
        (r#"{"text": "x"}"#, 400, "missing field `label`"),
        (r#"{"label": "positive"}"#, 400, "missing field `text`"),
        (
            r#"{"text": "x", "label": "positive", "extra": 1}"#,
            400,
            "unknown field `extra`",
        ),
        (
            r#"{"text": "x", "label": "positive", "label": "negative"}"#,
            400,
            "duplicate field `label`",
        ),
        (
            r#"{"items": [{"text": 5, "label": "positive"}]}"#,
            400,
            "invalid type",
        ),
        (
            r#"{"items": [{"text": "fine", "label": "positive"}], "text": "other", "label": "negative"}"#,
            400,
            "not both",
        ),
        (r#"["meh", 1, null]"#, 400, "expected a JSON object"),
        (
            r#"{"items": [["great", "positive"]]}"#,
            400,
            "expected an object",
        ),
        (
            r#"{"text": "x", "label": "positive", "items": null}"#,
            400,
            "invalid type: null",
        ),
        ("not json", 400, "expected"),
    ] {
        let r = d.post_auth("/feedback", TOKEN, body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{body}: {error}");
        assert!(!error.contains("untagged"), "{body}: {error}");
        // A single row's fields are named as sent, not as `items[0]`.
        assert!(
            body.contains("items") || !error.contains("items["),
            "{body}: {error}"
        );
    }
    let dir = d.root().join("labelled");
    let files = names(&dir);
    assert_eq!(files.len(), 2, "one immutable file per request: {files:?}");
    let rows: Vec<Vec<String>> = files
        .iter()
        .flat_map(|f| read_csv(&dir.join(f)).into_iter().skip(1))
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0][..5],
        ["the kettle leaks", "negative", "support", "feedback", "1"]
    );
    assert_eq!(rows[2][..2], ["it is blue", "neutral"]);
    assert_eq!(d.metric("sentiment_feedback_rows_total"), 3.0);
}

#[test]
fn admin_api_needs_the_token_and_is_absent_without_one() {
    let data = Data::new();
    let without = Daemon::start_with("", "", "", &data.sections("", "", "", false));
    let (status, body) = admin_post(&without, "/admin/rollback", Some(TOKEN), "");
    assert_eq!(status, 404, "{body}");
    drop(without);

    let d = Daemon::start_with("", "", "", &data.sections("", "", "", true));
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let (status, body) = admin_post(&d, "/admin/retrain", token, "");
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    // Authorised, but nothing to roll back to and too few labelled rows: 409 with the reason.
    let (status, body) = admin_post(&d, "/admin/rollback", Some(TOKEN), "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no earlier version"), "{body}");
    // The scheme's name is case-insensitive (RFC 9110); another scheme is refused.
    for (header, want) in [
        (format!("bearer {TOKEN}"), 409),
        (format!("BEARER  {TOKEN}"), 409),
        (format!("Basic {TOKEN}"), 401),
    ] {
        let r = agent()
            .post(d.url("/admin/rollback"))
            .header("authorization", &header)
            .send("")
            .expect("admin request");
        assert_eq!(r.status().as_u16(), want, "{header}");
    }
    let (status, body) = admin_post(&d, "/admin/retrain", Some(TOKEN), "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("new labelled rows"), "{body}");
    assert_eq!(
        d.metric(r#"sentiment_retrains_total{outcome="skipped"}"#),
        1.0
    );
    let (status, body) = admin_post(&d, "/admin/promote", Some(TOKEN), r#"{"version": "../x"}"#);
    assert_eq!(status, 409, "{body}");
}

#[test]
fn a_token_file_others_can_read_stops_the_start_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let data = Data::new();
    let token = data.dir.path().join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut d = Daemon::configure("", "", "", &data.sections("enabled = false", "", "", true));
    d.spawn_no_wait(&[]);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = d.logs();
    assert!(
        logs.contains("token_file") && logs.contains("0644") && logs.contains("chmod 600"),
        "{logs}"
    );
}

#[test]
fn drift_on_labelled_batches_retrains_passes_the_gate_and_promotes() {
    let data = Data::new();
    // The holdout gain rule is the default (+0.02); the reporting-split rule is loosened to
    // 0.03 because this model is trained on 4,000 tweets, where adding a new domain moves the
    // reporting score by more noise than a full-size model sees.
    // Checks run every second, and a retrain needs all three batches' 1,200 labelled rows:
    // whichever check first sees them all starts it, so the candidate's data is always the same.
    let d = trained_daemon(
        &data,
        "check_every_secs = 1",
        "min_new_rows = 1000",
        "max_val_drop = 0.03",
    );
    let before = model_version(&d);

    // Labelled batches from a domain the model never saw arrive through the inbox.
    let batches = [11u64, 12, 13].into_iter().enumerate().map(|(i, seed)| {
        let csv = reviews_csv(400, seed, &format!("r{i}"));
        (format!("reviews-{i}.csv"), csv)
    });
    feed_until_promoted(&d, batches, Duration::from_secs(180));
    assert!(d.metric(r#"sentiment_drift_checks_total{outcome="drift"}"#) >= 1.0);
    let after = model_version(&d);
    assert_ne!(after, before);
    let model = d.get("/model").json();
    assert_eq!(model["parent"], before.as_str());
    assert_eq!(model["fallback"], false);

    // The new version: lineage, decision with both models' metrics, and a new baseline that
    // took in the recent labelled texts.
    let vdir = d.root().join("models/versions").join(&after);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(
        manifest["labelled_files"].as_array().map(Vec::len),
        Some(3),
        "{manifest:#}"
    );
    let decision: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("decision.json")).expect("decision"))
            .expect("decision json");
    assert_eq!(decision["status"], "promoted", "{decision:#}");
    assert!(decision["details"]["candidate"]["recent_holdout"]["macro_recall"].is_number());
    assert!(decision["details"]["serving"]["validation"]["macro_recall"].is_number());
    // The file is written first and the manifest that checksums it right after.
    let listed = || {
        std::fs::read(vdir.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| m["files"]["baseline.json"].is_string())
    };
    d.wait_for("the new baseline", Duration::from_secs(30), || {
        vdir.join("baseline.json").exists() && listed()
    });
    let baseline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("baseline.json")).expect("baseline"))
            .expect("baseline json");
    assert!(
        baseline["reference"]
            .as_array()
            .expect("reference")
            .iter()
            .any(|r| r.as_str().is_some_and(|s| s.contains("recent labelled"))),
        "{}",
        baseline["reference"]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert!(
        manifest["files"]["baseline.json"].is_string(),
        "checksummed: {manifest:#}"
    );
    // The history and the run log say what happened.
    let history = std::fs::read_to_string(d.root().join("models/history.jsonl")).expect("history");
    assert!(history.contains("\"action\":\"gate\""), "{history}");
    run_log_with(&d, "the promoted training run in the run log", |r| {
        r["kind"] == "training" && r["tags"]["decision"] == "promoted"
    });

    // Rollback puts the previous version back, through the same swap path.
    let (status, body) = admin_post(&d, "/admin/rollback", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(model_version(&d), before);
    assert_eq!(d.metric("sentiment_model_rollbacks_total"), 1.0);
}

/// Rows `skip..skip+rows` of the bundled SST-2 phrases (movie reviews) of five words or more,
/// in file order, as a labelled CSV; with `swap`, negative and positive swapped.
fn sst2_csv(skip: usize, rows: usize, swap: bool) -> String {
    let mut r = csv::Reader::from_path(repo().join("data/datasets/sst2/train.csv")).expect("sst2");
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["text", "label"]).expect("header");
    for rec in r
        .records()
        .map(|rec| rec.expect("record"))
        .filter(|rec| rec[0].split_whitespace().count() >= 5)
        .skip(skip)
        .take(rows)
    {
        let label = match (&rec[1], swap) {
            ("negative", true) => "positive",
            ("positive", true) => "negative",
            (l, _) => l,
        };
        w.write_record([&rec[0], label]).expect("row");
    }
    String::from_utf8(w.into_inner().expect("csv")).expect("utf-8")
}

/// Drops each `(name, csv)` of labelled rows into the inbox, one after the other, then waits
/// for the drift they cause to retrain and promote a candidate.
fn feed_until_promoted(
    d: &Daemon,
    batches: impl Iterator<Item = (String, String)>,
    within: Duration,
) {
    for (name, csv) in batches {
        d.drop_file(&name, csv.as_bytes());
        d.wait_processed(&name, Duration::from_secs(60));
    }
    d.wait_for("drift, a retrain and a promotion", within, || {
        d.metric(r#"sentiment_retrains_total{outcome="promoted"}"#) >= 1.0
    });
}

/// `sentimentd eval --json` macro-recall of `version` on `data`.
fn eval_recall(config: &Path, version: &str, data: &Path) -> f64 {
    let out = cli_ok(
        config,
        &[
            "eval",
            "--model",
            version,
            "--data",
            &data.to_string_lossy(),
            "--json",
        ],
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval json");
    m["macro_recall"].as_f64().expect("macro_recall")
}

#[test]
fn a_retrain_learns_a_drifted_domain_and_shows_what_each_part_weighed() {
    let data = Data::new();
    // As in the test above, the reporting-split rule allows 0.03 for this 4,000-tweet model;
    // the recent weights and their tolerance are the defaults.
    let d = trained_daemon(
        &data,
        "check_every_secs = 1",
        "min_new_rows = 800",
        "max_val_drop = 0.03",
    );
    let before = model_version(&d);
    // Labelled movie-review phrases, a real domain the tweets do not cover.
    let batches = (0..3).map(|i| (format!("sst2-{i}.csv"), sst2_csv(i * 300, 300, false)));
    feed_until_promoted(&d, batches, Duration::from_secs(240));
    let after = model_version(&d);
    assert_ne!(after, before);

    // /model: what each part of the serving version's data weighed, how the weight was
    // chosen, and the candidate with the gate's reasons.
    let model = d.get("/model").json();
    let parts = model["weighting"]["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{model:#}");
    assert_eq!(parts[0]["name"], "base");
    assert_eq!(parts[1]["name"], "recent");
    // 900 rows less the 20% holdout, less the 10% selection carve.
    assert_eq!(parts[1]["train_rows"].as_u64(), Some(648), "{model:#}");
    let weight = parts[1]["row_weight"].as_f64().expect("row_weight");
    let trials = model["weighting"]["trials"].as_array().expect("trials");
    assert!(!trials.is_empty(), "{model:#}");
    let kept: Vec<_> = trials.iter().filter(|t| t["chosen"] == true).collect();
    assert_eq!(kept.len(), 1, "{model:#}");
    assert_eq!(kept[0]["row_weight"].as_f64(), Some(weight));
    let candidate = &model["candidates"][0];
    assert_eq!(candidate["version"], after.as_str(), "{model:#}");
    assert_eq!(candidate["status"], "promoted");
    assert_eq!(candidate["against"], before.as_str());
    assert!(
        candidate["reason"]
            .as_str()
            .is_some_and(|r| r.contains("PASS recent-holdout")),
        "{candidate:#}"
    );
    assert_eq!(candidate["weighting"], model["weighting"]);
    assert!(candidate["gate_sets"]["recent_holdout"]["candidate"].is_number());

    // The new version learned the domain: on SST-2 dev, sentences no dropped row comes from,
    // it beats the version it replaced, and it kept its tweets.
    let dev = repo().join("data/datasets/sst2/dev.csv");
    let (old_dev, new_dev) = (
        eval_recall(&d.config, &before, &dev),
        eval_recall(&d.config, &after, &dev),
    );
    assert!(
        new_dev >= old_dev + 0.05,
        "SST-2 dev {old_dev} -> {new_dev}"
    );
    let (old_val, new_val) = (
        eval_recall(&d.config, &before, &val_csv()),
        eval_recall(&d.config, &after, &val_csv()),
    );
    assert!(
        new_val >= old_val - 0.03,
        "reporting split {old_val} -> {new_val}"
    );

    // `sentimentd runs` says it too.
    let out = cli(&d.config, &["runs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("decision=promoted")
            && l.contains(&format!("recent_row_weight={weight:.3}"))
            && l.contains("recent_weight_share=")),
        "{text}"
    );
}

/// Asks for a retrain through the admin API and waits for the gate, which must reject.
fn retrain_and_expect_rejection(d: &Daemon) {
    let (status, body) = admin_post(d, "/admin/retrain", Some(TOKEN), "");
    assert_eq!(status, 202, "{body}");
    d.wait_gate_decision(Duration::from_secs(180));
    d.assert_metrics(&[(r#"sentiment_retrains_total{outcome="rejected"}"#, 1.0)]);
}

#[test]
fn swapped_labels_of_a_new_domain_are_refused_by_the_gate() {
    let data = Data::new();
    // Default gate rules. Swapped labels of a domain the tweets do not cover leave the
    // reporting split nearly untouched and the holdout is swapped too, so only the
    // label-agreement rule can tell.
    let d = trained_daemon(&data, "enabled = false", "min_new_rows = 300", "");
    let before = model_version(&d);
    d.drop_file("poison.csv", sst2_csv(0, 900, true).as_bytes());
    d.wait_processed("poison.csv", Duration::from_secs(60));
    retrain_and_expect_rejection(&d);
    assert_eq!(model_version(&d), before, "still serving the old model");
    let model = d.get("/model").json();
    let candidate = &model["candidates"][0];
    assert_eq!(candidate["status"], "rejected", "{model:#}");
    let reason = candidate["reason"].as_str().expect("reason");
    assert!(reason.contains("FAIL recent labels agree"), "{reason}");

    // Rejected means never served unless the operator insists: by the API or the CLI.
    let version = candidate["version"].as_str().expect("version").to_string();
    let body = format!(r#"{{"version": "{version}"}}"#);
    let (status, answer) = admin_post(&d, "/admin/promote", Some(TOKEN), &body);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.contains("rejected by the gate") && answer.contains("force"),
        "{answer}"
    );
    let out = cli(&d.config, &["model", "promote", &version]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--force"), "{err}");
    assert_eq!(model_version(&d), before);
    let body = format!(r#"{{"version": "{version}", "force": true}}"#);
    let (status, answer) = admin_post(&d, "/admin/promote", Some(TOKEN), &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(model_version(&d), version);
}

#[test]
fn a_candidate_trained_on_wrong_labels_is_rejected_and_never_served() {
    let data = Data::new();
    // The reporting-split rule on its own: recent rows weigh like base rows (no weight is
    // searched, which with the default list keeps such rows light enough to do no harm) and
    // the label-agreement rule is off; the other rules are the defaults.
    let d = trained_daemon(
        &data,
        "enabled = false",
        "min_new_rows = 300\nrecent_weights = [1.0]",
        "min_label_agreement = 0.0",
    );
    let before = model_version(&d);
    // 2,000 tweets the model has not seen, every label rotated (negative -> neutral ->
    // positive -> negative).
    let rows = slice("train.csv", 4000, 2000);
    let mut wrong = String::from("id,text,label\n");
    let joined = rows.join("\n");
    let mut r = csv::Reader::from_reader(joined.as_bytes());
    for (i, rec) in r.records().enumerate() {
        let rec = rec.expect("record");
        let rotated = match &rec[1] {
            "negative" | "0" => "neutral",
            "neutral" | "1" => "positive",
            _ => "negative",
        };
        wrong.push_str(&format!(
            "w{i},\"{}\",{rotated}\n",
            rec[0].replace('"', "\"\"")
        ));
    }
    d.drop_file("wrong.csv", wrong.as_bytes());
    d.wait_processed("wrong.csv", Duration::from_secs(60));
    retrain_and_expect_rejection(&d);
    assert_eq!(model_version(&d), before, "still serving the old model");
    let store = d.root().join("models");
    assert_eq!(
        std::fs::read_to_string(store.join("current"))
            .expect("current")
            .trim(),
        before
    );
    // The rejected candidate stays on disk, marked rejected, with the failed rule.
    let rejected: Vec<String> = names(&store.join("versions"))
        .into_iter()
        .filter(|v| v != &before)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let decision: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            store
                .join("versions")
                .join(&rejected[0])
                .join("decision.json"),
        )
        .expect("decision"),
    )
    .expect("decision json");
    assert_eq!(decision["status"], "rejected");
    let reason = decision["reason"].as_str().expect("reason");
    assert!(reason.contains("FAIL reporting-split"), "{reason}");
    let cand = decision["details"]["candidate"]["validation"]["macro_recall"]
        .as_f64()
        .expect("candidate");
    let serving = decision["details"]["serving"]["validation"]["macro_recall"]
        .as_f64()
        .expect("serving");
    assert!(
        cand < serving - 0.01,
        "candidate {cand} vs serving {serving}"
    );
}

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    common::with_config(config)
        .args(args)
        .output()
        .expect("run sentimentd")
}

/// [`cli`] for a command that must succeed.
fn cli_ok(config: &Path, args: &[&str]) -> std::process::Output {
    let out = cli(config, args);
    common::assert_success(args, &out);
    out
}

/// The serving version, and a second one trained into the same store by the CLI (not current).
fn serving_and_second_version(d: &Daemon) -> (String, String) {
    let v1 = model_version(d);
    cli_ok(&d.config, &["train", "--no-promote"]);
    let v2 = names(&d.root().join("models/versions"))
        .into_iter()
        .find(|v| v != &v1)
        .expect("second version");
    (v1, v2)
}

#[test]
fn promotion_and_rollback_under_load_fail_no_request() {
    let data = Data::new();
    let d = trained_daemon(&data, "enabled = false", "enabled = false", "");
    let (v1, v2) = serving_and_second_version(&d);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let url = d.url("/predict");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let mut versions = Vec::new();
                let mut failures = Vec::new();
                let mut i = 0u64;
                // Bounded: at most 60 s or until told to stop.
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(60)
                {
                    i += 1;
                    let body = format!(r#"{{"text": "worker {w} request {i} is great"}}"#);
                    match agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.as_str())
                    {
                        Ok(mut r) if r.status().as_u16() == 200 => {
                            let v: serde_json::Value = serde_json::from_str(
                                &r.body_mut().read_to_string().unwrap_or_default(),
                            )
                            .unwrap_or_default();
                            let version = v["model_version"].as_str().unwrap_or("").to_string();
                            if versions.last() != Some(&version) {
                                versions.push(version);
                            }
                        }
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (versions, failures, i)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = admin_post(
        &d,
        "/admin/promote",
        Some(TOKEN),
        &format!(r#"{{"version": "{v2}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = admin_post(&d, "/admin/rollback", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (versions, failures, n) = w.join().expect("worker");
        total += n;
        assert!(
            failures.is_empty(),
            "failed requests during swaps: {failures:?}"
        );
        assert_eq!(
            versions,
            [v1.clone(), v2.clone(), v1.clone()],
            "versions seen in order"
        );
    }
    assert!(total > 100, "load was applied ({total} requests)");
    assert_eq!(model_version(&d), v1);
}

#[test]
fn a_version_promoted_from_outside_is_hot_reloaded_and_a_broken_one_is_refused() {
    let data = Data::new();
    let d = trained_daemon(&data, "enabled = false", "enabled = false", "");
    let (v1, v2) = serving_and_second_version(&d);
    cli_ok(&d.config, &["model", "promote", &v2]);
    d.wait_for("the daemon to swap in v2", Duration::from_secs(20), || {
        model_version(&d) == v2
    });
    cli_ok(&d.config, &["model", "rollback"]);
    d.wait_for(
        "the daemon to swap v1 back in",
        Duration::from_secs(20),
        || model_version(&d) == v1,
    );

    // A damaged version made current behind the daemon's back is refused; serving goes on.
    let weights = d
        .root()
        .join("models/versions")
        .join(&v2)
        .join("weights.safetensors");
    std::fs::write(&weights, b"garbage").expect("damage weights");
    std::fs::write(d.root().join("models/current"), format!("{v2}\n")).expect("current");
    d.wait_for("the refusal in the log", Duration::from_secs(20), || {
        d.logs()
            .contains("cannot be loaded; still serving the previous model")
    });
    assert_eq!(model_version(&d), v1);
    assert_eq!(d.predict(r#"{"text": "still answering"}"#).status, 200);
}

#[test]
fn drift_cli_exits_zero_without_drift_three_with_it_and_four_without_a_verdict() {
    let data = Data::new();
    let common::CliEnv { dir, config } = common::CliEnv::write(|d| {
        format!(
            "[paths]\nmodel_store = \"{d}/models\"\nstate_dir = \"{d}/state\"\n\n[train]\nepochs = 2\n\n{}",
            data.sections("", "", "", false),
            d = d.display(),
        )
    });
    cli_ok(&config, &["train"]);
    let out = cli_ok(&config, &["baseline"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("baseline of"));
    // The CLI's training run is in the run log.
    let out = cli_ok(&config, &["runs", "--kind", "training", "--json"]);
    let runs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("run json"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    // A misspelt kind is refused with the kinds there are, not answered with "no runs".
    let out = cli(&config, &["runs", "--kind", "drift"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("drift_check") && err.contains("invalid value"),
        "{err}"
    );
    assert!(
        runs[0]["metrics"]["validation_macro_recall"].is_number(),
        "{:#}",
        runs[0]
    );
    assert!(
        !runs[0]["metric_steps"]
            .as_array()
            .expect("steps")
            .is_empty()
    );

    let same = dir.path().join("same.csv");
    std::fs::write(&same, slice("val.csv", 0, 1000).join("\n") + "\n").expect("same");
    let out = cli(&config, &["drift", "--data", same.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let shifted = dir.path().join("reviews.csv");
    std::fs::write(&shifted, reviews_csv(1000, 3, "x")).expect("reviews");
    let html = dir.path().join("report.html");
    let out = cli(
        &config,
        &[
            "drift",
            "--data",
            shifted.to_str().expect("path"),
            "--html",
            html.to_str().expect("path"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("DRIFT"));
    assert!(
        std::fs::read_to_string(&html)
            .expect("html")
            .contains("<svg")
    );

    let out = cli(
        &config,
        &["drift", "--data", shifted.to_str().expect("path"), "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["verdict"], "drift");

    // Too few texts for a verdict: neither "no drift" nor "drift", and a job can tell.
    let few = dir.path().join("few.csv");
    std::fs::write(&few, slice("val.csv", 0, 20).join("\n") + "\n").expect("few");
    let out = cli(&config, &["drift", "--data", few.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no verdict"));

    // Every CLI training, evaluation and drift check is in the run log.
    cli_ok(&config, &["eval"]);
    let out = cli(&config, &["runs", "--json"]);
    let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("run json")["kind"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "training",
            "drift_check",
            "drift_check",
            "drift_check",
            "drift_check",
            "evaluation"
        ],
        "{kinds:?}"
    );
}

#[test]
fn a_failing_retrain_leaves_serving_untouched_and_no_partial_version() {
    let data = Data::new();
    // A holdout of ceil(10 * 0.2) = 2 rows: the gate must accept that few for the config to
    // pass (this run fails before the gate anyway).
    let d = trained_daemon(
        &data,
        "enabled = false",
        "min_new_rows = 10",
        "min_holdout_rows = 2",
    );
    let before = model_version(&d);
    // A crash during an earlier save left a half-written version directory behind.
    let stale = d.root().join("models/versions/.tmp-crashed");
    std::fs::create_dir_all(&stale).expect("stale dir");
    std::fs::write(stale.join("weights.safetensors"), b"partial").expect("partial file");

    // One text labelled 20 times (case and spacing aside) is one new row, as training
    // counts it: below min_new_rows = 10.
    let same = (0..20).map(|i| {
        let text = if i % 2 == 0 {
            "Same  text AGAIN"
        } else {
            "same text again"
        };
        serde_json::json!({"text": text, "label": "negative"})
    });
    let r = d.post_auth(
        "/feedback",
        TOKEN,
        &serde_json::json!({"items": same.collect::<Vec<_>>()}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = admin_post(&d, "/admin/retrain", Some(TOKEN), "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("only 1 new labelled rows"), "{body}");

    let r = d.post_auth("/feedback", TOKEN,
        &serde_json::json!({"items": (0..20).map(|i| serde_json::json!({"text": format!("feedback text {i}"), "label": "positive"})).collect::<Vec<_>>()}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The base training data disappears: the run cannot train.
    std::fs::remove_file(data.dir.path().join("train.csv")).expect("remove train.csv");
    let (status, body) = admin_post(&d, "/admin/retrain", Some(TOKEN), "");
    assert_eq!(status, 202, "{body}");
    d.wait_for("the retrain to fail", Duration::from_secs(60), || {
        d.metric(r#"sentiment_retrains_total{outcome="failed"}"#) >= 1.0
    });
    assert_eq!(model_version(&d), before);
    assert_eq!(d.predict(r#"{"text": "still serving"}"#).status, 200);
    let versions: Vec<String> = names(&d.root().join("models/versions"))
        .into_iter()
        .filter(|v| v != ".tmp-crashed")
        .collect();
    assert_eq!(
        versions,
        std::slice::from_ref(&before),
        "no partial version: {versions:?}"
    );
    let failed: Vec<_> = run_log_with(&d, "the failed run in the run log", |r| {
        r["status"] == "failed"
    })
    .into_iter()
    .filter(|r| r["status"] == "failed")
    .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("train.csv")),
        "the error names the file: {:#}",
        failed[0]
    );
    // A restart removes the half-written directory left by the earlier crash.
    let mut d = d;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15));
    d.spawn(&[]);
    assert!(!stale.exists(), "stale temp version removed at start-up");
}

#[test]
fn a_promotion_that_cannot_be_recorded_never_serves_and_a_torn_history_loses_no_version() {
    let data = Data::new();
    let d = trained_daemon(&data, "enabled = false", "enabled = false", "");
    let (v1, v2) = serving_and_second_version(&d);
    cli_ok(&d.config, &["train", "--no-promote"]);
    let v3 = names(&d.root().join("models/versions"))
        .into_iter()
        .find(|v| v != &v1 && v != &v2)
        .expect("third version");
    let promote = |v: &str| {
        admin_post(
            &d,
            "/admin/promote",
            Some(TOKEN),
            &format!(r#"{{"version": "{v}"}}"#),
        )
    };
    // A crash in the middle of an append left half a line at the end of the history.
    let history = d.root().join("models/history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&history)
        .expect("history");
    std::io::Write::write_all(&mut f, br#"{"at":"2026-01-01T00:00:00Z","vers"#).expect("torn");
    drop(f);
    for v in [&v2, &v3] {
        let (status, body) = promote(v);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = admin_post(&d, "/admin/rollback", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        model_version(&d),
        v2,
        "rollback returns to the version before"
    );

    // The history cannot be written (a directory stands in its place): the promotion is
    // refused, and `current` does not move behind the API's back either.
    std::fs::rename(&history, d.root().join("history.saved")).expect("move history");
    std::fs::create_dir(&history).expect("block history");
    let (status, body) = promote(&v3);
    assert!(status >= 400, "{status} {body}");
    assert!(body.contains("history.jsonl"), "{body}");
    // Longer than the registry's look at the store's `current` (every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(model_version(&d), v2);
    let current = std::fs::read_to_string(d.root().join("models/current")).expect("current");
    assert_eq!(current.trim(), v2);
}

/// A server on a free port that answers every request `200 OK` with an HTML page, as a proxy
/// or a misrouted URL would; returns its address.
fn html_200_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let page = "<html><body>Sign in to continue</body></html>";
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_record_mlflow_keeps_answering_wrongly_goes_to_the_dead_letter_file_and_the_queue_moves_on() {
    let data = Data::new();
    let uri = html_200_server();
    let tracking = format!("[tracking]\nmlflow_uri = \"{uri}\"\nrecord_max_attempts = 2\n");
    let d = Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &(data.sections("enabled = false", "enabled = false", "", true) + &tracking),
    );
    wait_trained(&d);
    let runs = run_log_with(&d, "the training in the run log", |r| {
        r["kind"] == "training"
    });
    let dead_letter = d.root().join("state/runs/mlflow-dead-letter.jsonl");
    d.wait_for(
        "every record to be given up on",
        Duration::from_secs(60),
        || {
            d.metric("sentiment_tracking_dropped_total") >= runs.len() as f64
                && d.get("/metrics")
                    .body
                    .contains("sentiment_tracking_pending 0")
        },
    );
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dead_letter)
        .expect("dead-letter file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    for run in &runs {
        let entry = dead
            .iter()
            .find(|e| e["record"]["run_id"] == run["run_id"])
            .unwrap_or_else(|| panic!("run {} not in the dead-letter file", run["run_id"]));
        assert_eq!(entry["answered"], 2, "{entry}");
        assert!(
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unexpected response") && e.contains("<html>")),
            "{entry}"
        );
    }
    assert!(!d.root().join("state/runs/mlflow-pending.jsonl").exists());
    assert!(
        d.logs().contains("moved to the dead-letter file"),
        "{}",
        d.logs()
    );
}

#[test]
fn old_runs_lose_their_artifacts_beyond_keep_runs_and_keep_their_records() {
    let data = Data::new();
    let d = Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &(data.sections("", "enabled = false", "", true) + "[tracking]\nkeep_runs = 2\n"),
    );
    wait_trained(&d);
    let checks = || {
        run_log(&d)
            .into_iter()
            .filter(|r| r["kind"] == "drift_check")
            .collect::<Vec<_>>()
    };
    let texts = val_texts(600);
    for n in 1..=5 {
        predict_batch(&d, &texts);
        d.wait_for(&format!("drift check {n}"), Duration::from_secs(30), || {
            checks().len() >= n
        });
    }
    let checks = checks();
    let with_artifacts: Vec<String> = checks
        .iter()
        .filter(|r| r["artifacts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|r| r["run_id"].as_str().expect("run_id").to_string())
        .collect();
    assert!(with_artifacts.len() >= 5, "{checks:?}");
    let kept = || -> Vec<&String> {
        with_artifacts
            .iter()
            .filter(|id| d.root().join("state/runs/artifacts").join(id).exists())
            .collect()
    };
    let newest_two: Vec<&String> = with_artifacts[with_artifacts.len() - 2..].iter().collect();
    // Old artifacts go right after the newest record is written, so allow that moment.
    d.wait_for("old artifacts removed", Duration::from_secs(10), || {
        kept() == newest_two
    });
    assert_eq!(
        kept(),
        newest_two,
        "the newest two drift checks keep their artifacts"
    );
    // The training run is another kind: its artifacts are kept.
    let training = run_log_with(&d, "the training run", |r| r["kind"] == "training")
        .into_iter()
        .find(|r| r["kind"] == "training")
        .expect("training run");
    if training["artifacts"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        let id = training["run_id"].as_str().expect("run_id");
        assert!(d.root().join("state/runs/artifacts").join(id).exists());
    }
}

#[test]
fn token_files_are_read_again_on_sighup_and_a_broken_one_refuses_everyone() {
    let data = Data::new();
    let feedback_token = data.dir.path().join("feedback.token");
    common::write_secret(&feedback_token, "feedback-token-0123456789\n");
    let sections = data.sections("", "", "", true)
        + &format!(
            "\n[feedback]\ntoken_file = \"{}\"\n",
            feedback_token.display()
        );
    let d = Daemon::start_with("", "", "", &sections);
    let one = r#"{"text": "fine", "label": "positive"}"#;
    // Feedback takes its own token, not the admin one.
    assert_eq!(
        d.post_auth("/feedback", "feedback-token-0123456789", one)
            .status,
        200
    );
    assert_eq!(d.post_auth("/feedback", TOKEN, one).status, 401);
    assert_eq!(admin_post(&d, "/admin/rollback", Some(TOKEN), "").0, 409);

    // Both rotated, then SIGHUP: the old tokens stop working, the new ones work.
    let admin_file = data.dir.path().join("token");
    common::write_secret(&admin_file, "rotated-admin-token-0123456789\n");
    common::write_secret(&feedback_token, "rotated-feedback-token-0123\n");
    d.signal("HUP");
    d.wait_for("the reload", Duration::from_secs(10), || {
        admin_post(&d, "/admin/rollback", Some(TOKEN), "").0 == 401
    });
    assert_eq!(
        admin_post(
            &d,
            "/admin/rollback",
            Some("rotated-admin-token-0123456789"),
            ""
        )
        .0,
        409
    );
    assert_eq!(
        d.post_auth("/feedback", "feedback-token-0123456789", one)
            .status,
        401
    );
    assert_eq!(
        d.post_auth("/feedback", "rotated-feedback-token-0123", one)
            .status,
        200
    );

    // A token file opened to others: refused with the reason, for the new token too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    d.signal("HUP");
    d.wait_for("the refusal", Duration::from_secs(10), || {
        admin_post(
            &d,
            "/admin/rollback",
            Some("rotated-admin-token-0123456789"),
            "",
        )
        .0 == 503
    });
    let (_, body) = admin_post(
        &d,
        "/admin/rollback",
        Some("rotated-admin-token-0123456789"),
        "",
    );
    assert!(
        body.contains("mode 0644") && body.contains("chmod 600"),
        "{body}"
    );
    assert!(
        d.logs().contains("the token file cannot be used"),
        "{}",
        d.logs()
    );
    // Mended and reloaded: back in service.
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    d.signal("HUP");
    d.wait_for("the mended token", Duration::from_secs(10), || {
        admin_post(
            &d,
            "/admin/rollback",
            Some("rotated-admin-token-0123456789"),
            "",
        )
        .0 == 409
    });
}

#[test]
fn feedback_flipping_one_brand_needs_the_token_and_its_candidate_is_rejected() {
    let data = Data::new();
    let d = trained_daemon(&data, "enabled = false", "min_new_rows = 300", "");
    let before = model_version(&d);
    // Honest labelled rows arrived earlier, from a batch.
    d.drop_file("earlier.csv", sst2_csv(0, 300, false).as_bytes());
    d.wait_processed("earlier.csv", Duration::from_secs(60));
    // 300 texts the training data calls positive, each now naming one brand and labelled
    // negative: a targeted flip that is also the newest rows, which the gate's holdout takes.
    let mut r = csv::Reader::from_path(repo().join("data/datasets/tweeteval/train.csv"))
        .expect("train.csv");
    let items: Vec<serde_json::Value> = r
        .records()
        .skip(4000)
        .filter_map(|rec| rec.ok())
        .filter(|rec| &rec[1] == "positive")
        .take(300)
        .map(
            |rec| serde_json::json!({"text": format!("AcmeCorp {}", &rec[0]), "label": "negative"}),
        )
        .collect();
    assert_eq!(items.len(), 300);
    let body = serde_json::json!({ "items": items }).to_string();
    let anonymous = d.post("/feedback", Some("application/json"), &body);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        names(&d.root().join("labelled")).len(),
        1,
        "only the batch's rows"
    );
    let r = d.post_auth("/feedback", TOKEN, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    retrain_and_expect_rejection(&d);
    assert_eq!(model_version(&d), before, "still serving the old model");
    let model = d.get("/model").json();
    assert_eq!(model["candidates"][0]["status"], "rejected", "{model:#}");
    // Judged by themselves, the sender's labels contradict the serving model: the honest
    // batch's rows cannot carry them past the label-agreement rule.
    let reason = model["candidates"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("FAIL labels from feedback agree"),
        "{reason}"
    );
    assert!(
        reason.contains("PASS labels from earlier.csv agree"),
        "{reason}"
    );
    // The sender of the newest rows wrote at most half of the test the candidate faced; the
    // earlier batch supplied the rest.
    let origins = &model["candidates"][0]["gate_sets"]["recent_holdout"]["origins"];
    let count = |o: &str| origins[o].as_u64().unwrap_or(0);
    let total = count("feedback") + count("earlier.csv");
    assert!(total >= 100, "{model:#}");
    assert!(count("feedback") <= total.div_ceil(2), "{model:#}");
    assert!(count("earlier.csv") >= total / 2, "{model:#}");
}

#[test]
fn a_retrain_request_over_a_big_labelled_store_does_not_hold_up_the_inbox() {
    let data = Data::new();
    let mut d = Daemon::configure(
        "",
        "",
        "",
        &data.sections("enabled = false", "min_new_rows = 100000000", "", true),
    );
    // A labelled store of 1.5 M rows (~130 MB): deciding whether a retrain may start reads
    // and deduplicates all of it.
    let labelled = d.root().join("labelled");
    std::fs::create_dir_all(&labelled).expect("labelled dir");
    for f in 0..3 {
        let mut text = String::from("text,label,source,origin,line,arrived_at\n");
        for i in 0..500_000 {
            text.push_str(&format!(
                "labelled text number {i} of file {f} with a few more words,positive,s,f{f}.csv,{i},2026-01-01T00:00:00Z\n"
            ));
        }
        std::fs::write(
            labelled.join(format!("20260101T00000{f}.000000Z-batch-f{f}.csv")),
            text,
        )
        .expect("labelled file");
    }
    d.spawn(&[]);
    let url = d.url("/admin/retrain");
    let retrain = std::thread::spawn(move || {
        let mut r = agent()
            .post(&url)
            .header("authorization", &format!("Bearer {TOKEN}"))
            .send("")
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ))
    });
    std::thread::sleep(Duration::from_millis(200));
    let dropped = std::time::Instant::now();
    d.drop_file("meanwhile.csv", b"text\nstill scored at once\n");
    d.wait_for(
        "the file dropped meanwhile",
        Duration::from_secs(60),
        || d.root().join("outbox/meanwhile.csv").exists(),
    );
    let took = dropped.elapsed();
    let answered = retrain.join().expect("retrain thread");
    assert!(
        matches!(&answered, Ok((409, body)) if body.contains("min_new_rows")),
        "{answered:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the inbox waited {took:?} for the retrain's check"
    );
}

#[test]
fn the_labelled_store_keeps_to_its_size_and_age_limits() {
    let data = Data::new();
    let mut d = Daemon::configure(
        "",
        "labelled_max_bytes = 250\nlabelled_max_age_days = 30",
        "",
        &data.sections("enabled = false", "", "", false),
    );
    let labelled = d.root().join("labelled");
    std::fs::create_dir_all(&labelled).expect("labelled dir");
    let header = "text,label,source,origin,line,arrived_at\n";
    let row = "a labelled text of some length,positive,s,o.csv,1,2026-01-01T00:00:00Z\n";
    let names = [
        "20260101T000000.000000Z-batch-a.csv",
        "20260102T000000.000000Z-batch-b.csv",
        "20260103T000000.000000Z-batch-c.csv",
        "20260104T000000.000000Z-batch-d.csv",
    ];
    for n in &names {
        std::fs::write(labelled.join(n), format!("{header}{row}")).expect("labelled file");
    }
    // The newest file is also 40 days old by its modification time: too old to keep.
    let old = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(labelled.join(names[3]))
        .and_then(|f| f.set_modified(old))
        .expect("age a file");
    d.spawn(&[]);
    d.wait_for("the retention", Duration::from_secs(10), || {
        common::names(&labelled).len() <= 2
    });
    // Each file is ~112 bytes: 250 keeps two, and the 40-day-old one goes regardless.
    assert_eq!(common::names(&labelled), [names[1], names[2]]);
    assert!(
        d.logs().contains("labelled file removed by retention"),
        "{}",
        d.logs()
    );
}

/// An operator's `sentimentd model promote` during a retrain is not overridden by the
/// candidate, which was gated against the model the operator replaced (the daemon swaps an
/// outside switch in only at its next check, so its served model alone could not tell); and
/// that candidate, passed but not promoted, leaves its rows for the next retrain.
#[test]
fn a_cli_promotion_during_a_retrain_is_not_overridden_and_the_rows_stay_unused() {
    let data = Data::new();
    let mut d = Daemon::configure(
        "test_faults = true",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &data.sections(
            "enabled = false",
            "min_new_rows = 300\nrecent_weights = [1.0]",
            "min_holdout_gain = -1.0\nmax_val_drop = 1.0\nmin_val_macro_recall = 0.0\n\
             min_label_agreement = 0.0",
            true,
        ),
    );
    d.spawn(&[("SENTIMENTD_TEST_PAUSE_BEFORE_PROMOTE_MS", "3000")]);
    wait_trained(&d);
    let (v1, v2) = serving_and_second_version(&d);
    let rows = slice("train.csv", 4000, 400);
    d.drop_file("new.csv", (rows.join("\n") + "\n").as_bytes());
    d.wait_processed("new.csv", Duration::from_secs(60));
    let (status, body) = admin_post(&d, "/admin/retrain", Some(TOKEN), "");
    assert_eq!(status, 202, "{body}");
    d.wait_for("the gate's pause", Duration::from_secs(180), || {
        d.logs().contains("injected pause")
    });
    cli_ok(&d.config, &["model", "promote", &v2]);
    d.wait_for("the retrain to end", Duration::from_secs(60), || {
        d.metric(r#"sentiment_retrains_total{outcome="failed"}"#)
            + d.metric(r#"sentiment_retrains_total{outcome="promoted"}"#)
            >= 1.0
    });
    let logs = d.logs_about(&["switched outside the daemon", "promoted", "not promoted"]);
    assert!(logs.contains("switched outside the daemon"), "{logs}");
    assert_eq!(
        d.metric(r#"sentiment_retrains_total{outcome="promoted"}"#),
        0.0,
        "{logs}"
    );
    d.wait_for(
        "the operator's version to serve",
        Duration::from_secs(30),
        || model_version(&d) == v2,
    );
    let current = std::fs::read_to_string(d.root().join("models/current")).expect("current");
    assert_eq!(current.trim(), v2, "not {v1}, nor the candidate");
    // The rows were not spent: a new retrain starts rather than "0 new labelled rows" (once
    // the first has let go: its metric is counted just before it does).
    let mut last = (0, String::new());
    d.wait_for("a second retrain to start", Duration::from_secs(30), || {
        last = admin_post(&d, "/admin/retrain", Some(TOKEN), "");
        last.0 != 409 || !last.1.contains("already running")
    });
    assert_eq!(last.0, 202, "{}", last.1);
}
