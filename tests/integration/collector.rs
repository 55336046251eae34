//! OKR collector correctness on hand-built fixtures: every gauge of every
//! window is compared with a second, plain-Rust computation over the same
//! fixture rows (filters and counts, no SQL), plus a few values by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use okr_exporter::collector::{self, CollectContext, Family};
use okr_exporter::config::{Settings, Targets, parse_windows};
use sqlx::PgPool;
use uuid::Uuid;

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

#[derive(Clone)]
struct F {
    id: Uuid,
    creator: &'static str,
    company: Option<&'static str>,
    meeting: Option<&'static str>,
    region: Option<&'static str>,
    status: &'static str,
    created: DateTime<Utc>,
    published: Option<DateTime<Utc>>,
    deleted: Option<DateTime<Utc>>,
}

struct S {
    followup: usize,
    visitor: &'static str,
    device: &'static str,
    started: DateTime<Utc>,
}

struct Fixture {
    followups: Vec<F>,
    sessions: Vec<S>,
    /// (published_at, duration)
    creation: Vec<(DateTime<Utc>, f64)>,
    /// (followup index, published_at, action_at)
    actions: Vec<(usize, DateTime<Utc>, DateTime<Utc>)>,
}

#[allow(clippy::too_many_arguments)]
fn f(
    creator: &'static str,
    company: Option<&'static str>,
    meeting: Option<&'static str>,
    region: Option<&'static str>,
    status: &'static str,
    created: DateTime<Utc>,
    published: Option<DateTime<Utc>>,
    deleted: Option<DateTime<Utc>>,
) -> F {
    F {
        id: Uuid::new_v4(),
        creator,
        company,
        meeting,
        region,
        status,
        created,
        published,
        deleted,
    }
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
        S {
            followup: 0,
            visitor: "v1",
            device: "mobile",
            started: n - h(1),
        },
        S {
            followup: 0,
            visitor: "v1",
            device: "desktop",
            started: n - h(1) + us(5),
        },
        S {
            followup: 0,
            visitor: "v2",
            device: "tablet",
            started: n - h(2),
        },
        S {
            followup: 2,
            visitor: "v3",
            device: "smart-tv",
            started: n - d(1),
        },
        S {
            followup: 2,
            visitor: "v4",
            device: "mobile",
            started: n + us(1),
        },
        S {
            followup: 6,
            visitor: "v5",
            device: "mobile",
            started: n - d(6) + h(1),
        },
        S {
            followup: 6,
            visitor: "v1",
            device: "Mobile",
            started: n - d(5),
        },
        S {
            followup: 4,
            visitor: "v6",
            device: "desktop",
            started: n - d(29) + h(1),
        },
        S {
            followup: 7,
            visitor: "v7",
            device: "desktop",
            started: n - d(35),
        },
        S {
            followup: 8,
            visitor: "v8",
            device: "mobile",
            started: n,
        },
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
    let actions = vec![
        (0, n - d(1) + us(1), n - h(5)),
        (2, n - d(2), n - d(1)),
        (6, n - d(6), n - d(1) - us(1)),
        (8, n - d(7), n),
        (7, n - d(40), n - d(31)),
    ];
    Fixture {
        followups,
        sessions,
        creation,
        actions,
    }
}

async fn load(pool: &PgPool, fx: &Fixture) {
    for r in &fx.followups {
        sqlx::query(
            "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region, status, created_at, published_at, deleted_at)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(r.id)
        .bind(r.creator)
        .bind(r.company)
        .bind(r.meeting)
        .bind(r.region)
        .bind(r.status)
        .bind(r.created)
        .bind(r.published)
        .bind(r.deleted)
        .execute(pool)
        .await
        .unwrap();
    }
    for s in &fx.sessions {
        sqlx::query(
            "INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at) VALUES ($1,$2,$3,$4)",
        )
        .bind(fx.followups[s.followup].id)
        .bind(s.visitor)
        .bind(s.device)
        .bind(s.started)
        .execute(pool)
        .await
        .unwrap();
    }
    for (published, dur) in &fx.creation {
        sqlx::query(
            "INSERT INTO okr_creation_time (followup_id, published_at, duration_seconds) VALUES ($1,$2,$3)",
        )
        .bind(Uuid::new_v4())
        .bind(published)
        .bind(dur)
        .execute(pool)
        .await
        .unwrap();
    }
    for (i, published, action) in &fx.actions {
        let secs = (*action - *published).num_microseconds().unwrap() as f64 / 1e6;
        sqlx::query(
            "INSERT INTO okr_next_actions (followup_id, action_at, published_at, days_to_action) VALUES ($1,$2,$3,$4)",
        )
        .bind(fx.followups[*i].id)
        .bind(action)
        .bind(published)
        .bind(secs / 86_400.0)
        .execute(pool)
        .await
        .unwrap();
    }
}

type Key = (String, BTreeSet<(String, String)>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// percentile_cont by its definition: linear interpolation between the
/// sorted values at position q·(n−1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn norm(v: Option<&str>) -> String {
    match v {
        None | Some("") => "unknown".to_owned(),
        Some(s) => s.to_owned(),
    }
}

/// The reference computation: DESIGN §4 read literally, over the fixture.
fn expected(
    fx: &Fixture,
    windows: &[(&str, i64)],
    targets: &Targets,
    top_n: usize,
) -> BTreeMap<Key, f64> {
    let n = t0();
    let mut m = BTreeMap::new();
    let inw = |t: DateTime<Utc>, days: i64| t > n - d(days) && t <= n;
    for &(w, days) in windows {
        let wl = [("window", w)];
        // creation time
        let mut durs: Vec<f64> = fx
            .creation
            .iter()
            .filter(|(p, _)| inw(*p, days))
            .map(|(_, x)| *x)
            .collect();
        durs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        m.insert(key("okr_creation_time_samples", &wl), durs.len() as f64);
        if !durs.is_empty() {
            for q in ["0.5", "0.8", "0.95"] {
                m.insert(
                    key(
                        "okr_creation_time_seconds",
                        &[("window", w), ("quantile", q)],
                    ),
                    percentile(&durs, q.parse().unwrap()),
                );
            }
            let ok = durs
                .iter()
                .filter(|x| **x <= targets.creation_time_p80_seconds)
                .count();
            m.insert(
                key("okr_creation_time_within_target_ratio", &wl),
                ok as f64 / durs.len() as f64,
            );
        }
        // drafts
        let created: Vec<&F> = fx
            .followups
            .iter()
            .filter(|r| inw(r.created, days))
            .collect();
        let published = created.iter().filter(|r| r.published.is_some()).count();
        let deleted = created
            .iter()
            .filter(|r| r.published.is_none() && r.deleted.is_some())
            .count();
        let open = created.len() - published - deleted;
        if !created.is_empty() {
            m.insert(
                key("okr_draft_completion_ratio", &wl),
                published as f64 / created.len() as f64,
            );
        }
        for (o, v) in [
            ("published", published),
            ("deleted", deleted),
            ("open", open),
        ] {
            m.insert(
                key("okr_drafts", &[("window", w), ("outcome", o)]),
                v as f64,
            );
        }
        // engagement
        let fset: Vec<(usize, &F)> = fx
            .followups
            .iter()
            .enumerate()
            .filter(|(_, r)| r.published.is_some_and(|p| inw(p, days)))
            .collect();
        let visitors = |i: usize| -> usize {
            fx.sessions
                .iter()
                .filter(|s| s.followup == i && s.started <= n)
                .map(|s| s.visitor)
                .collect::<BTreeSet<_>>()
                .len()
        };
        m.insert(key("okr_followups_published", &wl), fset.len() as f64);
        if !fset.is_empty() {
            let total: usize = fset.iter().map(|(i, _)| visitors(*i)).sum();
            let engaged = fset.iter().filter(|(i, _)| visitors(*i) > 0).count();
            m.insert(
                key("okr_engagement_ratio", &wl),
                total as f64 / fset.len() as f64,
            );
            m.insert(
                key("okr_engaged_followups_ratio", &wl),
                engaged as f64 / fset.len() as f64,
            );
            type Dim = fn(&F) -> String;
            let dims: [(&str, &str, Dim); 2] = [
                (
                    "okr_engagement_by_meeting_type_ratio",
                    "meeting_type",
                    |r| norm(r.meeting),
                ),
                (
                    "okr_engagement_by_creator_region_ratio",
                    "creator_region",
                    |r| norm(r.region),
                ),
            ];
            for (name, label, dim) in dims {
                let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
                for (i, r) in &fset {
                    let e = groups.entry(dim(r)).or_default();
                    e.0 += 1;
                    e.1 += visitors(*i);
                }
                for (v, (cnt, vis)) in groups {
                    m.insert(
                        key(name, &[("window", w), (label, &v)]),
                        vis as f64 / cnt as f64,
                    );
                }
            }
            let mut companies: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for (i, r) in &fset {
                let e = companies.entry(norm(r.company)).or_default();
                e.0 += 1;
                e.1 += visitors(*i);
            }
            let mut ranked: Vec<(String, (usize, usize))> = companies.into_iter().collect();
            ranked.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
            let (mut oc, mut ov) = (0, 0);
            for (idx, (c, (cnt, vis))) in ranked.iter().enumerate() {
                if idx < top_n {
                    m.insert(
                        key(
                            "okr_engagement_by_company_ratio",
                            &[("window", w), ("company", c)],
                        ),
                        *vis as f64 / *cnt as f64,
                    );
                } else {
                    oc += cnt;
                    ov += vis;
                }
            }
            if oc > 0 {
                m.insert(
                    key(
                        "okr_engagement_by_company_ratio",
                        &[("window", w), ("company", "__other__")],
                    ),
                    ov as f64 / oc as f64,
                );
            }
        }
        // next action
        let acts: Vec<f64> = fx
            .actions
            .iter()
            .filter(|(_, _, a)| inw(*a, days))
            .map(|(_, p, a)| (*a - *p).num_microseconds().unwrap() as f64 / 1e6)
            .collect();
        m.insert(key("okr_next_actions", &wl), acts.len() as f64);
        if !acts.is_empty() {
            m.insert(
                key("okr_time_to_next_action_avg_seconds", &wl),
                acts.iter().sum::<f64>() / acts.len() as f64,
            );
        }
        // mobile
        let sess: Vec<&S> = fx
            .sessions
            .iter()
            .filter(|s| inw(s.started, days))
            .collect();
        let count = |dev: &str| sess.iter().filter(|s| s.device == dev).count();
        let (mo, ta, de) = (count("mobile"), count("tablet"), count("desktop"));
        for (dev, v) in [
            ("mobile", mo),
            ("tablet", ta),
            ("desktop", de),
            ("other", sess.len() - mo - ta - de),
        ] {
            m.insert(
                key("okr_views", &[("window", w), ("device_type", dev)]),
                v as f64,
            );
        }
        if !sess.is_empty() {
            m.insert(
                key("okr_mobile_views_ratio", &wl),
                mo as f64 / sess.len() as f64,
            );
        }
        // adoption
        m.insert(key("okr_followups_created", &wl), created.len() as f64);
        let active: BTreeSet<&str> = fx
            .followups
            .iter()
            .filter(|r| inw(r.created, days) || r.published.is_some_and(|p| inw(p, days)))
            .map(|r| r.creator)
            .collect();
        m.insert(key("okr_active_creators", &wl), active.len() as f64);
        let mut per_creator: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &created {
            *per_creator.entry(r.creator).or_default() += 1;
        }
        if !per_creator.is_empty() {
            let rep = per_creator.values().filter(|c| **c >= 2).count();
            m.insert(
                key("okr_repeat_creators_ratio", &wl),
                rep as f64 / per_creator.len() as f64,
            );
        }
    }
    for status in ["draft", "published", "deleted"] {
        let c = fx.followups.iter().filter(|r| r.status == status).count();
        m.insert(key("okr_followups", &[("status", status)]), c as f64);
    }
    m
}

fn flatten(families: &[Family]) -> BTreeMap<Key, f64> {
    let mut m = BTreeMap::new();
    for fam in families {
        for s in &fam.samples {
            let k = (
                fam.name.to_owned(),
                s.labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            );
            assert!(
                m.insert(k, s.value).is_none(),
                "duplicate series in {}",
                fam.name
            );
        }
    }
    m
}

async fn collect_all(pool: &PgPool, ctx: &CollectContext) -> Vec<Family> {
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

fn assert_same(actual: &BTreeMap<Key, f64>, expected: &BTreeMap<Key, f64>) {
    let a: BTreeSet<&Key> = actual.keys().collect();
    let e: BTreeSet<&Key> = expected.keys().collect();
    assert_eq!(
        a.difference(&e).collect::<Vec<_>>(),
        Vec::<&&Key>::new(),
        "series that should be absent"
    );
    assert_eq!(
        e.difference(&a).collect::<Vec<_>>(),
        Vec::<&&Key>::new(),
        "series missing"
    );
    for (k, ev) in expected {
        let av = actual[k];
        assert!(
            (av - ev).abs() <= 1e-9 * ev.abs().max(1.0),
            "{k:?}: got {av}, expected {ev}"
        );
    }
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
            &[("1d", 1), ("7d", 7), ("30d", 30)],
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
