//! Adoption: follow-ups created and published per window, active and repeat
//! creators.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector, ratio};

// The follow-ups created or published in the longest window, read once
// (range scans of okr_followups_created_at_idx and the partial
// okr_followups_published_at_idx, both including creator_id); every window
// is counted from these rows in one pass, which is cheaper than distinct
// counts per window in SQL.
const SQL: &str = "
SELECT f.creator_id, f.created_at, f.published_at FROM followups f
WHERE f.created_at > $1 - make_interval(secs => $2) AND f.created_at <= $1
UNION ALL
SELECT f.creator_id, f.created_at, f.published_at FROM followups f
WHERE f.published_at > $1 - make_interval(secs => $2) AND f.published_at <= $1
  AND NOT (f.created_at > $1 - make_interval(secs => $2) AND f.created_at <= $1)";

/// Collects `okr_followups_created`, `okr_followups_published`,
/// `okr_active_creators` and `okr_repeat_creators_ratio`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdoptionCollector;

type Row = (String, DateTime<Utc>, Option<DateTime<Utc>>);

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
            let rows: Vec<Row> = sqlx::query_as(SQL)
                .bind(ctx.now)
                .bind(ctx.windows.longest().as_secs_f64())
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
            let now = ctx.now;
            for w in &ctx.windows.0 {
                let lo = chrono::Duration::from_std(w.duration)
                    .map_or(DateTime::<Utc>::MIN_UTC, |d| now - d);
                let inside = |t: DateTime<Utc>| t > lo && t <= now;
                let (mut n_created, mut n_published) = (0_i64, 0_i64);
                // creator → follow-ups created in the window (0 = only published).
                let mut creators: HashMap<&str, i64> = HashMap::new();
                for (creator, created_at, published_at) in &rows {
                    let c = inside(*created_at);
                    let p = published_at.is_some_and(inside);
                    if c {
                        n_created += 1;
                    }
                    if p {
                        n_published += 1;
                    }
                    if c || p {
                        *creators.entry(creator.as_str()).or_default() += i64::from(c);
                    }
                }
                let with_one = creators.values().filter(|n| **n >= 1).count() as i64;
                let with_two = creators.values().filter(|n| **n >= 2).count() as i64;
                created.push_window(&w.label, n_created as f64);
                published.push_window(&w.label, n_published as f64);
                active.push_window(&w.label, creators.len() as f64);
                if let Some(r) = ratio(with_two, with_one) {
                    repeat.push_window(&w.label, r);
                }
            }
            Ok(vec![created, published, active, repeat])
        })
    }
}
