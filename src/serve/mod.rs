//! Serving an axum [`Router`] over HTTP/1.1 so that neither slow nor idle
//! clients can hold connections, file descriptors or handlers for long
//! (DESIGN §7, issue "Reliability and security").
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use okr_exporter::serve::{ServeOptions, serve};
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hello\n" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! serve(listener, app, ServeOptions::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await;
//! # Ok(())
//! # }
//! ```
//!
//! What it enforces, each with a default below:
//! - **header read** ([`DEFAULT_HEADER_READ_TIMEOUT`]): a connection must send
//!   complete request headers within this time of being accepted or of its
//!   previous response (hyper's `header_read_timeout`, which also bounds an
//!   idle keep-alive connection), else it is closed;
//! - **body read** ([`DEFAULT_BODY_READ_TIMEOUT`]) and **request**
//!   ([`DEFAULT_REQUEST_TIMEOUT`]): answered `408` with a JSON error when the
//!   body has not arrived in time, `503` when the handler has not answered;
//! - **send** ([`DEFAULT_SEND_TIMEOUT`]): a client that reads nothing of its
//!   response for this long is disconnected;
//! - **open connections**: at most [`ServeOptions::max_connections`], by
//!   default derived from the process's file-descriptor limit
//!   ([`connection_cap`]). At the cap the server keeps accepting and closes
//!   the connection that has waited for request headers the longest, one at
//!   a time (an evicted connection counts until its socket is closed, so
//!   open sockets never exceed the cap by more than one); connections with a
//!   request in progress are never closed that way. Accept
//!   errors (out of file descriptors) pause the loop briefly instead of
//!   spinning, logged once per burst;
//! - **lingering close** ([`LingerOptions`]): a client that sends a whole
//!   oversized body before reading still gets its `413`;
//! - **graceful shutdown**: once `shutdown` completes, no connection is
//!   accepted, idle ones close, and requests in flight finish within
//!   [`ServeOptions::shutdown_grace`].

mod connections;
mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::api_error::ApiError;
use connections::{Admission, OpenConnection, OpenConnections, TrackedBody, WatchedBody};
use stream::AcceptedStream;
pub use stream::LingerOptions;

/// Default time a connection has to send complete request headers, from
/// its acceptance or from its previous response: it also closes idle
/// keep-alive connections. Prometheus reconnects between scrapes then.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a request body has to arrive in full once the headers have.
/// The ingestion bodies are a few hundred bytes, capped at 16 KiB.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time from complete headers to the response (body read included).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a write to the client may stay stalled (the client reads
/// nothing) before the connection is dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on open connections when the file-descriptor limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// File descriptors kept out of the connection cap: standard streams, the
/// listener, the runtime's epoll and event descriptors, the two database
/// pools (8 connections each), log and configuration files, with room to
/// spare.
pub const FD_RESERVE: u64 = 64;

/// Smallest cap derived from a very low file-descriptor limit.
pub const MIN_CONNECTIONS: usize = 8;

/// Default bound on the bytes discarded by a lingering close.
pub const DEFAULT_LINGER_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Default bound on the duration of a lingering close.
pub const DEFAULT_LINGER_MAX_TIME: Duration = Duration::from_secs(5);

/// Default wait for more data during a lingering close.
pub const DEFAULT_LINGER_IDLE_TIME: Duration = Duration::from_secs(2);

/// Pause after an accept error such as "too many open files" when no idle
/// connection could be closed to free a descriptor, so the loop does not
/// spin while descriptors are short.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Timeouts and limits of [`serve`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// See [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`DEFAULT_BODY_READ_TIMEOUT`].
    pub body_read_timeout: Duration,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`DEFAULT_SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// Cap on open connections; `None` derives it from the file-descriptor
    /// limit with [`connection_cap`].
    pub max_connections: Option<usize>,
    /// Bounds of the lingering close.
    pub linger: LingerOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_connections: None,
            linger: LingerOptions::default(),
        }
    }
}

impl ServeOptions {
    /// How long [`serve`] waits for open connections after shutdown began:
    /// a request in flight gets its request timeout, then its lingering
    /// close (35 s by default). Connections still open then are dropped.
    pub fn shutdown_grace(&self) -> Duration {
        self.request_timeout + self.linger.max_time
    }

    /// The cap on open connections in effect.
    pub fn connection_cap(&self) -> usize {
        self.max_connections
            .unwrap_or_else(|| connection_cap(open_files_limit()))
            .max(1)
    }
}

/// The process's soft limit on open file descriptors (`RLIMIT_NOFILE`);
/// `None` when unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => Some(soft),
        _ => None,
    }
}

/// The connection cap for a file-descriptor limit: the limit less
/// [`FD_RESERVE`], at most [`DEFAULT_MAX_CONNECTIONS`] and at least
/// [`MIN_CONNECTIONS`].
pub fn connection_cap(fd_limit: Option<u64>) -> usize {
    match fd_limit {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(limit) => usize::try_from(limit.saturating_sub(FD_RESERVE))
            .unwrap_or(usize::MAX)
            .clamp(MIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for
/// the open connections (see the module docs for what is enforced).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(OpenConnections::new(options.connection_cap()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let timeouts = RequestTimeouts {
        body_read: options.body_read_timeout,
        request: options.request_timeout,
    };
    tracing::info!(
        max_connections = table.cap(),
        fd_limit = open_files_limit(),
        header_read_timeout = ?options.header_read_timeout,
        body_read_timeout = ?options.body_read_timeout,
        request_timeout = ?options.request_timeout,
        "accepting connections"
    );
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    let mut accept_errors = Burst::default();
    let mut evictions = Burst::default();
    'accept: loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                if let Some(n) = accept_errors.settle(Instant::now()) {
                    tracing::info!(errors = n, "accepting connections again");
                }
                stream
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if accept_errors.record(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        open_connections = table.len(),
                        "cannot accept connections; closing the longest-idle one and retrying"
                    );
                }
                // Closing an idle connection frees a descriptor as soon as
                // its task runs; otherwise wait for one to close.
                let pause = if table.evict_longest_idle() {
                    Duration::from_millis(1)
                } else {
                    ACCEPT_ERROR_PAUSE
                };
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let conn = loop {
            match table.admit() {
                Admission::Admitted(conn) => {
                    if let Some(n) = evictions.settle(Instant::now()) {
                        tracing::info!(closed = n, "below the connection cap again");
                    }
                    break conn;
                }
                Admission::AdmittedByEviction(conn) => {
                    if evictions.record(Instant::now()) {
                        tracing::warn!(
                            max_connections = table.cap(),
                            "connection cap reached: closing the longest-idle connections"
                        );
                    }
                    break conn;
                }
                // Every connection has a request in progress, each bounded
                // by the request and send timeouts, or an evicted one's task
                // has not closed its socket yet: wait for either to end.
                Admission::Full => tokio::select! {
                    () = &mut shutdown => break 'accept,
                    () = table.changed() => {}
                },
            }
        };
        let io = TokioIo::new(AcceptedStream::new(
            stream,
            Arc::clone(&conn),
            options.send_timeout,
            options.linger,
        ));
        let service = ConnectionService {
            router: router.clone(),
            conn: Arc::clone(&conn),
            timeouts,
        };
        let served = graceful.watch(http.serve_connection(io, service));
        let table = Arc::clone(&table);
        tokio::spawn(async move {
            tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                }
                () = conn.evicted() => tracing::debug!("idle connection closed"),
            }
            table.remove(&conn);
        });
    }
    drop(listener);
    let grace = options.shutdown_grace();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = table.len(),
            "connections still open {grace:?} after shutdown began: dropping them"
        );
        table.close_all();
    }
}

/// Errors of one connection that `accept` reports (it is gone already).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// Quiet time that ends a burst of accept errors or evictions.
const BURST_GAP: Duration = Duration::from_secs(10);

/// Groups events (accept errors, evictions) into bursts, separated by
/// [`BURST_GAP`] without any, so each burst is logged once.
#[derive(Default)]
struct Burst {
    count: u64,
    last: Option<Instant>,
}

impl Burst {
    /// Counts one event at `now`; true for the first of a burst.
    fn record(&mut self, now: Instant) -> bool {
        let starts = self.last.is_none_or(|t| now - t > BURST_GAP);
        if starts {
            self.count = 0;
        }
        self.count += 1;
        self.last = Some(now);
        starts
    }

    /// After a normal outcome at `now`: the length of the burst that ended,
    /// once it has been quiet for [`BURST_GAP`].
    fn settle(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now - t > BURST_GAP) {
            self.last = None;
            Some(std::mem::take(&mut self.count))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RequestTimeouts {
    body_read: Duration,
    request: Duration,
}

/// The router as one connection's hyper service: tracks the request for
/// eviction and enforces the body-read and request timeouts.
struct ConnectionService {
    router: Router,
    conn: Arc<OpenConnection>,
    timeouts: RequestTimeouts,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<Body>>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody<Body>>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let (body, received) = WatchedBody::new(body);
        let Some(guard) = self.conn.begin_request(received.clone()) else {
            // Evicted as the request arrived: the connection is closing.
            let resp = closing(ApiError::unavailable(
                "the server closed this idle connection; retry on a new one",
            ));
            return Box::pin(std::future::ready(Ok(
                resp.map(|b| TrackedBody::new(b, None))
            )));
        };
        let req = Request::from_parts(parts, body);
        let router = self.router.clone();
        let timeouts = self.timeouts;
        Box::pin(async move {
            let resp = respond_within(router, req, received, timeouts).await;
            Ok(resp.map(|b| TrackedBody::new(b, Some(guard))))
        })
    }
}

/// Runs `req` through `router` within the body-read and request timeouts.
async fn respond_within(
    router: Router,
    req: Request<WatchedBody<Incoming>>,
    received: Option<Arc<AtomicBool>>,
    t: RequestTimeouts,
) -> Response {
    let started = Instant::now();
    let body_pending = || {
        received
            .as_ref()
            .is_some_and(|r| !r.load(Ordering::Acquire))
    };
    let mut answer = pin!(router.oneshot(req));
    if received.is_some() && t.body_read < t.request {
        tokio::select! {
            biased;
            resp = &mut answer => return resp.unwrap_or_else(|e| match e {}),
            () = tokio::time::sleep_until(started + t.body_read) => {
                if body_pending() {
                    return body_timeout(t.body_read);
                }
            }
        }
    }
    match tokio::time::timeout_at(started + t.request, answer).await {
        Ok(resp) => resp.unwrap_or_else(|e| match e {}),
        Err(_) if body_pending() => body_timeout(t.request),
        Err(_) => ApiError::unavailable(format!(
            "no answer within {}",
            humantime::format_duration(t.request)
        ))
        .into_response(),
    }
}

fn body_timeout(after: Duration) -> Response {
    closing(ApiError::Timeout {
        message: format!(
            "the request body did not arrive within {}",
            humantime::format_duration(after)
        ),
    })
}

/// `error` with `Connection: close`.
fn closing(error: ApiError) -> Response {
    let mut resp = error.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_stays_within_bounds() {
        assert_eq!(connection_cap(None), 1024);
        assert_eq!(connection_cap(Some(256)), 256 - 64);
        assert_eq!(connection_cap(Some(1_048_576)), 1024);
        assert_eq!(connection_cap(Some(1088)), 1024);
        assert_eq!(connection_cap(Some(1087)), 1023);
        assert_eq!(connection_cap(Some(40)), 8);
        assert_eq!(connection_cap(Some(0)), 8);
    }

    #[test]
    fn bursts_are_reported_once_and_end_after_a_quiet_gap() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Burst::default();
        assert_eq!(b.settle(t0), None);
        assert!(b.record(t0));
        // Successes in between do not end the burst until it is quiet.
        assert_eq!(b.settle(t0 + ms(10)), None);
        assert!(!b.record(t0 + ms(20)));
        assert!(!b.record(t0 + BURST_GAP));
        assert_eq!(b.settle(t0 + BURST_GAP + ms(1)), None);
        assert_eq!(b.settle(t0 + BURST_GAP * 2 + ms(1)), Some(3));
        assert_eq!(b.settle(t0 + BURST_GAP * 3), None);
        assert!(b.record(t0 + BURST_GAP * 3));
        // A new burst also starts after a quiet gap without a success.
        assert!(b.record(t0 + BURST_GAP * 5));
    }

    #[test]
    fn shutdown_grace_covers_a_request_and_its_lingering_close() {
        assert_eq!(
            ServeOptions::default().shutdown_grace(),
            Duration::from_secs(35)
        );
    }
}
