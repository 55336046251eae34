//! `GET /`: the landing page — the OKR scorecard of every window (value,
//! target, met/missed, the draft-completion alert floor), the adoption
//! figures in a manager's words, and the last 30 days of the OKRs that have
//! a daily rollup, drawn as inline SVG charts from the report's history.
//! Everything is inline (no external assets, no JavaScript), readable on a
//! phone and in a dark color scheme, refreshed every 5 minutes.
//!
//! The HTML is written with [`maud`]'s `html!`, which escapes every spliced
//! value (`&`, `<`, `>`, `"`); only the constant style sheet and the doctype
//! go in unescaped, through [`PreEscaped`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use chrono::NaiveDate;
use maud::{Markup, PreEscaped, html};

use crate::config::{Targets, Window};
use crate::report::{Comparison, HistoryDay, OkrLine, OkrStatus, adoption, history, scorecard};
use crate::state::AppState;

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

/// A day as people read it on an axis: `3 Nov`.
fn short_day(d: NaiveDate) -> String {
    d.format("%-d %b").to_string()
}

/// One OKR card; `floor` is the alert floor under which the value is
/// flagged (draft completion only).
fn card(window: &str, line: &OkrLine, floor: Option<f64>) -> Markup {
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
    let class = match below {
        Some((_, true)) => format!("card {status} below-floor"),
        _ => format!("card {status}"),
    };
    let below_attr = below.map(|(_, b)| if b { "true" } else { "false" });
    let raw = line.value.map(|v| v.to_string()).unwrap_or_default();
    html! {
        div class=(class) data-okr=(line.key) data-window=(window) data-value=(raw)
            data-target=(line.target) data-status=(status) data-below-floor=[below_attr] {
            div class="name" { (line.name) }
            div class="value" { (value) }
            div { "target " (cmp) " " (fmt_value(&line.unit, line.target)) }
            div class="status" { (label) }
            @if let Some((f, true)) = below {
                div class="floor" { "below the " (fmt_percent(f)) " alert floor" }
            }
        }
    }
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

/// The adoption table of `window`; nothing when it has no figures.
fn adoption_table(window: &Window, figures: &BTreeMap<String, f64>) -> Markup {
    if figures.is_empty() {
        return html! {};
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
    html! {
        table class="adoption" {
            tr { th colspan="2" { "Adoption, last " (window.label) } }
            @for k in keys {
                @let v = figures[k];
                tr data-adoption=(k) data-window=(window.label) data-value=(v) {
                    td { (adoption_label(k, window)) }
                    td class="num" {
                        @if k.ends_with("_ratio") { (fmt_value("ratio", v)) } @else { (v) }
                    }
                }
            }
        }
    }
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

/// A coordinate as the chart writes it: one decimal.
fn coord(v: f64) -> String {
    format!("{v:.1}")
}

/// The label of a horizontal line in the right margin: `what` above
/// `value`, centred on `y`.
fn line_label(class: &str, what: &str, value: &str, y: f64) -> Markup {
    let x = VIEW_W - PAD_RIGHT + 4.0;
    html! {
        text class=(format!("label {class}")) x=(x) y=(coord(y - 2.0)) {
            (what) tspan x=(x) dy="1.1em" { (value) }
        }
    }
}

/// One trend chart over `days` (oldest first). Each day with a value is a
/// point carrying `data-day` and `data-value`; a day without one is a gap
/// in the line.
fn chart(t: &Trend, days: &[NaiveDate], rows: &BTreeMap<NaiveDate, &HistoryDay>) -> Markup {
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
        _ => return html! {},
    };
    let id = format!("trend-{}", t.key);
    let target_text = format!("target ≥ {}", t.axis_text(t.target));
    let latest = points.last().map_or_else(
        || "no daily data yet".to_owned(),
        |(_, d, v)| format!("latest {} ({})", fmt_value(t.unit, *v), short_day(*d)),
    );
    let (n, total) = (points.len(), days.len());
    // Day axis: first, middle and last day.
    let mid = days.len() / 2;
    let day_ticks = [(0, "start"), (mid, "middle"), (days.len() - 1, "end")];
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
    // Explicit end tags: inside <svg> a start tag is not closed by the next.
    html! {
        figure class="chart" data-trend=(t.key) data-field=(t.field) data-target=(t.target) {
            figcaption {
                (t.name)
                span class="meta" {
                    (latest) " · " (n) " of " (total) " days with data · " (target_text)
                }
            }
            svg class="trend" viewBox=(format!("0 0 {VIEW_W} {VIEW_H}")) role="img"
                aria-labelledby=(format!("{id}-title {id}-desc")) {
                title id=(format!("{id}-title")) {
                    (t.name) ", per day, " (first.format("%-d %b %Y")) " to "
                    (last.format("%-d %b %Y"))
                }
                desc id=(format!("{id}-desc")) {
                    (n) " of " (total) " days have data (days without data are gaps); "
                    (target_text) "; " (latest) "."
                }
                // Value axis: rules and labels at 0, half and top.
                @for v in [0.0, top / 2.0, top] {
                    line class="rule" x1=(PAD_LEFT) x2=(right) y1=(coord(y(v))) y2=(coord(y(v))) {}
                    text x=(PAD_LEFT - 5.0) y=(coord(y(v))) dy=".32em" text-anchor="end" {
                        (t.axis_text(v))
                    }
                }
                @for (i, anchor) in day_ticks {
                    text x=(coord(x(i))) y=(VIEW_H - 6.0) text-anchor=(anchor) {
                        (short_day(days[i]))
                    }
                }
                line class="target" data-target=(t.target) x1=(PAD_LEFT) x2=(right)
                    y1=(coord(yt)) y2=(coord(yt)) {}
                (line_label("target-label", "target", &t.axis_text(t.target), label_t))
                @if let (Some(f), Some(yf)) = (t.floor, yf) {
                    line class="alert-floor" data-floor=(f) x1=(PAD_LEFT) x2=(right)
                        y1=(coord(yf)) y2=(coord(yf)) {}
                    (line_label("floor-label", "floor", &t.axis_text(f), label_f))
                }
                @if points.is_empty() {
                    text class="empty" x=(PAD_LEFT + plot_w / 2.0) y=(PAD_TOP + plot_h / 2.0)
                        text-anchor="middle" { "no daily data yet" }
                }
                @if !path.is_empty() {
                    path class="series" d=(path.trim_start()) {}
                }
                @for &(i, d, v) in &points {
                    @let met = if v >= t.target { "met" } else { "missed" };
                    circle class=(met) cx=(coord(x(i))) cy=(coord(y(v))) r="3" data-day=(d)
                        data-value=(v) {
                        title {
                            (d.format("%-d %b %Y")) ": " (fmt_value(t.unit, v)) " (" (met) ")"
                        }
                    }
                }
            }
        }
    }
}

/// The days of the report's history: the last [`TREND_DAYS`] ending
/// `today`, widened if the database's clock put a row outside (oldest
/// first).
fn trend_days(rows: &[HistoryDay], today: NaiveDate) -> Vec<NaiveDate> {
    let newest = rows.iter().map(|h| h.day).max().unwrap_or(today).max(today);
    let oldest = newest - chrono::Days::new(u64::from(TREND_DAYS) - 1);
    let oldest = rows
        .iter()
        .map(|h| h.day)
        .min()
        .unwrap_or(oldest)
        .min(oldest);
    oldest.iter_days().take_while(|d| *d <= newest).collect()
}

/// The trend section: a chart per OKR with a daily rollup, from
/// `history` (newest first, as [`history`] returns it), or a notice when
/// the history could not be read.
fn trend_section(targets: &Targets, history: Option<&[HistoryDay]>, today: NaiveDate) -> Markup {
    html! {
        section class="trends" {
            h2 { "Daily trend, last " (TREND_DAYS) " days" }
            @match history {
                None => {
                    p class="unavailable" data-history="unavailable" {
                        "Daily history unavailable: the rollup tables could not be read from \
                         the database. The scorecard above still shows the last collected \
                         values; retry later."
                    }
                }
                Some(rows) => {
                    @let days = trend_days(rows, today);
                    @let by_day: BTreeMap<NaiveDate, &HistoryDay> =
                        rows.iter().map(|h| (h.day, h)).collect();
                    div class="charts" {
                        @for t in trends(targets) {
                            (chart(&t, &days, &by_day))
                        }
                    }
                }
            }
            p class="meta" {
                "Daily values of the rollup tables (UTC days), the same as the report's \
                 history. Creation time P80 and time to next action have no daily rollup: \
                 their trend is in Grafana."
            }
        }
    }
}

/// The landing page's route: `GET /`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page))
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
    let markup = html! {
        (PreEscaped("<!doctype html>"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta http-equiv="refresh" content="300";
                title { "Follow-Up OKRs — okr-exporter" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Follow-Up OKR scorecard" }
                p class="meta" {
                    "okr-exporter " (env!("CARGO_PKG_VERSION"))
                    " · generated " (now.format("%Y-%m-%d %H:%M:%S"))
                    " UTC · refreshes every 5 minutes · values refreshed every "
                    (humantime::format_duration(state.settings.collect_interval))
                    " by background collection"
                }
                nav {
                    a href="metrics" { "/metrics" }
                    a href="api/okr/report?format=json" { "report (JSON)" }
                    a href="api/okr/report?format=csv" { "report (CSV)" }
                }
                @for w in &state.settings.windows.0 {
                    section class="window" {
                        h2 { "Last " (w.label) }
                        div class="split" {
                            div class="grid" {
                                @for line in scorecard(&state.store, targets, &w.label) {
                                    @let floor = (line.key == "draft_completion")
                                        .then_some(targets.draft_completion_alert_floor_ratio);
                                    (card(&w.label, &line, floor))
                                }
                            }
                            (adoption_table(w, &adoption(&state.store, &w.label)))
                        }
                    }
                }
                (trend_section(targets, rows.as_deref(), now.date_naive()))
            }
        }
    };
    Html(markup.into_string())
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
    }

    /// The card as the hand-written HTML builder wrote it, every spliced
    /// text escaped.
    #[test]
    fn cards_escape_their_text_and_keep_their_attributes() {
        let line = OkrLine {
            key: "draft_completion".to_owned(),
            name: "Draft <completion> & \"more\"".to_owned(),
            metric: "okr_draft_completion_ratio".to_owned(),
            unit: "ratio".to_owned(),
            value: Some(0.5),
            target: 0.8,
            comparison: Comparison::AtLeast,
            status: OkrStatus::Missed,
            tracked_only: false,
        };
        assert_eq!(
            card("7d", &line, Some(0.75)).into_string(),
            "<div class=\"card missed below-floor\" data-okr=\"draft_completion\" \
             data-window=\"7d\" data-value=\"0.5\" data-target=\"0.8\" data-status=\"missed\" \
             data-below-floor=\"true\"><div class=\"name\">Draft &lt;completion&gt; &amp; \
             &quot;more&quot;</div><div class=\"value\">50.0 %</div><div>target ≥ 80.0 %</div>\
             <div class=\"status\">missed</div><div class=\"floor\">below the 75 % alert \
             floor</div></div>"
        );
        let no_data = OkrLine {
            value: None,
            status: OkrStatus::NoData,
            ..line
        };
        assert_eq!(
            card("1d", &no_data, None).into_string(),
            "<div class=\"card no_data\" data-okr=\"draft_completion\" data-window=\"1d\" \
             data-value=\"\" data-target=\"0.8\" data-status=\"no_data\"><div class=\"name\">\
             Draft &lt;completion&gt; &amp; &quot;more&quot;</div><div class=\"value\">no data\
             </div><div>target ≥ 80.0 %</div><div class=\"status\">no data</div></div>"
        );
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
        let out = trend_section(&Targets::default(), Some(&rows), today).into_string();
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
        let out = trend_section(&Targets::default(), None, today).into_string();
        assert!(out.contains("history unavailable") && !out.contains("<svg"));
    }
}
