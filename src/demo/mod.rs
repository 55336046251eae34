//! `okr-exporter demo`: the whole product on a private PostgreSQL.
//!
//! Starts an embedded PostgreSQL (unless `--database-url` is given), loads
//! the fixture source schema and the exporter's migrations, backfills
//! deterministic history ([`backfill`]), runs the instrumented reference
//! Follow-Up API ([`api`]) with a traffic simulator against it
//! ([`traffic`]), and serves the exporter until SIGINT/SIGTERM.
//!
//! The API relays creation times and next actions to the exporter's
//! ingestion endpoints with the ingest token, as a real backend does; without
//! a configured token the demo makes up a random one (never shown).
//!
//! The exporter serves nothing, `/healthz` and `/readyz` included, before
//! the history is in the database: docker-compose.yml's `okr-backfill` waits
//! for the demo to be healthy and then reads that history.

pub mod api;
pub mod backfill;
pub mod profile;
pub mod traffic;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{DatabaseUrl, DemoArgs, Secret, Settings, Windows};
use crate::db;
use crate::embedded_pg::{EmbeddedPgError, EmbeddedPostgres};
use crate::server::{self, Exporter, ServerError};

/// Highest accepted `--rps`.
const MAX_RPS: f64 = 1_000.0;

/// How long the API and the traffic get to finish after the exporter stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

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
    /// The reference API's address could not be bound.
    #[error(
        "cannot start the demo's Follow-Up API on {addr}: {error} (choose another address with --api-listen)"
    )]
    ApiBind {
        /// Address.
        addr: SocketAddr,
        /// Cause (part of the message, so it is not repeated as a source).
        error: std::io::Error,
    },
    /// `--rps` is out of range.
    #[error("--rps must be between 0 and {MAX_RPS} requests per second, got {0}")]
    InvalidRps(f64),
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(mut settings: Settings, args: DemoArgs) -> Result<(), DemoError> {
    if !(args.rps.is_finite() && (0.0..=MAX_RPS).contains(&args.rps)) {
        return Err(DemoError::InvalidRps(args.rps));
    }
    if settings.ingest_token.is_none() {
        settings.ingest_token = Some(random_token());
        tracing::info!(
            "no ingest token configured: the demo's API and exporter share a random one (not shown)"
        );
    }
    // Both ports are bound before the database starts, so a taken port fails at once.
    let listener = server::bind(settings.listen).await?;
    let api_listener =
        TcpListener::bind(args.api_listen)
            .await
            .map_err(|error| DemoError::ApiBind {
                addr: args.api_listen,
                error,
            })?;

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
    let pool = db::lazy_pool(&url, 8)?;
    db::apply_source_schema(&pool).await?;
    db::migrate(&pool).await?;

    let exporter_addr = listener.local_addr().unwrap_or(settings.listen);
    let api_addr = api_listener.local_addr().unwrap_or(args.api_listen);

    let started = std::time::Instant::now();
    let summary = backfill::backfill(
        &pool,
        args.seed,
        args.days,
        args.followups_per_day,
        chrono::Utc::now(),
    )
    .await?;
    if summary.skipped {
        tracing::info!("the database already holds follow-ups: history not backfilled");
    } else {
        tracing::info!(
            days = args.days,
            seed = args.seed,
            followups = summary.followups,
            published = summary.published,
            deleted = summary.deleted,
            sessions = summary.sessions,
            creation_times = summary.creation_times,
            next_actions = summary.next_actions,
            elapsed = ?started.elapsed(),
            "history backfilled"
        );
    }
    let exporter_target = reachable(exporter_addr);
    let embedded = _embedded.is_some();
    for line in history_commands(&url, &settings, args.days, exporter_target, embedded) {
        tracing::info!("{line}");
    }
    if embedded && let Err(e) = db::create_source_indexes(&pool).await {
        tracing::warn!(error = %e, "creating the source-table indexes failed");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let api_task = tokio::spawn({
        let pool = pool.clone();
        let stop = stopped(stop_rx.clone());
        let settings = settings.clone();
        let relay = api::ExporterRelay::new(
            format!("http://{exporter_target}"),
            settings.ingest_token.clone().unwrap_or_else(random_token),
        );
        async move {
            if let Err(e) = api::serve_api(api_listener, pool, settings, relay, stop).await {
                tracing::error!(error = %e, "the demo's Follow-Up API stopped");
            }
        }
    });
    let traffic_task = if args.rps > 0.0 {
        let known = traffic::recent_published(&pool, 500)
            .await
            .unwrap_or_default();
        let config = traffic::TrafficConfig {
            base_url: format!("http://{}", reachable(api_addr)),
            rps: args.rps,
            seed: args.seed,
            known,
        };
        tracing::info!(
            rps = args.rps,
            "traffic simulator sending requests to the API"
        );
        Some(tokio::spawn(traffic::run_traffic(
            config,
            stopped(stop_rx.clone()),
        )))
    } else {
        tracing::info!("traffic simulator disabled (--rps 0)");
        None
    };

    tracing::info!(
        "exporter on http://{exporter_addr}/ — API on http://{api_addr} (its metrics on http://{api_addr}/metrics)"
    );
    // Only now does the exporter answer anything (health included): the
    // history is in the database.
    let exporter = Exporter::new(settings)?;
    // The signal stops the exporter and, through the watch channel, the API
    // and the traffic; if the exporter fails, dropping the sender stops them.
    let result = exporter
        .run(listener, async move {
            server::shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await;
    let _ = tokio::time::timeout(STOP_GRACE, async {
        if let Some(t) = traffic_task {
            let _ = t.await;
        }
        let _ = api_task.await;
    })
    .await;
    result?;
    Ok(())
}

/// A fresh ingest token: 32 hex digits (128 random bits).
fn random_token() -> Secret {
    let bits: u128 = rand::rng().random();
    Secret::new(format!("{bits:032x}"))
}

/// `--max-block-duration` suggested for promtool (a Go duration: no `d`
/// unit): blocks of 162 hours, so promtool re-parses the file about once a
/// week of history instead of once every 2 hours.
pub const PROMTOOL_MAX_BLOCK_DURATION: &str = "168h";

/// The lines that tell how to give a Prometheus of one's own the demo's
/// history: `okr-exporter backfill` to a file, then promtool into the data
/// directory. The password of `url`, if any, is replaced by `***`.
fn history_commands(
    url: &DatabaseUrl,
    settings: &Settings,
    days: u32,
    exporter: SocketAddr,
    embedded: bool,
) -> Vec<String> {
    let mut backfill = format!(
        "  okr-exporter backfill --database-url '{url}' --from {days}d \
         --label job=okr-exporter --label instance={exporter} --output okr-history.om"
    );
    if settings.windows != Windows::default() {
        let list: Vec<&str> = settings
            .windows
            .0
            .iter()
            .map(|w| w.label.as_str())
            .collect();
        backfill.push_str(&format!(" --windows {}", list.join(",")));
    }
    if settings.company_top_n != Settings::for_database(None).company_top_n {
        backfill.push_str(&format!(" --company-top-n {}", settings.company_top_n));
    }
    vec![
        format!(
            "to give a Prometheus of your own this history{}:",
            if embedded {
                " (while the demo runs: the embedded database goes with it)"
            } else {
                ""
            }
        ),
        backfill,
        format!(
            "  promtool tsdb create-blocks-from openmetrics \
             --max-block-duration={PROMTOOL_MAX_BLOCK_DURATION} okr-history.om <prometheus data dir>"
        ),
        "the blocks land in Prometheus's data directory (--storage.tsdb.path); restart Prometheus to load them".to_owned(),
    ]
}

/// Completes when the demo stops (the flag is set or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// An address a local client can connect to: the loopback address when the
/// server listens on all interfaces.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_fresh_hex_and_never_debug_printed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn history_commands_match_the_demo_and_hide_the_password() {
        let url = DatabaseUrl::parse_arg("postgres://okr:s3cret@db:5432/followup").unwrap();
        let mut settings = Settings::for_database(Some(url.clone()));
        let exporter: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let text = history_commands(&url, &settings, 45, exporter, false).join("\n");
        assert!(!text.contains("s3cret"), "{text}");
        for needle in [
            "okr-exporter backfill --database-url 'postgres://okr:***@db:5432/followup' --from 45d",
            "--label job=okr-exporter --label instance=127.0.0.1:9464 --output okr-history.om",
            "promtool tsdb create-blocks-from openmetrics --max-block-duration=168h okr-history.om",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert!(!text.contains("--windows"));
        settings.windows = crate::config::parse_windows("1d,7d").unwrap();
        let text = history_commands(&url, &settings, 45, exporter, false).join("\n");
        assert!(text.contains("--windows 1d,7d"), "{text}");
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(reachable(any), "127.0.0.1:8080".parse().unwrap());
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(reachable(any6), "[::1]:8080".parse().unwrap());
        let local: SocketAddr = "10.1.2.3:9".parse().unwrap();
        assert_eq!(reachable(local), local);
    }
}
