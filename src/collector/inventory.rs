//! All-time follow-up counts by current status. A whole-table count, so it
//! runs less often than the windowed collectors by default.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Collected, Family, OkrCollector};

/// Status label values always exported (0 when none).
const STATUSES: [&str; 3] = ["draft", "published", "deleted"];

const SQL: &str = "
SELECT status, count(*) FROM followups
WHERE status IN ('draft', 'published', 'deleted')
GROUP BY status";

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
            let mut fam = Family::new(
                "okr_followups",
                "All follow-ups by current status (followups.status), all time.",
            );
            for status in STATUSES {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                fam.push(vec![("status", status.to_owned())], n as f64);
            }
            Ok(vec![fam].into())
        })
    }
}
