//! `okr-exporter check`: the advice on what makes the incremental reads of
//! `analytics_sessions` miss rows (cached id sequence, logical replication,
//! updates and deletes).

use std::time::Duration;

use okr_exporter::check::{self, CheckReport, Status};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::support::{eventually, prepared_db};

/// The one finding whose message contains `fragment`.
fn finding<'a>(report: &'a CheckReport, fragment: &str) -> (Status, &'a str) {
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.message.contains(fragment))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one finding with {fragment:?} in:\n{report}"
    );
    (found[0].status, found[0].message.as_str())
}

#[tokio::test]
async fn check_advises_on_cached_sequences_updates_and_deletes() {
    let db = prepared_db().await;
    let report = check::run(&db.pool).await.expect("check runs");
    assert_eq!(report.problems(), 0, "{report}");
    let (status, msg) = finding(&report, "analytics_sessions.id sequence");
    assert_eq!(status, Status::Ok, "{msg}");
    assert!(
        msg.contains("analytics_sessions_id_seq has CACHE 1"),
        "{msg}"
    );
    let (status, msg) = finding(&report, "logical-replication subscriber");
    assert_eq!(status, Status::Ok, "{msg}");
    // The fixture only creates tables, so no row of analytics_sessions has
    // been updated or deleted yet.
    let (status, msg) = finding(&report, "no updates or deletes recorded");
    assert_eq!(status, Status::Ok, "{msg}");

    // Five rows, two of them updated, three deleted (one of those after its
    // update): 2 updates and 3 deletes, counted by hand.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "ALTER SEQUENCE analytics_sessions_id_seq CACHE 20;
         INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
         SELECT gen_random_uuid(), 'v' || n, 'mobile', now() FROM generate_series(1, 5) n;
         UPDATE analytics_sessions SET device_type = 'desktop' WHERE visitor_id IN ('v1', 'v2');
         DELETE FROM analytics_sessions WHERE visitor_id IN ('v2', 'v3', 'v4');",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // Statistics reach the shared views asynchronously; PostgreSQL 15 flushes
    // this session's counts when it next goes idle.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let flushed = eventually(Duration::from_secs(10), || async {
        let (upd, del): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_del FROM pg_stat_user_tables \
             WHERE relname = 'analytics_sessions'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (upd, del) == (2, 3)
    })
    .await;
    assert!(flushed, "statistics show the updates and deletes");

    let report = check::run(&db.pool).await.expect("check runs");
    assert_eq!(report.problems(), 0, "advice only: {report}");
    let (status, msg) = finding(&report, "analytics_sessions.id sequence");
    assert_eq!(status, Status::Advice, "{msg}");
    for part in [
        "analytics_sessions_id_seq has CACHE 20",
        "blocks of 20",
        "set --reconcile-interval 0 (full recomputation every run) or a short reconcile interval",
        "ALTER SEQUENCE analytics_sessions_id_seq CACHE 1",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let (status, msg) = finding(&report, "not append-only");
    assert_eq!(status, Status::Advice, "{msg}");
    for part in [
        "2 update(s) and 3 delete(s)",
        "since its statistics",
        "set --reconcile-interval 0 for exactness every run",
        "on a read replica check the primary",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let (status, _) = finding(&report, "logical-replication subscriber");
    assert_eq!(status, Status::Ok);
    assert!(report.to_string().contains("result: all checks passed"));
}

#[tokio::test]
async fn check_advises_when_ids_have_no_sequence() {
    let db = prepared_db().await;
    sqlx::raw_sql(
        "ALTER TABLE analytics_sessions ALTER COLUMN id DROP DEFAULT;
         DROP SEQUENCE analytics_sessions_id_seq;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = check::run(&db.pool).await.expect("check runs");
    assert_eq!(report.problems(), 0, "{report}");
    let (status, msg) = finding(&report, "analytics_sessions.id has no sequence");
    assert_eq!(status, Status::Advice, "{msg}");
    assert!(msg.contains("set --reconcile-interval 0"), "{msg}");
}

#[tokio::test]
async fn check_finds_a_sequence_the_id_column_does_not_own() {
    let db = prepared_db().await;
    sqlx::raw_sql(
        "CREATE SEQUENCE app_session_ids CACHE 50;
         ALTER TABLE analytics_sessions ALTER COLUMN id SET DEFAULT nextval('app_session_ids');
         DROP SEQUENCE analytics_sessions_id_seq;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = check::run(&db.pool).await.expect("check runs");
    let (status, msg) = finding(&report, "analytics_sessions.id sequence");
    assert_eq!(status, Status::Advice, "{msg}");
    assert!(msg.contains("app_session_ids has CACHE 50"), "{msg}");
}

#[tokio::test]
async fn check_names_this_databases_subscriptions() {
    let db = prepared_db().await;
    // A subscription that never connects (no slot, disabled) still makes the
    // database a subscriber in the catalog; the test role is a superuser.
    sqlx::raw_sql(
        "CREATE SUBSCRIPTION okr_check_sub CONNECTION 'dbname=nowhere' PUBLICATION p \
         WITH (connect = false, slot_name = NONE, enabled = false)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = check::run(&db.pool).await.expect("check runs");
    let (status, msg) = finding(&report, "logical-replication subscriber");
    assert_eq!(status, Status::Advice, "{msg}");
    assert!(msg.contains("subscriptions: okr_check_sub"), "{msg}");
    assert!(msg.contains("set --reconcile-interval 0"), "{msg}");
    assert_eq!(report.problems(), 0, "{report}");
    sqlx::query("DROP SUBSCRIPTION okr_check_sub")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn check_advice_needs_no_privilege_beyond_reading_the_tables() {
    let db = prepared_db().await;
    // A role like the one the exporter runs as in production: it may read the
    // tables and nothing else.
    let role = format!("okr_ro_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'okr-ro';
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let options = db
        .url
        .parse::<PgConnectOptions>()
        .unwrap()
        .username(&role)
        .password("okr-ro");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect as the read-only role");
    let report = check::run(&pool).await.expect("check runs");
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE {role};"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        !report.to_string().contains("could not determine"),
        "{report}"
    );
    assert_eq!(report.problems(), 0, "{report}");
}
