//! OKR 5, mobile usage: share of analytics sessions started in each window on
//! a mobile device.

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector, ratio};

// Index-only range scan of okr_analytics_sessions_started_at_idx per window.
const SQL: &str = "
SELECT w.label, x.total, x.mobile, x.tablet, x.desktop
FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE s.device_type = 'mobile') AS mobile,
           count(*) FILTER (WHERE s.device_type = 'tablet') AS tablet,
           count(*) FILTER (WHERE s.device_type = 'desktop') AS desktop
    FROM analytics_sessions s
    WHERE s.started_at > $3 - make_interval(secs => w.secs)
      AND s.started_at <= $3
) x";

/// Collects `okr_mobile_views_ratio` and `okr_views{device_type}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MobileCollector;

impl OkrCollector for MobileCollector {
    fn name(&self) -> &'static str {
        "mobile"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .fetch_all(&mut *conn)
                .await?;
            let mut share = Family::new(
                "okr_mobile_views_ratio",
                "Share of follow-up page sessions started in the window on a mobile device \
                 (analytics_sessions: count(device_type = 'mobile') / count(*)).",
            );
            let mut views = Family::new(
                "okr_views",
                "Follow-up page sessions started in the window by device type \
                 (analytics_sessions; unknown device types count as other).",
            );
            for (window, total, mobile, tablet, desktop) in rows {
                if let Some(r) = ratio(mobile, total) {
                    share.push_window(&window, r);
                }
                let other = total - mobile - tablet - desktop;
                for (device, n) in [
                    ("mobile", mobile),
                    ("tablet", tablet),
                    ("desktop", desktop),
                    ("other", other),
                ] {
                    views.push(
                        vec![
                            ("window", window.clone()),
                            ("device_type", device.to_owned()),
                        ],
                        n as f64,
                    );
                }
            }
            Ok(vec![share, views])
        })
    }
}
