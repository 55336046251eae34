//! OKR values as of past instants, for `okr-exporter backfill`.
//!
//! Each OKR family computes its whole history in one sweep over its rows
//! ordered by time (in the family's own file, next to its live definition):
//! a row enters a rolling window when the sweep reaches its timestamp and
//! leaves it one window length later, so every row is added and removed
//! once per window, whatever the number of steps. A value at step t is what
//! the live collector would have served at t, as of t: a follow-up counts
//! as published only once `published_at ≤ t`, as deleted once
//! `deleted_at ≤ t`; sessions, creation times and next actions by their own
//! timestamps ≤ t.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use super::labels::{LabelPairs, LabelSet, NoLabels, WindowLabels};
use super::pg_time::{PgMicros, Span};
use crate::config::{Targets, Windows};

/// The instants of a backfill and what the collector is configured with.
#[derive(Debug)]
pub struct HistoryContext {
    /// The instants, ascending.
    pub(crate) steps: Vec<PgMicros>,
    /// Window labels and lengths in microseconds, in window order.
    pub(crate) windows: Vec<(String, i64)>,
    /// Targets (creation time within target).
    pub(crate) targets: Targets,
    /// Companies broken out in the engagement breakdown.
    pub(crate) company_top_n: usize,
    /// Source rows the sweeps have read (progress report).
    rows_read: std::sync::atomic::AtomicU64,
}

impl HistoryContext {
    /// A context for `steps` (any order; sorted and deduplicated here).
    pub fn new(
        steps: impl IntoIterator<Item = chrono::DateTime<chrono::Utc>>,
        windows: &Windows,
        targets: &Targets,
        company_top_n: usize,
    ) -> Self {
        let mut steps: Vec<PgMicros> = steps.into_iter().map(PgMicros::from_datetime).collect();
        steps.sort_unstable();
        steps.dedup();
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4);
        Self {
            steps,
            windows: windows
                .0
                .iter()
                .map(|w| (w.label.clone(), micros(w.duration)))
                .collect(),
            targets: targets.clone(),
            company_top_n,
            rows_read: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Source rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` more source rows read.
    pub(crate) fn count_rows(&self, n: usize) {
        self.rows_read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Number of instants.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there is no instant at all.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The instants as Unix milliseconds.
    pub fn unix_millis(&self) -> Vec<i64> {
        self.steps
            .iter()
            .map(|t| t.to_datetime().timestamp_millis())
            .collect()
    }

    /// The rows of `sql` over [`span`](Self::span) (its parameters: the
    /// span's exclusive start and inclusive end), counted as read.
    pub(crate) async fn read_span<T>(
        &self,
        conn: &mut sqlx::PgConnection,
        sql: &'static str,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let span = self.span();
        let rows: Vec<T> = sqlx::query_as(sql)
            .bind(span.lo.to_datetime())
            .bind(span.hi.to_datetime())
            .fetch_all(conn)
            .await?;
        self.count_rows(rows.len());
        Ok(rows)
    }

    /// Every instant that any window of any step covers: `(first − longest, last]`.
    pub(crate) fn span(&self) -> Span {
        let first = self
            .steps
            .first()
            .copied()
            .unwrap_or(PgMicros::from_micros(0));
        let last = self.steps.last().copied().unwrap_or(first);
        let longest = self.windows.iter().map(|w| w.1).max().unwrap_or(0);
        Span {
            lo: PgMicros::from_micros(first.micros().saturating_sub(longest)),
            hi: last,
        }
    }
}

/// One OKR family's sweep over its history (registered beside its live
/// collector in [`registry::COLLECTORS`](super::registry::COLLECTORS)).
pub type Sweep = for<'a> fn(
    &'a mut sqlx::PgConnection,
    &'a HistoryContext,
) -> futures_util::future::BoxFuture<
    'a,
    Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error>,
>;

/// Names of the collectors whose history a backfill computes, in registry
/// order.
pub fn history_collectors() -> Vec<&'static str> {
    super::registry::COLLECTORS
        .iter()
        .filter(|r| r.history.is_some())
        .map(|r| r.name)
        .collect()
}

/// Computes one collector's history (`name` from [`history_collectors`]) on
/// `conn`, which should hold a read-only repeatable-read transaction so
/// every family sees one snapshot. Unknown names give no family.
pub async fn collector_history(
    conn: &mut sqlx::PgConnection,
    h: &HistoryContext,
    name: &str,
) -> Result<Vec<Box<dyn GaugeHistory>>, sqlx::Error> {
    match super::registry::find(name).and_then(|r| r.history) {
        Some(sweep) => sweep(conn, h).await,
        None => Ok(Vec::new()),
    }
}

/// The target and alert-floor gauges at every step (constants of the
/// configuration, so backfilled panels draw their target lines too).
pub fn target_history(h: &HistoryContext) -> Vec<Box<dyn GaugeHistory>> {
    super::targets::target_gauges(&h.targets)
        .into_iter()
        .map(|(name, help, value)| {
            let mut fam = HistoryFamily::new(name, help);
            let id = fam.series(NoLabels);
            for step in 0..h.steps.len() {
                fam.push(id, step, value);
            }
            fam.boxed()
        })
        .collect()
}

/// A gauge family's history of any label set, as the backfill writes it.
pub trait GaugeHistory: std::fmt::Debug + Send {
    /// Metric name.
    fn name(&self) -> &'static str;
    /// HELP text, the live gauge's.
    fn help(&self) -> &'static str;
    /// Number of series (with or without values).
    fn series_count(&self) -> usize;
    /// Number of stored values.
    fn len(&self) -> usize;
    /// Whether no value is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The series sorted by labels: label pairs (in exposition order) and
    /// (step index, value), step indices ascending.
    fn sorted_series(&self) -> Vec<(LabelPairs<'_>, &[(u32, f64)])>;
}

/// One gauge family's values at the steps of a backfill, its label set
/// typed by `L` as the live family's; absent values are not stored, as the
/// live collector does not serve them.
#[derive(Debug, Clone)]
pub struct HistoryFamily<L> {
    /// Metric name.
    pub name: &'static str,
    /// HELP text, the live gauge's.
    pub help: &'static str,
    index: HashMap<L, usize>,
    /// Series: labels and (step index, value), step indices ascending.
    pub series: Vec<(L, Vec<(u32, f64)>)>,
}

impl<L: LabelSet> HistoryFamily<L> {
    /// An empty family.
    pub(crate) fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            index: HashMap::new(),
            series: Vec::new(),
        }
    }

    /// The id of the series with `labels`, created on first use.
    pub(crate) fn series(&mut self, labels: L) -> usize {
        if let Some(id) = self.index.get(&labels) {
            return *id;
        }
        let id = self.series.len();
        self.index.insert(labels.clone(), id);
        self.series.push((labels, Vec::new()));
        id
    }

    /// Records `value` of series `id` at step `step`.
    pub(crate) fn push(&mut self, id: usize, step: usize, value: f64) {
        if let Some((_, values)) = self.series.get_mut(id) {
            values.push((u32::try_from(step).unwrap_or(u32::MAX), value));
        }
    }

    /// Records `value` when there is one.
    pub(crate) fn push_some(&mut self, id: usize, step: usize, value: Option<f64>) {
        if let Some(v) = value {
            self.push(id, step, v);
        }
    }

    /// The family as the backfill writer takes it.
    pub(crate) fn boxed(self) -> Box<dyn GaugeHistory> {
        Box::new(self)
    }
}

impl HistoryFamily<WindowLabels> {
    /// One id per window for series labelled `window` only.
    pub(crate) fn window_series(&mut self, h: &HistoryContext) -> Vec<usize> {
        h.windows
            .iter()
            .map(|(w, _)| self.series(WindowLabels::new(w.as_str())))
            .collect()
    }
}

impl<L: LabelSet> GaugeHistory for HistoryFamily<L> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn help(&self) -> &'static str {
        self.help
    }

    fn series_count(&self) -> usize {
        self.series.len()
    }

    fn len(&self) -> usize {
        self.series.iter().map(|(_, v)| v.len()).sum()
    }

    fn sorted_series(&self) -> Vec<(LabelPairs<'_>, &[(u32, f64)])> {
        let mut series: Vec<&(L, Vec<(u32, f64)>)> = self.series.iter().collect();
        // The fields' order is the labels' order, so this sorts as the
        // label pairs would.
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
            .into_iter()
            .map(|(labels, values)| (labels.pairs(), values.as_slice()))
            .collect()
    }
}

/// A window sliding over rows sorted by time: yields the rows entering
/// `(t − length, t]` and those leaving it as t advances.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slide {
    length: i64,
    added: usize,
    removed: usize,
}

impl Slide {
    pub(crate) fn new(length: i64) -> Self {
        Self {
            length,
            added: 0,
            removed: 0,
        }
    }

    /// Moves the window's end to `t` over `times` (ascending): returns the
    /// rows entering the window (to add first) and those leaving it.
    pub(crate) fn advance(
        &mut self,
        times: &[PgMicros],
        t: PgMicros,
    ) -> (Range<usize>, Range<usize>) {
        (self.enter(times, t), self.leave(times, t))
    }

    /// The rows entering the window when its end moves to `t`.
    pub(crate) fn enter(&mut self, times: &[PgMicros], t: PgMicros) -> Range<usize> {
        let from = self.added;
        while self.added < times.len() && times[self.added] <= t {
            self.added += 1;
        }
        from..self.added
    }

    /// The rows (already entered) leaving the window when its end is `t`.
    pub(crate) fn leave(&mut self, times: &[PgMicros], t: PgMicros) -> Range<usize> {
        let from = self.removed;
        let lo = t.micros().saturating_sub(self.length);
        while self.removed < self.added && times[self.removed].micros() <= lo {
            self.removed += 1;
        }
        from..self.removed
    }
}

/// Counts per rank with prefix sums and the k-th smallest (a Fenwick tree),
/// for sliding-window quantiles.
#[derive(Debug, Clone)]
pub(crate) struct RankCounts {
    tree: Vec<i64>,
    total: i64,
}

impl RankCounts {
    pub(crate) fn new(ranks: usize) -> Self {
        Self {
            tree: vec![0; ranks + 1],
            total: 0,
        }
    }

    pub(crate) fn add(&mut self, rank: usize, delta: i64) {
        self.total += delta;
        let mut i = rank + 1;
        while i < self.tree.len() {
            self.tree[i] += delta;
            i += i & i.wrapping_neg();
        }
    }

    /// Number of entries.
    pub(crate) fn total(&self) -> i64 {
        self.total
    }

    /// Entries with rank < `rank`.
    pub(crate) fn below(&self, rank: usize) -> i64 {
        let mut i = rank.min(self.tree.len() - 1);
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The rank of the k-th smallest entry (0-based); `k < total`.
    pub(crate) fn kth(&self, k: i64) -> usize {
        let mut pos = 0;
        let mut remaining = k;
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= remaining {
                pos = next;
                remaining -= self.tree[next];
            }
            step /= 2;
        }
        pos
    }
}

/// A set of bits per (row, window), for "is this row in that window now".
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    windows: usize,
    bits: Vec<bool>,
}

impl Membership {
    pub(crate) fn new(rows: usize, windows: usize) -> Self {
        Self {
            windows,
            bits: vec![false; rows * windows],
        }
    }

    pub(crate) fn set(&mut self, row: usize, window: usize, on: bool) {
        self.bits[row * self.windows + window] = on;
    }

    pub(crate) fn get(&self, row: usize, window: usize) -> bool {
        self.bits[row * self.windows + window]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_find_kth_and_prefixes() {
        let mut r = RankCounts::new(10);
        for rank in [3, 3, 7, 0, 9] {
            r.add(rank, 1);
        }
        assert_eq!(r.total(), 5);
        let order: Vec<usize> = (0..5).map(|k| r.kth(k)).collect();
        assert_eq!(order, [0, 3, 3, 7, 9]);
        assert_eq!(r.below(3), 1);
        assert_eq!(r.below(4), 3);
        assert_eq!(r.below(10), 5);
        r.add(3, -1);
        assert_eq!((0..4).map(|k| r.kth(k)).collect::<Vec<_>>(), [0, 3, 7, 9]);
    }

    #[test]
    fn slide_adds_and_removes_each_row_once() {
        let times: Vec<PgMicros> = [1, 2, 5, 9, 10].map(PgMicros::from_micros).to_vec();
        let mut s = Slide::new(4);
        let mut inside = std::collections::BTreeSet::new();
        for t in [0, 2, 5, 6, 10, 20] {
            let (added, removed) = s.advance(&times, PgMicros::from_micros(t));
            inside.extend(added);
            for i in removed {
                inside.remove(&i);
            }
            let expected: std::collections::BTreeSet<usize> = times
                .iter()
                .enumerate()
                .filter(|(_, x)| x.micros() > t - 4 && x.micros() <= t)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(inside, expected, "t = {t}");
        }
    }
}
