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
fn float_bucket_bounds(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        if line.starts_with('#') || !line.contains("_bucket{") {
            out.push_str(line);
            continue;
        }
        match line.find("le=\"") {
            Some(at) => {
                let start = at + 4;
                let end = line[start..].find('"').map_or(start, |e| start + e);
                let bound = &line[start..end];
                out.push_str(&line[..end]);
                if !bound.is_empty() && bound.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    out.push_str(".0");
                }
                out.push_str(&line[end..]);
            }
            None => out.push_str(line),
        }
    }
    out
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
}
