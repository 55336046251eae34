//! Lock-free storage behind the three metric families.
//!
//! Layout: one [`RouteSeries`] per route template, found through an
//! insert-only open-addressing table ([`RouteTable`]); inside it one
//! [`SeriesCounters`] per (method, status) pair, again in an insert-only table.
//! Entries are created on first sight and never removed, so the hot path is a
//! hash, a few atomic loads and three `fetch_add`s — no lock.
//!
//! Every counter is sharded by thread (see `shard.rs`), each shard on its
//! own 128-byte block, so threads serving the same route do not bounce cache
//! lines between cores; scrapes add the shards up.
//!
//! Why not `Family<_, Histogram>`: prometheus-client's histogram takes a
//! mutex per observation, its family a read lock shared by every series, and
//! building the owned label set allocates. `benches/http_metrics.rs` measures
//! that straightforward layer against this one; see `BENCHMARKS.md`.

use axum::extract::MatchedPath;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::Method;

use super::exemplar::{ExemplarSlots, TraceId};
use super::native;
use super::shard::thread_shard;
use super::sink::RouteLabel;

/// A request's trace id and when it finished (Unix nanoseconds), to keep as
/// its bucket's exemplar.
pub(crate) type Exemplar<'a> = Option<(&'a TraceId, u64)>;

/// Number of method label values: the nine standard methods and `_OTHER`.
pub(crate) const METHOD_COUNT: usize = 10;

/// `http_request_method` label values, indexed by [`method_index`].
pub(crate) const METHOD_LABELS: [&str; METHOD_COUNT] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// The standard methods, indexed by [`method_index`].
pub(crate) const STANDARD_METHODS: [Method; METHOD_COUNT - 1] = [
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

/// Label index of `_OTHER`.
pub(crate) const METHOD_OTHER: u8 = 9;

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
        METHOD_OTHER
    }
}

/// Histogram bucket layout: the classic upper bounds, in seconds for the
/// exposition and in nanoseconds for the hot path (integer comparisons, no
/// float conversion), and whether native buckets (`native.rs`) are kept.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Whether each series also counts native (exponential) buckets.
    pub(crate) native: bool,
    bounds: Box<[f64]>,
    bounds_nanos: Box<[u64]>,
    /// `first_candidate[k]`: how many bounds lie below `2^(k-1)`, the least
    /// duration of bit length `k` — where the search for such a duration
    /// may start.
    first_candidate: [u8; 65],
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
        Self::from_bounds(kept)
    }

    /// Only the `+Inf` bucket: the classic buckets turned off.
    pub(crate) fn inf_only() -> Self {
        Self::from_bounds(Vec::new())
    }

    /// Also keep native buckets.
    pub(crate) fn with_native(mut self, native: bool) -> Self {
        self.native = native;
        self
    }

    fn from_bounds(mut kept: Vec<f64>) -> Self {
        // The bucket index must fit the start table's `u8`s; a histogram
        // with hundreds of buckets is a configuration mistake anyway.
        kept.truncate(usize::from(u8::MAX));
        let bounds_nanos: Box<[u64]> = kept.iter().map(|&b| seconds_to_nanos(b)).collect();
        let first_candidate = std::array::from_fn(|bit_length| {
            let least = match bit_length {
                0 => 0,
                k => 1u64 << (k - 1),
            };
            let below = bounds_nanos.iter().filter(|&&bound| bound < least).count();
            u8::try_from(below).unwrap_or(u8::MAX)
        });
        Self {
            native: false,
            bounds: kept.into_boxed_slice(),
            bounds_nanos,
            first_candidate,
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
        // Every bound below the least duration of this bit length is below
        // `nanos`, so the scan starts there: bucket bounds are spread on a
        // roughly logarithmic scale, which leaves one or two comparisons
        // instead of one per bound (see `BENCHMARKS.md`).
        let bit_length = (u64::BITS - nanos.leading_zeros()) as usize;
        let mut index = self
            .first_candidate
            .get(bit_length)
            .map_or(0, |&first| usize::from(first));
        while self
            .bounds_nanos
            .get(index)
            .is_some_and(|&bound| bound < nanos)
        {
            index += 1;
        }
        index
    }
}

fn seconds_to_nanos(seconds: f64) -> u64 {
    // `as` saturates: negative bounds become 0, huge ones u64::MAX.
    (seconds * 1e9).round() as u64
}

const COUNTERS_PER_BLOCK: usize = 16;

/// 128 bytes: a cache line plus its prefetch buddy, so counters of different
/// shards or series never share a line.
#[repr(align(128))]
pub(crate) struct CounterBlock([AtomicU64; COUNTERS_PER_BLOCK]);

impl CounterBlock {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// One histogram series. Per shard, counter 0 is the sum in nanoseconds
/// (an exact integer `fetch_add`, no CAS loop on float bits) and counters
/// `1..` are the non-cumulative bucket counts, `+Inf` last. The count is their
/// sum, so `_count` always equals the `+Inf` bucket.
///
/// Native buckets, when kept, get one array of [`native::SLOTS`] counters
/// (3 KB) per shard, allocated on the shard's first observation of the
/// series: a series served by one or two threads pays for those only, and
/// after each thread's first request the hot path allocates nothing (an
/// allocation per 16-counter block was tried: latencies wandering into a
/// new block allocated mid-traffic, `tests/http_metrics_alloc.rs`).
pub(crate) struct SeriesCounters {
    blocks: Box<[CounterBlock]>,
    blocks_per_shard: usize,
    shard_mask: usize,
    bucket_count: usize,
    native: Option<Box<[OnceLock<Box<NativeShard>>]>>,
    exemplars: OnceLock<Box<ExemplarSlots>>,
}

/// One shard's native bucket counters, on cache lines of their own.
#[repr(align(128))]
struct NativeShard([AtomicU64; native::SLOTS]);

impl SeriesCounters {
    fn new(buckets: &Buckets, shards: usize) -> Self {
        let bucket_count = buckets.len_with_inf();
        let blocks_per_shard = (1 + bucket_count).div_ceil(COUNTERS_PER_BLOCK);
        Self {
            blocks: (0..blocks_per_shard * shards)
                .map(|_| CounterBlock::new())
                .collect(),
            blocks_per_shard,
            shard_mask: shards - 1,
            bucket_count,
            native: buckets
                .native
                .then(|| (0..shards).map(|_| OnceLock::new()).collect()),
            exemplars: OnceLock::new(),
        }
    }

    #[inline]
    fn counter(&self, shard: usize, index: usize) -> Option<&AtomicU64> {
        let block = shard * self.blocks_per_shard + index / COUNTERS_PER_BLOCK;
        self.blocks
            .get(block)
            .map(|block| &block.0[index % COUNTERS_PER_BLOCK])
    }

    #[inline]
    fn observe(&self, shard: usize, bucket: usize, nanos: u64, exemplar: Exemplar<'_>) {
        let shard = shard & self.shard_mask;
        if let Some(sum) = self.counter(shard, 0) {
            sum.fetch_add(nanos, Ordering::Relaxed);
        }
        if let Some(count) = self.counter(shard, 1 + bucket) {
            // Release pairs with the Acquire in `bucket_counts`, so a scrape
            // that sees this request finished also sees it started.
            count.fetch_add(1, Ordering::Release);
        }
        if let Some(native) = &self.native
            && let Some(cell) = native.get(shard)
        {
            let counters = cell
                .get_or_init(|| Box::new(NativeShard(std::array::from_fn(|_| AtomicU64::new(0)))));
            if let Some(count) = counters.0.get(native::slot(nanos)) {
                // Release after the classic count: a scrape reading native
                // counts first (Acquire) then classic ones sees every request
                // it counted natively in the classic buckets too.
                count.fetch_add(1, Ordering::Release);
            }
        }
        if let Some((id, at)) = exemplar {
            self.keep_exemplar(bucket, id, nanos, at);
        }
    }

    #[inline(never)]
    fn keep_exemplar(&self, bucket: usize, id: &TraceId, nanos: u64, at: u64) {
        self.exemplars
            .get_or_init(|| Box::new(ExemplarSlots::new(self.bucket_count)))
            .record(bucket, id, nanos, at);
    }

    /// Native bucket counts by slot (`native::slot`), when native buckets
    /// are kept.
    pub(crate) fn native_counts(&self) -> Option<Vec<u64>> {
        let native = self.native.as_ref()?;
        let mut counts = vec![0u64; native::SLOTS];
        for shard in native.iter().filter_map(OnceLock::get) {
            for (total, counter) in counts.iter_mut().zip(&shard.0) {
                *total += counter.load(Ordering::Acquire);
            }
        }
        Some(counts)
    }

    /// `(classic bucket index, trace id, latency in ns, Unix nanoseconds of
    /// the end)` of the kept exemplars.
    pub(crate) fn exemplars(&self) -> Vec<(usize, String, u64, u64)> {
        self.exemplars
            .get()
            .map_or_else(Vec::new, |slots| slots.snapshot())
    }

    fn shards(&self) -> impl Iterator<Item = usize> {
        0..=self.shard_mask
    }

    /// Sum of the observed durations, in nanoseconds.
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.shards()
            .filter_map(|shard| self.counter(shard, 0))
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Non-cumulative bucket counts, `+Inf` last.
    pub(crate) fn bucket_counts(&self, bucket_count: usize) -> Vec<u64> {
        (1..=bucket_count)
            .map(|i| {
                self.shards()
                    .filter_map(|shard| self.counter(shard, i))
                    .map(|c| c.load(Ordering::Acquire))
                    .sum()
            })
            .collect()
    }
}

/// Size of a route's (method, status) table. A route rarely answers with more
/// than a dozen pairs; the rest go to a mutex-protected overflow list.
const SERIES_SLOTS: usize = 64;

/// Requests started per method, one block per shard.
#[repr(align(128))]
struct StartedCounters {
    counts: [AtomicU64; METHOD_COUNT],
    /// This shard's copy of the route's label for request records: cloning
    /// it writes a reference count no other shard's thread writes.
    label: RouteLabel,
    /// Address of the `MatchedPath` text this shard's thread last resolved
    /// to the route the long way, see [`RouteTable::resolve_matched`]. Kept
    /// per shard so that repeated misses (nested routers, a full cache) write
    /// only the thread's own cache line.
    last_address: AtomicU64,
}

/// Everything recorded for one route template.
pub(crate) struct RouteSeries {
    label: Arc<str>,
    started: Box<[StartedCounters]>,
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
    fn new(label: Arc<str>, shards: usize) -> Self {
        Self {
            started: (0..shards)
                .map(|_| StartedCounters {
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                    label: RouteLabel::new(&label),
                    last_address: AtomicU64::new(0),
                })
                .collect(),
            keys: std::array::from_fn(|_| AtomicU16::new(0)),
            series: std::array::from_fn(|_| OnceLock::new()),
            overflow: Mutex::new(Vec::new()),
            label,
        }
    }

    /// The `http_route` label value.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The label for a request record made on a thread of `shard`.
    pub(crate) fn record_label(&self, shard: usize) -> RouteLabel {
        self.shard_block(shard)
            .map_or_else(|| RouteLabel::new(&self.label), |block| block.label.clone())
    }

    /// Counts a request as started. There is no matching decrement: the
    /// in-flight gauge is `started - finished`, where finished is the sum of
    /// the histogram counts, which saves one write per request.
    #[inline]
    pub(crate) fn start(&self, shard: usize, method: u8) {
        if let Some(started) = self
            .shard_block(shard)
            .and_then(|counters| counters.counts.get(usize::from(method)))
        {
            started.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `address` as the last one this thread resolved the long way
    /// and returns the one before.
    fn swap_last_address(&self, shard: usize, address: u64) -> u64 {
        self.shard_block(shard).map_or(0, |counters| {
            counters.last_address.swap(address, Ordering::Relaxed)
        })
    }

    /// The per-shard block of a thread's shard number (before masking).
    #[inline]
    fn shard_block(&self, shard: usize) -> Option<&StartedCounters> {
        self.started.get(shard & (self.started.len() - 1))
    }

    /// Requests started with this method so far.
    pub(crate) fn started(&self, method: usize) -> u64 {
        self.started
            .iter()
            .filter_map(|counters| counters.counts.get(method))
            .map(|c| c.load(Ordering::Acquire))
            .sum()
    }

    /// Records one finished request.
    #[inline]
    pub(crate) fn observe(
        &self,
        buckets: &Buckets,
        shard: usize,
        method: u8,
        status: u16,
        nanos: u64,
        exemplar: Exemplar<'_>,
    ) {
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
                    .get_or_init(|| SeriesCounters::new(buckets, self.started.len()))
                    .observe(shard, bucket, nanos, exemplar);
                return;
            }
            slot = (slot + 1) % SERIES_SLOTS;
        }
        self.observe_overflow(buckets, key, bucket, nanos, exemplar);
    }

    #[cold]
    fn observe_overflow(
        &self,
        buckets: &Buckets,
        key: u16,
        bucket: usize,
        nanos: u64,
        exemplar: Exemplar<'_>,
    ) {
        let mut overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, series)) = overflow.iter().find(|(k, _)| *k == key) {
            series.observe(0, bucket, nanos, exemplar);
        } else {
            let series = SeriesCounters::new(buckets, 1);
            series.observe(0, bucket, nanos, exemplar);
            overflow.push((key, series));
        }
    }

    /// Calls `f(method, status, counters)` for every series of this route.
    ///
    /// A slot's series is read before its key. Whoever initialises a slot's
    /// series has first seen the slot's key set to its own (claimed it with
    /// the CAS in [`observe`](Self::observe), or Acquire-loaded it), and
    /// `OnceLock` publishes the initialisation with Release: a walk that sees
    /// the series therefore sees its key. Read the other way round, a walk
    /// racing a series' first observation could load the key while still 0,
    /// then find the series, and expose a request under method 0 (`GET`) and
    /// status 0 — which also moved it between methods in the in-flight gauge.
    /// The writer's order is untouched, so the hot path costs the same.
    pub(crate) fn for_each_series(&self, mut f: impl FnMut(u8, u16, &SeriesCounters)) {
        for (key, series) in self.keys.iter().zip(&self.series) {
            let Some(counters) = series.get() else {
                continue;
            };
            let key = key.load(Ordering::Acquire);
            debug_assert_ne!(key, 0, "a series exists only once its key is set");
            if key != 0 {
                f((key >> 10) as u8, key & 0x3ff, counters);
            }
        }
        let overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, counters) in overflow.iter() {
            f((key >> 10) as u8, key & 0x3ff, counters);
        }
    }
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
    shards: usize,
    /// Routes by the address of axum's `MatchedPath` text: axum hands every
    /// request of a route a clone of the same `Arc<str>`, so comparing two
    /// pointers replaces hashing and comparing the template (~20 ns of the
    /// layer's ~100 ns in the layer benchmark, see BENCHMARKS.md). Each slot
    /// holds the `MatchedPath` it was filled with, which keeps that text
    /// alive: an equal pointer always means the same template. Templates
    /// axum builds per request (nested routers) or slot collisions miss and
    /// take the table above.
    by_address: Box<[OnceLock<(MatchedPath, RouteId)>]>,
}

/// Where a route's entry is in its [`RouteTable`]: a slot, or the
/// unmatched entry. Requests carry this rather than a reference, as the
/// table lives behind the layer's shared handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RouteId(u16);

impl RouteId {
    /// The unmatched route's entry.
    pub(crate) const UNMATCHED: Self = Self(ROUTE_SLOTS as u16);
}

/// Slots of [`RouteTable::by_address`] (a power of two).
const ADDRESS_SLOTS_LOG2: u32 = 6;

impl RouteTable {
    /// `shards` must be a power of two.
    pub(crate) fn new(unmatched_label: &str, shards: usize) -> Self {
        Self {
            slots: (0..ROUTE_SLOTS).map(|_| OnceLock::new()).collect(),
            unmatched: RouteSeries::new(Arc::from(unmatched_label), shards),
            shards,
            by_address: (0..1 << ADDRESS_SLOTS_LOG2)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The entry for a request's `MatchedPath` (`None`: the unmatched route).
    #[inline]
    pub(crate) fn resolve_matched(&self, matched: Option<&MatchedPath>) -> RouteId {
        let Some(matched) = matched else {
            return RouteId::UNMATCHED;
        };
        let text = matched.as_str();
        let address = text.as_ptr() as u64;
        let index = address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ADDRESS_SLOTS_LOG2);
        let slot = self.by_address.get(index as usize);
        if let Some((cached, id)) = slot.and_then(OnceLock::get)
            && std::ptr::eq(cached.as_str(), text)
        {
            return *id;
        }
        self.resolve_and_cache(matched, slot)
    }

    /// The slow path of [`resolve_matched`](Self::resolve_matched): kept out
    /// of line so that the per-request path stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn resolve_and_cache(
        &self,
        matched: &MatchedPath,
        slot: Option<&OnceLock<(MatchedPath, RouteId)>>,
    ) -> RouteId {
        let text = matched.as_str();
        let address = text.as_ptr() as u64;
        let id = self.resolve_id(Some(text));
        // Cached once the same address comes twice in a row for this route
        // on one thread, so that templates axum builds per request (nested
        // routers) never take a slot. First come, first served; a taken slot
        // keeps its route, and then nothing is written here at all.
        if let Some(slot) = slot
            && slot.get().is_none()
            && self.get(id).swap_last_address(thread_shard(), address) == address
        {
            let _ = slot.set((matched.clone(), id));
        }
        id
    }

    /// The entry of `id`.
    #[inline]
    pub(crate) fn get(&self, id: RouteId) -> &RouteSeries {
        self.slots
            .get(usize::from(id.0))
            .and_then(OnceLock::get)
            .map_or(&self.unmatched, |entry| &**entry)
    }

    /// Finds (or, on first sight, creates) the entry for a route template;
    /// `None` is the unmatched route.
    #[cfg(test)]
    pub(crate) fn resolve(&self, template: Option<&str>) -> &RouteSeries {
        self.get(self.resolve_id(template))
    }

    fn resolve_id(&self, template: Option<&str>) -> RouteId {
        let Some(template) = template else {
            return RouteId::UNMATCHED;
        };
        let mut slot = (hash(template.as_bytes()) as usize) % ROUTE_SLOTS;
        for _ in 0..ROUTE_SLOTS {
            let cell = &self.slots[slot];
            let entry = match cell.get() {
                Some(entry) => entry,
                None => cell
                    .get_or_init(|| Box::new(RouteSeries::new(Arc::from(template), self.shards))),
            };
            if *entry.label == *template {
                return RouteId(slot as u16);
            }
            slot = (slot + 1) % ROUTE_SLOTS;
        }
        table_full_warning();
        RouteId::UNMATCHED
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

/// Hashes a route template from its length and three 8-byte windows (start,
/// middle, end): a handful of instructions whatever the length; a
/// word-at-a-time hash made the route lookup one of the layer's largest
/// costs in the benchmark's profile.
/// Templates sharing all three windows and the length merely collide and are
/// told apart by the content comparison. Keys come from the application's
/// route table, never from clients, so no keyed hash is needed.
#[inline]
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let window = |at: usize| {
        let mut word = [0u8; 8];
        let end = bytes.len().min(at + 8);
        if let Some(chunk) = bytes.get(at..end) {
            word[..chunk.len()].copy_from_slice(chunk);
        }
        u64::from_le_bytes(word)
    };
    let n = bytes.len();
    let (first, middle, last) = if n > 8 {
        (window(0), window((n - 8) / 2), window(n - 8))
    } else {
        (window(0), 0, 0)
    };
    let h = (first ^ middle.rotate_left(21) ^ last.rotate_left(42) ^ n as u64).wrapping_mul(K);
    // The high bits are the well-mixed ones.
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const DEFAULT: [f64; 2] = [0.1, 1.0];

    #[test]
    fn standard_methods_have_their_own_label_and_others_collapse() {
        for method in &STANDARD_METHODS {
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
    fn bucket_index_agrees_with_counting_the_bounds_below() {
        let configs: [&[f64]; 4] = [
            &crate::http_metrics::DEFAULT_BUCKETS,
            &[1e-9, 2e-9, 3e-9, 4e-9, 1.0, 1.0 + 1e-9],
            &[0.0, 1e-6, 0.3, 0.30000001, 18.0, 1e9],
            &[0.001],
        ];
        for bounds in configs {
            let buckets = Buckets::new(bounds, &DEFAULT);
            let mut probes = vec![0, 1, 2, 3, 4, 5, u64::MAX - 1, u64::MAX];
            for &bound in buckets.bounds_nanos.iter() {
                probes.extend([bound.saturating_sub(1), bound, bound.saturating_add(1)]);
            }
            for shift in 0..64 {
                probes.extend([(1u64 << shift) - 1, 1 << shift, (1 << shift) + 1]);
            }
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                probes.push(x >> (x % 64));
            }
            for nanos in probes {
                let expected = buckets.bounds_nanos.iter().filter(|&&b| b < nanos).count();
                assert_eq!(buckets.index(nanos), expected, "{bounds:?} at {nanos} ns");
            }
        }
    }

    #[test]
    fn buckets_are_sorted_deduplicated_and_finite() {
        let buckets = Buckets::new(&[1.0, f64::NAN, 0.5, f64::INFINITY, 0.5], &DEFAULT);
        assert_eq!(buckets.bounds(), &[0.5, 1.0]);
        let fallback = Buckets::new(&[f64::NAN], &DEFAULT);
        assert_eq!(fallback.bounds(), &DEFAULT);
    }

    fn snapshot(route: &RouteSeries, buckets: &Buckets) -> Vec<(u8, u16, Vec<u64>, u64)> {
        let mut seen = Vec::new();
        route.for_each_series(|method, status, counters| {
            let counts = counters.bucket_counts(buckets.len_with_inf());
            seen.push((method, status, counts, counters.sum_nanos()));
        });
        seen.sort();
        seen
    }

    #[test]
    fn series_are_kept_apart_by_method_and_status() {
        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let route = RouteSeries::new(Arc::from("/r"), 4);
        route.observe(&buckets, thread_shard(), 0, 200, 50_000_000, None);
        route.observe(&buckets, thread_shard(), 0, 200, 2_000_000_000, None);
        route.observe(&buckets, thread_shard(), 2, 200, 1, None);
        route.observe(&buckets, thread_shard(), 0, 404, 1, None);
        assert_eq!(
            snapshot(&route, &buckets),
            vec![
                (0, 200, vec![1, 0, 1], 2_050_000_000),
                (0, 404, vec![1, 0, 0], 1),
                (2, 200, vec![1, 0, 0], 1),
            ]
        );
    }

    #[test]
    fn shards_written_by_different_threads_add_up() {
        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let route = RouteSeries::new(Arc::from("/r"), 4);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        route.start(thread_shard(), 0);
                        route.observe(&buckets, thread_shard(), 0, 200, 3, None);
                    }
                });
            }
        });
        assert_eq!(route.started(0), 6000);
        assert_eq!(
            snapshot(&route, &buckets),
            vec![(0, 200, vec![6000, 0, 0], 18_000)]
        );
    }

    #[test]
    fn more_pairs_than_slots_spill_into_the_overflow_list() {
        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let route = RouteSeries::new(Arc::from("/r"), 2);
        let pairs: Vec<(u8, u16)> = (0..10u8)
            .flat_map(|m| (100..110u16).map(move |s| (m, s)))
            .collect();
        assert!(pairs.len() > SERIES_SLOTS);
        for _ in 0..3 {
            for &(m, s) in &pairs {
                route.observe(&buckets, thread_shard(), m, s, 1, None);
            }
        }
        let seen: Vec<(u8, u16, u64)> = snapshot(&route, &buckets)
            .into_iter()
            .map(|(m, s, counts, _)| (m, s, counts.iter().sum()))
            .collect();
        let expected: Vec<(u8, u16, u64)> = pairs.iter().map(|&(m, s)| (m, s, 3)).collect();
        assert_eq!(seen, expected);
    }

    /// A scrape that walks a route while its first observations are being
    /// recorded sees only series some request produced, and never more
    /// finished requests than started ones. The race is narrow (a writer
    /// must claim and fill a slot between a walk reading the slot's key and
    /// its series), so writers fill fresh routes in rounds, with more
    /// threads than the machine has cores, for `OKR_RACE_TEST_MILLIS`
    /// (default 1 s). Reading the key first failed this within 100 ms.
    #[test]
    fn scrapes_racing_first_observations_see_only_produced_series() {
        use std::collections::HashSet;
        use std::sync::atomic::AtomicBool;
        use std::sync::{Barrier, RwLock};
        use std::time::{Duration, Instant};

        const WRITERS: usize = 3;
        const READERS: usize = 2;
        const KEYS_PER_WRITER: u16 = 30;
        let budget = Duration::from_millis(
            std::env::var("OKR_RACE_TEST_MILLIS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
        );
        // (method, status) pairs the writers record: never GET (index 0)
        // and never status 0, so a key read as 0 shows up as both.
        let key_of = |writer: usize, i: u16| (1 + (i % 9) as u8, 200 + 100 * writer as u16 + i);
        let produced: HashSet<(u8, u16)> = (0..WRITERS)
            .flat_map(|w| (0..KEYS_PER_WRITER).map(move |i| key_of(w, i)))
            .collect();
        assert!(
            produced.len() > SERIES_SLOTS,
            "the overflow list takes part too"
        );

        let buckets = Buckets::new(&DEFAULT, &DEFAULT);
        let current = RwLock::new(Arc::new(RouteSeries::new(Arc::from("/r"), 4)));
        let round_start = Barrier::new(WRITERS);
        let round_end = Barrier::new(WRITERS);
        let done = AtomicBool::new(false);
        let deadline = Instant::now() + budget;
        let failures = Mutex::new(Vec::<String>::new());
        let fail = |failure: String| {
            let mut failures = failures.lock().unwrap();
            if failures.len() < 100 {
                failures.push(failure);
            }
        };
        let scrapes = AtomicUsize::new(0);
        let rounds = AtomicUsize::new(0);

        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                let (buckets, current, done) = (&buckets, &current, &done);
                let (round_start, round_end, rounds) = (&round_start, &round_end, &rounds);
                scope.spawn(move || {
                    loop {
                        if writer == 0 {
                            let fresh = RouteSeries::new(Arc::from("/r"), 4);
                            *current.write().unwrap() = Arc::new(fresh);
                            rounds.fetch_add(1, Ordering::Relaxed);
                            if Instant::now() >= deadline {
                                done.store(true, Ordering::Relaxed);
                            }
                        }
                        round_start.wait();
                        if done.load(Ordering::Relaxed) {
                            return;
                        }
                        let route = Arc::clone(&current.read().unwrap());
                        let shard = thread_shard();
                        for i in 0..KEYS_PER_WRITER {
                            let (method, status) = key_of(writer, i);
                            route.start(shard, method);
                            route.observe(buckets, shard, method, status, 1_000, None);
                        }
                        round_end.wait();
                    }
                });
            }
            for _ in 0..READERS {
                let (buckets, current, done) = (&buckets, &current, &done);
                let (produced, fail, scrapes) = (&produced, &fail, &scrapes);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let route = Arc::clone(&current.read().unwrap());
                        // As the exposition does: finished first, then started.
                        let mut finished = [0u64; METHOD_COUNT];
                        route.for_each_series(|method, status, counters| {
                            if !produced.contains(&(method, status)) {
                                fail(format!("phantom series: method {method}, status {status}"));
                            }
                            if let Some(total) = finished.get_mut(usize::from(method)) {
                                *total += counters
                                    .bucket_counts(buckets.len_with_inf())
                                    .iter()
                                    .sum::<u64>();
                            }
                        });
                        for (method, &finished) in finished.iter().enumerate() {
                            let started = route.started(method);
                            if finished > started {
                                fail(format!(
                                    "method {method}: {finished} finished, {started} started"
                                ));
                            }
                        }
                        scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "bad scrapes among {} over {} rounds: {:?}",
            scrapes.load(Ordering::Relaxed),
            rounds.load(Ordering::Relaxed),
            &failures[..failures.len().min(5)],
        );
        assert!(scrapes.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn route_table_returns_one_entry_per_template() {
        let table = RouteTable::new("__unmatched__", 1);
        let a = table.resolve(Some("/a/{id}"));
        let b = table.resolve(Some("/b"));
        assert!(!std::ptr::eq(a, b));
        let owned = String::from("/a/{id}");
        assert!(
            std::ptr::eq(table.resolve(Some(&owned)), a),
            "compared by content"
        );
        assert_eq!(&**a.label(), "/a/{id}");
        assert_eq!(&**table.resolve(None).label(), "__unmatched__");
        assert_eq!(table.iter().count(), 3);
    }

    #[test]
    fn similar_templates_hash_apart() {
        let templates = [
            "/",
            "/a",
            "/api/followups",
            "/api/followups/{id}",
            "/api/followups/{id}/analytics",
            "/api/followups/{id}/publish",
            "/api/followups/{id}/visits",
            "/api/okr/report",
            "/api/okr/creation-time",
            "/api/okr/next-action",
        ];
        let mut slots: Vec<u64> = templates.iter().map(|t| hash(t.as_bytes())).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), templates.len());
    }

    #[test]
    fn route_table_full_falls_back_to_unmatched() {
        let table = RouteTable::new("__unmatched__", 1);
        for i in 0..ROUTE_SLOTS {
            let route = table.resolve(Some(&format!("/r{i}")));
            assert_eq!(&**route.label(), format!("/r{i}"));
        }
        let overflowing = table.resolve(Some("/one-too-many"));
        assert_eq!(&**overflowing.label(), "__unmatched__");
        assert_eq!(table.iter().count(), ROUTE_SLOTS + 1);
    }
}
