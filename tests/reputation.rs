//! The reputation view through the public surface: sources from `/predict` and from batch
//! columns, time from `created_at`, per-source buckets and the spike alert in
//! `GET /reputation` and `/metrics`, bounded sources, strict times, and a restart.

mod common;

use common::{Daemon, read_csv, unix_now as now};
use serde_json::Value;
use std::time::Duration;

const NEG: &str = "I hate this, it is awful and terrible";
const POS: &str = "I love this, it is wonderful and great";

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_default()
}

fn plain(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn source<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == name))
        .unwrap_or_else(|| panic!("no source {name} in {report}"))
}

/// Distinct values of the `source` label of `name` in an exposition.
fn source_labels(text: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.split("source=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn sentiment_per_source_over_time_with_a_spike_alert_that_survives_a_restart() {
    common::away_from_hour_boundary();
    let mut d = Daemon::start_with(
        "",
        "",
        "",
        "[reputation]\nbucket_secs = 3600\nhistory_buckets = 6\nspike_min_texts = 10\nsave_every_secs = 1\n",
    );
    let t = now();
    let h = 3600;
    // Four hours of history: acme 10% negative, globex 50%. This hour: acme 80% negative.
    let mut csv = String::from("text,brand,created_at\n");
    for k in 1..=4 {
        let when = t - k * h;
        for i in 0..20 {
            let text = if i < 2 { NEG } else { POS };
            // Three timestamp formats in one file.
            let stamp = match i % 3 {
                0 => rfc3339(when),
                1 => plain(when),
                _ => when.to_string(),
            };
            csv.push_str(&format!("\"{text}\",acme,{stamp}\n"));
        }
        for i in 0..10 {
            let text = if i < 5 { NEG } else { POS };
            csv.push_str(&format!("\"{text}\",globex,{}\n", rfc3339(when)));
        }
    }
    for i in 0..20 {
        let text = if i < 16 { NEG } else { POS };
        csv.push_str(&format!("\"{text}\",acme,{}\n", rfc3339(t)));
    }
    for i in 0..10 {
        let text = if i < 5 { NEG } else { POS };
        csv.push_str(&format!("\"{text}\",globex,{}\n", rfc3339(t)));
    }
    d.drop_file("mentions.csv", csv.as_bytes());
    d.wait_processed("mentions.csv", Duration::from_secs(60));

    // HTTP requests name their source in the body; without one they count as unknown.
    let one = d.predict(&format!(r#"{{"text": "{POS}", "source": "acme"}}"#));
    assert_eq!(one.status, 200, "{}", one.body);
    let many = d.predict(&format!(
        r#"{{"texts": ["{NEG}", "{POS}"], "source": "globex"}}"#
    ));
    assert_eq!(many.status, 200, "{}", many.body);
    assert_eq!(d.predict(&format!(r#"{{"text": "{NEG}"}}"#)).status, 200);
    let bad = d.predict(r#"{"text": "fine", "source": 42}"#);
    assert_eq!(bad.status, 400, "a source must be a string: {}", bad.body);

    let report = d.get("/reputation").json();
    assert_eq!(report["mode"], "top");
    assert_eq!(report["bucket_secs"], 3600);
    let acme = source(&report, "acme");
    assert_eq!(acme["total"], 101);
    assert_eq!(acme["negative"], 24);
    let trend = acme["trend"].as_array().cloned().unwrap_or_default();
    assert_eq!(trend.len(), 5, "four hours of history and this one: {acme}");
    let latest = &trend[4];
    assert_eq!(
        (latest["negative"].clone(), latest["total"].clone()),
        (16.into(), 21.into())
    );
    assert_eq!(latest["start_unix"], t - t.rem_euclid(h));
    assert!(latest["spike"]["spike"] == true, "{latest}");
    assert_eq!(acme["alert"], true);
    assert_eq!(trend[0]["negative"], 2);
    let globex = source(&report, "globex");
    assert_eq!(globex["total"], 52);
    assert_eq!(globex["alert"], false);
    assert_eq!(source(&report, "unknown")["total"], 1);

    // The keeper refreshes the gauges every few seconds.
    d.wait_for(
        "the acme alert in /metrics",
        Duration::from_secs(15),
        || d.metric(r#"sentiment_reputation_alert{source="acme"}"#) == 1.0,
    );
    assert_eq!(
        d.metric(r#"sentiment_reputation_alert{source="globex"}"#),
        0.0
    );
    let share = d.metric(r#"sentiment_negative_share{source="acme"}"#);
    assert!((share - 16.0 / 21.0).abs() < 1e-9, "{share}");
    d.assert_metrics(&[
        (
            r#"sentiment_predictions_total{label="negative",channel="batch",source="acme"}"#,
            24.0,
        ),
        (
            r#"sentiment_predictions_total{label="positive",channel="http",source="acme"}"#,
            1.0,
        ),
    ]);
    assert!(
        d.logs().contains("reputation alert: negative spike"),
        "{}",
        d.logs()
    );

    // A restart keeps the view.
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(30));
    d.spawn(&[]);
    let after = d.get("/reputation").json();
    assert_eq!(after["sources"], report["sources"]);
    d.wait_for(
        "the acme alert after the restart",
        Duration::from_secs(15),
        || d.metric(r#"sentiment_reputation_alert{source="acme"}"#) == 1.0,
    );
}

#[test]
fn sources_stay_bounded_whatever_the_input() {
    let d = Daemon::start_with("", "", "", "[reputation]\nmax_sources = 2\n");
    let csv = common::csv_text(
        "text,source",
        (0..60).map(|i| format!("\"{POS}\",account-{i}")),
    );
    d.drop_file("many.csv", csv.as_bytes());
    d.wait_processed("many.csv", Duration::from_secs(60));
    for i in 0..30 {
        let body = format!(r#"{{"text": "{NEG}", "source": "visitor-{i}"}}"#);
        assert_eq!(d.predict(&body).status, 200);
    }
    let report = d.get("/reputation").json();
    let sources = report["sources"].as_array().cloned().unwrap_or_default();
    assert!(sources.len() <= 4, "two tracked, other, unknown: {report}");
    let total: u64 = sources.iter().filter_map(|s| s["total"].as_u64()).sum();
    assert_eq!(total, 90, "every text is counted once: {report}");
    assert!(source(&report, "other")["total"].as_u64() >= Some(86));
    let text = d.get("/metrics").body;
    for family in [
        "sentiment_predictions_total",
        "sentiment_negative_share",
        "sentiment_reputation_alert",
    ] {
        let labels = source_labels(&text, family);
        assert!(labels.len() <= 4, "{family}: {labels:?}");
    }
}

#[test]
fn strict_times_reject_unreadable_rows_and_lenient_ones_count_at_arrival() {
    common::away_from_hour_boundary();
    let csv = format!(
        "text,source,created_at\n\"{POS}\",acme,2020-05-01T10:00:00Z\n\"{NEG}\",acme,not a date\n\"{NEG}\",globex,\n\"{POS}\",acme,2099-01-01T00:00:00Z\n"
    );
    let strict = Daemon::start_with("", "", "", "[reputation]\nstrict_time = true\n");
    strict.drop_file("times.csv", csv.as_bytes());
    strict.wait_processed("times.csv", Duration::from_secs(60));
    let out = read_csv(&strict.root().join("outbox/times.csv"));
    assert_eq!(out.len(), 2, "header and the one row with a time: {out:?}");
    let errors = read_csv(&strict.root().join("rejected/times.csv.errors.csv"));
    let lines: Vec<(&str, &str)> = errors[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(lines.len(), 3, "{errors:?}");
    assert_eq!(lines[0].0, "3");
    assert!(
        lines[0]
            .1
            .contains("unreadable or future time in column `created_at`: \"not a date\""),
        "{lines:?}"
    );
    assert_eq!(lines[1].0, "4");
    // A time in the future (a clock or time-zone error) is not taken either.
    assert_eq!(lines[2].0, "5");
    assert!(lines[2].1.contains("2099-01-01"), "{lines:?}");
    let acme = source(&strict.get("/reputation").json(), "acme").clone();
    assert_eq!(acme["total"], 1);
    assert_eq!(acme["trend"][0]["start"], "2020-05-01T10:00:00Z");
    drop(strict);

    // Lenient, with a configured source list: globex is not tracked by name.
    let lenient = Daemon::start_with("", "", "", "[reputation]\nsources = [\"acme\"]\n");
    lenient.drop_file("times.csv", csv.as_bytes());
    lenient.wait_processed("times.csv", Duration::from_secs(60));
    let out = read_csv(&lenient.root().join("outbox/times.csv"));
    assert_eq!(out.len(), 5, "{out:?}");
    assert!(
        !lenient
            .root()
            .join("rejected/times.csv.errors.csv")
            .exists()
    );
    let report = lenient.get("/reputation").json();
    assert_eq!(report["mode"], "configured");
    let names: Vec<&str> = report["sources"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["source"].as_str()).collect())
        .unwrap_or_default();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["acme", "other", "unknown"]);
    let acme = source(&report, "acme");
    assert_eq!(acme["total"], 3);
    // The rows without a readable (or with a future) time count in the current bucket; the
    // 2020 row is older than the history kept, so it is in the totals only.
    let trend = acme["trend"].as_array().cloned().unwrap_or_default();
    assert_eq!(trend.len(), 1, "{acme}");
    assert_eq!(trend[0]["total"], 2);
    assert_eq!(trend[0]["start_unix"], now() - now().rem_euclid(3600));
    assert_eq!(source(&report, "other")["total"], 1);
}
