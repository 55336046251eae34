//! `GET /`: the landing page — the OKR scorecard of every window (value,
//! target, met/missed, the draft-completion alert floor), the adoption
//! figures in a manager's words, and the last 30 days of the OKRs that have
//! a daily rollup, drawn as inline SVG charts from the report's history.
//! Everything is inline (no external assets, no JavaScript), readable on a
//! phone and in a dark color scheme, refreshed every 5 minutes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use chrono::NaiveDate;

use crate::config::{Targets, Window};
use crate::report::{Comparison, HistoryDay, OkrLine, OkrStatus, adoption, history, scorecard};
use crate::server::AppState;

/// Days of history shown in the trend charts (the report's default).
pub const TREND_DAYS: u32 = 30;

const STYLE: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--na:#6e7781;--line:#0969da;--target:#9a6700;--rule:#8883}
@media (prefers-color-scheme:dark){:root{--ok:#3fb950;--bad:#f85149;--na:#8b949e;--line:#58a6ff;--target:#d29922}}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem;max-width:72rem;margin:auto;line-height:1.4}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:var(--na);font-size:.85rem}
.split{display:grid;gap:.6rem 1.2rem}
@media (min-width:60rem){.split{grid-template-columns:minmax(0,2fr) minmax(17rem,1fr);align-items:start}}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:.6rem}
.card{border:1px solid #8884;border-radius:.5rem;padding:.6rem .8rem;border-left:.4rem solid var(--na)}
.card.met{border-left-color:var(--ok)}.card.missed{border-left-color:var(--bad)}
.card.below-floor{background:color-mix(in srgb,var(--bad) 9%,transparent)}
.name{font-size:.85rem;color:var(--na)}.value{font-size:1.5rem;font-weight:600}
.status{font-size:.8rem;font-weight:600;text-transform:uppercase}
.met .status{color:var(--ok)}.missed .status{color:var(--bad)}.no_data .status{color:var(--na)}
.floor{font-size:.85rem;font-weight:600;color:var(--bad)}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.2rem .6rem;text-align:left;border-bottom:1px solid var(--rule)}
table.adoption{width:100%}table.adoption td.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:inherit}nav a{margin-right:1rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:.8rem}
figure.chart{margin:0;border:1px solid #8884;border-radius:.5rem;padding:.5rem .7rem}
figcaption{font-weight:600}figcaption .meta{font-weight:400;display:block}
svg.trend{display:block;width:100%;height:auto;margin-top:.3rem}
.trend text{fill:var(--na);font-size:11px;font-variant-numeric:tabular-nums}
.trend .rule{stroke:var(--rule);stroke-width:1}
.trend .series{fill:none;stroke:var(--line);stroke-width:2;stroke-linejoin:round;stroke-linecap:round}
.trend .target{stroke:var(--target);stroke-width:1.5;stroke-dasharray:6 4}
.trend .alert-floor{stroke:var(--bad);stroke-width:1;stroke-dasharray:2 3}
.trend text.label{font-weight:600;font-size:10.5px}
.trend text.target-label{fill:var(--target)}.trend text.floor-label{fill:var(--bad)}
.trend circle{stroke:Canvas;stroke-width:1}.trend circle.met{fill:var(--ok)}.trend circle.missed{fill:var(--bad)}
.trend text.empty{font-size:13px}
.unavailable{border:1px dashed var(--na);border-radius:.5rem;padding:.6rem .8rem}
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

/// A share as a short percentage: `75 %`, `82.5 %`.
fn fmt_percent(v: f64) -> String {
    let p = format!("{:.1}", v * 100.0);
    format!("{} %", p.strip_suffix(".0").unwrap_or(&p))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A day as people read it on an axis: `3 Nov`.
fn short_day(d: NaiveDate) -> String {
    d.format("%-d %b").to_string()
}

/// One OKR card; `floor` is the alert floor under which the value is
/// flagged (draft completion only).
fn card(out: &mut String, window: &str, line: &OkrLine, floor: Option<f64>) {
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
    // Strictly below, as the alert rule compares.
    let below = floor.zip(line.value).map(|(f, v)| (f, v < f));
    let (class, attr, note) = match below {
        Some((f, true)) => (
            " below-floor",
            " data-below-floor=\"true\"",
            format!(
                "<div class=\"floor\">below the {} alert floor</div>",
                fmt_percent(f)
            ),
        ),
        Some((_, false)) => ("", " data-below-floor=\"false\"", String::new()),
        None => ("", "", String::new()),
    };
    let _ = write!(
        out,
        "<div class=\"card {status}{class}\" data-okr=\"{key}\" data-window=\"{w}\" data-value=\"{raw}\" data-target=\"{target}\" data-status=\"{status}\"{attr}>\
         <div class=\"name\">{name}</div><div class=\"value\">{value}</div>\
         <div>target {cmp} {tv}</div><div class=\"status\">{label}</div>{note}</div>",
        key = escape(&line.key),
        w = escape(window),
        raw = line.value.map(|v| v.to_string()).unwrap_or_default(),
        target = line.target,
        name = escape(&line.name),
        tv = fmt_value(&line.unit, line.target),
    );
}

/// The adoption figures in the order a manager reads them; keys of
/// [`adoption`] not listed here follow, under their key.
const ADOPTION_ORDER: [&str; 10] = [
    "active_creators",
    "repeat_creators_ratio",
    "followups_created",
    "followups_published",
    "creation_time_within_target_ratio",
    "engaged_followups_ratio",
    "next_actions",
    "followups_all_time_draft",
    "followups_all_time_published",
    "followups_all_time_deleted",
];

/// The words shown for an adoption figure of `window`.
fn adoption_label(key: &str, window: &Window) -> String {
    const DAY: u64 = 86_400;
    let label = match key {
        "active_creators" => {
            return match window.duration {
                d if d == Duration::from_secs(DAY) => "Daily active creators".to_owned(),
                d if d == Duration::from_secs(7 * DAY) => "Weekly active creators".to_owned(),
                d if d == Duration::from_secs(30 * DAY) => "Monthly active creators".to_owned(),
                _ => format!("Active creators ({})", window.label),
            };
        }
        "repeat_creators_ratio" => "Repeat creators",
        "followups_created" => "Follow-ups created",
        "followups_published" => "Published",
        "creation_time_within_target_ratio" => "Creation time within target",
        "engaged_followups_ratio" => "Engaged follow-ups",
        "next_actions" => "Next actions",
        "followups_all_time_draft" => "Drafts (all time)",
        "followups_all_time_published" => "Published (all time)",
        "followups_all_time_deleted" => "Deleted (all time)",
        other => other,
    };
    label.to_owned()
}

fn adoption_table(out: &mut String, window: &Window, figures: &BTreeMap<String, f64>) {
    if figures.is_empty() {
        return;
    }
    let keys = ADOPTION_ORDER
        .iter()
        .copied()
        .filter(|k| figures.contains_key(*k))
        .chain(
            figures
                .keys()
                .map(String::as_str)
                .filter(|k| !ADOPTION_ORDER.contains(k)),
        );
    let _ = write!(
        out,
        "<table class=\"adoption\"><tr><th colspan=\"2\">Adoption, last {}</th></tr>",
        escape(&window.label)
    );
    for k in keys {
        let v = figures[k];
        let shown = if k.ends_with("_ratio") {
            fmt_value("ratio", v)
        } else {
            format!("{v}")
        };
        let _ = write!(
            out,
            "<tr data-adoption=\"{key}\" data-window=\"{w}\" data-value=\"{v}\"><td>{label}</td><td class=\"num\">{shown}</td></tr>",
            key = escape(k),
            w = escape(&window.label),
            label = escape(&adoption_label(k, window)),
        );
    }
    out.push_str("</table>");
}

/// An OKR with a daily rollup, charted from the report's history.
struct Trend {
    /// The OKR's key in the scorecard (`data-okr`).
    key: &'static str,
    /// The [`HistoryDay`] field (and report JSON key) charted.
    field: &'static str,
    name: &'static str,
    /// `ratio` (0–100 % axis) or `visitors per follow-up` (0–max axis).
    unit: &'static str,
    /// Met when the day's value is at least this.
    target: f64,
    /// Alert floor drawn under the target.
    floor: Option<f64>,
    value: fn(&HistoryDay) -> Option<f64>,
}

fn trends(t: &Targets) -> [Trend; 3] {
    [
        Trend {
            key: "draft_completion",
            field: "draft_completion_ratio",
            name: "Draft completion",
            unit: "ratio",
            target: t.draft_completion_ratio,
            floor: Some(t.draft_completion_alert_floor_ratio),
            value: |h| h.draft_completion_ratio,
        },
        Trend {
            key: "engagement",
            field: "engagement_ratio",
            name: "Prospect engagement",
            unit: "visitors per follow-up",
            target: t.engagement_ratio,
            floor: None,
            value: |h| h.engagement_ratio,
        },
        Trend {
            key: "mobile_usage",
            field: "mobile_views_ratio",
            name: "Mobile usage",
            unit: "ratio",
            target: t.mobile_views_ratio,
            floor: None,
            value: |h| h.mobile_views_ratio,
        },
    ]
}

impl Trend {
    /// Top of the value axis: 100 % for shares, otherwise a round number
    /// above both the largest value and the target.
    fn axis_max(&self, values: impl Iterator<Item = f64>) -> f64 {
        if self.unit == "ratio" {
            return 1.0;
        }
        let top = values.fold(self.target, f64::max) * 1.15;
        ((top * 2.0).ceil() / 2.0).max(1.0)
    }

    /// A value as an axis or line label.
    fn axis_text(&self, v: f64) -> String {
        if self.unit == "ratio" {
            fmt_percent(v)
        } else {
            let s = format!("{v:.2}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

// Chart geometry, in viewBox units (scaled to the figure's width).
const VIEW_W: f64 = 400.0;
const VIEW_H: f64 = 180.0;
const PAD_LEFT: f64 = 40.0;
/// Room for the target and floor labels (two short lines each).
const PAD_RIGHT: f64 = 46.0;
const PAD_TOP: f64 = 10.0;
const PAD_BOTTOM: f64 = 22.0;
/// Least vertical distance between the centres of two line labels.
const LABEL_GAP: f64 = 26.0;

/// The label of a horizontal line in the right margin: `what` above
/// `value`, centred on `y`.
fn line_label(class: &str, what: &str, value: &str, y: f64) -> String {
    let x = VIEW_W - PAD_RIGHT + 4.0;
    format!(
        "<text class=\"label {class}\" x=\"{x}\" y=\"{top:.1}\">{what}\
         <tspan x=\"{x}\" dy=\"1.1em\">{value}</tspan></text>",
        top = y - 2.0,
        what = escape(what),
        value = escape(value),
    )
}

/// One trend chart over `days` (oldest first). Each day with a value is a
/// point carrying `data-day` and `data-value`; a day without one is a gap
/// in the line.
fn chart(out: &mut String, t: &Trend, days: &[NaiveDate], rows: &BTreeMap<NaiveDate, &HistoryDay>) {
    let points: Vec<(usize, NaiveDate, f64)> = days
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let v = rows.get(d).and_then(|h| (t.value)(h))?;
            v.is_finite().then_some((i, *d, v))
        })
        .collect();
    let top = t.axis_max(points.iter().map(|p| p.2));
    let plot_w = VIEW_W - PAD_LEFT - PAD_RIGHT;
    let plot_h = VIEW_H - PAD_TOP - PAD_BOTTOM;
    let slots = days.len().max(2) - 1;
    let x = |i: usize| PAD_LEFT + plot_w * i as f64 / slots as f64;
    let y = |v: f64| PAD_TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let right = VIEW_W - PAD_RIGHT;
    let (first, last) = match (days.first(), days.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return,
    };
    let id = format!("trend-{}", t.key);
    let target_text = format!("target ≥ {}", t.axis_text(t.target));
    let latest = points.last().map_or_else(
        || "no daily data yet".to_owned(),
        |(_, d, v)| format!("latest {} ({})", fmt_value(t.unit, *v), short_day(*d)),
    );
    let _ = write!(
        out,
        "<figure class=\"chart\" data-trend=\"{key}\" data-field=\"{field}\" data-target=\"{target}\">\
         <figcaption>{name}<span class=\"meta\">{latest} · {n} of {total} days with data · {tt}</span></figcaption>\
         <svg class=\"trend\" viewBox=\"0 0 {VIEW_W} {VIEW_H}\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\">\
         <title id=\"{id}-title\">{name}, per day, {from} to {to}</title>\
         <desc id=\"{id}-desc\">{n} of {total} days have data (days without data are gaps); {tt}; {latest}.</desc>",
        key = t.key,
        field = t.field,
        target = t.target,
        name = escape(t.name),
        latest = escape(&latest),
        n = points.len(),
        total = days.len(),
        tt = escape(&target_text),
        from = first.format("%-d %b %Y"),
        to = last.format("%-d %b %Y"),
    );
    // Value axis: rules and labels at 0, half and top.
    for v in [0.0, top / 2.0, top] {
        let _ = write!(
            out,
            "<line class=\"rule\" x1=\"{PAD_LEFT}\" x2=\"{right}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\"/>\
             <text x=\"{lx}\" y=\"{yv:.1}\" dy=\".32em\" text-anchor=\"end\">{label}</text>",
            yv = y(v),
            lx = PAD_LEFT - 5.0,
            label = escape(&t.axis_text(v)),
        );
    }
    // Day axis: first, middle and last day.
    let mid = days.len() / 2;
    for (i, anchor) in [(0, "start"), (mid, "middle"), (days.len() - 1, "end")] {
        let _ = write!(
            out,
            "<text x=\"{xi:.1}\" y=\"{ly}\" text-anchor=\"{anchor}\">{day}</text>",
            xi = x(i),
            ly = VIEW_H - 6.0,
            day = escape(&short_day(days[i])),
        );
    }
    // Target (and alert floor): dashed lines across the plot, labelled in
    // the right margin, the labels pushed apart where they would overlap.
    let yt = y(t.target);
    let yf = t.floor.map(y);
    let (mut label_t, mut label_f) = (yt, yf.unwrap_or(yt));
    if yf.is_some() && label_f - label_t < LABEL_GAP {
        let push = (LABEL_GAP - (label_f - label_t)) / 2.0;
        label_t -= push;
        label_f += push;
    }
    let _ = write!(
        out,
        "<line class=\"target\" data-target=\"{tv}\" x1=\"{PAD_LEFT}\" x2=\"{right}\" y1=\"{yt:.1}\" y2=\"{yt:.1}\"/>\
         {label}",
        tv = t.target,
        label = line_label("target-label", "target", &t.axis_text(t.target), label_t),
    );
    if let (Some(f), Some(yf)) = (t.floor, yf) {
        let _ = write!(
            out,
            "<line class=\"alert-floor\" data-floor=\"{f}\" x1=\"{PAD_LEFT}\" x2=\"{right}\" y1=\"{yf:.1}\" y2=\"{yf:.1}\"/>\
             {label}",
            label = line_label("floor-label", "floor", &t.axis_text(f), label_f),
        );
    }
    if points.is_empty() {
        let _ = write!(
            out,
            "<text class=\"empty\" x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\">no daily data yet</text>",
            cx = PAD_LEFT + plot_w / 2.0,
            cy = PAD_TOP + plot_h / 2.0,
        );
    }
    // The line, broken wherever a day has no value.
    let mut path = String::new();
    let mut previous: Option<usize> = None;
    for &(i, _, v) in &points {
        let joined = previous.is_some_and(|p| p + 1 == i);
        let _ = write!(
            path,
            "{}{:.1} {:.1}",
            if joined { " L" } else { " M" },
            x(i),
            y(v)
        );
        previous = Some(i);
    }
    if !path.is_empty() {
        let _ = write!(out, "<path class=\"series\" d=\"{}\"/>", path.trim_start());
    }
    for &(i, d, v) in &points {
        let met = if v >= t.target { "met" } else { "missed" };
        let _ = write!(
            out,
            "<circle class=\"{met}\" cx=\"{xi:.1}\" cy=\"{yv:.1}\" r=\"3\" data-day=\"{d}\" data-value=\"{v}\">\
             <title>{day}: {shown} ({met})</title></circle>",
            xi = x(i),
            yv = y(v),
            day = escape(&d.format("%-d %b %Y").to_string()),
            shown = escape(&fmt_value(t.unit, v)),
        );
    }
    out.push_str("</svg></figure>");
}

/// The trend section: a chart per OKR with a daily rollup, from
/// `history` (newest first, as [`history`] returns it), or a notice when
/// the history could not be read.
fn trend_section(
    out: &mut String,
    targets: &Targets,
    history: Option<&[HistoryDay]>,
    today: NaiveDate,
) {
    let _ = write!(
        out,
        "<section class=\"trends\"><h2>Daily trend, last {TREND_DAYS} days</h2>"
    );
    match history {
        None => out.push_str(
            "<p class=\"unavailable\" data-history=\"unavailable\">Daily history unavailable: \
             the rollup tables could not be read from the database. The scorecard above still \
             shows the last collected values; retry later.</p>",
        ),
        Some(rows) => {
            // The days of the report's history: the last TREND_DAYS ending
            // today, widened if the database's clock put a row outside.
            let newest = rows.iter().map(|h| h.day).max().unwrap_or(today).max(today);
            let oldest = newest - chrono::Days::new(u64::from(TREND_DAYS) - 1);
            let oldest = rows
                .iter()
                .map(|h| h.day)
                .min()
                .unwrap_or(oldest)
                .min(oldest);
            let days: Vec<NaiveDate> = oldest.iter_days().take_while(|d| *d <= newest).collect();
            let by_day: BTreeMap<NaiveDate, &HistoryDay> =
                rows.iter().map(|h| (h.day, h)).collect();
            out.push_str("<div class=\"charts\">");
            for t in trends(targets) {
                chart(out, &t, &days, &by_day);
            }
            out.push_str("</div>");
        }
    }
    out.push_str(
        "<p class=\"meta\">Daily values of the rollup tables (UTC days), the same as the \
         report's history. Creation time P80 and time to next action have no daily rollup: \
         their trend is in Grafana.</p></section>",
    );
}

/// Renders the landing page.
pub async fn page(State(state): State<AppState>) -> Html<String> {
    let targets = &state.settings.targets;
    let rows = match tokio::time::timeout(
        state.settings.query_timeout,
        history(&state.pool, TREND_DAYS),
    )
    .await
    {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "landing page: reading rollup history failed");
            None
        }
        Err(_) => {
            tracing::warn!("landing page: reading rollup history timed out");
            None
        }
    };
    let now = chrono::Utc::now();
    let mut out = String::with_capacity(32 * 1024);
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
        now = now.format("%Y-%m-%d %H:%M:%S"),
        every = humantime::format_duration(state.settings.collect_interval),
    );
    for w in &state.settings.windows.0 {
        let _ = write!(
            out,
            "<section class=\"window\"><h2>Last {}</h2><div class=\"split\"><div class=\"grid\">",
            escape(&w.label)
        );
        for line in scorecard(&state.store, targets, &w.label) {
            let floor = (line.key == "draft_completion")
                .then_some(targets.draft_completion_alert_floor_ratio);
            card(&mut out, &w.label, &line, floor);
        }
        out.push_str("</div>");
        adoption_table(&mut out, w, &adoption(&state.store, &w.label));
        out.push_str("</div></section>");
    }
    trend_section(&mut out, targets, rows.as_deref(), now.date_naive());
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
        assert_eq!(fmt_percent(0.75), "75 %");
        assert_eq!(fmt_percent(0.825), "82.5 %");
        assert_eq!(escape("<a href=\"x\">"), "&lt;a href=&quot;x&quot;&gt;");
    }

    fn window(label: &str, secs: u64) -> Window {
        Window {
            label: label.to_owned(),
            duration: Duration::from_secs(secs),
        }
    }

    #[test]
    fn active_creators_are_named_by_their_window() {
        let day = 86_400;
        assert_eq!(
            adoption_label("active_creators", &window("1d", day)),
            "Daily active creators"
        );
        assert_eq!(
            adoption_label("active_creators", &window("24h", day)),
            "Daily active creators"
        );
        assert_eq!(
            adoption_label("active_creators", &window("7d", 7 * day)),
            "Weekly active creators"
        );
        assert_eq!(
            adoption_label("active_creators", &window("30d", 30 * day)),
            "Monthly active creators"
        );
        assert_eq!(
            adoption_label("active_creators", &window("14d", 14 * day)),
            "Active creators (14d)"
        );
        assert_eq!(
            adoption_label("followups_all_time_deleted", &window("1d", day)),
            "Deleted (all time)"
        );
    }

    fn day(d: u32) -> HistoryDay {
        HistoryDay {
            day: NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
            drafts_created: Some(10),
            drafts_published: Some(7),
            draft_completion_ratio: Some(0.7),
            followups_published: Some(4),
            unique_visitors: Some(6),
            engagement_ratio: Some(1.5),
            sessions: None,
            mobile_views_ratio: None,
        }
    }

    #[test]
    fn charts_break_the_line_at_gaps_and_scale_the_axis() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 10).unwrap();
        let rows = [day(10), day(9), day(7)];
        let mut out = String::new();
        trend_section(&mut out, &Targets::default(), Some(&rows), today);
        let engagement = &out[out.find("data-trend=\"engagement\"").unwrap()..];
        let engagement = &engagement[..engagement.find("</figure>").unwrap()];
        // Days 7 and 9–10: two pieces of line.
        assert_eq!(engagement.matches("<circle").count(), 3);
        let path = engagement.split("class=\"series\" d=\"").nth(1).unwrap();
        let path = &path[..path.find('"').unwrap()];
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert_eq!(path.matches('L').count(), 1, "{path}");
        // 1.5 × 1.15 rounds up to a 2.0 axis.
        assert!(engagement.contains(">2</text>"), "{engagement}");
        // Mobile usage has no values: an empty chart says so.
        let mobile = &out[out.find("data-trend=\"mobile_usage\"").unwrap()..];
        assert!(!mobile[..mobile.find("</figure>").unwrap()].contains("<circle"));
        assert!(mobile.contains("no daily data yet"));
        let mut out = String::new();
        trend_section(&mut out, &Targets::default(), None, today);
        assert!(out.contains("history unavailable") && !out.contains("<svg"));
    }
}
