//! OKR collector correctness on hand-built fixtures: every gauge of every
//! window is compared with a second, plain-Rust computation over the same
//! fixture rows (filters and counts, no SQL), plus a few values by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use okr_exporter::collector::{self, CollectContext, Families};
use okr_exporter::config::{Settings, parse_windows};
use sqlx::PgPool;

use crate::reference::{Fixture, assert_same, expected, f, flatten, key, load, s};
use crate::support::{prepared_db, start_exporter};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap()
}
const US: i64 = 1; // microseconds
fn us(n: i64) -> chrono::Duration {
    chrono::Duration::microseconds(n)
}
fn d(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}
fn h(n: i64) -> chrono::Duration {
    chrono::Duration::hours(n)
}

fn fixture() -> Fixture {
    let n = t0();
    let followups = vec![
        // 0: created exactly at the 1d edge (outside 1d), published just inside 1d.
        f(
            "c1",
            Some("Acme"),
            Some("demo"),
            None,
            "published",
            n - d(1),
            Some(n - d(1) + us(US)),
            None,
        ),
        // 1: deleted draft.
        f(
            "c1",
            Some("Acme"),
            Some("demo"),
            Some("EMEA"),
            "deleted",
            n - h(2),
            None,
            Some(n - h(1)),
        ),
        // 2: published then deleted; empty meeting type, NULL company.
        f(
            "c1",
            None,
            Some(""),
            Some("EMEA"),
            "deleted",
            n - d(3),
            Some(n - d(2)),
            Some(n - d(1)),
        ),
        // 3: open draft.
        f(
            "c2",
            Some("Beta"),
            Some("discovery"),
            Some("NA"),
            "draft",
            n - d(10),
            None,
            None,
        ),
        // 4: created outside 30d, published just inside 30d.
        f(
            "c2",
            Some("Beta"),
            Some("discovery"),
            Some("NA"),
            "published",
            n - d(31),
            Some(n - d(29)),
            None,
        ),
        // 5: created exactly now (inside), published in the future (outside).
        f(
            "c3",
            Some("Gamma"),
            None,
            Some(""),
            "published",
            n,
            Some(n + us(1)),
            None,
        ),
        // 6: created just inside 7d, published 6 days ago.
        f(
            "c3",
            Some("Beta"),
            Some("demo"),
            Some("APAC"),
            "published",
            n - d(7) + us(1),
            Some(n - d(6)),
            None,
        ),
        // 7: everything 40 days ago.
        f(
            "c4",
            Some("Delta"),
            Some("renewal"),
            Some("NA"),
            "published",
            n - d(40),
            Some(n - d(40)),
            None,
        ),
        // 8: published exactly at the 7d edge (outside 7d, inside 30d).
        f(
            "c5",
            Some("Gamma"),
            Some("renewal"),
            Some("LATAM"),
            "published",
            n - d(8),
            Some(n - d(7)),
            None,
        ),
        // 9: draft with an unknown status value; created exactly at the 30d edge.
        f(
            "c5",
            Some("Acme"),
            None,
            None,
            "archived",
            n - d(30),
            None,
            None,
        ),
    ];
    let sessions = vec![
        (0, "v1", "mobile", n - h(1)),
        (0, "v1", "desktop", n - h(1) + us(5)),
        (0, "v2", "tablet", n - h(2)),
        (2, "v3", "smart-tv", n - d(1)),
        (2, "v4", "mobile", n + us(1)),
        (6, "v5", "mobile", n - d(6) + h(1)),
        (6, "v1", "Mobile", n - d(5)),
        (4, "v6", "desktop", n - d(29) + h(1)),
        (7, "v7", "desktop", n - d(35)),
        (8, "v8", "mobile", n),
    ];
    let creation = vec![
        (n - h(3), 100.0),
        (n - d(1) + us(1), 600.0),
        (n - d(1), 50.0),
        (n - d(2), 300.0),
        (n - d(6), 1000.0),
        (n - d(20), 420.5),
        (n - d(45), 10.0),
        (n + us(1), 5.0),
    ];
    let sessions = sessions
        .into_iter()
        .map(|(i, visitor, device, started)| s(followups[i].id, visitor, device, started))
        .collect();
    let actions = vec![
        (0, n - d(1) + us(1), n - h(5)),
        (2, n - d(2), n - d(1)),
        (6, n - d(6), n - d(1) - us(1)),
        (8, n - d(7), n),
        (7, n - d(40), n - d(31)),
    ]
    .into_iter()
    .map(|(i, published, action)| (followups[i].id, published, action))
    .collect();
    Fixture {
        followups,
        sessions,
        creation,
        actions,
    }
}

async fn collect_all(pool: &PgPool, ctx: &CollectContext) -> Families {
    let mut conn = pool.acquire().await.unwrap();
    let mut out = Vec::new();
    for c in collector::all_collectors() {
        if c.writes() {
            continue;
        }
        out.extend(
            c.collect(&mut conn, ctx)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", c.name()))
                .families,
        );
    }
    out
}

fn ctx_for(windows: &str, top_n: usize) -> CollectContext {
    let mut s = Settings::for_database(None);
    s.windows = parse_windows(windows).unwrap();
    s.company_top_n = top_n;
    CollectContext::new(t0(), &s)
}

#[tokio::test]
async fn every_gauge_matches_an_independent_computation() {
    let db = prepared_db().await;
    let fx = fixture();
    load(&db.pool, &fx).await;
    for top_n in [20, 1] {
        let ctx = ctx_for("1d,7d,30d", top_n);
        let actual = flatten(&collect_all(&db.pool, &ctx).await);
        let exp = expected(
            &fx,
            t0(),
            &[("1d", d(1)), ("7d", d(7)), ("30d", d(30))],
            &ctx.targets,
            top_n,
        );
        assert_same(&actual, &exp);
    }
}

#[tokio::test]
async fn hand_checked_values_and_edges() {
    let db = prepared_db().await;
    let fx = fixture();
    load(&db.pool, &fx).await;
    let ctx = ctx_for("1d,7d,30d,2h", 20);
    let m = flatten(&collect_all(&db.pool, &ctx).await);
    let v = |name: &str, labels: &[(&str, &str)]| m.get(&key(name, labels)).copied();
    // 1d: created in (now-1d, now]: rows 1 (deleted draft) and 5 (published) -> 1/2.
    assert_eq!(
        v("okr_draft_completion_ratio", &[("window", "1d")]),
        Some(0.5)
    );
    assert_eq!(
        v("okr_drafts", &[("window", "1d"), ("outcome", "deleted")]),
        Some(1.0)
    );
    // 1d engagement: only row 0 is published in 1d, with visitors v1 and v2.
    assert_eq!(v("okr_engagement_ratio", &[("window", "1d")]), Some(2.0));
    // Region NULL of row 0 becomes "unknown".
    assert_eq!(
        v(
            "okr_engagement_by_creator_region_ratio",
            &[("window", "1d"), ("creator_region", "unknown")]
        ),
        Some(2.0)
    );
    // 1d creation time: 100 and 600 (the 50 s row is exactly at the edge) -> P50 = 350.
    assert_eq!(
        v(
            "okr_creation_time_seconds",
            &[("window", "1d"), ("quantile", "0.5")]
        ),
        Some(350.0)
    );
    assert_eq!(
        v("okr_creation_time_within_target_ratio", &[("window", "1d")]),
        Some(1.0)
    );
    // 1d sessions: v1 mobile, v1 desktop, v2 tablet, v8 mobile (at now); v3 at the edge and v4 in the future are out.
    assert_eq!(v("okr_mobile_views_ratio", &[("window", "1d")]), Some(0.5));
    // "Mobile" (capitalised) counts as other.
    assert_eq!(
        v("okr_views", &[("window", "7d"), ("device_type", "other")]),
        Some(2.0)
    );
    // 2h window: no creation-time row -> quantiles and ratio absent, count 0.
    assert_eq!(
        v("okr_creation_time_samples", &[("window", "2h")]),
        Some(0.0)
    );
    assert_eq!(
        v(
            "okr_creation_time_seconds",
            &[("window", "2h"), ("quantile", "0.8")]
        ),
        None
    );
    assert_eq!(
        v("okr_creation_time_within_target_ratio", &[("window", "2h")]),
        None
    );
    assert_eq!(v("okr_engagement_ratio", &[("window", "2h")]), None);
    assert_eq!(v("okr_followups_published", &[("window", "2h")]), Some(0.0));
    // Created in 7d: rows 1, 2 (c1) and 5, 6 (c3); row 3 (c2) is 10 days old -> both repeat.
    assert_eq!(
        v("okr_repeat_creators_ratio", &[("window", "7d")]),
        Some(1.0)
    );
    // 30d: c1 (rows 1, 2), c2 (row 3), c3 (rows 5, 6); row 9 is exactly at the edge -> 2 of 3.
    assert_eq!(
        v("okr_repeat_creators_ratio", &[("window", "30d")]).map(|x| (x * 3.0).round()),
        Some(2.0)
    );
    // Status "archived" is none of the three exported statuses.
    assert_eq!(v("okr_followups", &[("status", "draft")]), Some(1.0));
}

#[tokio::test]
async fn one_failing_or_slow_query_does_not_blank_the_others() {
    let db = prepared_db().await;
    load(&db.pool, &fixture()).await;
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.query_timeout = Duration::from_millis(300);
    let exporter = start_exporter(settings).await;
    let results = exporter.scheduler.run_all_once(Utc::now()).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");

    // Hold a lock that blocks the creation-time query, and break next_action.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE okr_creation_time IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE okr_next_actions RENAME TO okr_next_actions_gone")
        .execute(&db.pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let results: BTreeMap<&str, bool> = exporter
        .scheduler
        .run_all_once(Utc::now())
        .await
        .into_iter()
        .map(|(n, r)| (n, r.is_ok()))
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the slow query was cut by its timeout"
    );
    assert!(
        !results["creation_time"] && !results["next_action"],
        "{results:?}"
    );
    assert!(
        results["drafts"] && results["engagement"] && results["mobile"],
        "{results:?}"
    );
    blocker.rollback().await.unwrap();

    let (_, metrics) = exporter.get("/metrics").await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("okr_exporter_collection_errors_total{collector=\"creation_time\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        value("okr_exporter_collection_errors_total{collector=\"drafts\"}"),
        0.0,
        "{metrics}"
    );
    // Last good values are kept (within the staleness limit), never replaced by the failure.
    assert!(
        metrics.contains("okr_next_actions{window=\"7d\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("okr_exporter_up 1"), "{metrics}");
    exporter.stop().await;
}

#[tokio::test]
async fn stale_values_are_dropped() {
    let db = prepared_db().await;
    load(&db.pool, &fixture()).await;
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.max_staleness = Duration::from_millis(600);
    settings.collect_interval = Duration::from_millis(100);
    let exporter = start_exporter(settings).await;
    // Stop the background loops from refreshing: break every source table.
    exporter.scheduler.run_all_once(Utc::now()).await;
    let (_, before) = exporter.get("/metrics").await;
    assert!(before.contains("okr_drafts{"), "{before}");
    // One statement (one transaction, one lock) at a time: renaming them
    // all in one transaction could deadlock with a running collector.
    for sql in [
        "ALTER TABLE followups RENAME TO followups_gone",
        "ALTER TABLE analytics_sessions RENAME TO sessions_gone",
        "ALTER TABLE okr_creation_time RENAME TO ct_gone",
        "ALTER TABLE okr_next_actions RENAME TO na_gone",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, after) = exporter.get("/metrics").await;
    assert!(
        !after.contains("okr_drafts{"),
        "stale values dropped: {after}"
    );
    assert!(after.contains("okr_target_engagement_ratio"), "{after}");
    exporter.stop().await;
}

#[tokio::test]
async fn two_replicas_write_each_rollup_day_once() {
    let db = prepared_db().await;
    let fx = fixture();
    load(&db.pool, &fx).await;
    let now = t0();
    let a = Arc::new(start_exporter(Settings::for_database(Some(db.database_url()))).await);
    let b = Arc::new(start_exporter(Settings::for_database(Some(db.database_url()))).await);
    let rollups = collector::all_collectors()
        .into_iter()
        .find(|c| c.name() == "rollups")
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ex = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let c = Arc::clone(&rollups);
        tasks.push(tokio::spawn(async move {
            ex.scheduler.run_one(c.as_ref(), now).await.is_ok()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "rollup run failed");
    }
    // Reference per UTC day of created_at within the recomputed range.
    let start = okr_exporter::collector::rollup_start(now, Duration::from_secs(30 * 86_400));
    let mut expected: BTreeMap<chrono::NaiveDate, (i64, i64)> = BTreeMap::new();
    for r in &fx.followups {
        if r.created >= start && r.created <= now {
            let e = expected.entry(r.created.date_naive()).or_default();
            e.0 += 1;
            e.1 += i64::from(r.published.is_some());
        }
    }
    let rows: Vec<(chrono::NaiveDate, i64, i64)> =
        sqlx::query_as("SELECT day, created, published FROM okr_draft_completions ORDER BY day")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let got: BTreeMap<_, _> = rows.into_iter().map(|(d, c, p)| (d, (c, p))).collect();
    assert_eq!(got, expected);
}

/// The settings `args` (after `okr-exporter serve`) resolve to.
fn settings_from_args(args: &[&str]) -> Settings {
    use clap::Parser;
    let mut all = vec!["okr-exporter", "serve"];
    all.extend_from_slice(args);
    okr_exporter::config::Cli::try_parse_from(all)
        .expect("valid flags")
        .common
        .resolve()
        .expect("valid settings")
}

/// Whether `/metrics` text has a series or HELP/TYPE line of family `name`.
fn has_family(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        let l = l
            .strip_prefix("# HELP ")
            .or_else(|| l.strip_prefix("# TYPE "))
            .unwrap_or(l);
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(['{', ' ']))
    })
}

#[tokio::test]
async fn a_disabled_collector_has_no_series_and_the_others_do() {
    let db = prepared_db().await;
    load(&db.pool, &fixture()).await;
    // Engagement off by flag, mobile off in the file; the others as registered.
    let config = std::env::temp_dir().join(format!(
        "okr-exporter-disabled-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&config, "[collectors]\nmobile = false\ndrafts = true\n").unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let mut settings = settings_from_args(&[
        "--database-url",
        &db.url,
        "--config",
        &config_arg,
        "--no-collector.engagement",
    ]);
    let _ = std::fs::remove_file(&config);
    // No background poll during the test: it runs the collectors by hand.
    settings.collect_interval = Duration::from_secs(3600);
    settings.max_staleness = Duration::from_secs(3600);
    let exporter = start_exporter(settings).await;

    let results = exporter.scheduler.run_all_once(t0()).await;
    let ran: Vec<&str> = results.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        ran,
        [
            "creation_time",
            "drafts",
            "next_action",
            "adoption",
            "inventory",
            "rollups"
        ]
    );
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let (status, metrics) = exporter.get("/metrics").await;
    assert_eq!(status, 200);
    for absent in [
        "okr_engagement_ratio",
        "okr_engaged_followups_ratio",
        "okr_engagement_by_company_ratio",
        "okr_followups_published",
        "okr_mobile_views_ratio",
        "okr_views",
    ] {
        assert!(!has_family(&metrics, absent), "{absent} served:\n{metrics}");
    }
    for disabled in ["engagement", "mobile"] {
        let label = format!("collector=\"{disabled}\"");
        assert!(
            !metrics.contains(&label),
            "self-metrics of {disabled}:\n{metrics}"
        );
    }
    for present in ["okr_drafts", "okr_followups", "okr_next_actions"] {
        assert!(
            has_family(&metrics, present),
            "{present} missing:\n{metrics}"
        );
    }
    // At least the run above; the background loop's first poll (jittered
    // by up to two seconds) may have run too.
    for enabled in ran {
        let prefix = format!("okr_exporter_collections_total{{collector=\"{enabled}\"}} ");
        let runs = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(matches!(runs, Some(1..)), "{prefix}:\n{metrics}");
    }
    exporter.stop().await;

    // The last of a collector's two flags wins: mobile serves again.
    let mut settings = settings_from_args(&[
        "--database-url",
        &db.url,
        "--no-collector.mobile",
        "--collector.mobile",
    ]);
    settings.collect_interval = Duration::from_secs(3600);
    let exporter = start_exporter(settings).await;
    let results = exporter.scheduler.run_all_once(t0()).await;
    assert_eq!(results.len(), collector::all_collectors().len());
    let (_, metrics) = exporter.get("/metrics").await;
    assert!(has_family(&metrics, "okr_mobile_views_ratio"), "{metrics}");
    assert!(has_family(&metrics, "okr_engagement_ratio"), "{metrics}");
    exporter.stop().await;
}
