//! OKR 1, creation time: quantiles of (publish − "Create Follow-Up" click)
//! over `okr_creation_time` rows published in each window.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

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
            let mut quantiles = Family::new(
                "okr_creation_time_seconds",
                "Follow-up creation time (publish minus the Create Follow-Up click), seconds: \
                 percentile_cont of okr_creation_time.duration_seconds over rows published in the window.",
            );
            let mut within = Family::new(
                "okr_creation_time_within_target_ratio",
                "Share of follow-ups published in the window whose creation time is at most the \
                 target (okr_creation_time; ratio >= 0.8 is equivalent to P80 <= target).",
            );
            let mut samples = Family::new(
                "okr_creation_time_samples",
                "Number of okr_creation_time rows published in the window.",
            );
            for (window, n, ok, qs) in rows {
                samples.push_window(&window, n as f64);
                if let Some(r) = ratio(ok, n) {
                    within.push_window(&window, r);
                }
                if let Some(qs) = qs.filter(|_| n > 0) {
                    for ((_, q), v) in QUANTILES.iter().zip(qs) {
                        quantiles.push(
                            vec![("window", window.clone()), ("quantile", (*q).to_owned())],
                            v,
                        );
                    }
                }
            }
            Ok(vec![quantiles, within, samples].into())
        })
    }
}
