//! The state every handler of the exporter shares ([`AppState`]), built by
//! [`crate::server::Exporter::new`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::collector::SnapshotStore;
use crate::config::Settings;
use crate::db_availability::DatabaseAvailability;
use crate::http_metrics::HttpMetricsLayer;

/// Shared state of the handlers; cheap to clone (pools and `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// Metrics registry served on `/metrics`.
    pub registry: Arc<Registry>,
    /// The latency middleware registered in `registry`, whose exemplars
    /// `/metrics` adds.
    pub http_metrics: HttpMetricsLayer,
    /// Resolved settings.
    pub settings: Arc<Settings>,
    /// Primary pool (migrations, ingestion, rollups).
    pub pool: PgPool,
    /// Pool for the collector's reads (read replica when configured).
    pub read_pool: PgPool,
    /// Last collected OKR values.
    pub store: Arc<SnapshotStore>,
    /// True once migrations are applied.
    pub migrated: Arc<AtomicBool>,
    /// Whether ingestion may use the database now (refused at once while
    /// it is known to be down).
    pub database: Arc<DatabaseAvailability>,
}
