//! OKR 4, time to next action: mean (action time − publish time) over the
//! next actions recorded in each window.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, Slide};
use super::pg_time::PgMicros;
use super::{CollectContext, Collected, Family, OkrCollector};

// Index-only range scan of okr_next_actions_action_at_idx per window. The
// mean is taken over float8 seconds (date_part): extract() yields numeric,
// whose per-row arithmetic doubled the query's time (8 vs 18 ms at 26k rows);
// a float8 sum of even a million such terms stays within a microsecond.
const SQL: &str = "
SELECT w.label, x.n, x.avg_seconds
FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           avg(date_part('epoch', a.action_at - a.published_at)) AS avg_seconds
    FROM okr_next_actions a
    WHERE a.action_at > $3 - make_interval(secs => w.secs)
      AND a.action_at <= $3
) x";

const AVG: (&str, &str) = (
    "okr_time_to_next_action_avg_seconds",
    "Mean time from publishing a follow-up to its next action, seconds, over next \
     actions recorded in the window (okr_next_actions, by action_at).",
);
const COUNT: (&str, &str) = (
    "okr_next_actions",
    "Next actions recorded in the window (okr_next_actions, by action_at).",
);

// The actions of an interval, for the as-of sweep (index-only on
// okr_next_actions_action_at_idx).
const HISTORY_SQL: &str = "
SELECT a.action_at, a.published_at FROM okr_next_actions a
WHERE a.action_at > $1 AND a.action_at <= $2
ORDER BY a.action_at";

/// The next-action gauges at every step of `h`, as of each step: one sweep
/// over the actions of the backfill's span; each window's sum is kept in
/// integer microseconds, so adding and removing rows never drifts.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let rows: Vec<(PgMicros, PgMicros)> = h.read_span(conn, HISTORY_SQL).await?;
    let times: Vec<PgMicros> = rows.iter().map(|r| r.0).collect();
    let delay: Vec<i128> = rows
        .iter()
        .map(|(action, published)| i128::from(action.micros()) - i128::from(published.micros()))
        .collect();
    let mut avg = HistoryFamily::new(AVG.0, AVG.1);
    let mut count = HistoryFamily::new(COUNT.0, COUNT.1);
    let avg_ids = avg.window_series(h);
    let count_ids = count.window_series(h);
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    let mut sums = vec![(0_i64, 0_i128); h.windows.len()];
    for (step, t) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            let (n, sum) = &mut sums[w];
            let (added, removed) = slide.advance(&times, *t);
            for i in added {
                *n += 1;
                *sum += delay[i];
            }
            for i in removed {
                *n -= 1;
                *sum -= delay[i];
            }
            count.push(count_ids[w], step, *n as f64);
            if *n > 0 {
                avg.push(avg_ids[w], step, *sum as f64 / *n as f64 / 1e6);
            }
        }
    }
    Ok(vec![avg.boxed(), count.boxed()])
}

/// Collects `okr_time_to_next_action_avg_seconds` and `okr_next_actions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NextActionCollector;

impl OkrCollector for NextActionCollector {
    fn name(&self) -> &'static str {
        "next_action"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .fetch_all(&mut *conn)
                .await?;
            let mut avg = Family::new(AVG.0, AVG.1);
            let mut count = Family::new(COUNT.0, COUNT.1);
            for (window, n, mean) in rows {
                count.push_window(&window, n as f64);
                if let Some(m) = mean.filter(|_| n > 0) {
                    avg.push_window(&window, m);
                }
            }
            Ok(vec![avg.boxed(), count.boxed()].into())
        })
    }
}
