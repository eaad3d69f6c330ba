//! The status page (`GET /`) in a real browser: Debian's headless Chromium (installed by
//! scripts/test-deps.sh) loads it from a daemon fed with batches, HTTP traffic and a drift
//! check; the page must be self-contained, log nothing to the console, and draw its charts
//! with data. A screenshot is saved under the test output directory.

mod common;

use common::{Daemon, unix_now as now};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NEG: &str = "I hate this, it is awful and terrible";
const POS: &str = "I love this, it is wonderful and great";
const NEUTRAL: &str = "The meeting is on Tuesday at noon";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-deps.sh (installs Debian's chromium), or set CHROMIUM",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `args`; returns (stdout, stderr).
fn browse(profile: &Path, url: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1450",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (stdout, stderr)
}

/// Twelve hours of mentions of three brands; acme turns negative in the latest hour.
fn mentions() -> String {
    let t = now();
    let mut csv = String::from("text,brand,created_at\n");
    for k in 0..12 {
        let when = t - (11 - k) * 3600;
        for (brand, n, neg) in [
            ("acme", 30, if k == 11 { 20 } else { 4 }),
            ("globex", 20, 6),
            ("initech", 10, 2),
            // A hostile name must be shown as text, never run.
            (
                "<img src=x onerror=alert(1)><script>alert(2)</script>",
                2,
                1,
            ),
        ] {
            for i in 0..n {
                let text = if i < neg {
                    NEG
                } else if i % 3 == 0 {
                    NEUTRAL
                } else {
                    POS
                };
                csv.push_str(&format!("\"{text}\",{brand},{when}\n"));
            }
        }
    }
    csv
}

#[test]
fn the_status_page_renders_in_a_browser_with_data_and_no_console_errors() {
    common::away_from_hour_boundary();
    let data = tempfile::tempdir().expect("temp dir");
    let train = std::fs::read_to_string(repo().join("data/datasets/tweeteval/train.csv"))
        .expect("bundled data");
    let small: Vec<&str> = train.lines().take(3001).collect();
    std::fs::write(data.path().join("train.csv"), small.join("\n") + "\n").expect("train slice");
    let d = Daemon::start_with(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &format!(
            "[data]\ntrain = [\"{}\"]\nval = \"{}\"\n\n[model]\nembedding_dim = 16\nvocab_size = 3000\nbuckets = 8192\n\n\
             [drift]\nwindow = 1000\nmin_samples = 200\ncheck_every_samples = 300\ncheck_every_secs = 3600\nmin_check_interval_secs = 0\n\n\
             [retrain]\nenabled = false\n\n[reputation]\nhistory_buckets = 12\nspike_min_texts = 10\n",
            data.path().join("train.csv").display(),
            repo().join("data/datasets/tweeteval/val.csv").display()
        ),
    );
    d.wait_for("the first model", Duration::from_secs(180), || {
        let m = d.get("/model");
        m.status == 200 && m.json()["fallback"] == false
    });

    d.drop_file("mentions.csv", mentions().as_bytes());
    d.drop_file("broken.csv", b"no text column here\n1\n");
    d.wait_processed("mentions.csv", Duration::from_secs(60));
    d.wait_processed("broken.csv", Duration::from_secs(60));
    d.wait_for("a drift check", Duration::from_secs(60), || {
        d.get("/drift").status == 200
    });
    d.wait_for("the acme alert", Duration::from_secs(15), || {
        d.metric(r#"sentiment_reputation_alert{source="acme"}"#) == 1.0
    });

    // Self-contained: nothing is loaded from anywhere but the page itself.
    let page = d.get("/");
    assert_eq!(page.status, 200);
    let html = page.body;
    for external in [
        "src=\"http",
        "src='http",
        "href=\"http",
        "@import",
        "url(http",
        "<script src",
    ] {
        assert!(
            !html.contains(external),
            "external reference {external:?} in the page"
        );
    }
    let version = d.get("/model").json()["version"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    for needle in [
        version.as_str(),
        "acme",
        "globex",
        "negative spike",
        "mentions.csv",
        "broken.csv",
        "/drift/report.html",
        "Macro-recall",
    ] {
        assert!(html.contains(needle), "{needle:?} missing from the page");
    }

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&out_dir).expect("test output dir");
    let profile = tempfile::tempdir().expect("browser profile");
    let (dom, log) = browse(profile.path(), &d.url("/"), &["--dump-dom"]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console output: {console:#?}");
    assert!(!dom.contains("data-errors"), "script errors: {dom}");
    let attr = |name: &str| -> Option<usize> {
        let at = dom.find(&format!("{name}=\""))? + name.len() + 2;
        dom[at..].split('"').next()?.parse().ok()
    };
    let (charts, drawn) = (attr("data-charts"), attr("data-charts-drawn"));
    assert!(charts >= Some(3), "a chart per source: {charts:?}");
    assert_eq!(drawn, charts, "every chart drew bars with a size");
    assert!(
        !dom.contains("<img src=\"x\""),
        "a source name became markup"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(2)"),
        "the hostile name is shown as text"
    );

    let shot = out_dir.join("status.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    browse(profile.path(), &d.url("/"), &[&shot_arg]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    eprintln!("screenshot: {}", shot.display());
}
