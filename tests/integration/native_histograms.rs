//! Native histograms and exemplars of the request-latency middleware, checked
//! with the real Prometheus the suite installs (Debian's 2.42) and in
//! process:
//!
//! - a Prometheus with `--enable-feature=native-histograms` scrapes an
//!   instrumented app over protobuf while the test sends a fixed mix of
//!   requests sleeping 20 ms and 300 ms; the P95 that PromQL computes from
//!   the native series lies in the schema-3 bucket of the latency the test
//!   imposed; another scrapes the demo's Follow-Up API the same way and
//!   stores its latency histogram as native series;
//! - a Prometheus with `--enable-feature=exemplar-storage` scrapes
//!   OpenMetrics text; `/api/v1/query_exemplars` returns the trace ids the
//!   test sent in `traceparent` headers (and, to a second app, in
//!   `x-request-id`), on the bucket their latency belongs to;
//! - after that traffic the Prometheus text form passes `promtool check
//!   metrics` and the OpenMetrics form carries the latest exemplar;
//! - the protobuf exposition decodes into `io.prometheus.client.MetricFamily`
//!   messages with schema-3 native buckets beside the classic ones, and the
//!   builder switches turn each part off.
//!
//! Expected values come from what the test imposes and measures on the
//! client side: a request's recorded latency is at least its handler's sleep
//! and at most the latency the client measured.
//!
//! The two Prometheus tests are separate tests, so the harness runs them side
//! by side, each with its own app and data directory; everything listens on
//! 127.0.0.1 only.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use axum::routing::get;
use okr_exporter::http_metrics::{DEFAULT_BUCKETS, HttpMetricsBuilder, HttpMetricsLayer};
use okr_exporter::scrape;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
use prometheus_client::registry::Registry;
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{ChildProcess, eventually, promtool_check_metrics, require_tool, start_ready};

/// What `/fast` sleeps.
const FAST: Duration = Duration::from_millis(20);

/// What `/slow` sleeps: inside the schema-3 bucket (0.2973, 0.3242] s with
/// 24 ms to spare for scheduling overhead.
const SLOW: Duration = Duration::from_millis(300);

/// `/fast` requests per `/slow` one. With the scrapes (fast too) about 11 %
/// of the requests are slow, so the 95th percentile lies about halfway
/// through the slow ones, far from where the two groups meet.
const FAST_PER_SLOW: usize = 8;

/// Clients sending the mix concurrently.
const CLIENTS: usize = 4;

/// How long they send it.
const TRAFFIC: Duration = Duration::from_secs(10);

/// Native histogram schema: bucket `k` is `(2^((k-1)/8), 2^(k/8)]`.
const SCHEMA: i32 = 3;

/// Traced requests sent to the exemplar-storage Prometheus.
const TRACED: usize = 4;

/// Upper bound for Prometheus to scrape, ingest and answer.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(30);

/// What Prometheus with native histograms asks for first.
const PROTOBUF_ACCEPT: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

const TEXT_ACCEPT: &str = "text/plain;version=0.0.4";

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0";

/// The histogram family under test.
const FAMILY: &str = "http_server_request_duration_seconds";

/// Index of the schema-3 bucket holding `seconds`.
fn native_index(seconds: f64) -> i32 {
    (seconds.log2() * f64::from(1 << SCHEMA)).ceil() as i32
}

/// Upper edge of schema-3 bucket `k`; its lower edge is that of `k - 1`.
fn native_upper(k: i32) -> f64 {
    2f64.powf(f64::from(k) / f64::from(1 << SCHEMA))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An app instrumented with the middleware: `/fast`, `/slow` and its own
/// `/metrics`, which counts how often it was called.
struct Instrumented {
    router: Router,
    registry: Arc<Registry>,
    layer: HttpMetricsLayer,
    scrapes: Arc<AtomicUsize>,
}

fn instrumented(builder: HttpMetricsBuilder) -> Instrumented {
    let mut registry = Registry::default();
    let layer = builder.register(&mut registry);
    let registry = Arc::new(registry);
    let scrapes = Arc::new(AtomicUsize::new(0));
    let metrics = {
        let registry = Arc::clone(&registry);
        let layer = layer.clone();
        let scrapes = Arc::clone(&scrapes);
        move |headers: HeaderMap| {
            let registry = Arc::clone(&registry);
            let layer = layer.clone();
            scrapes.fetch_add(1, Ordering::Relaxed);
            async move { scrape::respond(&registry, Some(&layer), &headers) }
        }
    };
    let router = Router::new()
        .route(
            "/fast",
            get(|| async {
                tokio::time::sleep(FAST).await;
                "fast"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SLOW).await;
                "slow"
            }),
        )
        .route("/metrics", get(metrics))
        .layer(layer.clone());
    Instrumented {
        router,
        registry,
        layer,
        scrapes,
    }
}

/// Serves `router` on a loopback port; returns its base URL and the server
/// task.
async fn serve(router: Router) -> (String, AbortOnDrop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, AbortOnDrop(task))
}

/// The app's registry encoded as `accept` asks, without going through the
/// middleware (so the scrape is not itself counted): content type and body.
async fn scrape_in_process(app: &Instrumented, accept: &str) -> (String, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_str(accept).expect("Accept"),
    );
    let response = scrape::respond(&app.registry, Some(&app.layer), &headers)
        .unwrap_or_else(|_| panic!("scrape with Accept: {accept} failed"));
    assert_eq!(response.status(), StatusCode::OK, "Accept: {accept}");
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("content type")
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (content_type, body)
}

/// A body of length-delimited `MetricFamily` messages, decoded.
fn decode_families(mut body: Bytes) -> Vec<pb::MetricFamily> {
    let mut families = Vec::new();
    while !body.is_empty() {
        families.push(
            pb::MetricFamily::decode_length_delimited(&mut body)
                .expect("a length-delimited io.prometheus.client.MetricFamily"),
        );
    }
    families
}

/// The value of label `name` of `metric`.
fn label<'a>(metric: &'a pb::Metric, name: &str) -> Option<&'a str> {
    metric
        .label
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

/// The histogram of `GET route` answered 200 in `families`.
fn route_histogram<'a>(families: &'a [pb::MetricFamily], route: &str) -> &'a pb::Histogram {
    let family = families
        .iter()
        .find(|f| f.name == FAMILY)
        .unwrap_or_else(|| panic!("no {FAMILY} family in {families:#?}"));
    assert_eq!(
        family.r#type,
        pb::MetricType::Histogram as i32,
        "type of {FAMILY}"
    );
    let metric = family
        .metric
        .iter()
        .find(|m| {
            label(m, "http_route") == Some(route)
                && label(m, "http_request_method") == Some("GET")
                && label(m, "http_response_status_code") == Some("200")
        })
        .unwrap_or_else(|| panic!("no GET {route} 200 series in {family:#?}"));
    metric
        .histogram
        .as_ref()
        .unwrap_or_else(|| panic!("GET {route}: no histogram field in {metric:#?}"))
}

/// The positive native buckets of `h` as (index, count), from its spans and
/// its deltas (integer histogram) or absolute counts (float histogram).
fn native_buckets(h: &pb::Histogram) -> Vec<(i32, f64)> {
    let counts: Vec<f64> = if h.positive_delta.is_empty() {
        h.positive_count.clone()
    } else {
        let mut count = 0_i64;
        h.positive_delta
            .iter()
            .map(|delta| {
                count += delta;
                count as f64
            })
            .collect()
    };
    let mut values = counts.into_iter();
    let mut buckets = Vec::new();
    let mut index = 0_i32;
    for span in &h.positive_span {
        // The first span's offset is its starting index, later ones' the
        // gap after the previous span.
        index += span.offset;
        for _ in 0..span.length {
            let count = values
                .next()
                .unwrap_or_else(|| panic!("fewer bucket counts than the spans cover: {h:#?}"));
            assert!(count >= 0.0, "negative bucket count in {h:#?}");
            buckets.push((index, count));
            index += 1;
        }
    }
    assert!(
        values.next().is_none(),
        "more bucket counts than the spans cover: {h:#?}"
    );
    buckets
}

/// The `trace_id` label of an exemplar.
fn exemplar_trace_id(exemplar: &pb::Exemplar) -> Option<&str> {
    exemplar
        .label
        .iter()
        .find(|l| l.name == "trace_id")
        .map(|l| l.value.as_str())
}

/// A W3C trace id (32 lowercase hex digits, not all zero).
fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A W3C `traceparent` value for `trace_id`, with a fresh parent id.
fn traceparent(trace_id: &str) -> String {
    let parent = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
    format!("00-{trace_id}-{parent:016x}-01")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// GET `url` with `headers`, expecting 200; returns the latency the client
/// saw, in seconds, up to the end of the body.
async fn timed_get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> f64 {
    let started = Instant::now();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.bytes().await.expect("body");
    started.elapsed().as_secs_f64()
}

/// Client-side latencies, in seconds, of the requests the test sent.
#[derive(Default)]
struct Sent {
    fast: Vec<f64>,
    slow: Vec<f64>,
}

/// `CLIENTS` clients, each sending one `/slow` request then `FAST_PER_SLOW`
/// `/fast` ones, over and over, for `duration` (a round in progress is
/// finished, so the mix is exact).
async fn send_mix(base: &str, duration: Duration) -> Sent {
    let client = http_client();
    let until = Instant::now() + duration;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = client.clone();
            let (slow, fast) = (format!("{base}/slow"), format!("{base}/fast"));
            tokio::spawn(async move {
                let mut sent = Sent::default();
                while Instant::now() < until {
                    sent.slow.push(timed_get(&client, &slow, &[]).await);
                    for _ in 0..FAST_PER_SLOW {
                        sent.fast.push(timed_get(&client, &fast, &[]).await);
                    }
                }
                sent
            })
        })
        .collect();
    let mut all = Sent::default();
    for client in clients {
        let sent = client.await.expect("client task");
        all.fast.extend(sent.fast);
        all.slow.extend(sent.slow);
    }
    all
}

/// Starts Prometheus with `--enable-feature=<feature>`, scraping `/metrics`
/// of each (job, base URL) every second.
async fn start_prometheus(
    dir: &Path,
    feature: &str,
    targets: &[(&str, &str)],
) -> (ChildProcess, String) {
    let prometheus = require_tool("prometheus");
    let jobs: String = targets
        .iter()
        .map(|(job, base)| {
            format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{}\"]\n",
                base.trim_start_matches("http://")
            )
        })
        .collect();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"),
    )
    .expect("write prometheus.yml");
    let data = dir.join("data");
    start_ready("prometheus", &prometheus, dir, |port| {
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--enable-feature={feature}"),
        ]
    })
    .await
}

async fn get_json(client: &reqwest::Client, url: &str, query: &[(&str, &str)]) -> Value {
    let body: Value = client
        .get(url)
        .query(query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
    assert_eq!(body["status"], "success", "GET {url} {query:?}: {body}");
    body
}

async fn instant_query(client: &reqwest::Client, prom: &str, expr: &str) -> Value {
    get_json(client, &format!("{prom}/api/v1/query"), &[("query", expr)]).await
}

/// The series of an instant query's result.
fn result(body: &Value) -> Vec<Value> {
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A number Prometheus's API writes as a string.
fn number(value: &Value) -> f64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Waits until Prometheus has scraped all `jobs` targets successfully.
async fn wait_until_up(client: &reqwest::Client, prom: &str, process: &ChildProcess, jobs: usize) {
    let up = eventually(PROMETHEUS_DEADLINE, || async {
        result(&instant_query(client, prom, "up == 1").await).len() == jobs
    })
    .await;
    assert!(
        up,
        "Prometheus did not scrape its {jobs} target(s)\n{}\n{}",
        instant_query(client, prom, "up").await,
        process.log_tail()
    );
}

/// The observation count of the native histogram of `GET route` as
/// Prometheus last stored it; `None` while it has none (or only a float
/// sample, which is not a native histogram).
async fn native_count(client: &reqwest::Client, prom: &str, route: &str) -> Option<f64> {
    let body = instant_query(
        client,
        prom,
        &format!("{FAMILY}{{http_route=\"{route}\",http_request_method=\"GET\"}}"),
    )
    .await;
    let series = result(&body);
    match series.as_slice() {
        [one] => one["histogram"][1].get("count").map(number),
        _ => None,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// One exemplar as `/api/v1/query_exemplars` returns it.
#[derive(Debug)]
struct StoredExemplar {
    series: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Exemplars Prometheus stored for the bucket series of `job` since `start`.
async fn stored_exemplars(
    client: &reqwest::Client,
    prom: &str,
    job: &str,
    start: f64,
) -> Vec<StoredExemplar> {
    let query = format!("{FAMILY}_bucket{{job=\"{job}\"}}");
    let (start, end) = (format!("{start:.3}"), format!("{:.3}", unix_now() + 60.0));
    let body = get_json(
        client,
        &format!("{prom}/api/v1/query_exemplars"),
        &[
            ("query", query.as_str()),
            ("start", start.as_str()),
            ("end", end.as_str()),
        ],
    )
    .await;
    let mut out = Vec::new();
    for series in body["data"].as_array().into_iter().flatten() {
        let series_labels = string_map(&series["seriesLabels"]);
        for exemplar in series["exemplars"].as_array().into_iter().flatten() {
            out.push(StoredExemplar {
                series: series_labels.clone(),
                labels: string_map(&exemplar["labels"]),
                value: number(&exemplar["value"]),
            });
        }
    }
    out
}

/// Waits until Prometheus has stored an exemplar with `trace_id` for `job`;
/// returns it.
async fn wait_for_exemplar(
    client: &reqwest::Client,
    prom: &str,
    process: &ChildProcess,
    job: &str,
    start: f64,
    trace_id: &str,
) -> StoredExemplar {
    let deadline = Instant::now() + PROMETHEUS_DEADLINE;
    loop {
        let mut stored = stored_exemplars(client, prom, job, start).await;
        if let Some(at) = stored
            .iter()
            .position(|e| e.labels.get("trace_id").map(String::as_str) == Some(trace_id))
        {
            return stored.swap_remove(at);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus stored no exemplar with trace_id {trace_id} for job {job} within \
             {PROMETHEUS_DEADLINE:?}; it has {stored:#?}\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks an exemplar Prometheus stored for a `/slow` request the client saw
/// take `latency` seconds: its value is the request's latency, and it sits
/// on the classic bucket that latency belongs to.
fn check_slow_exemplar(stored: &StoredExemplar, job: &str, latency: f64) {
    let value = stored.value;
    assert!(
        value >= SLOW.as_secs_f64() * 0.999 && value <= latency + 0.002,
        "exemplar value {value} s outside [{SLOW:?}, client-side {latency} s]: {stored:#?}"
    );
    for (name, expected) in [
        ("job", job),
        ("http_route", "/slow"),
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
    ] {
        assert_eq!(
            stored.series.get(name).map(String::as_str),
            Some(expected),
            "series label {name} of {stored:#?}"
        );
    }
    let le: f64 = stored
        .series
        .get("le")
        .and_then(|le| le.parse().ok())
        .unwrap_or_else(|| panic!("no numeric le on {stored:#?}"));
    let expected_le = DEFAULT_BUCKETS
        .iter()
        .copied()
        .find(|bound| *bound >= value)
        .unwrap_or(f64::INFINITY);
    assert_eq!(
        le, expected_le,
        "a {value} s exemplar belongs on le=\"{expected_le}\": {stored:#?}"
    );
}

/// GET `/metrics` with `accept`: content type and body.
async fn get_metrics(client: &reqwest::Client, base: &str, accept: &str) -> (String, String) {
    let response = client
        .get(format!("{base}/metrics"))
        .header(header::ACCEPT, accept)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK, "Accept: {accept}");
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("content type")
        .to_owned();
    (content_type, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_histogram_p95_in_prometheus_matches_the_imposed_latency() {
    let started = Instant::now();
    // Declared first, dropped last: Prometheus is killed before its
    // directory goes away.
    let dir = tempfile::tempdir().expect("tempdir");
    let client = http_client();
    let app = instrumented(HttpMetricsLayer::builder());
    let scrapes = Arc::clone(&app.scrapes);
    let (base, _server) = serve(app.router).await;
    let (prom_process, prom) =
        start_prometheus(dir.path(), "native-histograms", &[("app", &base)]).await;
    wait_until_up(&client, &prom, &prom_process, 1).await;

    let sent = send_mix(&base, TRAFFIC).await;
    let (n_fast, n_slow) = (sent.fast.len(), sent.slow.len());
    assert_eq!(n_fast, n_slow * FAST_PER_SLOW);

    // Every request counted once in the native series Prometheus holds (the
    // middleware records a request before its response is sent, so all are
    // in before the last client returns).
    let ingested = eventually(PROMETHEUS_DEADLINE, || async {
        native_count(&client, &prom, "/fast").await == Some(n_fast as f64)
            && native_count(&client, &prom, "/slow").await == Some(n_slow as f64)
    })
    .await;
    assert!(
        ingested,
        "Prometheus does not hold native histograms counting the {n_fast} /fast and {n_slow} \
         /slow requests sent:\n{}\n{}",
        instant_query(&client, &prom, FAMILY).await,
        prom_process.log_tail()
    );

    // Stored as native histograms (Prometheus 2.42 keeps no classic buckets
    // beside them), with schema-3 bucket edges, every /slow observation in
    // a bucket that meets [imposed latency, slowest client-side latency].
    let classic = instant_query(&client, &prom, &format!("{FAMILY}_bucket")).await;
    assert!(
        result(&classic).is_empty(),
        "classic bucket series next to the native histograms: {classic}"
    );
    let slow_series =
        instant_query(&client, &prom, &format!("{FAMILY}{{http_route=\"/slow\"}}")).await;
    let series = result(&slow_series);
    assert_eq!(series.len(), 1, "{slow_series}");
    assert!(
        series[0].get("value").is_none() && series[0]["histogram"][1].is_object(),
        "not a native histogram sample: {slow_series}"
    );
    let slowest = sent.slow.iter().copied().fold(0.0, f64::max);
    let mut counted = 0.0;
    for bucket in series[0]["histogram"][1]["buckets"]
        .as_array()
        .expect("native buckets")
    {
        let (lower, upper, count) = (number(&bucket[1]), number(&bucket[2]), number(&bucket[3]));
        let k = (upper.log2() * f64::from(1 << SCHEMA)).round() as i32;
        assert!(
            (upper - native_upper(k)).abs() <= 1e-12 * upper
                && (lower - native_upper(k - 1)).abs() <= 1e-12 * lower,
            "bucket ({lower}, {upper}] is not a schema-{SCHEMA} bucket: {slow_series}"
        );
        assert!(
            upper >= SLOW.as_secs_f64() && lower < slowest,
            "/slow observations in ({lower}, {upper}], outside [{SLOW:?}, {slowest} s]: \
             {slow_series}"
        );
        counted += count;
    }
    assert_eq!(counted, n_slow as f64, "/slow bucket counts: {slow_series}");

    // The P95 over every series (the scrapes included). With no classic
    // buckets stored, the estimate can only come from the native series.
    let p95_query = format!("histogram_quantile(0.95, sum(rate({FAMILY}[1m])))");
    let p95_body = instant_query(&client, &prom, &p95_query).await;
    let p95_series = result(&p95_body);
    assert_eq!(p95_series.len(), 1, "{p95_query}: {p95_body}");
    let p95 = number(&p95_series[0]["value"][1]);

    // What the test imposed: the slow share puts the 95th percentile among
    // the /slow requests (recorded latency ≥ 300 ms), well inside them, so
    // Prometheus interpolates inside the bucket of some /slow request. That
    // request's latency is at most the client-side latency ranked 2 % from
    // the top (the 95th percentile is ~5 % from the top; the margin covers
    // rate()'s extrapolation weighting series slightly differently).
    let n_scrapes = scrapes.load(Ordering::Relaxed);
    let slow_share = n_slow as f64 / (n_fast + n_slow + n_scrapes) as f64;
    assert!(
        (0.08..0.25).contains(&slow_share),
        "the mix puts the 95th percentile near a group boundary: {n_slow} slow of {} requests",
        n_fast + n_slow + n_scrapes
    );
    let mut client_side: Vec<f64> = sent.fast.iter().chain(&sent.slow).copied().collect();
    client_side.sort_by(|a, b| b.total_cmp(a));
    let high = client_side[(0.02 * client_side.len() as f64) as usize].max(SLOW.as_secs_f64());
    let lowest_k = native_index(SLOW.as_secs_f64());
    let highest_k = native_index(high);
    let (lower, upper) = (native_upper(lowest_k - 1), native_upper(highest_k));
    assert!(
        lower - 1e-9 <= p95 && p95 <= upper + 1e-9,
        "P95 from the native histogram {p95} s is outside ({lower}, {upper}], the schema-{SCHEMA} \
         bucket(s) of {SLOW:?} … {high} s (client-side)\n{p95_body}"
    );
    eprintln!(
        "native_histograms: P95 {p95:.4} s in ({lower:.4}, {upper:.4}] (imposed {SLOW:?}, {:+.1} %); \
         {n_fast} fast, {n_slow} slow, {n_scrapes} scrapes; {:?}",
        (p95 / SLOW.as_secs_f64() - 1.0) * 100.0,
        started.elapsed()
    );
    drop(prom_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exemplar_storage_returns_the_trace_ids_sent() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = http_client();
    let app = instrumented(HttpMetricsLayer::builder());
    let (base, _server) = serve(app.router).await;
    let custom = instrumented(
        HttpMetricsLayer::builder().trace_id_header(HeaderName::from_static("x-request-id")),
    );
    let (custom_base, _custom_server) = serve(custom.router).await;
    let (prom_process, prom) = start_prometheus(
        dir.path(),
        "exemplar-storage",
        &[("traceparent", &base), ("request-id", &custom_base)],
    )
    .await;
    wait_until_up(&client, &prom, &prom_process, 2).await;
    let since = unix_now() - 60.0;

    // One traced request at a time, the next only once Prometheus has
    // stored the previous one: a bucket keeps only its latest exemplar.
    let mut traced = Vec::new();
    for _ in 0..TRACED {
        let trace_id = new_trace_id();
        let latency = timed_get(
            &client,
            &format!("{base}/slow"),
            &[("traceparent", &traceparent(&trace_id))],
        )
        .await;
        let stored = wait_for_exemplar(
            &client,
            &prom,
            &prom_process,
            "traceparent",
            since,
            &trace_id,
        )
        .await;
        check_slow_exemplar(&stored, "traceparent", latency);
        traced.push((trace_id, latency));
    }

    // The other app takes the whole `x-request-id` value as the id, and
    // ignores `traceparent`.
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let ignored = new_trace_id();
    let latency = timed_get(
        &client,
        &format!("{custom_base}/slow"),
        &[
            ("x-request-id", &request_id),
            ("traceparent", &traceparent(&ignored)),
        ],
    )
    .await;
    let stored = wait_for_exemplar(
        &client,
        &prom,
        &prom_process,
        "request-id",
        since,
        &request_id,
    )
    .await;
    check_slow_exemplar(&stored, "request-id", latency);

    // Every exemplar Prometheus holds carries an id the test sent.
    let sent_ids: Vec<&str> = traced.iter().map(|(id, _)| id.as_str()).collect();
    for (job, allowed) in [
        ("traceparent", sent_ids.clone()),
        ("request-id", vec![request_id.as_str()]),
    ] {
        for exemplar in stored_exemplars(&client, &prom, job, since).await {
            let id = exemplar.labels.get("trace_id").map(String::as_str);
            assert!(
                id.is_some_and(|id| allowed.contains(&id)),
                "job {job}: exemplar with an id the test did not send: {exemplar:#?}"
            );
        }
    }

    // The text forms after this traffic: Prometheus text (no exemplars)
    // passes promtool; OpenMetrics carries the latest exemplar of the /slow
    // bucket, and only that one, as every traced request landed in it.
    // (promtool 2.42's `check metrics` reads only Prometheus text: it stops
    // at an exemplar's `#`. Prometheus itself parsed the OpenMetrics form
    // above, exemplars included.)
    let (content_type, text) = get_metrics(&client, &base, TEXT_ACCEPT).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        !text.contains(" # {"),
        "exemplars in Prometheus text 0.0.4:\n{text}"
    );
    assert!(text.contains(&format!("{FAMILY}_bucket{{")), "{text}");
    promtool_check_metrics(&text);
    let (content_type, openmetrics) = get_metrics(&client, &base, OPENMETRICS_ACCEPT).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    let (latest, _) = traced.last().expect("traced requests");
    let marker = format!(" # {{trace_id=\"{latest}\"}} ");
    let line = openmetrics
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no exemplar {marker:?} in\n{openmetrics}"));
    assert!(
        line.starts_with(&format!("{FAMILY}_bucket{{")) && line.contains("http_route=\"/slow\""),
        "exemplar on {line}"
    );
    let same_bucket = traced
        .iter()
        .all(|(_, latency)| *latency <= 0.5 && DEFAULT_BUCKETS.contains(&0.5));
    if same_bucket {
        for (id, _) in &traced[..TRACED - 1] {
            assert!(
                !openmetrics.contains(id.as_str()),
                "trace id {id} still exposed after a later one in the same bucket:\n{openmetrics}"
            );
        }
    }
    eprintln!(
        "native_histograms: {} exemplars stored by Prometheus; {:?}",
        TRACED + 1,
        started.elapsed()
    );
    drop(prom_process);
}

/// Sends `GET path` through `router` in process with `headers`; returns the
/// latency the caller saw, in seconds.
async fn call(router: &Router, path: &str, headers: &[(&str, &str)]) -> f64 {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn protobuf_exposition_carries_native_and_classic_buckets_and_exemplars() {
    const REQUESTS: usize = 12;
    let app = instrumented(HttpMetricsLayer::builder());
    let mut latencies = Vec::new();
    let mut trace_ids = Vec::new();
    for i in 0..REQUESTS {
        let latency = match i {
            3 | 7 | 10 => {
                let trace_id = new_trace_id();
                let latency = call(
                    &app.router,
                    "/fast",
                    &[("traceparent", &traceparent(&trace_id))],
                )
                .await;
                trace_ids.push(trace_id);
                latency
            }
            // Not W3C trace context: no exemplar.
            5 => {
                call(
                    &app.router,
                    "/fast",
                    &[("traceparent", "00-not-a-trace-id-01")],
                )
                .await
            }
            _ => call(&app.router, "/fast", &[]).await,
        };
        latencies.push(latency);
    }
    let fastest = FAST.as_secs_f64();
    let slowest = latencies.iter().copied().fold(0.0, f64::max);
    let total: f64 = latencies.iter().sum();

    let (content_type, body) = scrape_in_process(&app, PROTOBUF_ACCEPT).await;
    assert!(
        content_type.starts_with("application/vnd.google.protobuf")
            && content_type.contains("proto=io.prometheus.client.MetricFamily")
            && content_type.contains("encoding=delimited"),
        "{content_type}"
    );
    let families = decode_families(body);
    let h = route_histogram(&families, "/fast");
    assert_eq!(h.sample_count, REQUESTS as u64, "{h:#?}");
    assert!(
        h.sample_sum >= REQUESTS as f64 * fastest * 0.999 && h.sample_sum <= total + 0.001,
        "sum {} outside [{REQUESTS} × {FAST:?}, {total} s client-side]",
        h.sample_sum
    );

    // Native: schema 3, zero bucket up to 2^-30 s and empty, every
    // observation in a bucket between those of 20 ms and the slowest call.
    assert_eq!(h.schema, SCHEMA, "{h:#?}");
    assert_eq!(h.zero_threshold, 2f64.powi(-30), "{h:#?}");
    assert_eq!(h.zero_count, 0, "{h:#?}");
    assert!(
        h.negative_span.is_empty() && h.negative_delta.is_empty() && h.negative_count.is_empty()
    );
    assert!(!h.positive_span.is_empty(), "no positive spans: {h:#?}");
    let native = native_buckets(h);
    let (low_k, high_k) = (native_index(fastest), native_index(slowest));
    for (k, count) in &native {
        assert!(
            *count == 0.0 || (low_k..=high_k).contains(k),
            "{count} observation(s) in native bucket {k}, outside {low_k}..={high_k} \
             ({FAST:?} … {slowest} s): {h:#?}"
        );
    }
    let native_total: f64 = native.iter().map(|(_, c)| c).sum();
    assert_eq!(native_total, REQUESTS as f64, "{h:#?}");

    // Classic: increasing bounds, cumulative counts, 0 below 20 ms and all
    // at or above the slowest call.
    assert!(
        h.bucket.iter().any(|b| b.upper_bound.is_finite()),
        "no classic buckets: {h:#?}"
    );
    for pair in h.bucket.windows(2) {
        assert!(
            pair[0].upper_bound < pair[1].upper_bound
                && pair[0].cumulative_count <= pair[1].cumulative_count,
            "classic buckets out of order: {h:#?}"
        );
    }
    for bucket in &h.bucket {
        if bucket.upper_bound < fastest {
            assert_eq!(bucket.cumulative_count, 0, "{bucket:#?}");
        }
        if bucket.upper_bound >= slowest {
            assert_eq!(bucket.cumulative_count, REQUESTS as u64, "{bucket:#?}");
        }
    }

    // Exemplars: only ids the test sent, the latest among them present in
    // both forms, each on the classic bucket its value belongs to; the
    // native ones timestamped, as Prometheus requires.
    let latest = trace_ids.last().expect("traced calls").as_str();
    let mut previous_bound = f64::NEG_INFINITY;
    let mut classic_ids = Vec::new();
    for bucket in &h.bucket {
        if let Some(exemplar) = &bucket.exemplar {
            let id = exemplar_trace_id(exemplar).unwrap_or_else(|| panic!("{exemplar:#?}"));
            assert!(trace_ids.iter().any(|t| t == id), "unknown id {id}");
            assert!(
                exemplar.value > previous_bound && exemplar.value <= bucket.upper_bound,
                "exemplar {} s on bucket le={}: {h:#?}",
                exemplar.value,
                bucket.upper_bound
            );
            assert!(
                exemplar.value >= fastest * 0.999 && exemplar.value <= slowest + 0.001,
                "exemplar value {} s: {h:#?}",
                exemplar.value
            );
            classic_ids.push(id);
        }
        previous_bound = bucket.upper_bound;
    }
    assert!(
        classic_ids.contains(&latest),
        "latest trace id {latest} not on a classic bucket: {h:#?}"
    );
    assert!(!h.exemplars.is_empty(), "no native exemplars: {h:#?}");
    for exemplar in &h.exemplars {
        let id = exemplar_trace_id(exemplar).unwrap_or_else(|| panic!("{exemplar:#?}"));
        assert!(trace_ids.iter().any(|t| t == id), "unknown id {id}");
        assert!(
            exemplar.timestamp.is_some(),
            "native exemplar without timestamp: {exemplar:#?}"
        );
        assert!(
            exemplar.value >= fastest * 0.999 && exemplar.value <= slowest + 0.001,
            "exemplar value {} s: {h:#?}",
            exemplar.value
        );
    }
    assert!(
        h.exemplars
            .iter()
            .any(|e| exemplar_trace_id(e) == Some(latest)),
        "latest trace id {latest} not among the native exemplars: {h:#?}"
    );

    // The text forms serve the classic histogram, exemplars only in
    // OpenMetrics.
    let (_, text) = scrape_in_process(&app, TEXT_ACCEPT).await;
    let text = String::from_utf8(text.to_vec()).expect("UTF-8");
    assert!(
        text.contains(&format!("{FAMILY}_bucket{{")) && !text.contains(" # {"),
        "{text}"
    );
    let (_, openmetrics) = scrape_in_process(&app, OPENMETRICS_ACCEPT).await;
    let openmetrics = String::from_utf8(openmetrics.to_vec()).expect("UTF-8");
    assert!(
        openmetrics
            .lines()
            .any(|l| l.starts_with(&format!("{FAMILY}_bucket{{"))
                && l.contains(&format!(" # {{trace_id=\"{latest}\"}} "))),
        "{openmetrics}"
    );
    assert!(!openmetrics.contains("not-a-trace-id"), "{openmetrics}");
}

#[tokio::test]
async fn builder_switches_turn_each_part_off() {
    for (native, classic, exemplars) in [
        (false, true, true),
        (true, false, true),
        (true, true, false),
    ] {
        let case =
            format!("native_histogram({native}) classic_buckets({classic}) exemplars({exemplars})");
        let app = instrumented(
            HttpMetricsLayer::builder()
                .native_histogram(native)
                .classic_buckets(classic)
                .exemplars(exemplars),
        );
        let trace_id = new_trace_id();
        call(
            &app.router,
            "/fast",
            &[("traceparent", &traceparent(&trace_id))],
        )
        .await;
        let (_, body) = scrape_in_process(&app, PROTOBUF_ACCEPT).await;
        let families = decode_families(body);
        let h = route_histogram(&families, "/fast");
        assert_eq!(h.sample_count, 1, "{case}: {h:#?}");

        let has_native = !h.positive_span.is_empty()
            || !h.positive_delta.is_empty()
            || !h.positive_count.is_empty()
            || h.zero_count > 0
            || h.zero_threshold > 0.0;
        // Without native buckets Prometheus must read a classic histogram,
        // which it decides from exactly these fields.
        assert_eq!(has_native, native, "{case}: {h:#?}");
        if native {
            assert_eq!(h.schema, SCHEMA, "{case}: {h:#?}");
        }
        let has_classic = h.bucket.iter().any(|b| b.upper_bound.is_finite());
        assert_eq!(has_classic, classic, "{case}: {h:#?}");

        let exemplar_ids: Vec<&str> = h
            .bucket
            .iter()
            .filter_map(|b| b.exemplar.as_ref())
            .chain(&h.exemplars)
            .filter_map(exemplar_trace_id)
            .collect();
        assert_eq!(
            !exemplar_ids.is_empty(),
            exemplars,
            "{case}: exemplars {exemplar_ids:?}"
        );
        assert!(
            exemplar_ids.iter().all(|id| *id == trace_id),
            "{case}: {exemplar_ids:?}"
        );
        if !exemplars {
            let (_, openmetrics) = scrape_in_process(&app, OPENMETRICS_ACCEPT).await;
            let openmetrics = String::from_utf8(openmetrics.to_vec()).expect("UTF-8");
            assert!(!openmetrics.contains(" # {"), "{case}:\n{openmetrics}");
        }
    }
}

/// The demo's Follow-Up API (`okr-exporter demo`) serves its own latency
/// histogram natively: a Prometheus with native histograms on scrapes it
/// over protobuf and stores native series of the routes the test called,
/// counting each call, with no classic buckets beside them; its P95 lies
/// between the fastest and the slowest call the client measured (widened by
/// one schema-3 bucket each way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_api_is_scraped_natively_over_protobuf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::support::prepared_db().await;
    let client = http_client();
    let api = okr_exporter::demo::api::router(db.pool.clone(), Registry::default());
    let (base, _server) = serve(api).await;
    let (prom_process, prom) =
        start_prometheus(dir.path(), "native-histograms", &[("demo", &base)]).await;
    wait_until_up(&client, &prom, &prom_process, 1).await;

    // Creates follow-ups (the handler simulates 10-60 ms of work); every
    // call timed here.
    const CALLS: usize = 20;
    let mut latencies = Vec::new();
    for i in 0..CALLS {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/api/followups"))
            .json(&serde_json::json!({"creator_id": format!("seller-{i:02}")}))
            .send()
            .await
            .expect("create");
        latencies.push(started.elapsed().as_secs_f64());
        assert!(response.status().is_success(), "{}", response.status());
        // Spread over a few scrapes, so that rate() sees the count grow.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let created = latencies.len() as f64;
    let route_count = |route: &'static str, method: &'static str| {
        let client = client.clone();
        let prom = prom.clone();
        async move {
            let body = instant_query(
                &client,
                &prom,
                &format!("{FAMILY}{{http_route=\"{route}\",http_request_method=\"{method}\"}}"),
            )
            .await;
            match result(&body).as_slice() {
                [one] => one["histogram"][1].get("count").map(number),
                _ => None,
            }
        }
    };
    let ingested = eventually(PROMETHEUS_DEADLINE, || async {
        route_count("/api/followups", "POST").await == Some(created)
    })
    .await;
    assert!(
        ingested,
        "no native histogram counting the {CALLS} POST /api/followups calls:\n{}\n{}",
        instant_query(&client, &prom, FAMILY).await,
        prom_process.log_tail()
    );
    let classic = instant_query(&client, &prom, &format!("{FAMILY}_bucket")).await;
    assert!(
        result(&classic).is_empty(),
        "classic buckets stored: {classic}"
    );

    let query = format!(
        "histogram_quantile(0.95, sum(rate({FAMILY}{{http_route=\"/api/followups\",http_request_method=\"POST\"}}[1m])))"
    );
    let p95 = Arc::new(std::sync::Mutex::new(None));
    let answered = eventually(PROMETHEUS_DEADLINE, || async {
        let body = instant_query(&client, &prom, &query).await;
        let value = match result(&body).as_slice() {
            [one] => Some(number(&one["value"][1])).filter(|v| v.is_finite()),
            _ => None,
        };
        *p95.lock().unwrap() = value;
        value.is_some()
    })
    .await;
    let p95 = p95.lock().unwrap().take();
    let Some(p95) = p95.filter(|_| answered) else {
        panic!("{query}: no value\n{}", prom_process.log_tail());
    };
    let fastest = latencies.iter().copied().fold(f64::INFINITY, f64::min);
    let slowest = latencies.iter().copied().fold(0.0, f64::max);
    // Server-side latencies are below the client's but at least the
    // handler's 10 ms of simulated work; the estimate stays in the buckets
    // the recorded ones fall in.
    let (lower, upper) = (
        native_upper(native_index(fastest.min(0.010)) - 2),
        native_upper(native_index(slowest) + 1),
    );
    assert!(
        lower <= p95 && p95 <= upper,
        "P95 {p95} s outside ({lower}, {upper}] of the calls measured ({fastest} … {slowest} s)"
    );
    drop(prom_process);
}
