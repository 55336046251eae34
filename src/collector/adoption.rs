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
            // One pass: per creator, follow-ups created in each window
            // (-1 marks "only published there").
            let now = ctx.now;
            let starts = ctx.window_starts();
            let n = starts.len();
            let mut n_created = vec![0_i64; n];
            let mut n_published = vec![0_i64; n];
            let mut creators: HashMap<&str, Vec<i64>> = HashMap::new();
            for (creator, created_at, published_at) in &rows {
                let entry = creators
                    .entry(creator.as_str())
                    .or_insert_with(|| vec![-1; n]);
                for i in 0..n {
                    let inside = |t: DateTime<Utc>| t > starts[i] && t <= now;
                    let c = inside(*created_at);
                    let p = published_at.is_some_and(inside);
                    n_created[i] += i64::from(c);
                    n_published[i] += i64::from(p);
                    if c {
                        entry[i] = entry[i].max(0) + 1;
                    } else if p {
                        entry[i] = entry[i].max(0);
                    }
                }
            }
            for (i, w) in ctx.windows.0.iter().enumerate() {
                let active_n = creators.values().filter(|c| c[i] >= 0).count() as i64;
                let with_one = creators.values().filter(|c| c[i] >= 1).count() as i64;
                let with_two = creators.values().filter(|c| c[i] >= 2).count() as i64;
                created.push_window(&w.label, n_created[i] as f64);
                published.push_window(&w.label, n_published[i] as f64);
                active.push_window(&w.label, active_n as f64);
                if let Some(r) = ratio(with_two, with_one) {
                    repeat.push_window(&w.label, r);
                }
            }
            Ok(vec![created, published, active, repeat])
        })
    }
}
