//! PostgreSQL access: connection pools, the exporter's migrations, the
//! fixture source schema and the `check` report.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseUrl;

/// The exporter's own migrations (`migrations/`), embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// SQL creating the Follow-Up application's source tables (tests and demo only).
pub const SOURCE_SCHEMA_SQL: &str = include_str!("../sql/source_schema.sql");

/// SQL creating the indexes the collector relies on in the source tables.
pub const SOURCE_INDEXES_SQL: &str = include_str!("../sql/source_indexes.sql");

/// A database operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A query or connection failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Attaches context to a driver error.
pub fn ctx(context: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Sql { context, source }
}

/// Connection options for `url`; the application name marks our sessions in
/// `pg_stat_activity`.
pub fn connect_options(url: &DatabaseUrl) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url.expose())
        .map(|o| o.application_name("okr-exporter"))
        .map_err(ctx("parsing the database URL"))
}

/// A pool that connects lazily, so start-up never waits for the database.
pub fn lazy_pool(url: &DatabaseUrl, max_connections: u32) -> Result<PgPool, DbError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(connect_options(url)?))
}

/// Applies the exporter's migrations (idempotent; sqlx serialises concurrent
/// runs with an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Creates the source tables (tests and demo; never in production).
pub async fn apply_source_schema(pool: &PgPool) -> Result<(), DbError> {
    sqlx::raw_sql(SOURCE_SCHEMA_SQL)
        .execute(pool)
        .await
        .map_err(ctx("creating the fixture source schema"))?;
    Ok(())
}

/// Creates the documented source-table indexes. `CREATE INDEX CONCURRENTLY`
/// cannot run in a transaction block, so the statements run one by one.
pub async fn create_source_indexes(pool: &PgPool) -> Result<(), DbError> {
    // The statements come from our own embedded SQL file.
    for stmt in sql_statements(SOURCE_INDEXES_SQL) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
            .execute(pool)
            .await
            .map_err(ctx("creating source-table indexes"))?;
    }
    Ok(())
}

/// Splits a file of simple statements (no semicolons inside literals) and
/// drops comment lines.
fn sql_statements(sql: &str) -> Vec<String> {
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// True once every embedded migration is applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, DbError> {
    let applied: Vec<(i64, bool)> =
        match sqlx::query_as("SELECT version, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Ok(false);
            }
            Err(e) => return Err(ctx("reading the migration state")(e)),
        };
    Ok(MIGRATOR
        .iter()
        .all(|m| applied.iter().any(|(v, ok)| *v == m.version && *ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_splits_into_create_statements() {
        let stmts = sql_statements(SOURCE_INDEXES_SQL);
        assert_eq!(stmts.len(), 4);
        assert!(
            stmts
                .iter()
                .all(|s| s.starts_with("CREATE INDEX CONCURRENTLY IF NOT EXISTS"))
        );
    }
}
