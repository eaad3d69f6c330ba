//! SIGHUP re-reads the config file: what a running daemon can change takes effect at once,
//! the rest is named as needing a restart, and an invalid file changes nothing.

mod common;

use common::{Daemon, read_csv};
use std::time::Duration;

fn texts(n: usize) -> String {
    let texts: Vec<String> = (0..n).map(|i| format!("text number {i}")).collect();
    serde_json::json!({ "texts": texts }).to_string()
}

fn rewrite(d: &Daemon, edit: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(&d.config).expect("config");
    std::fs::write(&d.config, edit(&text)).expect("config");
}

/// Sends SIGHUP, waits for one more log line containing `expect`, and returns the newest.
fn reload_and_wait(d: &Daemon, expect: &str) -> String {
    let before = d.logs().matches(expect).count();
    d.signal("HUP");
    d.wait_for(expect, Duration::from_secs(10), || {
        d.logs().matches(expect).count() > before
    });
    d.logs()
        .lines()
        .rev()
        .find(|l| l.contains(expect))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn sighup_applies_live_keys_names_the_rest_and_refuses_an_invalid_file() {
    let d = Daemon::start_with("max_batch_texts = 64", "", "", "");
    let post = |n| d.post("/predict", Some("application/json"), &texts(n));
    assert_eq!(post(100).status, 422);

    // A live limit, a live ingest setting, and a path that needs a restart.
    rewrite(&d, |t| {
        t.replace("max_batch_texts = 64", "max_batch_texts = 200")
            .replace(
                "settle_ms = 100",
                "settle_ms = 100\nneutralize_formulas = false",
            )
            .replace("/inbox\"", "/inbox-elsewhere\"")
    });
    let line = reload_and_wait(&d, "config reloaded");
    assert!(line.contains("server.max_batch_texts"), "{line}");
    assert!(line.contains("ingest.neutralize_formulas"), "{line}");
    let logs = d.logs();
    assert!(
        logs.contains("changed keys take effect only after a restart")
            && logs.contains("ingest.inbox"),
        "{logs}"
    );
    assert_eq!(post(100).status, 200, "the new limit applies at once");
    // The inbox stays where it was; its new setting waits for a restart.
    d.drop_file("f.csv", b"id,text\n1,=1+2 great\n");
    d.wait_processed("f.csv", Duration::from_secs(30));
    let out = read_csv(&d.root().join("outbox/f.csv"));
    assert_eq!(
        out[1][1], "=1+2 great",
        "neutralize_formulas = false applied"
    );

    // An invalid file: named with its line, and nothing changes.
    rewrite(&d, |t| {
        t.replace(
            "max_batch_texts = 200",
            "max_batch_texts = 300\nmax_batch_textz = 1",
        )
    });
    let refused = reload_and_wait(&d, "config reload refused");
    assert!(refused.contains("max_batch_textz"), "{refused}");
    assert!(refused.contains("sentimentd.toml:"), "{refused}");
    assert_eq!(post(250).status, 422, "the running limit (200) stays");
    assert_eq!(post(150).status, 200);
    assert_eq!(d.get("/health").status, 200, "still serving");
}

#[test]
fn a_reload_whose_live_keys_break_a_rule_with_the_running_ones_is_refused() {
    // drift.window needs a restart and drift.min_samples is live: the file alone is valid,
    // but applying it would run min_samples 5000 against the running window of 1000.
    let d = Daemon::start_with("", "", "", "[drift]\nwindow = 1000\nmin_samples = 500\n");
    rewrite(&d, |t| {
        t.replace("window = 1000", "window = 20000")
            .replace("min_samples = 500", "min_samples = 5000")
    });
    let refused = reload_and_wait(&d, "config reload failed");
    assert!(refused.contains("drift.min_samples"), "{refused}");
    assert!(refused.contains("drift.window"), "{refused}");
    let logs = d.logs();
    assert!(!logs.contains("config reloaded"), "{logs}");
    assert_eq!(d.get("/health").status, 200, "still serving");
}
