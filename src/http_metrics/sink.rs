//! The optional per-request log fed by the middleware.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, Method};

use super::clock::RawClock;
use super::store::{METHOD_OTHER, STANDARD_METHODS};

/// Receives one [`RequestRecord`] per finished request, for example to write
/// a request log.
///
/// `record` runs inline, when the request is recorded (response ready, body
/// finished, or request dropped), so it must be cheap and must not block or
/// panic: hand the record to a queue and do the I/O elsewhere. It receives
/// the record by value, so keeping it costs no copy.
pub trait RequestSink: Send + Sync + 'static {
    /// Called once per request, with the same duration and labels the
    /// histogram observed, unless [`accepts`](Self::accepts) said no.
    fn record(&self, record: RequestRecord);

    /// Asked once per finished request, before its record is built: `false`
    /// (for example a full queue, the drop counted by the sink) skips
    /// building and passing the record, so shedding load costs less than
    /// recording. The default accepts everything.
    fn accepts(&self) -> bool {
        true
    }
}

/// One finished request, as handed to a [`RequestSink`].
///
/// Building one allocates nothing unless the request carries a user id or a
/// non-standard method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The `http_route` label: the matched route template, or the unmatched
    /// label — never the raw path.
    pub route: RouteLabel,
    /// The request method as received (the histogram label folds
    /// non-standard methods into `_OTHER`).
    pub method: Method,
    /// The response status code; 499 when the client went away before a
    /// response was ready, 500 when the inner service failed or panicked.
    pub status: u16,
    /// Time from the middleware seeing the request to the response being
    /// complete (see the module documentation for what "complete" means).
    pub duration: Duration,
    /// Wall-clock time the request arrived, derived from the middleware's
    /// clock reading and an offset to the system clock re-taken once a
    /// second (no system call per request).
    pub started_at: SystemTime,
    /// The value of the configured user-id header, if it was present, valid
    /// visible ASCII and at most [`MAX_USER_ID_LEN`] bytes long.
    pub user_id: Option<String>,
}

/// The `http_route` label of a [`RequestRecord`]. Each thread shard has its
/// own copy of a route's label, on its own cache lines, so that recording
/// requests on several threads does not share one reference count.
#[derive(Clone)]
pub struct RouteLabel(Arc<AlignedLabel>);

#[repr(align(128))]
struct AlignedLabel(Box<str>);

impl RouteLabel {
    pub(crate) fn new(text: &str) -> Self {
        Self(Arc::new(AlignedLabel(Box::from(text))))
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        &self.0.0
    }
}

impl From<&str> for RouteLabel {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl std::ops::Deref for RouteLabel {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RouteLabel {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl PartialEq<str> for RouteLabel {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RouteLabel {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Longest user-id header value copied into a [`RequestRecord`]; longer
/// values are treated as absent.
pub const MAX_USER_ID_LEN: usize = 256;

/// The request log's settings, kept in the layer's shared state.
pub(crate) struct LogState {
    pub(crate) sink: Arc<dyn RequestSink>,
    pub(crate) user_id_header: Option<HeaderName>,
    pub(crate) wall: WallClock,
}

/// What a request keeps for the sink beyond what the histogram needs: only
/// built (and boxed, so the request guard grows by one pointer) for a
/// request with a user id or a non-standard method.
#[derive(Debug, Default)]
pub(crate) struct LogExtra {
    /// A method outside the standard set, as received.
    pub(crate) other_method: Option<Method>,
    pub(crate) user_id: Option<String>,
}

impl LogExtra {
    pub(crate) fn capture<B>(
        request: &http::Request<B>,
        method: u8,
        user_id_header: Option<&HeaderName>,
    ) -> Option<Box<Self>> {
        let user_id = user_id_header
            .and_then(|name| request.headers().get(name))
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= MAX_USER_ID_LEN)
            .map(str::to_owned);
        let other_method = (method == METHOD_OTHER).then(|| request.method().clone());
        (user_id.is_some() || other_method.is_some()).then(|| {
            Box::new(Self {
                other_method,
                user_id,
            })
        })
    }
}

/// The method as received, given its label index and what was captured.
pub(crate) fn received_method(index: u8, extra: Option<&mut LogExtra>) -> Method {
    match extra.and_then(|e| e.other_method.take()) {
        Some(method) => method,
        None => standard_method(index),
    }
}

/// The standard method of a label index (cloning one allocates nothing).
fn standard_method(index: u8) -> Method {
    STANDARD_METHODS
        .get(usize::from(index))
        .cloned()
        .unwrap_or_default()
}

/// Turns the middleware's raw clock readings into wall-clock time without a
/// system call per request: the offset between the wall clock and the raw
/// clock (scaled to nanoseconds) is taken once, then re-taken at most once a
/// second, so clock steps and calibration drift show within a second.
///
/// One atomic word holds the offset, so a reader never sees half of an
/// update; concurrent refreshes each store a valid offset.
pub(crate) struct WallClock {
    /// The system clock (`SystemTime::now`; a fake one in tests).
    system_time: fn() -> SystemTime,
    /// Wall-clock nanoseconds since the Unix epoch minus raw-clock
    /// nanoseconds, at the last refresh.
    offset: AtomicI64,
    /// Raw reading after which the offset is re-taken (compared raw, so the
    /// per-request check needs no conversion).
    refresh_after: AtomicU64,
    /// Raw ticks in one second.
    ticks_per_refresh: u64,
}

impl WallClock {
    pub(crate) fn new(clock: &RawClock) -> Self {
        Self::with_system_time(clock, SystemTime::now)
    }

    fn with_system_time(clock: &RawClock, system_time: fn() -> SystemTime) -> Self {
        // The raw clock's rate, from its own scaling of a large span.
        let span: u64 = 1 << 40;
        let nanos = u128::from(clock.delta_as_nanos(0, span).max(1));
        let ticks = u128::from(span) * 1_000_000_000 / nanos;
        let this = Self {
            system_time,
            offset: AtomicI64::new(0),
            refresh_after: AtomicU64::new(0),
            ticks_per_refresh: u64::try_from(ticks).unwrap_or(u64::MAX).max(1),
        };
        this.refresh(clock);
        this
    }

    /// The wall-clock time of the raw reading `at`, `now` being a later one.
    #[inline]
    pub(crate) fn time_of(&self, clock: &RawClock, at: u64, now: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_nanos_of(clock, at, now))
    }

    /// [`time_of`](Self::time_of) a reading taken just now, as nanoseconds
    /// since the Unix epoch: integer arithmetic only.
    #[inline]
    pub(crate) fn unix_nanos_now(&self, clock: &RawClock, now: u64) -> u64 {
        self.unix_nanos_of(clock, now, now)
    }

    /// Nanoseconds since the Unix epoch of the raw reading `at` (0 before
    /// it), `now` being a later one.
    #[inline]
    fn unix_nanos_of(&self, clock: &RawClock, at: u64, now: u64) -> u64 {
        if now >= self.refresh_after.load(Ordering::Relaxed) {
            self.refresh(clock);
        }
        let nanos = self
            .offset
            .load(Ordering::Relaxed)
            .saturating_add(raw_nanos(clock, at));
        u64::try_from(nanos).unwrap_or(0)
    }

    #[cold]
    fn refresh(&self, clock: &RawClock) {
        let wall = (self.system_time)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let raw = clock.raw();
        self.offset.store(
            wall.saturating_sub(raw_nanos(clock, raw)),
            Ordering::Relaxed,
        );
        self.refresh_after.store(
            raw.saturating_add(self.ticks_per_refresh),
            Ordering::Relaxed,
        );
    }
}

/// A raw reading as nanoseconds since the raw clock's zero.
#[inline]
fn raw_nanos(clock: &RawClock, raw: u64) -> i64 {
    i64::try_from(clock.delta_as_nanos(0, raw)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn user_id_is_taken_only_from_the_configured_header() {
        let header = HeaderName::from_static("x-user-id");
        let request = Request::post("/x")
            .header("x-user-id", "u-42")
            .header("x-other", "nope")
            .body(())
            .unwrap();
        let mut extra = LogExtra::capture(&request, 2, Some(&header)).unwrap();
        assert_eq!(extra.user_id.as_deref(), Some("u-42"));
        assert_eq!(received_method(2, Some(&mut extra)), Method::POST);
        // Nothing to keep: nothing allocated.
        assert!(LogExtra::capture(&request, 2, None).is_none());
    }

    #[test]
    fn oversized_or_non_ascii_user_ids_are_dropped() {
        let header = HeaderName::from_static("x-user-id");
        let long = "a".repeat(MAX_USER_ID_LEN + 1);
        let request = Request::get("/x")
            .header("x-user-id", long.as_str())
            .body(())
            .unwrap();
        assert!(LogExtra::capture(&request, 0, Some(&header)).is_none());
        let request = Request::get("/x")
            .header(
                "x-user-id",
                http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            )
            .body(())
            .unwrap();
        assert!(LogExtra::capture(&request, 0, Some(&header)).is_none());
    }

    #[test]
    fn methods_come_back_as_received() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        for method in STANDARD_METHODS.into_iter().chain([purge]) {
            let index = super::super::store::method_index(&method);
            let request = Request::builder().method(method.clone()).body(()).unwrap();
            let mut extra = LogExtra::capture(&request, index, None);
            assert_eq!(received_method(index, extra.as_deref_mut()), method);
        }
    }

    #[test]
    fn wall_clock_refreshes_once_a_second_of_the_tsc() {
        let clock = RawClock::tsc();
        let wall = WallClock::new(&clock);
        // The offset is re-taken every second of the raw clock.
        let second = clock.delta_as_nanos(0, wall.ticks_per_refresh);
        assert!((999_000_000..=1_001_000_000).contains(&second), "{second}");
    }

    /// The wall-clock time of a raw reading: offsets and refreshes checked
    /// against a raw clock and a system clock both set by the test, so every
    /// expected time is exact.
    #[test]
    fn wall_clock_converts_readings_with_the_offset_of_its_last_refresh() {
        static SYSTEM_NANOS: AtomicU64 = AtomicU64::new(0);
        fn system_time() -> SystemTime {
            UNIX_EPOCH + Duration::from_nanos(SYSTEM_NANOS.load(Ordering::Relaxed))
        }
        let at = |nanos: u64| UNIX_EPOCH + Duration::from_nanos(nanos);
        const SECOND: u64 = 1_000_000_000;
        // Wall clock at 1,700,000,000 s when the raw clock reads 5 s.
        let wall_start = 1_700_000_000 * SECOND;
        let raw = Arc::new(AtomicU64::new(5 * SECOND));
        let clock = RawClock::manual(Arc::clone(&raw));
        SYSTEM_NANOS.store(wall_start, Ordering::Relaxed);
        let wall = WallClock::with_system_time(&clock, system_time);
        assert_eq!(wall.ticks_per_refresh, SECOND, "nanosecond readings");

        // Within the second: the first offset, whatever the system clock
        // says now (it is read only on refresh).
        SYSTEM_NANOS.store(wall_start + 999 * SECOND, Ordering::Relaxed);
        let (start, now) = (5 * SECOND + 250, 5 * SECOND + 700_000_000);
        assert_eq!(wall.time_of(&clock, start, now), at(wall_start + 250));
        // A reading from before the clock was made converts too.
        assert_eq!(
            wall.time_of(&clock, 4 * SECOND, now),
            at(wall_start - SECOND)
        );

        // A second later the offset is re-taken, at the raw clock's
        // current reading: the system clock was stepped 2 s forward.
        raw.store(6 * SECOND, Ordering::Relaxed);
        SYSTEM_NANOS.store(wall_start + 3 * SECOND, Ordering::Relaxed);
        assert_eq!(
            wall.time_of(&clock, 6 * SECOND - 100, 6 * SECOND),
            at(wall_start + 3 * SECOND - 100)
        );
        // And kept for the next second.
        SYSTEM_NANOS.store(0, Ordering::Relaxed);
        assert_eq!(
            wall.time_of(&clock, 6 * SECOND + 10, 6 * SECOND + 20),
            at(wall_start + 3 * SECOND + 10)
        );
    }
}
