//! Shared test support: a fresh database per test on one embedded cluster
//! (or on `DATABASE_URL`'s server when set), and the exporter binary.

use std::sync::OnceLock;

use okr_exporter::config::DatabaseUrl;
use okr_exporter::embedded_pg::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The embedded cluster shared by this test binary; its watchdog removes it
/// when the binary exits.
fn cluster() -> &'static Result<EmbeddedPostgres, String> {
    static CLUSTER: OnceLock<Result<EmbeddedPostgres, String>> = OnceLock::new();
    CLUSTER.get_or_init(|| EmbeddedPostgres::start().map_err(|e| e.to_string()))
}

/// URL of the server's maintenance database.
fn admin_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    match cluster() {
        Ok(pg) => pg.url("postgres"),
        Err(e) => panic!("cannot start embedded PostgreSQL: {e}"),
    }
}

/// Replaces the database name at the end of a URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let head = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{head}/{db}?{q}"),
        None => format!("{head}/{db}"),
    }
}

/// A database created for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// The URL as the exporter takes it.
    pub fn database_url(&self) -> DatabaseUrl {
        DatabaseUrl::parse_arg(&self.url).expect("valid test URL")
    }
}

/// Creates an empty database for the calling test.
pub async fn fresh_db() -> TestDb {
    let admin_url = admin_url();
    let name = format!("okr_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let url = with_database(&admin_url, &name);
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&url)
        .await
        .expect("connect to the test database");
    TestDb { url, pool }
}

/// A database with the fixture source schema and the exporter's migrations.
pub async fn prepared_db() -> TestDb {
    let db = fresh_db().await;
    okr_exporter::db::apply_source_schema(&db.pool)
        .await
        .expect("source schema");
    okr_exporter::db::migrate(&db.pool)
        .await
        .expect("migrations");
    db
}

/// Path of the compiled `okr-exporter` binary.
pub fn exporter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_okr-exporter")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Which command to call for a tool CI installs from Debian's packages.
pub fn require_tool(name: &str) -> String {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    assert!(
        found,
        "{name} is not installed: run the README's test command, which installs it \
         (Debian package prometheus / prometheus-alertmanager)"
    );
    name.to_owned()
}

/// A running in-process exporter.
pub struct RunningExporter {
    /// Base URL, e.g. `http://127.0.0.1:12345`.
    pub base: String,
    /// The scheduler, to run collections by hand.
    pub scheduler: okr_exporter::collector::Scheduler,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningExporter {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// GET `path` and return (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }
}

/// Starts the exporter in-process on a free port with `settings`.
pub async fn start_exporter(settings: okr_exporter::config::Settings) -> RunningExporter {
    let exporter = okr_exporter::server::Exporter::new(settings).expect("exporter");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let scheduler = exporter.scheduler().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = exporter
            .run(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    RunningExporter {
        base,
        scheduler,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// Inserts `n` follow-ups published an hour ago (created 20 minutes before
/// that), by creators `creator-0` … `creator-6`; returns their ids.
pub async fn published_followups(pool: &PgPool, n: usize) -> Vec<uuid::Uuid> {
    let published = chrono::Utc::now() - chrono::Duration::hours(1);
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at)
         SELECT id, 'creator-' || (row_number() OVER () % 7), 'published', $2, $3
         FROM unnest($1::uuid[]) AS id",
    )
    .bind(&ids)
    .bind(published - chrono::Duration::minutes(20))
    .bind(published)
    .execute(pool)
    .await
    .expect("follow-ups");
    ids
}

/// A cluster of its own, for a test that stops and starts the server.
pub async fn dedicated_cluster() -> EmbeddedPostgres {
    tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .expect("join")
        .expect("embedded PostgreSQL")
}

/// A pool on `url` with the fixture source schema and the migrations applied.
pub async fn prepared_pool(url: &str) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .expect("connect");
    okr_exporter::db::apply_source_schema(&pool)
        .await
        .expect("schema");
    okr_exporter::db::migrate(&pool).await.expect("migrations");
    pool
}

/// A child process killed and reaped when dropped, so that a failing
/// assertion never leaves it behind; its output goes to a log file.
pub struct ChildProcess {
    name: &'static str,
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ChildProcess {
    /// The last lines of the process's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- {} log tail ---\n{}",
            self.name,
            lines[start..].join("\n")
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// Starts `program` with the arguments `args(port)` on a free loopback port,
/// its output in `dir/<name>-<attempt>.log`, and waits up to 30 s for
/// `GET /-/ready`; retries with another port if the process exits first (the
/// port may have been taken in between). Returns the process and its base
/// URL.
pub async fn start_ready(
    name: &'static str,
    program: &str,
    dir: &std::path::Path,
    args: impl Fn(u16) -> Vec<String>,
) -> (ChildProcess, String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let mut last_log = String::new();
    for attempt in 0..3 {
        let port = free_port();
        let log = dir.join(format!("{name}-{attempt}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = std::process::Command::new(program)
            .args(args(port))
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut process = ChildProcess { name, child, log };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if process.child.try_wait().ok().flatten().is_some() {
                break;
            }
            if let Ok(resp) = client.get(format!("{base}/-/ready")).send().await
                && resp.status().is_success()
            {
                return (process, base);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        last_log = process.log_tail();
    }
    panic!("{name} did not become ready on 127.0.0.1\n{last_log}");
}

/// Runs `promtool check metrics` on `text`.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let promtool = require_tool("promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
