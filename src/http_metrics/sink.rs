//! The optional per-request log fed by the middleware.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;

/// Receives one [`RequestRecord`] per finished request, for example to write
/// a request log.
///
/// `record` runs inline, when the request is recorded (response ready, body
/// finished, or request dropped), so it must be cheap and must not block or
/// panic: hand the record to a channel or buffer and do the I/O elsewhere.
pub trait RequestSink: Send + Sync + 'static {
    /// Called once per request, with the same duration and labels the
    /// histogram observed.
    fn record(&self, record: &RequestRecord);
}

/// One finished request, as handed to a [`RequestSink`].
///
/// Records are built only when a sink is configured; without one the
/// middleware allocates nothing for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The `http_route` label: the matched route template, or the unmatched
    /// label — never the raw path.
    pub route: Arc<str>,
    /// The request method as received (the histogram label folds
    /// non-standard methods into `_OTHER`).
    pub method: Method,
    /// The response status code; 499 when the client went away before a
    /// response was ready, 500 when the inner service failed or panicked.
    pub status: u16,
    /// Time from the middleware seeing the request to the response being
    /// complete (see the module documentation for what "complete" means).
    pub duration: Duration,
    /// Wall-clock time the request arrived.
    pub started_at: SystemTime,
    /// The value of the configured user-id header, if it was present, valid
    /// visible ASCII and at most [`MAX_USER_ID_LEN`] bytes long.
    pub user_id: Option<String>,
}

/// Longest user-id header value copied into a [`RequestRecord`]; longer
/// values are treated as absent.
pub const MAX_USER_ID_LEN: usize = 256;

/// What the request guard keeps for the sink; only built when a sink is set.
#[derive(Debug)]
pub(crate) struct LogContext {
    pub(crate) method: Method,
    pub(crate) started_at: SystemTime,
    pub(crate) user_id: Option<String>,
}

impl LogContext {
    pub(crate) fn capture<B>(
        request: &http::Request<B>,
        user_id_header: Option<&http::HeaderName>,
    ) -> Self {
        let user_id = user_id_header
            .and_then(|name| request.headers().get(name))
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= MAX_USER_ID_LEN)
            .map(str::to_owned);
        Self {
            method: request.method().clone(),
            started_at: SystemTime::now(),
            user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, Request};

    #[test]
    fn user_id_is_taken_only_from_the_configured_header() {
        let header = HeaderName::from_static("x-user-id");
        let request = Request::post("/x")
            .header("x-user-id", "u-42")
            .header("x-other", "nope")
            .body(())
            .unwrap();
        let ctx = LogContext::capture(&request, Some(&header));
        assert_eq!(ctx.user_id.as_deref(), Some("u-42"));
        assert_eq!(ctx.method, Method::POST);
        assert_eq!(LogContext::capture(&request, None).user_id, None);
    }

    #[test]
    fn oversized_or_non_ascii_user_ids_are_dropped() {
        let header = HeaderName::from_static("x-user-id");
        let long = "a".repeat(MAX_USER_ID_LEN + 1);
        let request = Request::get("/x")
            .header("x-user-id", long.as_str())
            .body(())
            .unwrap();
        assert_eq!(LogContext::capture(&request, Some(&header)).user_id, None);
        let request = Request::get("/x")
            .header(
                "x-user-id",
                http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            )
            .body(())
            .unwrap();
        assert_eq!(LogContext::capture(&request, Some(&header)).user_id, None);
    }
}
