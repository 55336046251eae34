//! Unit tests of the middleware as a whole (storage details are tested in
//! `store.rs`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Method, Request, StatusCode};
use axum::routing::{get, patch, post};
use http_body::Body as _;
use prometheus_client::registry::Registry;
use tower::{Service, ServiceExt};

use super::*;

fn encode_openmetrics(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

fn encode_prometheus(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
    text
}

/// Value of the sample whose name and label set are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

fn duration_series(
    suffix: &str,
    method: &str,
    route: &str,
    status: &str,
    le: Option<&str>,
) -> String {
    // prometheus-client writes `le` before the family's labels.
    let le = le.map(|le| format!("le=\"{le}\",")).unwrap_or_default();
    format!(
        "http_server_request_duration_seconds_{suffix}{{{le}http_request_method=\"{method}\",http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
    )
}

fn count(text: &str, method: &str, route: &str, status: &str) -> Option<f64> {
    sample(text, &duration_series("count", method, route, status, None))
}

fn active(text: &str, method: &str, route: &str) -> Option<f64> {
    sample(
        text,
        &format!(
            "http_server_active_requests{{http_request_method=\"{method}\",http_route=\"{route}\"}}"
        ),
    )
}

async fn send(app: &Router, method: Method, uri: &str) -> axum::response::Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

fn le_values(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect()
}

#[tokio::test]
async fn bucket_bounds_encode_as_exact_le_strings() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route("/x", get(|| async { "x" }))
        .layer(HttpMetricsLayer::new(&mut registry));
    send(&app, Method::GET, "/x").await;

    // OpenMetrics, what Prometheus 2.x and 3.x ask for first: integer bounds
    // keep their ".0", matching the `le` strings rules and dashboards use.
    let text = encode_openmetrics(&registry);
    let expected_le = [
        "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.2", "0.25", "0.5", "0.75", "1.0",
        "2.5", "5.0", "7.5", "10.0", "+Inf",
    ];
    assert_eq!(le_values(&text), expected_le, "{text}");
    // A fast request lands in every cumulative bucket.
    for le in expected_le {
        let series = duration_series("bucket", "GET", "/x", "200", Some(le));
        assert_eq!(sample(&text, &series), Some(1.0), "{series}");
    }
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    assert!(text.contains("# UNIT http_server_request_duration_seconds seconds"));
    assert!(text.contains("# TYPE http_server_active_requests gauge"));
    assert!(text.contains("# TYPE http_server_latency_target_seconds gauge"));

    // Prometheus text 0.0.4 writes bounds the way client_golang does
    // (Prometheus 3 normalises them back to "1.0" on ingestion).
    let text = encode_prometheus(&registry);
    assert_eq!(
        le_values(&text),
        [
            "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.2", "0.25", "0.5", "0.75", "1",
            "2.5", "5", "7.5", "10", "+Inf",
        ],
        "{text}"
    );
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
}

#[tokio::test]
async fn default_latency_targets_are_exported() {
    let mut registry = Registry::default();
    let _layer = HttpMetricsLayer::new(&mut registry);
    let text = encode_openmetrics(&registry);
    let target = |method: &str, route: &str| {
        sample(
            &text,
            &format!(
                "http_server_latency_target_seconds{{http_request_method=\"{method}\",http_route=\"{route}\"}}"
            ),
        )
    };
    assert_eq!(target("POST", "/api/followups"), Some(0.5));
    assert_eq!(target("PATCH", "/api/followups/{id}"), Some(0.2));
    assert_eq!(target("GET", "/api/followups/{id}/analytics"), Some(1.0));
    assert_eq!(
        text.matches("http_server_latency_target_seconds{").count(),
        3
    );
}

#[tokio::test]
async fn configured_latency_targets_replace_the_defaults() {
    let mut registry = Registry::default();
    let _layer = HttpMetricsLayer::builder()
        .latency_target(Method::GET, "/healthz", 0.05)
        .register(&mut registry);
    let text = encode_openmetrics(&registry);
    assert_eq!(
        text.matches("http_server_latency_target_seconds{").count(),
        1
    );
    assert_eq!(
        sample(
            &text,
            "http_server_latency_target_seconds{http_request_method=\"GET\",http_route=\"/healthz\"}"
        ),
        Some(0.05)
    );

    let mut registry = Registry::default();
    let _layer = HttpMetricsLayer::builder()
        .latency_targets(std::iter::empty::<(Method, &str, f64)>())
        .register(&mut registry);
    let text = encode_openmetrics(&registry);
    assert_eq!(
        text.matches("http_server_latency_target_seconds{").count(),
        0
    );
}

#[tokio::test]
async fn custom_buckets_are_used() {
    let mut registry = Registry::default();
    let app = Router::new().route("/x", get(|| async { "x" })).layer(
        HttpMetricsLayer::builder()
            .buckets([2.0, 1.0])
            .register(&mut registry),
    );
    send(&app, Method::GET, "/x").await;
    let text = encode_openmetrics(&registry);
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_bucket{"))
        .count();
    assert_eq!(buckets, 3);
    assert!(text.contains("le=\"1.0\""));
    assert!(text.contains("le=\"2.0\""));
}

#[tokio::test]
async fn route_label_is_the_template_and_status_the_number() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route(
            "/api/followups/{id}",
            patch(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/followups",
            post(|| async { (StatusCode::CREATED, "{}") }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));
    send(&app, Method::PATCH, "/api/followups/1").await;
    send(&app, Method::PATCH, "/api/followups/2").await;
    send(&app, Method::POST, "/api/followups").await;
    let text = encode_openmetrics(&registry);
    assert_eq!(
        count(&text, "PATCH", "/api/followups/{id}", "204"),
        Some(2.0)
    );
    assert_eq!(count(&text, "POST", "/api/followups", "201"), Some(1.0));
    assert!(
        !text.contains("/api/followups/1"),
        "raw path leaked: {text}"
    );
}

#[tokio::test]
async fn unmatched_requests_share_one_label() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route("/x", get(|| async { "x" }))
        .layer(HttpMetricsLayer::new(&mut registry));
    assert_eq!(send(&app, Method::GET, "/wp-admin.php").await.status(), 404);
    send(&app, Method::GET, "/.env").await;
    let text = encode_openmetrics(&registry);
    assert_eq!(
        count(&text, "GET", DEFAULT_UNMATCHED_ROUTE, "404"),
        Some(2.0)
    );
    assert!(!text.contains("wp-admin"));

    let mut registry = Registry::default();
    let app = Router::new().route("/x", get(|| async { "x" })).layer(
        HttpMetricsLayer::builder()
            .unmatched_route_label("none")
            .register(&mut registry),
    );
    send(&app, Method::GET, "/nope").await;
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "none", "404"), Some(1.0));
}

#[tokio::test]
async fn nest_service_is_unmatched() {
    let mut registry = Registry::default();
    let inner = Router::new().route("/{anything}", get(|| async { "inner" }));
    let app = Router::new()
        .nest_service("/static", inner)
        .layer(HttpMetricsLayer::new(&mut registry));
    assert_eq!(send(&app, Method::GET, "/static/a.css").await.status(), 200);
    let text = encode_openmetrics(&registry);
    assert_eq!(
        count(&text, "GET", DEFAULT_UNMATCHED_ROUTE, "200"),
        Some(1.0)
    );
    assert!(!text.contains("a.css"));
}

#[tokio::test]
async fn nonstandard_methods_become_other() {
    let mut registry = Registry::default();
    let app = Router::new()
        .route("/x", axum::routing::any(|| async { "x" }))
        .layer(HttpMetricsLayer::new(&mut registry));
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    send(&app, propfind, "/x").await;
    send(&app, Method::from_bytes(b"BREW").unwrap(), "/x").await;
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "_OTHER", "/x", "200"), Some(2.0));
    assert!(!text.contains("PROPFIND"));
}

#[tokio::test]
async fn handler_errors_are_recorded_with_their_status() {
    async fn failing() -> Result<&'static str, (StatusCode, &'static str)> {
        Err((StatusCode::UNPROCESSABLE_ENTITY, "bad"))
    }
    let mut registry = Registry::default();
    let app = Router::new()
        .route("/x", get(failing))
        .layer(HttpMetricsLayer::new(&mut registry));
    assert_eq!(send(&app, Method::GET, "/x").await.status(), 422);
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "/x", "422"), Some(1.0));
}

#[tokio::test]
async fn inner_service_errors_are_recorded_as_500() {
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let failing = tower::service_fn(|_: Request<Body>| async {
        Err::<http::Response<Body>, _>(std::io::Error::other("backend down"))
    });
    let result = tower::Layer::layer(&layer, failing)
        .oneshot(Request::get("/x").body(Body::empty()).unwrap())
        .await;
    assert!(result.is_err());
    let text = encode_openmetrics(&registry);
    assert_eq!(
        count(&text, "GET", DEFAULT_UNMATCHED_ROUTE, "500"),
        Some(1.0)
    );
    assert_eq!(active(&text, "GET", DEFAULT_UNMATCHED_ROUTE), Some(0.0));
}

#[tokio::test]
async fn dropped_request_is_recorded_as_499_and_leaves_no_active_request() {
    let mut registry = Registry::default();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(Mutex::new(Some(entered_tx)));
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let entered_tx = Arc::clone(&entered_tx);
                async move {
                    if let Some(tx) = entered_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));

    let task = tokio::spawn({
        let app = app.clone();
        async move { send(&app, Method::GET, "/slow").await }
    });
    entered_rx.await.unwrap();
    let text = encode_openmetrics(&registry);
    assert_eq!(active(&text, "GET", "/slow"), Some(1.0));
    assert_eq!(count(&text, "GET", "/slow", "499"), None);

    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "/slow", "499"), Some(1.0));
    assert_eq!(active(&text, "GET", "/slow"), Some(0.0));
}

#[tokio::test]
async fn streaming_body_is_timed_until_its_end() {
    let mut registry = Registry::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<&'static str, Infallible>>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let rx = rx.lock().unwrap().take().unwrap();
                async move { Body::from_stream(tokio_stream_from(rx)) }
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));

    let response = send(&app, Method::GET, "/stream").await;
    let mut body = response.into_body();
    // Response head is out, body still streaming: not yet recorded.
    let text = encode_openmetrics(&registry);
    assert_eq!(active(&text, "GET", "/stream"), Some(1.0));
    assert_eq!(count(&text, "GET", "/stream", "200"), None);

    tx.send(Ok("a")).await.unwrap();
    let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
    assert!(frame.is_some());
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(tx);
    while std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
        .await
        .is_some()
    {}

    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "/stream", "200"), Some(1.0));
    assert_eq!(active(&text, "GET", "/stream"), Some(0.0));
    // The 30 ms spent streaming are included.
    let fast = duration_series("bucket", "GET", "/stream", "200", Some("0.025"));
    assert_eq!(sample(&text, &fast), Some(0.0));
}

#[tokio::test]
async fn streaming_body_dropped_midway_is_recorded_with_its_status() {
    let mut registry = Registry::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<&'static str, Infallible>>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let rx = rx.lock().unwrap().take().unwrap();
                async move { Body::from_stream(tokio_stream_from(rx)) }
            }),
        )
        .layer(HttpMetricsLayer::new(&mut registry));
    let response = send(&app, Method::GET, "/stream").await;
    tx.send(Ok("a")).await.unwrap();
    drop(response);
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "/stream", "200"), Some(1.0));
    assert_eq!(active(&text, "GET", "/stream"), Some(0.0));
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[derive(Default)]
struct CollectingSink(Mutex<Vec<RequestRecord>>);

impl RequestSink for CollectingSink {
    fn record(&self, record: RequestRecord) {
        self.0.lock().unwrap().push(record);
    }
}

#[tokio::test]
async fn sink_receives_one_record_per_request() {
    let sink = Arc::new(CollectingSink::default());
    let mut registry = Registry::default();
    let app = Router::new()
        .route("/api/followups/{id}", get(|| async { "x" }))
        .layer(
            HttpMetricsLayer::builder()
                .request_sink(sink.clone())
                .user_id_header(HeaderName::from_static("x-user-id"))
                .register(&mut registry),
        );
    let before = std::time::SystemTime::now();
    let request = Request::get("/api/followups/7")
        .header("x-user-id", "seller-1")
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap();
    send(&app, Method::GET, "/missing").await;

    let records = sink.0.lock().unwrap().clone();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].route, "/api/followups/{id}");
    assert_eq!(records[0].method, Method::GET);
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].user_id.as_deref(), Some("seller-1"));
    assert!(records[0].started_at >= before);
    assert_eq!(records[1].route, DEFAULT_UNMATCHED_ROUTE);
    assert_eq!(records[1].status, 404);
    assert_eq!(records[1].user_id, None);
}

#[tokio::test]
async fn layered_service_is_ready_when_inner_is() {
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    let mut svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::from("hi")))
        }),
    );
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Body::empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"hi");
}

#[tokio::test]
async fn routes_are_told_apart_by_template_with_nested_routers_and_shared_services() {
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    // One service mounted at two routes, a nested router (axum builds its
    // templates per request), and a plain route.
    let shared = get(|| async { "s" });
    let nested = Router::new().route("/items/{id}", get(|| async { "n" }));
    let app = Router::new()
        .route("/a/{id}", shared.clone())
        .route("/b/{id}", shared)
        .route("/plain", get(|| async { "p" }))
        .nest("/v1", nested)
        .layer(layer);
    for i in 0..150 {
        send(&app, Method::GET, &format!("/a/{i}")).await;
        send(&app, Method::GET, &format!("/v1/items/{i}")).await;
        if i % 3 == 0 {
            send(&app, Method::GET, &format!("/b/{i}")).await;
            send(&app, Method::GET, "/plain").await;
        }
    }
    let text = encode_openmetrics(&registry);
    assert_eq!(count(&text, "GET", "/a/{id}", "200"), Some(150.0));
    assert_eq!(count(&text, "GET", "/v1/items/{id}", "200"), Some(150.0));
    assert_eq!(count(&text, "GET", "/b/{id}", "200"), Some(50.0));
    assert_eq!(count(&text, "GET", "/plain", "200"), Some(50.0));
}

#[tokio::test]
async fn routes_beyond_the_address_cache_are_counted_exactly() {
    let mut registry = Registry::default();
    let layer = HttpMetricsLayer::new(&mut registry);
    // More routes than the address cache has slots: some share a slot, and
    // their requests take the template table every time.
    let routes = 200;
    let mut app = Router::new();
    for r in 0..routes {
        app = app.route(&format!("/r{r}/{{id}}"), get(|| async { "ok" }));
    }
    let app = app.layer(layer);
    for round in 0..3 {
        for r in 0..routes {
            send(&app, Method::GET, &format!("/r{r}/{round}")).await;
        }
    }
    let text = encode_openmetrics(&registry);
    for r in 0..routes {
        assert_eq!(
            count(&text, "GET", &format!("/r{r}/{{id}}"), "200"),
            Some(3.0),
            "route {r}"
        );
    }
}
