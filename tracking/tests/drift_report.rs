//! The drift report page, rendered from a real check on synthetic observations.

use sentimentd_config::DriftConfig;
use sentimentd_data::Label;
use sentimentd_data::drift::{self, Baseline, DriftReport, Observation, TESTS};
use sentimentd_tracking::report::drift_report_html;

/// `n` observations whose labels follow `shares`, with embeddings tied to the label and a
/// little deterministic noise.
fn draw(shares: [f64; 3], n: usize, seed: u64) -> Vec<Observation> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let u = next();
            let label = if u < shares[0] {
                Label::Negative
            } else if u < shares[0] + shares[1] {
                Label::Neutral
            } else {
                Label::Positive
            };
            let embedding: Vec<f32> = (0..16)
                .map(|d| (next() - 0.5) as f32 + if d % 3 == label.index() { 0.5 } else { 0.0 })
                .collect();
            let words = ["so", "good", "awful", "today", "@user", "not"];
            let text: Vec<&str> = (0..4 + (next() * 8.0) as usize)
                .map(|_| words[(next() * words.len() as f64) as usize % words.len()])
                .collect();
            Observation::new(label, Some(embedding), Some(0.1), &text.join(" "))
        })
        .collect()
}

fn report(window: usize) -> DriftReport {
    let baseline = Baseline::build(
        "v1",
        "2024-05-01T00:00:00Z",
        vec!["synthetic reference".into()],
        &draw([0.2, 0.45, 0.35], 3000, 1),
        1000,
        42,
    );
    let current = draw([0.6, 0.2, 0.2], window, 11);
    drift::check(
        &baseline,
        &current,
        &DriftConfig::default(),
        "v1",
        "2024-05-02T00:00:00Z",
        9,
    )
}

#[test]
fn html_report_is_self_contained_and_shows_every_test() {
    let mut r = report(1000);
    r.model_version = "v<1>&".into();
    let html = drift_report_html(&r);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.matches("<svg").count() >= 3, "{html}");
    for t in TESTS {
        assert!(html.contains(&format!("<td>{t}</td>")), "{t} missing");
    }
    assert!(html.contains("class=\"fired\""));
    assert!(html.contains("Drift detected"));
    assert!(html.contains("v&lt;1&gt;&amp;"));
    for external in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(external), "{external} in the page");
    }

    let insufficient = report(10);
    let html = drift_report_html(&insufficient);
    assert!(html.contains("Not enough data"));
    for t in TESTS {
        assert!(html.contains(&format!("<td>{t}</td>")), "{t} missing");
    }
}
