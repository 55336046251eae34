//! The layer (configuration and shared state) and its builder.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, Method};
use prometheus_client::registry::{Registry, Unit};
use tower::Layer;

use super::clock::{LatencyClock, RawClock};
use super::exemplar::{BucketExemplar, TraceIdSource};
use super::exposition::{ActiveRequests, LatencyTargets, RequestDuration};
use super::service::HttpMetrics;
use super::shard::shard_count;
use super::shared::Shared;
use super::sink::{LogState, RequestSink, WallClock};
use super::store::{Buckets, RouteTable, method_index};
use super::{DEFAULT_BUCKETS, DEFAULT_UNMATCHED_ROUTE};

/// A tower layer recording `http_server_*` metrics for every request of the
/// service it wraps; see the [module documentation](super).
///
/// Cloning shares the state: create the layer once per registry and clone
/// it wherever it is needed. The state is freed when the layer, its
/// services, their requests and the registry are all dropped (see
/// [`HttpMetricsBuilder::register`]).
#[derive(Clone)]
pub struct HttpMetricsLayer {
    state: Shared<State>,
}

impl HttpMetricsLayer {
    /// Registers the three metric families in `registry` with the default
    /// buckets, latency targets and unmatched-route label.
    pub fn new(registry: &mut Registry) -> Self {
        Self::builder().register(registry)
    }

    /// The exemplars kept so far, one per classic bucket of each series of
    /// `http_server_request_duration_seconds` at most, ordered by series and
    /// bucket. prometheus-client's encoders take exemplars only from its own
    /// metric types, so [`crate::exposition::encode_with_exemplars`] adds
    /// these to its output.
    pub fn exemplars(&self) -> Vec<BucketExemplar> {
        let bounds = self.state.buckets.bounds();
        let mut out = Vec::new();
        for route in self.state.routes.iter() {
            route.for_each_series(|method, status, counters| {
                for (bucket, trace_id, nanos, at) in counters.exemplars() {
                    out.push(BucketExemplar {
                        method: super::exposition::method_label(method),
                        route: Arc::clone(route.label()),
                        status,
                        upper_bound: bounds.get(bucket).copied().unwrap_or(f64::INFINITY),
                        trace_id,
                        seconds: nanos as f64 / 1e9,
                        timestamp: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at),
                    });
                }
            });
        }
        out.sort_by(|a, b| {
            (&a.route, a.method, a.status)
                .cmp(&(&b.route, b.method, b.status))
                .then(a.upper_bound.total_cmp(&b.upper_bound))
        });
        out
    }

    /// Starts a configuration; finish it with [`HttpMetricsBuilder::register`].
    pub fn builder() -> HttpMetricsBuilder {
        HttpMetricsBuilder::default()
    }
}

impl fmt::Debug for HttpMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsLayer")
            .field("clock", &self.state.clock.name())
            .field("buckets", &self.state.buckets.bounds())
            .field("latency_targets", &self.state.targets)
            .field("sink", &self.state.log.is_some())
            .field(
                "user_id_header",
                &self.state.log.as_ref().map(|l| &l.user_id_header),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics::new(inner, self.state.clone())
    }
}

/// Configuration of an [`HttpMetricsLayer`], created by
/// [`HttpMetricsLayer::builder`].
#[derive(Clone)]
pub struct HttpMetricsBuilder {
    buckets: Vec<f64>,
    targets: Option<Vec<LatencyTarget>>,
    unmatched_route_label: &'static str,
    sink: Option<Arc<dyn RequestSink>>,
    user_id_header: Option<HeaderName>,
    clock: LatencyClock,
    native: bool,
    classic: bool,
    exemplars: bool,
    trace_id_header: Option<HeaderName>,
}

impl Default for HttpMetricsBuilder {
    fn default() -> Self {
        Self {
            buckets: DEFAULT_BUCKETS.to_vec(),
            targets: None,
            unmatched_route_label: DEFAULT_UNMATCHED_ROUTE,
            sink: None,
            user_id_header: None,
            clock: LatencyClock::Auto,
            native: true,
            classic: true,
            exemplars: true,
            trace_id_header: None,
        }
    }
}

impl fmt::Debug for HttpMetricsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsBuilder")
            .field("buckets", &self.buckets)
            .field("latency_targets", &self.targets)
            .field("unmatched_route_label", &self.unmatched_route_label)
            .field("sink", &self.sink.is_some())
            .field("user_id_header", &self.user_id_header)
            .field("clock", &self.clock)
            .field("native_histogram", &self.native)
            .field("classic_buckets", &self.classic)
            .field("exemplars", &self.exemplars)
            .field("trace_id_header", &self.trace_id_header)
            .finish()
    }
}

impl HttpMetricsBuilder {
    /// Histogram bucket upper bounds in seconds (default [`DEFAULT_BUCKETS`]).
    ///
    /// Bounds are sorted and deduplicated; non-finite values are ignored
    /// (`+Inf` is always present), an empty list keeps the defaults, and at
    /// most the 255 lowest bounds are kept.
    pub fn buckets(mut self, bounds: impl IntoIterator<Item = f64>) -> Self {
        self.buckets = bounds.into_iter().collect();
        self
    }

    /// Adds one exported P95 latency target. The first call replaces the
    /// defaults (POST /api/followups 0.5 s, PATCH /api/followups/{id} 0.2 s,
    /// GET /api/followups/{id}/analytics 1 s).
    ///
    /// `route` is a route template as written in the router, e.g.
    /// `/api/followups/{id}`.
    pub fn latency_target(mut self, method: Method, route: &str, seconds: f64) -> Self {
        self.targets
            .get_or_insert_with(Vec::new)
            .push(LatencyTarget {
                method: method_index(&method),
                route: Arc::from(route),
                seconds,
            });
        self
    }

    /// Replaces all latency targets (an empty iterator exports none).
    pub fn latency_targets<R: AsRef<str>>(
        mut self,
        targets: impl IntoIterator<Item = (Method, R, f64)>,
    ) -> Self {
        self.targets = Some(
            targets
                .into_iter()
                .map(|(method, route, seconds)| LatencyTarget {
                    method: method_index(&method),
                    route: Arc::from(route.as_ref()),
                    seconds,
                })
                .collect(),
        );
        self
    }

    /// The `http_route` value for requests without a matched route (404
    /// fallback, `nest_service`); default [`DEFAULT_UNMATCHED_ROUTE`].
    pub fn unmatched_route_label(mut self, label: &'static str) -> Self {
        self.unmatched_route_label = label;
        self
    }

    /// Feeds one [`RequestRecord`](super::RequestRecord) per request to `sink`.
    pub fn request_sink(mut self, sink: Arc<dyn RequestSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Request header whose value becomes
    /// [`RequestRecord::user_id`](super::RequestRecord::user_id); read only
    /// when a sink is configured.
    pub fn user_id_header(mut self, header: HeaderName) -> Self {
        self.user_id_header = Some(header);
        self
    }

    /// The clock that times requests (default [`LatencyClock::Auto`]: the
    /// TSC where the kernel's clocksource is `tsc`, `std::time::Instant`
    /// otherwise). The choice is logged at `info` when the layer is
    /// registered.
    pub fn clock(mut self, clock: LatencyClock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether `http_server_request_duration_seconds` also keeps a native
    /// histogram (default on): exponential buckets of schema 3 (each 2^(1/8)
    /// ≈ 1.09 times the one before, so a quantile is within ≈ 4.4 % of the
    /// bucket's middle), from 1 ns to 2^17 s (36 h; longer requests count in
    /// the last bucket), at most 377 buckets per series and never reset. It
    /// is served only over the protobuf exposition; the text formats carry
    /// the classic buckets.
    pub fn native_histogram(mut self, on: bool) -> Self {
        self.native = on;
        self
    }

    /// Whether the classic buckets are kept (default on). Off, the family
    /// keeps only its `+Inf` bucket (the count) beside the sum, so the text
    /// formats stay valid, and exemplars are kept one per series.
    pub fn classic_buckets(mut self, on: bool) -> Self {
        self.classic = on;
        self
    }

    /// Whether requests carrying a trace id leave an exemplar in their
    /// bucket (default on). Off, no request header is read for it.
    pub fn exemplars(mut self, on: bool) -> Self {
        self.exemplars = on;
        self
    }

    /// The request header whose value is an exemplar's `trace_id`. By
    /// default the W3C `traceparent` header, whose trace id (32 hex digits)
    /// is taken when the header is valid; any other header gives its whole
    /// value when that is 1 to [`MAX_TRACE_ID_LEN`](super::MAX_TRACE_ID_LEN)
    /// printable ASCII characters other than `"` and `\`.
    pub fn trace_id_header(mut self, header: HeaderName) -> Self {
        self.trace_id_header = Some(header);
        self
    }

    /// Registers `http_server_request_duration_seconds`,
    /// `http_server_active_requests` and `http_server_latency_target_seconds`
    /// in `registry` (no prefix is added) and returns the layer feeding them.
    ///
    /// Register once per registry; registering twice duplicates the families.
    /// The state allocated here (counters, route table, sink) is shared by
    /// the layer, the services it wraps, their requests in flight and the
    /// registry's views of it, and freed when the last of them is dropped
    /// (`tests/http_metrics_alloc.rs`).
    pub fn register(self, registry: &mut Registry) -> HttpMetricsLayer {
        let targets = self.targets.unwrap_or_else(default_targets);
        let shards = shard_count();
        // Chosen (and, for the TSC, calibrated) once, here rather than on
        // the first request.
        let (clock, reason) = RawClock::choose(self.clock);
        tracing::info!(
            clock = clock.name(),
            requested = ?self.clock,
            reason,
            "http_metrics: request latency clock"
        );
        let log = self.sink.map(|sink| LogState {
            sink,
            user_id_header: self.user_id_header,
            wall: WallClock::new(&clock),
        });
        let buckets = match self.classic {
            true => Buckets::new(&self.buckets, &DEFAULT_BUCKETS),
            false => Buckets::inf_only(),
        };
        let trace_ids = self.exemplars.then(|| match self.trace_id_header {
            Some(header) if header.as_str() != "traceparent" => TraceIdSource::Header(header),
            _ => TraceIdSource::TraceParent,
        });
        let wall = WallClock::new(&clock);
        // Not an `Arc`: axum clones a route's service for every request,
        // and an `Arc`'s one count, written by every thread, cost 2-3.7x the
        // single-thread overhead with two threads on one route; `Shared`
        // splits the count by thread shard (`shared.rs`, `BENCHMARKS.md`,
        // "Shared state").
        let state = Shared::new(State {
            wall,
            buckets: buckets.with_native(self.native),
            trace_ids,
            routes: RouteTable::new(self.unmatched_route_label, shards),
            targets,
            log,
            clock,
        });
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, from the middleware receiving the request \
             to the response being complete, by method, route template and status code",
            Unit::Seconds,
            RequestDuration(state.clone()),
        );
        registry.register(
            "http_server_active_requests",
            "Number of HTTP server requests in flight, by method and route template",
            ActiveRequests(state.clone()),
        );
        registry.register_with_unit(
            "http_server_latency_target",
            "Configured P95 latency target per endpoint",
            Unit::Seconds,
            LatencyTargets(state.clone()),
        );
        HttpMetricsLayer { state }
    }
}

fn default_targets() -> Vec<LatencyTarget> {
    [
        (Method::POST, "/api/followups", 0.5),
        (Method::PATCH, "/api/followups/{id}", 0.2),
        (Method::GET, "/api/followups/{id}/analytics", 1.0),
    ]
    .into_iter()
    .map(|(method, route, seconds)| LatencyTarget {
        method: method_index(&method),
        route: Arc::from(route),
        seconds,
    })
    .collect()
}

/// One exported latency target.
#[derive(Clone, Debug)]
pub(crate) struct LatencyTarget {
    pub(crate) method: u8,
    pub(crate) route: Arc<str>,
    pub(crate) seconds: f64,
}

/// State shared by the layer, its services, their in-flight requests and the
/// registered metric views; read-only apart from the counters' atomics.
pub(crate) struct State {
    pub(crate) buckets: Buckets,
    /// Where exemplars' trace ids come from; `None` with exemplars off.
    pub(crate) trace_ids: Option<TraceIdSource>,
    /// Turns exemplars' raw end readings into wall-clock timestamps.
    pub(crate) wall: WallClock,
    pub(crate) routes: RouteTable,
    pub(crate) targets: Vec<LatencyTarget>,
    /// Set when a request sink is configured.
    pub(crate) log: Option<LogState>,
    /// Chosen by [`HttpMetricsBuilder::clock`]; the TSC where trusted: two
    /// reads cost less than half of two `std::time::Instant::now()` calls
    /// on the benchmark machine, the largest single item of the per-request
    /// cost.
    pub(crate) clock: RawClock,
}
