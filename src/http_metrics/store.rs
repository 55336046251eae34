//! Lock-free storage behind the three metric families.
//!
//! Layout: one [`RouteSeries`] per route template, found through an
//! insert-only open-addressing table ([`RouteTable`]); inside it one
//! [`SeriesCounters`] per (method, status) pair, again in an insert-only table.
//! Entries are created on first sight and never removed, so the hot path is a
//! hash, a few atomic loads and two `fetch_add`s — no lock, and nothing shared
//! between routes except read-mostly cache lines.
//!
//! Why not `Family<_, Histogram>`: prometheus-client's histogram takes a
//! mutex per observation and its family a read lock shared by every series,
//! and building the owned label set allocates. `benches/http_metrics.rs`
//! measures that "naive" layer against this one (see `BENCHMARKS.md`): the
//! naive layer costs several times more per request and degrades further when
//! two threads hit the same route.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::Method;

/// Number of method label values: the nine standard methods and `_OTHER`.
pub(crate) const METHOD_COUNT: usize = 10;

/// `http_request_method` label values, indexed by [`method_index`].
pub(crate) const METHOD_LABELS: [&str; METHOD_COUNT] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// Maps a request method to its label index; anything outside the standard
/// set becomes `_OTHER`, which bounds the label's cardinality.
#[inline]
pub(crate) fn method_index(method: &Method) -> u8 {
    // Ordered by how often each method is seen, not by label index.
    if *method == Method::GET {
        0
    } else if *method == Method::POST {
        2
    } else if *method == Method::PATCH {
        8
    } else if *method == Method::PUT {
        3
    } else if *method == Method::DELETE {
        4
    } else if *method == Method::HEAD {
        1
    } else if *method == Method::OPTIONS {
        6
    } else if *method == Method::CONNECT {
        5
    } else if *method == Method::TRACE {
        7
    } else {
        9
    }
}

/// Histogram bucket upper bounds, in seconds for the exposition and in
/// nanoseconds for the hot path (integer comparisons, no float conversion).
#[derive(Debug)]
pub(crate) struct Buckets {
    bounds: Box<[f64]>,
    bounds_nanos: Box<[u64]>,
}

impl Buckets {
    /// Keeps the finite bounds, sorted and without duplicates (`+Inf` is
    /// always implied); falls back to `default` when nothing is left.
    pub(crate) fn new(bounds: &[f64], default: &[f64]) -> Self {
        let mut kept: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        if kept.is_empty() {
            kept = default.to_vec();
        }
        kept.sort_by(f64::total_cmp);
        kept.dedup();
        let bounds_nanos = kept.iter().map(|&b| seconds_to_nanos(b)).collect();
        Self {
            bounds: kept.into_boxed_slice(),
            bounds_nanos,
        }
    }

    /// Finite upper bounds in seconds, ascending.
    pub(crate) fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Number of buckets including `+Inf`.
    #[inline]
    pub(crate) fn len_with_inf(&self) -> usize {
        self.bounds.len() + 1
    }

    /// Index of the bucket a duration falls in: the first bound `>=` it
    /// (Prometheus `le` semantics), or the `+Inf` bucket.
    #[inline]
    pub(crate) fn index(&self, nanos: u64) -> usize {
        self.bounds_nanos.partition_point(|&bound| bound < nanos)
    }
}

fn seconds_to_nanos(seconds: f64) -> u64 {
    // `as` saturates: negative bounds become 0, huge ones u64::MAX.
    (seconds * 1e9).round() as u64
}

const COUNTERS_PER_BLOCK: usize = 16;

/// 128 bytes: a cache line plus its prefetch buddy, so counters of different
/// series never share a line.
#[repr(align(128))]
pub(crate) struct CounterBlock([AtomicU64; COUNTERS_PER_BLOCK]);

/// One histogram series: counter 0 is the sum in nanoseconds (exact integer
/// `fetch_add`, no CAS loop on float bits), counters `1..` are the
/// non-cumulative bucket counts, the last one `+Inf`. The count is their sum,
/// so `_count` always equals the `+Inf` bucket.
pub(crate) struct SeriesCounters(Box<[CounterBlock]>);

impl SeriesCounters {
    fn new(bucket_count: usize) -> Self {
        let blocks = (1 + bucket_count).div_ceil(COUNTERS_PER_BLOCK);
        Self(
            (0..blocks)
                .map(|_| CounterBlock(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        )
    }

    #[inline]
    fn counter(&self, index: usize) -> Option<&AtomicU64> {
        self.0
            .get(index / COUNTERS_PER_BLOCK)
            .map(|block| &block.0[index % COUNTERS_PER_BLOCK])
    }

    #[inline]
    fn observe(&self, bucket: usize, nanos: u64) {
        if let Some(sum) = self.counter(0) {
            sum.fetch_add(nanos, Ordering::Relaxed);
        }
        if let Some(count) = self.counter(1 + bucket) {
            // Release pairs with the Acquire in `bucket_counts`, so a scrape
            // that sees this request finished also sees it started.
            count.fetch_add(1, Ordering::Release);
        }
    }

    /// Sum of the observed durations, in nanoseconds.
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.counter(0).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Non-cumulative bucket counts, `+Inf` last.
    pub(crate) fn bucket_counts(&self, bucket_count: usize) -> impl Iterator<Item = u64> + '_ {
        (1..=bucket_count).map(|i| self.counter(i).map_or(0, |c| c.load(Ordering::Acquire)))
    }
}

/// Size of a route's (method, status) table. A route rarely answers with more
/// than a dozen pairs; the rest go to a mutex-protected overflow list.
const SERIES_SLOTS: usize = 64;

/// Requests started per method; on its own 128-byte block because it is the
/// one counter written at request start.
#[repr(align(128))]
struct StartedCounters([AtomicU64; METHOD_COUNT]);

/// Everything recorded for one route template.
pub(crate) struct RouteSeries {
    label: Arc<str>,
    started: StartedCounters,
    /// `method << 10 | status`; 0 marks a free slot (statuses are >= 100).
    keys: [AtomicU16; SERIES_SLOTS],
    series: [OnceLock<SeriesCounters>; SERIES_SLOTS],
    overflow: Mutex<Vec<(u16, SeriesCounters)>>,
}

#[inline]
fn series_key(method: u8, status: u16) -> u16 {
    (u16::from(method) << 10) | (status & 0x3ff)
}

impl RouteSeries {
    fn new(label: Arc<str>) -> Self {
        Self {
            label,
            started: StartedCounters(std::array::from_fn(|_| AtomicU64::new(0))),
            keys: std::array::from_fn(|_| AtomicU16::new(0)),
            series: std::array::from_fn(|_| OnceLock::new()),
            overflow: Mutex::new(Vec::new()),
        }
    }

    /// The `http_route` label value.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Counts a request as started. There is no matching decrement: the
    /// in-flight gauge is `started - finished`, where finished is the sum of
    /// the histogram counts, which saves one contended write per request.
    #[inline]
    pub(crate) fn start(&self, method: u8) {
        if let Some(started) = self.started.0.get(usize::from(method)) {
            started.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests started with this method so far.
    pub(crate) fn started(&self, method: usize) -> u64 {
        self.started
            .0
            .get(method)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Records one finished request.
    #[inline]
    pub(crate) fn observe(&self, buckets: &Buckets, method: u8, status: u16, nanos: u64) {
        let key = series_key(method, status);
        let bucket = buckets.index(nanos);
        let mut slot = (usize::from(key).wrapping_mul(0x9e37_79b9) >> 7) % SERIES_SLOTS;
        for _ in 0..SERIES_SLOTS {
            let found = self.keys[slot].load(Ordering::Acquire);
            let claimed = found == key
                || (found == 0
                    && match self.keys[slot].compare_exchange(
                        0,
                        key,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => true,
                        Err(actual) => actual == key,
                    });
            if claimed {
                self.series[slot]
                    .get_or_init(|| SeriesCounters::new(buckets.len_with_inf()))
                    .observe(bucket, nanos);
                return;
            }
            slot = (slot + 1) % SERIES_SLOTS;
        }
        self.observe_overflow(buckets, key, bucket, nanos);
    }

    #[cold]
    fn observe_overflow(&self, buckets: &Buckets, key: u16, bucket: usize, nanos: u64) {
        let mut overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, series)) = overflow.iter().find(|(k, _)| *k == key) {
            series.observe(bucket, nanos);
        } else {
            let series = SeriesCounters::new(buckets.len_with_inf());
            series.observe(bucket, nanos);
            overflow.push((key, series));
        }
    }

    /// Calls `f(method, status, counters)` for every series of this route.
    pub(crate) fn for_each_series(&self, mut f: impl FnMut(u8, u16, &SeriesCounters)) {
        for (key, series) in self.keys.iter().zip(&self.series) {
            let key = key.load(Ordering::Acquire);
            if let Some(counters) = series.get() {
                f((key >> 10) as u8, key & 0x3ff, counters);
            }
        }
        let overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, counters) in overflow.iter() {
            f((key >> 10) as u8, key & 0x3ff, counters);
        }
    }
}

/// Identifies a route in a [`RouteTable`]; small and `Copy` so request guards
/// need no reference count per route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RouteId(u32);

impl RouteId {
    const UNMATCHED: RouteId = RouteId(u32::MAX);
}

/// Distinct route templates one layer keeps apart. Templates come from the
/// application's code, so this is far above any real router; past it, new
/// templates are recorded under the unmatched label.
const ROUTE_SLOTS: usize = 1024;

/// Insert-only map from route template to [`RouteSeries`], read without
/// locks.
pub(crate) struct RouteTable {
    slots: Box<[OnceLock<Box<RouteSeries>>]>,
    unmatched: RouteSeries,
}

impl RouteTable {
    pub(crate) fn new(unmatched_label: &str) -> Self {
        Self {
            slots: (0..ROUTE_SLOTS).map(|_| OnceLock::new()).collect(),
            unmatched: RouteSeries::new(Arc::from(unmatched_label)),
        }
    }

    /// Finds (or, on first sight, creates) the entry for a route template;
    /// `None` is the unmatched route.
    #[inline]
    pub(crate) fn resolve(&self, template: Option<&str>) -> RouteId {
        let Some(template) = template else {
            return RouteId::UNMATCHED;
        };
        let mut slot = (hash(template.as_bytes()) as usize) % ROUTE_SLOTS;
        for _ in 0..ROUTE_SLOTS {
            let cell = &self.slots[slot];
            let entry = match cell.get() {
                Some(entry) => entry,
                None => cell.get_or_init(|| Box::new(RouteSeries::new(Arc::from(template)))),
            };
            if *entry.label == *template {
                return RouteId(slot as u32);
            }
            slot = (slot + 1) % ROUTE_SLOTS;
        }
        table_full_warning();
        RouteId::UNMATCHED
    }

    /// The entry for an id returned by [`RouteTable::resolve`].
    #[inline]
    pub(crate) fn get(&self, id: RouteId) -> &RouteSeries {
        self.slots
            .get(id.0 as usize)
            .and_then(OnceLock::get)
            .map_or(&self.unmatched, |entry| entry)
    }

    /// Every route seen so far, the unmatched one included.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &RouteSeries> {
        self.slots
            .iter()
            .filter_map(|cell| cell.get().map(|entry| &**entry))
            .chain(std::iter::once(&self.unmatched))
    }
}

#[cold]
fn table_full_warning() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            capacity = ROUTE_SLOTS,
            "http_metrics: route table full, further route templates are recorded as unmatched"
        );
    });
}

/// FxHash-style word-at-a-time hash: a route template is hashed on every
/// request, and SipHash would cost several times more for no benefit here
/// (keys come from the application's route table, not from clients).
#[inline]
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    // The high bits are the well-mixed ones.
    h.rotate_left(26)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: [f64; 2] = [0.1, 1.0];

    #[test]
    fn standard_methods_have_their_own_label_and_others_collapse() {
        let standard = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
            Method::OPTIONS,
            Method::TRACE,
            Method::PATCH,
        ];
        for method in &standard {
            assert_eq!(
                METHOD_LABELS[usize::from(method_index(method))],
                method.as_str()
            );
        }
        for odd in ["PROPFIND", "get", "FOO", "M-SEARCH"] {
            let method = Method::from_bytes(odd.as_bytes()).unwrap();
            assert_eq!(METHOD_LABELS[usize::from(method_index(&method))], "_OTHER");
        }
    }

    #[test]
    fn bucket_index_uses_le_semantics() {
        let buckets = Buckets::new(&[0.005, 0.2, 1.0], &DEFAULT);
        assert_eq!(buckets.index(0), 0);
        assert_eq!(
            buckets.index(5_000_000),
            0,
            "exactly on a bound counts as le"
        );
        assert_eq!(buckets.index(5_000_001), 1);
        assert_eq!(buckets.index(200_000_000), 1);
        assert_eq!(buckets.index(200_000_001), 2);
        assert_eq!(buckets.index(1_000_000_000), 2);
        assert_eq!(buckets.index(1_000_000_001), 3, "+Inf");
        assert_eq!(buckets.len_with_inf(), 4);
    }

    #[test]
    fn buckets_are_sorted_deduplicated_and_finite() {
        let buckets = Buckets::new(&[1.0, f64::NAN, 0.5, f64::INFINITY, 0.5], &DEFAULT);
        assert_eq!(buckets.bounds(), &[0.5, 1.0]);
        let fallback = Buckets::new(&[f64::NAN], &DEFAULT);
        assert_eq!(fallback.bounds(), &DEFAULT);
    }

    #[test]
    fn series_are_kept_apart_by_method_and_status() {
        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let route = RouteSeries::new(Arc::from("/r"));
        route.observe(&buckets, 0, 200, 50_000_000);
        route.observe(&buckets, 0, 200, 2_000_000_000);
        route.observe(&buckets, 2, 200, 1);
        route.observe(&buckets, 0, 404, 1);
        let mut seen = Vec::new();
        route.for_each_series(|method, status, counters| {
            let counts: Vec<u64> = counters.bucket_counts(buckets.len_with_inf()).collect();
            seen.push((method, status, counts, counters.sum_nanos()));
        });
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (0, 200, vec![1, 0, 1], 2_050_000_000),
                (0, 404, vec![1, 0, 0], 1),
                (2, 200, vec![1, 0, 0], 1),
            ]
        );
    }

    #[test]
    fn more_pairs_than_slots_spill_into_the_overflow_list() {
        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let route = RouteSeries::new(Arc::from("/r"));
        let pairs: Vec<(u8, u16)> = (0..10u8)
            .flat_map(|m| (100..110u16).map(move |s| (m, s)))
            .collect();
        assert!(pairs.len() > SERIES_SLOTS);
        for _ in 0..3 {
            for &(m, s) in &pairs {
                route.observe(&buckets, m, s, 1);
            }
        }
        let mut seen = Vec::new();
        route.for_each_series(|m, s, counters| {
            let count: u64 = counters.bucket_counts(buckets.len_with_inf()).sum();
            seen.push((m, s, count));
        });
        seen.sort();
        let expected: Vec<(u8, u16, u64)> = pairs.iter().map(|&(m, s)| (m, s, 3)).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn route_table_returns_one_entry_per_template() {
        let table = RouteTable::new("__unmatched__");
        let a = table.resolve(Some("/a/{id}"));
        let b = table.resolve(Some("/b"));
        assert_ne!(a, b);
        let owned = String::from("/a/{id}");
        assert_eq!(table.resolve(Some(&owned)), a, "compared by content");
        assert_eq!(&**table.get(a).label(), "/a/{id}");
        assert_eq!(&**table.get(table.resolve(None)).label(), "__unmatched__");
        assert_eq!(table.iter().count(), 3);
    }

    #[test]
    fn route_table_full_falls_back_to_unmatched() {
        let table = RouteTable::new("__unmatched__");
        for i in 0..ROUTE_SLOTS {
            let id = table.resolve(Some(&format!("/r{i}")));
            assert_ne!(id, RouteId::UNMATCHED);
        }
        assert_eq!(table.resolve(Some("/one-too-many")), RouteId::UNMATCHED);
        assert_eq!(table.iter().count(), ROUTE_SLOTS + 1);
    }
}
