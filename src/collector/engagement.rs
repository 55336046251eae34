//! OKR 3, prospect engagement: unique visitors per follow-up published in
//! each window, overall and by meeting type, creator region and company.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use super::watermark::{Watermarks, current_mark};
use super::{CollectContext, Family, OkrCollector, ratio};

/// Label value of the companies outside the top N.
pub const OTHER_COMPANY: &str = "__other__";

// F = follow-ups published in the longest window, read whole every run
// (partial index okr_followups_published_at_idx), so membership and
// dimensions are always current.
const F_SQL: &str = "
SELECT f.id,
       f.published_at,
       coalesce(nullif(f.meeting_type, ''), 'unknown'),
       coalesce(nullif(f.creator_region, ''), 'unknown'),
       coalesce(nullif(f.company, ''), 'unknown')
FROM followups f
WHERE f.published_at > $1 - make_interval(secs => $2)
  AND f.published_at <= $1";

// Distinct visitors (sessions up to now) of the given follow-ups: index-only
// lookups on okr_analytics_sessions_followup_visitor_idx, a hash join
// without it.
const VISITORS_SQL: &str = "
SELECT d.followup_id, count(*)
FROM (SELECT DISTINCT s.followup_id, s.visitor_id
      FROM analytics_sessions s
      WHERE s.followup_id = ANY($1) AND s.started_at <= $2) d
GROUP BY d.followup_id";

// Follow-ups whose visitor counts may have changed since the last run:
// rows with an id above the watermark (primary key range), and sessions
// whose start time has come due since then (okr_analytics_sessions_started_at_idx).
const CHANGED_SQL: &str = "
SELECT DISTINCT followup_id FROM analytics_sessions WHERE id > $1
UNION
SELECT DISTINCT followup_id FROM analytics_sessions WHERE started_at > $2 AND started_at <= $3";

/// Ids per `= ANY($1)` query.
const CHUNK: usize = 5_000;

/// Collects `okr_engagement_ratio`, `okr_engaged_followups_ratio` and the
/// breakdowns by meeting type, creator region and (top-N) company.
///
/// Keeps each recent follow-up's distinct-visitor count between runs and
/// re-reads only the follow-ups with new sessions (see
/// [`watermark`](super::watermark)); a run without a usable watermark
/// recomputes every count. Either way the result is exact.
#[derive(Debug, Default)]
pub struct EngagementCollector {
    state: tokio::sync::Mutex<State>,
    incremental_runs: std::sync::atomic::AtomicU64,
}

impl EngagementCollector {
    /// Runs that updated the previous state instead of recomputing it.
    pub fn incremental_runs(&self) -> u64 {
        self.incremental_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct State {
    visitors: HashMap<Uuid, i64>,
    marks: Watermarks,
    last_now: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    followups: i64,
    visitors: i64,
    engaged: i64,
}

impl Tally {
    fn add(&mut self, visitors: i64) {
        self.followups += 1;
        self.visitors += visitors;
        self.engaged += i64::from(visitors > 0);
    }
}

type Followup = (Uuid, DateTime<Utc>, String, String, String);

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
            let mut state = self.state.lock().await;
            // First statement: fixes the transaction's snapshot.
            let mark = current_mark(&mut *conn).await?;
            let now = ctx.now;
            let longest = ctx.windows.longest().as_secs_f64();
            let followups: Vec<Followup> = sqlx::query_as(F_SQL)
                .bind(now)
                .bind(longest)
                .fetch_all(&mut *conn)
                .await?;

            let incremental = match (state.last_now, state.marks.bound()) {
                (Some(prev), Some(bound)) if prev <= now => Some((prev, bound)),
                _ => None,
            };
            let changed: HashSet<Uuid> = match incremental {
                Some((prev, bound)) => sqlx::query_as::<_, (Uuid,)>(CHANGED_SQL)
                    .bind(bound)
                    .bind(prev)
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|(id,)| id)
                    .collect(),
                None => HashSet::new(),
            };
            let stale = |id: &Uuid| {
                incremental.is_none() || changed.contains(id) || !state.visitors.contains_key(id)
            };
            let need: Vec<Uuid> = followups
                .iter()
                .map(|f| f.0)
                .filter(|id| stale(id))
                .collect();
            let mut fresh: HashMap<Uuid, i64> = HashMap::with_capacity(need.len());
            for chunk in need.chunks(CHUNK) {
                let rows: Vec<(Uuid, i64)> = sqlx::query_as(VISITORS_SQL)
                    .bind(chunk)
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?;
                fresh.extend(rows);
            }
            let visitors: HashMap<Uuid, i64> = followups
                .iter()
                .map(|f| {
                    let v = if stale(&f.0) {
                        fresh.get(&f.0).copied().unwrap_or(0)
                    } else {
                        state.visitors.get(&f.0).copied().unwrap_or(0)
                    };
                    (f.0, v)
                })
                .collect();

            tracing::debug!(
                incremental = incremental.is_some(),
                followups = followups.len(),
                changed = changed.len(),
                recomputed = need.len(),
                ?mark,
                "engagement run"
            );
            let families = aggregate(ctx, &followups, &visitors);
            // Earlier marks stay valid after a full recomputation: they are
            // facts about earlier snapshots, and the next bound needs them.
            state.marks.record(mark);
            if incremental.is_some() {
                self.incremental_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            state.visitors = visitors;
            state.last_now = Some(now);
            Ok(families)
        })
    }
}

/// The gauge families from F and each follow-up's distinct visitors.
fn aggregate(
    ctx: &CollectContext,
    followups: &[Followup],
    visitors: &HashMap<Uuid, i64>,
) -> Vec<Family> {
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
    // One pass over F: each follow-up adds to every window it falls in, with
    // one hash lookup per dimension (a lookup per window and dimension cost
    // three times as much at 1M follow-ups).
    let starts = ctx.window_starts();
    let n = starts.len();
    let mut totals = vec![Tally::default(); n];
    let mut meetings: HashMap<&str, Vec<Tally>> = HashMap::new();
    let mut regions: HashMap<&str, Vec<Tally>> = HashMap::new();
    let mut companies: HashMap<&str, Vec<Tally>> = HashMap::new();
    for (id, published_at, meeting, region, company) in followups {
        let v = visitors.get(id).copied().unwrap_or(0);
        let inside: Vec<usize> = (0..n).filter(|&i| *published_at > starts[i]).collect();
        if inside.is_empty() {
            continue;
        }
        let m = meetings
            .entry(meeting)
            .or_insert_with(|| vec![Tally::default(); n]);
        for &i in &inside {
            m[i].add(v);
        }
        let r = regions
            .entry(region)
            .or_insert_with(|| vec![Tally::default(); n]);
        for &i in &inside {
            r[i].add(v);
        }
        let c = companies
            .entry(company)
            .or_insert_with(|| vec![Tally::default(); n]);
        for &i in &inside {
            c[i].add(v);
            totals[i].add(v);
        }
    }
    for (i, w) in ctx.windows.0.iter().enumerate() {
        let window = w.label.as_str();
        let total = totals[i];
        if let Some(r) = ratio(total.visitors, total.followups) {
            overall.push_window(window, r);
        }
        if let Some(r) = ratio(total.engaged, total.followups) {
            engaged.push_window(window, r);
        }
        for (m, t) in meetings.iter().filter(|(_, t)| t[i].followups > 0) {
            push_dim(
                &mut by_meeting,
                window,
                "meeting_type",
                (*m).to_owned(),
                ratio(t[i].visitors, t[i].followups),
            );
        }
        for (r, t) in regions.iter().filter(|(_, t)| t[i].followups > 0) {
            push_dim(
                &mut by_region,
                window,
                "creator_region",
                (*r).to_owned(),
                ratio(t[i].visitors, t[i].followups),
            );
        }
        let list = companies
            .iter()
            .filter(|(_, t)| t[i].followups > 0)
            .map(|(c, t)| ((*c).to_owned(), t[i]))
            .collect();
        for (company, t) in top_companies(list, ctx.company_top_n) {
            push_dim(
                &mut by_company,
                window,
                "company",
                company,
                ratio(t.visitors, t.followups),
            );
        }
    }
    vec![overall, engaged, by_meeting, by_region, by_company]
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
            engaged: acc.engaged + t.engaged,
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
            engaged: 0,
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
