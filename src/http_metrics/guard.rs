//! The per-request guard that records exactly once, when it is dropped.

use std::time::Duration;

use super::exemplar::TraceId;
use super::layer::State;
use super::shard::thread_shard;
use super::shared::Shared;
use super::sink::{LogExtra, LogState, RequestRecord, received_method};
use super::store::RouteId;
use super::{STATUS_CLIENT_CLOSED_REQUEST, STATUS_INTERNAL_ERROR};

/// Status value meaning "no response yet".
const NO_RESPONSE: u16 = 0;

/// Lives in the response future, then in the response body when the body
/// streams. Whoever drops it last (response ready, body finished, client gone)
/// records the request, so every started request is observed exactly once.
pub(crate) struct RequestGuard {
    /// A handle on the thread's shard, which keeps the state alive until the
    /// request is recorded even if the router is dropped first.
    state: Shared<State>,
    route: RouteId,
    method: u8,
    status: u16,
    /// Raw clock reading, see [`State::clock`].
    start: u64,
    /// This thread's shard, taken once per request.
    shard: usize,
    /// Only set when a request sink is configured and the request has a
    /// user id or a non-standard method.
    log: Option<Box<LogExtra>>,
    /// The request's trace id, kept as an exemplar of its bucket.
    trace_id: Option<TraceId>,
}

impl RequestGuard {
    /// Counts the request as started; `start` is the clock reading taken
    /// when the request came in.
    #[inline]
    pub(crate) fn start(
        state: Shared<State>,
        route: RouteId,
        method: u8,
        start: u64,
        log: Option<Box<LogExtra>>,
        trace_id: Option<TraceId>,
    ) -> Self {
        let shard = thread_shard();
        state.routes.get(route).start(shard, method);
        Self {
            state,
            route,
            method,
            status: NO_RESPONSE,
            start,
            shard,
            log,
            trace_id,
        }
    }

    /// Sets the status the request will be recorded with.
    #[inline]
    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for RequestGuard {
    #[inline]
    fn drop(&mut self) {
        let clock = &self.state.clock;
        let end = clock.raw();
        let nanos = clock.delta_as_nanos(self.start, end);
        let status = match self.status {
            NO_RESPONSE if std::thread::panicking() => STATUS_INTERNAL_ERROR,
            NO_RESPONSE => STATUS_CLIENT_CLOSED_REQUEST,
            status => status,
        };
        self.state.routes.get(self.route).observe(
            &self.state.buckets,
            self.shard,
            self.method,
            status,
            nanos,
            self.trace_id.as_ref().map(|id| {
                // Converted now, with the offset to the system clock as it is
                // (re-taken at most once a second): converted at each scrape,
                // the TSC's drift against the system clock moved the same
                // exemplar's timestamp, which Prometheus stores as another.
                (id, self.state.wall.unix_nanos_now(clock, end))
            }),
        );
        if let Some(log) = &self.state.log
            && log.sink.accepts()
        {
            let extra = self.log.take();
            self.send_record(log, extra, status, nanos, end);
        }
    }
}

impl RequestGuard {
    #[inline(never)]
    fn send_record(
        &self,
        log: &LogState,
        mut extra: Option<Box<LogExtra>>,
        status: u16,
        nanos: u64,
        end: u64,
    ) {
        log.sink.record(RequestRecord {
            route: self.state.routes.get(self.route).record_label(self.shard),
            method: received_method(self.method, extra.as_deref_mut()),
            status,
            duration: Duration::from_nanos(nanos),
            started_at: log.wall.time_of(&self.state.clock, self.start, end),
            user_id: extra.and_then(|mut l| l.user_id.take()),
        });
    }
}
