//! `okr-exporter demo`: the whole product on a private PostgreSQL.

use crate::config::{DatabaseUrl, DemoArgs, Settings};
use crate::db;
use crate::embedded_pg::{EmbeddedPgError, EmbeddedPostgres};
use crate::server::{self, Exporter, ServerError};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded PostgreSQL could not start.
    #[error(transparent)]
    EmbeddedPg(#[from] EmbeddedPgError),
    /// Database set-up failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The exporter failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(mut settings: Settings, args: DemoArgs) -> Result<(), DemoError> {
    // Held until the end of the demo: dropping it stops the cluster.
    let mut _embedded = None;
    if settings.database_url.is_none() {
        let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .map_err(|e| EmbeddedPgError::Start(e.to_string()))??;
        tracing::info!(port = pg.port(), "embedded PostgreSQL started");
        let url = DatabaseUrl::parse_arg(&pg.url("postgres")).map_err(EmbeddedPgError::Start)?;
        settings.database_url = Some(url);
        _embedded = Some(pg);
    }
    let url = settings
        .database_url
        .clone()
        .ok_or(ServerError::NoDatabase)?;
    let pool = db::lazy_pool(&url, 4)?;
    db::apply_source_schema(&pool).await?;
    db::migrate(&pool).await?;
    let _ = args;
    let listener = server::bind(settings.listen).await?;
    let exporter = Exporter::new(settings)?;
    exporter.run(listener, server::shutdown_signal()).await?;
    Ok(())
}
