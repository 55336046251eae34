//! All-time follow-up counts by current status. A whole-table count, so it
//! runs less often than the windowed collectors by default.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily};
use super::labels::StatusLabels;
use super::pg_time::PgMicros;
use super::{CollectContext, Collected, Family, OkrCollector};

/// Status label values always exported (0 when none).
const STATUSES: [&str; 3] = ["draft", "published", "deleted"];

const SQL: &str = "
SELECT status, count(*) FROM followups
WHERE status IN ('draft', 'published', 'deleted')
GROUP BY status";

const FOLLOWUPS: (&str, &str) = (
    "okr_followups",
    "All follow-ups by current status (followups.status), all time.",
);

// As of an instant t, a follow-up created by t is deleted once deleted_at
// ≤ t, else published once published_at ≤ t, else a draft. Each count is
// a number of keys ≤ t: C = created_at, D = greatest(created_at,
// deleted_at), P = greatest(created_at, published_at), PD = greatest of all
// three; deleted = #D, published = #P − #PD, draft = #C − deleted −
// published. (`greatest` skips NULLs, hence the CASEs.)
const KEYS: &str = "
CROSS JOIN LATERAL (VALUES
    (0, f.created_at),
    (1, CASE WHEN f.deleted_at IS NOT NULL THEN greatest(f.created_at, f.deleted_at) END),
    (2, CASE WHEN f.published_at IS NOT NULL THEN greatest(f.created_at, f.published_at) END),
    (3, CASE WHEN f.published_at IS NOT NULL AND f.deleted_at IS NOT NULL
             THEN greatest(f.created_at, f.published_at, f.deleted_at) END)
) AS k(kind, at)";

/// The all-time counts by status at every step of `h`, as of each step (see
/// [`KEYS`]): the keys up to the first step counted in SQL, the later ones
/// read in time order and swept.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let (Some(first), Some(last)) = (h.steps.first(), h.steps.last()) else {
        return Ok(Vec::new());
    };
    let base: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT k.kind, count(*) FROM followups f {KEYS} WHERE k.at <= $1 GROUP BY k.kind"
    )))
    .bind(first.to_datetime())
    .fetch_all(&mut *conn)
    .await?;
    let keys: Vec<(i32, PgMicros)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT k.kind, k.at FROM followups f {KEYS} WHERE k.at > $1 AND k.at <= $2 ORDER BY k.at"
    )))
    .bind(first.to_datetime())
    .bind(last.to_datetime())
    .fetch_all(&mut *conn)
    .await?;
    h.count_rows(keys.len());
    let mut counts = [0_i64; 4];
    for (kind, n) in base {
        if let Some(c) = usize::try_from(kind).ok().and_then(|k| counts.get_mut(k)) {
            *c = n;
        }
    }
    let mut fam = HistoryFamily::new(FOLLOWUPS.0, FOLLOWUPS.1);
    let ids = STATUSES.map(|s| fam.series(StatusLabels::new(s)));
    let mut next = 0;
    for (step, t) in h.steps.iter().enumerate() {
        while let Some((kind, _)) = keys.get(next).filter(|k| k.1 <= *t) {
            if let Some(c) = usize::try_from(*kind).ok().and_then(|k| counts.get_mut(k)) {
                *c += 1;
            }
            next += 1;
        }
        let [created, deleted, published, published_deleted] = counts;
        let published = published - published_deleted;
        let draft = created - deleted - published;
        for (id, n) in ids.iter().zip([draft, published, deleted]) {
            fam.push(*id, step, n as f64);
        }
    }
    Ok(vec![fam.boxed()])
}

/// Collects `okr_followups{status}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryCollector;

impl OkrCollector for InventoryCollector {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn default_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(300))
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        _ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(SQL).fetch_all(&mut *conn).await?;
            let mut fam = Family::new(FOLLOWUPS.0, FOLLOWUPS.1);
            for status in STATUSES {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                fam.push(StatusLabels::new(status), n as f64);
            }
            Ok(vec![fam.boxed()].into())
        })
    }
}
