//! Adoption: follow-ups created per window, active and repeat creators.
//! (Follow-ups published per window is the engagement denominator and comes
//! from [`engagement`](super::engagement)'s tally, so it has one definition.)

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, Slide};
use super::intern::Interner;
use super::pg_time::{PgMicros, Span};
use super::{CollectContext, Collected, Family, OkrCollector, RowDecoder, ratio};

// The follow-ups created or published in the longest window, read once
// (range scans of okr_followups_created_at_idx and the partial
// okr_followups_published_at_idx, both including creator_id); every window
// is counted from these rows in one pass, which is cheaper than distinct
// counts per window in SQL.
const SQL: &str = "
SELECT f.creator_id, f.created_at, f.published_at FROM followups f
WHERE f.created_at > $1 AND f.created_at <= $2
UNION ALL
SELECT f.creator_id, f.created_at, f.published_at FROM followups f
WHERE f.published_at > $1 AND f.published_at <= $2
  AND NOT (f.created_at > $1 AND f.created_at <= $2)";

const CREATED: (&str, &str) = (
    "okr_followups_created",
    "Follow-ups created in the window (followups.created_at).",
);
const ACTIVE: (&str, &str) = (
    "okr_active_creators",
    "Distinct creators who created or published a follow-up in the window (1d = DAU, 7d = WAU).",
);
const REPEAT: (&str, &str) = (
    "okr_repeat_creators_ratio",
    "Creators with two or more follow-ups created in the window / creators with at least one.",
);

/// The follow-ups created or published in `span`: (creator, created_at,
/// published_at), creator ids borrowed from each row into a dictionary
/// (one allocation per creator, not per row).
type Rows = Vec<(usize, PgMicros, Option<PgMicros>)>;

async fn read_rows(conn: &mut PgConnection, span: Span) -> Result<(Interner, Rows), sqlx::Error> {
    let mut creator_ids = Interner::default();
    let mut rows = Vec::new();
    let mut stream = sqlx::query(SQL)
        .bind(span.lo.to_datetime())
        .bind(span.hi.to_datetime())
        .fetch(conn);
    let mut decoder = RowDecoder::default();
    while let Some(row) = stream.try_next().await? {
        rows.push((
            creator_ids.id(decoder.get(&row, 0)?),
            decoder.get(&row, 1)?,
            decoder.get(&row, 2)?,
        ));
        decoder.row_done();
    }
    Ok((creator_ids, rows))
}

/// Per window, the creators' counts that the adoption gauges are made of.
#[derive(Debug, Default, Clone, Copy)]
struct CreatorCounts {
    /// Follow-ups created in the window.
    created: i64,
    /// Creators who created or published there.
    active: i64,
    /// Creators with at least one, and at least two, follow-ups created there.
    with_one: i64,
    with_two: i64,
}

impl CreatorCounts {
    fn repeat_ratio(&self) -> Option<f64> {
        ratio(self.with_two, self.with_one)
    }
}

/// The adoption gauges at every step of `h`, as of each step: one sweep over
/// the creation and publish events of the backfill's span, keeping per
/// window and creator the events inside the window.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let span = h.span();
    let (creators, rows) = read_rows(conn, span).await?;
    h.count_rows(rows.len());
    // (time, creator, is a creation), in time order.
    let mut events: Vec<(PgMicros, usize, bool)> = Vec::with_capacity(rows.len() * 2);
    for (creator, created_at, published_at) in &rows {
        if span.contains(*created_at) {
            events.push((*created_at, *creator, true));
        }
        if let Some(p) = published_at.filter(|p| span.contains(*p)) {
            events.push((p, *creator, false));
        }
    }
    events.sort_unstable_by_key(|e| e.0);
    let times: Vec<PgMicros> = events.iter().map(|e| e.0).collect();

    let mut created = HistoryFamily::new(CREATED.0, CREATED.1);
    let mut active = HistoryFamily::new(ACTIVE.0, ACTIVE.1);
    let mut repeat = HistoryFamily::new(REPEAT.0, REPEAT.1);
    let created_ids = created.window_series(h);
    let active_ids = active.window_series(h);
    let repeat_ids = repeat.window_series(h);
    let nc = creators.len();
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    // Per window and creator: events inside, creations inside.
    let mut per_creator = vec![(0_i64, 0_i64); nc * h.windows.len()];
    let mut totals = vec![CreatorCounts::default(); h.windows.len()];
    for (step, t) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            let tot = &mut totals[w];
            let (added, removed) = slide.advance(&times, *t);
            let mut change = |i: usize, d: i64| {
                let (_, creator, is_creation) = events[i];
                let (n, c) = &mut per_creator[w * nc + creator];
                let (was_active, was_c) = (*n > 0, *c);
                *n += d;
                tot.active += i64::from(*n > 0) - i64::from(was_active);
                if is_creation {
                    *c += d;
                    tot.created += d;
                    tot.with_one += i64::from(*c >= 1) - i64::from(was_c >= 1);
                    tot.with_two += i64::from(*c >= 2) - i64::from(was_c >= 2);
                }
            };
            for i in added {
                change(i, 1);
            }
            for i in removed {
                change(i, -1);
            }
            created.push(created_ids[w], step, tot.created as f64);
            active.push(active_ids[w], step, tot.active as f64);
            repeat.push_some(repeat_ids[w], step, tot.repeat_ratio());
        }
    }
    Ok(vec![created.boxed(), active.boxed(), repeat.boxed()])
}

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
            let (creator_ids, rows) = read_rows(&mut *conn, Span::longest_window(ctx)).await?;
            let mut created = Family::new(CREATED.0, CREATED.1);
            let mut active = Family::new(ACTIVE.0, ACTIVE.1);
            let mut repeat = Family::new(REPEAT.0, REPEAT.1);
            // One pass: per creator and window, follow-ups created there
            // (-1: none created, none published; 0: only published there).
            let spans = Span::windows(ctx);
            let n = spans.len();
            let mut n_created = vec![0_i64; n];
            let mut per_creator = vec![-1_i64; n * creator_ids.len()];
            for (creator, created_at, published_at) in &rows {
                for (i, span) in spans.iter().enumerate() {
                    let c = span.contains(*created_at);
                    let p = published_at.is_some_and(|t| span.contains(t));
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
                let counts = CreatorCounts {
                    created: n_created[i],
                    active: column().filter(|c| **c >= 0).count() as i64,
                    with_one: column().filter(|c| **c >= 1).count() as i64,
                    with_two: column().filter(|c| **c >= 2).count() as i64,
                };
                created.push_window(&w.label, counts.created as f64);
                active.push_window(&w.label, counts.active as f64);
                if let Some(r) = counts.repeat_ratio() {
                    repeat.push_window(&w.label, r);
                }
            }
            Ok(vec![created.boxed(), active.boxed(), repeat.boxed()].into())
        })
    }
}
