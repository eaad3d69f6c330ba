//! Integration tests of `sentimentd serve`: the real binary, a free port, a temp state dir.
//! These run against the lexicon fallback (`[train] on_start = "never"`) unless training is
//! the point of the test.

mod common;

use common::{Daemon, csv_text, metric_in, metric_sum, names, read_csv};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PANIC_TEXT: &str = "__sentimentd_test_fault_panic__";
const SLOW_TEXT: &str = "__sentimentd_test_fault_slow__";

fn assert_prediction(p: &serde_json::Value) {
    let label = p["label"].as_str().unwrap_or("");
    assert!(
        ["negative", "neutral", "positive"].contains(&label),
        "label {p}"
    );
    let probs = &p["probabilities"];
    let sum: f64 = ["negative", "neutral", "positive"]
        .iter()
        .map(|k| probs[k].as_f64().unwrap_or(f64::NAN))
        .sum();
    assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}: {p}");
    let score = p["score"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (score - probs[label].as_f64().unwrap_or(f64::NAN)).abs() < 1e-6,
        "score is the label's probability: {p}"
    );
    assert!(p["model_version"].as_str().is_some_and(|v| !v.is_empty()));
}

/// A port in use is the commonest failed start: it stops the start with one line naming the
/// address, before any actor starts (actors torn down again outside their runtime used to
/// log two false "panic ... there is no reactor running" errors first).
#[test]
fn a_port_in_use_stops_the_start_with_one_clear_line_and_no_panic() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let mut d = Daemon::configure("", "", "", "");
    d.port = taken.local_addr().expect("addr").port();
    d.spawn_no_wait(&[]);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = d.logs();
    assert!(
        logs.contains(&format!("cannot listen on 127.0.0.1:{}", d.port))
            && logs.contains("Address already in use"),
        "{logs}"
    );
    assert!(!logs.contains("panic"), "{logs}");
    assert!(!d.root().join("state").exists(), "no actor started: {logs}");
}

/// A folder that cannot be made (the inbox configured onto a file) stops the start with the
/// key and path, and nothing else: the actors started before it are torn down quietly.
#[test]
fn an_inbox_that_is_a_file_stops_the_start_with_its_key_and_no_panic() {
    let mut d = Daemon::configure("", "", "", "");
    let file = d.root().join("not-a-folder");
    std::fs::write(&file, "").expect("file");
    let config = std::fs::read_to_string(&d.config).expect("config");
    let inbox = format!("inbox = \"{}/inbox\"", d.root().display());
    std::fs::write(
        &d.config,
        config.replace(&inbox, &format!("inbox = \"{}\"", file.display())),
    )
    .expect("config");
    d.spawn_no_wait(&[]);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = d.logs();
    assert!(
        logs.contains("cannot create ingest.inbox") && logs.contains("not-a-folder"),
        "{logs}"
    );
    assert!(!logs.contains("panic"), "{logs}");
}

#[test]
fn predict_single_and_batch() {
    let d = Daemon::start();
    let r = d.predict(r#"{"text": "I love this, what a great day!"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    assert_prediction(&p);

    let r =
        d.predict(r#"{"texts": ["I hate this, awful", "the meeting is at 5", "great, love it"]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let preds = v["predictions"].as_array().cloned().unwrap_or_default();
    assert_eq!(preds.len(), 3, "{v}");
    preds.iter().for_each(assert_prediction);
    // Same order and same answers as one-by-one requests.
    let single = d.predict(r#"{"text": "the meeting is at 5"}"#).json();
    assert_eq!(preds[1], single);
}

#[test]
fn every_error_status_is_json_with_a_reason() {
    let d = Daemon::start_with(
        "max_body_bytes = 2000\nmax_batch_texts = 3",
        "",
        "",
        "[data]\nmax_text_chars = 50",
    );
    let too_big = format!(r#"{{"text": "{}"}}"#, "a".repeat(3000));
    let too_long = format!(r#"{{"text": "{}"}}"#, "é".repeat(51));
    let json = Some("application/json");
    // One row a case, so the table reads as a table.
    #[rustfmt::skip]
    let cases: [(&str, Option<&str>, &str, u16, &str); 14] = [
        ("malformed",        json,                     r#"{"text": "#,                       400, "malformed JSON"),
        ("wrong type",       json,                     r#"{"text": 42}"#,                    400, "wrong type"),
        ("texts wrong type", json,                     r#"{"texts": "a"}"#,                  400, "wrong type"),
        ("not an object",    json,                     r#"["a"]"#,                           400, "wrong type"),
        ("missing field",    json,                     r#"{"txt": "a"}"#,                    400, "missing field"),
        ("both fields",      json,                     r#"{"text": "a", "texts": ["b"]}"#,   400, "not both"),
        ("too big",          json,                     &too_big,                             413, "larger than the limit"),
        ("content type",     Some("text/plain"),       r#"{"text": "a"}"#,                   415, "content type"),
        ("form",             Some("application/x-www-form-urlencoded"), "text=a",            415, "content type"),
        ("empty",            json,                     r#"{"text": "   "}"#,                 422, "empty"),
        ("too long",         json,                     &too_long,                            422, "too long"),
        ("too many",         json,                     r#"{"texts": ["a", "b", "c", "d"]}"#, 422, "too many texts"),
        ("empty list",       json,                     r#"{"texts": []}"#,                   422, "empty"),
        ("empty in list",    json,                     r#"{"texts": ["a", ""]}"#,            422, "texts[1] is empty"),
    ];
    for (name, ct, body, status, needle) in cases {
        let r = d.post("/predict", ct, body);
        assert_eq!(r.status, status, "{name}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
    }
    // Exactly 50 characters (multi-byte) is still accepted.
    let r = d.predict(&format!(r#"{{"text": "{}"}}"#, "é".repeat(50)));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d.get("/nope");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = d.get("/predict");
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());
    // Bad input is counted as client errors, never as server errors.
    d.assert_metrics(&[
        (r#"sentiment_requests_total{outcome="server_error"}"#, 0.0),
        (r#"sentiment_requests_total{outcome="client_error"}"#, 14.0),
    ]);
}

#[test]
fn health_ready_and_model() {
    let d = Daemon::start();
    let h = d.get("/health");
    assert_eq!(
        (h.status, h.json()),
        (200, serde_json::json!({"status": "ok"}))
    );
    let r = d.get("/ready");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["fallback"], true);
    assert_eq!(v["kind"], "lexicon");
    assert!(v["model_version"].is_string());
    let m = d.get("/model");
    assert_eq!(m.status, 200);
    let m = m.json();
    assert_eq!(m["fallback"], true);
    assert_eq!(m["kind"], "lexicon");
    assert_eq!(m["version"], v["model_version"]);
    let metrics = d.get("/metrics").body;
    assert!(
        metrics.contains(r#"sentiment_model_info{version=""#)
            && metrics.contains(r#"fallback="true"} 1"#),
        "{metrics}"
    );
}

#[test]
fn one_predict_increments_exactly_one_request_and_one_label() {
    let d = Daemon::start();
    let labels = ["negative", "neutral", "positive"];
    let snapshot = || {
        let text = d.get("/metrics").body;
        let requests: f64 = ["ok", "client_error", "server_error"]
            .iter()
            .map(|o| {
                metric_in(
                    &text,
                    &format!(r#"sentiment_requests_total{{outcome="{o}"}}"#),
                )
            })
            .sum();
        let per_label: Vec<f64> = labels
            .iter()
            .map(|l| {
                metric_sum(
                    &text,
                    "sentiment_predictions_total",
                    &[&format!(r#"label="{l}""#), r#"channel="http""#],
                )
            })
            .collect();
        let latency = metric_in(&text, "sentiment_request_latency_seconds_count");
        (requests, per_label, latency)
    };
    let (req0, lab0, lat0) = snapshot();
    let p = d.predict(r#"{"text": "this is wonderful"}"#).json();
    let (req1, lab1, lat1) = snapshot();
    assert_eq!(req1 - req0, 1.0);
    assert_eq!(lat1 - lat0, 1.0);
    for (i, l) in labels.iter().enumerate() {
        let expected = if p["label"] == *l { 1.0 } else { 0.0 };
        assert_eq!(lab1[i] - lab0[i], expected, "label {l} after {p}");
    }
    // A batch request is one request and one label count per text.
    d.predict(r#"{"texts": ["good", "bad", "ok then"]}"#);
    let (req2, lab2, _) = snapshot();
    assert_eq!(req2 - req1, 1.0);
    assert_eq!(lab2.iter().sum::<f64>() - lab1.iter().sum::<f64>(), 3.0);
}

/// Every input data line must be in exactly one of the scored output and the error report.
/// The test process's umask (read without changing it, from /proc).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

fn assert_accounted(
    output: &[Vec<String>],
    errors: &[Vec<String>],
    id_col: usize,
    ids: &BTreeSet<String>,
) {
    let mut seen = BTreeSet::new();
    for row in &output[1..] {
        assert!(
            seen.insert(row[id_col].clone()),
            "row {} twice in the output",
            row[id_col]
        );
    }
    let scored = seen.len();
    for row in errors.iter().skip(1) {
        // raw starts with the id column (first column of the inputs used here).
        let id = row[2].split(',').next().unwrap_or("").to_string();
        assert!(
            seen.insert(id.clone()),
            "row {id} both scored and rejected, or rejected twice"
        );
    }
    assert_eq!(
        &seen,
        ids,
        "scored {scored}, rejected {}",
        errors.len().saturating_sub(1)
    );
}

#[test]
fn batch_with_good_and_bad_rows_is_accounted_row_by_row() {
    let d = Daemon::start();
    let content = b"id,text,label\n\
1,what a lovely morning,positive\n\
2,,neutral\n\
3,\"quoted, with comma\",0\n\
4,this is terrible,sideways\n\
5,too,many,fields\n\
6,\xff\xfe bad bytes,\n\
7,\"line one\nline two\",\n\
8,just a plain statement,\n";
    d.drop_file("mixed.csv", content);
    d.wait_processed("mixed.csv", Duration::from_secs(30));

    let out = read_csv(&d.root().join("outbox/mixed.csv"));
    // Outputs honour the process umask (the test runs under 022): group and others may read.
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["outbox/mixed.csv", "rejected/mixed.csv.errors.csv"] {
            let mode = std::fs::metadata(d.root().join(f))
                .expect("output")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644 & !umask(), "{f}: {mode:o}");
        }
    }
    assert_eq!(
        out[0],
        [
            "id",
            "text",
            "input_label",
            "label",
            "score",
            "p_negative",
            "p_neutral",
            "p_positive",
            "model_version"
        ]
    );
    let ids: Vec<&str> = out[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["1", "3", "7", "8"]);
    assert_eq!(out[2][1], "quoted, with comma");
    assert_eq!(out[3][1], "line one\nline two");
    let version = d.get("/model").json()["version"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    for row in &out[1..] {
        assert!(["negative", "neutral", "positive"].contains(&row[3].as_str()));
        assert_eq!(row[8], version);
    }

    let errors = read_csv(&d.root().join("rejected/mixed.csv.errors.csv"));
    assert_eq!(errors[0], ["line", "reason", "raw"]);
    let lines: Vec<(&str, &str)> = errors[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], ("3", "empty text"));
    assert_eq!(lines[1].0, "5");
    assert!(lines[1].1.contains("unknown label"));
    assert_eq!(lines[2].0, "6");
    assert!(lines[2].1.contains("fields"));
    assert_eq!(lines[3], ("7", "invalid UTF-8 in column `text`"));
    let all: BTreeSet<String> = (1..=8).map(|i| i.to_string()).collect();
    assert_accounted(&out, &errors, 0, &all);

    assert_eq!(names(&d.root().join("archive")), ["mixed.csv"]);
    assert!(names(&d.inbox()).is_empty());
    let stored = names(&d.root().join("labelled"));
    assert_eq!(stored.len(), 1, "one labelled file per batch: {stored:?}");
    assert!(stored[0].ends_with("-batch-mixed.csv.csv"), "{stored:?}");
    let labelled = read_csv(&d.root().join("labelled").join(&stored[0]));
    assert_eq!(
        labelled[0],
        ["text", "label", "source", "origin", "line", "arrived_at"]
    );
    assert_eq!(labelled[1..].len(), 2);
    assert_eq!(
        labelled[1][..5],
        ["what a lovely morning", "positive", "", "mixed.csv", "2"]
    );
    assert_eq!(
        labelled[2][..5],
        ["quoted, with comma", "negative", "", "mixed.csv", "4"]
    );
    assert!(
        labelled[1][5].starts_with("20"),
        "arrival time: {:?}",
        labelled[1][5]
    );

    d.assert_metrics(&[
        (r#"sentiment_batches_total{outcome="processed"}"#, 1.0),
        (r#"sentiment_batch_rows_total{outcome="scored"}"#, 4.0),
        (r#"sentiment_batch_rows_total{outcome="rejected"}"#, 4.0),
    ]);
    let batch_predictions: f64 = ["negative", "neutral", "positive"]
        .iter()
        .map(|l| {
            d.metric_sum(
                "sentiment_predictions_total",
                &[&format!(r#"label="{l}""#), r#"channel="batch""#],
            )
        })
        .sum();
    assert_eq!(batch_predictions, 4.0);
}

#[test]
fn file_without_text_column_is_rejected_with_its_reason() {
    let d = Daemon::start();
    d.drop_file("notext.csv", b"id,body\n1,hello\n");
    // Files present before start-up, written in place (no rename), are taken too.
    d.wait_processed("notext.csv", Duration::from_secs(30));
    assert_eq!(
        names(&d.root().join("rejected")),
        ["notext.csv", "notext.csv.error.txt"]
    );
    let why =
        std::fs::read_to_string(d.root().join("rejected/notext.csv.error.txt")).unwrap_or_default();
    assert!(
        why.contains("notext.csv: no `text` column (found: id, body)"),
        "{why}"
    );
    assert!(names(&d.root().join("outbox")).is_empty());
    assert_eq!(
        d.metric(r#"sentiment_batches_total{outcome="rejected"}"#),
        1.0
    );
}

#[test]
fn files_present_at_startup_and_written_in_place_are_taken_and_others_ignored() {
    let mut d = Daemon::start();
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    std::fs::write(d.inbox().join("early.csv"), "id,text\n1,good\n").ok();
    std::fs::write(d.inbox().join(".hidden.csv"), "id,text\n1,good\n").ok();
    std::fs::write(d.inbox().join("upload.csv.part"), "id,text\n1,good\n").ok();
    std::fs::write(d.inbox().join("upload.tmp"), "id,text\n1,good\n").ok();
    std::fs::write(d.inbox().join("notes.txt"), "hello").ok();
    d.spawn(&[]);
    d.wait_processed("early.csv", Duration::from_secs(30));
    assert_eq!(names(&d.root().join("outbox")), ["early.csv"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        names(&d.inbox()),
        [".hidden.csv", "notes.txt", "upload.csv.part", "upload.tmp"]
    );
    // Same name again: the earlier outputs are kept, the new ones get a suffix.
    d.drop_file("early.csv", b"id,text\n2,bad\n");
    d.wait_processed("early.csv", Duration::from_secs(30));
    assert_eq!(
        names(&d.root().join("outbox")),
        ["early.1.csv", "early.csv"]
    );
    assert_eq!(read_csv(&d.root().join("outbox/early.1.csv"))[1][0], "2");
}

fn big_batch(rows: usize, slow_every: usize) -> (Vec<u8>, BTreeSet<String>) {
    let mut s = String::from("id,text,label\n");
    let mut ids = BTreeSet::new();
    for i in 0..rows {
        let text = if slow_every > 0 && i % slow_every == 0 {
            SLOW_TEXT.to_string()
        } else {
            format!("row {i} is a good and happy text")
        };
        let label = ["negative", "neutral", "positive"][i % 3];
        s.push_str(&format!("{i},{text},{label}\n"));
        ids.insert(i.to_string());
    }
    (s.into_bytes(), ids)
}

fn assert_exactly_once(d: &Daemon, name: &str, ids: &BTreeSet<String>) {
    assert_all_exactly_once(d, &[(name, ids)]);
}

/// Every file's rows are scored or rejected exactly once, its labelled rows stored once, and
/// nothing is left in the inbox, the processing folder or the journal.
fn assert_all_exactly_once(d: &Daemon, files: &[(&str, &BTreeSet<String>)]) {
    let mut expected: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    expected.sort();
    for (name, ids) in files {
        let out = read_csv(&d.root().join("outbox").join(name));
        let errors_path = d.root().join("rejected").join(format!("{name}.errors.csv"));
        let errors = if errors_path.exists() {
            read_csv(&errors_path)
        } else {
            Vec::new()
        };
        assert_accounted(&out, &errors, 0, ids);
    }
    assert_eq!(
        names(&d.root().join("outbox")),
        expected,
        "no stray or duplicate outputs"
    );
    assert_eq!(names(&d.root().join("archive")), expected);
    assert!(names(&d.inbox()).is_empty());
    assert!(names(&d.root().join("journal")).is_empty());
    assert!(names(&d.root().join("processing")).is_empty());
    let stored = names(&d.root().join("labelled"));
    assert_eq!(
        stored.len(),
        files.len(),
        "one labelled file per batch: {stored:?}"
    );
    for (name, ids) in files {
        let Some(file) = stored
            .iter()
            .find(|f| f.contains(&format!("-batch-{name}")))
        else {
            panic!("no labelled file for {name}: {stored:?}");
        };
        let labelled = read_csv(&d.root().join("labelled").join(file));
        let mut lines = BTreeSet::new();
        for row in &labelled[1..] {
            assert!(
                lines.insert(row[4].clone()),
                "{name}: labelled line {} stored twice",
                row[4]
            );
        }
        assert_eq!(
            lines.len(),
            ids.len(),
            "{name}: every labelled row stored once"
        );
        assert_eq!(
            labelled.iter().filter(|r| r[0] == "text").count(),
            1,
            "one header"
        );
    }
}

#[test]
fn kill_9_mid_batch_then_restart_loses_and_duplicates_nothing() {
    let mut d = Daemon::start_with("test_faults = true", "chunk_rows = 50", "", "");
    // 2,000 rows with a slow row in every chunk of 50: about 8 s of scoring; two more files
    // wait behind it, so several are in flight when the process dies.
    let (content, ids) = big_batch(2000, 50);
    let (small, small_ids) = big_batch(300, 0);
    d.drop_file("big.csv", &content);
    d.drop_file("more.csv", &content);
    d.drop_file("small.csv", &small);
    let journal = d.root().join("journal/big.csv.json");
    d.wait_for("the batch to start", Duration::from_secs(30), || {
        journal.exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    assert!(
        d.root().join("processing/big.csv").exists(),
        "killed before the end of the batch, with the file claimed"
    );
    assert!(!d.inbox().join("big.csv").exists());
    assert!(!d.root().join("outbox/big.csv").exists());
    assert!(d.inbox().join("more.csv").exists() && d.inbox().join("small.csv").exists());
    d.spawn(&[]);
    for name in ["big.csv", "more.csv", "small.csv"] {
        d.wait_processed(name, Duration::from_secs(120));
    }
    assert_all_exactly_once(
        &d,
        &[
            ("big.csv", &ids),
            ("more.csv", &ids),
            ("small.csv", &small_ids),
        ],
    );
}

#[test]
fn crash_at_every_step_then_restart_processes_exactly_once() {
    // Several labelled files wait in the inbox when the crash hits the first one taken: after
    // the restart every file is processed once, and every labelled row is in the labelled
    // store exactly once (one immutable file per batch, nothing truncated or appended twice).
    let files = ["a.csv", "b.csv", "c.csv"];
    for step in [
        "after_journal",
        "after_claim",
        "after_chunk",
        "after_output",
        "after_rejections",
        "after_labelled",
        "after_archive",
    ] {
        // The crash hook is only live with server.test_faults.
        let mut d = Daemon::start_with("test_faults = true", "", "", "");
        d.signal("TERM");
        d.wait_exit(Duration::from_secs(15));
        let mut all_ids = BTreeSet::new();
        let mut per_file = Vec::new();
        for (f, name) in files.iter().enumerate() {
            let mut content = b"id,text,label\n".to_vec();
            let mut ids = BTreeSet::new();
            for i in 0..300 {
                let id = format!("{name}-{i}");
                content.extend_from_slice(
                    format!("{id},text number {i} of file {f} is fine,positive\n").as_bytes(),
                );
                ids.insert(id.clone());
                all_ids.insert(id);
            }
            // One bad row so the rejection report is part of the run.
            let bad = format!("{name}-300");
            content.extend_from_slice(format!("{bad},,positive\n").as_bytes());
            ids.insert(bad);
            d.drop_file(name, &content);
            per_file.push(ids);
        }
        d.spawn_no_wait(&[("SENTIMENTD_TEST_CRASH_AT", step)]);
        let status = d.wait_exit(Duration::from_secs(60));
        assert!(
            !status.success(),
            "{step}: the injected crash should abort the process"
        );
        d.spawn(&[]);
        for name in files {
            d.wait_processed(name, Duration::from_secs(60));
        }
        for (name, ids) in files.iter().zip(&per_file) {
            let out = read_csv(&d.root().join("outbox").join(name));
            let errors = read_csv(&d.root().join(format!("rejected/{name}.errors.csv")));
            assert_accounted(&out, &errors, 0, ids);
        }
        assert_eq!(names(&d.root().join("outbox")), files, "{step}");
        assert_eq!(names(&d.root().join("archive")), files, "{step}");
        let labelled_files = names(&d.root().join("labelled"));
        assert_eq!(
            labelled_files.len(),
            3,
            "{step}: one file per batch: {labelled_files:?}"
        );
        let mut seen = BTreeSet::new();
        for f in &labelled_files {
            let rows = read_csv(&d.root().join("labelled").join(f));
            assert_eq!(
                rows[0],
                ["text", "label", "source", "origin", "line", "arrived_at"],
                "{step}"
            );
            for r in &rows[1..] {
                // "text number {i} of file {f} is fine" identifies the row.
                assert!(seen.insert(r[0].clone()), "{step}: {:?} stored twice", r[0]);
                assert!(files.contains(&r[3].as_str()), "{step}: origin {:?}", r[3]);
            }
        }
        assert_eq!(seen.len(), 900, "{step}: every labelled row once");
        assert!(
            d.logs().contains("injected crash"),
            "{step}: the crash hook ran"
        );
    }
}

#[test]
fn sigterm_drains_in_flight_work_and_exits_zero() {
    let mut d = Daemon::start_with(
        "test_faults = true\nshutdown_timeout_secs = 5",
        "chunk_rows = 20",
        "",
        "",
    );
    // An in-flight request that takes 200 ms must still be answered.
    let url = d.url("/predict");
    let slow = std::thread::spawn(move || {
        let mut r = common::agent()
            .post(url)
            .header("content-type", "application/json")
            .send(format!(r#"{{"text": "{SLOW_TEXT}"}}"#))
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ))
    });
    // And a batch in progress is left resumable.
    let (content, ids) = big_batch(400, 20);
    d.drop_file("drain.csv", &content);
    let journal = d.root().join("journal/drain.csv.json");
    d.wait_for("the batch to start", Duration::from_secs(30), || {
        journal.exists()
    });
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(7));
    assert_eq!(status.code(), Some(0), "{}", d.logs());
    assert!(t.elapsed() < Duration::from_secs(6));
    let answered = slow
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()));
    assert!(matches!(answered, Ok((200, _))), "{answered:?}");
    assert!(d.logs().contains("drained; exiting"));
    // Restart finishes the batch exactly once.
    d.spawn(&[]);
    d.wait_processed("drain.csv", Duration::from_secs(120));
    assert_exactly_once(&d, "drain.csv", &ids);
}

#[test]
fn a_panicking_handler_is_contained_and_counted() {
    let d = Daemon::start_with("test_faults = true", "", "", "");
    let r = d.predict(&format!(r#"{{"text": "{PANIC_TEXT}"}}"#));
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("internal error"))
    );
    // The same worker and the rest keep serving.
    for _ in 0..20 {
        assert_eq!(d.predict(r#"{"text": "fine"}"#).status, 200);
    }
    assert_eq!(
        d.metric(r#"sentiment_actor_restarts_total{actor="http"}"#),
        1.0
    );
    // In a batch, the inference actor contains it and only that row is rejected.
    d.drop_file(
        "p.csv",
        format!("id,text\n1,good\n2,{PANIC_TEXT}\n3,bad\n").as_bytes(),
    );
    d.wait_processed("p.csv", Duration::from_secs(30));
    let out = read_csv(&d.root().join("outbox/p.csv"));
    assert_eq!(out.len(), 3);
    let errors = read_csv(&d.root().join("rejected/p.csv.errors.csv"));
    assert_eq!(errors[1][0], "3");
    assert!(errors[1][1].contains("model failed on this row"));
    assert!(d.metric(r#"sentiment_actor_restarts_total{actor="inference"}"#) >= 1.0);
    assert_eq!(d.predict(r#"{"text": "still fine"}"#).status, 200);
    assert!(d.logs().contains("actor=\"http\"") || d.logs().contains("actor=http"));
}

#[test]
fn fault_hooks_are_inert_without_test_faults() {
    let d = Daemon::start();
    let r = d.predict(&format!(r#"{{"text": "{PANIC_TEXT}"}}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        d.metric(r#"sentiment_actor_restarts_total{actor="http"}"#),
        0.0
    );
}

#[test]
fn trains_in_the_background_then_swaps_the_model_in() {
    let dir_texts = [
        ("I love this, wonderful and great", "positive"),
        ("what a happy lovely day", "positive"),
        ("best thing ever, so good", "positive"),
        ("I hate this, awful and terrible", "negative"),
        ("worst day, so sad and bad", "negative"),
        ("this is horrible, I am angry", "negative"),
        ("the bus leaves at noon", "neutral"),
        ("the report is on the table", "neutral"),
        ("we meet on monday at nine", "neutral"),
    ];
    let mut train = String::from("text,label\n");
    for i in 0..20 {
        for (t, l) in dir_texts {
            train.push_str(&format!("\"{t} {i}\",{l}\n"));
        }
    }
    let mut val = String::from("text,label\n");
    for (t, l) in dir_texts {
        val.push_str(&format!("\"{t}\",{l}\n"));
    }
    let data_dir = tempfile::tempdir().expect("temp dir");
    let train_path = data_dir.path().join("train.csv");
    let val_path = data_dir.path().join("val.csv");
    std::fs::write(&train_path, train).expect("train csv");
    std::fs::write(&val_path, val).expect("val csv");
    let d = Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 1\nbatch_size = 16\nthreads = 1",
        &format!(
            "[data]\ntrain = [\"{}\"]\nval = \"{}\"\n\n[model]\nvocab_size = 100\nmin_token_frequency = 1\nbuckets = 1024\nembedding_dim = 8\nchar_ngram_max = 0\n",
            train_path.display(),
            val_path.display()
        ),
    );
    // Serving starts at once on the fallback while the model trains.
    let first = d.get("/model").json();
    let mut model = first.clone();
    d.wait_for(
        "the trained model to be swapped in",
        Duration::from_secs(300),
        || {
            model = d.get("/model").json();
            model["fallback"] == false
        },
    );
    assert_eq!(model["kind"], "fast", "{model}");
    let version = model["version"].as_str().unwrap_or("").to_string();
    assert!(!version.is_empty());
    assert!(model["metrics"]["validation"].is_object(), "{model}");
    if first["fallback"] == true {
        assert_eq!(d.metric("sentiment_model_swaps_total"), 1.0);
    }
    let p = d.predict(r#"{"text": "I love this"}"#).json();
    assert_prediction(&p);
    assert_eq!(p["model_version"], version.as_str());
    let ready = d.get("/ready").json();
    assert_eq!(ready["fallback"], false);
    assert!(d.get("/metrics").body.contains(&format!(
        "sentiment_model_info{{version=\"{version}\",kind=\"fast\",fallback=\"false\"}} 1"
    )));
    assert!(
        d.logs().contains("training epoch"),
        "training progress is logged"
    );
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    let mut d = Daemon::start();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15));
    let socket_path = d.root().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let path = socket_path.to_string_lossy().into_owned();
    d.spawn(&[
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.starts_with("READY=1\n"), "{first}");
    // Ready means a model answers.
    assert_eq!(d.get("/ready").status, 200);
    assert_eq!(recv(), "WATCHDOG=1");
    d.signal("TERM");
    let mut rest = Vec::new();
    loop {
        let m = recv();
        let stopping = m.starts_with("STOPPING=1");
        rest.push(m);
        if stopping {
            break;
        }
    }
    assert!(
        rest[..rest.len() - 1].iter().all(|m| m == "WATCHDOG=1"),
        "{rest:?}"
    );
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn batches_beyond_the_in_flight_limit_get_429_with_retry_after_and_never_a_5xx() {
    let d = Daemon::start_with(
        "test_faults = true\nmax_batch_texts = 64\nmax_inflight_texts = 64",
        "",
        "",
        "",
    );
    // Each batch holds one slow text (200 ms), so it stays in the inference pool a while;
    // the limit admits one 64-text batch at a time.
    let mut texts: Vec<String> = (0..63).map(|i| format!("a fine text number {i}")).collect();
    texts.push(SLOW_TEXT.to_string());
    let body = serde_json::json!({ "texts": texts }).to_string();
    let url = d.url("/predict");
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let mut r = common::agent()
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body)
                    .map_err(|e| e.to_string())?;
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                Ok::<_, String>((status, retry_after, text))
            })
        })
        .collect();
    // Single texts and /health are answered on the workers meanwhile.
    assert_eq!(d.get("/health").status, 200);
    assert_eq!(d.predict(r#"{"text": "still answered"}"#).status, 200);
    let mut ok = 0;
    let mut throttled = 0;
    for c in clients {
        let (status, retry_after, text) = c
            .join()
            .unwrap_or_else(|_| Err("client panicked".into()))
            .unwrap_or_else(|e| panic!("{e}"));
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                assert_eq!(v["predictions"].as_array().map(Vec::len), Some(64));
                ok += 1;
            }
            429 => {
                assert_eq!(retry_after.as_deref(), Some("1"), "{text}");
                assert!(text.contains("server.max_inflight_texts"), "{text}");
                throttled += 1;
            }
            other => panic!("status {other}: {text}"),
        }
    }
    assert!(ok >= 1, "at least one batch is served");
    assert!(
        throttled >= 1,
        "concurrent batches beyond the limit are throttled"
    );
    d.assert_metrics(&[
        (
            r#"sentiment_requests_total{outcome="throttled"}"#,
            f64::from(throttled),
        ),
        (r#"sentiment_requests_total{outcome="server_error"}"#, 0.0),
    ]);
    // Once the pool is free, the same batch is accepted again.
    assert_eq!(
        d.post("/predict", Some("application/json"), &body).status,
        200
    );
}

#[test]
fn a_configured_lexicon_drives_the_fallback_and_a_missing_one_stops_the_start() {
    let bundled = Daemon::start();
    let word = r#"{"text": "zorblax"}"#;
    assert_eq!(bundled.predict(word).json()["label"], "neutral");

    let dir = tempfile::tempdir().expect("dir");
    let lexicon = dir.path().join("brand.txt");
    std::fs::write(
        &lexicon,
        "zorblax\t3.5\t0.5\t[4, 3, 4, 3, 4, 3, 4, 3, 4, 3]\n",
    )
    .expect("lexicon");
    let custom = Daemon::start_with(
        "",
        "",
        "",
        &format!("[data]\nlexicon = \"{}\"", lexicon.display()),
    );
    let v = custom.predict(word).json();
    assert_eq!(v["label"], "positive", "{v}");
    assert_eq!(custom.get("/model").json()["kind"], "lexicon");

    let missing = dir.path().join("missing.txt");
    let mut d = Daemon::configure(
        "",
        "",
        "",
        &format!("[data]\nlexicon = \"{}\"", missing.display()),
    );
    d.spawn_no_wait(&[]);
    assert!(!d.wait_exit(Duration::from_secs(30)).success());
    let logs = d.logs();
    assert!(
        logs.contains("[data] lexicon") && logs.contains("missing.txt"),
        "{logs}"
    );
}

#[test]
fn a_drain_past_its_bound_saves_the_reputation_then_exits_non_zero() {
    let mut d = Daemon::configure(
        "test_faults = true\nshutdown_timeout_secs = 1",
        "chunk_rows = 50",
        "",
        // Saved only by the shutdown: the periodic save is an hour away.
        "[reputation]\nsave_every_secs = 3600\n",
    );
    // A temp file a crash left in the state folder is cleared at start.
    let state = d.root().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let stale = state.join(".sentimentd-crashed.tmp");
    std::fs::write(&stale, b"half a reputation").expect("stale temp");
    d.spawn(&[]);
    assert!(!stale.exists(), "the stale temp file is removed at start");
    let r = d.predict(r#"{"text": "what a great product", "source": "acme"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    // A chunk of 50 slow rows takes 10 s: far past the 1 s drain bound.
    let content = csv_text("id,text", (0..50).map(|i| format!("{i},{SLOW_TEXT}")));
    d.drop_file("slow.csv", content.as_bytes());
    d.wait_claimed("slow.csv");
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(2), "{}", d.logs());
    assert!(
        d.logs()
            .contains("drain exceeded server.shutdown_timeout_secs"),
        "{}",
        d.logs()
    );
    let saved = std::fs::read_to_string(state.join("reputation.json")).expect("reputation saved");
    assert!(saved.contains("acme"), "{saved}");
    // The abandoned batch resumes on the next start.
    d.spawn(&[]);
    d.wait_processed("slow.csv", Duration::from_secs(60));
    assert_eq!(read_csv(&d.root().join("outbox/slow.csv")).len(), 51);
}
