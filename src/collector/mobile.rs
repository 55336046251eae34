//! OKR 5, mobile usage: share of analytics sessions started in each window on
//! a mobile device.
//!
//! Keeps the sessions of the longest window in memory (start time and device
//! class, about 40 bytes each) and adds only the rows new since the last run
//! (see [`watermark`](super::watermark)); a run without a usable watermark
//! reloads the window. Either way the counts are exact.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::watermark::{Watermarks, current_mark};
use super::{CollectContext, Family, OkrCollector, ratio};

/// Device classes, in label order; anything else counts as `other`.
const DEVICES: [&str; 4] = ["mobile", "tablet", "desktop", "other"];

// Full load: range scan of okr_analytics_sessions_started_at_idx (index-only).
const WINDOW_SQL: &str = "
SELECT id, started_at, device_type FROM analytics_sessions
WHERE started_at > $1";

// Rows above the watermark: primary-key range scan.
const NEW_SQL: &str = "
SELECT id, started_at, device_type FROM analytics_sessions
WHERE id > $1 AND started_at > $2";

/// Collects `okr_mobile_views_ratio` and `okr_views{device_type}`.
#[derive(Debug, Default)]
pub struct MobileCollector {
    state: tokio::sync::Mutex<State>,
    incremental_runs: std::sync::atomic::AtomicU64,
}

impl MobileCollector {
    /// Runs that updated the previous state instead of recomputing it.
    pub fn incremental_runs(&self) -> u64 {
        self.incremental_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct State {
    /// (started_at, id) → device class, for sessions after the longest
    /// window's start (future-dated ones included).
    sessions: BTreeMap<(DateTime<Utc>, i64), u8>,
    marks: Watermarks,
    last_now: Option<DateTime<Utc>>,
}

fn device_class(device: &str) -> u8 {
    match device {
        "mobile" => 0,
        "tablet" => 1,
        "desktop" => 2,
        _ => 3,
    }
}

impl OkrCollector for MobileCollector {
    fn name(&self) -> &'static str {
        "mobile"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let mark = current_mark(&mut *conn).await?;
            let now = ctx.now;
            let lo = ctx.start_of(ctx.windows.longest());
            let incremental = match (state.last_now, state.marks.bound()) {
                (Some(prev), Some(bound)) if prev <= now => Some(bound),
                _ => None,
            };
            let rows: Vec<(i64, DateTime<Utc>, String)> = match incremental {
                Some(bound) => {
                    sqlx::query_as(NEW_SQL)
                        .bind(bound)
                        .bind(lo)
                        .fetch_all(&mut *conn)
                        .await?
                }
                None => {
                    sqlx::query_as(WINDOW_SQL)
                        .bind(lo)
                        .fetch_all(&mut *conn)
                        .await?
                }
            };
            tracing::debug!(
                incremental = incremental.is_some(),
                rows = rows.len(),
                ?mark,
                "mobile run"
            );
            // Every query succeeded: update the state.
            if incremental.is_none() {
                state.sessions.clear();
            }
            for (id, started_at, device) in rows {
                state
                    .sessions
                    .insert((started_at, id), device_class(&device));
            }
            state.sessions = state.sessions.split_off(&(lo, i64::MAX));
            state.marks.record(mark);
            if incremental.is_some() {
                self.incremental_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            state.last_now = Some(now);

            let mut share = Family::new(
                "okr_mobile_views_ratio",
                "Share of follow-up page sessions started in the window on a mobile device \
                 (analytics_sessions: count(device_type = 'mobile') / count(*)).",
            );
            let mut views = Family::new(
                "okr_views",
                "Follow-up page sessions started in the window by device type \
                 (analytics_sessions; unknown device types count as other).",
            );
            for (w, from) in ctx.windows.0.iter().zip(ctx.window_starts()) {
                let mut counts = [0_i64; 4];
                for (_, device) in state.sessions.range((from, i64::MAX)..=(now, i64::MAX)) {
                    counts[usize::from(*device)] += 1;
                }
                let total: i64 = counts.iter().sum();
                if let Some(r) = ratio(counts[0], total) {
                    share.push_window(&w.label, r);
                }
                for (device, n) in DEVICES.iter().zip(counts) {
                    views.push(
                        vec![
                            ("window", w.label.clone()),
                            ("device_type", (*device).to_owned()),
                        ],
                        n as f64,
                    );
                }
            }
            Ok(vec![share, views])
        })
    }
}
