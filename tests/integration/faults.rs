//! The exporter process under faults (DESIGN §7, issue "Reliability and
//! security"): a database outage, connections killed by the server, a
//! statement blocked by a lock, SIGTERM during ingestion — and afterwards no
//! secret in its logs, metrics, report or error bodies.
//!
//! Each test runs the real `okr-exporter serve` binary against its own
//! embedded PostgreSQL, which it stops and starts.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use okr_exporter::embedded_pg::EmbeddedPostgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::support::{eventually, exporter_bin};

const PASSWORD: &str = "pw-Zq8sWd31kLx";
const INGEST_TOKEN: &str = "ingest-Hq2vN7ePw4R";
const METRICS_TOKEN: &str = "metrics-Jc5tY9uBn0M";

/// The exporter binary, killed when dropped.
struct ExporterProcess {
    child: Child,
    base: String,
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ExporterProcess {
    fn terminate(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Waits for the process to exit; how long it took.
    fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A dedicated cluster with the source schema, the migrations, a password
/// role the exporter logs in as, and `n` follow-ups published an hour ago.
async fn database(n: usize) -> (EmbeddedPostgres, PgPool, String, Vec<Uuid>) {
    let pg = crate::support::dedicated_cluster().await;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url("postgres"))
        .await
        .expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE okr LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
    )))
    .execute(&admin)
    .await
    .expect("role");
    sqlx::raw_sql("CREATE DATABASE followup OWNER okr")
        .execute(&admin)
        .await
        .expect("database");
    admin.close().await;
    let pool = crate::support::prepared_pool(&pg.url("followup")).await;
    let ids = crate::support::published_followups(&pool, n).await;
    let published = Utc::now() - chrono::Duration::hours(1);
    sqlx::query(
        "INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
         SELECT id, 'v1', 'mobile', $2 FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids)
    .bind(published + chrono::Duration::minutes(5))
    .execute(&pool)
    .await
    .expect("sessions");
    let url = format!("postgres://okr:{PASSWORD}@127.0.0.1:{}/followup", pg.port());
    (pg, pool, url, ids)
}

/// Starts `okr-exporter serve` with a 1 s interval and both tokens; its
/// standard error goes to `log`.
async fn start_exporter(url: &str, log: &Path, extra: &[&str]) -> ExporterProcess {
    let port = okr_exporter::embedded_pg::free_port().expect("port");
    let out = File::create(log).expect("log");
    let child = Command::new(exporter_bin())
        .args(["serve", "--database-url", url])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--collect-interval", "1s", "--max-staleness", "3s"])
        .args(["--query-timeout", "1s", "--ingest-token", INGEST_TOKEN])
        .args(["--metrics-token", METRICS_TOKEN, "--log", "debug"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start the exporter");
    let process = ExporterProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let up = eventually(Duration::from_secs(30), || async {
        metrics(&client, &process.base)
            .await
            .is_some_and(|m| m.contains("okr_exporter_up 1") && m.contains("okr_drafts{"))
    })
    .await;
    assert!(up, "the exporter did not collect: {}", read(log));
    process
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn metrics(client: &reqwest::Client, base: &str) -> Option<String> {
    let resp = client
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// The value of one sample line of `text`, e.g. `okr_exporter_up`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Posts a creation time; (status, body).
async fn ingest(client: &reqwest::Client, base: &str, id: Uuid, token: &str) -> (u16, String) {
    match client
        .post(format!("{base}/api/okr/creation-time"))
        .bearer_auth(token)
        .json(&serde_json::json!({"followup_id": id, "duration_seconds": 321.5}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

async fn stored(pool: &PgPool, ids: &[Uuid]) -> usize {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM okr_creation_time WHERE followup_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .expect("count");
    usize::try_from(n).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_lock_and_killed_connections_never_take_metrics_down_nor_leak_secrets() {
    let (mut pg, _, url, ids) = database(40).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("exporter.log");
    let exporter = start_exporter(&url, &log, &[]).await;
    let base = exporter.base.clone();
    let client = reqwest::Client::new();
    // Everything a client saw, searched for secrets at the end.
    let mut seen = String::new();
    let mut acknowledged = Vec::new();

    let (status, body) = ingest(&client, &base, ids[0], INGEST_TOKEN).await;
    assert_eq!(status, 201, "{body}");
    acknowledged.push(ids[0]);
    for token in ["wrong", METRICS_TOKEN] {
        let (status, body) = ingest(&client, &base, ids[1], token).await;
        assert_eq!(status, 401, "{body}");
        seen.push_str(&body);
    }
    let anonymous = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status().as_u16(), 401);
    seen.push_str(&anonymous.text().await.unwrap_or_default());
    let before = metrics(&client, &base).await.expect("metrics");
    let errors_before = sample(
        &before,
        "okr_exporter_collection_errors_total{collector=\"drafts\"}",
    )
    .unwrap_or(0.0);

    // 1. Outage: the database stops for several intervals.
    tokio::task::block_in_place(|| pg.pause());
    let outage = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut down_after = None;
    let mut dropped_after = None;
    let mut last = String::new();
    while outage.elapsed() < Duration::from_secs(7) {
        let t = Instant::now();
        let m = metrics(&client, &base).await;
        slowest = slowest.max(t.elapsed());
        let m = m.unwrap_or_else(|| panic!("/metrics failed during the outage: {}", read(&log)));
        if down_after.is_none() && sample(&m, "okr_exporter_up") == Some(0.0) {
            down_after = Some(outage.elapsed());
        }
        if dropped_after.is_none() && !m.contains("okr_drafts{") {
            dropped_after = Some(outage.elapsed());
        }
        last = m;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "/metrics took {slowest:?}"
    );
    let down_after = down_after.expect("okr_exporter_up never read 0");
    // The next poll (≤ 1 s away) fails once it cannot get a connection
    // within the query timeout (1 s); the rest is slack for a busy CI.
    assert!(down_after < Duration::from_millis(3_500), "{down_after:?}");
    let dropped_after = dropped_after.expect("stale OKR values were still served");
    assert!(dropped_after < Duration::from_secs(6), "{dropped_after:?}");
    assert!(
        sample(
            &last,
            "okr_exporter_collection_errors_total{collector=\"drafts\"}"
        )
        .unwrap_or(0.0)
            > errors_before,
        "errors not counted"
    );
    assert!(last.contains("okr_target_engagement_ratio"), "{last}");
    seen.push_str(&last);
    // Ingestion refuses with a JSON error; nothing is acknowledged.
    for id in &ids[2..6] {
        let (status, body) = ingest(&client, &base, *id, INGEST_TOKEN).await;
        assert_eq!(status, 503, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(json["error"].is_string(), "{body}");
        seen.push_str(&body);
    }
    let report = client
        .get(format!("{base}/api/okr/report"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .expect("report");
    seen.push_str(&report.text().await.unwrap_or_default());

    // Recovery within two intervals of the database coming back, no restart.
    tokio::task::block_in_place(|| pg.resume()).expect("restart PostgreSQL");
    let back = Instant::now();
    let recovered = eventually(Duration::from_secs(10), || async {
        metrics(&client, &base).await.is_some_and(|m| {
            sample(&m, "okr_exporter_up") == Some(1.0) && m.contains("okr_drafts{")
        })
    })
    .await;
    assert!(recovered, "no recovery: {}", read(&log));
    // The collector retries with a backoff capped at the interval (1 s),
    // plus jitter: two intervals and the reconnect.
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "{:?}",
        back.elapsed()
    );
    eprintln!(
        "outage: slowest /metrics {slowest:?}, up 0 after {down_after:?}, \
         stale values dropped after {dropped_after:?}, recovered {:?} after restart",
        back.elapsed()
    );
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url("followup"))
        .await
        .expect("reconnect");
    let ok = eventually(Duration::from_secs(5), || async {
        ingest(&client, &base, ids[6], INGEST_TOKEN).await.0 == 201
    })
    .await;
    assert!(ok, "ingestion did not recover");
    acknowledged.push(ids[6]);

    // 2. The server kills every connection of the exporter.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'okr-exporter' AND pid <> pg_backend_pid()",
    )
    .execute(&pool)
    .await
    .expect("terminate");
    let (status, body) = ingest(&client, &base, ids[7], INGEST_TOKEN).await;
    // The first use of a killed pooled connection may fail; never a 5xx
    // other than 503, and a retry succeeds.
    assert!(status == 201 || status == 503, "{status} {body}");
    if status == 201 {
        acknowledged.push(ids[7]);
    } else {
        let (status, body) = ingest(&client, &base, ids[7], INGEST_TOKEN).await;
        assert!(status == 201 || status == 503, "{status} {body}");
        if status == 201 {
            acknowledged.push(ids[7]);
        }
    }
    let fine = eventually(Duration::from_secs(5), || async {
        metrics(&client, &base)
            .await
            .is_some_and(|m| sample(&m, "okr_exporter_up") == Some(1.0) && m.contains("okr_views{"))
    })
    .await;
    assert!(fine, "not recovered after pg_terminate_backend");

    // 3. A statement blocked by another session's lock: only that collector
    // times out, the others keep succeeding.
    let mut locker = PgConnection::connect(&pg.url("followup"))
        .await
        .expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE okr_next_actions IN ACCESS EXCLUSIVE MODE;")
        .execute(&mut locker)
        .await
        .expect("lock");
    let m0 = metrics(&client, &base).await.expect("metrics");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m1 = metrics(&client, &base).await.expect("metrics");
    let errors = |m: &str, c: &str| {
        sample(
            m,
            &format!("okr_exporter_collection_errors_total{{collector=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let success = |m: &str, c: &str| {
        sample(
            m,
            &format!("okr_exporter_last_success_timestamp_seconds{{collector=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        errors(&m1, "next_action") > errors(&m0, "next_action"),
        "no timeout counted"
    );
    for other in [
        "drafts",
        "engagement",
        "mobile",
        "creation_time",
        "adoption",
    ] {
        assert!(
            success(&m1, other) > success(&m0, other),
            "{other} stalled behind the lock"
        );
        assert_eq!(errors(&m1, other), errors(&m0, other), "{other} failed");
    }
    assert_eq!(sample(&m1, "okr_exporter_up"), Some(1.0));
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("unlock");

    // Nothing acknowledged was lost.
    assert_eq!(stored(&pool, &acknowledged).await, acknowledged.len());

    // 4. No secret anywhere a person or a scraper can read.
    seen.push_str(&metrics(&client, &base).await.unwrap_or_default());
    exporter.terminate();
    let mut exporter = exporter;
    assert!(
        exporter.wait_exit(Duration::from_secs(15)).is_some(),
        "no exit"
    );
    let logs = read(&log);
    assert!(
        logs.contains("collection failed"),
        "the outage was not logged"
    );
    for secret in [PASSWORD, INGEST_TOKEN, METRICS_TOKEN] {
        assert!(!logs.contains(secret), "secret in the logs");
        assert!(!seen.contains(secret), "secret in a response");
    }
    drop(pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_ingestion_loses_nothing_it_answered() {
    let (_pg, pool, url, ids) = database(4000).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("exporter.log");
    let mut exporter = start_exporter(&url, &log, &["--request-log"]).await;
    let base = exporter.base.clone();
    let client = reqwest::Client::new();
    // Eight clients post creation times one after the other; SIGTERM comes
    // while they are at it.
    let mut tasks = Vec::new();
    for chunk in ids.chunks(500) {
        let (client, base, chunk) = (client.clone(), base.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for id in chunk {
                let (status, _) = ingest(&client, &base, id, INGEST_TOKEN).await;
                if (200..300).contains(&status) {
                    ok.push(id);
                }
                if status == 0 {
                    break;
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    exporter.terminate();
    let exited = tokio::task::block_in_place(|| exporter.wait_exit(Duration::from_secs(15)));
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.expect("client"));
    }
    let exited = exited.unwrap_or_else(|| panic!("did not exit within 15 s: {}", read(&log)));
    assert!(!answered.is_empty(), "SIGTERM came before any request");
    assert!(
        answered.len() < ids.len(),
        "every request finished before SIGTERM: the test proves nothing"
    );
    // Every acknowledged event is stored, and its request logged.
    assert_eq!(stored(&pool, &answered).await, answered.len());
    let (logged,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM performance_metrics
         WHERE endpoint = '/api/okr/creation-time' AND status_code BETWEEN 200 AND 299",
    )
    .fetch_one(&pool)
    .await
    .expect("request log");
    assert!(
        usize::try_from(logged).unwrap_or(0) >= answered.len(),
        "{logged} request-log rows for {} answered requests",
        answered.len()
    );
    eprintln!(
        "exited {exited:?} after SIGTERM; {} answered",
        answered.len()
    );
}
