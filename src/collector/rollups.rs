//! Daily rollups (`okr_draft_completions`, `okr_engagement`,
//! `okr_mobile_usage`), so OKR history outlives Prometheus retention and
//! feeds the report.
//!
//! Every run recomputes the UTC days covered by the longest window (late
//! rows and deletions are picked up) and upserts them, so a rerun changes
//! nothing. With several exporter replicas on one database, a transaction
//! advisory lock lets one replica write at a time; the others skip the run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector};

/// Key of the advisory lock taken by the replica that writes rollups.
pub const ROLLUP_LOCK_KEY: i64 = 0x6f6b_725f_726f_6c6c; // "okr_roll"

const DRAFTS_SQL: &str = "
INSERT INTO okr_draft_completions AS r (day, created, published, deleted, open, updated_at)
SELECT (f.created_at AT TIME ZONE 'UTC')::date,
       count(*),
       count(*) FILTER (WHERE f.published_at IS NOT NULL),
       count(*) FILTER (WHERE f.published_at IS NULL AND f.deleted_at IS NOT NULL),
       count(*) FILTER (WHERE f.published_at IS NULL AND f.deleted_at IS NULL),
       now()
FROM followups f
WHERE f.created_at >= $1 AND f.created_at <= $2
GROUP BY 1
ON CONFLICT (day) DO UPDATE SET
    created = EXCLUDED.created, published = EXCLUDED.published,
    deleted = EXCLUDED.deleted, open = EXCLUDED.open, updated_at = EXCLUDED.updated_at
WHERE (r.created, r.published, r.deleted, r.open)
   IS DISTINCT FROM (EXCLUDED.created, EXCLUDED.published, EXCLUDED.deleted, EXCLUDED.open)";

const ENGAGEMENT_SQL: &str = "
WITH f AS MATERIALIZED (
    SELECT id, published_at FROM followups
    WHERE published_at >= $1 AND published_at <= $2
), v AS (
    SELECT s.followup_id, count(DISTINCT s.visitor_id) AS visitors
    FROM analytics_sessions s
    WHERE s.followup_id IN (SELECT id FROM f) AND s.started_at <= $2
    GROUP BY s.followup_id
)
INSERT INTO okr_engagement AS r (day, followups, unique_visitors, engaged_followups, updated_at)
SELECT (f.published_at AT TIME ZONE 'UTC')::date,
       count(*),
       coalesce(sum(v.visitors), 0)::int8,
       count(*) FILTER (WHERE v.visitors > 0),
       now()
FROM f LEFT JOIN v ON v.followup_id = f.id
GROUP BY 1
ON CONFLICT (day) DO UPDATE SET
    followups = EXCLUDED.followups, unique_visitors = EXCLUDED.unique_visitors,
    engaged_followups = EXCLUDED.engaged_followups, updated_at = EXCLUDED.updated_at
WHERE (r.followups, r.unique_visitors, r.engaged_followups)
   IS DISTINCT FROM (EXCLUDED.followups, EXCLUDED.unique_visitors, EXCLUDED.engaged_followups)";

const MOBILE_SQL: &str = "
INSERT INTO okr_mobile_usage AS r (day, sessions, mobile, tablet, desktop, other, updated_at)
SELECT (s.started_at AT TIME ZONE 'UTC')::date,
       count(*),
       count(*) FILTER (WHERE s.device_type = 'mobile'),
       count(*) FILTER (WHERE s.device_type = 'tablet'),
       count(*) FILTER (WHERE s.device_type = 'desktop'),
       count(*) FILTER (WHERE s.device_type NOT IN ('mobile', 'tablet', 'desktop')),
       now()
FROM analytics_sessions s
WHERE s.started_at >= $1 AND s.started_at <= $2
GROUP BY 1
ON CONFLICT (day) DO UPDATE SET
    sessions = EXCLUDED.sessions, mobile = EXCLUDED.mobile, tablet = EXCLUDED.tablet,
    desktop = EXCLUDED.desktop, other = EXCLUDED.other, updated_at = EXCLUDED.updated_at
WHERE (r.sessions, r.mobile, r.tablet, r.desktop, r.other)
   IS DISTINCT FROM (EXCLUDED.sessions, EXCLUDED.mobile, EXCLUDED.tablet, EXCLUDED.desktop, EXCLUDED.other)";

/// Deletes recomputed days whose source rows are all gone, so a rollup
/// never keeps a stale day.
fn prune_sql(table: &str, source: &str, column: &str) -> String {
    format!(
        "DELETE FROM {table} r WHERE r.day >= ($1 AT TIME ZONE 'UTC')::date \
         AND NOT EXISTS (SELECT 1 FROM {source} s \
             WHERE s.{column} >= r.day::timestamp AT TIME ZONE 'UTC' \
               AND s.{column} < (r.day + 1)::timestamp AT TIME ZONE 'UTC' \
               AND s.{column} <= $2)"
    )
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
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
                .bind(ROLLUP_LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                tracing::debug!("another replica is writing rollups; skipping this run");
                return Ok(Vec::new());
            }
            let start = rollup_start(ctx.now, ctx.windows.longest());
            for (upsert, prune) in [
                (
                    DRAFTS_SQL,
                    prune_sql("okr_draft_completions", "followups", "created_at"),
                ),
                (
                    ENGAGEMENT_SQL,
                    prune_sql("okr_engagement", "followups", "published_at"),
                ),
                (
                    MOBILE_SQL,
                    prune_sql("okr_mobile_usage", "analytics_sessions", "started_at"),
                ),
            ] {
                sqlx::query(upsert)
                    .bind(start)
                    .bind(ctx.now)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(prune))
                    .bind(start)
                    .bind(ctx.now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(Vec::new())
        })
    }
}
