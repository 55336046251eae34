//! OKR 5, mobile usage: share of analytics sessions started in each window on
//! a mobile device.
//!
//! Keeps the sessions of the longest window in memory (start time, id and
//! device class, 17 bytes each, sorted by time) and adds only the rows new
//! since the last run (see [`watermark`](super::watermark)); a run without a
//! usable watermark reloads the window. Either way the counts are exact.

use std::collections::VecDeque;

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

// Rows above the watermark: primary-key range scan (no ORDER BY: it could
// tempt the planner into the started_at index over the whole window).
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
    sessions: Sessions,
    marks: Watermarks,
    last_now: Option<DateTime<Utc>>,
}

/// The sessions after the longest window's start (future-dated ones
/// included), sorted by (started_at in microseconds, id), with the device
/// classes in a parallel array.
///
/// A window's counts are two binary searches and one pass over a byte
/// array; at 1M follow-ups / 10M sessions (≈ 410k sessions in 30 days) this
/// took the collector from 25 ms to a few ms per run against an ordered
/// tree map, whose range walks and `split_off` dominated (see BENCHMARKS.md).
#[derive(Debug, Default)]
struct Sessions {
    keys: VecDeque<(i64, i64)>,
    classes: VecDeque<u8>,
}

impl Sessions {
    /// Replaces the content with `rows` (any order, duplicates allowed).
    fn reload(&mut self, mut rows: Vec<((i64, i64), u8)>) {
        rows.sort_unstable_by_key(|r| r.0);
        rows.dedup_by_key(|r| r.0);
        self.keys = rows.iter().map(|r| r.0).collect();
        self.classes = rows.iter().map(|r| r.1).collect();
    }

    /// Adds one session; a session already present (re-read below a
    /// watermark) is not added twice.
    fn insert(&mut self, key: (i64, i64), class: u8) {
        if self.keys.back().is_none_or(|last| *last < key) {
            self.keys.push_back(key);
            self.classes.push_back(class);
            return;
        }
        if let Err(at) = self.keys.binary_search(&key) {
            self.keys.insert(at, key);
            self.classes.insert(at, class);
        }
    }

    /// Adds rows sorted by key. Rows after the last key append; when more
    /// than a few land inside (back-dated sessions), the two sorted lists are
    /// merged in one pass instead of shifting the array once per row.
    fn add_sorted(&mut self, rows: Vec<((i64, i64), u8)>) {
        const MERGE_AFTER: usize = 64;
        let last = self.keys.back().copied();
        let inside = rows.partition_point(|r| last.is_some_and(|l| r.0 <= l));
        if inside <= MERGE_AFTER {
            for (key, class) in rows {
                self.insert(key, class);
            }
            return;
        }
        let mut all: Vec<((i64, i64), u8)> = self
            .keys
            .iter()
            .copied()
            .zip(self.classes.iter().copied())
            .collect();
        all.extend(rows);
        // Two sorted runs: the stable sort merges them in linear time and
        // keeps the stored entry first among equal keys.
        all.sort_by_key(|r| r.0);
        all.dedup_by_key(|r| r.0);
        self.keys = all.iter().map(|r| r.0).collect();
        self.classes = all.iter().map(|r| r.1).collect();
    }

    /// Drops the sessions started at or before `start` (microseconds).
    fn evict_through(&mut self, start: i64) {
        let n = self.keys.partition_point(|k| k.0 <= start);
        self.keys.drain(..n);
        self.classes.drain(..n);
    }

    /// Sessions per device class with `from < started_at <= to`.
    fn counts(&self, from: i64, to: i64) -> [i64; 4] {
        let lo = self.keys.partition_point(|k| k.0 <= from);
        let hi = self.keys.partition_point(|k| k.0 <= to);
        let mut counts = [0_i64; 4];
        if lo < hi {
            for class in self.classes.range(lo..hi) {
                counts[usize::from(*class & 3)] += 1;
            }
        }
        counts
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
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
            let mut rows: Vec<_> = rows
                .into_iter()
                .map(|(id, started_at, device)| {
                    ((started_at.timestamp_micros(), id), device_class(&device))
                })
                .collect();
            if incremental.is_none() {
                state.sessions.reload(rows);
            } else {
                // Sorted, new rows mostly append at the end.
                rows.sort_unstable_by_key(|r| r.0);
                state.sessions.add_sorted(rows);
            }
            state.sessions.evict_through(lo.timestamp_micros());
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
                let counts = state
                    .sessions
                    .counts(from.timestamp_micros(), now.timestamp_micros());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_stay_sorted_unique_and_count_by_half_open_range() {
        let mut s = Sessions::default();
        s.reload(vec![((10, 2), 0), ((5, 1), 2), ((10, 2), 0), ((20, 3), 1)]);
        assert_eq!(s.len(), 3);
        // Late row in the middle, re-read rows, a row at the end.
        s.insert((7, 9), 3);
        s.insert((10, 2), 0);
        s.insert((20, 3), 1);
        s.insert((30, 4), 0);
        assert_eq!(s.len(), 5);
        assert!(s.keys.iter().zip(s.keys.iter().skip(1)).all(|(a, b)| a < b));
        // (5, 30]: 7 other, 10 mobile, 20 tablet, 30 mobile.
        assert_eq!(s.counts(5, 30), [2, 1, 0, 1]);
        // (4, 10]: 5 desktop, 7 other, 10 mobile.
        assert_eq!(s.counts(4, 10), [1, 0, 1, 1]);
        assert_eq!(s.counts(30, 40), [0; 4]);
        s.evict_through(10);
        assert_eq!(s.len(), 2);
        assert_eq!(s.counts(0, 100), [1, 1, 0, 0]);
    }

    #[test]
    fn merging_many_back_dated_rows_equals_inserting_them_one_by_one() {
        let base: Vec<((i64, i64), u8)> =
            (0..1_000).map(|i| ((i * 10, i), (i % 4) as u8)).collect();
        // 300 rows inside (some already stored), 20 after the end.
        let mut new: Vec<((i64, i64), u8)> = (0..300)
            .map(|i| ((i * 33 + 5, 5_000 + i), ((i + 1) % 4) as u8))
            .chain((0..50).map(|i| ((i * 10, i), 3)))
            .chain((0..20).map(|i| ((20_000 + i, 9_000 + i), 0)))
            .collect();
        new.sort_unstable_by_key(|r| r.0);
        let mut merged = Sessions::default();
        merged.reload(base.clone());
        merged.add_sorted(new.clone());
        let mut one_by_one = Sessions::default();
        one_by_one.reload(base);
        for (key, class) in new {
            one_by_one.insert(key, class);
        }
        assert_eq!(merged.keys, one_by_one.keys);
        assert_eq!(merged.classes, one_by_one.classes);
        assert_eq!(merged.len(), 1_000 + 300 + 20);
    }
}
