use super::*;
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

fn sample(name: &str) -> RunRecord {
    let mut r = RunRecord::new(RunKind::Training, name);
    r.param("lr", 0.5)
        .param("epochs", 3)
        .metric("val_macro_recall", 0.71)
        .metric("nan_metric", f64::NAN)
        .metric_step("epoch_loss", 0, 1.2)
        .metric_step("epoch_loss", 1, 0.8)
        .tag("model_kind", "fast");
    r.finish()
}

#[test]
fn run_ids_are_unique_hex() {
    let ids: HashSet<String> = (0..1000).map(|_| new_run_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(
        ids.iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    );
}

#[test]
fn records_append_and_list_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalRunLog::open(dir.path().join("runs")).unwrap();
    assert!(log.list().unwrap().is_empty());
    let a = sample("a");
    let b = sample("b").fail("boom");
    log.record(&a).unwrap();
    log.record(&b).unwrap();
    let listed = log.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].run_id, a.run_id);
    assert_eq!(listed[0].params["lr"], "0.5");
    assert_eq!(listed[0].metric_steps.len(), 2);
    assert!(
        listed[0].metrics["nan_metric"].is_nan(),
        "NaN survives as NaN"
    );
    assert_eq!(listed[1].status, RunStatus::Failed);
    assert_eq!(listed[1].error.as_deref(), Some("boom"));
    let text = std::fs::read_to_string(log.runs_file()).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.ends_with('\n'));
    assert_eq!(log.get(&b.run_id).unwrap().unwrap().name, "b");
}

#[test]
fn torn_last_line_is_skipped_and_the_next_append_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalRunLog::open(dir.path()).unwrap();
    let a = sample("a");
    log.record(&a).unwrap();
    // A crash mid-write leaves half a line without its newline.
    let whole = serde_json::to_string(&sample("torn")).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(log.runs_file())
        .unwrap();
    f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
    drop(f);
    let listed = log.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].run_id, a.run_id);

    let c = sample("c");
    log.record(&c).unwrap();
    let names: Vec<String> = log.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["a", "c"]);
}

#[test]
fn artifacts_are_copied_and_the_log_points_at_the_copies() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalRunLog::open(dir.path().join("runs")).unwrap();
    let src = dir.path().join("report.json");
    std::fs::write(&src, b"{\"ok\":true}").unwrap();
    let other = dir.path().join("sub");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("report.json"), b"second").unwrap();
    let mut r = sample("with-artifacts");
    r.artifact(&src)
        .artifact(other.join("report.json"))
        .artifact(dir.path().join("missing.png"));
    let stored = log.store(&r).unwrap();
    let copies = log.artifacts_dir(&r.run_id);
    assert_eq!(
        stored.artifacts,
        vec![copies.join("report.json"), copies.join("1-report.json")]
    );
    std::fs::remove_file(&src).unwrap();
    assert_eq!(
        std::fs::read(copies.join("report.json")).unwrap(),
        b"{\"ok\":true}"
    );
    assert_eq!(log.list().unwrap()[0].artifacts, stored.artifacts);
}

#[test]
fn a_run_id_that_could_escape_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = LocalRunLog::open(dir.path()).unwrap();
    let mut r = sample("x");
    r.run_id = "../../etc".to_string();
    assert!(matches!(
        log.record(&r),
        Err(TrackingError::InvalidRecord(_))
    ));
}

#[test]
fn backoff_doubles_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    assert!(b.is_due());
    let waits: Vec<u64> = (0..5).map(|_| b.failed().as_secs()).collect();
    assert_eq!(waits, vec![1, 2, 4, 5, 5]);
    assert!(!b.is_due());
    b.succeeded();
    assert!(b.is_due());
    assert_eq!(b.failed().as_secs(), 1);
}

#[test]
fn helpers_encode_what_mlflow_expects() {
    assert_eq!(encode_path("model/a b.json"), "model/a%20b.json");
    assert_eq!(encode_path("../x/./y"), "x/y");
    assert_eq!(sanitize_key("val loss (ℓ)"), "val loss ___");
    assert_eq!(metric_json(f64::NAN), serde_json::json!("NaN"));
    assert_eq!(escape_filter_value("it's"), "it\\'s");
    // Protobuf's JSON: int64 as a string, non-finite doubles as names.
    let h: crate::mlflow_api::MetricHistoryAnswer = serde_json::from_value(serde_json::json!({
        "metrics": [{"key": "k", "value": "NaN", "timestamp": "17", "step": 2}]
    }))
    .unwrap();
    let m = h.metrics.into_iter().next().unwrap().into_metric("k");
    assert_eq!((m.timestamp_ms, m.step), (17, 2));
    assert!(m.value.is_nan());
    let c = MlflowClient::new("http://127.0.0.1:5000/");
    let run = |uri: &str| MlflowRun {
        run_id: "r".into(),
        experiment_id: "1".into(),
        artifact_uri: uri.into(),
        status: "RUNNING".into(),
    };
    assert_eq!(
        c.artifact_base(&run("mlflow-artifacts:/1/r/artifacts"))
            .unwrap(),
        "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts"
    );
    assert_eq!(
        c.artifact_base(&run("mlflow-artifacts://other:81/1/r/artifacts"))
            .unwrap(),
        "http://other:81/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts"
    );
    assert!(matches!(
        c.artifact_base(&run("/srv/mlruns/1/r/artifacts")),
        Err(TrackingError::Unsupported(_))
    ));
}

fn dead_server() -> String {
    // Bound then released: connecting is refused at once, like a server that is down.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_down_server_queues_persistently_and_fast() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dead_server();
    let mut sink = MlflowSink::open(MlflowClient::new(&uri), "exp", "model", dir.path()).unwrap();
    let t = Instant::now();
    let r = sample("offline");
    let outcome = sink.submit(MlflowOp::Run { record: r.clone() }).unwrap();
    assert_eq!(outcome, Submitted::Queued);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Inside the backoff window the next one queues without a network attempt.
    let outcome = sink
        .submit(MlflowOp::Champion {
            version: "v1".into(),
            run_id: r.run_id.clone(),
            files: vec![],
            tags: Default::default(),
        })
        .unwrap();
    assert_eq!(outcome, Submitted::Queued);
    assert_eq!(sink.pending_len(), 2);
    assert!(sink.next_retry_in().unwrap() <= Duration::from_secs(1));

    // A restart finds both, in order.
    drop(sink);
    let mut sink = MlflowSink::open(MlflowClient::new(&uri), "exp", "model", dir.path()).unwrap();
    assert_eq!(sink.pending_len(), 2);
    let report = sink.flush_pending().unwrap();
    assert_eq!(
        report,
        FlushReport {
            sent: 0,
            dropped: 0,
            remaining: 2
        }
    );
    let entries: Vec<PendingEntry> = read_jsonl(sink.pending_path()).unwrap();
    assert!(matches!(&entries[0].op, MlflowOp::Run { record } if record.run_id == r.run_id));
    assert_eq!(entries[0].attempts, 2);
    assert!(
        entries[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("experiments/get-by-name"),
        "{entries:?}"
    );
    assert!(matches!(&entries[1].op, MlflowOp::Champion { .. }));
}

/// A backlog goes lineage first: the retry after an outage tries the training run queued
/// behind two drift checks before either of them, and the champion keeps its place after it.
#[test]
fn a_backlog_sends_the_models_lineage_before_routine_drift_checks() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dead_server();
    let mut sink = MlflowSink::open(MlflowClient::new(&uri), "exp", "model", dir.path()).unwrap();
    let check = |name: &str| {
        let mut r = RunRecord::new(RunKind::DriftCheck, name);
        r.metric("drift_score", 1.0);
        MlflowOp::Run { record: r.finish() }
    };
    let training = sample("retrain");
    let ops = [
        check("check 1"),
        check("check 2"),
        MlflowOp::Run {
            record: training.clone(),
        },
        MlflowOp::Champion {
            version: "v2".into(),
            run_id: training.run_id.clone(),
            files: vec![],
            tags: Default::default(),
        },
    ];
    for op in ops {
        assert_eq!(sink.submit(op).unwrap(), Submitted::Queued);
    }
    // The first check was tried on submit; the retry tries the training run next.
    sink.flush_pending().unwrap();
    let entries: Vec<PendingEntry> = read_jsonl(sink.pending_path()).unwrap();
    let attempts: Vec<(String, u32)> = entries
        .iter()
        .map(|e| (e.op.describe(), e.attempts))
        .collect();
    assert_eq!(
        attempts.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
        [1, 0, 1, 0],
        "{attempts:?}"
    );
    assert!(!entries[2].op.is_routine() && entries[0].op.is_routine());
    assert!(matches!(&entries[3].op, MlflowOp::Champion { .. }));
}

#[test]
fn mlflow_answers_are_read_by_type_and_a_missing_field_is_an_error() {
    use crate::mlflow_api::{RunAnswer, SearchModelVersionsAnswer};
    // Servers send the old `run_uuid` beside `run_id`; ids may be numbers.
    let run: RunAnswer = serde_json::from_value(serde_json::json!({"run": {"info": {
        "run_id": "abc", "run_uuid": "abc", "experiment_id": 3, "artifact_uri": "mlflow-artifacts:/3/abc"
    }}}))
    .unwrap();
    let run = run.run.into_run().unwrap();
    assert_eq!(
        (
            run.run_id.as_str(),
            run.experiment_id.as_str(),
            run.status.as_str()
        ),
        ("abc", "3", "RUNNING")
    );
    // No experiment id: not a run this client can use.
    assert!(
        serde_json::from_value::<RunAnswer>(
            serde_json::json!({"run": {"info": {"run_id": "abc"}}})
        )
        .is_err()
    );
    let versions: SearchModelVersionsAnswer = serde_json::from_value(serde_json::json!({
        "model_versions": [{"name": "m", "version": "2", "tags": [{"key": "sentimentd.version", "value": "v1"}]}]
    }))
    .unwrap();
    let v: MlflowModelVersion = versions.model_versions.into_iter().next().unwrap().into();
    assert_eq!(v.version, "2");
    assert_eq!(
        v.tags.get("sentimentd.version").map(String::as_str),
        Some("v1")
    );
    // An empty answer has no versions.
    let none: SearchModelVersionsAnswer = serde_json::from_str("{}").unwrap();
    assert!(none.model_versions.is_empty());
    // What the client does not need may be missing: a tag without a key or value, a
    // registered model without aliases, an answer it ignores that is not an object.
    let v: crate::mlflow_api::ModelVersionAnswer = serde_json::from_value(serde_json::json!({
        "model_version": {"name": "m", "version": 1, "tags": [{"value": "x"}, {"key": "k", "value": null}]}
    }))
    .unwrap();
    let v: MlflowModelVersion = v.model_version.into();
    assert_eq!(v.tags.get("k").map(String::as_str), Some(""));
    assert_eq!(v.tags.len(), 1);
    let m: crate::mlflow_api::RegisteredModelAnswer = serde_json::from_str("{}").unwrap();
    assert!(m.registered_model.aliases.is_empty());
    assert!(serde_json::from_str::<crate::mlflow_api::Ignored>("null").is_ok());
}
