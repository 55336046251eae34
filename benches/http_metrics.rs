//! Per-request cost of the request-latency middleware, against baselines
//! measured in the same run (see `BENCHMARKS.md`, "Request-latency
//! middleware").
//!
//! Every case calls the same axum router, one `GET /api/followups/{id}` route,
//! synchronously (the handler never waits): build the request, call the
//! router, poll the response body to its end, drop everything. Cases:
//!
//! - `bare`: no layer;
//! - `empty_layer`: `Router::layer` with a pass-through layer — what axum's
//!   per-route boxing costs any layer;
//! - `metrics_layer`: `Router::layer(HttpMetricsLayer)`;
//! - `empty_handler_layer` / `metrics_handler_layer`: the same two layers
//!   applied with `Handler::layer`, which skips `Router::layer`'s boxing
//!   (`MatchedPath` is already set when a handler runs);
//! - `naive_prometheus_client`: a straightforward layer over
//!   prometheus-client's `Family<_, Histogram>` and `Family<_, Gauge>`;
//! - `axum_prometheus`: axum-prometheus's `PrometheusMetricLayer`.
//!
//! Each runs on one thread and on two threads hitting the same route (time
//! per request as seen by each thread). Allocations per request are counted
//! with a per-thread counting allocator and printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::handler::Handler;
use axum::http::{Request, Response};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body::Body as _;
use okr_exporter::http_metrics::HttpMetricsLayer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

// ---- allocation counting -------------------------------------------------

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

// ---- baselines -----------------------------------------------------------

/// A layer that does nothing.
#[derive(Clone)]
struct PassThroughLayer;

impl<S> Layer<S> for PassThroughLayer {
    type Service = PassThrough<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PassThrough(inner)
    }
}

/// A layer that does nothing but carries state, as any useful layer does
/// (axum clones a handler into a fresh box per request, which is free only
/// for zero-sized handlers).
#[derive(Clone)]
struct StatefulPassThroughLayer(#[allow(dead_code)] Arc<()>);

impl<S> Layer<S> for StatefulPassThroughLayer {
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

// ---- the straightforward prometheus-client layer -------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActiveLabels {
    method: String,
    route: String,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
struct NaiveLayer {
    durations: DurationFamily,
    active: Family<ActiveLabels, Gauge>,
}

impl NaiveLayer {
    fn new(registry: &mut Registry) -> Self {
        fn histogram() -> Histogram {
            Histogram::new(okr_exporter::http_metrics::DEFAULT_BUCKETS)
        }
        let layer = Self {
            durations: Family::new_with_constructor(histogram as fn() -> Histogram),
            active: Family::default(),
        };
        registry.register(
            "http_server_request_duration_seconds",
            "Request duration",
            layer.durations.clone(),
        );
        registry.register(
            "http_server_active_requests",
            "In flight",
            layer.active.clone(),
        );
        layer
    }
}

impl<S> Layer<S> for NaiveLayer {
    type Service = NaiveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        NaiveService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct NaiveService<S> {
    inner: S,
    layer: NaiveLayer,
}

impl<S> Service<Request<Body>> for NaiveService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = NaiveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = request.method().as_str().to_owned();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "__unmatched__".to_owned(), |p| p.as_str().to_owned());
        let active = self
            .layer
            .active
            .get_or_create(&ActiveLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .clone();
        active.inc();
        NaiveFuture {
            inner: self.inner.call(request),
            durations: self.layer.durations.clone(),
            active,
            method,
            route,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    struct NaiveFuture<F> {
        #[pin]
        inner: F,
        durations: DurationFamily,
        active: Gauge,
        method: String,
        route: String,
        start: Instant,
    }
}

impl<F, E> Future for NaiveFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let status = result.as_ref().map_or(500, |r| r.status().as_u16());
        this.durations
            .get_or_create(&DurationLabels {
                method: std::mem::take(this.method),
                route: std::mem::take(this.route),
                status,
            })
            .observe(this.start.elapsed().as_secs_f64());
        this.active.dec();
        Poll::Ready(result)
    }
}

// ---- the cases -------------------------------------------------------------

const ROUTE: &str = "/api/followups/{id}";

async fn handler() -> &'static str {
    "ok"
}

struct Case {
    name: &'static str,
    router: Router,
}

fn cases() -> Vec<Case> {
    let mut registry = Registry::default();
    let metrics = HttpMetricsLayer::new(&mut registry);
    let mut naive_registry = Registry::default();
    let naive = NaiveLayer::new(&mut naive_registry);
    let (axum_prometheus, _handle) = axum_prometheus::PrometheusMetricLayer::pair();

    let routes = || Router::new().route(ROUTE, get(handler));
    // `with_state` turns handlers into routes once, as `axum::serve` does per
    // connection.
    let prepared = |router: Router| router.with_state(());
    vec![
        Case {
            name: "bare",
            router: prepared(routes()),
        },
        Case {
            name: "empty_layer",
            router: prepared(routes().layer(PassThroughLayer)),
        },
        Case {
            name: "metrics_layer",
            router: prepared(routes().layer(metrics.clone())),
        },
        Case {
            name: "empty_handler_layer",
            router: prepared(Router::new().route(
                ROUTE,
                get(handler.layer(StatefulPassThroughLayer(Arc::new(())))),
            )),
        },
        Case {
            name: "metrics_handler_layer",
            router: prepared(Router::new().route(ROUTE, get(handler.layer(metrics)))),
        },
        Case {
            name: "naive_prometheus_client",
            router: prepared(routes().layer(naive)),
        },
        Case {
            name: "axum_prometheus",
            router: prepared(routes().layer(axum_prometheus)),
        },
    ]
}

/// One request: build it, call the router, drain the body, drop it all.
#[inline]
fn request(router: &mut Router) -> usize {
    let request = Request::get("/api/followups/42")
        .body(Body::empty())
        .expect("static request is valid");
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = pin!(Service::<Request<Body>>::call(router, request));
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("handler completes without waiting");
    };
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        bytes += frame.data_ref().map_or(0, |d| d.len());
    }
    bytes
}

fn allocations_per_request(router: &mut Router) -> f64 {
    const N: u64 = 10_000;
    for _ in 0..100 {
        request(router);
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..N {
        black_box(request(router));
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / N as f64
}

/// Wall time for each of two threads to make `iters` requests on the same
/// route at the same time (the slower thread's time).
fn two_threads(router: &Router, iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let mut router = router.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(request(&mut router));
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker thread"))
            .max()
            .unwrap_or_default()
    })
}

fn benches(c: &mut Criterion) {
    // axum-prometheus spawns its upkeep task on the ambient tokio runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let mut cases = cases();

    println!("allocations per request (request building included):");
    for case in &mut cases {
        let allocations = allocations_per_request(&mut case.router);
        println!("  {:<24} {allocations:>6.2}", case.name);
    }

    let mut group = c.benchmark_group("request_1_thread");
    for case in &mut cases {
        group.bench_function(case.name, |b| b.iter(|| request(&mut case.router)));
    }
    group.finish();

    let mut group = c.benchmark_group("request_2_threads_same_route");
    for case in &cases {
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| two_threads(&case.router, iters))
        });
    }
    group.finish();

    // The cost the hand-written series replace: two clock reads and one
    // prometheus-client histogram observation (a mutex per observation).
    let histogram = Histogram::new(okr_exporter::http_metrics::DEFAULT_BUCKETS);
    let mut group = c.benchmark_group("observe");
    group.bench_function("prometheus_client_histogram_1_thread", |b| {
        b.iter(|| {
            let start = Instant::now();
            histogram.observe(black_box(start.elapsed().as_secs_f64()));
        })
    });
    group.bench_function("prometheus_client_histogram_2_threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..2)
                    .map(|_| {
                        let (histogram, barrier) = (&histogram, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                let t = Instant::now();
                                histogram.observe(black_box(t.elapsed().as_secs_f64()));
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("worker thread"))
                    .max()
                    .unwrap_or_default()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = http_metrics;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(http_metrics);
