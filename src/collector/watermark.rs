//! Which `analytics_sessions` rows may be new since a collector's earlier
//! runs, so the expensive collectors update their state from a few rows
//! instead of rescanning the window.
//!
//! `analytics_sessions.id` comes from a sequence, but ids are not committed
//! in order: a transaction can take id 10, commit after another took and
//! committed id 11, and be invisible to a run that saw id 11. So the
//! lower bound of the rows to re-read is taken from transaction ids: every
//! row invisible to run k's snapshot was written by a transaction whose xid
//! is at least run k's snapshot `xmin`. A transaction that got its xid after
//! run j's snapshot (xid ≥ `xmax_j`) allocated its ids after that snapshot,
//! so they exceed run j's largest visible id `M_j`. For the latest run j
//! with `xmax_j ≤ xmin_k`, every row new since run k has `id > M_j`.
//!
//! Assumptions: sessions are append-only (never updated or deleted), and
//! their ids come from the table's sequence, one at a time, when the row is
//! inserted — and the transaction has its xid by then. PostgreSQL assigns
//! the xid lazily, at the first row written, so an `INSERT` evaluates
//! `nextval` a moment before: a snapshot taken in that gap misses the row
//! (a window of microseconds, not seen in tests, but possible). The data
//! contract promises none of this, so the callers never trust the result
//! for long: [`reconcile`](super::reconcile) recomputes fully
//! every `--reconcile-interval` and counts what the incremental state had
//! wrong. When no earlier run gives a bound (first run, a transaction open
//! across many runs) the caller recomputes everything.

use std::collections::VecDeque;

use sqlx::PgConnection;

/// How many earlier runs are remembered.
const HISTORY: usize = 64;

/// The snapshot facts of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMark {
    /// Oldest transaction still running at the snapshot.
    pub xmin: i64,
    /// First transaction id not yet assigned at the snapshot.
    pub xmax: i64,
    /// Largest session id visible in the snapshot.
    pub max_id: i64,
    /// Sessions updated or deleted since the statistics were reset, as the
    /// statistics views of this server count them (`None` when unreadable).
    /// Not transactional and flushed with a delay: a hint that triggers an
    /// early reconciliation, never a bound.
    pub modifications: Option<i64>,
}

/// Reads the current transaction's snapshot bounds and largest visible id.
/// Must run inside the collector's REPEATABLE READ transaction.
pub async fn current_mark(conn: &mut PgConnection) -> Result<RunMark, sqlx::Error> {
    let (xmin, xmax, max_id, modifications): (i64, i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8,
                pg_snapshot_xmax(pg_current_snapshot())::text::int8,
                (SELECT coalesce(max(id), 0) FROM analytics_sessions),
                (SELECT n_tup_upd + n_tup_del FROM pg_stat_user_tables
                 WHERE relid = 'analytics_sessions'::regclass)",
    )
    .fetch_one(conn)
    .await?;
    Ok(RunMark {
        xmin,
        xmax,
        max_id,
        modifications,
    })
}

/// The marks of a collector's earlier successful runs.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    runs: VecDeque<RunMark>,
}

impl Watermarks {
    /// The id above which rows may be new since the last recorded run, or
    /// `None` when no bound is known (recompute everything).
    pub fn bound(&self) -> Option<i64> {
        let last = self.runs.back()?;
        self.runs
            .iter()
            .rev()
            .find(|r| r.xmax <= last.xmin)
            .map(|r| r.max_id)
    }

    /// Records a successful run.
    pub fn record(&mut self, mark: RunMark) {
        if self.runs.len() == HISTORY {
            self.runs.pop_front();
        }
        self.runs.push_back(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(xmin: i64, xmax: i64, max_id: i64) -> RunMark {
        RunMark {
            xmin,
            xmax,
            max_id,
            modifications: None,
        }
    }

    #[test]
    fn bound_waits_for_transactions_open_at_the_last_run() {
        let mut w = Watermarks::default();
        assert_eq!(w.bound(), None);
        // Nothing in progress at run 1: its own max id bounds the next run.
        w.record(mark(100, 100, 50));
        assert_eq!(w.bound(), Some(50));
        // Run 2 saw transaction 105 in progress: rows it commits later may
        // have ids below 70, but not below run 1's 50.
        w.record(mark(105, 110, 70));
        assert_eq!(w.bound(), Some(50));
        // A transaction open since before run 1 (xid 90): no bound.
        w.record(mark(90, 120, 80));
        assert_eq!(w.bound(), None);
        w.record(mark(120, 120, 90));
        assert_eq!(w.bound(), Some(90));
    }
}
