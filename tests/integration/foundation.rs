//! Foundation: migrations, readiness, /metrics format, start-up without a
//! database, CLI errors, `check`, and per-test database isolation.

use std::process::{Command, Stdio};
use std::time::Duration;

use okr_exporter::config::{DatabaseUrl, Settings};
use okr_exporter::embedded_pg::{EmbeddedPostgres, free_port};

use crate::support::{self, eventually, exporter_bin, fresh_db, prepared_db, start_exporter};

#[tokio::test]
async fn migrations_apply_twice_and_create_every_table() {
    let db = fresh_db().await;
    okr_exporter::db::migrate(&db.pool)
        .await
        .expect("first run");
    okr_exporter::db::migrate(&db.pool)
        .await
        .expect("second run");
    assert!(
        okr_exporter::db::migrations_applied(&db.pool)
            .await
            .unwrap()
    );
    for table in [
        "okr_creation_time",
        "okr_next_actions",
        "okr_draft_completions",
        "okr_engagement",
        "okr_mobile_usage",
        "performance_metrics",
    ] {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM information_schema.tables WHERE table_name = $1")
                .bind(table)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(n, 1, "{table} exists");
    }
    // The source tables are not the exporter's: migrations never create them.
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'followups'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

async fn isolation_probe(rows: i64) {
    let db = fresh_db().await;
    sqlx::query("CREATE TABLE isolation_probe (n int)")
        .execute(&db.pool)
        .await
        .expect("each test has its own database, so the table is new");
    for i in 0..rows {
        sqlx::query("INSERT INTO isolation_probe VALUES ($1)")
            .bind(i as i32)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM isolation_probe")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, rows);
}

#[tokio::test]
async fn parallel_tests_see_only_their_database_a() {
    isolation_probe(3).await;
}

#[tokio::test]
async fn parallel_tests_see_only_their_database_b() {
    isolation_probe(5).await;
}

fn settings_for(url: DatabaseUrl) -> Settings {
    let mut s = Settings::for_database(Some(url));
    s.collect_interval = Duration::from_millis(500);
    s.max_staleness = Duration::from_secs(30);
    s
}

fn up_value(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("okr_exporter_up "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn starts_without_database_and_recovers_when_it_appears() {
    let port = free_port().unwrap();
    let url =
        DatabaseUrl::parse_arg(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).unwrap();
    let exporter = start_exporter(settings_for(url)).await;

    let (status, _) = exporter.get("/readyz").await;
    assert_eq!(status, 503, "not ready without a database");
    let (status, body) = exporter.get("/metrics").await;
    assert_eq!(status, 200, "/metrics answers without a database");
    assert!(
        eventually(Duration::from_secs(10), || async {
            up_value(&exporter.get("/metrics").await.1) == Some(0.0)
        })
        .await,
        "okr_exporter_up 0 while the database is down: {body}"
    );

    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start_on_port(port))
        .await
        .unwrap()
        .expect("database appears at the configured address");
    assert!(
        eventually(Duration::from_secs(60), || async {
            exporter.get("/readyz").await.0 == 200
        })
        .await,
        "ready once the database is up and migrated"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            up_value(&exporter.get("/metrics").await.1) == Some(1.0)
        })
        .await,
        "okr_exporter_up 1 once the database is reachable"
    );
    exporter.stop().await;
    drop(pg);
}

/// A fresh exporter, before any collection ran, already serves every
/// counter of every known label set at 0, so rates and "no errors" panels
/// read 0 instead of no data.
#[tokio::test]
async fn counters_exist_at_zero_before_anything_happened() {
    let db = fresh_db().await;
    let mut settings = settings_for(db.database_url());
    // No collection during the test: the first poll is an hour away.
    settings.collect_interval = Duration::from_secs(3600);
    settings.request_log = true;
    let exporter = start_exporter(settings).await;
    let (status, text) = exporter.get("/metrics").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = okr_exporter::collector::all_collectors()
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in &names {
        for counter in [
            "okr_exporter_collections_total",
            "okr_exporter_collection_errors_total",
        ] {
            let line = format!("{counter}{{collector=\"{name}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
    for name in ["engagement", "mobile"] {
        let line = format!("okr_exporter_reconcile_corrections_total{{collector=\"{name}\"}} 0");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for line in [
        "okr_exporter_request_log_dropped_total 0",
        "okr_exporter_request_log_rows_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    exporter.stop().await;
}

#[tokio::test]
async fn readyz_turns_ready_once_migrated() {
    let db = fresh_db().await;
    let exporter = start_exporter(settings_for(db.database_url())).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            exporter.get("/readyz").await.0 == 200
        })
        .await
    );
    assert_eq!(exporter.get("/healthz").await.0, 200);
    assert!(
        okr_exporter::db::migrations_applied(&db.pool)
            .await
            .unwrap()
    );
    exporter.stop().await;
}

#[tokio::test]
async fn metrics_negotiate_format_and_pass_promtool() {
    let db = prepared_db().await;
    sqlx::query(
        "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region, status, created_at, published_at)
         VALUES (gen_random_uuid(), 'c1', 'Acme \"Q\"', 'demo', NULL, 'published', now() - interval '1 hour', now() - interval '30 minutes')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let exporter = start_exporter(settings_for(db.database_url())).await;
    exporter.scheduler.run_all_once(chrono::Utc::now()).await;

    let client = reqwest::Client::new();
    let text = client
        .get(format!("{}/metrics", exporter.base))
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .unwrap();
    assert_eq!(
        text.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = text.text().await.unwrap();
    assert!(text.contains("okr_exporter_build_info{"), "{text}");
    assert!(
        text.contains("okr_target_creation_time_p80_seconds 600"),
        "{text}"
    );
    assert!(
        text.contains("okr_followups_published{window=\"7d\"} 1"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));

    let om = client
        .get(format!("{}/metrics", exporter.base))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    assert!(om.text().await.unwrap().trim_end().ends_with("# EOF"));

    support::promtool_check_metrics(&text);
    exporter.stop().await;
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exporter_bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cli_values_exit_nonzero_with_a_clear_line() {
    for (args, needle) in [
        (
            vec!["serve", "--collect-interval", "soon"],
            "--collect-interval",
        ),
        (vec!["serve", "--query-timeout", "0s"], "--query-timeout"),
        (vec!["serve", "--listen", "localhost:notaport"], "--listen"),
        (vec!["serve", "--windows", "1d,,7d"], "--windows"),
        (
            vec!["serve", "--database-url", "mysql://u:hunter22@h/db"],
            "--database-url",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let (code, _, stderr) = run_cli(&args);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            stderr.lines().next().unwrap_or("").starts_with("error:"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("hunter22"), "password leaked: {stderr}");
    }
    let (code, _, stderr) = run_cli(&["serve"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

#[test]
fn help_explains_every_flag() {
    let (code, stdout, _) = run_cli(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--database-url",
        "--listen",
        "--collect-interval",
        "--query-timeout",
        "--windows",
        "--ingest-token",
        "--config",
        "--max-staleness",
        "DATABASE_URL",
        "OKR_LISTEN",
        "OKR_INGEST_TOKEN",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn check_reports_missing_and_mistyped_columns() {
    let db = prepared_db().await;
    let (code, stdout, _) = run_cli(&["check", "--database-url", &db.url]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("result: all checks passed"), "{stdout}");

    sqlx::raw_sql(
        "ALTER TABLE followups DROP COLUMN company;
         ALTER TABLE analytics_sessions ALTER COLUMN started_at TYPE timestamp;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, stdout, _) = run_cli(&["check", "--database-url", &db.url]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("column followups.company is missing (expected text)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "column analytics_sessions.started_at is timestamp without time zone, expected timestamp with time zone"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("result: 2 problem(s)"), "{stdout}");

    let empty = fresh_db().await;
    let (code, stdout, _) = run_cli(&["check", "--database-url", &empty.url]);
    assert_eq!(code, 1);
    assert!(stdout.contains("table followups is missing"), "{stdout}");
    assert!(stdout.contains("migrations: not all"), "{stdout}");
}

#[test]
fn serve_never_logs_the_password_and_stops_on_sigterm() {
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let child = Command::new(exporter_bin())
        .args([
            "serve",
            "--listen",
            &listen,
            "--database-url",
            &format!("postgres://okr:pw-XYZZY-42@127.0.0.1:{port}/okr"),
            "--collect-interval",
            "1s",
            "--log",
            "debug",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    // SAFETY: kill(2) on the child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "graceful exit on SIGTERM: {logs}");
    assert!(logs.contains("database not ready"), "{logs}");
    assert!(!logs.contains("pw-XYZZY-42"), "password in logs: {logs}");
}
