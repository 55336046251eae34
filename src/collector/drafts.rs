//! OKR 2, draft completion: of the follow-ups created in each window, how
//! many got published, deleted, or are still open. The daily rollup counts
//! its days with the same [`counts`].

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, Membership, Slide};
use super::labels::WindowOutcome;
use super::pg_time::{PgMicros, Span};
use super::{CollectContext, Collected, Family, OkrCollector, ratio};

// The definition, per interval (lo, hi]: one index-only range scan of
// okr_followups_created_at_idx each. Note `count(*) FILTER (WHERE
// published_at IS NOT NULL)`: the seed's `COUNT(published_at IS NOT NULL)`
// counted every row.
const SQL: &str = "
SELECT x.total, x.published, x.deleted
FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS i(lo, hi, n)
CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE f.published_at IS NOT NULL) AS published,
           count(*) FILTER (WHERE f.published_at IS NULL AND f.deleted_at IS NOT NULL) AS deleted
    FROM followups f
    WHERE f.created_at > i.lo
      AND f.created_at <= i.hi
) x
ORDER BY i.n";

// The follow-ups created in an interval with their publish and delete
// times, for the as-of sweep (index-only on okr_followups_created_at_idx).
const HISTORY_SQL: &str = "
SELECT f.created_at, f.published_at, f.deleted_at FROM followups f
WHERE f.created_at > $1 AND f.created_at <= $2
ORDER BY f.created_at";

const COMPLETION: (&str, &str) = (
    "okr_draft_completion_ratio",
    "Share of follow-ups created in the window that got published \
     (followups: count(published_at set) / count(*), by created_at).",
);
const DRAFTS: (&str, &str) = (
    "okr_drafts",
    "Follow-ups created in the window by outcome: published (published_at set), \
     deleted (else deleted_at set), open (neither).",
);

/// A follow-up's outcome: published (`published_at` set) wins over deleted
/// (else `deleted_at` set); open is neither. As of an instant t, "set"
/// means set to a time ≤ t.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Open = 0,
    Published = 1,
    Deleted = 2,
}

/// Follow-ups created in one interval, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DraftCounts {
    /// All follow-ups created in the interval.
    pub(crate) created: i64,
    /// Of those, published (`published_at` set).
    pub(crate) published: i64,
    /// Else deleted (`deleted_at` set).
    pub(crate) deleted: i64,
}

impl DraftCounts {
    /// Neither published nor deleted.
    pub(crate) fn open(&self) -> i64 {
        self.created - self.published - self.deleted
    }

    /// `okr_draft_completion_ratio` (absent without any follow-up).
    pub(crate) fn completion(&self) -> Option<f64> {
        ratio(self.published, self.created)
    }
}

/// The draft-completion definition: counts of each of `spans`, in order.
pub(crate) async fn counts(
    conn: &mut PgConnection,
    spans: &[Span],
) -> Result<Vec<DraftCounts>, sqlx::Error> {
    let (lo, hi): (Vec<_>, Vec<_>) = spans
        .iter()
        .map(|s| (s.lo.to_datetime(), s.hi.to_datetime()))
        .unzip();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(SQL)
        .bind(lo)
        .bind(hi)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(created, published, deleted)| DraftCounts {
            created,
            published,
            deleted,
        })
        .collect())
}

/// Collects `okr_draft_completion_ratio` and `okr_drafts{outcome}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DraftsCollector;

impl OkrCollector for DraftsCollector {
    fn name(&self) -> &'static str {
        "drafts"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let counts = counts(conn, &Span::windows(ctx)).await?;
            let mut completion = Family::new(COMPLETION.0, COMPLETION.1);
            let mut drafts = Family::new(DRAFTS.0, DRAFTS.1);
            for (w, c) in ctx.windows.0.iter().zip(counts) {
                if let Some(r) = c.completion() {
                    completion.push_window(&w.label, r);
                }
                for (outcome, n) in [
                    ("published", c.published),
                    ("deleted", c.deleted),
                    ("open", c.open()),
                ] {
                    drafts.push(WindowOutcome::new(w.label.as_str(), outcome), n as f64);
                }
            }
            Ok(vec![completion.boxed(), drafts.boxed()].into())
        })
    }
}

/// The draft-completion gauges at every step of `h`, as of each step: one
/// sweep over the follow-ups created in the backfill's span, whose outcome
/// changes when the sweep passes their publish or delete time.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let rows: Vec<(PgMicros, Option<PgMicros>, Option<PgMicros>)> =
        h.read_span(conn, HISTORY_SQL).await?;
    let created: Vec<PgMicros> = rows.iter().map(|r| r.0).collect();
    // Outcome changes in time order: publishing makes a follow-up
    // published; deleting it first makes it deleted until then.
    let mut changes: Vec<(PgMicros, usize, Outcome)> = Vec::new();
    for (i, (_, published, deleted)) in rows.iter().enumerate() {
        if let Some(p) = published {
            changes.push((*p, i, Outcome::Published));
        }
        if let Some(d) = deleted
            && published.is_none_or(|p| *d < p)
        {
            changes.push((*d, i, Outcome::Deleted));
        }
    }
    changes.sort_unstable_by_key(|c| (c.0, c.1));

    let mut completion = HistoryFamily::new(COMPLETION.0, COMPLETION.1);
    let mut drafts = HistoryFamily::new(DRAFTS.0, DRAFTS.1);
    let completion_ids = completion.window_series(h);
    let outcome_ids: Vec<[usize; 3]> = h
        .windows
        .iter()
        .map(|(w, _)| {
            ["open", "published", "deleted"]
                .map(|o| drafts.series(WindowOutcome::new(w.as_str(), o)))
        })
        .collect();
    let nw = h.windows.len();
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    let mut inside = Membership::new(rows.len(), nw);
    let mut outcome = vec![Outcome::Open; rows.len()];
    // Per window: follow-ups by outcome (open, published, deleted).
    let mut counts = vec![[0_i64; 3]; nw];
    let mut next_change = 0;
    for (step, t) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            for i in slide.enter(&created, *t) {
                inside.set(i, w, true);
                counts[w][outcome[i] as usize] += 1;
            }
        }
        while let Some((_, i, to)) = changes.get(next_change).copied().filter(|c| c.0 <= *t) {
            for (w, c) in counts.iter_mut().enumerate() {
                if inside.get(i, w) {
                    c[outcome[i] as usize] -= 1;
                    c[to as usize] += 1;
                }
            }
            outcome[i] = to;
            next_change += 1;
        }
        for (w, slide) in slides.iter_mut().enumerate() {
            for i in slide.leave(&created, *t) {
                inside.set(i, w, false);
                counts[w][outcome[i] as usize] -= 1;
            }
            let [open, published, deleted] = counts[w];
            let c = DraftCounts {
                created: open + published + deleted,
                published,
                deleted,
            };
            completion.push_some(completion_ids[w], step, c.completion());
            for (id, n) in outcome_ids[w]
                .iter()
                .zip([c.open(), c.published, c.deleted])
            {
                drafts.push(*id, step, n as f64);
            }
        }
    }
    Ok(vec![completion.boxed(), drafts.boxed()])
}
