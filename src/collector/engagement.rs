//! OKR 3, prospect engagement: unique visitors per follow-up published in
//! each window, overall and by meeting type, creator region and company.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use super::intern::Interner;
use super::pg_time::PgMicros;
use super::watermark::{Watermarks, current_mark};
use super::{CollectContext, Family, OkrCollector, RowDecoder, ratio};

/// Label value of the companies outside the top N.
pub const OTHER_COMPANY: &str = "__other__";

// F = follow-ups published in the longest window, read whole every run
// (partial index okr_followups_published_at_idx), so membership and
// dimensions are always current. NULL or empty dimensions become "unknown"
// in Rust (in SQL that cost ~3 of the query's ~10 ms at 1M follow-ups).
const F_SQL: &str = "
SELECT f.id, f.published_at, f.meeting_type, f.creator_region, f.company
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

type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct State {
    visitors: HashMap<Uuid, i64, Fast>,
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

/// One follow-up of F, its dimensions as ids of [`Dims`].
#[derive(Debug, Clone, Copy)]
struct Followup {
    id: Uuid,
    published_at: PgMicros,
    meeting: usize,
    region: usize,
    company: usize,
}

/// The distinct dimension values of one run.
#[derive(Debug, Default)]
struct Dims {
    meeting: Interner,
    region: Interner,
    company: Interner,
}

/// A dimension value as a label: NULL or empty is "unknown".
fn or_unknown(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("unknown")
}

/// Reads F, each string borrowed from its row into the run's dictionaries.
async fn read_followups(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    longest_secs: f64,
) -> Result<(Vec<Followup>, Dims), sqlx::Error> {
    let mut dims = Dims::default();
    let mut out = Vec::new();
    let mut rows = sqlx::query(F_SQL).bind(now).bind(longest_secs).fetch(conn);
    let mut decoder = RowDecoder::default();
    while let Some(row) = rows.try_next().await? {
        out.push(Followup {
            id: decoder.get(&row, 0)?,
            published_at: decoder.get(&row, 1)?,
            meeting: dims.meeting.id(or_unknown(decoder.get(&row, 2)?)),
            region: dims.region.id(or_unknown(decoder.get(&row, 3)?)),
            company: dims.company.id(or_unknown(decoder.get(&row, 4)?)),
        });
        decoder.row_done();
    }
    Ok((out, dims))
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
            let mut state = self.state.lock().await;
            // First statement: fixes the transaction's snapshot.
            let mark = current_mark(&mut *conn).await?;
            let now = ctx.now;
            let longest = ctx.windows.longest().as_secs_f64();
            let (followups, dims) = read_followups(&mut *conn, now, longest).await?;

            let incremental = match (state.last_now, state.marks.bound()) {
                (Some(prev), Some(bound)) if prev <= now => Some((prev, bound)),
                _ => None,
            };
            let changed: HashSet<Uuid, Fast> = match incremental {
                Some((prev, bound)) => sqlx::query_as::<_, (Uuid,)>(CHANGED_SQL)
                    .bind(bound)
                    .bind(prev)
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|(id,)| id)
                    .collect(),
                None => HashSet::default(),
            };
            let stale = |id: &Uuid| {
                incremental.is_none() || changed.contains(id) || !state.visitors.contains_key(id)
            };
            let need: Vec<Uuid> = followups
                .iter()
                .map(|f| f.id)
                .filter(|id| stale(id))
                .collect();
            let mut fresh: HashMap<Uuid, i64, Fast> =
                HashMap::with_capacity_and_hasher(need.len(), Fast::default());
            for chunk in need.chunks(CHUNK) {
                let rows: Vec<(Uuid, i64)> = sqlx::query_as(VISITORS_SQL)
                    .bind(chunk)
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?;
                fresh.extend(rows);
            }
            let visitors: HashMap<Uuid, i64, Fast> = followups
                .iter()
                .map(|f| {
                    let v = if stale(&f.id) {
                        fresh.get(&f.id).copied().unwrap_or(0)
                    } else {
                        state.visitors.get(&f.id).copied().unwrap_or(0)
                    };
                    (f.id, v)
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
            let families = aggregate(ctx, &followups, &dims, &visitors);
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
    dims: &Dims,
    visitors: &HashMap<Uuid, i64, Fast>,
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
    // One pass over F: each follow-up adds to every window it falls in;
    // tallies are flat arrays indexed by (dimension value, window).
    let starts: Vec<PgMicros> = PgMicros::window_starts(ctx);
    let n = starts.len();
    let mut totals = vec![Tally::default(); n];
    let mut meetings = vec![Tally::default(); n * dims.meeting.len()];
    let mut regions = vec![Tally::default(); n * dims.region.len()];
    let mut companies = vec![Tally::default(); n * dims.company.len()];
    for f in followups {
        let v = visitors.get(&f.id).copied().unwrap_or(0);
        for (i, start) in starts.iter().enumerate() {
            if f.published_at > *start {
                totals[i].add(v);
                meetings[f.meeting * n + i].add(v);
                regions[f.region * n + i].add(v);
                companies[f.company * n + i].add(v);
            }
        }
    }
    // The tallies of one window, by dimension value, non-empty only.
    let column = |tallies: &[Tally], names: &Interner, i: usize| -> Vec<(String, Tally)> {
        (0..names.len())
            .map(|d| (d, tallies[d * n + i]))
            .filter(|(_, t)| t.followups > 0)
            .map(|(d, t)| (names.name(d).to_owned(), t))
            .collect()
    };
    for (i, w) in ctx.windows.0.iter().enumerate() {
        let window = w.label.as_str();
        let total = totals[i];
        if let Some(r) = ratio(total.visitors, total.followups) {
            overall.push_window(window, r);
        }
        if let Some(r) = ratio(total.engaged, total.followups) {
            engaged.push_window(window, r);
        }
        for (m, t) in column(&meetings, &dims.meeting, i) {
            push_dim(&mut by_meeting, window, "meeting_type", m, t);
        }
        for (r, t) in column(&regions, &dims.region, i) {
            push_dim(&mut by_region, window, "creator_region", r, t);
        }
        let list = column(&companies, &dims.company, i);
        for (company, t) in top_companies(list, ctx.company_top_n) {
            push_dim(&mut by_company, window, "company", company, t);
        }
    }
    vec![overall, engaged, by_meeting, by_region, by_company]
}

fn push_dim(fam: &mut Family, window: &str, key: &'static str, value: String, t: Tally) {
    if let Some(r) = ratio(t.visitors, t.followups) {
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
