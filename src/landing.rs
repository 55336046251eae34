//! `GET /`: the landing page — the OKR scorecard of every window (value,
//! target, met/missed) and links to `/metrics` and the report. Everything
//! is inline (works offline), readable on a phone, refreshed every 5 minutes.

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;

use crate::report::{Comparison, OkrLine, OkrStatus, adoption, scorecard};
use crate::server::AppState;

const STYLE: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--na:#6e7781}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem;max-width:72rem;margin:auto;line-height:1.4}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:var(--na);font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:.6rem}
.card{border:1px solid #8884;border-radius:.5rem;padding:.6rem .8rem;border-left:.4rem solid var(--na)}
.card.met{border-left-color:var(--ok)}.card.missed{border-left-color:var(--bad)}
.name{font-size:.85rem;color:var(--na)}.value{font-size:1.5rem;font-weight:600}
.status{font-size:.8rem;font-weight:600;text-transform:uppercase}
.met .status{color:var(--ok)}.missed .status{color:var(--bad)}.no_data .status{color:var(--na)}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.2rem .6rem;text-align:left;border-bottom:1px solid #8883}
a{color:inherit}nav a{margin-right:1rem}
";

fn fmt_value(unit: &str, v: f64) -> String {
    match unit {
        "seconds" if v >= 86_400.0 => format!("{:.2} d", v / 86_400.0),
        "seconds" if v >= 60.0 => format!("{:.1} min", v / 60.0),
        "seconds" => format!("{v:.1} s"),
        "ratio" if v <= 1.0 => format!("{:.1} %", v * 100.0),
        "visitors per follow-up" => format!("{v:.2} visitors per follow-up"),
        _ => format!("{v:.3}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn card(out: &mut String, window: &str, line: &OkrLine) {
    let status = line.status.as_str();
    let value = line
        .value
        .map_or_else(|| "no data".to_owned(), |v| fmt_value(&line.unit, v));
    let cmp = match line.comparison {
        Comparison::AtMost => "≤",
        Comparison::AtLeast => "≥",
    };
    let label = match line.status {
        OkrStatus::Met => "met",
        OkrStatus::Missed if line.tracked_only => "missed (tracked only)",
        OkrStatus::Missed => "missed",
        OkrStatus::NoData => "no data",
    };
    let _ = write!(
        out,
        "<div class=\"card {status}\" data-okr=\"{key}\" data-window=\"{w}\" data-value=\"{raw}\" data-target=\"{target}\" data-status=\"{status}\">\
         <div class=\"name\">{name}</div><div class=\"value\">{value}</div>\
         <div>target {cmp} {tv}</div><div class=\"status\">{label}</div></div>",
        key = escape(&line.key),
        w = escape(window),
        raw = line.value.map(|v| v.to_string()).unwrap_or_default(),
        target = line.target,
        name = escape(&line.name),
        tv = fmt_value(&line.unit, line.target),
    );
}

/// Renders the landing page.
pub async fn page(State(state): State<AppState>) -> Html<String> {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"300\">\
         <title>Follow-Up OKRs — okr-exporter</title><style>{STYLE}</style></head><body>\
         <h1>Follow-Up OKR scorecard</h1>\
         <p class=\"meta\">okr-exporter {ver} · generated {now} UTC · refreshes every 5 minutes · \
         values refreshed every {every} by background collection</p>\
         <nav><a href=\"metrics\">/metrics</a>\
         <a href=\"api/okr/report?format=json\">report (JSON)</a>\
         <a href=\"api/okr/report?format=csv\">report (CSV)</a></nav>",
        ver = env!("CARGO_PKG_VERSION"),
        now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        every = humantime::format_duration(state.settings.collect_interval),
    );
    for w in &state.settings.windows.0 {
        let _ = write!(
            out,
            "<h2>Last {}</h2><div class=\"grid\">",
            escape(&w.label)
        );
        for line in scorecard(&state.store, &state.settings.targets, &w.label) {
            card(&mut out, &w.label, &line);
        }
        out.push_str("</div>");
        let adoption = adoption(&state.store, &w.label);
        if !adoption.is_empty() {
            out.push_str("<table><tr><th>adoption</th><th>value</th></tr>");
            for (k, v) in adoption {
                let shown = if k.ends_with("_ratio") {
                    fmt_value("ratio", v)
                } else {
                    format!("{v}")
                };
                let _ = write!(
                    out,
                    "<tr data-adoption=\"{k}\" data-window=\"{w}\" data-value=\"{v}\"><td>{k}</td><td>{shown}</td></tr>",
                    k = escape(&k),
                    w = escape(&w.label),
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("</body></html>");
    Html(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_for_people() {
        assert_eq!(fmt_value("seconds", 540.0), "9.0 min");
        assert_eq!(fmt_value("seconds", 3.0 * 86_400.0), "3.00 d");
        assert_eq!(fmt_value("ratio", 0.4), "40.0 %");
        assert_eq!(fmt_value("ratio", 1.5), "1.500");
        assert_eq!(escape("<a href=\"x\">"), "&lt;a href=&quot;x&quot;&gt;");
    }
}
