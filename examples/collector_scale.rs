//! Database-scale benchmark of one collection cycle (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example collector_scale -- --followups 1000000
//! ```
//!
//! Generates N follow-ups (20k creators, 5k companies), 10·N analytics
//! sessions and 0.8·N creation-time rows spread over two years (or
//! `--span-days`) on an
//! embedded PostgreSQL (or `DATABASE_URL`), then times, in the same run:
//! the naive dashboard SQL without indexes, the collector without the
//! source indexes, and the collector with them (cold, then steady state),
//! and prints the plans of the collector's queries.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use okr_exporter::config::{DatabaseUrl, Settings};
use okr_exporter::embedded_pg::EmbeddedPostgres;
use okr_exporter::server::Exporter;
use sqlx::postgres::PgPoolOptions;

const NAIVE: &[(&str, &str)] = &[
    (
        "creation P80",
        "SELECT percentile_cont(0.8) WITHIN GROUP (ORDER BY duration_seconds) FROM okr_creation_time_naive WHERE published_at > now() - $1::interval",
    ),
    (
        "draft completion",
        "SELECT COUNT(*), COUNT(published_at IS NOT NULL) FROM followups WHERE created_at > now() - $1::interval",
    ),
    (
        "engagement",
        "SELECT AVG(v) FROM (SELECT f.id, COUNT(DISTINCT s.visitor_id) AS v FROM followups f LEFT JOIN analytics_sessions s ON s.followup_id = f.id WHERE f.published_at > now() - $1::interval GROUP BY f.id) x",
    ),
    (
        "engagement by meeting type",
        "SELECT f.meeting_type, AVG(v) FROM (SELECT f.id, f.meeting_type, COUNT(DISTINCT s.visitor_id) AS v FROM followups f LEFT JOIN analytics_sessions s ON s.followup_id = f.id WHERE f.published_at > now() - $1::interval GROUP BY f.id, f.meeting_type) f GROUP BY 1",
    ),
    (
        "mobile usage",
        "SELECT device_type, COUNT(*) FROM analytics_sessions WHERE started_at > now() - $1::interval GROUP BY 1",
    ),
    (
        "active creators",
        "SELECT COUNT(DISTINCT creator_id) FROM followups WHERE created_at > now() - $1::interval OR published_at > now() - $1::interval",
    ),
    (
        "next action",
        "SELECT AVG(EXTRACT(EPOCH FROM action_at - published_at)) FROM okr_next_actions WHERE action_at > now() - $1::interval",
    ),
    (
        "followups by status",
        "SELECT status, COUNT(*) FROM followups WHERE $1::interval IS NOT NULL GROUP BY 1",
    ),
];

const GENERATE: &str = "
SELECT setseed(0.42);
INSERT INTO followups (id, creator_id, company, meeting_type, creator_region, status, created_at, published_at, deleted_at)
SELECT md5('f' || i)::uuid,
       'creator-' || (i % 20000),
       'company-' || ((i::bigint * 7919) % 5000),
       (ARRAY['discovery', 'demo', 'negotiation', 'renewal', NULL])[1 + i % 5],
       (ARRAY['EMEA', 'NA', 'APAC', 'LATAM', ''])[1 + (i / 7) % 5],
       CASE WHEN i % 100 < 82 THEN 'published' WHEN i % 100 < 90 THEN 'deleted' ELSE 'draft' END,
       c,
       CASE WHEN i % 100 < 82 THEN c + make_interval(secs => 200 + (i * 37) % 1000) END,
       CASE WHEN i % 100 BETWEEN 82 AND 89 THEN c + interval '1 day' END
FROM generate_series(1, {n}) i
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => {span} * 86400.0 * (1 - i::float8 / {n}) + 900) AS c) t;

INSERT INTO okr_creation_time (followup_id, started_at, published_at, duration_seconds)
SELECT md5('f' || i)::uuid, c, c + make_interval(secs => 200 + (i * 37) % 1000), 200 + (i * 37) % 1000
FROM generate_series(1, {n}) i
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => {span} * 86400.0 * (1 - i::float8 / {n}) + 900) AS c) t
WHERE i % 100 < 82 AND i % 41 <> 0;

INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
SELECT md5('f' || j)::uuid,
       'visitor-' || floor(random() * 3000000)::int,
       (ARRAY['mobile', 'mobile', 'mobile', 'mobile', 'desktop', 'desktop', 'desktop', 'desktop', 'tablet', 'smart-tv'])[1 + floor(random() * 10)::int],
       least(now(), now() - make_interval(secs => {span} * 86400.0 * (1 - j::float8 / {n})) + make_interval(secs => random() * 14 * 86400))
FROM (SELECT (k / 82) * 100 + k % 82 + 1 AS j
      FROM (SELECT floor(random() * ({n} * 0.82))::int AS k FROM generate_series(1, {n} * 10)) r) s;

INSERT INTO okr_next_actions (followup_id, action_at, published_at, days_to_action)
SELECT followup_id, least(now(), published_at + interval '3 days'), published_at,
       extract(epoch FROM least(now(), published_at + interval '3 days') - published_at) / 86400
FROM okr_creation_time WHERE (hashtext(followup_id::text) % 10) < 6;

CREATE TABLE okr_creation_time_naive AS SELECT * FROM okr_creation_time;
";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's peak resident set (VmHWM), KiB; 0 where unknown.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// This process's resident set now (VmRSS), KiB.
fn current_rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let n = arg("--followups", 1_000_000);
    let steady_runs = arg("--runs", 5);
    // History length: the same number of rows over a longer span puts fewer
    // in each window, which shows what the cost follows.
    let span_days = arg("--span-days", 730);
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
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let db = format!("okr_scale_{n}_{span_days}");
    // --reuse keeps an existing generated database (on DATABASE_URL's
    // server) and measures only the indexed collector.
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&pool)
            .await?;
    let reuse = exists && std::env::args().any(|a| a == "--reuse");
    if !reuse {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
            .execute(&pool)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&pool)
            .await?;
    }
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => anyhow::bail!("unexpected URL"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&db_url)
        .await?;
    okr_exporter::db::apply_source_schema(&pool).await?;
    okr_exporter::db::migrate(&pool).await?;

    println!(
        "# collector scale benchmark: {n} follow-ups, {} sessions over {span_days} days",
        n * 10
    );
    let mut naive = Duration::ZERO;
    let mut unindexed = Duration::ZERO;
    let mut settings = Settings::for_database(Some(
        DatabaseUrl::parse_arg(&db_url).map_err(anyhow::Error::msg)?,
    ));
    settings.query_timeout = Duration::from_secs(120);
    let exporter = Exporter::new(settings)?;
    let scheduler = exporter.scheduler().clone();
    let cycle = |label: &'static str| {
        let scheduler = scheduler.clone();
        async move {
            let t = Instant::now();
            let results = scheduler.run_all_once(Utc::now()).await;
            let took = t.elapsed();
            for (name, r) in &results {
                if let Err(e) = r {
                    println!("  {name} failed: {e}");
                }
            }
            println!("{label}: {}", ms(took));
            took
        }
    };
    if !reuse {
        let t = Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(
            GENERATE
                .replace("{n}", &n.to_string())
                .replace("{span}", &span_days.to_string()),
        ))
        .execute(&pool)
        .await
        .context("generating data")?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
        println!("generated in {}", ms(t.elapsed()));
        for (table,) in sqlx::query_as::<_, (String,)>(
            "SELECT relname || ': ' || n_live_tup FROM pg_stat_user_tables ORDER BY relname",
        )
        .fetch_all(&pool)
        .await?
        {
            println!("  {table}");
        }

        // 1. Naive dashboard SQL, no source indexes.
        let windows = ["1 day", "7 days", "30 days"];
        let t = Instant::now();
        for (name, sql) in NAIVE {
            let q = Instant::now();
            for w in windows {
                sqlx::query(*sql).bind(w).execute(&pool).await?;
            }
            println!("naive  {name:<28} {}", ms(q.elapsed()));
        }
        naive = t.elapsed();
        println!("naive cycle (sequential): {}", ms(naive));

        // 2. Collector without source indexes.
        unindexed = cycle("collector, no source indexes").await;
        // 3. With the documented indexes.
        let t = Instant::now();
        okr_exporter::db::create_source_indexes(&pool).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;
        for (line,) in sqlx::query_as::<_, (String,)>(
        "SELECT relname || ' relpages=' || relpages || ' relallvisible=' || relallvisible FROM pg_class WHERE relname IN ('followups', 'analytics_sessions')",
    )
    .fetch_all(&pool)
    .await?
    {
        println!("  {line}");
    }
        println!("source indexes built in {}", ms(t.elapsed()));
        for (line,) in sqlx::query_as::<_, (String,)>(
        "SELECT indexrelname || ': ' || pg_size_pretty(pg_relation_size(indexrelid)) FROM pg_stat_user_indexes WHERE indexrelname LIKE 'okr_%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?
    {
        println!("  {line}");
    }
    }
    let cold = cycle("collector, indexed, first cycle").await;
    // Steady state: what runs every collection interval (the windowed OKR
    // gauges, concurrently as in production); the all-time inventory and
    // the rollups run every 5 minutes and are timed apart.
    let per_interval: Vec<_> = scheduler
        .collectors()
        .iter()
        .filter(|c| c.default_interval().is_none())
        .cloned()
        .collect();
    let mut steady = Vec::new();
    for _ in 0..steady_runs {
        let t = Instant::now();
        let now = Utc::now();
        // Each collector on its own task, as the exporter runs them.
        scheduler.run_concurrently(&per_interval, now).await;
        let took = t.elapsed();
        println!(
            "collector, indexed, steady per-interval cycle: {}",
            ms(took)
        );
        steady.push(took);
    }
    steady.sort();
    let median = steady[steady.len() / 2];
    let rss_steady = peak_rss_kib();
    // Reconciliation: the same cycle when --reconcile-interval has passed
    // (each run 5 minutes of `now` after the previous one), where engagement
    // and mobile also recompute fully and compare with their state.
    let mut reconcile = Vec::new();
    let base = Utc::now();
    for k in 1..=steady_runs.clamp(1, 9) {
        let now = base
            + chrono::Duration::from_std(okr_exporter::config::DEFAULT_RECONCILE_INTERVAL)?
                * i32::try_from(k)?;
        let t = Instant::now();
        scheduler.run_concurrently(&per_interval, now).await;
        let took = t.elapsed();
        println!("collector, indexed, reconciliation cycle: {}", ms(took));
        reconcile.push(took);
    }
    reconcile.sort();
    let reconcile_median = reconcile[reconcile.len() / 2];
    let rss_reconcile = peak_rss_kib();
    // --reconcile-interval 0: every cycle recomputes fully, nothing to compare.
    let mut always = Settings::for_database(Some(
        DatabaseUrl::parse_arg(&db_url).map_err(anyhow::Error::msg)?,
    ));
    always.query_timeout = Duration::from_secs(120);
    always.reconcile_interval = Duration::ZERO;
    let always = Exporter::new(always)?;
    let always_collectors: Vec<_> = always
        .scheduler()
        .collectors()
        .iter()
        .filter(|c| c.default_interval().is_none())
        .cloned()
        .collect();
    let mut full_every_run = Vec::new();
    for _ in 0..steady_runs.clamp(1, 9) {
        let t = Instant::now();
        always
            .scheduler()
            .run_concurrently(&always_collectors, Utc::now())
            .await;
        let took = t.elapsed();
        println!(
            "collector, indexed, --reconcile-interval 0 cycle: {}",
            ms(took)
        );
        full_every_run.push(took);
    }
    full_every_run.sort();
    let full_every_run_median = full_every_run[full_every_run.len() / 2];
    drop(always);
    // Backfill: 90 days (--backfill-days) at 5-minute steps, every OKR as
    // of each instant, in one sweep per family, written to nowhere; against
    // the naive way, one full collection per instant, timed at a few
    // instants here and multiplied out.
    let backfill_days = arg("--backfill-days", 90);
    let mut backfill_settings = Settings::for_database(Some(
        DatabaseUrl::parse_arg(&db_url).map_err(anyhow::Error::msg)?,
    ));
    backfill_settings.reconcile_interval = Duration::ZERO;
    let until = Utc::now() - chrono::Duration::hours(3);
    let options = okr_exporter::backfill::BackfillOptions {
        from: until - chrono::Duration::days(i64::try_from(backfill_days)?),
        until,
        step: Duration::from_secs(300),
        labels: vec![("job".to_owned(), "okr-exporter".to_owned())],
    };
    // Resets this process's peak resident set, so VmHWM is the backfill's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_backfill = current_rss_kib();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db_url).await?;
    let t = Instant::now();
    let summary = okr_exporter::backfill::write_history(
        &mut conn,
        &backfill_settings,
        &options,
        &mut std::io::sink(),
        |line| println!("  {line}"),
    )
    .await?;
    let backfill_took = t.elapsed();
    let rss_backfill = peak_rss_kib();
    println!(
        "backfill {backfill_days} days: {} instants x {} windows, {} series, {} samples in {}; peak RSS {} MiB (resident before: {} MiB)",
        summary.steps,
        backfill_settings.windows.0.len(),
        summary.series,
        summary.samples,
        ms(backfill_took),
        rss_backfill / 1024,
        rss_before_backfill / 1024,
    );
    let naive_backfill = Exporter::new(backfill_settings)?;
    let naive_collectors: Vec<_> = naive_backfill
        .scheduler()
        .collectors()
        .iter()
        .filter(|c| !c.writes())
        .cloned()
        .collect();
    let mut per_instant = Vec::new();
    for k in 0..5_i32 {
        let at = options.from + chrono::Duration::days(17) * k;
        let t = Instant::now();
        naive_backfill
            .scheduler()
            .run_concurrently(&naive_collectors, at)
            .await;
        per_instant.push(t.elapsed());
    }
    per_instant.sort();
    let naive_instant = per_instant[per_instant.len() / 2];
    let naive_total = naive_instant.mul_f64(summary.steps as f64);
    println!(
        "naive backfill: one full collection per instant, median {} x {} instants = {:.0} s; sweep is {:.0}x faster",
        ms(naive_instant),
        summary.steps,
        naive_total.as_secs_f64(),
        naive_total.as_secs_f64() / backfill_took.as_secs_f64()
    );
    drop(naive_backfill);

    // Per collector, one at a time, warm state.
    // One minute after the last reconciliation: the incremental path.
    let after = base
        + chrono::Duration::from_std(okr_exporter::config::DEFAULT_RECONCILE_INTERVAL)?
            * i32::try_from(reconcile.len())?
        + chrono::Duration::minutes(1);
    for c in scheduler.collectors() {
        let t = Instant::now();
        let _ = scheduler.run_one(c.as_ref(), after).await;
        println!("  {:<14} {}", c.name(), ms(t.elapsed()));
    }
    // Plans of one steady cycle, through auto_explain (embedded server only).
    if let Some(pg) = &embedded {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain';
             ALTER DATABASE {db} SET auto_explain.log_min_duration = 0;
             ALTER DATABASE {db} SET auto_explain.log_analyze = on;
             ALTER DATABASE {db} SET auto_explain.log_buffers = on;
             ALTER DATABASE {db} SET auto_explain.log_timing = off;"
        )))
        .execute(&pool)
        .await?;
        let mut settings = Settings::for_database(Some(
            DatabaseUrl::parse_arg(&db_url).map_err(anyhow::Error::msg)?,
        ));
        settings.query_timeout = Duration::from_secs(120);
        let explained = Exporter::new(settings)?;
        let log = pg.dir().join("postgres.log");
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        explained.scheduler().run_all_once(Utc::now()).await;
        let text = std::fs::read(&log).unwrap_or_default();
        let start = usize::try_from(before).unwrap_or(0).min(text.len());
        println!("## plans (auto_explain)");
        println!("{}", String::from_utf8_lossy(&text[start..]));
    }
    println!(
        "summary n={n}: naive {} | unindexed {} | indexed cold {} | per-interval steady (median of {steady_runs}) {} | reconciliation cycle (median of {}) {} | --reconcile-interval 0 cycle (median of {}) {} | naive/steady = {:.1}x | peak RSS after steady {} MiB, after reconciliation {} MiB, at end {} MiB",
        ms(naive),
        ms(unindexed),
        ms(cold),
        ms(median),
        reconcile.len(),
        ms(reconcile_median),
        full_every_run.len(),
        ms(full_every_run_median),
        naive.as_secs_f64() / median.as_secs_f64(),
        rss_steady / 1024,
        rss_reconcile / 1024,
        peak_rss_kib() / 1024,
    );
    Ok(())
}
