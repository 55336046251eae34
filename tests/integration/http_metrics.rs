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

#[tokio::test]
async fn scanner_traffic_does_not_grow_the_series() {
    const ODD_METHODS: [&str; 6] = ["PROPFIND", "FOO", "M-SEARCH", "DEBUG", "TRACK", "X"];
    const STANDARD: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
    ];
    let mut registry = Registry::default();
    let app = followups_app(&mut registry);
    let mut rng = StdRng::seed_from_u64(0x5ca1ab1e);

    let random_request = |rng: &mut StdRng| {
        let segments = rng.random_range(1..5);
        let mut path = String::new();
        for _ in 0..segments {
            let len = rng.random_range(1..12);
            path.push('/');
            path.extend((0..len).map(|_| rng.sample(rand::distr::Alphanumeric) as char));
        }
        if rng.random_bool(0.2) {
            path = format!("/api/followups/{}", rng.random::<u64>());
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

    let mut after_warm_up = 0;
    for i in 0..10_000 {
        let request = random_request(&mut rng);
        let _ = app.clone().oneshot(request).await;
        if i == 999 {
            after_warm_up = series_count(&scrape(&registry));
        }
    }
    let samples = scrape(&registry);
    assert_eq!(series_count(&samples), after_warm_up);

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
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "http_server_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 10_000.0);
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
