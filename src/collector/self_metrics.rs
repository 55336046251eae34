//! The exporter's own metrics about collection (`okr_exporter_*`), one
//! series per collector that runs: a disabled collector has none.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set `{collector}` of the exporter's own metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    /// Collector name.
    pub collector: String,
}

/// The exporter's self-metrics about collection (`okr_exporter_*`).
#[derive(Debug, Clone, Default)]
pub struct CollectorMetrics {
    /// Duration of the last run.
    pub duration: Family<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Runs.
    pub runs: Family<CollectorLabel, Counter>,
    /// Failed runs.
    pub errors: Family<CollectorLabel, Counter>,
    /// Unix time of the last success.
    pub last_success: Family<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// 1 if the last poll reached the database.
    pub up: Gauge<i64, AtomicI64>,
    /// Configured interval of each collector.
    pub interval: Family<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Age after which a collector's last good values are dropped.
    pub max_staleness: Family<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Series a reconciliation corrected in an incremental collector's state.
    pub corrections: Family<CollectorLabel, Counter>,
}

impl CollectorMetrics {
    /// Registers the self-metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "okr_exporter_collection_duration_seconds",
            "Duration of the collector's last run, in seconds.",
            m.duration.clone(),
        );
        registry.register(
            "okr_exporter_collections",
            "Collector runs since start.",
            m.runs.clone(),
        );
        registry.register(
            "okr_exporter_collection_errors",
            "Collector runs that failed since start (the failure is never served as a value).",
            m.errors.clone(),
        );
        registry.register(
            "okr_exporter_last_success_timestamp_seconds",
            "Unix time of the collector's last successful run.",
            m.last_success.clone(),
        );
        registry.register(
            "okr_exporter_collection_interval_seconds",
            "Configured interval between two runs of the collector, in seconds.",
            m.interval.clone(),
        );
        registry.register(
            "okr_exporter_max_staleness_seconds",
            "Age in seconds after which the collector's last good values are dropped from /metrics.",
            m.max_staleness.clone(),
        );
        registry.register(
            "okr_exporter_reconcile_corrections",
            "Series an incremental collector had wrong and a full recomputation corrected \
             (rows the incremental reads cannot see: low ids, updates, deletes).",
            m.corrections.clone(),
        );
        registry.register(
            "okr_exporter_up",
            "1 if the last poll reached the database, 0 otherwise.",
            m.up.clone(),
        );
        m
    }

    pub(crate) fn label(name: &str) -> CollectorLabel {
        CollectorLabel {
            collector: name.to_owned(),
        }
    }
}
