//! OKR 1, creation time: quantiles of (publish − "Create Follow-Up" click)
//! over `okr_creation_time` rows published in each window.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, RankCounts, Slide};
use super::labels::WindowQuantile;
use super::pg_time::PgMicros;
use super::{CollectContext, Collected, Family, OkrCollector, ratio};

/// Quantiles exported as the `quantile` label.
const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.8, "0.8"), (0.95, "0.95")];

// One range scan of okr_creation_time_published_at_idx per window.
const SQL: &str = "
SELECT w.label,
       x.samples,
       x.within_target,
       x.quantiles
FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
CROSS JOIN LATERAL (
    SELECT count(*) AS samples,
           count(*) FILTER (WHERE c.duration_seconds <= $4) AS within_target,
           percentile_cont(ARRAY[0.5, 0.8, 0.95]::float8[])
               WITHIN GROUP (ORDER BY c.duration_seconds) AS quantiles
    FROM okr_creation_time c
    WHERE c.published_at > $3 - make_interval(secs => w.secs)
      AND c.published_at <= $3
) x";

const QUANTILE: (&str, &str) = (
    "okr_creation_time_seconds",
    "Follow-up creation time (publish minus the Create Follow-Up click), seconds: \
     percentile_cont of okr_creation_time.duration_seconds over rows published in the window.",
);
const WITHIN: (&str, &str) = (
    "okr_creation_time_within_target_ratio",
    "Share of follow-ups published in the window whose creation time is at most the \
     target (okr_creation_time; ratio >= 0.8 is equivalent to P80 <= target).",
);
const SAMPLES: (&str, &str) = (
    "okr_creation_time_samples",
    "Number of okr_creation_time rows published in the window.",
);

// The rows published in an interval, for the as-of sweep (index-only on
// okr_creation_time_published_at_idx).
const HISTORY_SQL: &str = "
SELECT c.published_at, c.duration_seconds FROM okr_creation_time c
WHERE c.published_at > $1 AND c.published_at <= $2
ORDER BY c.published_at";

/// PostgreSQL's `percentile_cont(q)` over `n` sorted values, the k-th (0-based)
/// given by `kth`: linear interpolation between the values at positions
/// floor and ceil of q·(n − 1), computed as PostgreSQL does.
fn percentile_cont(q: f64, n: i64, kth: impl Fn(i64) -> f64) -> f64 {
    let pos = q * (n - 1) as f64;
    let first = pos.floor();
    let second = pos.ceil();
    let lo = kth(first as i64);
    if second > first {
        let hi = kth(second as i64);
        lo + (pos - first) * (hi - lo)
    } else {
        lo
    }
}

/// The creation-time gauges at every step of `h`, as of each step: one
/// sweep over the rows of the backfill's span ordered by publish time, each
/// window's durations kept as counts per rank for exact quantiles.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let rows: Vec<(PgMicros, f64)> = h.read_span(conn, HISTORY_SQL).await?;
    let times: Vec<PgMicros> = rows.iter().map(|r| r.0).collect();
    // Rank of each row's duration among all of them (ties in any order).
    let mut by_value: Vec<usize> = (0..rows.len()).collect();
    by_value.sort_unstable_by(|a, b| rows[*a].1.total_cmp(&rows[*b].1));
    let mut rank = vec![0; rows.len()];
    for (r, i) in by_value.iter().enumerate() {
        rank[*i] = r;
    }
    let sorted: Vec<f64> = by_value.iter().map(|i| rows[*i].1).collect();
    // Ranks below this one hold durations within the target.
    let target = h.targets.creation_time_p80_seconds;
    let within_ranks = sorted.partition_point(|d| *d <= target);

    let mut quantiles = HistoryFamily::new(QUANTILE.0, QUANTILE.1);
    let mut within = HistoryFamily::new(WITHIN.0, WITHIN.1);
    let mut samples = HistoryFamily::new(SAMPLES.0, SAMPLES.1);
    let within_ids = within.window_series(h);
    let sample_ids = samples.window_series(h);
    let quantile_ids: Vec<[usize; 3]> = h
        .windows
        .iter()
        .map(|(w, _)| QUANTILES.map(|(_, q)| quantiles.series(WindowQuantile::new(w.as_str(), q))))
        .collect();
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    let mut counts: Vec<RankCounts> = h
        .windows
        .iter()
        .map(|_| RankCounts::new(rows.len()))
        .collect();
    for (step, t) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            let c = &mut counts[w];
            let (added, removed) = slide.advance(&times, *t);
            for i in added {
                c.add(rank[i], 1);
            }
            for i in removed {
                c.add(rank[i], -1);
            }
            let n = c.total();
            samples.push(sample_ids[w], step, n as f64);
            within.push_some(within_ids[w], step, ratio(c.below(within_ranks), n));
            if n > 0 {
                for ((q, _), id) in QUANTILES.iter().zip(quantile_ids[w]) {
                    let v = percentile_cont(*q, n, |k| sorted[c.kth(k)]);
                    quantiles.push(id, step, v);
                }
            }
        }
    }
    Ok(vec![quantiles.boxed(), within.boxed(), samples.boxed()])
}

/// Collects `okr_creation_time_seconds`, `…_within_target_ratio`, `…_samples`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreationTimeCollector;

impl OkrCollector for CreationTimeCollector {
    fn name(&self) -> &'static str {
        "creation_time"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let rows: Vec<(String, i64, i64, Option<Vec<f64>>)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .bind(ctx.targets.creation_time_p80_seconds)
                .fetch_all(&mut *conn)
                .await?;
            let mut quantiles = Family::new(QUANTILE.0, QUANTILE.1);
            let mut within = Family::new(WITHIN.0, WITHIN.1);
            let mut samples = Family::new(SAMPLES.0, SAMPLES.1);
            for (window, n, ok, qs) in rows {
                samples.push_window(&window, n as f64);
                if let Some(r) = ratio(ok, n) {
                    within.push_window(&window, r);
                }
                if let Some(qs) = qs.filter(|_| n > 0) {
                    for ((_, q), v) in QUANTILES.iter().zip(qs) {
                        quantiles.push(WindowQuantile::new(window.as_str(), *q), v);
                    }
                }
            }
            Ok(vec![quantiles.boxed(), within.boxed(), samples.boxed()].into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_cont_interpolates_as_postgresql() {
        let v = [1.0, 2.0, 4.0, 8.0];
        let at = |k: i64| v[k as usize];
        assert_eq!(percentile_cont(0.5, 4, at), 3.0);
        assert_eq!(percentile_cont(0.0, 4, at), 1.0);
        assert_eq!(percentile_cont(1.0, 4, at), 8.0);
        // 0.8 · 3 = 2.4: 4 + 0.4 · 4.
        assert!((percentile_cont(0.8, 4, at) - 5.6).abs() < 1e-12);
        assert_eq!(percentile_cont(0.95, 1, |_| 7.0), 7.0);
    }
}
