//! `GET /api/okr/report?window=7d&format=json|csv&days=30`: every OKR of a
//! window with its value, target, comparison and status, the adoption
//! figures, and the daily rollup history. Values are read from the same
//! snapshot `/metrics` serves, so both always agree.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::collector::{DraftCounts, SnapshotStore, Tally, mobile_share};
use crate::config::Targets;
use crate::state::AppState;

/// The report route (put behind the read guard by [`crate::server`]).
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/okr/report", get(report))
}

/// How a value is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// Met when value ≤ target.
    #[serde(rename = "<=")]
    AtMost,
    /// Met when value ≥ target.
    #[serde(rename = ">=")]
    AtLeast,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Self::AtMost => "<=",
            Self::AtLeast => ">=",
        }
    }
}

/// Whether an OKR meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OkrStatus {
    /// Target met.
    Met,
    /// Target missed.
    Missed,
    /// No samples in the window.
    NoData,
}

impl OkrStatus {
    /// The status as written in JSON and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "missed",
            Self::NoData => "no_data",
        }
    }
}

/// One OKR line of the scorecard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OkrLine {
    /// Stable key, e.g. `creation_time_p80`.
    pub key: String,
    /// Human name.
    pub name: String,
    /// The series the value comes from.
    pub metric: String,
    /// Unit (`seconds`, `ratio` or `visitors per follow-up`).
    pub unit: String,
    /// The value, absent when the window has no samples.
    pub value: Option<f64>,
    /// The target.
    pub target: f64,
    /// Comparison with the target.
    pub comparison: Comparison,
    /// Outcome.
    pub status: OkrStatus,
    /// True for OKRs tracked but never alerted on.
    pub tracked_only: bool,
}

struct OkrDef {
    key: &'static str,
    name: &'static str,
    metric: &'static str,
    extra: Option<(&'static str, &'static str)>,
    unit: &'static str,
    comparison: Comparison,
    target: fn(&Targets) -> f64,
    tracked_only: bool,
}

const OKRS: [OkrDef; 5] = [
    OkrDef {
        key: "creation_time_p80",
        name: "Creation time P80",
        metric: "okr_creation_time_seconds",
        extra: Some(("quantile", "0.8")),
        unit: "seconds",
        comparison: Comparison::AtMost,
        target: |t| t.creation_time_p80_seconds,
        tracked_only: false,
    },
    OkrDef {
        key: "draft_completion",
        name: "Draft completion",
        metric: "okr_draft_completion_ratio",
        extra: None,
        unit: "ratio",
        comparison: Comparison::AtLeast,
        target: |t| t.draft_completion_ratio,
        tracked_only: false,
    },
    OkrDef {
        key: "engagement",
        name: "Prospect engagement (unique visitors per follow-up)",
        metric: "okr_engagement_ratio",
        extra: None,
        unit: "visitors per follow-up",
        comparison: Comparison::AtLeast,
        target: |t| t.engagement_ratio,
        tracked_only: false,
    },
    OkrDef {
        key: "time_to_next_action",
        name: "Time to next action (mean)",
        metric: "okr_time_to_next_action_avg_seconds",
        extra: None,
        unit: "seconds",
        comparison: Comparison::AtMost,
        target: |t| t.time_to_next_action_avg_seconds,
        tracked_only: true,
    },
    OkrDef {
        key: "mobile_usage",
        name: "Mobile usage",
        metric: "okr_mobile_views_ratio",
        extra: None,
        unit: "ratio",
        comparison: Comparison::AtLeast,
        target: |t| t.mobile_views_ratio,
        tracked_only: false,
    },
];

/// The five OKRs of `window` from the current snapshot.
pub fn scorecard(store: &SnapshotStore, targets: &Targets, window: &str) -> Vec<OkrLine> {
    OKRS.iter()
        .map(|d| {
            let mut labels = vec![("window", window)];
            if let Some(extra) = d.extra {
                labels.push(extra);
            }
            let value = store.value(d.metric, &labels);
            let target = (d.target)(targets);
            let status = match value {
                None => OkrStatus::NoData,
                Some(v) => {
                    let met = match d.comparison {
                        Comparison::AtMost => v <= target,
                        Comparison::AtLeast => v >= target,
                    };
                    if met {
                        OkrStatus::Met
                    } else {
                        OkrStatus::Missed
                    }
                }
            };
            let metric = match d.extra {
                Some((k, v)) => format!("{}{{window=\"{window}\",{k}=\"{v}\"}}", d.metric),
                None => format!("{}{{window=\"{window}\"}}", d.metric),
            };
            OkrLine {
                key: d.key.to_owned(),
                name: d.name.to_owned(),
                metric,
                unit: d.unit.to_owned(),
                value,
                target,
                comparison: d.comparison,
                status,
                tracked_only: d.tracked_only,
            }
        })
        .collect()
}

/// Adoption figures of a window (absent values are omitted).
pub fn adoption(store: &SnapshotStore, window: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for name in [
        "okr_followups_created",
        "okr_followups_published",
        "okr_active_creators",
        "okr_repeat_creators_ratio",
        "okr_creation_time_within_target_ratio",
        "okr_engaged_followups_ratio",
        "okr_next_actions",
    ] {
        if let Some(v) = store.value(name, &[("window", window)]) {
            out.insert(name.trim_start_matches("okr_").to_owned(), v);
        }
    }
    for status in ["draft", "published", "deleted"] {
        if let Some(v) = store.value("okr_followups", &[("status", status)]) {
            out.insert(format!("followups_all_time_{status}"), v);
        }
    }
    out
}

/// One day of rollup history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryDay {
    /// UTC day.
    pub day: NaiveDate,
    /// Follow-ups created that day.
    pub drafts_created: Option<i64>,
    /// Of those, published.
    pub drafts_published: Option<i64>,
    /// Draft completion of that day's drafts.
    pub draft_completion_ratio: Option<f64>,
    /// Follow-ups published that day.
    pub followups_published: Option<i64>,
    /// Unique visitors of those follow-ups.
    pub unique_visitors: Option<i64>,
    /// Engagement of that day's follow-ups.
    pub engagement_ratio: Option<f64>,
    /// Sessions started that day.
    pub sessions: Option<i64>,
    /// Mobile share of those sessions.
    pub mobile_views_ratio: Option<f64>,
}

/// One day of the rollup tables, as stored.
#[derive(Debug, sqlx::FromRow)]
struct RollupDay {
    day: NaiveDate,
    created: Option<i64>,
    published: Option<i64>,
    deleted: Option<i64>,
    followups: Option<i64>,
    unique_visitors: Option<i64>,
    engaged_followups: Option<i64>,
    sessions: Option<i64>,
    mobile: Option<i64>,
    tablet: Option<i64>,
    desktop: Option<i64>,
    other: Option<i64>,
}

impl RollupDay {
    /// The day's ratios, each from its OKR's own definition.
    fn into_history(self) -> HistoryDay {
        let drafts = self.created.map(|created| DraftCounts {
            created,
            published: self.published.unwrap_or(0),
            deleted: self.deleted.unwrap_or(0),
        });
        let engagement = self.followups.map(|followups| Tally {
            followups,
            visitors: self.unique_visitors.unwrap_or(0),
            engaged: self.engaged_followups.unwrap_or(0),
        });
        let devices = self
            .sessions
            .map(|_| [self.mobile, self.tablet, self.desktop, self.other].map(|v| v.unwrap_or(0)));
        HistoryDay {
            day: self.day,
            drafts_created: self.created,
            drafts_published: self.published,
            draft_completion_ratio: drafts.and_then(|d| d.completion()),
            followups_published: self.followups,
            unique_visitors: self.unique_visitors,
            engagement_ratio: engagement.and_then(|t| t.ratio()),
            sessions: self.sessions,
            mobile_views_ratio: devices.and_then(mobile_share),
        }
    }
}

/// Reads the last `days` days of rollups, newest first.
pub async fn history(pool: &sqlx::PgPool, days: u32) -> Result<Vec<HistoryDay>, sqlx::Error> {
    let rows: Vec<RollupDay> = sqlx::query_as(
        "WITH days AS (
             SELECT day FROM okr_draft_completions
             UNION SELECT day FROM okr_engagement
             UNION SELECT day FROM okr_mobile_usage)
         SELECT d.day, dc.created, dc.published, dc.deleted,
                e.followups, e.unique_visitors, e.engaged_followups,
                m.sessions, m.mobile, m.tablet, m.desktop, m.other
         FROM days d
         LEFT JOIN okr_draft_completions dc ON dc.day = d.day
         LEFT JOIN okr_engagement e ON e.day = d.day
         LEFT JOIN okr_mobile_usage m ON m.day = d.day
         WHERE d.day > (now() AT TIME ZONE 'UTC')::date - $1::int
         ORDER BY d.day DESC",
    )
    .bind(days as i32)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(RollupDay::into_history).collect())
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Window label.
    pub window: String,
    /// When the report was generated.
    pub generated_at: chrono::DateTime<Utc>,
    /// The OKRs.
    pub okrs: Vec<OkrLine>,
    /// Adoption figures.
    pub adoption: BTreeMap<String, f64>,
    /// Daily rollups, newest first.
    pub history: Vec<HistoryDay>,
}

/// Query parameters of the report.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    window: Option<String>,
    format: Option<String>,
    days: Option<String>,
}

/// Serves the report.
async fn report(
    State(state): State<AppState>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Malformed {
        message: e.body_text(),
        field: None,
    })?;
    let windows = &state.settings.windows.0;
    let window = match q.window {
        Some(w) => windows
            .iter()
            .find(|x| x.label == w)
            .map(|x| x.label.clone())
            .ok_or_else(|| {
                let known: Vec<&str> = windows.iter().map(|x| x.label.as_str()).collect();
                ApiError::invalid(
                    "window",
                    format!("unknown window; configured: {}", known.join(", ")),
                )
            })?,
        None => windows
            .iter()
            .find(|x| x.label == "7d")
            .or(windows.first())
            .map(|x| x.label.clone())
            .unwrap_or_default(),
    };
    let days = match q.days.as_deref() {
        None => 30,
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=400).contains(d))
            .ok_or_else(|| {
                ApiError::invalid("days", "days must be a whole number from 1 to 400")
            })?,
    };
    let format = q.format.unwrap_or_else(|| "json".into());
    if format != "json" && format != "csv" {
        return Err(ApiError::invalid("format", "format must be json or csv"));
    }
    // While the database is known to be down, answer 503 at once (with
    // Retry-After) instead of waiting for the pool, as ingestion does.
    let ticket = state.database.admit().map_err(ApiError::from)?;
    let history = history(&state.pool, days).await;
    ticket.observe(&history);
    let history = history.map_err(|e| {
        tracing::warn!(error = %e, "reading rollup history failed");
        ApiError::unavailable("database unavailable; retry later")
    })?;
    let report = Report {
        okrs: scorecard(&state.store, &state.settings.targets, &window),
        adoption: adoption(&state.store, &window),
        window,
        generated_at: Utc::now(),
        history,
    };
    if format == "json" {
        return Ok(Json(report).into_response());
    }
    let mut resp = to_csv(&report).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let name = format!(
        "attachment; filename=\"okr-report-{}-{}.csv\"",
        report.window,
        report.generated_at.format("%Y%m%d")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn num(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The report as long-format CSV: one row per value, with a header row.
pub fn to_csv(r: &Report) -> String {
    let mut out = String::from("section,window,day,metric,value,target,comparison,status\n");
    for o in &r.okrs {
        out.push_str(&format!(
            "okr,{},,{},{},{},{},{}\n",
            csv_field(&r.window),
            csv_field(&o.key),
            num(o.value),
            o.target,
            o.comparison.symbol(),
            o.status.as_str()
        ));
    }
    for (k, v) in &r.adoption {
        out.push_str(&format!(
            "adoption,{},,{},{v},,,\n",
            csv_field(&r.window),
            csv_field(k)
        ));
    }
    for h in &r.history {
        let day = h.day.to_string();
        for (k, v) in [
            ("drafts_created", h.drafts_created.map(|v| v as f64)),
            ("drafts_published", h.drafts_published.map(|v| v as f64)),
            ("draft_completion_ratio", h.draft_completion_ratio),
            (
                "followups_published",
                h.followups_published.map(|v| v as f64),
            ),
            ("unique_visitors", h.unique_visitors.map(|v| v as f64)),
            ("engagement_ratio", h.engagement_ratio),
            ("sessions", h.sessions.map(|v| v as f64)),
            ("mobile_views_ratio", h.mobile_views_ratio),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("history,,{day},{k},{v},,,\n"));
            }
        }
    }
    out
}
