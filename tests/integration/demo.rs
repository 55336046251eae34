//! The demo: deterministic, plausible backfill and the reference API.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use okr_exporter::demo::{api, backfill};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::prepared_db;

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

#[tokio::test]
async fn reference_api_writes_the_source_tables_and_is_instrumented() {
    let db = prepared_db().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut settings = okr_exporter::config::Settings::for_database(Some(db.database_url()));
    settings.request_log = true;
    let server = tokio::spawn(api::serve_api(
        listener,
        db.pool.clone(),
        settings,
        async move {
            let _ = stopped.await;
        },
    ));
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
    let (secs,): (f64,) =
        sqlx::query_as("SELECT duration_seconds FROM okr_creation_time WHERE followup_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(secs, 321.5);

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
    let first = http
        .post(format!("{base}/api/followups/{id}/next-action"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = http
        .post(format!("{base}/api/followups/{id}/next-action"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM okr_next_actions WHERE followup_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);

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

    let _ = stop.send(());
    server.await.unwrap().unwrap();
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
