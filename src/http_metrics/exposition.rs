//! The three metric families, encoded through prometheus-client's encoders.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NativeHistogram,
    NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use super::layer::State;
use super::native;
use super::shared::Shared;
use super::store::SeriesCounters;
use super::store::{METHOD_COUNT, METHOD_LABELS};

/// Label set of all three families; the status is absent for the gauges.
struct Labels<'a> {
    method: &'static str,
    route: &'a str,
    status: Option<u16>,
}

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        ("http_request_method", self.method).encode(encoder.encode_label())?;
        ("http_route", self.route).encode(encoder.encode_label())?;
        if let Some(status) = self.status {
            ("http_response_status_code", status).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

pub(crate) fn method_label(method: u8) -> &'static str {
    METHOD_LABELS
        .get(usize::from(method))
        .copied()
        .unwrap_or("_OTHER")
}

/// `http_server_request_duration_seconds`: classic buckets for every
/// encoder, plus the native histogram for the protobuf one (the text
/// encoders leave it out).
pub(crate) struct RequestDuration(pub(crate) Shared<State>);

/// One series read for a scrape.
struct SeriesReading {
    sum_nanos: u64,
    classic: Vec<u64>,
    /// Native counts by slot, when native buckets are kept.
    native: Option<Vec<u64>>,
}

/// Reads a series so that its native and classic parts count the same
/// requests, as Prometheus requires of a native histogram's count and
/// buckets. Native counts are read first: a request is counted classically
/// before natively, so the classic total can only be ahead, by the requests
/// finishing during the read; a few retries make that vanishingly rare, and
/// if it persists the count follows the native buckets (the classic
/// `+Inf` may then run a request or two ahead of `_count`).
fn read_series(counters: &SeriesCounters, bucket_count: usize) -> (SeriesReading, u64) {
    let mut attempts = 0;
    loop {
        let native = counters.native_counts();
        let classic = counters.bucket_counts(bucket_count);
        let sum_nanos = counters.sum_nanos();
        let classic_total: u64 = classic.iter().sum();
        let native_total = native.as_ref().map(|n| n.iter().sum::<u64>());
        attempts += 1;
        match native_total {
            Some(total) if total != classic_total && attempts < 4 => continue,
            _ => {
                let count = native_total.unwrap_or(classic_total);
                let reading = SeriesReading {
                    sum_nanos,
                    classic,
                    native,
                };
                return (reading, count);
            }
        }
    }
}

impl EncodeMetric for RequestDuration {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let buckets = &self.0.buckets;
        let bucket_count = buckets.len_with_inf();
        let mut series = Vec::new();
        for route in self.0.routes.iter() {
            route.for_each_series(|method, status, counters| {
                let (reading, count) = read_series(counters, bucket_count);
                series.push((Arc::clone(route.label()), method, status, reading, count));
            });
        }
        // Stable output order, independent of hash-table slots.
        series.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let bounds = buckets.bounds().iter().copied().chain([f64::INFINITY]);
        for (route, method, status, reading, count) in series {
            let pairs: Vec<(f64, u64)> = bounds.clone().zip(reading.classic).collect();
            let labels = Labels {
                method: method_label(method),
                route: &route,
                status: Some(status),
            };
            let sum = reading.sum_nanos as f64 / 1e9;
            let mut family = encoder.encode_family(&labels)?;
            match reading.native {
                None => family.encode_histogram::<NoLabelSet>(sum, count, &pairs, None)?,
                Some(native_counts) => {
                    let sparse = native::sparse(&native_counts);
                    family.encode_histogram_with_native::<NoLabelSet>(
                        sum,
                        count,
                        &pairs,
                        None,
                        NativeHistogram {
                            schema: native::SCHEMA,
                            zero_threshold: native::ZERO_THRESHOLD,
                            zero_count: native_counts.first().copied().unwrap_or(0),
                            negative: NativeHistogramBuckets {
                                spans: &[],
                                deltas: &[],
                            },
                            positive: NativeHistogramBuckets {
                                spans: &sparse.spans,
                                deltas: &sparse.deltas,
                            },
                            created: None,
                        },
                    )?
                }
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl fmt::Debug for RequestDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestDuration")
    }
}

/// `http_server_active_requests`: started minus finished, per method and
/// route that has seen a request.
pub(crate) struct ActiveRequests(pub(crate) Shared<State>);

impl EncodeMetric for ActiveRequests {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let bucket_count = self.0.buckets.len_with_inf();
        let mut gauges = Vec::new();
        for route in self.0.routes.iter() {
            // Finished first, started second: a request counted as finished
            // was started before, so the difference never goes negative.
            let mut finished = [0u64; METHOD_COUNT];
            route.for_each_series(|method, _, counters| {
                if let Some(total) = finished.get_mut(usize::from(method)) {
                    *total += counters.bucket_counts(bucket_count).iter().sum::<u64>();
                }
            });
            for (method, finished) in finished.iter().enumerate() {
                let started = route.started(method);
                if started > 0 {
                    let active =
                        i64::try_from(started.saturating_sub(*finished)).unwrap_or(i64::MAX);
                    gauges.push((Arc::clone(route.label()), method as u8, active));
                }
            }
        }
        gauges.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        for (route, method, active) in gauges {
            let labels = Labels {
                method: method_label(method),
                route: &route,
                status: None,
            };
            encoder.encode_family(&labels)?.encode_gauge(&active)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl fmt::Debug for ActiveRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActiveRequests")
    }
}

/// `http_server_latency_target_seconds`, from configuration.
pub(crate) struct LatencyTargets(pub(crate) Shared<State>);

impl EncodeMetric for LatencyTargets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for target in &self.0.targets {
            let labels = Labels {
                method: method_label(target.method),
                route: &target.route,
                status: None,
            };
            encoder
                .encode_family(&labels)?
                .encode_gauge(&target.seconds)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl fmt::Debug for LatencyTargets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LatencyTargets")
    }
}
