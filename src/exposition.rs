//! `/metrics` encoding: Prometheus protobuf, OpenMetrics 1.0 or Prometheus
//! text 0.0.4, chosen from the scraper's `Accept` header.
//!
//! Native histograms exist only in the protobuf format, so a scraper that
//! asks for it (Prometheus with native histograms on) gets the middleware's
//! native buckets beside the classic ones; the text formats carry the
//! classic buckets. Exemplars of the middleware's latency histogram are
//! added here, on the classic buckets of OpenMetrics text and protobuf and
//! in the native histogram's own list: prometheus-client's encoders take
//! exemplars only from its own metric types, whose constructor is private.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model as proto};
use prometheus_client::registry::Registry;
use prost::Message;

use crate::http_metrics::{BucketExemplar, REQUEST_DURATION_FAMILY};

/// `Content-Type` of a Prometheus protobuf response: length-delimited
/// `io.prometheus.client.MetricFamily` messages.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// `Content-Type` of an OpenMetrics response.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of a Prometheus text 0.0.4 response.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus protobuf (delimited `MetricFamily` messages), the only
    /// format with native histograms.
    Protobuf,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    PrometheusText,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => PROTOBUF_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// Picks the format the client prefers (highest `q`; on a tie protobuf,
/// then OpenMetrics). Protobuf only as `io.prometheus.client.MetricFamily`
/// with `encoding=delimited`, the form Prometheus asks for. No header, or
/// nothing we serve, means Prometheus text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::PrometheusText;
    };
    let rank = |format: Format| match format {
        Format::Protobuf => 2,
        Format::OpenMetrics => 1,
        Format::PrometheusText => 0,
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0_f32;
        let (mut proto, mut encoding) = (None, None);
        for p in parts {
            let Some((name, value)) = p.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "proto" => proto = Some(value),
                "encoding" => encoding = Some(value),
                _ => {}
            }
        }
        let format = match media.as_str() {
            "application/vnd.google.protobuf"
                if proto == Some("io.prometheus.client.MetricFamily")
                    && encoding == Some("delimited") =>
            {
                Format::Protobuf
            }
            "application/openmetrics-text" => Format::OpenMetrics,
            "text/plain" | "text/*" | "*/*" => Format::PrometheusText,
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bf)) => q > bq || (q == bq && rank(format) > rank(bf)),
        };
        if better {
            best = Some((q, format));
        }
    }
    best.map_or(Format::PrometheusText, |(_, f)| f)
}

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A metric failed to encode.
    #[error("a metric failed to encode")]
    Text(#[from] std::fmt::Error),
    /// A metric failed to encode as protobuf.
    #[error("encoding metrics as protobuf failed: {0}")]
    Protobuf(String),
}

/// Encodes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<Vec<u8>, EncodeError> {
    encode_with_exemplars(registry, &[], format)
}

/// Encodes `registry` in `format`, with `exemplars` (from
/// [`HttpMetricsLayer::exemplars`](crate::http_metrics::HttpMetricsLayer::exemplars))
/// on the latency histogram's buckets where the format has them: OpenMetrics
/// and protobuf (Prometheus text 0.0.4 has no exemplars).
pub fn encode_with_exemplars(
    registry: &Registry,
    exemplars: &[BucketExemplar],
    format: Format,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Protobuf => return encode_protobuf(registry, exemplars),
        Format::OpenMetrics => {
            prometheus_client::encoding::text::encode(&mut out, registry)?;
            if !exemplars.is_empty() {
                out = openmetrics_exemplars(&out, exemplars);
            }
        }
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
            out = float_bucket_bounds(&out);
        }
    }
    Ok(out.into_bytes())
}

/// Key of an exemplar: method, route, status, and the bucket's upper bound
/// as bits (`+Inf` included).
type ExemplarKey<'a> = (&'a str, &'a str, u16, u64);

fn exemplar_index(exemplars: &[BucketExemplar]) -> HashMap<ExemplarKey<'_>, &BucketExemplar> {
    exemplars
        .iter()
        .map(|e| {
            let key = (e.method, &*e.route, e.status, e.upper_bound.to_bits());
            (key, e)
        })
        .collect()
}

fn encode_protobuf(
    registry: &Registry,
    exemplars: &[BucketExemplar],
) -> Result<Vec<u8>, EncodeError> {
    let mut families = prometheus_protobuf::encode(registry)?;
    if !exemplars.is_empty() {
        let index = exemplar_index(exemplars);
        for family in families.iter_mut().filter(|f| is_request_duration(&f.name)) {
            for metric in &mut family.metric {
                attach_protobuf_exemplars(metric, &index);
            }
        }
    }
    let mut out = Vec::with_capacity(16 * 1024);
    for family in &families {
        family
            .encode_length_delimited(&mut out)
            .map_err(|e| EncodeError::Protobuf(e.to_string()))?;
    }
    Ok(out)
}

fn attach_protobuf_exemplars(
    metric: &mut proto::Metric,
    index: &HashMap<ExemplarKey<'_>, &BucketExemplar>,
) {
    let label = |name: &str| {
        metric
            .label
            .iter()
            .find(|pair| pair.name == name)
            .map(|pair| pair.value.as_str())
    };
    let (Some(method), Some(route), Some(status)) = (
        label("http_request_method"),
        label("http_route"),
        label("http_response_status_code").and_then(|s| s.parse::<u16>().ok()),
    ) else {
        return;
    };
    let (method, route) = (method.to_owned(), route.to_owned());
    let Some(histogram) = metric.histogram.as_mut() else {
        return;
    };
    let mut native = Vec::new();
    for bucket in &mut histogram.bucket {
        let key = (
            method.as_str(),
            route.as_str(),
            status,
            bucket.upper_bound.to_bits(),
        );
        if let Some(exemplar) = index.get(&key) {
            let exemplar = protobuf_exemplar(exemplar);
            native.push(exemplar.clone());
            bucket.exemplar = Some(exemplar);
        }
    }
    // A native histogram's exemplars go in their own list (Prometheus 2.x
    // reads them from the classic buckets, later versions from here; both
    // need the timestamp), ordered by time.
    let is_native = histogram.zero_threshold > 0.0 || !histogram.positive_span.is_empty();
    if is_native {
        native.sort_by_key(|e| e.timestamp.map(|t| (t.seconds, t.nanos)));
        histogram.exemplars = native;
    }
}

fn protobuf_exemplar(exemplar: &BucketExemplar) -> proto::Exemplar {
    proto::Exemplar {
        label: vec![proto::LabelPair {
            name: "trace_id".to_owned(),
            value: exemplar.trace_id.clone(),
        }],
        value: exemplar.seconds,
        timestamp: Some(prost_types::Timestamp::from(exemplar.timestamp)),
    }
}

/// Whether a family is the middleware's latency histogram, registered at
/// the root or in a sub-registry with a prefix (`<prefix>_http_server_…`).
fn is_request_duration(name: &str) -> bool {
    name.strip_suffix(REQUEST_DURATION_FAMILY)
        .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('_'))
}

/// Appends ` # {trace_id="…"} value timestamp` to the OpenMetrics bucket
/// lines of the latency histogram that have an exemplar.
fn openmetrics_exemplars(text: &str, exemplars: &[BucketExemplar]) -> String {
    let index = exemplar_index(exemplars);
    let mut out = String::with_capacity(text.len() + exemplars.len() * 96);
    for line in text.split_inclusive('\n') {
        let exemplar = line
            .split_once('{')
            .filter(|(name, _)| {
                name.strip_suffix("_bucket")
                    .is_some_and(is_request_duration)
            })
            .and_then(|(_, labels)| parse_labels(labels))
            .and_then(|labels| {
                let get = |name: &str| {
                    labels
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.as_str())
                };
                let le = match get("le")? {
                    "+Inf" => f64::INFINITY,
                    le => le.parse::<f64>().ok()?,
                };
                let status = get("http_response_status_code")?.parse::<u16>().ok()?;
                let key = (
                    get("http_request_method")?,
                    get("http_route")?,
                    status,
                    le.to_bits(),
                );
                index.get(&key).copied()
            });
        match exemplar {
            Some(e) => {
                let body = line.strip_suffix('\n').unwrap_or(line);
                let at = e
                    .timestamp
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                out.push_str(&format!(
                    "{body} # {{trace_id=\"{}\"}} {} {at:.3}\n",
                    e.trace_id, e.seconds
                ));
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The labels of a sample line after its `{`, unescaped, up to the `}`.
fn parse_labels(labels: &str) -> Option<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut rest = labels;
    loop {
        if rest.starts_with('}') {
            return Some(out);
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((name, value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Writes integer bucket bounds as OpenMetrics does (`le="1.0"`, not
/// `le="1"`), so rules and dashboards see the same `le` strings whichever
/// format a scraper negotiates (Prometheus 3 normalises to this form too).
///
/// Only the `le` label of a histogram's `_bucket` samples is touched: the
/// family comes from its `# TYPE` line and the labels are parsed with their
/// escapes, so other labels — `role`, `module`, values containing `le="` —
/// are left as they are.
fn float_bucket_bounds(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut histogram: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(descriptor) = comment.strip_prefix(" TYPE ") {
                let mut words = descriptor.split_whitespace();
                histogram = match (words.next(), words.next()) {
                    (Some(family), Some("histogram")) => Some(family),
                    _ => None,
                };
            }
            out.push_str(line);
            continue;
        }
        match histogram.and_then(|family| integer_bucket_bound_end(line, family)) {
            Some(end) => {
                out.push_str(&line[..end]);
                out.push_str(".0");
                out.push_str(&line[end..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// In a `<family>_bucket{…}` sample line whose `le` label is an integer,
/// the offset of that value's closing quote; `None` for any other line, and
/// for a line that does not parse.
fn integer_bucket_bound_end(line: &str, family: &str) -> Option<usize> {
    let labels = line.strip_prefix(family)?.strip_prefix("_bucket{")?;
    let bytes = line.as_bytes();
    let mut at = line.len() - labels.len();
    loop {
        // A label name (anything up to `=`, as prometheus-client writes
        // names unchecked), `="`, then the value up to its unescaped quote.
        if *bytes.get(at)? == b'}' {
            return None;
        }
        let name_start = at;
        while *bytes.get(at)? != b'=' {
            at += 1;
        }
        let name = &line[name_start..at];
        if *bytes.get(at + 1)? != b'"' {
            return None;
        }
        at += 2;
        let value_start = at;
        loop {
            match *bytes.get(at)? {
                b'\\' => at += 2,
                b'"' => break,
                _ => at += 1,
            }
        }
        if name == "le" {
            let value = &line[value_start..at];
            let digits = value.strip_prefix('-').unwrap_or(value);
            let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            return integer.then_some(at);
        }
        at += 1;
        match *bytes.get(at)? {
            b',' => at += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_q_values() {
        assert_eq!(negotiate(None), Format::PrometheusText);
        assert_eq!(negotiate(Some("*/*")), Format::PrometheusText);
        // Prometheus 2.x/3.x scrape header.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
            )),
            Format::PrometheusText
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::PrometheusText
        );
        assert_eq!(negotiate(Some("application/json")), Format::PrometheusText);
    }

    #[test]
    fn protobuf_is_chosen_only_as_delimited_metric_families() {
        // Prometheus 2.x with native histograms on, and 3.x's default order.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(native)), Format::Protobuf);
        let v3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=1.0.0;q=0.3,*/*;q=0.1";
        assert_eq!(negotiate(Some(v3)), Format::Protobuf);
        // Same q: protobuf first.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text,application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            )),
            Format::Protobuf
        );
        for other in [
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/vnd.google.protobuf",
        ] {
            assert_eq!(negotiate(Some(other)), Format::PrometheusText, "{other}");
        }
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.2,application/openmetrics-text;q=0.9"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn labels_are_read_with_their_escapes() {
        let labels = parse_labels(r#"le="0.5",route="a\"b\\c\nd,le=\"1\"",x="",y="z"} 3"#).unwrap();
        assert_eq!(
            labels,
            vec![
                ("le", "0.5".to_owned()),
                ("route", "a\"b\\c\nd,le=\"1\"".to_owned()),
                ("x", String::new()),
                ("y", "z".to_owned()),
            ]
        );
        assert_eq!(parse_labels(r#"le="0.5""#), None, "unterminated");
    }

    #[test]
    fn bucket_bounds_match_openmetrics_in_both_formats() {
        use prometheus_client::metrics::histogram::Histogram;
        let mut registry = Registry::default();
        let h = Histogram::new([0.2, 1.0, 10.0]);
        h.observe(0.5);
        registry.register("req_seconds", "Test.", h);
        for format in [Format::OpenMetrics, Format::PrometheusText] {
            let text = String::from_utf8(encode(&registry, format).unwrap()).unwrap();
            for le in ["le=\"0.2\"", "le=\"1.0\"", "le=\"10.0\"", "le=\"+Inf\""] {
                assert!(text.contains(le), "{format:?} lacks {le}: {text}");
            }
        }
    }

    /// Writes a histogram family with `le="1"` after `labels`, the way
    /// prometheus-client's text 0.0.4 encoder does, and returns the line
    /// `float_bucket_bounds` makes of it.
    fn rewritten_bucket(labels: &str) -> String {
        let text = format!("# HELP h Test.\n# TYPE h histogram\nh_bucket{{{labels}le=\"1\"}} 1\n");
        let out = float_bucket_bounds(&text);
        out.lines().nth(2).expect("the bucket line").to_owned()
    }

    #[test]
    fn only_the_le_label_of_a_bucket_is_rewritten() {
        // Label names ending in `le`.
        assert_eq!(
            rewritten_bucket(r#"role="5","#),
            r#"h_bucket{role="5",le="1.0"} 1"#
        );
        assert_eq!(
            rewritten_bucket(r#"role="x",module="7",file="3","#),
            r#"h_bucket{role="x",module="7",file="3",le="1.0"} 1"#
        );
        // Values that contain `le="…"`, `,le="`, escaped quotes and an
        // escaped backslash right before the closing quote.
        for labels in [
            r#"module="le=\"1\"","#,
            r#"path="a,le=\"2","#,
            r#"path="x\",le=\"3\"","#,
            r#"path="C:\\","#,
            r#"path="C:\\\"",q="le=","#,
            r#"path="line\nle=\"4\"","#,
        ] {
            assert_eq!(
                rewritten_bucket(labels),
                format!(r#"h_bucket{{{labels}le="1.0"}} 1"#),
                "{labels}"
            );
        }
        // Bounds that are not integers, and a label that is not `le`.
        let text = "# TYPE h histogram\n\
                    h_bucket{le=\"0.25\"} 1\n\
                    h_bucket{le=\"+Inf\"} 1\n\
                    h_bucket{le=\"1e+06\"} 1\n\
                    h_bucket{le=\"-\"} 1\n\
                    h_bucket{ale=\"1\"} 1\n\
                    h_bucket{le=\"-2\"} 1\n\
                    h_sum{le=\"1\"} 1\n";
        assert_eq!(
            float_bucket_bounds(text),
            text.replace(r#"le="-2""#, r#"le="-2.0""#)
        );
    }

    #[test]
    fn samples_outside_histograms_are_left_alone() {
        let text = "# TYPE g_bucket gauge\n\
                    g_bucket{le=\"1\"} 1\n\
                    # TYPE h histogram\n\
                    h_bucket{le=\"1\"} 1\n\
                    # TYPE c counter\n\
                    c_total{path=\"h_bucket{le=\\\"1\\\"}\"} 1\n\
                    h_bucket{le=\"1\"} 1\n\
                    # TYPE h2 histogram\n\
                    h2_bucket{a=\"1\"\n\
                    h2_bucket{le=\"2\",} 1\n\
                    h2_bucket{} 1\n";
        let expected = "# TYPE g_bucket gauge\n\
                        g_bucket{le=\"1\"} 1\n\
                        # TYPE h histogram\n\
                        h_bucket{le=\"1.0\"} 1\n\
                        # TYPE c counter\n\
                        c_total{path=\"h_bucket{le=\\\"1\\\"}\"} 1\n\
                        h_bucket{le=\"1\"} 1\n\
                        # TYPE h2 histogram\n\
                        h2_bucket{a=\"1\"\n\
                        h2_bucket{le=\"2.0\",} 1\n\
                        h2_bucket{} 1\n";
        assert_eq!(float_bucket_bounds(text), expected);
    }

    #[test]
    fn label_values_with_le_text_survive_encoding() {
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::Histogram;
        let mut registry = Registry::default();
        let family = Family::<Vec<(String, String)>, Histogram>::new_with_constructor(|| {
            Histogram::new([0.5, 1.0, 10.0])
        });
        let labels: Vec<(String, String)> = [
            ("role", "5"),
            ("module", r#"le="1""#),
            ("path", r#"a,le="2"#),
            ("file", "C:\\"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        family.get_or_create(&labels).observe(0.7);
        registry.register("req_seconds", "Test.", family);
        let text = String::from_utf8(encode(&registry, Format::PrometheusText).unwrap()).unwrap();
        let prefix =
            r#"req_seconds_bucket{role="5",module="le=\"1\"",path="a,le=\"2",file="C:\\","#;
        for (le, count) in [("0.5", 0), ("1.0", 1), ("10.0", 1), ("+Inf", 1)] {
            let line = format!(r#"{prefix}le="{le}"}} {count}"#);
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    /// The middleware's latency histogram through each format, for requests
    /// whose latencies the test knows from both ends: the handler sleeps
    /// [`SLEEP`], the client measures the whole round trip.
    mod native_and_exemplars {
        use super::*;
        use crate::http_metrics::HttpMetricsLayer;
        use axum::Router;
        use axum::body::Body;
        use axum::http::Request;
        use axum::routing::get;
        use std::time::{Duration, Instant};
        use tower::ServiceExt;

        const SLEEP: Duration = Duration::from_millis(25);
        const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
        const TRACE_B: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

        /// Sends two requests with trace ids (A, then B) and one without;
        /// returns the longest round trip.
        async fn traffic(
            builder: crate::http_metrics::HttpMetricsBuilder,
        ) -> (Registry, HttpMetricsLayer, Duration) {
            let mut registry = Registry::default();
            let layer = builder.register(&mut registry);
            let app = Router::new()
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(SLEEP).await;
                        "ok"
                    }),
                )
                .layer(layer.clone());
            let mut longest = Duration::ZERO;
            for trace in [Some(TRACE_A), Some(TRACE_B), None] {
                let mut request = Request::get("/slow");
                if let Some(id) = trace {
                    request = request.header("traceparent", format!("00-{id}-00f067aa0ba902b7-01"));
                }
                let started = Instant::now();
                let response = app
                    .clone()
                    .oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                longest = longest.max(started.elapsed());
                assert_eq!(response.status(), 200);
            }
            (registry, layer, longest)
        }

        fn decode(mut bytes: &[u8]) -> Vec<proto::MetricFamily> {
            let mut families = Vec::new();
            while !bytes.is_empty() {
                families.push(proto::MetricFamily::decode_length_delimited(&mut bytes).unwrap());
            }
            families
        }

        fn slow_histogram(families: &[proto::MetricFamily]) -> proto::Histogram {
            let family = families
                .iter()
                .find(|f| f.name == REQUEST_DURATION_FAMILY)
                .expect("the latency family");
            assert_eq!(family.r#type, proto::MetricType::Histogram as i32);
            let metric = family
                .metric
                .iter()
                .find(|m| {
                    m.label
                        .iter()
                        .any(|l| l.name == "http_route" && l.value == "/slow")
                })
                .expect("the /slow series");
            let labels: Vec<(&str, &str)> = metric
                .label
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .collect();
            assert_eq!(
                labels,
                [
                    ("http_request_method", "GET"),
                    ("http_route", "/slow"),
                    ("http_response_status_code", "200")
                ]
            );
            metric.histogram.clone().expect("a histogram")
        }

        /// `(bucket index, count)` of a native histogram's positive buckets.
        fn expand(h: &proto::Histogram) -> Vec<(i32, i64)> {
            let mut out = Vec::new();
            let (mut index, mut count) = (0i32, 0i64);
            let mut deltas = h.positive_delta.iter();
            for span in &h.positive_span {
                index += span.offset;
                for _ in 0..span.length {
                    count += deltas.next().expect("one delta per bucket");
                    out.push((index, count));
                    index += 1;
                }
            }
            assert!(deltas.next().is_none(), "no delta left over");
            out.into_iter().filter(|&(_, c)| c != 0).collect()
        }

        #[tokio::test]
        async fn protobuf_carries_native_and_classic_buckets_with_exemplars() {
            let (registry, layer, longest) = traffic(HttpMetricsLayer::builder()).await;
            let bytes =
                encode_with_exemplars(&registry, &layer.exemplars(), Format::Protobuf).unwrap();
            let families = decode(&bytes);
            let h = slow_histogram(&families);
            assert_eq!(h.sample_count, 3);
            assert!(
                h.sample_sum >= 3.0 * SLEEP.as_secs_f64()
                    && h.sample_sum <= 3.0 * longest.as_secs_f64()
            );
            // Native: schema 3, every request in a bucket (2^((k-1)/8), 2^(k/8)]
            // that overlaps [SLEEP, longest].
            assert_eq!(h.schema, 3);
            assert_eq!(h.zero_threshold, 2f64.powi(-30));
            assert_eq!(h.zero_count, 0);
            let native = expand(&h);
            assert_eq!(native.iter().map(|&(_, c)| c).sum::<i64>(), 3, "{native:?}");
            for &(k, _) in &native {
                let upper = 2f64.powf(f64::from(k) / 8.0);
                let lower = 2f64.powf(f64::from(k - 1) / 8.0);
                assert!(
                    upper >= SLEEP.as_secs_f64() && lower < longest.as_secs_f64(),
                    "bucket {k}"
                );
            }
            // Classic: the default bounds and +Inf, cumulative.
            let bounds: Vec<f64> = h.bucket.iter().map(|b| b.upper_bound).collect();
            let mut expected: Vec<f64> = crate::http_metrics::DEFAULT_BUCKETS.to_vec();
            expected.push(f64::INFINITY);
            assert_eq!(bounds, expected);
            assert_eq!(h.bucket.last().unwrap().cumulative_count, 3);
            // The latest (B) on the bucket its request fell in, with its
            // timestamp. Both traced requests usually share a bucket
            // (0.025 < latency <= 0.05), so B replaced A; a stalled machine
            // may put A in another bucket, where it then stays. The native
            // histogram's list holds the same exemplars.
            let with_exemplar: Vec<&proto::Bucket> =
                h.bucket.iter().filter(|b| b.exemplar.is_some()).collect();
            let trace = |b: &proto::Bucket| {
                let labels = &b.exemplar.as_ref().unwrap().label;
                assert_eq!(labels.len(), 1);
                assert_eq!(labels[0].name, "trace_id");
                labels[0].value.clone()
            };
            let traces: Vec<String> = with_exemplar.iter().map(|b| trace(b)).collect();
            assert_eq!(
                traces.iter().filter(|t| *t == TRACE_B).count(),
                1,
                "{traces:?}"
            );
            assert!(
                traces.iter().all(|t| t == TRACE_A || t == TRACE_B),
                "{traces:?}"
            );
            let holder = with_exemplar[traces.iter().position(|t| t == TRACE_B).unwrap()];
            let exemplar = holder.exemplar.as_ref().unwrap();
            assert!(
                exemplar.value >= SLEEP.as_secs_f64() && exemplar.value <= longest.as_secs_f64()
            );
            assert!(holder.upper_bound >= exemplar.value);
            let below = h
                .bucket
                .iter()
                .map(|b| b.upper_bound)
                .filter(|&le| le < holder.upper_bound)
                .fold(0.0, f64::max);
            assert!(
                exemplar.value > below,
                "{} in ({below}, ..]",
                exemplar.value
            );
            assert!(exemplar.timestamp.is_some());
            assert_eq!(h.exemplars.len(), with_exemplar.len());
            assert!(h.exemplars.contains(exemplar));
        }

        #[tokio::test]
        async fn openmetrics_puts_the_exemplar_on_its_classic_bucket_and_text_has_none() {
            let (registry, layer, longest) = traffic(HttpMetricsLayer::builder()).await;
            // One exemplar per bucket the traced requests fell in: B's, and
            // A's only if a stalled machine put A in another bucket.
            let exemplars = layer.exemplars();
            assert!((1..=2).contains(&exemplars.len()), "{exemplars:?}");
            let text = String::from_utf8(
                encode_with_exemplars(&registry, &exemplars, Format::OpenMetrics).unwrap(),
            )
            .unwrap();
            let annotated: Vec<&str> = text.lines().filter(|l| l.contains(" # {")).collect();
            assert_eq!(annotated.len(), exemplars.len(), "{text}");
            let latest = annotated
                .iter()
                .find(|l| l.contains(TRACE_B))
                .expect("B's exemplar");
            let (sample, exemplar) = latest.split_once(" # ").unwrap();
            assert!(
                sample.starts_with("http_server_request_duration_seconds_bucket{"),
                "{sample}"
            );
            let le: f64 = sample
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let rest = exemplar
                .strip_prefix(&format!("{{trace_id=\"{TRACE_B}\"}} "))
                .expect(exemplar);
            let mut numbers = rest.split(' ').map(|n| n.parse::<f64>().unwrap());
            let (value, at) = (numbers.next().unwrap(), numbers.next().unwrap());
            assert!(value >= SLEEP.as_secs_f64() && value <= longest.as_secs_f64() && value <= le);
            let now = std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!((now - at).abs() < 60.0, "{at} vs {now}");
            assert!(text.ends_with("# EOF\n"));
            // Prometheus text 0.0.4 has no exemplars, and no native buckets.
            let plain = String::from_utf8(
                encode_with_exemplars(&registry, &exemplars, Format::PrometheusText).unwrap(),
            )
            .unwrap();
            assert!(!plain.contains(TRACE_B) && !plain.contains(" # "));
        }

        #[tokio::test]
        async fn native_classic_and_exemplars_can_each_be_turned_off() {
            // Native off: a classic histogram only.
            let (registry, layer, _) =
                traffic(HttpMetricsLayer::builder().native_histogram(false)).await;
            let h = slow_histogram(&decode(
                &encode_with_exemplars(&registry, &layer.exemplars(), Format::Protobuf).unwrap(),
            ));
            assert_eq!(
                (h.schema, h.zero_threshold, h.positive_span.len()),
                (0, 0.0, 0)
            );
            assert!(
                h.exemplars.is_empty(),
                "no native list without native buckets"
            );
            assert_eq!(h.bucket.len(), 16);
            let kept = h.bucket.iter().filter(|b| b.exemplar.is_some()).count();
            assert_eq!(kept, layer.exemplars().len());
            assert!(
                (1..=2).contains(&kept),
                "one per bucket the requests fell in"
            );
            // Classic off: only +Inf, which then holds the one exemplar.
            let (registry, layer, _) =
                traffic(HttpMetricsLayer::builder().classic_buckets(false)).await;
            let h = slow_histogram(&decode(
                &encode_with_exemplars(&registry, &layer.exemplars(), Format::Protobuf).unwrap(),
            ));
            assert_eq!(h.bucket.len(), 1);
            assert_eq!(h.bucket[0].upper_bound, f64::INFINITY);
            assert_eq!(h.bucket[0].cumulative_count, 3);
            assert_eq!(h.exemplars.len(), 1);
            assert_eq!(expand(&h).iter().map(|&(_, c)| c).sum::<i64>(), 3);
            let text = String::from_utf8(encode(&registry, Format::OpenMetrics).unwrap()).unwrap();
            assert!(text.contains("le=\"+Inf\""));
            // Exemplars off: none kept.
            let (_, layer, _) = traffic(HttpMetricsLayer::builder().exemplars(false)).await;
            assert!(layer.exemplars().is_empty());
        }

        #[tokio::test]
        async fn an_exemplar_keeps_its_timestamp_across_scrapes() {
            let (_registry, layer, _) = traffic(HttpMetricsLayer::builder()).await;
            let first = layer.exemplars();
            // Past the once-a-second refresh of the offset to the system
            // clock, which the latency clock drifts against.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            assert_eq!(layer.exemplars(), first);
        }

        #[tokio::test]
        async fn exemplars_are_written_under_a_registry_prefix_too() {
            let mut root = Registry::default();
            let layer = HttpMetricsLayer::builder().register(root.sub_registry_with_prefix("api"));
            let app = Router::new()
                .route("/r", get(|| async { "ok" }))
                .layer(layer.clone());
            let request = Request::get("/r")
                .header("traceparent", format!("00-{TRACE_A}-00f067aa0ba902b7-01"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap();
            let exemplars = layer.exemplars();
            let text = String::from_utf8(
                encode_with_exemplars(&root, &exemplars, Format::OpenMetrics).unwrap(),
            )
            .unwrap();
            assert!(
                text.lines().any(|l| l
                    .starts_with("api_http_server_request_duration_seconds_bucket{")
                    && l.contains(&format!("# {{trace_id=\"{TRACE_A}\"}}"))),
                "{text}"
            );
            let families =
                decode(&encode_with_exemplars(&root, &exemplars, Format::Protobuf).unwrap());
            let family = families
                .iter()
                .find(|f| f.name == "api_http_server_request_duration_seconds")
                .expect("the prefixed family");
            let h = family.metric[0].histogram.as_ref().unwrap();
            assert_eq!(h.exemplars.len(), 1);
            assert!(!is_request_duration(
                "xhttp_server_request_duration_seconds"
            ));
        }

        #[tokio::test]
        async fn a_named_header_supplies_the_trace_id() {
            let mut registry = Registry::default();
            let layer = HttpMetricsLayer::builder()
                .trace_id_header(axum::http::HeaderName::from_static("x-request-id"))
                .register(&mut registry);
            let app = Router::new()
                .route("/r", get(|| async { "ok" }))
                .layer(layer.clone());
            let request = Request::get("/r")
                .header("x-request-id", "req-42")
                .header("traceparent", format!("00-{TRACE_A}-00f067aa0ba902b7-01"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap();
            let kept: Vec<String> = layer.exemplars().into_iter().map(|e| e.trace_id).collect();
            assert_eq!(kept, ["req-42"]);
        }
    }
}
