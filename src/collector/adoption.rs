//! Adoption: follow-ups created per window, active and repeat creators.
//! (Follow-ups published per window is the engagement denominator and comes
//! from [`engagement`](super::engagement)'s tally, so it has one definition.)

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::intern::Interner;
use super::pg_time::PgMicros;
use super::{CollectContext, Collected, Family, OkrCollector, RowDecoder, ratio};

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

/// Collects `okr_followups_created`, `okr_active_creators` and `okr_repeat_creators_ratio`.
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
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            // Creator ids are borrowed from each row into a dictionary:
            // one allocation per creator, not per row.
            let mut creator_ids = Interner::default();
            let mut rows: Vec<(usize, PgMicros, Option<PgMicros>)> = Vec::new();
            {
                let mut stream = sqlx::query(SQL)
                    .bind(ctx.now)
                    .bind(ctx.windows.longest().as_secs_f64())
                    .fetch(&mut *conn);
                let mut decoder = RowDecoder::default();
                while let Some(row) = stream.try_next().await? {
                    rows.push((
                        creator_ids.id(decoder.get(&row, 0)?),
                        decoder.get(&row, 1)?,
                        decoder.get(&row, 2)?,
                    ));
                    decoder.row_done();
                }
            }
            let mut created = Family::new(
                "okr_followups_created",
                "Follow-ups created in the window (followups.created_at).",
            );
            let mut active = Family::new(
                "okr_active_creators",
                "Distinct creators who created or published a follow-up in the window (1d = DAU, 7d = WAU).",
            );
            let mut repeat = Family::new(
                "okr_repeat_creators_ratio",
                "Creators with two or more follow-ups created in the window / creators with at least one.",
            );
            // One pass: per creator and window, follow-ups created there
            // (-1: none created, none published; 0: only published there).
            let now = PgMicros::from_datetime(ctx.now);
            let starts: Vec<PgMicros> = PgMicros::window_starts(ctx);
            let n = starts.len();
            let mut n_created = vec![0_i64; n];
            let mut per_creator = vec![-1_i64; n * creator_ids.len()];
            for (creator, created_at, published_at) in &rows {
                for (i, start) in starts.iter().enumerate() {
                    let inside = |t: PgMicros| t > *start && t <= now;
                    let c = inside(*created_at);
                    let p = published_at.is_some_and(inside);
                    n_created[i] += i64::from(c);
                    let entry = &mut per_creator[creator * n + i];
                    if c {
                        *entry = (*entry).max(0) + 1;
                    } else if p {
                        *entry = (*entry).max(0);
                    }
                }
            }
            for (i, w) in ctx.windows.0.iter().enumerate() {
                let column = || per_creator.iter().skip(i).step_by(n.max(1));
                let active_n = column().filter(|c| **c >= 0).count() as i64;
                let with_one = column().filter(|c| **c >= 1).count() as i64;
                let with_two = column().filter(|c| **c >= 2).count() as i64;
                created.push_window(&w.label, n_created[i] as f64);
                active.push_window(&w.label, active_n as f64);
                if let Some(r) = ratio(with_two, with_one) {
                    repeat.push_window(&w.label, r);
                }
            }
            Ok(vec![created, active, repeat].into())
        })
    }
}
