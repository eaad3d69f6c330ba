//! The monitoring assets in `config/monitoring/`, proven with the real tools (Debian's
//! `prometheus` package, installed by scripts/test-deps.sh): promtool accepts the config and
//! the rules and passes the rules' unit tests, the daemon's `/metrics` passes
//! `promtool check metrics`, every metric the dashboard and the rules name is one the daemon
//! exports, and a real Prometheus scrapes a real sentimentd and reads its counters back.

mod common;

use common::{Daemon, free_port};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/monitoring")
        .join(file)
}

/// A tool from Debian's `prometheus` package; its absence is a failure that says how to fix
/// it, never a silent skip.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: scripts/test-deps.sh installs it (Debian package `prometheus`)"
    );
    Command::new(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_every_alert_passes_its_unit_test() {
    let dir = monitoring("");
    run_ok(
        tool("promtool")
            .current_dir(&dir)
            .args(["check", "config", "prometheus.yml"]),
    );
    let rules = run_ok(
        tool("promtool")
            .current_dir(&dir)
            .args(["check", "rules", "alerts.yml"]),
    );
    assert!(rules.contains("SUCCESS: 9 rules found"), "{rules}");
    run_ok(
        tool("promtool")
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]),
    );
    // Every alert has a unit test.
    let alerts = std::fs::read_to_string(monitoring("alerts.yml")).expect("alerts");
    let tests = std::fs::read_to_string(monitoring("alerts_test.yml")).expect("tests");
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no unit test"
            );
        }
    }
}

/// The daemon after some traffic: predictions, a batch file, a rejected row.
fn busy_daemon() -> Daemon {
    let d = Daemon::start();
    assert_eq!(d.predict(r#"{"text": "a lovely day"}"#).status, 200);
    d.drop_file("m.csv", b"id,text\n1,great\n2,\n");
    d.wait_processed("m.csv", Duration::from_secs(30));
    d
}

fn metrics_text(d: &Daemon, accept: Option<&str>) -> (String, String) {
    let mut req = common::agent().get(d.url("/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let mut r = req.call().expect("GET /metrics");
    (
        common::content_type(&r),
        r.body_mut().read_to_string().expect("body"),
    )
}

#[test]
fn metrics_pass_promtool_check_metrics_and_openmetrics_is_served_to_who_asks() {
    let d = busy_daemon();
    let (content_type, text) = metrics_text(&d, None);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && lint.trim().is_empty(), "{lint}");

    let (content_type, om) = metrics_text(&d, Some("application/openmetrics-text;version=1.0.0"));
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.trim_end().ends_with("# EOF"));
    assert!(om.contains("# TYPE sentiment_requests counter"));
    assert!(text.contains("# TYPE sentiment_requests_total counter"));
}

/// Names of every series the daemon exports, from the classic text format.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("sentiment_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_one_the_daemon_exports() {
    let d = busy_daemon();
    let (_, text) = metrics_text(&d, None);
    let exported = exported(&text);
    let mut checked = 0;
    for file in ["grafana-dashboard.json", "alerts.yml", "alerts_test.yml"] {
        let asset = std::fs::read_to_string(monitoring(file)).expect("asset");
        let names = referenced(&asset);
        assert!(!names.is_empty(), "{file} names no metric");
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
        );
        checked += names.len();
    }
    assert!(checked > 20, "{checked}");
    // The dashboard is importable as is: its datasource is an input.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring("grafana-dashboard.json")).expect("json"),
    )
    .expect("valid JSON");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    for p in dash["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(port: u16, q: &str) -> Option<f64> {
    let mut r = common::agent()
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query("query", q)
        .call()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_reads_the_counters_back() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sentimentd\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            d.port
        ),
    )
    .expect("config");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _prometheus = Prometheus(
        tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    for i in 0..7 {
        assert_eq!(
            d.predict(&format!(r#"{{"text": "good text {i}"}}"#)).status,
            200
        );
    }
    let texts: Vec<String> = (0..40).map(|i| format!("batch text {i}")).collect();
    let body = serde_json::json!({ "texts": texts }).to_string();
    assert_eq!(
        d.post("/predict", Some("application/json"), &body).status,
        200
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let want = [
        ("up{job=\"sentimentd\"}", 1.0),
        ("sum(sentiment_requests_total{job=\"sentimentd\"})", 8.0),
        (
            "sum(sentiment_predictions_total{job=\"sentimentd\",channel=\"http\"})",
            47.0,
        ),
        (
            "sentiment_model_info{job=\"sentimentd\",fallback=\"true\"}",
            1.0,
        ),
    ];
    loop {
        let got: Vec<Option<f64>> = want.iter().map(|(q, _)| query(port, q)).collect();
        if want.iter().zip(&got).all(|((_, w), g)| *g == Some(*w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not read the counters back: {:?} (want {want:?})\n{}",
            got,
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
