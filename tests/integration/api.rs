//! Ingestion, report, landing page, read authentication and request log.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use okr_exporter::config::{BasicCredentials, Secret, Settings};
use okr_exporter::http_metrics::{RequestRecord, RequestSink};
use okr_exporter::request_log::{self, RequestLogOptions};
use prometheus_client::registry::Registry;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{RunningExporter, TestDb, prepared_db, start_exporter};

const TOKEN: &str = "ingest-secret-token";

async fn counts(db: &TestDb) -> (i64, i64) {
    let (a,): (i64,) = sqlx::query_as("SELECT count(*) FROM okr_creation_time")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (b,): (i64,) = sqlx::query_as("SELECT count(*) FROM okr_next_actions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (a, b)
}

async fn followup(db: &TestDb, published: Option<chrono::DateTime<Utc>>) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at) VALUES ($1, 'c', $2, now() - interval '2 days', $3)",
    )
    .bind(id)
    .bind(if published.is_some() { "published" } else { "draft" })
    .bind(published)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn exporter_with_token(db: &TestDb) -> RunningExporter {
    let mut s = Settings::for_database(Some(db.database_url()));
    s.ingest_token = Some(Secret::new(TOKEN));
    s.max_body_bytes = 1024;
    start_exporter(s).await
}

async fn post(
    ex: &RunningExporter,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", ex.base))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("JSON body expected, got {status} {text:?}"));
    (status, v)
}

async fn post_json(ex: &RunningExporter, path: &str, body: Value) -> (StatusCode, Value) {
    post(
        ex,
        path,
        Some(TOKEN),
        Some("application/json"),
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn creation_time_errors_change_nothing() {
    let db = prepared_db().await;
    let published = Utc::now() - chrono::Duration::hours(1);
    let id = followup(&db, Some(published)).await;
    let draft = followup(&db, None).await;
    let ex = exporter_with_token(&db).await;
    let good = json!({"followup_id": id, "duration_seconds": 321.5});
    let path = "/api/okr/creation-time";

    // (what, expected status, expected field, actual answer)
    type Case<'a> = (&'a str, StatusCode, Option<&'a str>, (StatusCode, Value));
    let cases: Vec<Case> = vec![
        (
            "no token",
            StatusCode::UNAUTHORIZED,
            None,
            post(&ex, path, None, Some("application/json"), good.to_string()).await,
        ),
        (
            "wrong token",
            StatusCode::UNAUTHORIZED,
            None,
            post(
                &ex,
                path,
                Some("nope"),
                Some("application/json"),
                good.to_string(),
            )
            .await,
        ),
        (
            "media type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            post(&ex, path, Some(TOKEN), Some("text/plain"), good.to_string()).await,
        ),
        (
            "malformed",
            StatusCode::BAD_REQUEST,
            None,
            post(
                &ex,
                path,
                Some(TOKEN),
                Some("application/json"),
                "{\"followup_id\": ",
            )
            .await,
        ),
        (
            "too large",
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            post(
                &ex,
                path,
                Some(TOKEN),
                Some("application/json"),
                format!("{{\"pad\": \"{}\"}}", "x".repeat(4096)),
            )
            .await,
        ),
        (
            "negative",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("duration_seconds"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": -1}),
            )
            .await,
        ),
        (
            "over max",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("duration_seconds"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 86_401}),
            )
            .await,
        ),
        (
            "not a number",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("duration_seconds"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": "5"}),
            )
            .await,
        ),
        (
            "missing id",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("followup_id"),
            post_json(&ex, path, json!({"duration_seconds": 5})).await,
        ),
        (
            "bad uuid",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("followup_id"),
            post_json(
                &ex,
                path,
                json!({"followup_id": "abc", "duration_seconds": 5}),
            )
            .await,
        ),
        (
            "publish before start",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("published_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "started_at": "2026-01-02T00:00:00Z", "published_at": "2026-01-01T00:00:00Z"}),
            )
            .await,
        ),
        (
            "future",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("published_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "published_at": (Utc::now() + chrono::Duration::days(2)).to_rfc3339()}),
            )
            .await,
        ),
        (
            "unknown follow-up",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("followup_id"),
            post_json(
                &ex,
                path,
                json!({"followup_id": Uuid::new_v4(), "duration_seconds": 5}),
            )
            .await,
        ),
        (
            "unknown field",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("durationSeconds"),
            post_json(&ex, path, json!({"followup_id": id, "durationSeconds": 5})).await,
        ),
        (
            "draft",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("followup_id"),
            post_json(
                &ex,
                path,
                json!({"followup_id": draft, "duration_seconds": 5}),
            )
            .await,
        ),
        (
            "published in 1970",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("published_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "published_at": "1970-01-01T00:00:00Z"}),
            )
            .await,
        ),
        (
            "published before the common era",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("published_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "published_at": "-0001-12-31T00:00:00Z"}),
            )
            .await,
        ),
        (
            "published 2 s off",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("published_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "published_at": (published + chrono::Duration::seconds(2)).to_rfc3339()}),
            )
            .await,
        ),
        (
            "started in 2020",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("started_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "started_at": "2020-01-01T00:00:00Z"}),
            )
            .await,
        ),
        (
            "started in year 0",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("started_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "started_at": "0000-01-01T00:00:00Z"}),
            )
            .await,
        ),
        (
            "started far in the future",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("started_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "started_at": "9999-12-31T23:59:59Z"}),
            )
            .await,
        ),
        (
            "start disagrees with the duration",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("started_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5,
                "started_at": (published - chrono::Duration::seconds(100)).to_rfc3339()}),
            )
            .await,
        ),
        (
            "unparsable time",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("started_at"),
            post_json(
                &ex,
                path,
                json!({"followup_id": id, "duration_seconds": 5, "started_at": "+10000-01-01T00:00:00Z"}),
            )
            .await,
        ),
        (
            "repeated key",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("duration_seconds"),
            post(
                &ex,
                path,
                Some(TOKEN),
                Some("application/json"),
                format!(r#"{{"followup_id": "{id}", "duration_seconds": 5, "duration_seconds": 6}}"#),
            )
            .await,
        ),
        (
            "nested value of the wrong type",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("followup_id"),
            post_json(
                &ex,
                path,
                json!({"followup_id": {"id": [id]}, "duration_seconds": 5}),
            )
            .await,
        ),
        (
            "number out of range",
            StatusCode::BAD_REQUEST,
            Some("duration_seconds"),
            post(
                &ex,
                path,
                Some(TOKEN),
                Some("application/json"),
                format!(r#"{{"followup_id": "{id}", "duration_seconds": 1e400}}"#),
            )
            .await,
        ),
        (
            "trailing characters",
            StatusCode::BAD_REQUEST,
            None,
            post(
                &ex,
                path,
                Some(TOKEN),
                Some("application/json"),
                format!(r#"{{"followup_id": "{id}", "duration_seconds": 5}} {{}}"#),
            )
            .await,
        ),
    ];
    for (what, status, field, (got, body)) in cases {
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        if let Some(f) = field {
            assert_eq!(body["field"], f, "{what}: {body}");
        }
    }
    assert_eq!(counts(&db).await, (0, 0), "no row changed");

    // The same event twice is stored once; a conflicting one is refused.
    let (s1, _) = post_json(&ex, path, good.clone()).await;
    let (s2, b2) = post_json(&ex, path, good.clone()).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(b2["recorded"], false);
    let (s3, b3) = post_json(
        &ex,
        path,
        json!({"followup_id": id, "duration_seconds": 10}),
    )
    .await;
    assert_eq!(s3, StatusCode::CONFLICT, "{b3}");
    let (n, dur, pub_at): (i64, f64, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT count(*) OVER (), duration_seconds, published_at FROM okr_creation_time",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((n, dur), (1, 321.5));
    // Without published_at the follow-up's own publish time is used.
    assert_eq!(pub_at.timestamp_micros(), published.timestamp_micros());

    // Client times within 1 s of the follow-up's are accepted; the
    // follow-up's own publish time is what is stored.
    let other = followup(&db, Some(published)).await;
    let (status, body) = post_json(
        &ex,
        path,
        json!({"followup_id": other, "duration_seconds": 120.25,
            "started_at": (published - chrono::Duration::milliseconds(120_250 - 700)).to_rfc3339(),
            "published_at": (published + chrono::Duration::milliseconds(900)).to_rfc3339()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (started, pub_at): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT started_at, published_at FROM okr_creation_time WHERE followup_id = $1",
    )
    .bind(other)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(pub_at.timestamp_micros(), published.timestamp_micros());
    assert_eq!(
        (published - started).num_milliseconds(),
        120_250 - 700,
        "started_at stored as sent"
    );
    ex.stop().await;
}

#[tokio::test]
async fn ingestion_is_refused_until_a_token_is_configured() {
    let db = prepared_db().await;
    let ex = start_exporter(Settings::for_database(Some(db.database_url()))).await;
    let (status, body) = post_json(
        &ex,
        "/api/okr/creation-time",
        json!({"followup_id": Uuid::new_v4(), "duration_seconds": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains("no ingest token"));
    ex.stop().await;
}

#[tokio::test]
async fn next_action_rules_and_idempotency() {
    let db = prepared_db().await;
    let published = Utc::now() - chrono::Duration::days(2);
    let id = followup(&db, Some(published)).await;
    let draft = followup(&db, None).await;
    let ex = exporter_with_token(&db).await;
    let path = "/api/okr/next-action";
    let at = |h: i64| (published + chrono::Duration::hours(h)).to_rfc3339();

    for (what, body, field) in [
        (
            "unknown",
            json!({"followup_id": Uuid::new_v4(), "action_at": at(1)}),
            "followup_id",
        ),
        (
            "unpublished",
            json!({"followup_id": draft, "action_at": at(1)}),
            "followup_id",
        ),
        (
            "before publish",
            json!({"followup_id": id, "action_at": at(-1)}),
            "action_at",
        ),
        (
            "future",
            json!({"followup_id": id, "action_at": at(24 * 30)}),
            "action_at",
        ),
        (
            "bad time",
            json!({"followup_id": id, "action_at": "yesterday"}),
            "action_at",
        ),
    ] {
        let (status, b) = post_json(&ex, path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {b}");
        assert_eq!(b["field"], field, "{what}: {b}");
    }
    assert_eq!(counts(&db).await, (0, 0));

    let (s, _) = post_json(&ex, path, json!({"followup_id": id, "action_at": at(30)})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = post_json(&ex, path, json!({"followup_id": id, "action_at": at(30)})).await;
    assert_eq!(
        (s, b["recorded"].clone()),
        (StatusCode::OK, json!(false)),
        "retry"
    );
    let (s, b) = post_json(&ex, path, json!({"followup_id": id, "action_at": at(40)})).await;
    assert_eq!(
        (s, b["recorded"].clone()),
        (StatusCode::OK, json!(false)),
        "later action"
    );
    let (s, _) = post_json(&ex, path, json!({"followup_id": id, "action_at": at(6)})).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "an earlier action is the next action"
    );
    let (n, days): (i64, f64) =
        sqlx::query_as("SELECT count(*) OVER (), days_to_action FROM okr_next_actions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
    assert!((days - 0.25).abs() < 1e-9, "{days}");
    ex.stop().await;
}

#[tokio::test]
async fn no_client_input_yields_a_server_error() {
    let db = prepared_db().await;
    let id = followup(&db, Some(Utc::now() - chrono::Duration::hours(3))).await;
    let ex = exporter_with_token(&db).await;
    let bodies = [
        "".to_owned(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "\"x\"".into(),
        "{\"followup_id\": null}".into(),
        format!("{{\"followup_id\": \"{id}\", \"duration_seconds\": 1e400}}"),
        format!(
            "{{\"followup_id\": \"{id}\", \"duration_seconds\": 1, \"started_at\": \"0000-01-01T00:00:00Z\"}}"
        ),
        format!("{{\"followup_id\": \"{id}\", \"action_at\": \"-262143-01-01T00:00:00Z\"}}"),
        "\u{0}\u{1}".into(),
    ];
    for path in ["/api/okr/creation-time", "/api/okr/next-action"] {
        for body in &bodies {
            let resp = reqwest::Client::new()
                .post(format!("{}{path}", ex.base))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            // None of these is a valid event: nothing may be stored.
            assert!(
                resp.status().is_client_error(),
                "{path} {body:?}: {}",
                resp.status()
            );
        }
    }
    assert_eq!(counts(&db).await, (0, 0));
    ex.stop().await;
}

fn metric_values(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn report_landing_page_and_metrics_agree() {
    let db = prepared_db().await;
    // A little of everything, including an empty OKR (no next actions).
    sqlx::raw_sql(
        "INSERT INTO followups (id, creator_id, company, status, created_at, published_at)
         SELECT gen_random_uuid(), 'c' || (g % 3), 'Co' || (g % 4),
                CASE WHEN g % 5 = 0 THEN 'draft' ELSE 'published' END,
                now() - (g || ' hours')::interval,
                CASE WHEN g % 5 = 0 THEN NULL ELSE now() - (g || ' hours')::interval + interval '9 minutes' END
         FROM generate_series(1, 40) g;
         INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
         SELECT id, 'v' || (row_number() OVER ()) % 3, CASE WHEN random() < 0.5 THEN 'mobile' ELSE 'desktop' END, now() - interval '1 minute'
         FROM followups WHERE published_at IS NOT NULL;
         INSERT INTO okr_creation_time (followup_id, published_at, duration_seconds)
         SELECT id, published_at, 540 + (extract(epoch FROM created_at)::bigint % 120) FROM followups WHERE published_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let ex = start_exporter(Settings::for_database(Some(db.database_url()))).await;
    let results = ex.scheduler.run_all_once(Utc::now()).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");

    let metrics = metric_values(&ex.get("/metrics").await.1);
    let (status, body) = ex.get("/api/okr/report?window=7d&format=json").await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["window"], "7d");
    let okrs = report["okrs"].as_array().unwrap();
    assert_eq!(okrs.len(), 5);
    for o in okrs {
        let series = o["metric"].as_str().unwrap();
        match metrics.get(series) {
            Some(v) => {
                assert_eq!(o["value"].as_f64(), Some(*v), "{series}");
                let target = o["target"].as_f64().unwrap();
                let met = if o["comparison"] == "<=" {
                    *v <= target
                } else {
                    *v >= target
                };
                assert_eq!(o["status"], if met { "met" } else { "missed" }, "{o}");
            }
            None => {
                assert!(o["value"].is_null(), "{series} absent from /metrics: {o}");
                assert_eq!(o["status"], "no_data");
            }
        }
    }
    assert_eq!(
        okrs.iter()
            .find(|o| o["key"] == "time_to_next_action")
            .unwrap()["status"],
        "no_data"
    );
    // Each figure present on both sides (two absent values must not agree).
    for (key, series) in [
        ("followups_created", "okr_followups_created{window=\"7d\"}"),
        (
            "followups_published",
            "okr_followups_published{window=\"7d\"}",
        ),
        (
            "followups_all_time_published",
            "okr_followups{status=\"published\"}",
        ),
    ] {
        let reported = report["adoption"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("adoption {key} missing from the report: {report}"));
        let exported = *metrics
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from /metrics"));
        assert_eq!(reported, exported, "{key}");
    }

    // CSV: header, text/csv, a file name, and the same values.
    let resp = reqwest::get(format!("{}/api/okr/report?window=7d&format=csv", ex.base))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("filename=\"okr-report-7d-")
    );
    let csv = resp.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("section,window,day,metric,value,target,comparison,status")
    );
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), 8, "{line}");
        if cols[0] == "okr" {
            let o = okrs.iter().find(|o| o["key"] == cols[3]).unwrap();
            // A value where the report has one, an empty field where not.
            match o["value"].as_f64() {
                Some(v) => assert_eq!(cols[4].parse::<f64>().ok(), Some(v), "{line}"),
                None => assert_eq!(cols[4], "", "{line}"),
            }
            assert_eq!(cols[7], o["status"]);
        }
    }

    // Bad parameters.
    assert_eq!(ex.get("/api/okr/report?window=5d").await.0, 422);
    assert_eq!(ex.get("/api/okr/report?format=xml").await.0, 422);
    assert_eq!(ex.get("/api/okr/report?days=0").await.0, 422);

    // Landing page: every card's value equals the report's.
    let (status, html) = ex.get("/").await;
    assert_eq!(status, 200);
    assert!(html.contains("http-equiv=\"refresh\" content=\"300\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    for o in okrs {
        let needle = format!(
            "data-okr=\"{}\" data-window=\"7d\" data-value=\"",
            o["key"].as_str().unwrap()
        );
        let at = html
            .find(&needle)
            .unwrap_or_else(|| panic!("card {needle}"));
        let rest = &html[at + needle.len()..];
        let raw = &rest[..rest.find('"').unwrap()];
        match o["value"].as_f64() {
            Some(v) => assert_eq!(raw.parse::<f64>().ok(), Some(v), "{needle}"),
            None => assert_eq!(raw, "", "{needle}: no value, empty attribute"),
        }
        let status_needle = format!("data-status=\"{}\"", o["status"].as_str().unwrap());
        assert!(
            rest[..rest.find('>').unwrap()].contains(&status_needle),
            "{needle}"
        );
    }
    ex.stop().await;
}

#[tokio::test]
async fn read_endpoints_require_credentials_when_configured() {
    let db = prepared_db().await;
    let mut s = Settings::for_database(Some(db.database_url()));
    s.metrics_token = Some(Secret::new("read-token"));
    s.metrics_basic_auth = Some(BasicCredentials::parse_arg("ops:pa55").unwrap());
    let ex = start_exporter(s).await;
    let c = reqwest::Client::new();
    for path in ["/metrics", "/", "/api/okr/report"] {
        let url = format!("{}{path}", ex.base);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 401, "{path}");
        assert_eq!(
            c.get(&url)
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            c.get(&url)
                .bearer_auth("read-token")
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
        assert_eq!(
            c.get(&url)
                .basic_auth("ops", Some("pa55"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            c.get(&url)
                .basic_auth("ops", Some("nope"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(
        c.get(format!("{}/healthz", ex.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = c
        .get(format!("{}/metrics", ex.base))
        .bearer_auth("read-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("read-token") && !metrics.contains("pa55"));
    ex.stop().await;
}

fn record(i: u64) -> RequestRecord {
    RequestRecord {
        route: "/api/followups/{id}".into(),
        method: http::Method::PATCH,
        status: 200,
        duration: Duration::from_micros(1500 + i),
        started_at: SystemTime::now(),
        user_id: Some(format!("user-{}", i % 7)),
    }
}

async fn log_rows(db: &TestDb) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM performance_metrics")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn request_log_batches_drops_when_full_and_flushes_on_shutdown() {
    let db = prepared_db().await;
    // Batching: rows drained every 50 ms in batches of at most 100.
    let mut registry = Registry::default();
    let options = RequestLogOptions {
        capacity: 10_000,
        batch: 100,
        flush_every: Duration::from_millis(50),
        ..RequestLogOptions::default()
    };
    let (sink, writer) = request_log::start(db.pool.clone(), &mut registry, options);
    for i in 0..250 {
        sink.record(record(i));
    }
    assert!(
        crate::support::eventually(Duration::from_secs(10), || async {
            log_rows(&db).await == 250
        })
        .await,
        "all rows written"
    );
    // Rows written by one INSERT share a transaction id: at most 100 each.
    let (statements,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT xmin::text) FROM performance_metrics")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        (3..=250 / 100 + 3).contains(&statements),
        "{statements} inserts for 250 rows"
    );
    // Flush on shutdown: a flush interval that never comes.
    sink.record(record(0));
    writer.shutdown().await;
    let mut registry = Registry::default();
    let options = RequestLogOptions {
        flush_every: Duration::from_secs(3600),
        ..RequestLogOptions::default()
    };
    let (late_sink, late_writer) = request_log::start(db.pool.clone(), &mut registry, options);
    // The first tick comes at once; rows recorded after it wait for shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..40 {
        late_sink.record(record(i));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log_rows(&db).await, 251, "not written before shutdown");
    late_writer.shutdown().await;
    assert_eq!(
        log_rows(&db).await,
        291,
        "queued rows are flushed on shutdown"
    );
    let (route, method, ms, status, user): (String, String, f64, i32, Option<String>) = sqlx::query_as(
        "SELECT endpoint, method, response_time_ms, status_code, user_id FROM performance_metrics ORDER BY response_time_ms LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (route.as_str(), method.as_str(), status),
        ("/api/followups/{id}", "PATCH", 200)
    );
    assert!((ms - 1.5).abs() < 1e-9);
    assert_eq!(user.as_deref(), Some("user-0"));

    // A full queue drops and counts instead of blocking.
    let db2 = prepared_db().await;
    let mut registry = Registry::default();
    let options = RequestLogOptions {
        capacity: 4,
        batch: 2,
        ..RequestLogOptions::default()
    };
    let (sink, writer) = request_log::start(db2.pool.clone(), &mut registry, options);
    let started = std::time::Instant::now();
    for i in 0..2000 {
        sink.record(record(i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "recording never waits for the database"
    );
    writer.shutdown().await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let dropped = metric_values(&text)["okr_exporter_request_log_dropped_total"];
    let written = log_rows(&db2).await as f64;
    assert!(dropped > 0.0, "{text}");
    assert_eq!(
        dropped + written,
        2000.0,
        "every record is written or counted as dropped"
    );
}

#[tokio::test]
async fn exporter_request_log_records_its_own_requests() {
    let db = prepared_db().await;
    let mut s = Settings::for_database(Some(db.database_url()));
    s.request_log = true;
    let ex = start_exporter(s).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        c.get(format!("{}/healthz", ex.base))
            .header("x-user-id", "alice")
            .send()
            .await
            .unwrap();
    }
    c.get(format!("{}/no/such/path", ex.base))
        .send()
        .await
        .unwrap();
    ex.stop().await;
    let rows: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT endpoint, status_code, user_id FROM performance_metrics ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let health = rows.iter().filter(|r| r.0 == "/healthz").count();
    assert_eq!(health, 5, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0 == "__unmatched__" && r.1 == 404),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| !r.0.contains("/no/such")),
        "raw paths never stored"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.2.as_deref() == Some("alice"))
            .count(),
        5
    );
}

/// Through the middleware: a full queue sheds requests before their records
/// are built, and every request is still either written or counted.
#[tokio::test]
async fn middleware_requests_are_written_or_counted_when_the_queue_is_full() {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    let db = prepared_db().await;
    let mut registry = Registry::default();
    let options = RequestLogOptions {
        capacity: 8,
        flush_every: Duration::from_secs(3600),
        ..RequestLogOptions::default()
    };
    let (sink, writer) = request_log::start(db.pool.clone(), &mut registry, options);
    let layer = okr_exporter::http_metrics::HttpMetricsLayer::builder()
        .request_sink(sink)
        .user_id_header(http::HeaderName::from_static("x-user-id"))
        .register(&mut registry);
    let app = Router::new()
        .route("/api/followups/{id}", get(|| async { "ok" }))
        .layer(layer);
    // The writer's first tick drains an empty queue; then nothing is
    // written until shutdown, so the queue fills.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..300 {
        let request = http::Request::get(format!("/api/followups/{i}"))
            .header("x-user-id", format!("u{}", i % 3))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    writer.shutdown().await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let values = metric_values(&text);
    let dropped = values["okr_exporter_request_log_dropped_total"];
    let written = log_rows(&db).await as f64;
    assert!(dropped > 0.0 && written > 0.0, "{text}");
    assert!(written <= 8.0, "{written} rows written from an 8-row queue");
    assert_eq!(dropped + written, 300.0);
    let (users, routes): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT user_id), count(DISTINCT endpoint) FROM performance_metrics WHERE endpoint = '/api/followups/{id}' AND user_id LIKE 'u%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(users >= 1 && routes == 1);
}
