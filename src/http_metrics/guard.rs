//! The per-request guard that records exactly once, when it is dropped.

use std::sync::Arc;
use std::time::Instant;

use super::layer::Shared;
use super::sink::{LogContext, RequestRecord};
use super::store::RouteId;
use super::{STATUS_CLIENT_CLOSED_REQUEST, STATUS_INTERNAL_ERROR};

/// Status value meaning "no response yet".
const NO_RESPONSE: u16 = 0;

/// Lives in the response future, then in the response body when the body
/// streams. Whoever drops it last (response ready, body finished, client gone)
/// records the request, so every started request is observed exactly once.
pub(crate) struct RequestGuard {
    shared: Arc<Shared>,
    route: RouteId,
    method: u8,
    status: u16,
    start: Instant,
    log: Option<LogContext>,
}

impl RequestGuard {
    /// Counts the request as started and starts its clock.
    #[inline]
    pub(crate) fn start(
        shared: Arc<Shared>,
        route: RouteId,
        method: u8,
        log: Option<LogContext>,
    ) -> Self {
        shared.routes.get(route).start(method);
        Self {
            shared,
            route,
            method,
            status: NO_RESPONSE,
            start: Instant::now(),
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
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        let status = match self.status {
            NO_RESPONSE if std::thread::panicking() => STATUS_INTERNAL_ERROR,
            NO_RESPONSE => STATUS_CLIENT_CLOSED_REQUEST,
            status => status,
        };
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let route = self.shared.routes.get(self.route);
        route.observe(&self.shared.buckets, self.method, status, nanos);
        if let (Some(sink), Some(log)) = (&self.shared.sink, self.log.take()) {
            sink.record(&RequestRecord {
                route: Arc::clone(route.label()),
                method: log.method,
                status,
                duration,
                started_at: log.started_at,
                user_id: log.user_id,
            });
        }
    }
}
