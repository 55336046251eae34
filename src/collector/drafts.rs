//! OKR 2, draft completion: of the follow-ups created in each window, how
//! many got published, deleted, or are still open. The daily rollup counts
//! its days with the same [`counts`].

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::pg_time::Span;
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
            let mut completion = Family::new(
                "okr_draft_completion_ratio",
                "Share of follow-ups created in the window that got published \
                 (followups: count(published_at set) / count(*), by created_at).",
            );
            let mut drafts = Family::new(
                "okr_drafts",
                "Follow-ups created in the window by outcome: published (published_at set), \
                 deleted (else deleted_at set), open (neither).",
            );
            for (w, c) in ctx.windows.0.iter().zip(counts) {
                if let Some(r) = c.completion() {
                    completion.push_window(&w.label, r);
                }
                for (outcome, n) in [
                    ("published", c.published),
                    ("deleted", c.deleted),
                    ("open", c.open()),
                ] {
                    drafts.push(
                        vec![("window", w.label.clone()), ("outcome", outcome.to_owned())],
                        n as f64,
                    );
                }
            }
            Ok(vec![completion, drafts].into())
        })
    }
}
