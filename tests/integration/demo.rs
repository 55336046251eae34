//! The demo: deterministic, plausible backfill and the reference API, which
//! relays creation times and next actions to the exporter's ingestion
//! endpoints with the ingest token.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use okr_exporter::config::{Secret, Settings};
use okr_exporter::demo::{api, backfill};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{RunningExporter, TestDb, prepared_db, start_exporter};

/// Row counts and sums that identify a backfilled history.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    followups: i64,
    published: i64,
    deleted: i64,
    sessions: i64,
    creation_times: i64,
    next_actions: i64,
    duration_seconds: f64,
    days_to_action: f64,
    visitors: i64,
}

async fn fingerprint(pool: &PgPool) -> Fingerprint {
    let (followups, published, deleted): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(published_at), count(deleted_at) FROM followups")
            .fetch_one(pool)
            .await
            .unwrap();
    let (sessions, visitors): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT visitor_id) FROM analytics_sessions")
            .fetch_one(pool)
            .await
            .unwrap();
    let (creation_times, duration_seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(duration_seconds), 0) FROM okr_creation_time",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let (next_actions, days_to_action): (i64, f64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(days_to_action), 0) FROM okr_next_actions")
            .fetch_one(pool)
            .await
            .unwrap();
    Fingerprint {
        followups,
        published,
        deleted,
        sessions,
        creation_times,
        next_actions,
        duration_seconds,
        days_to_action,
        visitors,
    }
}

async fn scalar(pool: &PgPool, sql: &'static str, now: DateTime<Utc>) -> f64 {
    let (v,): (f64,) = sqlx::query_as(sql).bind(now).fetch_one(pool).await.unwrap();
    v
}

#[tokio::test]
async fn backfill_is_deterministic_and_plausible() {
    let now = Utc.with_ymd_and_hms(2026, 3, 4, 10, 20, 30).unwrap();
    let a = prepared_db().await;
    let b = prepared_db().await;

    let started = Instant::now();
    let summary = backfill::backfill(&a.pool, 42, 45, 60, now).await.unwrap();
    let took = started.elapsed();
    backfill::backfill(&b.pool, 42, 45, 60, now).await.unwrap();
    // 45 days × 60 a day; generous for unoptimised test builds.
    assert!(took < Duration::from_secs(10), "backfill took {took:?}");
    assert!(!summary.skipped);

    let fa = fingerprint(&a.pool).await;
    assert_eq!(fa, fingerprint(&b.pool).await);
    assert_eq!(fa.followups as usize, summary.followups);
    assert_eq!(fa.sessions as usize, summary.sessions);
    assert!((2_200..3_200).contains(&fa.followups), "{fa:?}");
    assert!(fa.sessions > 500 && fa.next_actions > 500, "{fa:?}");

    // A second run on a filled database writes nothing.
    let again = backfill::backfill(&a.pool, 7, 45, 60, now).await.unwrap();
    assert!(again.skipped);
    assert_eq!(fingerprint(&a.pool).await, fa);

    let pool = &a.pool;
    let completion = scalar(
        pool,
        "SELECT count(published_at)::float8 / count(*) FROM followups WHERE created_at <= $1",
        now,
    )
    .await;
    assert!(
        (0.7..0.95).contains(&completion),
        "draft completion {completion}"
    );
    let engagement = scalar(
        pool,
        "SELECT avg(v)::float8 FROM (
             SELECT count(DISTINCT s.visitor_id) AS v
             FROM followups f LEFT JOIN analytics_sessions s ON s.followup_id = f.id
             WHERE f.published_at <= $1 GROUP BY f.id) x",
        now,
    )
    .await;
    assert!((0.2..0.8).contains(&engagement), "engagement {engagement}");
    let mobile = scalar(
        pool,
        "SELECT avg((device_type = 'mobile')::int)::float8 FROM analytics_sessions
          WHERE started_at <= $1",
        now,
    )
    .await;
    assert!((0.3..0.55).contains(&mobile), "mobile share {mobile}");

    // Nothing happens after now, and every event follows what caused it.
    let violations = scalar(
        pool,
        "SELECT (
            (SELECT count(*) FROM followups
              WHERE created_at > $1 OR published_at > $1 OR deleted_at > $1
                 OR published_at <= created_at OR deleted_at <= created_at
                 OR (status = 'published') <> (published_at IS NOT NULL AND deleted_at IS NULL)
                 OR (status = 'deleted') <> (deleted_at IS NOT NULL))
          + (SELECT count(*) FROM analytics_sessions s JOIN followups f ON f.id = s.followup_id
              WHERE s.started_at > $1 OR f.published_at IS NULL OR s.started_at < f.published_at)
          + (SELECT count(*) FROM okr_creation_time c JOIN followups f ON f.id = c.followup_id
              WHERE c.published_at <> f.published_at
                 OR abs(c.duration_seconds
                        - extract(epoch FROM f.published_at - f.created_at)::float8) > 1e-6)
          + (SELECT count(*) FROM okr_next_actions n
              WHERE n.action_at > $1
                 OR n.action_at < n.published_at + interval '1 day'
                 OR n.action_at > n.published_at + interval '10 days')
        )::float8",
        now,
    )
    .await;
    assert_eq!(violations, 0.0);
    let p80 = scalar(
        pool,
        "SELECT percentile_cont(0.8) WITHIN GROUP (ORDER BY duration_seconds)
           FROM okr_creation_time WHERE published_at <= $1",
        now,
    )
    .await;
    assert!((420.0..720.0).contains(&p80), "creation P80 {p80}");
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

const INGEST_TOKEN: &str = "test-ingest-token";

/// An exporter on `db` whose ingestion takes [`INGEST_TOKEN`].
async fn exporter_on(db: &TestDb) -> RunningExporter {
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.ingest_token = Some(Secret::new(INGEST_TOKEN));
    start_exporter(settings).await
}

/// A running reference API relaying to `exporter_base` with `token`.
struct RunningApi {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningApi {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn start_api(
    settings: Settings,
    db: &TestDb,
    exporter_base: &str,
    token: &str,
) -> RunningApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = api::ExporterRelay::new(exporter_base, Secret::new(token));
    let task = tokio::spawn(api::serve_api(
        listener,
        db.pool.clone(),
        settings,
        relay,
        async move {
            let _ = stopped.await;
        },
    ));
    RunningApi { base, stop, task }
}

/// Creates a draft through the API and returns its id.
async fn create_draft(http: &reqwest::Client, base: &str) -> Uuid {
    let (status, body) = json_of(
        http.post(format!("{base}/api/followups"))
            .json(&json!({"creator_id": "seller-02"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn count(pool: &PgPool, table: &str, id: Uuid) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE followup_id = $1");
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn reference_api_writes_the_source_tables_and_is_instrumented() {
    let db = prepared_db().await;
    let exporter = exporter_on(&db).await;
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.request_log = true;
    let running = start_api(settings, &db, &exporter.base, INGEST_TOKEN).await;
    let base = running.base.clone();
    let http = reqwest::Client::new();

    let (status, body) = json_of(
        http.post(format!("{base}/api/followups"))
            .json(
                &json!({"creator_id": "seller-01", "company": "Acme Corp", "meeting_type": "demo"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    let (st, published_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, published_at FROM followups WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((st.as_str(), published_at), ("draft", None));

    let (status, body) = json_of(
        http.patch(format!("{base}/api/followups/{id}"))
            .json(&json!({"publish": true, "creation_seconds": 321.5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (st, published_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, published_at FROM followups WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(st, "published");
    assert!(published_at.is_some());
    // Relayed to the exporter, which stored it with the follow-up's own
    // publish time.
    let (secs, stored_published_at, started_at): (f64, DateTime<Utc>, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT duration_seconds, published_at, started_at FROM okr_creation_time
              WHERE followup_id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(secs, 321.5);
    assert_eq!(Some(stored_published_at), published_at);
    assert_eq!(
        started_at.map(|s| (stored_published_at - s).num_milliseconds()),
        Some(321_500)
    );
    // A retried publish relays the same event again: stored once.
    let (status, body) = json_of(
        http.patch(format!("{base}/api/followups/{id}"))
            .json(&json!({"publish": true, "creation_seconds": 321.5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count(&db.pool, "okr_creation_time", id).await, 1);
    // A different creation time for the same follow-up: the exporter's 409.
    let (status, body) = json_of(
        http.patch(format!("{base}/api/followups/{id}"))
            .json(&json!({"creation_seconds": 5.0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["field"], "creation_seconds", "{body}");

    // A prospect opens it; analytics and the next action follow.
    let view = http
        .post(format!("{base}/f/{id}/view"))
        .json(&json!({"visitor_id": "v-1", "device_type": "mobile"}))
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), StatusCode::NO_CONTENT);
    let (status, body) = json_of(
        http.get(format!("{base}/api/followups/{id}/analytics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["sessions"].as_i64(), body["unique_visitors"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["devices"]["mobile"].as_i64(), Some(1));
    let (status, first) = json_of(
        http.post(format!("{base}/api/followups/{id}/next-action"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["recorded"], true);
    assert_eq!(first["followup_id"], id.to_string());
    let (status, again) = json_of(
        http.post(format!("{base}/api/followups/{id}/next-action"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["recorded"], false);
    // The exporter kept the first action, as the API reported it.
    let (action_at, days): (DateTime<Utc>, f64) = sqlx::query_as(
        "SELECT action_at, days_to_action FROM okr_next_actions WHERE followup_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(count(&db.pool, "okr_next_actions", id).await, 1);
    let reported: DateTime<Utc> = first["action_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(action_at, reported);
    assert!((days - first["days_to_action"].as_f64().unwrap()).abs() < 1e-9);
    assert!(action_at >= published_at.unwrap());

    // Unknown ids and bad input get JSON 4xx answers and change nothing.
    let unknown = Uuid::new_v4();
    for resp in [
        http.get(format!("{base}/api/followups/{unknown}"))
            .send()
            .await
            .unwrap(),
        http.patch(format!("{base}/api/followups/{unknown}"))
            .json(&json!({"publish": true}))
            .send()
            .await
            .unwrap(),
        http.get(format!("{base}/api/followups/not-a-uuid/analytics"))
            .send()
            .await
            .unwrap(),
    ] {
        let (status, body) = json_of(resp).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = json_of(
        http.post(format!("{base}/api/followups"))
            .header("content-type", "application/json")
            .body("{\"creator_id\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].is_string());
    let (status, body) = json_of(
        http.post(format!("{base}/api/followups"))
            .json(&json!({"creator_id": " "}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "creator_id");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM followups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains(r#"http_route="/api/followups/{id}""#)
                && l.contains(r#"http_request_method="PATCH""#)
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"http_request_method="POST",http_route="/api/followups",http_response_status_code="201""#
    ));

    running.stop().await;
    exporter.stop().await;
    // --request-log: the API's requests are in performance_metrics (flushed
    // on shutdown), by route template.
    let (logged, templated): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE endpoint = '/api/followups/{id}') FROM performance_metrics",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(logged >= 5, "{logged} request-log rows");
    assert!(templated >= 1, "{templated} rows for /api/followups/{{id}}");
}

/// Relay failures are answers, never silent losses: a wrong token is the
/// API's 502, an exporter that is gone its 503; the publish itself stands,
/// nothing reaches the exporter's tables, and a retry once the exporter is
/// back records the event.
#[tokio::test]
async fn reference_api_reports_relay_failures() {
    let db = prepared_db().await;
    let exporter = exporter_on(&db).await;
    let http = reqwest::Client::new();
    let settings = Settings::for_database(Some(db.database_url()));

    let wrong = start_api(settings.clone(), &db, &exporter.base, "not-the-token").await;
    let id = create_draft(&http, &wrong.base).await;
    let (status, body) = json_of(
        http.patch(format!("{}/api/followups/{id}", wrong.base))
            .json(&json!({"publish": true, "creation_seconds": 42.0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("published") && error.contains("401"),
        "{body}"
    );
    assert!(!error.contains("not-the-token") && !error.contains(INGEST_TOKEN));
    let (st,): (String,) = sqlx::query_as("SELECT status FROM followups WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(st, "published", "the publish stands");
    assert_eq!(count(&db.pool, "okr_creation_time", id).await, 0);
    let (status, body) = json_of(
        http.post(format!("{}/api/followups/{id}/next-action", wrong.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(count(&db.pool, "okr_next_actions", id).await, 0);
    wrong.stop().await;

    // Nobody listens at the exporter's address any more.
    let gone = exporter.base.clone();
    exporter.stop().await;
    let down = start_api(settings.clone(), &db, &gone, INGEST_TOKEN).await;
    for request in [
        http.patch(format!("{}/api/followups/{id}", down.base))
            .json(&json!({"publish": true, "creation_seconds": 42.0})),
        http.post(format!("{}/api/followups/{id}/next-action", down.base)),
    ] {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    down.stop().await;

    // The exporter is back: the same requests record the events once.
    let exporter = exporter_on(&db).await;
    let api = start_api(settings, &db, &exporter.base, INGEST_TOKEN).await;
    let (status, body) = json_of(
        http.patch(format!("{}/api/followups/{id}", api.base))
            .json(&json!({"publish": true, "creation_seconds": 42.0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "published");
    let (status, body) = json_of(
        http.post(format!("{}/api/followups/{id}/next-action", api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(count(&db.pool, "okr_creation_time", id).await, 1);
    assert_eq!(count(&db.pool, "okr_next_actions", id).await, 1);

    // Over the exporter's --max-creation-duration: refused before the
    // publish, so nothing changes.
    let draft = create_draft(&http, &api.base).await;
    let (status, body) = json_of(
        http.patch(format!("{}/api/followups/{draft}", api.base))
            .json(&json!({"publish": true, "creation_seconds": 90_000.0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "creation_seconds");
    let (st,): (String,) = sqlx::query_as("SELECT status FROM followups WHERE id = $1")
        .bind(draft)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(st, "draft");
    api.stop().await;
    exporter.stop().await;
}

/// Without a relay the API refuses events it cannot deliver, before any
/// change.
#[tokio::test]
async fn reference_api_without_relay_refuses_events() {
    let db = prepared_db().await;
    let app = api::router(
        db.pool.clone(),
        prometheus_client::registry::Registry::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let id = create_draft(&http, &base).await;
    let (status, body) = json_of(
        http.patch(format!("{base}/api/followups/{id}"))
            .json(&json!({"publish": true, "creation_seconds": 42.0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (st,): (String,) = sqlx::query_as("SELECT status FROM followups WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(st, "draft");
    let (status, _) = json_of(
        http.patch(format!("{base}/api/followups/{id}"))
            .json(&json!({"publish": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let resp = http
        .post(format!("{base}/api/followups/{id}/next-action"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    server.abort();
}
