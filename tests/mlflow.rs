//! Experiment tracking against a real MLflow server (from the venv `scripts/test-deps.sh`
//! builds), read back with MLflow's own Python client (`tests/mlflow_check.py`).

mod common;

use common::mlflow::MlflowServer;
use sentimentd_actors::Metrics;
use sentimentd_actors::messages::{RegisterChampion, Track};
use sentimentd_actors::mlops::tracker::Tracker;
use sentimentd_config::TrackingConfig;
use sentimentd_tracking::{
    FlushReport, LocalRunLog, MlflowClient, MlflowOp, MlflowSink, PENDING_FILE, RunKind, RunRecord,
    Submitted,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Facts about the run mirroring `local_run_id`, as MLflow's Python client sees them.
fn check(uri: &str, experiment: &str, local_run_id: &str, extra: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlflow_check.py");
    let out = Command::new(common::mlflow::venv().join("bin/python"))
        .arg(script)
        .args([uri, experiment, local_run_id])
        .args(extra)
        .output()
        .expect("run mlflow_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mlflow_check.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("mlflow_check.py printed no JSON ({e}): {stdout}"))
}

fn training_record(dir: &Path) -> RunRecord {
    let report = dir.join("report.json");
    std::fs::write(&report, r#"{"macro_recall": 0.74}"#).unwrap();
    let mut r = RunRecord::new(RunKind::Training, "train v7");
    r.param("learning_rate", 0.25)
        .param("epochs", 3)
        .param("model_kind", "fast")
        .metric("val_macro_recall", 0.74)
        .metric("test_accuracy", 0.81)
        .tag("model_version", "v7")
        .tag("trigger", "drift")
        .artifact(&report);
    for (step, (loss, recall)) in [(1.1, 0.52), (0.7, 0.66), (0.5, 0.74)].iter().enumerate() {
        r.metric_step("epoch_train_loss", step as i64, *loss)
            .metric_step("epoch_val_macro_recall", step as i64, *recall);
    }
    r.finish()
}

fn model_dir(dir: &Path) -> PathBuf {
    let model = dir.join("models/v7");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("manifest.json"), r#"{"version":"v7"}"#).unwrap();
    std::fs::write(
        model.join("confusion_matrix.png"),
        b"\x89PNG\r\n\x1a\nnot-a-real-png",
    )
    .unwrap();
    std::fs::write(model.join("baseline.json"), r#"{"labels":[0.3,0.4,0.3]}"#).unwrap();
    // Weights of several MiB: they go up too, since followers install from MLflow.
    std::fs::write(model.join("model.mpk"), vec![7u8; 3 * 1024 * 1024]).unwrap();
    model
}

#[test]
fn training_run_and_champion_reach_mlflow() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(tmp.path(), common::free_port());
    let client = MlflowClient::new(&server.uri);

    let exp = client.get_or_create_experiment("sentimentd-test").unwrap();
    assert_eq!(
        client.get_or_create_experiment("sentimentd-test").unwrap(),
        exp
    );

    // The way the tracker does it: the local log first, then its stored form to MLflow.
    let log = LocalRunLog::open(tmp.path().join("runs")).unwrap();
    let stored = log.store(&training_record(tmp.path())).unwrap();
    let run = client.log_run(&exp, &stored).unwrap();
    assert_eq!(run.status, "FINISHED");
    // Retrying a record that already arrived finds its run instead of making another.
    assert_eq!(client.log_run(&exp, &stored).unwrap().run_id, run.run_id);

    let model = model_dir(tmp.path());
    // Weights bigger than the old 1 MiB cut go up too: followers install from these files.
    let weights: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(model.join("weights.bin"), &weights).unwrap();
    let files = vec![
        model.join("manifest.json"),
        model.join("confusion_matrix.png"),
        model.join("weights.bin"),
    ];
    let v = client
        .register_champion(
            "sentimentd-test-model",
            &run,
            "v7",
            &files,
            &Default::default(),
        )
        .unwrap();
    assert_eq!(v.registry_version, "1");
    assert_eq!(v.superseded_by, None);
    assert_eq!(
        client
            .register_champion(
                "sentimentd-test-model",
                &run,
                "v7",
                &files,
                &Default::default()
            )
            .unwrap()
            .registry_version,
        "1",
        "registering the same store version twice must not add a registry version"
    );
    let champion = client
        .get_model_version_by_alias("sentimentd-test-model", "champion")
        .unwrap()
        .expect("champion alias");
    assert_eq!(champion.version, "1");
    assert_eq!(champion.run_id, run.run_id);
    assert_eq!(
        champion.tags.get("sentimentd.version").map(String::as_str),
        Some("v7")
    );
    let fetched = tmp.path().join("fetched.bin");
    let bytes = client
        .download_artifact(&run, "model/weights.bin", &fetched)
        .unwrap();
    assert_eq!(bytes, weights.len() as u64);
    assert!(
        std::fs::read(&fetched).unwrap() == weights,
        "the weights came back intact"
    );
    let listed = client.list_artifacts(&run, "model").unwrap();
    assert!(
        listed.contains(&"model/weights.bin".to_string()),
        "{listed:?}"
    );
    assert!(
        client
            .get_model_version_by_alias("sentimentd-test-model", "nope")
            .unwrap()
            .is_none()
    );

    let facts = check(
        &server.uri,
        "sentimentd-test",
        &stored.run_id,
        &[
            "--model",
            "sentimentd-test-model",
            "--history",
            "epoch_train_loss",
            "epoch_val_macro_recall",
            "--download",
            "report.json",
        ],
    );
    assert_eq!(facts["runs_found"], 1, "{facts}");
    assert_eq!(facts["run_id"], run.run_id.as_str());
    assert_eq!(facts["run_name"], "train v7");
    assert_eq!(facts["status"], "FINISHED");
    assert!(facts["end_time"].as_i64().unwrap() >= facts["start_time"].as_i64().unwrap());
    assert_eq!(facts["params"]["learning_rate"], "0.25");
    assert_eq!(facts["params"]["epochs"], "3");
    assert_eq!(facts["params"]["model_kind"], "fast");
    assert_eq!(facts["metrics"]["val_macro_recall"], 0.74);
    assert_eq!(facts["metrics"]["test_accuracy"], 0.81);
    // The latest value of a history is its last step.
    assert_eq!(facts["metrics"]["epoch_train_loss"], 0.5);
    assert_eq!(
        facts["history"]["epoch_train_loss"],
        serde_json::json!([[0, 1.1], [1, 0.7], [2, 0.5]]),
        "{facts}"
    );
    assert_eq!(
        facts["history"]["epoch_val_macro_recall"],
        serde_json::json!([[0, 0.52], [1, 0.66], [2, 0.74]])
    );
    assert_eq!(facts["tags"]["model_version"], "v7");
    assert_eq!(facts["tags"]["trigger"], "drift");
    assert_eq!(facts["tags"]["sentimentd.run_id"], stored.run_id.as_str());
    assert_eq!(facts["tags"]["sentimentd.kind"], "training");
    assert_eq!(
        facts["artifacts"],
        serde_json::json!(["model", "report.json"]),
        "{facts}"
    );
    assert_eq!(
        facts["model_artifacts"],
        serde_json::json!([
            "model/confusion_matrix.png",
            "model/manifest.json",
            "model/weights.bin"
        ])
    );
    assert_eq!(
        facts["downloads"]["report.json"],
        r#"{"macro_recall": 0.74}"#
    );
    let champion = &facts["champion"];
    assert_eq!(champion["version"], "1", "{facts}");
    assert_eq!(champion["run_id"], run.run_id.as_str());
    assert_eq!(champion["aliases"], serde_json::json!(["champion"]));
    assert_eq!(champion["tags"]["sentimentd.version"], "v7");
    assert_eq!(champion["manifest"], r#"{"version":"v7"}"#);

    // The same through the Tracker actor, whose worker thread does the HTTP.
    let cfg = TrackingConfig {
        mlflow_uri: Some(server.uri.clone()),
        experiment: "sentimentd-actor".to_string(),
        registered_model: "sentimentd-actor-model".to_string(),
        ..TrackingConfig::default()
    };
    let runs = tmp.path().join("actor-runs");
    let record = training_record(tmp.path());
    let sys = actix::System::new();
    sys.block_on(async {
        use actix::Actor;
        let tracker = Tracker::with_dir(&cfg, runs.clone(), Arc::new(Metrics::new()))
            .unwrap()
            .start();
        tracker.send(Track(record.clone())).await.unwrap().unwrap();
        tracker
            .send(RegisterChampion {
                version: "v7".to_string(),
                run_id: record.run_id.clone(),
                model_dir: model.clone(),
                fencing: None,
            })
            .await
            .unwrap()
            .unwrap();
    });
    assert_eq!(LocalRunLog::open(&runs).unwrap().list().unwrap().len(), 1);
    // The worker is asynchronous by design; wait for its result, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(60);
    let champion = loop {
        if let Ok(Some(v)) = client.get_model_version_by_alias("sentimentd-actor-model", "champion")
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "tracker never registered the champion:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        champion.tags.get("sentimentd.version").map(String::as_str),
        Some("v7")
    );
    let facts = check(&server.uri, "sentimentd-actor", &record.run_id, &[]);
    assert_eq!(facts["status"], "FINISHED", "{facts}");
    assert_eq!(
        facts["model_artifacts"],
        serde_json::json!([
            "model/baseline.json",
            "model/confusion_matrix.png",
            "model/manifest.json",
            "model/model.mpk",
            "model/weights.bin"
        ]),
        "every file of the version, weights included: {facts}"
    );
    assert!(!runs.join(PENDING_FILE).exists());
}

#[test]
fn records_made_while_mlflow_is_down_arrive_once_it_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let runs = tmp.path().join("runs");
    let log = LocalRunLog::open(&runs).unwrap();
    let model = model_dir(tmp.path());

    // Opened again after a restart, on the same queue.
    let open_sink = || {
        MlflowSink::open(
            MlflowClient::new(&uri),
            "sentimentd-retry",
            "retry-model",
            &runs,
        )
        .unwrap()
    };

    let stored = log.store(&training_record(tmp.path())).unwrap();
    let mut sink = open_sink();
    let t = Instant::now();
    assert_eq!(
        sink.submit(MlflowOp::Run {
            record: stored.clone()
        })
        .unwrap(),
        Submitted::Queued
    );
    assert_eq!(
        sink.submit(MlflowOp::Champion {
            version: "v7".to_string(),
            run_id: stored.run_id.clone(),
            files: vec![model.join("manifest.json")],
            tags: Default::default(),
        })
        .unwrap(),
        Submitted::Queued
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a down server held the caller for {:?}",
        t.elapsed()
    );
    let pending = std::fs::read_to_string(runs.join(PENDING_FILE)).unwrap();
    assert_eq!(pending.lines().count(), 2, "{pending}");
    assert!(pending.contains(&stored.run_id));
    // The copy under runs/artifacts is what a later retry uploads; the original may be gone.
    std::fs::remove_file(tmp.path().join("report.json")).unwrap();

    // A restart of the daemon, then the server comes up.
    drop(sink);
    let server = MlflowServer::start(tmp.path(), port);
    let mut sink = open_sink();
    assert_eq!(sink.pending_len(), 2);
    assert_eq!(
        sink.flush_pending().unwrap(),
        FlushReport {
            sent: 2,
            dropped: 0,
            remaining: 0
        }
    );
    assert!(!runs.join(PENDING_FILE).exists());
    assert_eq!(sink.next_retry_in(), None);
    // Nothing is sent twice.
    assert_eq!(sink.flush_pending().unwrap(), FlushReport::default());

    let facts = check(
        &server.uri,
        "sentimentd-retry",
        &stored.run_id,
        &[
            "--model",
            "retry-model",
            "--history",
            "epoch_train_loss",
            "--download",
            "report.json",
        ],
    );
    assert_eq!(facts["runs_found"], 1, "{facts}");
    assert_eq!(facts["status"], "FINISHED");
    assert_eq!(facts["params"]["learning_rate"], "0.25");
    assert_eq!(
        facts["history"]["epoch_train_loss"],
        serde_json::json!([[0, 1.1], [1, 0.7], [2, 0.5]])
    );
    assert_eq!(
        facts["downloads"]["report.json"],
        r#"{"macro_recall": 0.74}"#
    );
    assert_eq!(facts["champion"]["version"], "1", "{facts}");
    assert_eq!(facts["champion"]["run_id"], facts["run_id"]);
    assert_eq!(
        facts["model_artifacts"],
        serde_json::json!(["model/manifest.json"])
    );
}

/// A node that lost the training lease while MLflow was down replays its queued champion
/// registration later: the version is registered, but the alias stays on the version the new
/// lease holder promoted under a newer fencing token, and the node's log says why. The
/// holder's own later promotion (a rollback) still moves it.
#[test]
fn a_stale_queued_champion_registration_does_not_move_the_alias_back() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let model = model_dir(tmp.path());
    let files = vec![model.join("manifest.json")];
    let node = |name: &str| {
        let runs = tmp.path().join(name);
        let log = LocalRunLog::open(&runs).unwrap();
        let sink =
            MlflowSink::open(MlflowClient::new(&uri), "fenced", "fenced-model", &runs).unwrap();
        (log, sink)
    };
    let champion = |version: &str, run_id: &str, token: u64| {
        let mut tags = std::collections::BTreeMap::new();
        tags.insert(
            sentimentd_tracking::FENCING_TAG.to_string(),
            token.to_string(),
        );
        MlflowOp::Champion {
            version: version.to_string(),
            run_id: run_id.to_string(),
            files: files.clone(),
            tags,
        }
    };
    // The old holder (token 5) promotes v1 while MLflow is down: queued.
    let (old_log, mut old) = node("old-holder");
    let v1_run = old_log.store(&training_record(tmp.path())).unwrap().run_id;
    assert_eq!(
        old.submit(champion("v1", &v1_run, 5)).unwrap(),
        Submitted::Queued
    );

    // MLflow comes up; the new holder (token 6) promotes v2.
    let server = MlflowServer::start(tmp.path(), port);
    let client = MlflowClient::new(&server.uri);
    let (new_log, mut new) = node("new-holder");
    let v2_run = new_log.store(&training_record(tmp.path())).unwrap().run_id;
    assert_eq!(
        new.submit(champion("v2", &v2_run, 6)).unwrap(),
        Submitted::Sent
    );
    let alias = || {
        let v = client
            .get_model_version_by_alias("fenced-model", "champion")
            .unwrap()
            .expect("champion alias");
        v.tags
            .get("sentimentd.version")
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(alias(), "v2");

    // The old holder's queue drains: v1 is registered, the alias stays on v2.
    let report = old.flush_pending().unwrap();
    assert_eq!((report.sent, report.remaining), (1, 0), "{report:?}");
    assert_eq!(alias(), "v2");
    let exp = client.get_or_create_experiment("fenced").unwrap();
    // Its training run never reached MLflow, so a promotion run carries its files.
    let run = client
        .find_run_by_tag(
            &exp,
            sentimentd_tracking::RUN_ID_TAG,
            &format!("{v1_run}-champion"),
        )
        .unwrap()
        .expect("v1's run");
    let registered = client
        .model_versions_of_run("fenced-model", &run.run_id)
        .unwrap();
    assert_eq!(registered.len(), 1, "{registered:?}");

    // The holder rolls back to v1 under its own token: the alias follows, and the version
    // now carries that token (followers refuse a champion tagged older than one they had).
    assert_eq!(
        new.submit(champion("v1", &v1_run, 6)).unwrap(),
        Submitted::Sent
    );
    assert_eq!(alias(), "v1");
    let v1 = client
        .get_model_version_by_alias("fenced-model", "champion")
        .unwrap()
        .expect("champion alias");
    assert_eq!(
        v1.tags
            .get(sentimentd_tracking::FENCING_TAG)
            .map(String::as_str),
        Some("6"),
        "{v1:?}"
    );
}

/// The daemon with `[tracking] mlflow_uri`: its first training run and the drift-driven
/// retrain that passes the gate reach MLflow, and the `champion` alias follows the promotion.
#[test]
fn the_daemon_records_its_runs_and_moves_the_champion_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(tmp.path(), common::free_port());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let train_text =
        std::fs::read_to_string(repo.join("data/datasets/tweeteval/train.csv")).unwrap();
    let train: Vec<&str> = train_text.lines().take(4001).collect();
    std::fs::write(tmp.path().join("train.csv"), train.join("\n") + "\n").unwrap();
    let d = common::Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &format!(
            "[data]\ntrain = [\"{train}\"]\nval = \"{val}\"\n\n[model]\nembedding_dim = 16\n\
             vocab_size = 3000\nbuckets = 8192\n\n[drift]\nwindow = 2000\nmin_samples = 300\n\
             check_every_samples = 500\nmin_check_interval_secs = 0\ncheck_every_secs = 1\n\n[retrain]\nthreads = 1\nmin_new_rows = 1000\n\n\
             [gate]\nmax_val_drop = 0.03\n\n[tracking]\nmlflow_uri = \"{uri}\"\n\
             experiment = \"daemon\"\nregistered_model = \"sentimentd-daemon\"\n",
            train = tmp.path().join("train.csv").display(),
            val = repo.join("data/datasets/tweeteval/val.csv").display(),
            uri = server.uri,
        ),
    );
    let client = MlflowClient::new(&server.uri);
    let champion_version = |timeout: Duration| -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(v)) = client.get_model_version_by_alias("sentimentd-daemon", "champion")
                && let Some(version) = v.tags.get("sentimentd.version")
            {
                return version.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no champion in MLflow:\n{}\n{}",
                d.logs(),
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let serving = |d: &common::Daemon| {
        d.get("/model").json()["version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    d.wait_for("the first model", Duration::from_secs(120), || {
        d.get("/model").json()["fallback"] == false
    });
    let v1 = serving(&d);
    assert_eq!(champion_version(Duration::from_secs(60)), v1);

    for (i, seed) in [21u64, 22, 23].into_iter().enumerate() {
        let name = format!("reviews-{i}.csv");
        d.drop_file(
            &name,
            common::reviews::reviews_csv(400, seed, &format!("m{i}")).as_bytes(),
        );
        d.wait_processed(&name, Duration::from_secs(60));
    }
    d.wait_for("a promotion", Duration::from_secs(180), || {
        d.metric(r#"sentiment_retrains_total{outcome="promoted"}"#) >= 1.0
    });
    let v2 = serving(&d);
    assert_ne!(v2, v1);
    // Every file of the version goes up (weights too), and a call that timed out on a busy
    // machine backs off before the retry: allow for both.
    let champion_becomes = |version: &str, what: &str, about: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while champion_version(Duration::from_secs(60)) != version {
            assert!(
                Instant::now() < deadline,
                "the champion alias did not {what} {version}:\n{}",
                d.logs_about(about)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    champion_becomes(&v2, "move to", &["MLflow", "champion", "promot"]);
    // The retrain's run, found by its local id in the daemon's run log, with its metrics,
    // epoch history and decision.
    let log = LocalRunLog::open(d.root().join("state/runs")).unwrap();
    let retrain = log
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.tags.get("decision").map(String::as_str) == Some("promoted"))
        .expect("the promoted retrain in the local run log");
    let facts = check(
        &server.uri,
        "daemon",
        &retrain.run_id,
        &["--history", "epoch_train_loss"],
    );
    assert_eq!(facts["status"], "FINISHED", "{facts}");
    assert_eq!(facts["tags"]["decision"], "promoted", "{facts}");
    assert!(
        facts["metrics"]["candidate_val_macro_recall"].is_number(),
        "{facts}"
    );
    assert!(
        facts["history"]["epoch_train_loss"]
            .as_array()
            .is_some_and(|h| !h.is_empty()),
        "{facts}"
    );
    assert!(
        facts["artifacts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "decision.json")),
        "{facts}"
    );
    // Drift checks went to MLflow too.
    let drift_run = log
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.kind == RunKind::DriftCheck)
        .expect("a drift check in the run log");
    let facts = check(&server.uri, "daemon", &drift_run.run_id, &[]);
    assert_eq!(facts["runs_found"], 1, "{facts}");

    // A rollback by the CLI on the daemon's store: the daemon swaps it in, and the champion
    // follows it as it follows the daemon's own switches.
    let out = common::with_config(&d.config)
        .args(["model", "rollback"])
        .output()
        .unwrap();
    common::assert_success(&["model", "rollback"], &out);
    d.wait_for("the rollback to serve", Duration::from_secs(30), || {
        serving(&d) == v1
    });
    champion_becomes(
        &v1,
        "follow the CLI rollback to",
        &["MLflow", "champion", "outside"],
    );
}
