//! Heap allocations per request: once its series exists, the metrics layer
//! allocates nothing beyond what axum allocates for any `Router::layer`,
//! scanner traffic leaves nothing behind on the heap, and each registration
//! keeps one bounded state.
//!
//! A separate test binary because it installs a counting global allocator.
//! Counting is per thread, so the harness's other threads do not interfere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::handler::Handler;
use axum::http::{Request, Response};
use axum::routing::get;
use futures_util::FutureExt;
use okr_exporter::http_metrics::{HttpMetricsLayer, RequestRecord, RequestSink};
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn count_bytes(allocated: usize, freed: usize) {
    let delta = allocated as i64 - freed as i64;
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        count_bytes(layout.size(), 0);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        count_bytes(layout.size(), 0);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        count_bytes(new_size, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_bytes(0, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

/// A layer that does nothing: the baseline cost of `Router::layer`.
#[derive(Clone)]
struct PassThroughLayer;

impl<S> Layer<S> for PassThroughLayer {
    type Service = PassThrough<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PassThrough(inner)
    }
}

#[derive(Clone)]
struct PassThrough<S>(S);

impl<S: Service<Request<Body>>> Service<Request<Body>> for PassThrough<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.0.call(request)
    }
}

async fn handler() -> &'static str {
    "ok"
}

const ROUTE: &str = "/api/followups/{id}";

fn request() -> Request<Body> {
    Request::get("/api/followups/42")
        .body(Body::empty())
        .unwrap()
}

/// Calls `router` synchronously (the handler never waits) and returns the
/// response, dropping nothing early.
fn call(router: &mut Router) -> Response<Body> {
    call_with(router, request())
}

fn call_with(router: &mut Router, request: Request<Body>) -> Response<Body> {
    Service::<Request<Body>>::call(router, request)
        .now_or_never()
        .expect("handler completes without waiting")
        .unwrap_or_else(|never: Infallible| match never {})
}

/// Average allocations of one request (request building included), after a
/// warm-up that creates every series.
fn allocations_per_request(router: Router) -> f64 {
    allocations_per_request_of(router, request)
}

/// As [`allocations_per_request`], for requests made by `make`.
fn allocations_per_request_of(mut router: Router, make: impl Fn() -> Request<Body>) -> f64 {
    const N: u64 = 2_000;
    for _ in 0..100 {
        assert_eq!(call_with(&mut router, make()).status(), 200);
    }
    let before = allocations();
    for _ in 0..N {
        drop(call_with(&mut router, make()));
    }
    (allocations() - before) as f64 / N as f64
}

/// What `axum::serve` does per connection: turn handlers into routes once.
fn prepared(router: Router) -> Router {
    router.with_state(())
}

#[test]
fn metrics_layer_allocates_nothing_beyond_an_empty_layer() {
    let bare = allocations_per_request(prepared(Router::new().route(ROUTE, get(handler))));
    let empty = allocations_per_request(prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(PassThroughLayer),
    ));
    let mut registry = Registry::default();
    let ours = allocations_per_request(prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(HttpMetricsLayer::new(&mut registry)),
    ));
    assert!(empty >= bare, "bare {bare}, empty layer {empty}");
    assert_eq!(
        ours, empty,
        "bare {bare}, empty layer {empty}, metrics {ours}"
    );
}

/// A pass-through layer that carries state, as any useful layer does.
#[derive(Clone)]
struct StatefulPassThroughLayer(#[allow(dead_code)] Arc<()>);

impl<S> Layer<S> for StatefulPassThroughLayer {
    type Service = PassThrough<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PassThrough(inner)
    }
}

/// `handler.layer(..)` avoids `Router::layer`'s extra boxing. axum still
/// clones the handler into a fresh box per request, which is free only for a
/// zero-sized handler; any layer with state costs that one allocation.
#[test]
fn metrics_on_the_handler_allocate_nothing_beyond_a_stateful_handler_layer() {
    let bare = allocations_per_request(prepared(Router::new().route(ROUTE, get(handler))));
    let stateful = StatefulPassThroughLayer(Arc::new(()));
    let empty = allocations_per_request(prepared(
        Router::new().route(ROUTE, get(handler.layer(stateful))),
    ));
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let ours = allocations_per_request(prepared(
        Router::new().route(ROUTE, get(handler.layer(layer))),
    ));
    assert_eq!(
        empty,
        bare + 1.0,
        "bare {bare}, stateful handler layer {empty}"
    );
    assert_eq!(
        ours, empty,
        "bare {bare}, stateful handler layer {empty}, metrics {ours}"
    );
}

#[test]
fn unmatched_requests_allocate_nothing_beyond_an_empty_layer() {
    fn not_found(router: Router) -> f64 {
        let mut router = prepared(router);
        let mut call = || {
            Service::<Request<Body>>::call(
                &mut router,
                Request::get("/wp-login.php").body(Body::empty()).unwrap(),
            )
            .now_or_never()
            .expect("fallback completes without waiting")
            .unwrap_or_else(|never: Infallible| match never {})
        };
        for _ in 0..100 {
            assert_eq!(call().status(), 404);
        }
        let before = allocations();
        for _ in 0..1_000 {
            drop(call());
        }
        (allocations() - before) as f64 / 1_000.0
    }
    let empty = not_found(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(PassThroughLayer),
    );
    let mut registry = Registry::default();
    let ours = not_found(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(HttpMetricsLayer::new(&mut registry)),
    );
    assert_eq!(ours, empty);
}

struct DiscardingSink;

impl RequestSink for DiscardingSink {
    fn record(&self, _: RequestRecord) {}
}

/// A sink that moves each record into a preallocated ring, as the request
/// log's queue does: what the middleware allocates for the record shows,
/// nothing of the sink's own.
struct RingSink(crossbeam_queue::ArrayQueue<RequestRecord>);

impl RequestSink for RingSink {
    fn record(&self, record: RequestRecord) {
        // Full: drop the oldest, as a writer would have drained it.
        drop(self.0.force_push(record));
    }
}

/// With a sink, a request without a user id allocates nothing more than
/// without one, whether a user-id header is configured or not.
#[test]
fn a_sink_costs_no_allocation_unless_there_is_a_user_id() {
    let empty = allocations_per_request(prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(PassThroughLayer),
    ));
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::builder()
        .request_sink(Arc::new(DiscardingSink))
        .register(&mut registry);
    let ours = allocations_per_request(prepared(
        Router::new().route(ROUTE, get(handler)).layer(layer),
    ));
    assert_eq!(ours, empty);
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::builder()
        .request_sink(Arc::new(RingSink(crossbeam_queue::ArrayQueue::new(64))))
        .user_id_header(http::HeaderName::from_static("x-user-id"))
        .register(&mut registry);
    let router = prepared(Router::new().route(ROUTE, get(handler)).layer(layer));
    // The request carries no x-user-id: still nothing.
    assert_eq!(allocations_per_request(router), empty);
}

/// Scanner traffic: `OKR_SCANNER_PATHS` (default 100,000) requests, each for
/// a raw path never seen before — 404s, ids under a route template, paths
/// below a template that match nothing — with standard and odd methods,
/// leave the heap exactly where the first thousand left it: the layer keeps
/// nothing per path (`tests/integration/http_metrics.rs` checks that the
/// exposition's series stay the same).
#[test]
fn scanner_traffic_leaves_nothing_on_the_heap() {
    const WARM_UP: usize = 1_000;
    const METHODS: [&str; 4] = ["GET", "POST", "PROPFIND", "HEAD"];
    let total = std::env::var("OKR_SCANNER_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_usize)
        .max(WARM_UP + 1);
    let mut registry = Registry::default();
    let mut router = prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(HttpMetricsLayer::new(&mut registry)),
    );
    // Every request number gives a new path; the kinds of request (and so
    // the series they land in) repeat every 12, well within the warm-up.
    let mut send = |n: usize| {
        let path = match n % 3 {
            0 => format!("/{n:x}/wp-login.php"),
            1 => format!("/api/followups/{n}"),
            _ => format!("/api/followups/{n}/.env"),
        };
        let method = http::Method::from_bytes(METHODS[n % METHODS.len()].as_bytes()).unwrap();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = Service::<Request<Body>>::call(&mut router, request)
            .now_or_never()
            .expect("handlers complete without waiting")
            .unwrap_or_else(|never: Infallible| match never {});
        response.status().as_u16()
    };
    let mut statuses = std::collections::BTreeSet::new();
    for n in 0..WARM_UP {
        statuses.insert(send(n));
    }
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 404, 405],
        "the warm-up saw every kind of request"
    );
    let before = live_bytes();
    for n in WARM_UP..total {
        send(n);
    }
    let retained = live_bytes() - before;
    assert_eq!(
        retained,
        0,
        "{retained} bytes kept after {} new paths",
        total - WARM_UP
    );
}

/// Live bytes a round of register, serve and drop may leave behind: none of
/// the layer's state (about 31 KB with 4 shards, more with native counters
/// and exemplar slots), only a few bytes of hash-table growth in
/// once-per-process structures.
const MAX_BYTES_LEFT: i64 = 1024;

/// A layer's state — counters, native buckets, exemplar slots, route table,
/// sink — is freed when its layer, routers, requests and registry are all
/// dropped, whatever the number of requests served.
#[test]
fn a_dropped_layer_frees_its_state() {
    fn register_use_and_drop(requests: usize) {
        let mut registry = Registry::default();
        let layer = HttpMetricsLayer::builder()
            .request_sink(Arc::new(DiscardingSink))
            .register(&mut registry);
        let mut router = prepared(
            Router::new()
                .route(ROUTE, get(handler))
                .layer(layer.clone()),
        );
        let mut nested =
            prepared(Router::new().nest("/v1", Router::new().route(ROUTE, get(handler))))
                .layer(layer);
        for i in 0..requests {
            assert_eq!(call(&mut router).status(), 200);
            let mut request = Request::get("/v1/api/followups/1");
            if i % 2 == 0 {
                request = request.header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                );
            }
            let response =
                Service::<Request<Body>>::call(&mut nested, request.body(Body::empty()).unwrap())
                    .now_or_never()
                    .expect("handler completes without waiting")
                    .unwrap_or_else(|never: Infallible| match never {});
            assert_eq!(response.status(), 200);
        }
    }
    // Once-per-process set-up (the TSC calibration, the log callsite, this
    // thread's shard number) happens in the first round.
    register_use_and_drop(1);
    let left: Vec<i64> = [10, 1_000, 10]
        .into_iter()
        .map(|requests| {
            let before = live_bytes();
            register_use_and_drop(requests);
            live_bytes() - before
        })
        .collect();
    println!("bytes left per round: {left:?}");
    assert!(
        left.iter().all(|&bytes| bytes.abs() <= MAX_BYTES_LEFT),
        "bytes left after dropping everything: {left:?}"
    );
}

/// A request in flight keeps the state alive after its router, layer and
/// registry are dropped: it is recorded when it finishes, then the state is
/// freed.
#[test]
fn a_request_in_flight_outlives_its_router() {
    // Once-per-process set-up first, as above.
    drop(HttpMetricsLayer::new(&mut Registry::default()));
    let before = live_bytes();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let released = Arc::new(std::sync::Mutex::new(Some(released)));
    let mut router = prepared(
        Router::new()
            .route(
                ROUTE,
                get(move || {
                    let released = released.lock().unwrap().take();
                    async move {
                        if let Some(released) = released {
                            let _ = released.await;
                        }
                        "ok"
                    }
                }),
            )
            .layer(layer.clone()),
    );
    let mut pending = Box::pin(Service::<Request<Body>>::call(&mut router, request()));
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(pending.as_mut().poll(&mut cx).is_pending());
    drop(router);
    drop(layer);
    drop(registry);
    release.send(()).unwrap();
    let Poll::Ready(Ok(response)) = pending.as_mut().poll(&mut cx) else {
        panic!("the request finishes once released");
    };
    assert_eq!(response.status(), 200);
    drop(response);
    drop(pending);
    let left = live_bytes() - before;
    assert!(left.abs() <= MAX_BYTES_LEFT, "{left} bytes left");
}

/// Allocations per request of `router` for requests carrying a W3C
/// `traceparent` header (the header's own allocations included).
fn traced_allocations_per_request(router: Router) -> f64 {
    allocations_per_request_of(router, || {
        Request::get("/api/followups/42")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .unwrap()
    })
}

/// Native buckets and exemplars are on by default: once a series has its
/// exemplar slots (its first traced request), a traced request allocates
/// nothing more than it does through an empty layer.
#[test]
fn exemplars_allocate_nothing_per_request_once_a_series_has_its_slots() {
    let empty = traced_allocations_per_request(prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(PassThroughLayer),
    ));
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let ours = traced_allocations_per_request(prepared(
        Router::new()
            .route(ROUTE, get(handler))
            .layer(layer.clone()),
    ));
    assert_eq!(ours, empty, "empty layer {empty}, metrics {ours}");
    // One exemplar per bucket the requests landed in: usually the first,
    // but a busy machine can push a request or two into later ones.
    let kept = layer.exemplars();
    assert!(!kept.is_empty());
    for exemplar in &kept {
        assert_eq!(exemplar.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
