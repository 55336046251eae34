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
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
    }
    Ok(out)
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
}
