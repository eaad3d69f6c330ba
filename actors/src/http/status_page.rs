//! `GET /`: the status page. One self-contained HTML document (inline CSS and SVG, one small
//! inline script that checks the charts drew; no external scripts, fonts or stylesheets: the
//! daemon runs on machines without internet). It shows the serving model and its metrics,
//! readiness, sentiment over time per source, the latest drift check, recent batches, and
//! recent promotions, rollbacks and gate rejections.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use sentimentd_data::drift::{DriftReport, escape_html as esc};
use sentimentd_data::reputation::{Report, SourceReport};
use sentimentd_model::ModelStore;
use std::fmt::Write;
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
    let model = state.cell.load_full().map(|m| m.info.clone());
    let report = state
        .reputation
        .report(crate::mlops::reputation::now_unix());
    let drift = state.reports.load_full();
    let batches = state.metrics.recent_batches();
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
    let mut h = String::with_capacity(32 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\">\
         <link rel=\"icon\" href=\"data:,\"><title>sentimentd</title><style>{STYLE}</style>\
         <script>{SELF_CHECK}</script></head><body><header><h1>sentimentd</h1>\
         <span class=\"muted\" style=\"color:#c9cedb\">version {}</span>",
        env!("CARGO_PKG_VERSION")
    );
    match model {
        Some(m) if m.fallback => {
            h.push_str("<span class=\"badge warn\">ready: lexicon fallback</span>")
        }
        Some(_) => h.push_str("<span class=\"badge ok\">ready</span>"),
        None => h.push_str("<span class=\"badge bad\">not ready: no model loaded</span>"),
    }
    if report.sources.iter().any(|s| s.alert) {
        h.push_str("<span class=\"badge bad\">negative spike</span>");
    }
    h.push_str("</header><main>");
    model_section(&mut h, model);
    drift_section(&mut h, drift);
    reputation_section(&mut h, report);
    batches_section(&mut h, batches);
    events_section(&mut h, events);
    h.push_str(
        "<section class=\"wide muted\">JSON and text: <a href=\"/model\">/model</a> · \
         <a href=\"/reputation\">/reputation</a> · <a href=\"/drift\">/drift</a> · \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/openapi.json\">/openapi.json</a>. \
         This page reloads every 30 s.</section></main></body></html>",
    );
    h
}

fn model_section(h: &mut String, model: Option<&ModelInfo>) {
    h.push_str("<section><h2>Serving model</h2>");
    let Some(m) = model else {
        h.push_str("<p>No model is loaded yet.</p></section>");
        return;
    };
    let _ = write!(
        h,
        "<table><tr><th>Version</th><td>{}</td></tr><tr><th>Kind</th><td>{}{}</td></tr>\
         <tr><th>Created</th><td>{}</td></tr><tr><th>Parent</th><td>{}</td></tr>\
         <tr><th>Loaded</th><td>{}</td></tr></table>",
        esc(&m.version),
        esc(m.kind),
        if m.fallback {
            " <span class=\"badge warn\">fallback</span>"
        } else {
            ""
        },
        esc(m.created_at.as_deref().unwrap_or("-")),
        esc(m.parent.as_deref().unwrap_or("-")),
        esc(&m.loaded_at),
    );
    // Metrics per split: {"val": {"macro_recall": .., ...}, ...}.
    if let Some(splits) = m.metrics.as_object().filter(|o| !o.is_empty()) {
        h.push_str("<h2 style=\"margin-top:12px\">Evaluation</h2><table><tr><th>Split</th><th>Macro-recall</th><th>Macro-F1</th><th>Accuracy</th><th>Rows</th></tr>");
        for (split, v) in splits {
            let num = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .map_or("-".to_string(), |x| format!("{x:.3}"))
            };
            let rows = v
                .get("count")
                .and_then(serde_json::Value::as_u64)
                .map_or("-".to_string(), |x| x.to_string());
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(split),
                num("macro_recall"),
                num("macro_f1"),
                num("accuracy"),
                rows
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");
}

fn drift_section(h: &mut String, drift: Option<&DriftReport>) {
    h.push_str("<section><h2>Drift</h2>");
    let Some(r) = drift else {
        h.push_str("<p>No drift check has run yet.</p></section>");
        return;
    };
    let verdict = serde_json::to_value(r.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let class = match verdict.as_str() {
        "drift" => "bad",
        "no_drift" => "ok",
        _ => "warn",
    };
    let _ = write!(
        h,
        "<p><span class=\"badge {class}\">{}</span> score {:.2} (1.00 = threshold) on {} \
         observations, model {}, checked {}. <a href=\"/drift/report.html\">Full report</a></p>",
        esc(&verdict.replace('_', " ")),
        r.drift_score,
        r.samples,
        esc(&r.model_version),
        esc(&r.checked_at)
    );
    h.push_str("<table><tr><th>Test</th><th>Family</th><th>Value</th><th>Threshold</th><th>Score</th></tr>");
    for t in &r.tests {
        let fired = r.fired.contains(&t.test);
        let _ = write!(
            h,
            "<tr><td>{}{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{:.2}</td></tr>",
            esc(&t.test),
            if fired {
                " <span class=\"badge bad\">fired</span>"
            } else {
                ""
            },
            esc(&t.family),
            t.value,
            t.threshold,
            t.score
        );
    }
    h.push_str("</table></section>");
}

fn reputation_section(h: &mut String, report: &Report) {
    let _ = write!(
        h,
        "<section class=\"wide\"><h2>Sentiment per source</h2><p class=\"muted\">Buckets of \
         {} min, the latest {} kept; red bars negative, grey neutral, green positive; the line \
         is the negative share (right axis). Sources: {}.</p>",
        report.bucket_secs / 60,
        report.history_buckets + 1,
        if report.mode == "top" {
            "the busiest, the rest as other"
        } else {
            "as configured, the rest as other"
        }
    );
    let active: Vec<&SourceReport> = report.sources.iter().filter(|s| s.total > 0).collect();
    if active.is_empty() {
        h.push_str("<p>No text classified yet.</p></section>");
        return;
    }
    h.push_str("<div class=\"charts\">");
    for s in active.iter().filter(|s| !s.trend.is_empty()).take(CHARTS) {
        chart(h, s);
    }
    h.push_str("</div><table style=\"margin-top:10px\"><tr><th>Source</th><th>Texts</th><th>Negative</th><th>Neutral</th><th>Positive</th><th>Negative share (latest bucket)</th><th>Alert</th></tr>");
    for s in &active {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{}</td></tr>",
            esc(&s.source),
            s.total,
            s.negative,
            s.neutral,
            s.positive,
            100.0 * s.negative_share,
            if s.alert {
                "<span class=\"badge bad\">negative spike</span>"
            } else {
                ""
            }
        );
    }
    h.push_str("</table></section>");
}

/// Stacked bars of counts per bucket and a line of the negative share, in inline SVG.
fn chart(h: &mut String, s: &SourceReport) {
    let (w, ht, left, right, top, bottom) = (420.0, 150.0, 34.0, 30.0, 8.0, 20.0);
    let plot_w = w - left - right;
    let plot_h = ht - top - bottom;
    let n = s.trend.len().max(1) as f64;
    let max = s.trend.iter().map(|b| b.total).max().unwrap_or(1).max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.7).max(1.0);
    let _ = write!(
        h,
        "<div class=\"chart\"><h3>{}{}</h3><svg class=\"chart\" role=\"img\" \
         aria-label=\"sentiment of {} per bucket\" width=\"{w}\" height=\"{ht}\" \
         viewBox=\"0 0 {w} {ht}\">",
        esc(&s.source),
        if s.alert {
            " <span class=\"badge bad\">negative spike</span>"
        } else {
            ""
        },
        esc(&s.source)
    );
    // Axes and labels.
    let base = top + plot_h;
    let _ = write!(
        h,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#c9cedb\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>\
         <text x=\"{}\" y=\"{}\">100%</text><text x=\"{}\" y=\"{base}\">0%</text>",
        left + plot_w,
        left - 4.0,
        top + 8.0,
        max as u64,
        left - 4.0,
        left + plot_w + 3.0,
        top + 8.0,
        left + plot_w + 3.0,
    );
    let mut line = Vec::with_capacity(s.trend.len());
    for (i, b) in s.trend.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = base;
        for (count, color, name) in [
            (b.negative, "#d64545", "negative"),
            (b.neutral, "#a3a9b8", "neutral"),
            (b.positive, "#2f9e5b", "positive"),
        ] {
            if count == 0 {
                continue;
            }
            let bh = plot_h * count as f64 / max;
            y -= bh;
            let _ = write!(
                h,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" \
                 fill=\"{color}\"><title>{} {name}: {count}</title></rect>",
                esc(&b.start)
            );
        }
        if b.spike.is_some_and(|sp| sp.spike) {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d64545\" text-anchor=\"middle\">▲</text>",
                x + bar / 2.0,
                (y - 2.0).max(top + 8.0)
            );
        }
        line.push(format!(
            "{:.1},{:.1}",
            x + bar / 2.0,
            base - plot_h * b.negative_share
        ));
    }
    if line.len() > 1 {
        let _ = write!(
            h,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#7a1f1f\" stroke-width=\"1.5\"/>",
            line.join(" ")
        );
    }
    let label = |start: &str| start.get(5..16).unwrap_or(start).replace('T', " ");
    if let (Some(first), Some(last)) = (s.trend.first(), s.trend.last()) {
        let _ = write!(
            h,
            "<text x=\"{left}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            ht - 4.0,
            esc(&label(&first.start)),
            left + plot_w,
            ht - 4.0,
            esc(&label(&last.start))
        );
    }
    h.push_str("</svg></div>");
}

fn batches_section(h: &mut String, batches: &[RecentBatch]) {
    h.push_str("<section><h2>Recent batches</h2>");
    if batches.is_empty() {
        h.push_str("<p>No batch file finished since the daemon started.</p></section>");
        return;
    }
    h.push_str("<table><tr><th>Finished</th><th>File</th><th>Outcome</th><th>Rows</th><th>Scored</th><th>Rejected</th><th>Model or reason</th></tr>");
    for b in batches {
        let outcome = format!("{:?}", b.outcome);
        let class = if outcome == "processed" && b.rejected == 0 {
            "ok"
        } else if outcome == "processed" {
            "warn"
        } else {
            "bad"
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><span class=\"badge {class}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.finished_at),
            esc(&b.file),
            esc(&outcome),
            b.rows,
            b.scored,
            b.rejected,
            esc(&b.detail)
        );
    }
    h.push_str("</table></section>");
}

fn events_section(h: &mut String, events: &[ModelEvent]) {
    h.push_str("<section><h2>Promotions, rollbacks and gate rejections</h2>");
    if events.is_empty() {
        h.push_str("<p>None recorded in the model store yet.</p></section>");
        return;
    }
    h.push_str("<table><tr><th>When</th><th>Action</th><th>Version</th><th>From / against</th><th>Reason</th></tr>");
    for e in events {
        let class = if e.action.starts_with("gate") {
            "bad"
        } else if e.action == "rollback" {
            "warn"
        } else {
            "ok"
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=\"badge {class}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.at),
            esc(&e.action),
            esc(&e.version),
            esc(&e.from),
            esc(&e.reason)
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_input_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
