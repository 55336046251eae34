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
//! - `metrics_layer`: `Router::layer(HttpMetricsLayer)` with the defaults:
//!   classic and native buckets, exemplars read from `traceparent`;
//! - `metrics_classic_only`: the layer with native buckets and exemplars
//!   off — the layer as it was before either existed;
//! - `*_headers`: the requests carry seven headers a browser sends, none a
//!   trace id, so the layer looks for `traceparent` among them (what a real
//!   request costs; without headers the lookup is skipped);
//! - `*_traced`: the same seven headers and a W3C `traceparent`, so the
//!   metrics layer keeps an exemplar;
//! - `empty_handler_layer` / `metrics_handler_layer`: the same two layers
//!   applied with `Handler::layer`, which skips `Router::layer`'s boxing
//!   (`MatchedPath` is already set when a handler runs);
//! - `naive_prometheus_client`: a straightforward layer over
//!   prometheus-client's `Family<_, Histogram>` and `Family<_, Gauge>`;
//! - `axum_prometheus`: axum-prometheus's `PrometheusMetricLayer`.
//!
//! The `layer_only` cases wrap a service that answers at once instead of a
//! router, with `MatchedPath` set on the request as axum would: the
//! middleware's own cost, without the router's. Two controls share nothing
//! between threads: `control_no_sharing` (plain arithmetic) and
//! `control_two_clock_reads` (the middleware's two TSC reads); their
//! 2-thread/1-thread ratios show what this machine charges such work when
//! both vCPUs are busy, with no contention at all.
//!
//! Each runs on one thread and on two threads hitting the same route (time
//! per request as seen by each thread). Allocations per request are counted
//! with a per-thread counting allocator and printed first, then a paired
//! comparison (all cases interleaved in rounds, differences taken within a
//! round), then the criterion groups.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
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

// ---- the subjects ----------------------------------------------------------

const ROUTE: &str = "/api/followups/{id}";

async fn handler() -> &'static str {
    "ok"
}

/// Serves one request per call.
type Runner = Box<dyn FnMut() -> usize + Send>;

/// A benchmark case: makes one runner per thread.
struct Case {
    name: &'static str,
    make: Box<dyn Fn() -> Runner + Sync>,
}

impl Case {
    fn router(name: &'static str, router: Router) -> Self {
        Self::router_with(name, router, &[])
    }

    /// As [`router`](Self::router), each request carrying `headers`.
    fn router_with(name: &'static str, router: Router, headers: &'static [(&str, &str)]) -> Self {
        Self {
            name,
            make: Box::new(move || {
                let mut router = router.clone();
                Box::new(move || request_with(&mut router, headers))
            }),
        }
    }

    fn service<S>(name: &'static str, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Self::service_with(name, service, &[])
    }

    /// As [`service`](Self::service), each request carrying `headers`.
    fn service_with<S>(name: &'static str, service: S, headers: &'static [(&str, &str)]) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        // One `MatchedPath` per benchmark thread, the same in every round
        // (runners are made anew per round with two threads): behind
        // `nest_service` axum builds a fresh one per request, so each thread
        // gets its own instead of sharing one reference count with the
        // other, and reusing them keeps the rounds alike.
        let paths = [captured_matched_path(), captured_matched_path()];
        let next = AtomicUsize::new(0);
        Self {
            name,
            make: Box::new(move || {
                let mut service = service.clone();
                let matched_path = paths[next.fetch_add(1, Ordering::Relaxed) % 2].clone();
                Box::new(move || call_service_with(&mut service, &matched_path, headers))
            }),
        }
    }
}

/// The whole stack: an axum router with one `GET /api/followups/{id}` route.
fn router_cases(logged: Option<HttpMetricsLayer>) -> Vec<Case> {
    let mut registry = Registry::default();
    let metrics = HttpMetricsLayer::new(&mut registry);
    let classic_only = classic_only_layer();
    let mut naive_registry = Registry::default();
    let naive = NaiveLayer::new(&mut naive_registry);
    let (axum_prometheus, _handle) = axum_prometheus::PrometheusMetricLayer::pair();

    let routes = || Router::new().route(ROUTE, get(handler));
    // `with_state` turns handlers into routes once, as `axum::serve` does per
    // connection.
    let prepared = |router: Router| router.with_state(());
    let mut cases = vec![
        Case::router("bare", prepared(routes())),
        Case::router("empty_layer", prepared(routes().layer(PassThroughLayer))),
        Case::router("metrics_layer", prepared(routes().layer(metrics.clone()))),
        Case::router(
            "metrics_classic_only",
            prepared(routes().layer(classic_only)),
        ),
        Case::router_with(
            "empty_layer_headers",
            prepared(routes().layer(PassThroughLayer)),
            BROWSER_HEADERS,
        ),
        Case::router_with(
            "metrics_layer_headers",
            prepared(routes().layer(metrics.clone())),
            BROWSER_HEADERS,
        ),
        Case::router_with(
            "metrics_classic_only_headers",
            prepared(routes().layer(classic_only_layer())),
            BROWSER_HEADERS,
        ),
        Case::router_with(
            "empty_layer_traced",
            prepared(routes().layer(PassThroughLayer)),
            TRACED,
        ),
        Case::router_with(
            "metrics_layer_traced",
            prepared(routes().layer(metrics.clone())),
            TRACED,
        ),
    ];
    if let Some(logged) = logged {
        cases.push(Case::router(
            "metrics_layer_request_log",
            prepared(routes().layer(logged)),
        ));
    }
    cases.extend([
        Case::router(
            "empty_handler_layer",
            prepared(Router::new().route(
                ROUTE,
                get(handler.layer(StatefulPassThroughLayer(Arc::new(())))),
            )),
        ),
        Case::router(
            "metrics_handler_layer",
            prepared(Router::new().route(ROUTE, get(handler.layer(metrics)))),
        ),
        Case::router("naive_prometheus_client", prepared(routes().layer(naive))),
        Case::router("axum_prometheus", prepared(routes().layer(axum_prometheus))),
    ]);
    cases
}

/// Our layer feeding the request log (`--request-log`): a bounded queue
/// drained by the real batched writer into an embedded PostgreSQL. `None`
/// (with a note) when no PostgreSQL server binaries are installed.
fn request_log_layer() -> Option<HttpMetricsLayer> {
    let pg = match okr_exporter::embedded_pg::EmbeddedPostgres::start() {
        Ok(pg) => pg,
        Err(e) => {
            println!("request-log case skipped: {e}");
            return None;
        }
    };
    let url = okr_exporter::config::DatabaseUrl::parse_arg(&pg.url("postgres")).ok()?;
    let pool = okr_exporter::db::lazy_pool(&url, 2).ok()?;
    let handle = tokio::runtime::Handle::current();
    std::thread::scope(|s| {
        s.spawn(|| handle.block_on(okr_exporter::db::migrate(&pool)))
            .join()
            .ok()
    })?
    .ok()?;
    let mut registry = Registry::default();
    let (sink, writer) = okr_exporter::request_log::start(
        pool,
        &mut registry,
        okr_exporter::request_log::RequestLogOptions::default(),
    );
    // The cluster and the writer live as long as the benchmark process; the
    // cluster's watchdog removes it when the process exits.
    std::mem::forget(pg);
    std::mem::forget(writer);
    Some(
        HttpMetricsLayer::builder()
            .request_sink(sink)
            .user_id_header(http::HeaderName::from_static("x-user-id"))
            .register(&mut registry),
    )
}

/// The layers alone around a service that answers at once, with the request's
/// `MatchedPath` set as axum would: the middleware's own cost without the
/// router's (and its noise).
fn layer_only_cases(logged: Option<HttpMetricsLayer>) -> Vec<Case> {
    let inner = tower::service_fn(|_: Request<Body>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    });
    let mut registry = Registry::default();
    let metrics = HttpMetricsLayer::new(&mut registry);
    let mut naive_registry = Registry::default();
    let naive = NaiveLayer::new(&mut naive_registry);
    let clock = quanta::Clock::new();
    let mut cases = vec![
        Case::service("empty_layer", PassThroughLayer.layer(inner)),
        Case::service("metrics_layer", metrics.layer(inner)),
        Case::service("metrics_classic_only", classic_only_layer().layer(inner)),
        Case::service_with(
            "empty_layer_headers",
            PassThroughLayer.layer(inner),
            BROWSER_HEADERS,
        ),
        Case::service_with(
            "metrics_layer_headers",
            metrics.layer(inner),
            BROWSER_HEADERS,
        ),
        Case::service_with(
            "metrics_classic_only_headers",
            classic_only_layer().layer(inner),
            BROWSER_HEADERS,
        ),
        Case::service_with("empty_layer_traced", PassThroughLayer.layer(inner), TRACED),
        Case::service_with("metrics_layer_traced", metrics.layer(inner), TRACED),
    ];
    if let Some(logged) = logged {
        cases.push(Case::service(
            "metrics_layer_request_log",
            logged.layer(inner),
        ));
    }
    cases.extend([
        Case::service("naive_prometheus_client", naive.layer(inner)),
        Case {
            name: "control_no_sharing",
            make: Box::new(|| Box::new(control_work)),
        },
        Case {
            name: "control_two_clock_reads",
            make: Box::new(move || {
                let clock = clock.clone();
                Box::new(move || {
                    let start = clock.raw();
                    clock.delta_as_nanos(start, black_box(clock.raw())) as usize
                })
            }),
        },
    ]);
    cases
}

/// Arithmetic that touches no memory shared between threads, about as long
/// as an `empty_layer` request: how much two busy threads slow each other on
/// this machine when they share nothing (the two vCPUs share a core's
/// resources), to read the contended cases against.
#[inline(never)]
fn control_work() -> usize {
    let mut x = black_box(1u64);
    for _ in 0..64 {
        x = black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17));
    }
    x as usize
}

/// A `MatchedPath` for [`ROUTE`], taken from a real request (it has no public
/// constructor).
fn captured_matched_path() -> MatchedPath {
    let captured = Arc::new(std::sync::Mutex::new(None));
    let slot = Arc::clone(&captured);
    let inner: Router = Router::new().route(
        "/followups/{id}",
        get(move |path: MatchedPath| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(path);
            }
            std::future::ready("ok")
        }),
    );
    let mut router: Router = Router::new().nest_service("/api", inner);
    request(&mut router);
    let path = captured.lock().ok().and_then(|mut slot| slot.take());
    path.expect("handler saw the matched path")
}

/// One request: build it, call the router, drain the body, drop it all.
#[inline]
fn request(router: &mut Router) -> usize {
    request_with(router, &[])
}

/// The layer without native buckets or exemplars, as it was before them.
fn classic_only_layer() -> HttpMetricsLayer {
    HttpMetricsLayer::builder()
        .native_histogram(false)
        .exemplars(false)
        .register(&mut Registry::default())
}

/// A W3C trace context header, as a traced client sends it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// As [`request`], with `headers`.
#[inline]
fn request_with(router: &mut Router, headers: &'static [(&str, &str)]) -> usize {
    let mut request = Request::get("/api/followups/42")
        .body(Body::empty())
        .expect("static request is valid");
    for &(name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    respond(Service::<Request<Body>>::call(router, request))
}

/// Headers a browser's API call carries, none of them a trace id: the
/// layer then looks for `traceparent` among them.
const BROWSER_HEADERS: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
    ),
    ("accept", "application/json"),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
    ("authorization", "Bearer 0123456789abcdef"),
    ("x-user-id", "u-42"),
];

/// The headers above and a W3C `traceparent`.
const TRACED: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
    ),
    ("accept", "application/json"),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
    ("authorization", "Bearer 0123456789abcdef"),
    ("x-user-id", "u-42"),
    ("traceparent", TRACEPARENT),
];

/// As [`call_service`], with `headers`.
#[inline]
fn call_service_with<S>(
    service: &mut S,
    matched_path: &MatchedPath,
    headers: &'static [(&str, &str)],
) -> usize
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let mut request = Request::new(Body::empty());
    for &(name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    request.extensions_mut().insert(matched_path.clone());
    respond(service.call(request))
}

/// Polls a response future that is ready at once and drains the body.
#[inline]
fn respond<F>(future: F) -> usize
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = pin!(future);
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("the response is ready without waiting");
    };
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        bytes += frame.data_ref().map_or(0, |d| d.len());
    }
    bytes
}

fn allocations_per_request(case: &Case) -> f64 {
    const N: u64 = 10_000;
    let mut run = (case.make)();
    for _ in 0..100 {
        run();
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..N {
        black_box(run());
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / N as f64
}

/// Keeps a benchmark thread on one CPU, so that the two threads of a
/// contended case really run on two cores and nothing migrates mid-round.
#[cfg(target_os = "linux")]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `set` is a plain bitmask owned by this frame; the call only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_cpu(_cpu: usize) {}

/// Wall time for each of two threads, one per CPU, to make `iters` requests
/// on the same route at the same time (the slower thread's time).
fn two_threads(case: &Case, iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|cpu| {
                let barrier = &barrier;
                scope.spawn(move || {
                    pin_to_cpu(cpu);
                    let mut run = (case.make)();
                    run();
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(run());
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

/// Runs every case `per_round` times per round, rotating the order each
/// round, and returns ns/request per case per round. Differences between
/// cases are taken within a round, so slow drifts of a shared machine cancel
/// out instead of landing on whichever case ran during a disturbance.
fn paired_rounds(cases: &[Case], threads: usize, rounds: usize, per_round: u64) -> Vec<Vec<f64>> {
    let mut runners: Vec<Runner> = cases.iter().map(|case| (case.make)()).collect();
    let mut results = vec![Vec::with_capacity(rounds); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let elapsed = if threads == 1 {
                let run = &mut runners[i];
                let start = Instant::now();
                for _ in 0..per_round {
                    black_box(run());
                }
                start.elapsed()
            } else {
                two_threads(&cases[i], per_round)
            };
            results[i].push(elapsed.as_nanos() as f64 / per_round as f64);
        }
    }
    results
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

/// Prints median ns/request per case and the median (and interquartile
/// range) of its per-round difference to `reference` cases.
fn print_paired(title: &str, cases: &[Case], results: &[Vec<f64>], references: &[&str]) {
    let references: Vec<(usize, &str)> = references
        .iter()
        .filter_map(|name| Some((cases.iter().position(|c| c.name == *name)?, *name)))
        .collect();
    println!("{title}: median ns/request; per-round difference: median [p25, p75]");
    print!("  {:<30} {:>7}", "case", "ns/req");
    for (_, name) in &references {
        print!("   {:>30}", format!("over {name}"));
    }
    println!();
    for (i, case) in cases.iter().enumerate() {
        print!("  {:<30} {:>7.0}", case.name, quantile(&results[i], 0.5));
        for (reference, _) in &references {
            let diff: Vec<f64> = results[i]
                .iter()
                .zip(&results[*reference])
                .map(|(x, y)| x - y)
                .collect();
            print!(
                "   {:>6.0} [{:>6.0}, {:>6.0}]",
                quantile(&diff, 0.5),
                quantile(&diff, 0.25),
                quantile(&diff, 0.75)
            );
        }
        println!();
    }
}

/// Parameters of one paired comparison.
struct PairedRun {
    what: &'static str,
    threads: usize,
    rounds: usize,
    per_round: u64,
}

impl PairedRun {
    fn new(what: &'static str, threads: usize, rounds: usize, per_round: u64) -> Self {
        Self {
            what,
            threads,
            rounds,
            per_round,
        }
    }
}

fn benches(c: &mut Criterion) {
    // axum-prometheus spawns its upkeep task on the ambient tokio runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let logged = request_log_layer();
    let router_cases = router_cases(logged.clone());
    let layer_cases = layer_only_cases(logged);
    // After building the layers: their shard count follows the parallelism
    // the building thread may use.
    pin_to_cpu(0);

    println!("allocations per request (request building included):");
    for case in &router_cases {
        println!(
            "  router/{:<24} {:>6.2}",
            case.name,
            allocations_per_request(case)
        );
    }
    for case in &layer_cases {
        println!(
            "  layer_only/{:<20} {:>6.2}",
            case.name,
            allocations_per_request(case)
        );
    }

    // `cargo test --benches` runs this without `--bench`: a smoke test.
    let scale = if std::env::args().any(|a| a == "--bench") {
        1
    } else {
        100
    };
    let runs = [
        (PairedRun::new("router", 1, 301, 2_000), &router_cases),
        (PairedRun::new("router", 2, 201, 2_000), &router_cases),
        (PairedRun::new("layer only", 1, 301, 5_000), &layer_cases),
        (PairedRun::new("layer only", 2, 201, 5_000), &layer_cases),
    ];
    // A criterion filter (`cargo bench --bench http_metrics -- <filter>`)
    // selects single cases; the paired comparison then is skipped.
    let filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    for (run, cases) in runs.into_iter().filter(|_| !filtered) {
        let PairedRun {
            what,
            threads,
            rounds,
            per_round,
        } = run;
        let (rounds, per_round) = (rounds / scale + 1, per_round / scale as u64);
        let results = paired_rounds(cases, threads, rounds, per_round);
        let title = format!(
            "{what}, {threads} thread(s) on one route, {rounds} rounds x {per_round} requests per thread"
        );
        print_paired(
            &title,
            cases,
            &results,
            &[
                "empty_layer",
                "metrics_classic_only",
                "empty_layer_headers",
                "metrics_classic_only_headers",
            ],
        );
    }

    // `PAIRED_ONLY=1 cargo bench --bench http_metrics` stops after the
    // paired comparison (about a minute instead of three).
    if std::env::var_os("PAIRED_ONLY").is_some() {
        return;
    }
    for (group, cases) in [("router", &router_cases), ("layer_only", &layer_cases)] {
        let mut criterion_group = c.benchmark_group(format!("{group}_1_thread"));
        for case in cases.iter() {
            let mut run = (case.make)();
            criterion_group.bench_function(case.name, |b| b.iter(&mut run));
        }
        criterion_group.finish();
        let mut criterion_group = c.benchmark_group(format!("{group}_2_threads_same_route"));
        for case in cases.iter() {
            criterion_group.bench_function(case.name, |b| {
                b.iter_custom(|iters| two_threads(case, iters))
            });
        }
        criterion_group.finish();
    }

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
                    .map(|cpu| {
                        let (histogram, barrier) = (&histogram, &barrier);
                        scope.spawn(move || {
                            pin_to_cpu(cpu);
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
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500));
    targets = benches
}
criterion_main!(http_metrics);
