//! OKR 2, draft completion: of the follow-ups created in each window, how
//! many got published, deleted, or are still open.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector, ratio};

// Index-only range scan of okr_followups_created_at_idx per window. Note
// `count(*) FILTER (WHERE published_at IS NOT NULL)`: the seed's
// `COUNT(published_at IS NOT NULL)` counted every row.
const SQL: &str = "
SELECT w.label, x.total, x.published, x.deleted
FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE f.published_at IS NOT NULL) AS published,
           count(*) FILTER (WHERE f.published_at IS NULL AND f.deleted_at IS NOT NULL) AS deleted
    FROM followups f
    WHERE f.created_at > $3 - make_interval(secs => w.secs)
      AND f.created_at <= $3
) x";

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
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .fetch_all(&mut *conn)
                .await?;
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
            for (window, total, published, deleted) in rows {
                if let Some(r) = ratio(published, total) {
                    completion.push_window(&window, r);
                }
                let open = total - published - deleted;
                for (outcome, n) in [
                    ("published", published),
                    ("deleted", deleted),
                    ("open", open),
                ] {
                    drafts.push(
                        vec![("window", window.clone()), ("outcome", outcome.to_owned())],
                        n as f64,
                    );
                }
            }
            Ok(vec![completion, drafts])
        })
    }
}
