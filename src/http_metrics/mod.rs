//! Request-latency middleware: per-route `http_server_*` metrics for any
//! axum 0.8 service, in one line.
//!
//! ```
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use okr_exporter::http_metrics::HttpMetricsLayer;
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::default();
//! let app = Router::new()
//!     .route("/api/followups/{id}", get(|| async { "ok" }))
//!     .layer(HttpMetricsLayer::new(&mut registry));
//!
//! let response = app.oneshot(Request::get("/api/followups/42").body(Body::empty())?).await?;
//! assert_eq!(response.status(), 200);
//!
//! let mut text = String::new();
//! encode(&mut text, &registry)?;
//! assert!(text.contains(
//!     r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/api/followups/{id}",http_response_status_code="200"} 1"#
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Names and labels follow the OpenTelemetry HTTP semantic conventions mapped
//! to Prometheus, registered without a prefix:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code` |
//! | `http_server_active_requests` | gauge | `http_request_method`, `http_route` |
//! | `http_server_latency_target_seconds` | gauge | `http_request_method`, `http_route` |
//!
//! Buckets default to [`DEFAULT_BUCKETS`], so the latency targets 0.2, 0.5
//! and 1 s are bucket edges (`le="0.2"`, `le="0.5"`, `le="1.0"`).
//!
//! # Native histogram and exemplars
//!
//! Beside the classic buckets, the duration histogram keeps a native one
//! (Prometheus's exponential schema 3: buckets 2^(1/8) apart, a quantile
//! within ≈ 4.4 % of its bucket's middle, at most 377 buckets per series
//! from 1 ns to 36 h, never reset). prometheus-client's protobuf encoder
//! (`prometheus_client::encoding::prometheus_protobuf`) writes both forms;
//! its text encoders write the classic one. A request carrying a trace id
//! (W3C `traceparent`, or the header named by
//! [`HttpMetricsBuilder::trace_id_header`]) leaves it as the exemplar of its
//! classic bucket, the latest per bucket and series; exemplars are read with
//! [`HttpMetricsLayer::exemplars`] and written by
//! `okr_exporter::exposition::encode_with_exemplars` (OpenMetrics and
//! protobuf), as prometheus-client takes exemplars only from its own metric
//! types. [`HttpMetricsBuilder::native_histogram`],
//! [`HttpMetricsBuilder::classic_buckets`] and
//! [`HttpMetricsBuilder::exemplars`] turn each part off.
//!
//! # Bounded cardinality
//!
//! `http_route` is the route template from axum's [`MatchedPath`], never the
//! raw path. Requests without one — the 404 fallback, `nest_service` — share
//! one value, [`DEFAULT_UNMATCHED_ROUTE`] unless configured. Methods outside
//! GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH become `_OTHER`; the
//! status code is the numeric string (`"200"`). Add the layer with
//! [`Router::layer`](axum::Router::layer) (not `route_layer`) so that 404s
//! are recorded too.
//!
//! # What is timed
//!
//! From the layer receiving the request until the response is complete:
//!
//! - a body that is empty or of known length (anything axum builds from
//!   in-memory data: strings, JSON, bytes) is complete when the handler
//!   returns, and the request is recorded then;
//! - a streaming body (unknown length: `Body::from_stream`, SSE, …) keeps the
//!   clock running until its last frame, an error, or its drop;
//! - a request whose future is dropped before a response exists (the client
//!   disconnected, an outer timeout fired) is recorded with status
//!   [`STATUS_CLIENT_CLOSED_REQUEST`] (499, as nginx logs it) — OpenTelemetry
//!   defines no code for this, and 499 keeps such requests visible and apart
//!   from real responses;
//! - an error returned by the inner service (not possible inside an axum
//!   router, whose handlers turn errors into responses) or a panic in it is
//!   recorded with status 500. Handler errors mapped to responses are
//!   recorded with their own status.
//!
//! # Cost
//!
//! Once a (route, method, status) series exists, a request costs a route
//! lookup (a pointer comparison on the address of axum's `MatchedPath` text;
//! a hash and a compare for nested routes; no lock), a header lookup for a
//! trace id, two reads of a TSC-based clock, the native bucket's index
//! (eight integer comparisons on the latency's float bits) and four atomic
//! additions, and allocates nothing (each thread's first request on a series
//! allocates that thread's native counters, its first traced request the
//! series' exemplar slots). A request with a trace id copies it (at most 64
//! bytes) and takes one uncontended lock. Counters
//! are sharded per thread on separate cache lines, so threads serving the same
//! route neither lock nor bounce lines between cores. Streaming bodies cost one
//! extra allocation (axum boxes the wrapper). `BENCHMARKS.md` has the
//! measurements against an empty layer, prometheus-client's own histogram and
//! axum-prometheus.
//!
//! # Clock
//!
//! [`HttpMetricsBuilder::clock`] picks the clock that times requests
//! ([`LatencyClock`]). The default, `Auto`, reads the TSC (quanta's
//! calibrated reader, inline `rdtsc`) where the kernel's clocksource is `tsc`
//! (`/sys/devices/system/clocksource/clocksource0/current_clocksource`), and
//! `std::time::Instant` otherwise — on a virtual machine whose TSC the kernel
//! does not trust, latencies stay right at the cost of slower reads.
//! `LatencyClock::Monotonic` asks for `Instant` everywhere. The choice is
//! logged at `info` (`http_metrics: request latency clock`) each time a
//! layer is registered.
//!
//! # Request log
//!
//! [`HttpMetricsBuilder::request_sink`] feeds a [`RequestSink`] one
//! [`RequestRecord`] per request, with the user id taken from the header set
//! by [`HttpMetricsBuilder::user_id_header`]. Without a sink nothing is
//! captured or allocated for it; with one, a request allocates nothing more
//! unless it carries a user id or a non-standard method (a small box, plus
//! the user id's string). [`RequestSink::accepts`] lets a sink that is full
//! drop a request before its record is built.
//!
//! [`MatchedPath`]: axum::extract::MatchedPath

mod body;
mod clock;
mod exemplar;
mod exposition;
mod future;
mod guard;
mod layer;
mod native;
mod service;
mod shard;
mod shared;
mod sink;
mod store;

pub use clock::LatencyClock;
pub use exemplar::{BucketExemplar, MAX_TRACE_ID_LEN};
pub use future::ResponseFuture;
pub use layer::{HttpMetricsBuilder, HttpMetricsLayer};
pub use service::HttpMetrics;
pub use shard::ThreadSharded;
pub use sink::{MAX_USER_ID_LEN, RequestRecord, RequestSink, RouteLabel};

/// Default histogram bucket upper bounds in seconds: the OpenTelemetry HTTP
/// boundaries plus 0.2, so that every default latency target is a bucket edge.
pub const DEFAULT_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Name of the request-duration histogram family, as exposed.
pub const REQUEST_DURATION_FAMILY: &str = "http_server_request_duration_seconds";

/// Default `http_route` value for requests that matched no route.
pub const DEFAULT_UNMATCHED_ROUTE: &str = "__unmatched__";

/// Status recorded for a request dropped before its response was ready
/// (nginx's "client closed request").
pub const STATUS_CLIENT_CLOSED_REQUEST: u16 = 499;

/// Status recorded when the inner service returns an error or panics.
const STATUS_INTERNAL_ERROR: u16 = 500;

#[cfg(test)]
mod tests;
