//! OKR 5, mobile usage: share of analytics sessions started in each window on
//! a mobile device.
//!
//! Keeps the sessions of the longest window in memory (start time, id and
//! device class, 17 bytes each, sorted by time) and adds only the rows new
//! since the last run (see [`watermark`](super::watermark)); a run without a
//! usable watermark reloads the window. The state is verified, never
//! trusted: every `--reconcile-interval` a run reloads the window, serves
//! that, and reports the series the incremental state had wrong
//! ([`reconcile`](super::reconcile)). The daily rollup counts its days
//! with the same [`Sessions::counts`].

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, Slide};
use super::labels::WindowDevice;
use super::pg_time::{PgMicros, Span};
use super::reconcile::{self, ReconcileClock};
use super::watermark::{Watermarks, current_mark};
use super::{CollectContext, Collected, Families, Family, OkrCollector, RowDecoder, ratio};

/// Device classes, in label order; anything else counts as `other`.
pub(crate) const DEVICES: [&str; 4] = ["mobile", "tablet", "desktop", "other"];

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
    clock: ReconcileClock,
}

/// Sessions after some start (future-dated ones included), sorted by
/// (started_at as [`PgMicros`], id), with the device classes in a parallel
/// array: the mobile definition counts over it.
///
/// A window's counts are two binary searches and one pass over a byte
/// array; at 1M follow-ups / 10M sessions (≈ 410k sessions in 30 days) this
/// took the collector from 25 ms to a few ms per run against an ordered
/// tree map, whose range walks and `split_off` dominated (see BENCHMARKS.md).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    keys: VecDeque<(i64, i64)>,
    classes: VecDeque<u8>,
}

impl Sessions {
    /// Sessions from `rows` (any order, duplicates allowed).
    pub(crate) fn from_rows(rows: Vec<SessionRow>) -> Self {
        let mut s = Self::default();
        s.reload(rows);
        s
    }

    /// Replaces the content with `rows` (any order, duplicates allowed).
    fn reload(&mut self, mut rows: Vec<SessionRow>) {
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
    fn add_sorted(&mut self, rows: Vec<SessionRow>) {
        const MERGE_AFTER: usize = 64;
        let last = self.keys.back().copied();
        let inside = rows.partition_point(|r| last.is_some_and(|l| r.0 <= l));
        if inside <= MERGE_AFTER {
            for (key, class) in rows {
                self.insert(key, class);
            }
            return;
        }
        let mut all: Vec<SessionRow> = self
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

    /// The mobile definition: sessions per device class (in [`DEVICES`]
    /// order) with `started_at` in `span`.
    pub(crate) fn counts(&self, span: Span) -> [i64; 4] {
        let (from, to) = (span.lo.micros(), span.hi.micros());
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

    fn reconciles(&self) -> bool {
        true
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let mark = current_mark(&mut *conn).await?;
            let now = ctx.now;
            let lo = Span::longest_window(ctx).lo;
            let incremental = match (state.last_now, state.marks.bound()) {
                (Some(prev), Some(bound)) if prev <= now => Some(bound),
                _ => None,
            };
            let full = state.clock.full_reason(
                now,
                ctx.reconcile_interval,
                incremental.is_some(),
                mark.modifications,
            );
            // The incremental update, also made on a verifying run to be checked.
            let mut new_rows = 0;
            let mut served = None;
            if let Some(bound) = incremental.filter(|_| full.is_none_or(|r| r.verifies())) {
                let mut rows = read_rows(&mut *conn, NEW_SQL, Some(bound), lo).await?;
                new_rows = rows.len();
                // Sorted, new rows mostly append at the end.
                rows.sort_unstable_by_key(|r| r.0);
                state.sessions.add_sorted(rows);
                state.sessions.evict_through(lo.micros());
                served = Some(families(ctx, &state.sessions));
            }
            let mut corrections = 0;
            let families = match (full, served) {
                (None, Some(served)) => served,
                (_, served) => {
                    let rows = read_rows(&mut *conn, WINDOW_SQL, None, lo).await?;
                    new_rows = rows.len();
                    state.sessions.reload(rows);
                    let exact = families(ctx, &state.sessions);
                    if let Some(served) = served {
                        corrections = reconcile::corrections(&served, &exact);
                    }
                    exact
                }
            };
            tracing::debug!(full = ?full, rows = new_rows, corrections, ?mark, "mobile run");
            state.marks.record(mark);
            state.clock.record(now, full.is_some(), mark.modifications);
            if full.is_none() {
                self.incremental_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            state.last_now = Some(now);
            Ok(Collected {
                families,
                corrections,
            })
        })
    }
}

/// One session as the mobile definition keeps it: (started_at, id) and the
/// device class.
pub(crate) type SessionRow = ((i64, i64), u8);

/// Reads session rows with `SQL` (parameters: the id bound, when given, and
/// the exclusive start time).
async fn read_rows(
    conn: &mut PgConnection,
    sql: &'static str,
    above_id: Option<i64>,
    after: PgMicros,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    let mut query = sqlx::query(sql);
    if let Some(id) = above_id {
        query = query.bind(id);
    }
    let mut stream = query.bind(after.to_datetime()).fetch(conn);
    let mut decoder = RowDecoder::default();
    let mut out = Vec::new();
    while let Some(row) = stream.try_next().await? {
        let id: i64 = decoder.get(&row, 0)?;
        let started_at: PgMicros = decoder.get(&row, 1)?;
        let device: &str = decoder.get(&row, 2)?;
        out.push(((started_at.micros(), id), device_class(device)));
        decoder.row_done();
    }
    Ok(out)
}

/// The sessions started after `after` (the mobile rollup's read).
pub(crate) async fn read_sessions(
    conn: &mut PgConnection,
    after: PgMicros,
) -> Result<Sessions, sqlx::Error> {
    Ok(Sessions::from_rows(
        read_rows(conn, WINDOW_SQL, None, after).await?,
    ))
}

/// `okr_mobile_views_ratio` from counts per device class (absent without
/// any session).
pub(crate) fn mobile_share(counts: [i64; 4]) -> Option<f64> {
    ratio(counts[0], counts.iter().sum())
}

const SHARE: (&str, &str) = (
    "okr_mobile_views_ratio",
    "Share of follow-up page sessions started in the window on a mobile device \
     (analytics_sessions: count(device_type = 'mobile') / count(*)).",
);
const VIEWS: (&str, &str) = (
    "okr_views",
    "Follow-up page sessions started in the window by device type \
     (analytics_sessions; unknown device types count as other).",
);

/// The gauge families of the windows of `ctx`.
fn families(ctx: &CollectContext, sessions: &Sessions) -> Families {
    let mut share = Family::new(SHARE.0, SHARE.1);
    let mut views = Family::new(VIEWS.0, VIEWS.1);
    for (w, span) in ctx.windows.0.iter().zip(Span::windows(ctx)) {
        let counts = sessions.counts(span);
        if let Some(r) = mobile_share(counts) {
            share.push_window(&w.label, r);
        }
        for (device, n) in DEVICES.iter().zip(counts) {
            views.push(WindowDevice::new(w.label.as_str(), *device), n as f64);
        }
    }
    vec![share.boxed(), views.boxed()]
}

/// The mobile gauges at every step of `h`, as of each step: one sweep over
/// the sessions of the backfill's span ordered by start time.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let span = h.span();
    let mut rows = read_rows(conn, WINDOW_SQL, None, span.lo).await?;
    h.count_rows(rows.len());
    rows.retain(|r| r.0.0 <= span.hi.micros());
    rows.sort_unstable_by_key(|r| r.0);
    let times: Vec<PgMicros> = rows.iter().map(|r| PgMicros::from_micros(r.0.0)).collect();
    let mut share = HistoryFamily::new(SHARE.0, SHARE.1);
    let mut views = HistoryFamily::new(VIEWS.0, VIEWS.1);
    let share_ids = share.window_series(h);
    let view_ids: Vec<[usize; 4]> = h
        .windows
        .iter()
        .map(|(w, _)| DEVICES.map(|d| views.series(WindowDevice::new(w.as_str(), d))))
        .collect();
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    let mut counts = vec![[0_i64; 4]; h.windows.len()];
    for (step, t) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            let c = &mut counts[w];
            let (added, removed) = slide.advance(&times, *t);
            for i in added {
                c[usize::from(rows[i].1 & 3)] += 1;
            }
            for i in removed {
                c[usize::from(rows[i].1 & 3)] -= 1;
            }
            share.push_some(share_ids[w], step, mobile_share(*c));
            for (id, n) in view_ids[w].iter().zip(*c) {
                views.push(*id, step, n as f64);
            }
        }
    }
    Ok(vec![share.boxed(), views.boxed()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(lo: i64, hi: i64) -> Span {
        Span {
            lo: PgMicros::from_micros(lo),
            hi: PgMicros::from_micros(hi),
        }
    }

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
        assert_eq!(s.counts(span(5, 30)), [2, 1, 0, 1]);
        // (4, 10]: 5 desktop, 7 other, 10 mobile.
        assert_eq!(s.counts(span(4, 10)), [1, 0, 1, 1]);
        assert_eq!(s.counts(span(30, 40)), [0; 4]);
        s.evict_through(10);
        assert_eq!(s.len(), 2);
        assert_eq!(s.counts(span(0, 100)), [1, 1, 0, 0]);
    }

    #[test]
    fn merging_many_back_dated_rows_equals_inserting_them_one_by_one() {
        let base: Vec<SessionRow> = (0..1_000).map(|i| ((i * 10, i), (i % 4) as u8)).collect();
        // 300 rows inside (some already stored), 20 after the end.
        let mut new: Vec<SessionRow> = (0..300)
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
