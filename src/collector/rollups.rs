//! Daily rollups (`okr_draft_completions`, `okr_engagement`,
//! `okr_mobile_usage`), so OKR history outlives Prometheus retention and
//! feeds the report.
//!
//! A day is counted by the same definition as the live gauges — drafts'
//! [`counts`](super::drafts::counts), engagement's
//! [`Tallies`](super::engagement::Tallies) and mobile's
//! [`Sessions::counts`](super::mobile::Sessions::counts) — over the UTC day
//! `[d, d + 1)` instead of a rolling window. Every run recomputes the days
//! covered by the longest window (late rows, updates and deletions are
//! picked up) and upserts them, so a rerun changes nothing; a day left
//! without rows is deleted. With several exporter replicas on one database,
//! a transaction advisory lock lets one replica write at a time; the others
//! skip the run.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::pg_time::Span;
use super::{CollectContext, Collected, OkrCollector, drafts, engagement, mobile};

/// Key of the advisory lock taken by the replica that writes rollups.
pub const ROLLUP_LOCK_KEY: i64 = 0x6f6b_725f_726f_6c6c; // "okr_roll"

const DRAFTS_SQL: &str = "
INSERT INTO okr_draft_completions AS r (day, created, published, deleted, open, updated_at)
SELECT d.*, now()
FROM unnest($1::date[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) AS d
ON CONFLICT (day) DO UPDATE SET
    created = EXCLUDED.created, published = EXCLUDED.published,
    deleted = EXCLUDED.deleted, open = EXCLUDED.open, updated_at = EXCLUDED.updated_at
WHERE (r.created, r.published, r.deleted, r.open)
   IS DISTINCT FROM (EXCLUDED.created, EXCLUDED.published, EXCLUDED.deleted, EXCLUDED.open)";

const ENGAGEMENT_SQL: &str = "
INSERT INTO okr_engagement AS r (day, followups, unique_visitors, engaged_followups, updated_at)
SELECT d.*, now()
FROM unnest($1::date[], $2::int8[], $3::int8[], $4::int8[]) AS d
ON CONFLICT (day) DO UPDATE SET
    followups = EXCLUDED.followups, unique_visitors = EXCLUDED.unique_visitors,
    engaged_followups = EXCLUDED.engaged_followups, updated_at = EXCLUDED.updated_at
WHERE (r.followups, r.unique_visitors, r.engaged_followups)
   IS DISTINCT FROM (EXCLUDED.followups, EXCLUDED.unique_visitors, EXCLUDED.engaged_followups)";

const MOBILE_SQL: &str = "
INSERT INTO okr_mobile_usage AS r (day, sessions, mobile, tablet, desktop, other, updated_at)
SELECT d.*, now()
FROM unnest($1::date[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) AS d
ON CONFLICT (day) DO UPDATE SET
    sessions = EXCLUDED.sessions, mobile = EXCLUDED.mobile, tablet = EXCLUDED.tablet,
    desktop = EXCLUDED.desktop, other = EXCLUDED.other, updated_at = EXCLUDED.updated_at
WHERE (r.sessions, r.mobile, r.tablet, r.desktop, r.other)
   IS DISTINCT FROM (EXCLUDED.sessions, EXCLUDED.mobile, EXCLUDED.tablet, EXCLUDED.desktop, EXCLUDED.other)";

/// Deletes the recomputed days of `table` that have no rows any more.
fn prune_sql(table: &str) -> String {
    format!("DELETE FROM {table} WHERE day >= $1 AND day <= $2 AND NOT (day = ANY($3::date[]))")
}

/// Maintains the daily rollup tables; exports no gauges of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollupCollector;

/// First instant of the oldest UTC day recomputed for `now` and `span`.
pub fn rollup_start(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    let span = chrono::Duration::from_std(span).unwrap_or(chrono::Duration::days(31));
    let start = now - span;
    start
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(start, |d| d.and_utc())
}

/// Days with at least one row, as one array per column.
#[derive(Debug)]
struct Columns<const N: usize> {
    days: Vec<NaiveDate>,
    values: [Vec<i64>; N],
}

impl<const N: usize> Default for Columns<N> {
    fn default() -> Self {
        Self {
            days: Vec::new(),
            values: std::array::from_fn(|_| Vec::new()),
        }
    }
}

impl<const N: usize> Columns<N> {
    fn push(&mut self, day: NaiveDate, row: [i64; N]) {
        self.days.push(day);
        for (column, v) in self.values.iter_mut().zip(row) {
            column.push(v);
        }
    }

    /// Upserts the days into `table` with `upsert` and deletes the other
    /// days of `first..=last`.
    async fn write(
        &self,
        conn: &mut PgConnection,
        upsert: &'static str,
        table: &str,
        (first, last): (NaiveDate, NaiveDate),
    ) -> Result<(), sqlx::Error> {
        let mut query = sqlx::query(upsert).bind(&self.days);
        for column in &self.values {
            query = query.bind(column);
        }
        query.execute(&mut *conn).await?;
        sqlx::query(sqlx::AssertSqlSafe(prune_sql(table)))
            .bind(first)
            .bind(last)
            .bind(&self.days)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl OkrCollector for RollupCollector {
    fn name(&self) -> &'static str {
        "rollups"
    }

    fn default_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(300))
    }

    fn writes(&self) -> bool {
        true
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
                .bind(ROLLUP_LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                tracing::debug!("another replica is writing rollups; skipping this run");
                return Ok(Collected::default());
            }
            let first = rollup_start(ctx.now, ctx.windows.longest()).date_naive();
            let days = Span::days(first, ctx.now);
            let spans: Vec<Span> = days.iter().map(|(_, s)| *s).collect();
            let Some(all) = Span::cover(&spans) else {
                return Ok(Collected::default());
            };
            let range = (first, ctx.now.date_naive());

            let mut rows = Columns::<4>::default();
            for ((day, _), c) in days.iter().zip(drafts::counts(&mut *conn, &spans).await?) {
                if c.created > 0 {
                    rows.push(*day, [c.created, c.published, c.deleted, c.open()]);
                }
            }
            rows.write(&mut *conn, DRAFTS_SQL, "okr_draft_completions", range)
                .await?;

            let f = engagement::read_published(&mut *conn, all).await?;
            let visitors = engagement::read_visitors(&mut *conn, &f.ids(), ctx.now).await?;
            let tallies = engagement::Tallies::count(&f, &visitors, &spans);
            let mut rows = Columns::<3>::default();
            for ((day, _), t) in days.iter().zip(&tallies.totals) {
                if t.followups > 0 {
                    rows.push(*day, [t.followups, t.visitors, t.engaged]);
                }
            }
            rows.write(&mut *conn, ENGAGEMENT_SQL, "okr_engagement", range)
                .await?;

            let sessions = mobile::read_sessions(&mut *conn, all.lo).await?;
            let mut rows = Columns::<5>::default();
            for (day, span) in &days {
                let c = sessions.counts(*span);
                let total: i64 = c.iter().sum();
                if total > 0 {
                    rows.push(*day, [total, c[0], c[1], c[2], c[3]]);
                }
            }
            rows.write(&mut *conn, MOBILE_SQL, "okr_mobile_usage", range)
                .await?;
            Ok(Collected::default())
        })
    }
}
