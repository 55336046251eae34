//! The incremental collectors equal a full recomputation on random data,
//! including rows committed out of id order, late rows with old timestamps,
//! sessions dated in the future, and follow-ups published after the fact;
//! and when changes the incremental reads cannot see happen (sessions
//! inserted with low ids, updated, deleted; follow-ups hard-deleted), the
//! served values equal the full recomputation again by the next
//! reconciliation, which comes within `--reconcile-interval`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use okr_exporter::collector::{
    CollectContext, EngagementCollector, Families, MobileCollector, OkrCollector,
};
use okr_exporter::config::{Settings, parse_windows};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::support::prepared_db;

type Series = BTreeMap<(String, BTreeSet<(String, String)>), f64>;

fn flatten(families: Families) -> Series {
    let mut m = BTreeMap::new();
    for f in families {
        for (labels, value) in f.series() {
            let labels = labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            m.insert((f.name().to_owned(), labels), value);
        }
    }
    m
}

async fn collect(
    c: &dyn OkrCollector,
    conn: &mut PgConnection,
    ctx: &CollectContext,
) -> (Series, u64) {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await
        .unwrap();
    let out = c.collect(conn, ctx).await.unwrap();
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    (flatten(out.families), out.corrections)
}

fn assert_close(a: &Series, b: &Series, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: series differ"
    );
    for (k, v) in a {
        assert!(
            (v - b[k]).abs() < 1e-9,
            "{what}: {k:?} incremental {v} vs full {}",
            b[k]
        );
    }
}

const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "smart-tv", "Mobile"];

async fn insert_sessions(
    conn: &mut PgConnection,
    rng: &mut StdRng,
    ids: &[Uuid],
    now: DateTime<Utc>,
    n: usize,
) {
    for _ in 0..n {
        let f = ids[rng.random_range(0..ids.len())];
        // Mostly recent, some late rows dated weeks back, some in the future.
        let offset = match rng.random_range(0..10) {
            0 => Duration::minutes(rng.random_range(1..180)),
            1 => -Duration::days(rng.random_range(8..40)),
            _ => -Duration::minutes(rng.random_range(0..6 * 60)),
        };
        sqlx::query(
            "INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(f)
        .bind(format!("v{}", rng.random_range(0..25)))
        .bind(DEVICES[rng.random_range(0..DEVICES.len())])
        .bind(now + offset)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// Changes the incremental reads cannot see; returns what was done.
async fn hidden_change(
    conn: &mut PgConnection,
    rng: &mut StdRng,
    ids: &mut Vec<Uuid>,
    now: DateTime<Utc>,
    low_id: &mut i64,
) -> &'static str {
    match rng.random_range(0..5) {
        0 => {
            // Privacy erasure: every session of one visitor.
            sqlx::query("DELETE FROM analytics_sessions WHERE visitor_id = $1")
                .bind(format!("v{}", rng.random_range(0..25)))
                .execute(&mut *conn)
                .await
                .unwrap();
            "erasure"
        }
        1 => {
            // A device classification fixed in place.
            sqlx::query(
                "UPDATE analytics_sessions SET device_type = $1
                 WHERE id = (SELECT id FROM analytics_sessions ORDER BY random() LIMIT 1)",
            )
            .bind(DEVICES[rng.random_range(0..DEVICES.len())])
            .execute(&mut *conn)
            .await
            .unwrap();
            "device update"
        }
        2 => {
            // Sessions with ids below every id read so far (an import, a
            // cached sequence), some started days ago.
            for _ in 0..rng.random_range(1..4) {
                *low_id += 1;
                sqlx::query(
                    "INSERT INTO analytics_sessions (id, followup_id, visitor_id, device_type, started_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(*low_id)
                .bind(ids[rng.random_range(0..ids.len())])
                .bind(format!("v{}", rng.random_range(0..40)))
                .bind(DEVICES[rng.random_range(0..DEVICES.len())])
                .bind(now - Duration::minutes(rng.random_range(0..5 * 24 * 60)))
                .execute(&mut *conn)
                .await
                .unwrap();
            }
            "low ids"
        }
        3 => {
            // A session moved to another visitor.
            sqlx::query(
                "UPDATE analytics_sessions SET visitor_id = $1
                 WHERE id = (SELECT id FROM analytics_sessions ORDER BY random() LIMIT 1)",
            )
            .bind(format!("w{}", rng.random_range(0..5)))
            .execute(&mut *conn)
            .await
            .unwrap();
            "visitor update"
        }
        _ => {
            // A published follow-up hard-deleted with its sessions.
            let victim = ids.swap_remove(rng.random_range(0..ids.len()));
            sqlx::query("DELETE FROM analytics_sessions WHERE followup_id = $1")
                .bind(victim)
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("DELETE FROM followups WHERE id = $1")
                .bind(victim)
                .execute(&mut *conn)
                .await
                .unwrap();
            "hard delete"
        }
    }
}

#[tokio::test]
async fn incremental_collectors_equal_full_recomputation() {
    let db = prepared_db().await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut main = PgConnection::connect(&db.url).await.unwrap();
    let mut writer = PgConnection::connect(&db.url).await.unwrap();
    let mut slow = PgConnection::connect(&db.url).await.unwrap();
    // Ids 1..1_000_000 stay free for rows inserted "below the watermark".
    sqlx::query("ALTER SEQUENCE analytics_sessions_id_seq RESTART WITH 1000000")
        .execute(&mut writer)
        .await
        .unwrap();
    let mut low_id = 0_i64;
    let reconcile = Duration::hours(2);
    let mut settings = Settings::for_database(None);
    settings.windows = parse_windows("1h,1d,7d,30d").unwrap();
    settings.company_top_n = 3;
    settings.reconcile_interval = reconcile.to_std().unwrap();

    let engagement = EngagementCollector::default();
    let mobile = MobileCollector::default();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let mut slow_open = false;
    // Per collector: a hidden change since its last full run; when that was.
    let mut dirty = [false; 2];
    let mut last_full: [Option<DateTime<Utc>>; 2] = [None; 2];
    let mut corrections = [0_u64; 2];
    let mut verified_dirty = [0; 2];

    for round in 0..60 {
        now += Duration::minutes(rng.random_range(1..90));
        // New follow-ups, some published now, some drafts, some published in the future.
        for _ in 0..rng.random_range(1..6) {
            let id = Uuid::new_v4();
            let created = now - Duration::days(rng.random_range(0..35));
            let published = match rng.random_range(0..4) {
                0 => None,
                1 => Some(now + Duration::minutes(rng.random_range(1..120))),
                _ => Some(created + Duration::minutes(rng.random_range(1..30))),
            };
            sqlx::query(
                "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region, status, created_at, published_at)
                 VALUES ($1, $2, $3, $4, $5, 'published', $6, $7)",
            )
            .bind(id)
            .bind(format!("c{}", rng.random_range(0..5)))
            .bind(["A", "B", "C", "D", ""][rng.random_range(0..5)])
            .bind([Some("demo"), None, Some("renewal")][rng.random_range(0..3)])
            .bind(["EMEA", "NA"][rng.random_range(0..2)])
            .bind(created)
            .bind(published)
            .execute(&mut writer)
            .await
            .unwrap();
            ids.push(id);
        }
        // A draft gets published after the fact.
        if round % 4 == 1 {
            sqlx::query("UPDATE followups SET published_at = $1 WHERE published_at IS NULL AND id = (SELECT id FROM followups WHERE published_at IS NULL LIMIT 1)")
                .bind(now - Duration::minutes(5))
                .execute(&mut writer)
                .await
                .unwrap();
        }
        // A transaction takes ids first and commits after others (out of order).
        if !slow_open && round % 3 == 0 {
            sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
            insert_sessions(&mut slow, &mut rng, &ids, now, 5).await;
            slow_open = true;
        }
        let n = rng.random_range(0..15);
        insert_sessions(&mut writer, &mut rng, &ids, now, n).await;
        if slow_open && round % 3 == 2 {
            sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
            slow_open = false;
        }
        // Changes the watermark cannot see, in a third of the rounds.
        let hidden = if !slow_open && round % 3 == 2 && ids.len() > 2 {
            Some(hidden_change(&mut writer, &mut rng, &mut ids, now, &mut low_id).await)
        } else {
            None
        };
        if hidden.is_some() {
            dirty = [true; 2];
        }

        let ctx = CollectContext::new(now, &settings);
        for (k, (inc, name)) in [
            (&engagement as &dyn OkrCollector, "engagement"),
            (&mobile, "mobile"),
        ]
        .into_iter()
        .enumerate()
        {
            let before = if k == 0 {
                engagement.incremental_runs()
            } else {
                mobile.incremental_runs()
            };
            let (served, corrected) = collect(inc, &mut main, &ctx).await;
            let after = if k == 0 {
                engagement.incremental_runs()
            } else {
                mobile.incremental_runs()
            };
            let (full, _) = if k == 0 {
                collect(&EngagementCollector::default(), &mut main, &ctx).await
            } else {
                collect(&MobileCollector::default(), &mut main, &ctx).await
            };
            let what = format!("round {round} {name} (hidden change: {hidden:?})");
            if after == before {
                // A full run (reconciliation): exact whatever happened.
                assert_close(&served, &full, &what);
                if dirty[k] {
                    verified_dirty[k] += 1;
                }
                dirty[k] = false;
                last_full[k] = Some(now);
                corrections[k] += corrected;
            } else {
                // Incremental: exact unless a hidden change is pending, and
                // never more than the reconcile interval after a full run.
                assert_eq!(corrected, 0, "{what}");
                let since = last_full[k].map(|t| now - t);
                assert!(
                    since.is_some_and(|d| d < reconcile),
                    "{what}: incremental run {since:?} after the last full one"
                );
                if !dirty[k] {
                    assert_close(&served, &full, &what);
                }
            }
        }
    }
    // Most runs took the incremental path; reconciliations found and
    // corrected what the hidden changes did.
    for (k, inc) in [engagement.incremental_runs(), mobile.incremental_runs()]
        .into_iter()
        .enumerate()
    {
        assert!(inc >= 20, "collector {k}: {inc} incremental runs");
        assert!(verified_dirty[k] >= 3, "collector {k}: {verified_dirty:?}");
        assert!(corrections[k] > 0, "collector {k}: {corrections:?}");
    }
}
