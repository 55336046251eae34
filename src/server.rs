//! The exporter (DESIGN §5): assembles the router from the route groups —
//! [`scrape`] (`/metrics`), [`health`], the landing page, the report and
//! ingestion — with the read guard of [`auth`] on the read group, and runs
//! it with its background work (migrations retried until the database
//! answers, collection).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Method};
use axum::middleware;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::backoff::Backoff;
use crate::collector::{self, CollectorMetrics, Scheduler, SnapshotStore};
use crate::config::Settings;
use crate::db_availability::{CollectorHealth, DatabaseAvailability};
use crate::http_metrics::HttpMetricsLayer;
use crate::request_log::{self, RequestLogOptions, RequestLogWriter};
use crate::state::AppState;
use crate::{auth, db, health, ingest, landing, report, scrape};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No database URL was configured.
    #[error("no database configured: pass --database-url or set DATABASE_URL")]
    NoDatabase,
    /// The database URL could not be turned into a pool.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The request log needs a Tokio runtime.
    #[error("the request log must be started within a Tokio runtime")]
    NoRuntime,
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

/// The exporter: state, router and background work, ready to run.
pub struct Exporter {
    state: AppState,
    scheduler: Scheduler,
    http_metrics: HttpMetricsLayer,
    request_log: Option<RequestLogWriter>,
}

impl Exporter {
    /// Builds the registry, pools (connecting lazily), collectors and the
    /// request-latency middleware of the exporter's own routes. Must be
    /// called within a Tokio runtime when the request log is enabled.
    pub fn new(settings: Settings) -> Result<Self, ServerError> {
        let url = settings
            .database_url
            .clone()
            .ok_or(ServerError::NoDatabase)?;
        let pool = db::lazy_pool(&url, 8)?;
        let read_pool = match &settings.database_read_url {
            Some(read) => db::lazy_pool(read, 8)?,
            None => pool.clone(),
        };
        let settings = Arc::new(settings);
        let mut registry = Registry::default();
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                revision: option_env!("OKR_EXPORTER_REVISION")
                    .unwrap_or("unknown")
                    .to_owned(),
            })
            .set(1);
        registry.register(
            "okr_exporter_build_info",
            "Build information of this okr-exporter; always 1.",
            build,
        );
        let metrics = CollectorMetrics::register(&mut registry);
        collector::register_targets(&mut registry, &settings.targets);
        let store = Arc::new(SnapshotStore::default());
        registry.register_collector(Box::new(Arc::clone(&store)));
        let (http_metrics, request_log) = instrument(&settings, &pool, &mut registry)?;
        let scheduler = Scheduler::new(
            collector::all_collectors(),
            read_pool.clone(),
            pool.clone(),
            Arc::clone(&settings),
            Arc::clone(&store),
            metrics.clone(),
        );
        // The collector's up flag speaks for the primary only when it polls it.
        let collector_health = settings.database_read_url.is_none().then(|| {
            CollectorHealth::new(&metrics, scheduler.collectors().iter().map(|c| c.name()))
        });
        let state = AppState {
            registry: Arc::new(registry),
            http_metrics: http_metrics.clone(),
            settings,
            pool,
            read_pool,
            store,
            migrated: Arc::new(AtomicBool::new(false)),
            database: Arc::new(DatabaseAvailability::new(collector_health)),
        };
        Ok(Self {
            state,
            scheduler,
            http_metrics,
            request_log,
        })
    }

    /// The handlers' state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The collector scheduler (tests run it once by hand).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The exporter's routes, instrumented with the latency middleware.
    pub fn router(&self) -> Router {
        router(self.state.clone()).layer(self.http_metrics.clone())
    }

    /// Serves on `listener` until `shutdown` completes, within the timeouts
    /// and connection cap of `settings.http` ([`crate::serve`]), with
    /// migrations and collection running in the background. The database
    /// may be down at start-up: `/metrics` answers at once and the rest
    /// catches up.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        if self.state.settings.ingest_token.is_none() {
            tracing::warn!(
                "no ingest token configured (--ingest-token / OKR_INGEST_TOKEN): \
                 the ingestion endpoints answer 503 until one is set"
            );
        }
        let bootstrap = tokio::spawn(bootstrap(self.state.clone()));
        let collection = tokio::spawn(self.scheduler.clone().run());
        let app = self.router();
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "serving /metrics");
        crate::serve::serve(listener, app, self.state.settings.http.clone(), shutdown).await;
        bootstrap.abort();
        collection.abort();
        if let Some(writer) = self.request_log {
            writer.shutdown().await;
        }
        Ok(())
    }
}

/// Builds the latency middleware from the settings, with the request log as
/// its sink when enabled.
pub fn instrument(
    settings: &Settings,
    pool: &PgPool,
    registry: &mut Registry,
) -> Result<(HttpMetricsLayer, Option<RequestLogWriter>), ServerError> {
    let mut builder = HttpMetricsLayer::builder();
    if let Some(b) = &settings.latency_buckets {
        builder = builder.buckets(b.iter().copied());
    }
    if let Some(targets) = &settings.latency_targets {
        builder = builder.latency_targets(targets.iter().filter_map(|t| {
            Method::from_bytes(t.method.as_bytes())
                .ok()
                .map(|m| (m, t.route.clone(), t.p95_seconds))
        }));
    }
    let mut writer = None;
    if settings.request_log {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ServerError::NoRuntime);
        }
        let options = RequestLogOptions {
            retention: settings.request_log_retention,
            ..RequestLogOptions::default()
        };
        let (sink, w) = request_log::start(pool.clone(), registry, options);
        builder = builder.request_sink(sink);
        if let Ok(h) = HeaderName::from_bytes(settings.request_log_user_header.as_bytes()) {
            builder = builder.user_id_header(h);
        }
        writer = Some(w);
    }
    Ok((builder.register(registry), writer))
}

/// Binds `addr` with a clear error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Applies migrations (and source indexes when asked), retrying with
/// backoff until the database is reachable.
async fn bootstrap(state: AppState) {
    // Jittered, so replicas do not all retry at the same instant.
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        match db::migrate(&state.pool).await {
            Ok(()) => {
                state.migrated.store(true, Ordering::Release);
                tracing::info!("migrations applied");
                break;
            }
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %e, ?retry_in, "database not ready");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
    if state.settings.create_source_indexes
        && let Err(e) = db::create_source_indexes(&state.pool).await
    {
        tracing::error!(error = %e, "creating source-table indexes failed");
    }
}

/// The exporter's router over `state`: the read group (`/metrics`, `/`,
/// the report) behind the read guard, health and ingestion beside it.
pub fn router(state: AppState) -> Router {
    let read = Router::new()
        .merge(scrape::routes())
        .merge(landing::routes())
        .merge(report::routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.settings),
            auth::require_read_credentials,
        ));
    Router::new()
        .merge(health::routes())
        .merge(read)
        .merge(ingest::routes(&state.settings))
        .with_state(state)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
