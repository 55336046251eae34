//! Ingestion during a database outage (DESIGN §7): once the exporter knows
//! the database is down — from a request that could not connect, or from
//! the collector's failed poll — it answers 503 with `Retry-After` at once
//! instead of holding each client for the pool's 3 s; it acknowledges
//! nothing it has not stored; and it recovers by itself, one probe request
//! per second, as soon as the database is back.
//!
//! Each test stops and restarts its own embedded PostgreSQL and drives the
//! exporter's router in-process.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use chrono::Utc;
use http::{Request, StatusCode};
use okr_exporter::config::{DatabaseUrl, Secret, Settings};
use okr_exporter::embedded_pg::EmbeddedPostgres;
use okr_exporter::server::Exporter;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;
use uuid::Uuid;

const TOKEN: &str = "outage-ingest-token";

/// The pool's acquire timeout: what a client waited before this fix.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A dedicated cluster with the schema and `n` follow-ups published an hour
/// ago (created 20 minutes before that).
async fn cluster(n: usize) -> (EmbeddedPostgres, PgPool, Vec<Uuid>) {
    let pg = crate::support::dedicated_cluster().await;
    let pool = crate::support::prepared_pool(&pg.url("postgres")).await;
    let ids = crate::support::published_followups(&pool, n).await;
    (pg, pool, ids)
}

fn exporter(pg: &EmbeddedPostgres) -> Exporter {
    let mut s = Settings::for_database(Some(
        DatabaseUrl::parse_arg(&pg.url("postgres")).expect("URL"),
    ));
    s.ingest_token = Some(Secret::new(TOKEN));
    Exporter::new(s).expect("exporter")
}

async fn pause(pg: EmbeddedPostgres) -> EmbeddedPostgres {
    tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.pause();
        pg
    })
    .await
    .expect("join")
}

async fn resume(pg: EmbeddedPostgres) -> EmbeddedPostgres {
    tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.resume().expect("restart PostgreSQL");
        pg
    })
    .await
    .expect("join")
}

/// One creation-time post: status, `Retry-After`, JSON body, latency.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

async fn post(app: &Router, id: Uuid) -> Answer {
    let request = Request::post("/api/okr/creation-time")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"followup_id": id, "duration_seconds": 321.5}).to_string(),
        ))
        .expect("request");
    let started = Instant::now();
    let resp = app.clone().oneshot(request).await.expect("infallible");
    let took = started.elapsed();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("JSON expected: {status} {bytes:?}"));
    Answer {
        status,
        retry_after,
        body,
        took,
    }
}

fn assert_refused(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        a.body
    );
    assert_eq!(
        a.body["error"], "database unavailable; retry later",
        "{what}: {}",
        a.body
    );
    assert_eq!(a.retry_after.as_deref(), Some("5"), "{what}");
}

async fn stored(pool: &PgPool) -> Vec<Uuid> {
    let rows: Vec<(Uuid,)> = sqlx::query_as("SELECT followup_id FROM okr_creation_time")
        .fetch_all(pool)
        .await
        .expect("rows");
    rows.into_iter().map(|(id,)| id).collect()
}

/// Posts one event every 100 ms until one is stored; how long it took.
async fn until_recorded(app: &Router, ids: &mut impl Iterator<Item = Uuid>) -> (Duration, Uuid) {
    let started = Instant::now();
    loop {
        let id = ids.next().expect("enough follow-ups");
        let a = post(app, id).await;
        if a.status == StatusCode::CREATED {
            return (started.elapsed(), id);
        }
        assert_refused(&a, "while recovering");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "ingestion did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_makes_later_requests_fail_fast_and_a_probe_recovers() {
    let (pg, pool, ids) = cluster(200).await;
    let exporter = exporter(&pg);
    let app = exporter.router();
    let mut fresh = ids.iter().copied();
    let mut acknowledged = Vec::new();

    let first = fresh.next().unwrap();
    assert_eq!(post(&app, first).await.status, StatusCode::CREATED);
    acknowledged.push(first);
    pool.close().await;

    // Clients keep posting all along, each event once, whatever happens.
    let stream_ids: Vec<Uuid> = fresh.by_ref().take(100).collect();
    let stream = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for id in stream_ids {
                let a = post(&app, id).await;
                answers.push((id, a.status));
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pg = pause(pg).await;
    // The request that finds the outage waits for the pool, as before.
    let discovering = post(&app, fresh.next().unwrap()).await;
    assert_refused(&discovering, "discovering request");
    assert!(
        discovering.took < ACQUIRE_TIMEOUT + Duration::from_secs(2),
        "{:?}",
        discovering.took
    );
    assert!(exporter.state().database.known_down());
    // Now the outage is known: a burst is refused at once (a probe may be
    // let through once a second; it alone waits).
    let burst: Vec<Answer> = futures_util::future::join_all(fresh.by_ref().take(30).map(|id| {
        let app = app.clone();
        async move { post(&app, id).await }
    }))
    .await;
    let mut times: Vec<Duration> = burst.iter().map(|a| a.took).collect();
    times.sort();
    for a in &burst {
        assert_refused(a, "burst during the outage");
    }
    let fast = &times[..times.len() - 1];
    let slowest_fast = *fast.last().unwrap();
    assert!(
        slowest_fast < Duration::from_millis(500),
        "refusals took up to {slowest_fast:?}: {times:?}"
    );
    // The report reads the same database: refused at once too, unless it
    // is the one probe of the second (then it waits like the discoverer).
    let mut fast_reports = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let resp = app
            .clone()
            .oneshot(
                Request::get("/api/okr/report")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let took = started.elapsed();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        if took < Duration::from_millis(500) {
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("5")
            );
            fast_reports += 1;
        }
    }
    assert!(
        fast_reports >= 2,
        "the report waited for the pool during a known outage"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg = resume(pg).await;
    let (recovered_after, id) = until_recorded(&app, &mut fresh).await;
    acknowledged.push(id);
    assert!(!exporter.state().database.known_down());
    assert!(
        recovered_after < Duration::from_secs(5),
        "{recovered_after:?}"
    );
    for id in fresh.by_ref().take(5) {
        assert_eq!(post(&app, id).await.status, StatusCode::CREATED);
        acknowledged.push(id);
    }

    let answers = stream.await.expect("client");
    for (id, status) in &answers {
        assert!(
            status.is_success() || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{id}: {status}"
        );
        if status.is_success() {
            acknowledged.push(*id);
        }
    }
    assert!(
        answers
            .iter()
            .any(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "the stream never met the outage"
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url("postgres"))
        .await
        .expect("reconnect");
    let rows = stored(&pool).await;
    let lost: Vec<&Uuid> = acknowledged
        .iter()
        .filter(|id| !rows.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let attempted: Vec<Uuid> = ids.clone();
    assert!(rows.iter().all(|id| attempted.contains(id)));
    eprintln!(
        "outage: discovering request {:?}, burst refusals {:?}..{slowest_fast:?}, \
         recovered {recovered_after:?} after restart; {} acknowledged, {} stored",
        discovering.took,
        times[0],
        acknowledged.len(),
        rows.len()
    );
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_poll_is_enough_to_refuse_at_once() {
    let (pg, pool, ids) = cluster(20).await;
    pool.close().await;
    let exporter = exporter(&pg);
    let app = exporter.router();
    let scheduler = exporter.scheduler().clone();
    let mut fresh = ids.iter().copied();

    assert!(
        scheduler
            .run_all_once(Utc::now())
            .await
            .iter()
            .all(|(_, r)| r.is_ok())
    );
    let pg = pause(pg).await;
    let failed = scheduler.run_all_once(Utc::now()).await;
    assert!(failed.iter().all(|(_, r)| r.is_err()), "{failed:?}");
    let metrics = get_metrics(&app).await;
    assert!(metrics.contains("\nokr_exporter_up 0\n"), "{metrics}");

    // No ingestion request has failed yet: the poll alone tells.
    assert!(exporter.state().database.known_down());
    for id in fresh.by_ref().take(5) {
        let a = post(&app, id).await;
        assert_refused(&a, "after a failed poll");
        assert!(a.took < Duration::from_millis(500), "{:?}", a.took);
    }

    // Back before the collector polls again: a probe finds it.
    let pg = resume(pg).await;
    let (recovered_after, _) = until_recorded(&app, &mut fresh).await;
    assert!(
        recovered_after < Duration::from_secs(5),
        "{recovered_after:?}"
    );
    assert!(
        get_metrics(&app).await.contains("\nokr_exporter_up 0\n"),
        "the collector has not polled since: the probe did it"
    );
    for id in fresh.by_ref().take(3) {
        assert_eq!(post(&app, id).await.status, StatusCode::CREATED);
    }
    // The collector's next success changes nothing for ingestion.
    assert!(
        scheduler
            .run_all_once(Utc::now())
            .await
            .iter()
            .all(|(_, r)| r.is_ok())
    );
    assert_eq!(
        post(&app, fresh.next().unwrap()).await.status,
        StatusCode::CREATED
    );
    drop(pg);
}

async fn get_metrics(app: &Router) -> String {
    let resp = app
        .clone()
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}
