//! The drift report as a self-contained HTML page (no external scripts, fonts or CSS): the
//! verdict, a table of every test, and reference-vs-current distributions as inline SVG bar
//! charts. Rendered by maud, which escapes every value it inserts.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use sentimentd_data::Label;
use sentimentd_data::drift::{CHI2, DriftReport, MMD, OOV_BINS, Verdict};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child,td.note{text-align:left}
tr.fired td{background:#fde2e2;font-weight:bold}
tr.skipped td{color:#888}
.verdict{display:inline-block;padding:.3em .8em;border-radius:.3em;font-weight:bold}
.drift{background:#d93025;color:#fff}.ok{background:#1e8e3e;color:#fff}
.insufficient{background:#999;color:#fff}
.ref{fill:#5b8def}.cur{fill:#f29d38}
svg text{font-size:11px;fill:#333}
";

/// The page for `report`.
pub fn drift_report_html(report: &DriftReport) -> String {
    let (verdict_class, verdict_text) = match report.verdict {
        Verdict::Drift => ("drift", "Drift detected"),
        Verdict::NoDrift => ("ok", "No drift"),
        Verdict::Insufficient => ("insufficient", "Not enough data"),
    };
    let (r, c) = (&report.reference, &report.current);
    let labels: Vec<String> = Label::ALL.iter().map(|l| l.as_str().to_string()).collect();
    let n = r.length_histogram.len().max(c.length_histogram.len());
    let hist = if r.length_histogram.len() >= c.length_histogram.len() {
        &r.length_histogram
    } else {
        &c.length_histogram
    };
    let length_names: Vec<String> = hist
        .iter()
        .enumerate()
        .map(|(i, (edge, _))| {
            if i + 1 == n {
                format!("≥{edge}")
            } else {
                edge.to_string()
            }
        })
        .collect();
    let length_shares =
        |v: &[(u32, f64)]| -> Vec<f64> { (0..n).map(|i| v.get(i).map_or(0.0, |x| x.1)).collect() };
    let oov_names: Vec<String> = (0..OOV_BINS)
        .map(|i| format!("{:.1}", i as f64 / OOV_BINS as f64))
        .collect();
    let oov_shares = |v: &[(f32, f64)]| -> Vec<f64> {
        (0..OOV_BINS)
            .map(|i| v.get(i).map_or(0.0, |x| x.1))
            .collect()
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "sentimentd drift report" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Drift report" }
                p {
                    span class={ "verdict " (verdict_class) } { (verdict_text) }
                    " drift score " (format!("{:.3}", report.drift_score))
                    @if !report.fired.is_empty() { "; fired: " (report.fired.join(", ")) }
                }
                table {
                    tr { td { "model version" } td.note { (report.model_version) } }
                    tr { td { "checked at" } td.note { (report.checked_at) } }
                    tr { td { "baseline created at" } td.note { (report.baseline_created_at) } }
                    tr { td { "window" } td.note { (report.samples) " observations (minimum " (report.min_samples) ")" } }
                    tr { td { "reference" } td.note { (r.count) " observations" } }
                    tr { td { "check took" } td.note { (format!("{:.3}", report.seconds)) " s" } }
                }
                h2 { "Tests" }
                table {
                    tr {
                        th { "test" } th { "family" } th { "value" } th { "p-value" }
                        th { "threshold" } th { "score" } th { "fired" } th { "note" }
                    }
                    @for t in &report.tests {
                        @let class = if t.fired { Some("fired") } else if t.skipped.is_some() { Some("skipped") } else { None };
                        @let skipped = t.skipped.is_some();
                        tr class=[class] {
                            td { (t.test) }
                            td { (t.family) }
                            td { @if skipped { "-" } @else { (number(t.value)) } }
                            td { @if skipped { "-" } @else { (t.p_value.map_or("-".to_string(), number)) } }
                            td {
                                @if t.p_value.is_some() || matches!(t.test.as_str(), CHI2 | MMD) {
                                    "p < " (number(t.threshold))
                                } @else {
                                    "> " (number(t.threshold))
                                }
                            }
                            td { @if skipped { "-" } @else { (format!("{:.3}", t.score)) } }
                            td { @if t.fired { "yes" } @else { "no" } }
                            td.note { (t.skipped.as_deref().unwrap_or_default()) }
                        }
                    }
                }
                p { "Score: 1 at the threshold, above 1 fires." }
                h2 { "Reference vs current" }
                p {
                    svg width="12" height="12" { rect class="ref" width="12" height="12" {} }
                    " reference " (PreEscaped("&nbsp;")) " "
                    svg width="12" height="12" { rect class="cur" width="12" height="12" {} }
                    " current"
                }
                h3 { "Predicted labels" }
                (bar_chart(&labels, &r.label_shares, &c.label_shares))
                h3 { "Text length (characters)" }
                (bar_chart(&length_names, &length_shares(&r.length_histogram), &length_shares(&c.length_histogram)))
                h3 { "Out-of-vocabulary word share" }
                @if r.oov_histogram.is_empty() && c.oov_histogram.is_empty() {
                    p { "The model reports no vocabulary coverage." }
                } @else {
                    (bar_chart(&oov_names, &oov_shares(&r.oov_histogram), &oov_shares(&c.oov_histogram)))
                }
                h3 { "Text shape" }
                table {
                    tr { th {} th { "reference" } th { "current" } }
                    tr {
                        td { "texts with a URL" }
                        td { (format!("{:.1} %", 100.0 * r.url_share)) }
                        td { (format!("{:.1} %", 100.0 * c.url_share)) }
                    }
                    tr {
                        td { "texts with a mention" }
                        td { (format!("{:.1} %", 100.0 * r.mention_share)) }
                        td { (format!("{:.1} %", 100.0 * c.mention_share)) }
                    }
                }
            }
        }
    };
    page.into_string()
}

fn number(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if x.abs() < 1e-3 || x.abs() >= 1e5 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

/// Grouped bars (reference, current) per category, shares as percentages.
fn bar_chart(names: &[String], reference: &[f64], current: &[f64]) -> Markup {
    const HEIGHT: f64 = 160.0;
    const TOP: f64 = 16.0;
    const LEFT: f64 = 40.0;
    const BAR: f64 = 14.0;
    const GAP: f64 = 12.0;
    let group = 2.0 * BAR + GAP;
    let width = LEFT + group * names.len() as f64 + GAP;
    let total_height = TOP + HEIGHT + 34.0;
    let max = reference
        .iter()
        .chain(current)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let base = TOP + HEIGHT;
    let f1 = |v: f64| format!("{v:.1}");
    html! {
        svg width=(format!("{width:.0}")) height=(format!("{total_height:.0}")) role="img" {
            line x1=(LEFT) y1=(base) x2=(format!("{width:.0}")) y2=(base) stroke="#999" {}
            text x=(LEFT - 4.0) y=(TOP + 4.0) text-anchor="end" { (format!("{:.0} %", 100.0 * max)) }
            text x=(LEFT - 4.0) y=(base) text-anchor="end" { "0" }
            @for (i, name) in names.iter().enumerate() {
                @let x0 = LEFT + GAP + group * i as f64;
                @for (k, (v, class)) in [
                    (reference.get(i).copied().unwrap_or(0.0), "ref"),
                    (current.get(i).copied().unwrap_or(0.0), "cur"),
                ].into_iter().enumerate() {
                    @let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
                    @let hgt = HEIGHT * v / max;
                    rect class=(class) x=(f1(x0 + BAR * k as f64)) y=(f1(base - hgt)) width=(BAR) height=(f1(hgt)) {
                        title {
                            (name) " " @if k == 0 { "reference" } @else { "current" }
                            ": " (format!("{:.1} %", 100.0 * v))
                        }
                    }
                }
                text x=(f1(x0 + BAR)) y=(f1(base + 14.0)) text-anchor="middle" { (name) }
            }
        }
    }
}
