//! Load run of the whole exporter on 127.0.0.1 (RELIABILITY.md).
//!
//! ```sh
//! cargo run --release --example load -- --seconds 60 --clients 32
//! ```
//!
//! Starts an embedded PostgreSQL (or uses `DATABASE_URL`), the exporter with
//! an ingest token and the request log, and the demo's reference Follow-Up
//! API (instrumented with the middleware, relaying creation times and next
//! actions to the exporter), then runs `--clients` closed-loop clients for
//! `--seconds`: each repeats a mix of `/metrics` scrapes, direct ingestion
//! posts and the API's publish flow (create, publish with a creation time,
//! a prospect's view, analytics, next action). Afterwards it counts the
//! rows that every 2xx answer promised against the database, and prints
//! p50/p99 per endpoint, errors, and the process's peak RSS. Loopback only,
//! bounded in time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use okr_exporter::config::{DatabaseUrl, Secret, Settings};
use okr_exporter::demo::api::{ExporterRelay, serve_api};
use okr_exporter::embedded_pg::EmbeddedPostgres;
use okr_exporter::server::Exporter;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use uuid::Uuid;

const TOKEN: &str = "load-ingest-token";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// Latencies and outcomes per endpoint, and the events each 2xx promised.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: BTreeMap<String, u64>,
    /// Follow-ups whose creation time a 2xx answer acknowledged.
    creation_acked: Vec<Uuid>,
    /// Follow-ups whose next action a 2xx answer acknowledged.
    action_acked: Vec<Uuid>,
}

impl Tally {
    fn record(&mut self, endpoint: &'static str, took: Duration, status: u16, ok: &[u16]) {
        self.latencies.entry(endpoint).or_default().push(took);
        if !ok.contains(&status) {
            *self
                .errors
                .entry(format!("{endpoint} -> {status}"))
                .or_default() += 1;
        }
    }
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Duration, Option<serde_json::Value>) {
    let t = Instant::now();
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<serde_json::Value>().await.ok();
            (status, t.elapsed(), body)
        }
        Err(_) => (0, t.elapsed(), None),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = arg("--seconds", 60);
    let clients = arg("--clients", 32);
    let mut embedded = None;
    let url = match std::env::var("DATABASE_URL") {
        Ok(u) => u,
        Err(_) => {
            let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            let url = pg.url("postgres");
            embedded = Some(pg);
            url
        }
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let db = format!("okr_load_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => anyhow::bail!("unexpected URL"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await?;
    okr_exporter::db::apply_source_schema(&pool).await?;
    okr_exporter::db::migrate(&pool).await?;
    // Published follow-ups for the direct ingestion posts, one event each.
    let published = Utc::now() - chrono::Duration::hours(2);
    let targets: Vec<Uuid> = (0..200_000).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at)
         SELECT id, 'creator-' || (row_number() OVER () % 50), 'published', $2, $3
         FROM unnest($1::uuid[]) AS id",
    )
    .bind(&targets)
    .bind(published - chrono::Duration::minutes(10))
    .bind(published)
    .execute(&pool)
    .await?;

    let mut settings = Settings::for_database(Some(
        DatabaseUrl::parse_arg(&db_url).map_err(anyhow::Error::msg)?,
    ));
    settings.ingest_token = Some(Secret::new(TOKEN));
    settings.request_log = true;
    settings.collect_interval = Duration::from_secs(5);
    let exporter = Exporter::new(settings.clone())?;
    let exporter_listener = TcpListener::bind("127.0.0.1:0").await?;
    let exporter_base = format!("http://{}", exporter_listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let exporter_task = tokio::spawn(exporter.run(exporter_listener, stopped(stop_rx.clone())));
    let api_listener = TcpListener::bind("127.0.0.1:0").await?;
    let api_base = format!("http://{}", api_listener.local_addr()?);
    let relay = ExporterRelay::new(exporter_base.clone(), Secret::new(TOKEN));
    let api_task = tokio::spawn(serve_api(
        api_listener,
        pool.clone(),
        Settings {
            request_log: false,
            ..settings.clone()
        },
        relay,
        stopped(stop_rx.clone()),
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()?;
    // Wait until the exporter serves.
    let ready = Instant::now();
    while client
        .get(format!("{exporter_base}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        if ready.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the exporter did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("# load: {clients} clients for {seconds} s on 127.0.0.1");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_target = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let targets = Arc::new(targets);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for worker in 0..clients {
        let (client, tally, targets, next_target) = (
            client.clone(),
            Arc::clone(&tally),
            Arc::clone(&targets),
            Arc::clone(&next_target),
        );
        let (exporter_base, api_base) = (exporter_base.clone(), api_base.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
            let mut local = Tally::default();
            while Instant::now() < deadline {
                match rng.random_range(0..10) {
                    0 => {
                        let (s, t, _) =
                            call(client.get(format!("{exporter_base}/metrics"))).await;
                        local.record("GET /metrics", t, s, &[200]);
                    }
                    1..=4 => {
                        let i = next_target.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(id) = targets.get(i).copied() else {
                            continue;
                        };
                        let (s, t, _) = call(
                            client
                                .post(format!("{exporter_base}/api/okr/creation-time"))
                                .bearer_auth(TOKEN)
                                .json(&serde_json::json!({
                                    "followup_id": id,
                                    "duration_seconds": rng.random_range(30.0..900.0),
                                })),
                        )
                        .await;
                        local.record("POST /api/okr/creation-time", t, s, &[201]);
                        if s == 201 {
                            local.creation_acked.push(id);
                        }
                    }
                    _ => {
                        // The product's publish flow through the demo API.
                        let (s, t, body) = call(
                            client
                                .post(format!("{api_base}/api/followups"))
                                .json(&serde_json::json!({"creator_id": format!("c{worker}")})),
                        )
                        .await;
                        local.record("API POST /api/followups", t, s, &[201]);
                        let Some(id) = body
                            .as_ref()
                            .and_then(|b| b["id"].as_str())
                            .and_then(|s| s.parse::<Uuid>().ok())
                        else {
                            continue;
                        };
                        let (s, t, _) = call(
                            client
                                .patch(format!("{api_base}/api/followups/{id}"))
                                .json(&serde_json::json!({
                                    "publish": true,
                                    "creation_seconds": rng.random_range(30.0..900.0),
                                })),
                        )
                        .await;
                        local.record("API PATCH /api/followups/{id}", t, s, &[200]);
                        if s == 200 {
                            local.creation_acked.push(id);
                        }
                        let (s, t, _) = call(
                            client.post(format!("{api_base}/f/{id}/view")).json(
                                &serde_json::json!({"visitor_id": format!("v{}", rng.random_range(0..1000)), "device_type": "mobile"}),
                            ),
                        )
                        .await;
                        local.record("API POST /f/{id}/view", t, s, &[204]);
                        let (s, t, _) =
                            call(client.get(format!("{api_base}/api/followups/{id}/analytics")))
                                .await;
                        local.record("API GET /api/followups/{id}/analytics", t, s, &[200]);
                        let (s, t, _) =
                            call(client.post(format!("{api_base}/api/followups/{id}/next-action")))
                                .await;
                        local.record("API POST /api/followups/{id}/next-action", t, s, &[201]);
                        if s == 201 {
                            local.action_acked.push(id);
                        }
                    }
                }
            }
            let mut all = tally.lock().await;
            for (k, v) in local.latencies {
                all.latencies.entry(k).or_default().extend(v);
            }
            for (k, v) in local.errors {
                *all.errors.entry(k).or_default() += v;
            }
            all.creation_acked.extend(local.creation_acked);
            all.action_acked.extend(local.action_acked);
        }));
    }
    for w in workers {
        w.await?;
    }
    let _ = stop_tx.send(true);
    let _ = exporter_task.await;
    let _ = api_task.await;
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("workers still running"))?
        .into_inner();

    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM okr_creation_time WHERE followup_id = ANY($1)")
            .bind(&tally.creation_acked)
            .fetch_one(&pool)
            .await?;
    let (actions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM okr_next_actions WHERE followup_id = ANY($1)")
            .bind(&tally.action_acked)
            .fetch_one(&pool)
            .await?;
    let (logged,): (i64,) = sqlx::query_as("SELECT count(*) FROM performance_metrics")
        .fetch_one(&pool)
        .await?;
    let total: usize = tally.latencies.values().map(Vec::len).sum();
    println!(
        "requests: {total} in {seconds} s ({:.0}/s); errors: {}",
        total as f64 / seconds as f64,
        tally.errors.values().sum::<u64>()
    );
    for (what, n) in &tally.errors {
        println!("  error {what}: {n}");
    }
    println!("| endpoint | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (endpoint, mut lat) in tally.latencies {
        lat.sort();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {endpoint} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            lat.len(),
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    println!(
        "creation times acknowledged {} / stored {stored}; next actions acknowledged {} / stored {actions}; lost {}",
        tally.creation_acked.len(),
        tally.action_acked.len(),
        (tally.creation_acked.len() + tally.action_acked.len()) as i64 - stored - actions
    );
    println!("request-log rows of the exporter: {logged}");
    println!(
        "peak RSS of this process (exporter, API and load clients together): {} MiB",
        peak_rss_mib()
    );
    pool.close().await;
    drop(embedded);
    Ok(())
}
