//! OKR 3, prospect engagement: unique visitors per follow-up published in
//! each window, overall and by meeting type, creator region and company.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{CollectContext, Family, OkrCollector, ratio};

/// Label value of the companies outside the top N.
pub const OTHER_COMPANY: &str = "__other__";

// F = follow-ups published in the longest window (partial index
// okr_followups_published_at_idx). Their distinct visitors come from one
// grouped pass over their sessions: a nested loop on
// okr_analytics_sessions_followup_visitor_idx when it exists, a hash join
// otherwise (a per-row subquery would scan the whole table per follow-up
// without the index). The grouping sets give every breakdown of every
// window in one pass. GROUPING(meeting_type, creator_region, company):
// 7 = window total, 3 = by meeting type, 5 = by region, 6 = by company.
const SQL: &str = "
WITH w AS (
    SELECT label, secs FROM unnest($1::text[], $2::float8[]) AS w(label, secs)
), f AS MATERIALIZED (
    SELECT f.id,
           f.published_at,
           coalesce(nullif(f.meeting_type, ''), 'unknown') AS meeting_type,
           coalesce(nullif(f.creator_region, ''), 'unknown') AS creator_region,
           coalesce(nullif(f.company, ''), 'unknown') AS company
    FROM followups f
    WHERE f.published_at > $3 - make_interval(secs => $4)
      AND f.published_at <= $3
), v AS (
    SELECT s.followup_id, count(DISTINCT s.visitor_id) AS visitors
    FROM analytics_sessions s
    WHERE s.followup_id IN (SELECT id FROM f) AND s.started_at <= $3
    GROUP BY s.followup_id
), fv AS (
    SELECT f.*, coalesce(v.visitors, 0) AS visitors
    FROM f LEFT JOIN v ON v.followup_id = f.id
)
SELECT w.label,
       GROUPING(fv.meeting_type, fv.creator_region, fv.company)::int4 AS g,
       coalesce(CASE GROUPING(fv.meeting_type, fv.creator_region, fv.company)
                    WHEN 3 THEN fv.meeting_type
                    WHEN 5 THEN fv.creator_region
                    WHEN 6 THEN fv.company END, '') AS dim,
       count(*) AS followups,
       sum(fv.visitors)::int8 AS visitors,
       count(*) FILTER (WHERE fv.visitors > 0) AS engaged
FROM w
JOIN fv ON fv.published_at > $3 - make_interval(secs => w.secs)
GROUP BY GROUPING SETS ((w.label),
                        (w.label, fv.meeting_type),
                        (w.label, fv.creator_region),
                        (w.label, fv.company))";

/// Collects `okr_engagement_ratio`, `okr_engaged_followups_ratio` and the
/// breakdowns by meeting type, creator region and (top-N) company.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngagementCollector;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    followups: i64,
    visitors: i64,
}

impl OkrCollector for EngagementCollector {
    fn name(&self) -> &'static str {
        "engagement"
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Vec<Family>, sqlx::Error>> {
        Box::pin(async move {
            let (labels, secs) = ctx.window_params();
            let longest = ctx.windows.longest().as_secs_f64();
            let rows: Vec<(String, i32, String, i64, i64, i64)> = sqlx::query_as(SQL)
                .bind(&labels)
                .bind(&secs)
                .bind(ctx.now)
                .bind(longest)
                .fetch_all(&mut *conn)
                .await?;
            let mut overall = Family::new(
                "okr_engagement_ratio",
                "Unique prospect visitors per follow-up published in the window: sum over those \
                 follow-ups of count(distinct analytics_sessions.visitor_id) / their number.",
            );
            let mut engaged = Family::new(
                "okr_engaged_followups_ratio",
                "Share of follow-ups published in the window with at least one visitor.",
            );
            let mut by_meeting = Family::new(
                "okr_engagement_by_meeting_type_ratio",
                "okr_engagement_ratio within each meeting type (followups.meeting_type; empty = unknown).",
            );
            let mut by_region = Family::new(
                "okr_engagement_by_creator_region_ratio",
                "okr_engagement_ratio within each creator region (followups.creator_region; empty = unknown).",
            );
            let mut by_company = Family::new(
                "okr_engagement_by_company_ratio",
                "okr_engagement_ratio for the top companies by follow-ups published in the window; \
                 the rest together as company=\"__other__\".",
            );
            let mut companies: BTreeMap<String, Vec<(String, Tally)>> = BTreeMap::new();
            for (window, g, dim, n, visitors, eng) in rows {
                let tally = Tally {
                    followups: n,
                    visitors,
                };
                let r = ratio(visitors, n);
                match g {
                    7 => {
                        if let Some(r) = r {
                            overall.push_window(&window, r);
                        }
                        if let Some(e) = ratio(eng, n) {
                            engaged.push_window(&window, e);
                        }
                    }
                    3 => push_dim(&mut by_meeting, &window, "meeting_type", dim, r),
                    5 => push_dim(&mut by_region, &window, "creator_region", dim, r),
                    6 => companies.entry(window).or_default().push((dim, tally)),
                    _ => {}
                }
            }
            for (window, list) in companies {
                for (company, t) in top_companies(list, ctx.company_top_n) {
                    push_dim(
                        &mut by_company,
                        &window,
                        "company",
                        company,
                        ratio(t.visitors, t.followups),
                    );
                }
            }
            Ok(vec![overall, engaged, by_meeting, by_region, by_company])
        })
    }
}

fn push_dim(fam: &mut Family, window: &str, key: &'static str, value: String, r: Option<f64>) {
    if let Some(r) = r {
        fam.push(vec![("window", window.to_owned()), (key, value)], r);
    }
}

/// The `n` companies with most follow-ups (ties by name), the rest merged
/// into [`OTHER_COMPANY`]. Merging sums visitors and follow-ups, so the
/// "other" ratio is exact.
fn top_companies(mut list: Vec<(String, Tally)>, n: usize) -> Vec<(String, Tally)> {
    list.sort_by(|a, b| {
        b.1.followups
            .cmp(&a.1.followups)
            .then_with(|| a.0.cmp(&b.0))
    });
    let rest = if list.len() > n {
        list.split_off(n)
    } else {
        Vec::new()
    };
    if !rest.is_empty() {
        let other = rest.iter().fold(Tally::default(), |acc, (_, t)| Tally {
            followups: acc.followups + t.followups,
            visitors: acc.visitors + t.visitors,
        });
        list.push((OTHER_COMPANY.to_owned(), other));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_companies_breaks_ties_by_name_and_merges_the_rest() {
        let t = |f, v| Tally {
            followups: f,
            visitors: v,
        };
        let list = vec![
            ("b".to_owned(), t(2, 1)),
            ("a".to_owned(), t(2, 3)),
            ("c".to_owned(), t(5, 0)),
            ("d".to_owned(), t(1, 4)),
        ];
        let top = top_companies(list, 2);
        let names: Vec<_> = top.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "a", OTHER_COMPANY]);
        assert_eq!(top[2].1.followups, 3);
        assert_eq!(top[2].1.visitors, 5);
    }
}
