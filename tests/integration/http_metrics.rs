//! The request-latency middleware end to end: over real HTTP (latencies,
//! client disconnects, streaming), under scanner traffic (bounded series) and
//! under concurrency (exact counts). No database needed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::handler::Handler;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{get, patch, post};
use futures_util::FutureExt;
use okr_exporter::http_metrics::{DEFAULT_UNMATCHED_ROUTE, HttpMetricsLayer};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{Service, ServiceExt};

/// One exposition sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses OpenMetrics text; enough for the label values these tests use (no
/// escaped quotes or commas inside values).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label is key=\"value\"");
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

fn scrape(registry: &Registry) -> Vec<Sample> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    parse(&text)
}

/// Value of the sample `name` whose labels include all of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn duration_count(samples: &[Sample], method: &str, route: &str, status: &str) -> Option<f64> {
    value(
        samples,
        "http_server_request_duration_seconds_count",
        &[
            ("http_request_method", method),
            ("http_route", route),
            ("http_response_status_code", status),
        ],
    )
}

fn bucket(samples: &[Sample], route: &str, status: &str, le: &str) -> Option<f64> {
    value(
        samples,
        "http_server_request_duration_seconds_bucket",
        &[
            ("http_route", route),
            ("http_response_status_code", status),
            ("le", le),
        ],
    )
}

fn active(samples: &[Sample], method: &str, route: &str) -> Option<f64> {
    value(
        samples,
        "http_server_active_requests",
        &[("http_request_method", method), ("http_route", route)],
    )
}

/// Serves `app` on an ephemeral port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Polls `check` on fresh scrapes until it holds, for up to five seconds.
async fn eventually(registry: &Registry, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    for _ in 0..100 {
        let samples = scrape(registry);
        if check(&samples) {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scrape(registry)
}

#[tokio::test]
async fn known_latencies_land_in_their_buckets() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route(
            "/sleep/30",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "ok"
            }),
        )
        .route(
            "/sleep/260",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(260)).await;
                "ok"
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));
    let base = serve(app).await;
    let client = reqwest::Client::new();
    for path in ["/sleep/30", "/sleep/260"] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
    }

    let samples = scrape(&registry);
    // A sleep never ends early, so the lower edges are exact; the upper edges
    // leave hundreds of milliseconds for a loaded machine.
    assert_eq!(bucket(&samples, "/sleep/30", "200", "0.025"), Some(0.0));
    assert_eq!(bucket(&samples, "/sleep/30", "200", "0.5"), Some(1.0));
    assert_eq!(bucket(&samples, "/sleep/260", "200", "0.25"), Some(0.0));
    assert_eq!(bucket(&samples, "/sleep/260", "200", "0.5"), Some(1.0));
    assert_eq!(bucket(&samples, "/sleep/260", "200", "+Inf"), Some(1.0));
    let sum = value(
        &samples,
        "http_server_request_duration_seconds_sum",
        &[("http_route", "/sleep/260")],
    )
    .expect("sum");
    assert!((0.26..0.5).contains(&sum), "sum {sum}");
}

#[tokio::test]
async fn client_disconnect_mid_request_is_recorded_and_leaves_nothing_in_flight() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));
    let base = serve(app).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let error = client
        .get(format!("{base}/slow"))
        .send()
        .await
        .expect_err("the client gives up first");
    assert!(error.is_timeout(), "{error}");
    drop(client);

    // hyper notices the closed connection and drops the request future.
    let samples = eventually(&registry, |s| {
        duration_count(s, "GET", "/slow", "499").is_some()
    })
    .await;
    assert_eq!(duration_count(&samples, "GET", "/slow", "499"), Some(1.0));
    assert_eq!(active(&samples, "GET", "/slow"), Some(0.0));
    assert_eq!(bucket(&samples, "/slow", "499", "0.1"), Some(0.0));
}

#[tokio::test]
async fn streamed_response_is_timed_until_its_last_chunk() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u8, |sent| async move {
                    if sent == 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Some((Ok::<_, Infallible>(format!("chunk {sent}\n")), sent + 1))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));
    let base = serve(app).await;
    let body = reqwest::get(format!("{base}/stream"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");

    let samples = eventually(&registry, |s| {
        duration_count(s, "GET", "/stream", "200").is_some()
    })
    .await;
    assert_eq!(duration_count(&samples, "GET", "/stream", "200"), Some(1.0));
    // Three 60 ms gaps: at least 180 ms, so nothing at or below 0.1 s.
    assert_eq!(bucket(&samples, "/stream", "200", "0.1"), Some(0.0));
    assert_eq!(bucket(&samples, "/stream", "200", "2.5"), Some(1.0));
    assert_eq!(active(&samples, "GET", "/stream"), Some(0.0));
}

fn followups_app(registry: &mut Registry) -> Router {
    Router::new()
        .route("/api/followups", post(|| async { StatusCode::CREATED }))
        .route(
            "/api/followups/{id}",
            patch(|| async { StatusCode::NO_CONTENT }).get(|| async { "{}" }),
        )
        .layer(HttpMetricsLayer::new(registry))
        .with_state(())
}

/// Number of distinct series across the three families.
fn series_count(samples: &[Sample]) -> usize {
    let mut series: Vec<(&str, &BTreeMap<String, String>)> = samples
        .iter()
        .map(|s| (s.name.as_str(), &s.labels))
        .collect();
    series.sort();
    series.dedup();
    series.len()
}

/// Requests of the scanner tests: `OKR_SCANNER_PATHS`, default 100,000.
fn scanner_paths() -> usize {
    std::env::var("OKR_SCANNER_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Scanner traffic — every request a raw path never seen before (404s, and
/// ids under a route template), half of them with odd methods — leaves the
/// series where the first thousand requests left them: the route label stays
/// a template or the unmatched value, so neither the exposition nor the
/// store grows with the paths (`tests/http_metrics_alloc.rs` checks the
/// heap). `OKR_SCANNER_PATHS` raises the count (default 100,000, a few
/// seconds).
#[test]
fn scanner_traffic_does_not_grow_the_series() {
    const ODD_METHODS: [&str; 6] = ["PROPFIND", "FOO", "M-SEARCH", "DEBUG", "TRACK", "X"];
    const STANDARD: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
    ];
    const WARM_UP: usize = 1_000;
    let total = scanner_paths().max(WARM_UP + 1);
    let mut registry = Registry::default();
    let app = followups_app(&mut registry);
    let mut rng = StdRng::seed_from_u64(0x5ca1ab1e);

    // The request number makes every path distinct.
    let scanner_request = |rng: &mut StdRng, n: usize| {
        let mut path = format!("/{n:x}");
        for _ in 0..rng.random_range(0..4) {
            let len = rng.random_range(1..12);
            path.push('/');
            path.extend((0..len).map(|_| rng.sample(rand::distr::Alphanumeric) as char));
        }
        if rng.random_bool(0.2) {
            path = format!("/api/followups/{n}-{}", rng.random::<u32>());
        }
        let method = if rng.random_bool(0.5) {
            Method::from_bytes(ODD_METHODS[rng.random_range(0..ODD_METHODS.len())].as_bytes())
                .expect("valid token")
        } else {
            STANDARD[rng.random_range(0..STANDARD.len())].clone()
        };
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("valid request")
    };

    let mut router = app.with_state(());
    let mut after_warm_up = 0;
    for n in 0..total {
        let request = scanner_request(&mut rng, n);
        let response = Service::<Request<Body>>::call(&mut router, request)
            .now_or_never()
            .expect("handlers complete without waiting")
            .unwrap_or_else(|never: Infallible| match never {});
        drop(response);
        if n + 1 == WARM_UP {
            after_warm_up = series_count(&scrape(&registry));
        }
    }
    let samples = scrape(&registry);
    assert_eq!(
        series_count(&samples),
        after_warm_up,
        "series after {WARM_UP} requests and after {total}"
    );

    // Every route label is a template or the unmatched value.
    let routes: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s.labels.get("http_route").map(String::as_str))
        .collect();
    let allowed = [
        "/api/followups",
        "/api/followups/{id}",
        "/api/followups/{id}/analytics",
        DEFAULT_UNMATCHED_ROUTE,
    ];
    assert!(routes.iter().all(|r| allowed.contains(r)), "{routes:?}");
    let methods: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s.labels.get("http_request_method").map(String::as_str))
        .collect();
    assert!(methods.contains("_OTHER"));
    assert!(
        methods.iter().all(|m| !ODD_METHODS.contains(m)),
        "{methods:?}"
    );
    let counted: f64 = samples
        .iter()
        .filter(|s| s.name == "http_server_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(counted, total as f64);
}

/// Calls a router synchronously; the handlers used here never wait.
fn call_now(router: &mut Router, method: Method, uri: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    Service::<Request<Body>>::call(router, request)
        .now_or_never()
        .expect("handler completes without waiting")
        .unwrap_or_else(|never: Infallible| match never {})
        .status()
}

#[test]
fn concurrent_requests_from_several_threads_are_counted_exactly() {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 5_000;
    let mut registry = Registry::default();
    let app = followups_app(&mut registry);

    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let mut router = app.clone();
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    // Every thread hits the same hot route, plus others.
                    let (method, uri) = match (i + t) % 4 {
                        0 | 1 => (Method::GET, "/api/followups/1"),
                        2 => (Method::PATCH, "/api/followups/2"),
                        _ => (Method::POST, "/api/followups"),
                    };
                    call_now(&mut router, method, uri);
                }
            });
        }
    });

    // Expected counts, computed from the request schedule above.
    let mut expected: BTreeMap<(&str, &str, &str), f64> = BTreeMap::new();
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let key = match (i + t) % 4 {
                0 | 1 => ("GET", "/api/followups/{id}", "200"),
                2 => ("PATCH", "/api/followups/{id}", "204"),
                _ => ("POST", "/api/followups", "201"),
            };
            *expected.entry(key).or_default() += 1.0;
        }
    }
    let samples = scrape(&registry);
    for ((method, route, status), count) in &expected {
        assert_eq!(
            duration_count(&samples, method, route, status),
            Some(*count),
            "{method} {route} {status}"
        );
        assert_eq!(bucket(&samples, route, status, "+Inf"), Some(*count));
        assert_eq!(active(&samples, method, route), Some(0.0));
    }
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "http_server_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, (THREADS * PER_THREAD) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_over_http_are_counted_exactly() {
    let mut registry = Registry::default();
    let app = followups_app(&mut registry);
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    let response = client
                        .get(format!("{base}/api/followups/{i}"))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(response.status(), 200);
                    response.bytes().await.expect("body");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let samples = scrape(&registry);
    assert_eq!(
        duration_count(&samples, "GET", "/api/followups/{id}", "200"),
        Some(400.0)
    );
    assert_eq!(active(&samples, "GET", "/api/followups/{id}"), Some(0.0));
}

#[tokio::test]
async fn layer_on_a_single_handler_sees_the_route_template() {
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let app = Router::new().route(
        "/api/followups/{id}/analytics",
        get((|| async { "{}" }).layer(layer)),
    );
    let response = app
        .oneshot(
            Request::get("/api/followups/9/analytics")
                .body(Body::empty())
                .expect("valid request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    let samples = scrape(&registry);
    assert_eq!(
        duration_count(&samples, "GET", "/api/followups/{id}/analytics", "200"),
        Some(1.0)
    );
}

/// Milliseconds a timed stress test runs: `OKR_RACE_TEST_MILLIS`, default
/// `default`.
fn stress_millis(default: u64) -> Duration {
    Duration::from_millis(
        std::env::var("OKR_RACE_TEST_MILLIS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Scrapes that race the first request of many new (route, method, status)
/// series show only series some request produced: end to end, through the
/// router and the exposition, what `store.rs`'s
/// `scrapes_racing_first_observations_see_only_produced_series` checks on the
/// store. That one catches a walk that reads a slot's key before its series
/// within a fraction of a second; this one, whose scrapes spend most of their
/// time encoding, caught it in one of two ten-second runs. Each
/// round registers a fresh layer, so every request of a round creates its
/// series; a layer's state lives for the process (~100 KB a round here),
/// hence the short default (`OKR_RACE_TEST_MILLIS`, 500 ms) and the cap on
/// rounds. More threads than cores make the scrapers lose their CPU mid-walk
/// often, and one bucket bound keeps a scrape short.
#[test]
fn scrapes_racing_new_series_show_only_series_requests_produced() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex, RwLock};
    use std::time::Instant;

    const WRITERS: usize = 3;
    const SCRAPERS: usize = 2;
    const ROUTES: usize = 2;
    const KEYS_PER_WRITER: u16 = 24;
    const MAX_ROUNDS: usize = 3_000;
    // Never GET or HEAD, so a series read with a method index of 0 stands out.
    const METHODS: [&str; 7] = ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "FOO"];
    fn method_label(method: &str) -> &str {
        if method == "FOO" { "_OTHER" } else { method }
    }
    let request_of = |writer: usize, i: u16| {
        let method = METHODS[usize::from(i) % METHODS.len()];
        let status = 200 + 100 * writer as u16 + i;
        (method, status)
    };
    let routes: Vec<String> = (0..ROUTES)
        .map(|r| format!("/race/{r}/{{status}}"))
        .collect();
    let mut produced = BTreeSet::new();
    let mut produced_in_flight = BTreeSet::new();
    for route in &routes {
        for writer in 0..WRITERS {
            for i in 0..KEYS_PER_WRITER {
                let (method, status) = request_of(writer, i);
                let method = method_label(method);
                produced.insert(format!(
                    "http_request_method=\"{method}\",http_route=\"{route}\",http_response_status_code=\"{status}\""
                ));
                produced_in_flight.insert(format!(
                    "http_request_method=\"{method}\",http_route=\"{route}\""
                ));
            }
        }
    }

    let new_round = || {
        let mut registry = Registry::default();
        let layer = HttpMetricsLayer::builder()
            .buckets([0.1])
            .latency_targets::<&str>([])
            .register(&mut registry);
        let mut app = Router::new();
        for route in &routes {
            app = app.route(
                route,
                axum::routing::any(
                    |axum::extract::Path(status): axum::extract::Path<u16>| async move {
                        StatusCode::from_u16(status).expect("valid status")
                    },
                ),
            );
        }
        Arc::new((registry, app.layer(layer)))
    };
    let current = RwLock::new(new_round());
    let round_start = Barrier::new(WRITERS);
    let round_end = Barrier::new(WRITERS);
    let done = AtomicBool::new(false);
    let deadline = Instant::now() + stress_millis(500);
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |failure: String| {
        let mut failures = failures.lock().expect("failures lock");
        if failures.len() < 20 {
            failures.push(failure);
        }
    };
    let (scrapes, rounds) = (AtomicUsize::new(0), AtomicUsize::new(0));

    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (current, done, new_round) = (&current, &done, &new_round);
            let (round_start, round_end, rounds, routes) =
                (&round_start, &round_end, &rounds, &routes);
            scope.spawn(move || {
                loop {
                    if writer == 0 {
                        *current.write().expect("round lock") = new_round();
                        let round = rounds.fetch_add(1, Ordering::Relaxed) + 1;
                        if Instant::now() >= deadline || round >= MAX_ROUNDS {
                            done.store(true, Ordering::Relaxed);
                        }
                    }
                    round_start.wait();
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut router = current.read().expect("round lock").1.clone();
                    for i in 0..KEYS_PER_WRITER {
                        for route in routes {
                            let (method, status) = request_of(writer, i);
                            let uri = route.replace("{status}", &status.to_string());
                            let method = Method::from_bytes(method.as_bytes()).expect("method");
                            assert_eq!(call_now(&mut router, method, &uri).as_u16(), status);
                        }
                    }
                    round_end.wait();
                }
            });
        }
        let (current, done, fail, scrapes) = (&current, &done, &fail, &scrapes);
        let (produced, produced_in_flight) = (&produced, &produced_in_flight);
        for _ in 0..SCRAPERS {
            scope.spawn(move || {
                let mut text = String::new();
                while !done.load(Ordering::Relaxed) {
                    let round = Arc::clone(&current.read().expect("round lock"));
                    text.clear();
                    prometheus_client::encoding::text::encode(&mut text, &round.0).expect("encode");
                    for line in text.lines() {
                        let labels = |prefix: &str| {
                            line.strip_prefix(prefix)
                                .and_then(|rest| rest.rsplit_once("} "))
                                .map(|(labels, _)| labels)
                        };
                        if let Some(labels) = labels("http_server_request_duration_seconds_count{")
                        {
                            if !produced.contains(labels) {
                                fail(format!("no request produced {line}"));
                            }
                        } else if let Some(labels) = labels("http_server_active_requests{")
                            && !produced_in_flight.contains(labels)
                        {
                            fail(format!("no request produced {line}"));
                        }
                    }
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures lock");
    assert!(
        failures.is_empty(),
        "bad scrapes among {} over {} rounds: {failures:#?}",
        scrapes.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
    );
    assert!(scrapes.load(Ordering::Relaxed) > 0);
}
