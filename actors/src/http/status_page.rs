//! `GET /`: the status page. One self-contained HTML document (inline CSS and SVG, one small
//! inline script that checks the charts drew; no external scripts, fonts or stylesheets: the
//! daemon runs on machines without internet), rendered by maud, which escapes every value it
//! inserts (source names and file names come from the input). It shows the serving model and its metrics,
//! readiness, sentiment over time per source, the latest drift check, recent batches, and
//! recent promotions, rollbacks and gate rejections.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sentimentd_data::drift::DriftReport;
use sentimentd_data::reputation::{Report, SourceReport};
use sentimentd_model::ModelStore;
use std::path::PathBuf;

use crate::http::HttpState;
use crate::serving::model_cell::ModelInfo;
use crate::telemetry::metrics::RecentBatch;

/// Sources drawn as charts (the busiest); the table lists them all.
const CHARTS: usize = 6;
/// Model events listed.
const MODEL_EVENTS: usize = 10;

/// A promotion, rollback or gate rejection, newest first on the page.
struct ModelEvent {
    at: String,
    action: String,
    version: String,
    from: String,
    reason: String,
}

#[utoipa::path(get, path = "/", tag = "status",
    description = "The status page: a self-contained HTML document with the serving model, \
                   readiness, sentiment per source over time, the latest drift check, recent \
                   batches, and promotions, rollbacks and gate rejections.",
    responses(
        (status = 200, description = "The status page", body = String, content_type = "text/html")))]
pub async fn page(state: web::Data<HttpState>) -> HttpResponse {
    let store = state.model_store.clone();
    let events = web::block(move || model_events(store))
        .await
        .unwrap_or_default();
    let model = state.cell.load_full().map(|m| {
        let mut info = m.info.clone();
        info.cluster = state.cluster_view();
        info
    });
    let report = state
        .reputation
        .report(crate::mlops::reputation::now_unix());
    let drift = state.reports.load_full();
    let batches = state.metrics.ingest.recent_batches();
    let html = render(model.as_ref(), &report, drift.as_deref(), &batches, &events);
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .insert_header(("Cache-Control", "no-store"))
        .body(html)
}

/// The store's history (promotions, rollbacks) and the gate's rejections, newest first.
fn model_events(root: PathBuf) -> Vec<ModelEvent> {
    let Ok(store) = ModelStore::open(&root) else {
        return Vec::new();
    };
    let mut events: Vec<ModelEvent> = store
        .history()
        .unwrap_or_default()
        .into_iter()
        .map(|h| ModelEvent {
            at: h.at,
            action: h.action,
            version: h.version,
            from: h.from.unwrap_or_default(),
            reason: h.reason,
        })
        .collect();
    for (_, d) in store.decisions() {
        if d.status != "promoted" {
            events.push(ModelEvent {
                at: d.decided_at,
                action: format!("gate: {}", d.status),
                version: d.version,
                from: d.against.unwrap_or_default(),
                reason: d.reason,
            });
        }
    }
    events.sort_by(|a, b| b.at.cmp(&a.at));
    events.truncate(MODEL_EVENTS);
    events
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:16px;align-items:center}
header h1{font-size:20px;margin:0}
main{padding:16px 24px;display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
section.wide{grid-column:1/-1}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e4e6eb;vertical-align:top}
th{color:#5b6275;font-weight:600}
.badge{display:inline-block;border-radius:10px;padding:2px 10px;font-size:12px;font-weight:600}
.ok{background:#d7f5e3;color:#11643a}.warn{background:#fff1c2;color:#7a5500}.bad{background:#fde0e0;color:#8f1d1d}
.muted{color:#5b6275;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:12px}
.chart h3{font-size:14px;margin:4px 0}
svg text{font-size:10px;fill:#5b6275}
a{color:#1f5fbf}
";

/// Checks, once the page loaded, that every chart drew bars with a size, and records any
/// script error: the browser test reads both from the DOM.
const SELF_CHECK: &str = "
window.addEventListener('error',function(e){var b=document.body;b.dataset.errors=(b.dataset.errors||'')+e.message+';';});
window.addEventListener('load',function(){var c=document.querySelectorAll('svg.chart'),d=0;
c.forEach(function(s){var n=0;s.querySelectorAll('rect.bar').forEach(function(r){var q=r.getBoundingClientRect();if(q.width>0&&q.height>0)n++;});if(n>0)d++;});
document.body.dataset.charts=c.length;document.body.dataset.chartsDrawn=d;});
";

fn render(
    model: Option<&ModelInfo>,
    report: &Report,
    drift: Option<&DriftReport>,
    batches: &[RecentBatch],
    events: &[ModelEvent],
) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta http-equiv="refresh" content="30";
                link rel="icon" href="data:,";
                title { "sentimentd" }
                style { (PreEscaped(STYLE)) }
                script { (PreEscaped(SELF_CHECK)) }
            }
            body {
                header {
                    h1 { "sentimentd" }
                    span.muted style="color:#c9cedb" { "version " (env!("CARGO_PKG_VERSION")) }
                    @match model {
                        Some(m) if m.fallback => span.badge.warn { "ready: lexicon fallback" },
                        Some(_) => span.badge.ok { "ready" },
                        None => span.badge.bad { "not ready: no model loaded" },
                    }
                    @if report.sources.iter().any(|s| s.alert) {
                        span.badge.bad { "negative spike" }
                    }
                }
                main {
                    (model_section(model))
                    (drift_section(drift))
                    (reputation_section(report))
                    (batches_section(batches))
                    (events_section(events))
                    section.wide.muted {
                        "JSON and text: " a href="/model" { "/model" } " · "
                        a href="/reputation" { "/reputation" } " · "
                        a href="/drift" { "/drift" } " · "
                        a href="/metrics" { "/metrics" } " · "
                        a href="/openapi.json" { "/openapi.json" }
                        ". This page reloads every 30 s."
                    }
                }
            }
        }
    };
    page.into_string()
}

fn model_section(model: Option<&ModelInfo>) -> Markup {
    html! {
        section {
            h2 { "Serving model" }
            @match model {
                None => p { "No model is loaded yet." },
                Some(m) => {
                    table {
                        tr { th { "Version" } td { (m.version) } }
                        tr { th { "Kind" } td { (m.kind) @if m.fallback { " " span.badge.warn { "fallback" } } } }
                        tr { th { "Created" } td { (m.created_at.as_deref().unwrap_or("-")) } }
                        tr { th { "Parent" } td { (m.parent.as_deref().unwrap_or("-")) } }
                        tr { th { "Loaded" } td { (m.loaded_at) } }
                        @if let Some(role) = m.cluster["role"].as_str().filter(|r| *r != "standalone") {
                            tr {
                                th { "Cluster" }
                                td {
                                    (m.cluster["node"].as_str().unwrap_or("-")) ": " (role)
                                    @if let Some(t) = m.cluster["token"].as_u64() { " (lease token " (t) ", trains and switches models)" }
                                    @if let Some(l) = m.cluster["leader"].as_str() { " (" (l) " trains and switches models)" }
                                    @if let Some(lag) = m.cluster["lag"].as_i64() { "; " (lag) " input messages waiting for a node" }
                                }
                            }
                        }
                    }
                    // Metrics per split: {"val": {"macro_recall": .., ...}, ...}.
                    @if let Some(splits) = m.metrics.as_object().filter(|o| !o.is_empty()) {
                        h2 style="margin-top:12px" { "Evaluation" }
                        table {
                            tr { th { "Split" } th { "Macro-recall" } th { "Macro-F1" } th { "Accuracy" } th { "Rows" } }
                            @for (split, v) in splits {
                                @let num = |k: &str| {
                                    v.get(k)
                                        .and_then(serde_json::Value::as_f64)
                                        .map_or("-".to_string(), |x| format!("{x:.3}"))
                                };
                                tr {
                                    td { (split) }
                                    td { (num("macro_recall")) }
                                    td { (num("macro_f1")) }
                                    td { (num("accuracy")) }
                                    td { (v.get("count").and_then(serde_json::Value::as_u64).map_or("-".to_string(), |x| x.to_string())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn drift_section(drift: Option<&DriftReport>) -> Markup {
    html! {
        section {
            h2 { "Drift" }
            @match drift {
                None => p { "No drift check has run yet." },
                Some(r) => {
                    @let verdict = serde_json::to_value(r.verdict)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    @let class = match verdict.as_str() {
                        "drift" => "bad",
                        "no_drift" => "ok",
                        _ => "warn",
                    };
                    p {
                        span class={ "badge " (class) } { (verdict.replace('_', " ")) }
                        " score " (format!("{:.2}", r.drift_score)) " (1.00 = threshold) on "
                        (r.samples) " observations, model " (r.model_version)
                        ", checked " (r.checked_at) ". "
                        a href="/drift/report.html" { "Full report" }
                    }
                    table {
                        tr { th { "Test" } th { "Family" } th { "Value" } th { "Threshold" } th { "Score" } }
                        @for t in &r.tests {
                            tr {
                                td { (t.test) @if r.fired.contains(&t.test) { " " span.badge.bad { "fired" } } }
                                td { (t.family) }
                                td { (format!("{:.4}", t.value)) }
                                td { (t.threshold) }
                                td { (format!("{:.2}", t.score)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reputation_section(report: &Report) -> Markup {
    let active: Vec<&SourceReport> = report.sources.iter().filter(|s| s.total > 0).collect();
    html! {
        section.wide {
            h2 { "Sentiment per source" }
            p.muted {
                "Buckets of " (report.bucket_secs / 60) " min, the latest "
                (report.history_buckets + 1)
                " kept; red bars negative, grey neutral, green positive; the line is the \
                 negative share (right axis). Sources: "
                @if report.mode == "top" { "the busiest, the rest as other" } @else { "as configured, the rest as other" }
                "."
            }
            @if active.is_empty() {
                p { "No text classified yet." }
            } @else {
                div.charts {
                    @for s in active.iter().filter(|s| !s.trend.is_empty()).take(CHARTS) {
                        (chart(s))
                    }
                }
                table style="margin-top:10px" {
                    tr {
                        th { "Source" } th { "Texts" } th { "Negative" } th { "Neutral" }
                        th { "Positive" } th { "Negative share (latest bucket)" } th { "Alert" }
                    }
                    @for s in &active {
                        tr {
                            td { (s.source) }
                            td { (s.total) }
                            td { (s.negative) }
                            td { (s.neutral) }
                            td { (s.positive) }
                            td { (format!("{:.1} %", 100.0 * s.negative_share)) }
                            td { @if s.alert { span.badge.bad { "negative spike" } } }
                        }
                    }
                }
            }
        }
    }
}

/// Stacked bars of counts per bucket and a line of the negative share, in inline SVG.
fn chart(s: &SourceReport) -> Markup {
    let (w, ht, left, right, top, bottom) = (420.0, 150.0, 34.0, 30.0, 8.0, 20.0);
    let plot_w = w - left - right;
    let plot_h = ht - top - bottom;
    let n = s.trend.len().max(1) as f64;
    let max = s.trend.iter().map(|b| b.total).max().unwrap_or(1).max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.7).max(1.0);
    let base = top + plot_h;
    let f1 = |v: f64| format!("{v:.1}");
    let label = |start: &str| start.get(5..16).unwrap_or(start).replace('T', " ");
    // Geometry first: per bucket its stacked segments (y, height, colour, name, count), where
    // a spike marker goes, and the negative-share line.
    let mut buckets = Vec::with_capacity(s.trend.len());
    let mut line = Vec::with_capacity(s.trend.len());
    for (i, b) in s.trend.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = base;
        let mut segments = Vec::new();
        for (count, color, name) in [
            (b.negative, "#d64545", "negative"),
            (b.neutral, "#a3a9b8", "neutral"),
            (b.positive, "#2f9e5b", "positive"),
        ] {
            if count > 0 {
                let bh = plot_h * count as f64 / max;
                y -= bh;
                segments.push((y, bh, color, name, count));
            }
        }
        let spike = b
            .spike
            .is_some_and(|sp| sp.spike)
            .then(|| (y - 2.0).max(top + 8.0));
        line.push(format!(
            "{:.1},{:.1}",
            x + bar / 2.0,
            base - plot_h * b.negative_share
        ));
        buckets.push((x, &b.start, segments, spike));
    }
    html! {
        div.chart {
            h3 { (s.source) @if s.alert { " " span.badge.bad { "negative spike" } } }
            svg.chart role="img" aria-label={ "sentiment of " (s.source) " per bucket" }
                width=(w) height=(ht) viewBox={ "0 0 " (w) " " (ht) } {
                // Axes and labels.
                line x1=(left) y1=(base) x2=(left + plot_w) y2=(base) stroke="#c9cedb" {}
                text x=(left - 4.0) y=(top + 8.0) text-anchor="end" { (max as u64) }
                text x=(left - 4.0) y=(base) text-anchor="end" { "0" }
                text x=(left + plot_w + 3.0) y=(top + 8.0) { "100%" }
                text x=(left + plot_w + 3.0) y=(base) { "0%" }
                @for (x, start, segments, spike) in &buckets {
                    @for (y, bh, color, name, count) in segments {
                        rect.bar x=(f1(*x)) y=(f1(*y)) width=(f1(bar)) height=(f1(*bh)) fill=(color) {
                            title { (start) " " (name) ": " (count) }
                        }
                    }
                    @if let Some(sy) = spike {
                        text x=(f1(x + bar / 2.0)) y=(f1(*sy)) fill="#d64545" text-anchor="middle" { "▲" }
                    }
                }
                @if line.len() > 1 {
                    polyline points=(line.join(" ")) fill="none" stroke="#7a1f1f" stroke-width="1.5" {}
                }
                @if let (Some(first), Some(last)) = (s.trend.first(), s.trend.last()) {
                    text x=(left) y=(ht - 4.0) { (label(&first.start)) }
                    text x=(left + plot_w) y=(ht - 4.0) text-anchor="end" { (label(&last.start)) }
                }
            }
        }
    }
}

fn batches_section(batches: &[RecentBatch]) -> Markup {
    html! {
        section {
            h2 { "Recent batches" }
            @if batches.is_empty() {
                p { "No batch file finished since the daemon started." }
            } @else {
                table {
                    tr {
                        th { "Finished" } th { "File" } th { "Outcome" } th { "Rows" }
                        th { "Scored" } th { "Rejected" } th { "Model or reason" }
                    }
                    @for b in batches {
                        @let outcome = format!("{:?}", b.outcome);
                        @let class = if outcome == "processed" && b.rejected == 0 {
                            "ok"
                        } else if outcome == "processed" {
                            "warn"
                        } else {
                            "bad"
                        };
                        tr {
                            td { (b.finished_at) }
                            td { (b.file) }
                            td { span class={ "badge " (class) } { (outcome) } }
                            td { (b.rows) }
                            td { (b.scored) }
                            td { (b.rejected) }
                            td { (b.detail) }
                        }
                    }
                }
            }
        }
    }
}

fn events_section(events: &[ModelEvent]) -> Markup {
    html! {
        section {
            h2 { "Promotions, rollbacks and gate rejections" }
            @if events.is_empty() {
                p { "None recorded in the model store yet." }
            } @else {
                table {
                    tr { th { "When" } th { "Action" } th { "Version" } th { "From / against" } th { "Reason" } }
                    @for e in events {
                        @let class = if e.action.starts_with("gate") {
                            "bad"
                        } else if e.action == "rollback" {
                            "warn"
                        } else {
                            "ok"
                        };
                        tr {
                            td { (e.at) }
                            td { span class={ "badge " (class) } { (e.action) } }
                            td { (e.version) }
                            td { (e.from) }
                            td { (e.reason) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_input_are_escaped() {
        let batches = [RecentBatch {
            finished_at: "now".into(),
            file: "<script>alert('x')</script> & \"q\".csv".into(),
            outcome: crate::telemetry::metrics::BatchOutcome::processed,
            rows: 1,
            scored: 1,
            rejected: 0,
            detail: String::new(),
        }];
        let html = batches_section(&batches).into_string();
        assert!(
            html.contains("&lt;script&gt;alert('x')&lt;/script&gt; &amp; &quot;q&quot;.csv"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
    }
}
