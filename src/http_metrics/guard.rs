//! The per-request guard that records exactly once, when it is dropped.

use std::sync::Arc;
use std::time::Duration;

use super::layer::State;
use super::sink::{LogContext, RequestRecord, RequestSink};
use super::store::{RouteSeries, thread_shard};
use super::{STATUS_CLIENT_CLOSED_REQUEST, STATUS_INTERNAL_ERROR};

/// Status value meaning "no response yet".
const NO_RESPONSE: u16 = 0;

/// What a request keeps for the request log; only built when a sink is set,
/// and boxed so that requests without a sink carry one pointer, not the whole
/// context (the guard is moved several times per request).
pub(crate) struct RequestLog {
    pub(crate) sink: Arc<dyn RequestSink>,
    pub(crate) context: LogContext,
}

/// Lives in the response future, then in the response body when the body
/// streams. Whoever drops it last (response ready, body finished, client gone)
/// records the request, so every started request is observed exactly once.
pub(crate) struct RequestGuard {
    state: &'static State,
    route: &'static RouteSeries,
    method: u8,
    status: u16,
    /// Raw clock reading, see [`State::clock`].
    start: u64,
    log: Option<Box<RequestLog>>,
}

impl RequestGuard {
    /// Counts the request as started and starts its clock.
    #[inline]
    pub(crate) fn start(
        state: &'static State,
        route: &'static RouteSeries,
        method: u8,
        log: Option<Box<RequestLog>>,
    ) -> Self {
        route.start(thread_shard(), method);
        Self {
            state,
            route,
            method,
            status: NO_RESPONSE,
            start: state.clock.raw(),
            log,
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
        let nanos = clock.delta_as_nanos(self.start, clock.raw());
        let status = match self.status {
            NO_RESPONSE if std::thread::panicking() => STATUS_INTERNAL_ERROR,
            NO_RESPONSE => STATUS_CLIENT_CLOSED_REQUEST,
            status => status,
        };
        self.route
            .observe(&self.state.buckets, self.method, status, nanos);
        if let Some(log) = self.log.take() {
            send_record(self.route, *log, status, nanos);
        }
    }
}

#[cold]
fn send_record(route: &RouteSeries, log: RequestLog, status: u16, nanos: u64) {
    log.sink.record(&RequestRecord {
        route: Arc::clone(route.label()),
        method: log.context.method,
        status,
        duration: Duration::from_nanos(nanos),
        started_at: log.context.started_at,
        user_id: log.context.user_id,
    });
}
