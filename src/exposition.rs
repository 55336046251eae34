//! `/metrics` encoding: OpenMetrics 1.0 or Prometheus text 0.0.4, chosen
//! from the scraper's `Accept` header.

use prometheus_client::registry::Registry;

/// `Content-Type` of an OpenMetrics response.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of a Prometheus text 0.0.4 response.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    PrometheusText,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// Picks the format the client prefers (highest `q`; OpenMetrics wins a
/// tie). No header, or nothing we serve, means Prometheus text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::PrometheusText;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0_f32;
        for p in parts {
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text" => Format::OpenMetrics,
            "text/plain" | "text/*" | "*/*" => Format::PrometheusText,
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bf)) => q > bq || (q == bq && format == Format::OpenMetrics && bf != format),
        };
        if better {
            best = Some((q, format));
        }
    }
    best.map_or(Format::PrometheusText, |(_, f)| f)
}

/// Encodes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
            out = float_bucket_bounds(&out);
        }
    }
    Ok(out)
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
    fn bucket_bounds_match_openmetrics_in_both_formats() {
        use prometheus_client::metrics::histogram::Histogram;
        let mut registry = Registry::default();
        let h = Histogram::new([0.2, 1.0, 10.0]);
        h.observe(0.5);
        registry.register("req_seconds", "Test.", h);
        for format in [Format::OpenMetrics, Format::PrometheusText] {
            let text = encode(&registry, format).unwrap();
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
        let text = encode(&registry, Format::PrometheusText).unwrap();
        let prefix =
            r#"req_seconds_bucket{role="5",module="le=\"1\"",path="a,le=\"2",file="C:\\","#;
        for (le, count) in [("0.5", 0), ("1.0", 1), ("10.0", 1), ("+Inf", 1)] {
            let line = format!(r#"{prefix}le="{le}"}} {count}"#);
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
