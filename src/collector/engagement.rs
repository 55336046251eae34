//! OKR 3, prospect engagement: unique visitors per follow-up published in
//! each window, overall and by meeting type, creator region and company.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use super::history::{GaugeHistory, HistoryContext, HistoryFamily, Membership, Slide};
use super::intern::Interner;
use super::labels::{
    LabelSet, WindowCompany, WindowCreatorRegion, WindowLabels, WindowMeetingType,
};
use super::pg_time::{PgMicros, Span};
use super::reconcile::{self, ReconcileClock};
use super::watermark::{Watermarks, current_mark};
use super::{CollectContext, Collected, Families, Family, OkrCollector, RowDecoder, ratio};

/// Label value of the companies outside the top N.
pub const OTHER_COMPANY: &str = "__other__";

// F = follow-ups published in an interval, read whole every run (partial
// index okr_followups_published_at_idx), so membership and dimensions are
// always current. NULL or empty dimensions become "unknown" in Rust (in SQL
// that cost ~3 of the query's ~10 ms at 1M follow-ups).
const F_SQL: &str = "
SELECT f.id, f.published_at, f.meeting_type, f.creator_region, f.company
FROM followups f
WHERE f.published_at > $1
  AND f.published_at <= $2";

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

/// Collects `okr_engagement_ratio`, `okr_engaged_followups_ratio`, the
/// breakdowns by meeting type, creator region and (top-N) company, and
/// `okr_followups_published` (the denominator, from the same tally).
///
/// Keeps each recent follow-up's distinct-visitor count between runs and
/// re-reads only the follow-ups with new sessions (see
/// [`watermark`](super::watermark)). That state is verified, never trusted:
/// every `--reconcile-interval` a run recomputes every count, serves that,
/// and reports the series the incremental state had wrong
/// ([`reconcile`](super::reconcile)).
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

/// Distinct visitors per follow-up.
pub(crate) type Visitors = HashMap<Uuid, i64, Fast>;

#[derive(Debug, Default)]
struct State {
    visitors: Visitors,
    marks: Watermarks,
    last_now: Option<DateTime<Utc>>,
    clock: ReconcileClock,
}

/// The engagement definition's sums over one group of follow-ups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Follow-ups published in the interval (the denominator).
    pub(crate) followups: i64,
    /// Σ distinct visitors of those follow-ups.
    pub(crate) visitors: i64,
    /// Those with at least one visitor.
    pub(crate) engaged: i64,
}

impl Tally {
    fn add(&mut self, visitors: i64) {
        self.followups += 1;
        self.visitors += visitors;
        self.engaged += i64::from(visitors > 0);
    }

    fn merge(self, other: Self) -> Self {
        Self {
            followups: self.followups + other.followups,
            visitors: self.visitors + other.visitors,
            engaged: self.engaged + other.engaged,
        }
    }

    /// `okr_engagement_ratio`: visitors per follow-up (absent without any).
    pub(crate) fn ratio(&self) -> Option<f64> {
        ratio(self.visitors, self.followups)
    }

    /// `okr_engaged_followups_ratio`.
    pub(crate) fn engaged_ratio(&self) -> Option<f64> {
        ratio(self.engaged, self.followups)
    }
}

/// One follow-up of F, its dimensions as ids of [`Dims`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Followup {
    id: Uuid,
    published_at: PgMicros,
    meeting: usize,
    region: usize,
    company: usize,
}

/// The distinct dimension values of one read.
#[derive(Debug, Default)]
pub(crate) struct Dims {
    meeting: Interner,
    region: Interner,
    company: Interner,
}

/// F over an interval: the follow-ups and their dimension dictionaries.
#[derive(Debug, Default)]
pub(crate) struct Published {
    followups: Vec<Followup>,
    dims: Dims,
}

impl Published {
    /// The follow-ups' ids.
    pub(crate) fn ids(&self) -> Vec<Uuid> {
        self.followups.iter().map(|f| f.id).collect()
    }
}

/// A dimension value as a label: NULL or empty is "unknown".
fn or_unknown(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("unknown")
}

/// Reads the follow-ups published in `span`, each string borrowed from its
/// row into the read's dictionaries.
pub(crate) async fn read_published(
    conn: &mut PgConnection,
    span: Span,
) -> Result<Published, sqlx::Error> {
    let mut dims = Dims::default();
    let mut followups = Vec::new();
    let mut rows = sqlx::query(F_SQL)
        .bind(span.lo.to_datetime())
        .bind(span.hi.to_datetime())
        .fetch(conn);
    let mut decoder = RowDecoder::default();
    while let Some(row) = rows.try_next().await? {
        followups.push(Followup {
            id: decoder.get(&row, 0)?,
            published_at: decoder.get(&row, 1)?,
            meeting: dims.meeting.id(or_unknown(decoder.get(&row, 2)?)),
            region: dims.region.id(or_unknown(decoder.get(&row, 3)?)),
            company: dims.company.id(or_unknown(decoder.get(&row, 4)?)),
        });
        decoder.row_done();
    }
    Ok(Published { followups, dims })
}

/// Distinct visitors, over sessions started up to `now`, of each of `ids`
/// (follow-ups without any are absent).
pub(crate) async fn read_visitors(
    conn: &mut PgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Visitors, sqlx::Error> {
    let mut out: Visitors = HashMap::with_capacity_and_hasher(ids.len(), Fast::default());
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(VISITORS_SQL)
            .bind(chunk)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        out.extend(rows);
    }
    Ok(out)
}

/// The engagement definition: for each of `spans`, the tally of the
/// follow-ups of `f` published in it, overall and per dimension value.
/// Flat arrays indexed by (dimension value, span).
#[derive(Debug)]
pub(crate) struct Tallies {
    spans: usize,
    /// Per span, all follow-ups.
    pub(crate) totals: Vec<Tally>,
    meetings: Vec<Tally>,
    regions: Vec<Tally>,
    companies: Vec<Tally>,
}

impl Tallies {
    /// One pass over F: each follow-up adds to every span it falls in.
    pub(crate) fn count(f: &Published, visitors: &Visitors, spans: &[Span]) -> Self {
        let mut t = Self::empty(spans.len(), &f.dims);
        for f in &f.followups {
            let v = visitors.get(&f.id).copied().unwrap_or(0);
            for (i, span) in spans.iter().enumerate() {
                if span.contains(f.published_at) {
                    t.each(f, i, |tally| tally.add(v));
                }
            }
        }
        t
    }

    /// Applies `change` to every tally of window `w` that `f` belongs to.
    fn each(&mut self, f: &Followup, w: usize, mut change: impl FnMut(&mut Tally)) {
        let n = self.spans;
        change(&mut self.totals[w]);
        change(&mut self.meetings[f.meeting * n + w]);
        change(&mut self.regions[f.region * n + w]);
        change(&mut self.companies[f.company * n + w]);
    }

    /// Zero tallies for `spans` intervals and the values of `dims`.
    fn empty(spans: usize, dims: &Dims) -> Self {
        Self {
            spans,
            totals: vec![Tally::default(); spans],
            meetings: vec![Tally::default(); spans * dims.meeting.len()],
            regions: vec![Tally::default(); spans * dims.region.len()],
            companies: vec![Tally::default(); spans * dims.company.len()],
        }
    }

    /// The tallies of span `i` by dimension value, non-empty only.
    fn column(&self, tallies: &[Tally], names: &Interner, i: usize) -> Vec<(String, Tally)> {
        let n = self.spans;
        (0..names.len())
            .map(|d| (d, tallies[d * n + i]))
            .filter(|(_, t)| t.followups > 0)
            .map(|(d, t)| (names.name(d).to_owned(), t))
            .collect()
    }
}

impl OkrCollector for EngagementCollector {
    fn name(&self) -> &'static str {
        "engagement"
    }

    fn reconciles(&self) -> bool {
        true
    }

    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            // First statement: fixes the transaction's snapshot.
            let mark = current_mark(&mut *conn).await?;
            let now = ctx.now;
            let f = read_published(&mut *conn, Span::longest_window(ctx)).await?;

            let incremental = match (state.last_now, state.marks.bound()) {
                (Some(prev), Some(bound)) if prev <= now => Some((prev, bound)),
                _ => None,
            };
            let full = state.clock.full_reason(
                now,
                ctx.reconcile_interval,
                incremental.is_some(),
                mark.modifications,
            );
            // The incremental view: which follow-ups the watermark says may
            // have changed. Also built on a verifying run, to be checked.
            let changed: Option<HashSet<Uuid, Fast>> = match incremental {
                Some((prev, bound)) if full.is_none_or(|r| r.verifies()) => Some(
                    sqlx::query_as::<_, (Uuid,)>(CHANGED_SQL)
                        .bind(bound)
                        .bind(prev)
                        .bind(now)
                        .fetch_all(&mut *conn)
                        .await?
                        .into_iter()
                        .map(|(id,)| id)
                        .collect(),
                ),
                _ => None,
            };
            let stale = |id: &Uuid| {
                changed
                    .as_ref()
                    .is_none_or(|c| c.contains(id) || !state.visitors.contains_key(id))
            };
            let need: Vec<Uuid> = if full.is_some() {
                f.followups.iter().map(|f| f.id).collect()
            } else {
                f.followups.iter().map(|f| f.id).filter(stale).collect()
            };
            let fresh = read_visitors(&mut *conn, &need, now).await?;
            let updated: Visitors = f
                .followups
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

            let spans = Span::windows(ctx);
            let served = families(ctx, &f, &Tallies::count(&f, &updated, &spans));
            let mut corrections = 0;
            let (families, visitors) = match full {
                // Without an incremental view every count was read fresh.
                None => (served, updated),
                Some(reason) if !reason.verifies() => (served, updated),
                Some(_) => {
                    let all: Visitors = f
                        .followups
                        .iter()
                        .map(|f| (f.id, fresh.get(&f.id).copied().unwrap_or(0)))
                        .collect();
                    let exact = families(ctx, &f, &Tallies::count(&f, &all, &spans));
                    corrections = reconcile::corrections(&served, &exact);
                    (exact, all)
                }
            };
            tracing::debug!(
                full = ?full,
                followups = f.followups.len(),
                changed = changed.as_ref().map_or(0, HashSet::len),
                recomputed = need.len(),
                corrections,
                ?mark,
                "engagement run"
            );
            // Earlier marks stay valid after a full recomputation: they are
            // facts about earlier snapshots, and the next bound needs them.
            state.marks.record(mark);
            state.clock.record(now, full.is_some(), mark.modifications);
            if full.is_none() {
                self.incremental_runs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            state.visitors = visitors;
            state.last_now = Some(now);
            Ok(Collected {
                families,
                corrections,
            })
        })
    }
}

const OVERALL: (&str, &str) = (
    "okr_engagement_ratio",
    "Unique prospect visitors per follow-up published in the window: sum over those \
     follow-ups of count(distinct analytics_sessions.visitor_id) / their number.",
);
const ENGAGED: (&str, &str) = (
    "okr_engaged_followups_ratio",
    "Share of follow-ups published in the window with at least one visitor.",
);
const BY_MEETING: (&str, &str) = (
    "okr_engagement_by_meeting_type_ratio",
    "okr_engagement_ratio within each meeting type (followups.meeting_type; empty = unknown).",
);
const BY_REGION: (&str, &str) = (
    "okr_engagement_by_creator_region_ratio",
    "okr_engagement_ratio within each creator region (followups.creator_region; empty = unknown).",
);
const BY_COMPANY: (&str, &str) = (
    "okr_engagement_by_company_ratio",
    "okr_engagement_ratio for the top companies by follow-ups published in the window; \
     the rest together as company=\"__other__\".",
);
const PUBLISHED: (&str, &str) = (
    "okr_followups_published",
    "Follow-ups published in the window (followups.published_at); the engagement denominator.",
);

/// The gauge families of the windows of `ctx` from their tallies.
fn families(ctx: &CollectContext, f: &Published, t: &Tallies) -> Families {
    let mut overall = Family::new(OVERALL.0, OVERALL.1);
    let mut engaged = Family::new(ENGAGED.0, ENGAGED.1);
    let mut by_meeting = Family::new(BY_MEETING.0, BY_MEETING.1);
    let mut by_region = Family::new(BY_REGION.0, BY_REGION.1);
    let mut by_company = Family::new(BY_COMPANY.0, BY_COMPANY.1);
    let mut published = Family::new(PUBLISHED.0, PUBLISHED.1);
    let dims = &f.dims;
    for (i, w) in ctx.windows.0.iter().enumerate() {
        let window = w.label.as_str();
        let total = t.totals[i];
        published.push_window(window, total.followups as f64);
        if let Some(r) = total.ratio() {
            overall.push_window(window, r);
        }
        if let Some(r) = total.engaged_ratio() {
            engaged.push_window(window, r);
        }
        for (m, tally) in t.column(&t.meetings, &dims.meeting, i) {
            push_dim(&mut by_meeting, WindowMeetingType::new(window, m), tally);
        }
        for (r, tally) in t.column(&t.regions, &dims.region, i) {
            push_dim(&mut by_region, WindowCreatorRegion::new(window, r), tally);
        }
        let list = t.column(&t.companies, &dims.company, i);
        for (company, tally) in top_companies(list, ctx.company_top_n) {
            push_dim(&mut by_company, WindowCompany::new(window, company), tally);
        }
    }
    vec![
        overall.boxed(),
        engaged.boxed(),
        by_meeting.boxed(),
        by_region.boxed(),
        by_company.boxed(),
        published.boxed(),
    ]
}

/// Adds the ratio of `t` under `labels`, when it has one.
fn push_dim<L: LabelSet>(fam: &mut Family<L>, labels: L, t: Tally) {
    if let Some(r) = t.ratio() {
        fam.push(labels, r);
    }
}

/// The `n` companies with most follow-ups (ties by name), the rest merged
/// into [`OTHER_COMPANY`]. Merging sums visitors and follow-ups, so the
/// "other" ratio is exact.
fn top_companies(mut list: Vec<(String, Tally)>, n: usize) -> Vec<(String, Tally)> {
    let (top, other) = rank_companies(&mut list, n, |a, b| a.cmp(b));
    let mut out: Vec<(String, Tally)> = list.drain(..top).collect();
    if let Some(other) = other {
        out.push((OTHER_COMPANY.to_owned(), other));
    }
    out
}

/// The company breakdown's definition: reorders `list` so that its first
/// `top` entries are the `n` companies with most follow-ups (ties broken by
/// name), in that order, and returns `top` with the rest merged (`None`
/// when nothing is left over). Merging sums visitors and follow-ups, so the
/// "other" ratio is exact. Selection, then a sort of the top only: the
/// backfill ranks thousands of companies at every step.
fn rank_companies<K>(
    list: &mut [(K, Tally)],
    n: usize,
    by_name: impl Fn(&K, &K) -> std::cmp::Ordering,
) -> (usize, Option<Tally>) {
    let order = |a: &(K, Tally), b: &(K, Tally)| {
        b.1.followups
            .cmp(&a.1.followups)
            .then_with(|| by_name(&a.0, &b.0))
    };
    let top = n.min(list.len());
    if top < list.len() && top > 0 {
        list.select_nth_unstable_by(top - 1, order);
    }
    list[..top].sort_unstable_by(order);
    let rest = &list[top..];
    let other = (!rest.is_empty()).then(|| {
        rest.iter()
            .fold(Tally::default(), |acc, (_, t)| acc.merge(*t))
    });
    (top, other)
}

// Per follow-up and visitor, the first session up to the end of the
// backfill (index-only on okr_analytics_sessions_followup_visitor_idx).
const FIRST_VISITS_SQL: &str = "
SELECT s.followup_id, min(s.started_at)
FROM analytics_sessions s
WHERE s.followup_id = ANY($1) AND s.started_at <= $2
GROUP BY s.followup_id, s.visitor_id";

impl Tally {
    fn remove(&mut self, visitors: i64) {
        self.followups -= 1;
        self.visitors -= visitors;
        self.engaged -= i64::from(visitors > 0);
    }

    /// A follow-up inside gets a new visitor (`first`: its first one).
    fn visit(&mut self, first: bool) {
        self.visitors += 1;
        self.engaged += i64::from(first);
    }
}

/// The engagement gauges at every step of `h`, as of each step: one sweep
/// over the follow-ups published in the backfill's span and the first
/// session of each of their visitors, both in time order. A follow-up
/// enters a window at its publish time with the visitors it has then; each
/// first visit adds one to every window holding its follow-up.
pub(crate) async fn history(
    conn: &mut PgConnection,
    h: &HistoryContext,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    let span = h.span();
    let f = read_published(&mut *conn, span).await?;
    let n = f.followups.len();
    let index: HashMap<Uuid, u32, Fast> = f
        .followups
        .iter()
        .enumerate()
        .map(|(i, x)| (x.id, u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let ids = f.ids();
    let mut visits: Vec<(PgMicros, u32)> = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut rows = sqlx::query(FIRST_VISITS_SQL)
            .bind(chunk)
            .bind(span.hi.to_datetime())
            .fetch(&mut *conn);
        let mut decoder = RowDecoder::default();
        while let Some(row) = rows.try_next().await? {
            let id: Uuid = decoder.get(&row, 0)?;
            let first: PgMicros = decoder.get(&row, 1)?;
            if let Some(i) = index.get(&id) {
                visits.push((first, *i));
            }
            decoder.row_done();
        }
    }
    h.count_rows(f.followups.len() + visits.len());
    visits.sort_unstable();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by_key(|i| f.followups[*i].published_at);
    let times: Vec<PgMicros> = order.iter().map(|i| f.followups[*i].published_at).collect();

    let mut fams = HistoryFamilies::new(h, &f.dims);
    let nw = h.windows.len();
    let dims = &f.dims;
    let mut slides: Vec<Slide> = h.windows.iter().map(|(_, len)| Slide::new(*len)).collect();
    let mut inside = Membership::new(n, nw);
    let mut visitors = vec![0_i64; n];
    let mut t = Tallies::empty(nw, dims);
    let mut next_visit = 0;
    for (step, at) in h.steps.iter().enumerate() {
        for (w, slide) in slides.iter_mut().enumerate() {
            for k in slide.enter(&times, *at) {
                let i = order[k];
                inside.set(i, w, true);
                t.each(&f.followups[i], w, |tally| tally.add(visitors[i]));
            }
        }
        while let Some((_, i)) = visits.get(next_visit).copied().filter(|v| v.0 <= *at) {
            let i = i as usize;
            visitors[i] += 1;
            for w in 0..nw {
                if inside.get(i, w) {
                    t.each(&f.followups[i], w, |tally| tally.visit(visitors[i] == 1));
                }
            }
            next_visit += 1;
        }
        for (w, slide) in slides.iter_mut().enumerate() {
            for k in slide.leave(&times, *at) {
                let i = order[k];
                inside.set(i, w, false);
                t.each(&f.followups[i], w, |tally| tally.remove(visitors[i]));
            }
        }
        fams.record(h, dims, &t, step);
    }
    Ok(fams.into_vec())
}

/// The engagement families of a backfill, with their series ids.
struct HistoryFamilies {
    overall: HistoryFamily<WindowLabels>,
    engaged: HistoryFamily<WindowLabels>,
    by_meeting: HistoryFamily<WindowMeetingType>,
    by_region: HistoryFamily<WindowCreatorRegion>,
    by_company: HistoryFamily<WindowCompany>,
    published: HistoryFamily<WindowLabels>,
    window_ids: Vec<[usize; 3]>,
    meeting_ids: Vec<usize>,
    region_ids: Vec<usize>,
    company_ids: HashMap<(usize, usize), usize>,
    other_ids: Vec<usize>,
    ranked: Vec<(usize, Tally)>,
}

impl HistoryFamilies {
    fn new(h: &HistoryContext, dims: &Dims) -> Self {
        let mut overall = HistoryFamily::new(OVERALL.0, OVERALL.1);
        let mut engaged = HistoryFamily::new(ENGAGED.0, ENGAGED.1);
        let mut by_meeting = HistoryFamily::new(BY_MEETING.0, BY_MEETING.1);
        let mut by_region = HistoryFamily::new(BY_REGION.0, BY_REGION.1);
        let mut by_company = HistoryFamily::new(BY_COMPANY.0, BY_COMPANY.1);
        let mut published = HistoryFamily::new(PUBLISHED.0, PUBLISHED.1);
        let window_ids = h
            .windows
            .iter()
            .map(|(w, _)| {
                let l = || WindowLabels::new(w.as_str());
                [
                    overall.series(l()),
                    engaged.series(l()),
                    published.series(l()),
                ]
            })
            .collect();
        let meeting_ids = dim_series(&mut by_meeting, h, &dims.meeting, |w, m| {
            WindowMeetingType::new(w, m)
        });
        let region_ids = dim_series(&mut by_region, h, &dims.region, |w, r| {
            WindowCreatorRegion::new(w, r)
        });
        let other_ids = h
            .windows
            .iter()
            .map(|(w, _)| by_company.series(WindowCompany::new(w.as_str(), OTHER_COMPANY)))
            .collect();
        Self {
            overall,
            engaged,
            by_meeting,
            by_region,
            by_company,
            published,
            window_ids,
            meeting_ids,
            region_ids,
            company_ids: HashMap::new(),
            other_ids,
            ranked: Vec::new(),
        }
    }

    /// Records every series of step `step` from the tallies, as the live
    /// [`families`] serves them.
    fn record(&mut self, h: &HistoryContext, dims: &Dims, t: &Tallies, step: usize) {
        let nw = h.windows.len();
        for w in 0..nw {
            let total = t.totals[w];
            let [overall, engaged, published] = self.window_ids[w];
            self.published.push(published, step, total.followups as f64);
            self.overall.push_some(overall, step, total.ratio());
            self.engaged.push_some(engaged, step, total.engaged_ratio());
            for d in 0..dims.meeting.len() {
                let tally = t.meetings[d * nw + w];
                if tally.followups > 0 {
                    self.by_meeting
                        .push_some(self.meeting_ids[d * nw + w], step, tally.ratio());
                }
            }
            for d in 0..dims.region.len() {
                let tally = t.regions[d * nw + w];
                if tally.followups > 0 {
                    self.by_region
                        .push_some(self.region_ids[d * nw + w], step, tally.ratio());
                }
            }
            self.ranked.clear();
            self.ranked.extend(
                (0..dims.company.len())
                    .map(|d| (d, t.companies[d * nw + w]))
                    .filter(|(_, tally)| tally.followups > 0),
            );
            let (top, other) = rank_companies(&mut self.ranked, h.company_top_n, |a, b| {
                dims.company.name(*a).cmp(dims.company.name(*b))
            });
            for (d, tally) in &self.ranked[..top] {
                let id = *self.company_ids.entry((*d, w)).or_insert_with(|| {
                    self.by_company.series(WindowCompany::new(
                        h.windows[w].0.as_str(),
                        dims.company.name(*d),
                    ))
                });
                self.by_company.push_some(id, step, tally.ratio());
            }
            if let Some(other) = other {
                self.by_company
                    .push_some(self.other_ids[w], step, other.ratio());
            }
        }
    }

    fn into_vec(self) -> Vec<Box<dyn GaugeHistory>> {
        vec![
            self.overall.boxed(),
            self.engaged.boxed(),
            self.by_meeting.boxed(),
            self.by_region.boxed(),
            self.by_company.boxed(),
            self.published.boxed(),
        ]
    }
}

/// The ids of the series of every dimension value `names` and window of
/// `h`, at `d * windows + w`, labelled by `labels(window, name)`.
fn dim_series<L: LabelSet>(
    fam: &mut HistoryFamily<L>,
    h: &HistoryContext,
    names: &Interner,
    labels: impl Fn(&str, &str) -> L,
) -> Vec<usize> {
    let mut ids = vec![0; names.len() * h.windows.len()];
    for d in 0..names.len() {
        for (w, (window, _)) in h.windows.iter().enumerate() {
            ids[d * h.windows.len() + w] = fam.series(labels(window, names.name(d)));
        }
    }
    ids
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
