//! Adoption: follow-ups created and published per window, active and repeat
//! creators.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector, ratio};

// Range scans of okr_followups_created_at_idx and the partial
// okr_followups_published_at_idx (both include creator_id) per window.
const SQL: &str = "
SELECT w.label,
       (SELECT count(*) FROM followups f
         WHERE f.created_at > b.lo AND f.created_at <= $3) AS created,
       (SELECT count(*) FROM followups f
         WHERE f.published_at > b.lo AND f.published_at <= $3) AS published,
       (SELECT count(DISTINCT u.creator_id) FROM (
            SELECT f.creator_id FROM followups f
             WHERE f.created_at > b.lo AND f.created_at <= $3
            UNION ALL
            SELECT f.creator_id FROM followups f
             WHERE f.published_at > b.lo AND f.published_at <= $3) u) AS active,
       r.creators,
       r.repeaters
FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
CROSS JOIN LATERAL (SELECT $3 - make_interval(secs => w.secs) AS lo) b
CROSS JOIN LATERAL (
    SELECT count(*) AS creators, count(*) FILTER (WHERE c.n >= 2) AS repeaters
    FROM (SELECT f.creator_id, count(*) AS n FROM followups f
           WHERE f.created_at > b.lo AND f.created_at <= $3
           GROUP BY f.creator_id) c
) r";

/// Collects `okr_followups_created`, `okr_followups_published`,
/// `okr_active_creators` and `okr_repeat_creators_ratio`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdoptionCollector;

impl OkrCollector for AdoptionCollector {
    fn name(&self) -> &'static str {
        "adoption"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .fetch_all(&mut *conn)
                .await?;
            let mut created = Family::new(
                "okr_followups_created",
                "Follow-ups created in the window (followups.created_at).",
            );
            let mut published = Family::new(
                "okr_followups_published",
                "Follow-ups published in the window (followups.published_at); the engagement denominator.",
            );
            let mut active = Family::new(
                "okr_active_creators",
                "Distinct creators who created or published a follow-up in the window (1d = DAU, 7d = WAU).",
            );
            let mut repeat = Family::new(
                "okr_repeat_creators_ratio",
                "Creators with two or more follow-ups created in the window / creators with at least one.",
            );
            for (window, c, p, a, creators, repeaters) in rows {
                created.push_window(&window, c as f64);
                published.push_window(&window, p as f64);
                active.push_window(&window, a as f64);
                if let Some(r) = ratio(repeaters, creators) {
                    repeat.push_window(&window, r);
                }
            }
            Ok(vec![created, published, active, repeat])
        })
    }
}
