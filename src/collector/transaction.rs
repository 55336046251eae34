//! The transaction every collector run happens in: its isolation, its
//! statement timeout and the planner settings the OKR queries rely on.

use std::time::Duration;

use sqlx::PgPool;

use super::{CollectContext, CollectError, Collected, OkrCollector};

/// Runs `c` once in a fresh transaction on a connection from `pool`.
pub(crate) async fn collect_in_tx(
    c: &dyn OkrCollector,
    pool: &PgPool,
    ctx: &CollectContext,
    timeout: Duration,
) -> Result<Collected, CollectError> {
    // A stopped server refuses connections at once, but the pool keeps
    // retrying until its own acquire timeout: bound the wait by the query
    // timeout so an outage shows within one interval.
    let mut conn = match tokio::time::timeout(timeout, pool.acquire()).await {
        Ok(conn) => conn.map_err(CollectError::from_sqlx)?,
        Err(_) => return Err(CollectError::Unreachable(sqlx::Error::PoolTimedOut)),
    };
    // Readers see one snapshot across their statements; the rollup writer
    // reads committed rows after taking its lock, so it never trips over a
    // row another replica wrote just before.
    let mode = if c.writes() {
        "READ COMMITTED, READ WRITE"
    } else {
        "REPEATABLE READ, READ ONLY"
    };
    // Only our own constants and an integer are formatted in. JIT is off:
    // compiling these short range queries costs more than running them
    // (measured: ~150 ms of a 365 ms engagement query at 100k follow-ups).
    // A larger work_mem keeps the distinct-visitor aggregation in memory
    // (4 MB spilled ~17 MB to disk at 1M follow-ups). Custom plans: a
    // generic plan cannot tell `id > $1` (a few new rows) from a scan of
    // the whole table, and chose the latter.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL {mode}; SET LOCAL statement_timeout = {}; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan",
        timeout.as_millis().max(1)
    )))
    .execute(&mut *conn)
    .await
    .map_err(CollectError::from_sqlx)?;
    match c.collect(&mut conn, ctx).await {
        Ok(families) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(CollectError::from_sqlx)?;
            Ok(families)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(CollectError::from_sqlx(e))
        }
    }
}
