//! Each closed day's rollup row equals an independent computation of that
//! day (DESIGN §3.2, §4): `okr_draft_completions` by created_at's UTC day,
//! `okr_engagement` by published_at's UTC day (visitors over sessions
//! started up to now), `okr_mobile_usage` by started_at's UTC day. A day
//! runs from 00:00:00.000000 (included) to the next midnight (excluded).
//! Days without rows have no row; after deletions and updates a rerun
//! follows, deleting a day left empty. The report's history ratios are
//! checked against the same independent numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use okr_exporter::collector::{
    CollectorMetrics, RollupCollector, Scheduler, SnapshotStore, rollup_start,
};
use okr_exporter::config::{Settings, parse_windows};
use sqlx::PgPool;
use uuid::Uuid;

use crate::reference::{F, Fixture, f, load, read_back, s};
use crate::support::prepared_db;

/// Collection time: midday, so "today" is a partial day.
fn now() -> DateTime<Utc> {
    at(15, 12, 0, 0, 0)
}

/// 2026-06-`day` `h`:`m`:`sec`.`micros` UTC.
fn at(day: u32, h: u32, m: u32, sec: u32, micros: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, day, h, m, sec).unwrap() + chrono::Duration::microseconds(micros)
}

/// The last microsecond of 2026-06-`day`.
fn last_us(day: u32) -> DateTime<Utc> {
    at(day, 23, 59, 59, 999_999)
}

fn date(month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, month, day).unwrap()
}

/// Windows 1d and 10d: the recomputed days are 2026-06-05 through today.
const WINDOWS: &str = "1d,10d";
fn first_day() -> NaiveDate {
    date(6, 5)
}

struct Named {
    fx: Fixture,
    /// Follow-up deleted by the mutation: the only row of 2026-06-13.
    lonely: Uuid,
}

fn fixture() -> Named {
    let fu = |created, published, deleted, status| {
        f(
            "c1",
            Some("Acme"),
            Some("demo"),
            Some("EMEA"),
            status,
            created,
            published,
            deleted,
        )
    };
    let followups: Vec<F> = vec![
        // 0: created and published exactly at the first day's midnight.
        fu(
            at(5, 0, 0, 0, 0),
            Some(at(5, 0, 0, 0, 0)),
            None,
            "published",
        ),
        // 1: created the last microsecond before the range, published just after its midnight.
        fu(last_us(4), Some(at(5, 0, 0, 0, 1)), None, "published"),
        // 2: open draft at the last microsecond of a day.
        fu(last_us(7), None, None, "draft"),
        // 3: deleted draft at midnight.
        fu(at(8, 0, 0, 0, 0), None, Some(at(8, 10, 0, 0, 0)), "deleted"),
        // 4: published at a day's last microsecond, then deleted.
        fu(
            at(8, 12, 0, 0, 0),
            Some(last_us(9)),
            Some(at(10, 1, 0, 0, 0)),
            "deleted",
        ),
        // 5, 6: two on one day, one published, one with both published and deleted set.
        fu(
            at(10, 9, 0, 0, 0),
            Some(at(10, 9, 5, 0, 0)),
            None,
            "published",
        ),
        fu(
            at(10, 10, 0, 0, 0),
            Some(at(12, 0, 0, 0, 0)),
            Some(at(13, 0, 0, 0, 0)),
            "deleted",
        ),
        // 7: unknown status, neither published nor deleted: open.
        fu(at(12, 8, 0, 0, 0), None, None, "archived"),
        // 8: created yesterday's last microsecond, published at today's midnight.
        fu(last_us(14), Some(at(15, 0, 0, 0, 0)), None, "published"),
        // 9: created today, published after now.
        fu(
            at(15, 11, 0, 0, 0),
            Some(at(15, 13, 0, 0, 0)),
            None,
            "published",
        ),
        // 10: created before the range, published inside it.
        fu(
            at(1, 10, 0, 0, 0),
            Some(at(6, 10, 0, 0, 0)),
            None,
            "published",
        ),
        // 11: alone on 2026-06-13, no sessions.
        fu(
            at(13, 10, 0, 0, 0),
            Some(at(13, 10, 30, 0, 0)),
            None,
            "published",
        ),
        // 12: created today before now, still a draft.
        fu(at(15, 0, 0, 0, 0), None, None, "draft"),
        // 13: entirely before the range.
        fu(
            at(2, 10, 0, 0, 0),
            Some(at(3, 10, 0, 0, 0)),
            None,
            "published",
        ),
    ];
    let id = |i: usize| followups[i].id;
    let sessions = vec![
        s(id(0), "v1", "mobile", at(5, 0, 0, 0, 0)),
        s(id(0), "v1", "desktop", last_us(5)),
        s(id(0), "v2", "smart-tv", at(6, 12, 0, 0, 0)),
        s(id(0), "v3", "Mobile", at(15, 11, 0, 0, 0)),
        // After now: no visitor, no session today (yet).
        s(id(0), "v4", "mobile", at(15, 12, 0, 0, 1)),
        // Before the range: no mobile row, but a visitor of follow-up 1.
        s(id(1), "v1", "tablet", last_us(4)),
        s(id(1), "v5", "mobile", at(9, 0, 0, 0, 0)),
        s(id(4), "v6", "desktop", at(10, 8, 0, 0, 0)),
        s(id(4), "v7", "tablet", at(16, 0, 0, 0, 0)),
        s(id(5), "v1", "mobile", at(10, 10, 0, 0, 0)),
        s(id(5), "v1", "mobile", at(10, 11, 0, 0, 0)),
        s(id(5), "v10", "Mobile", at(9, 15, 0, 0, 0)),
        s(id(10), "v8", "", at(7, 5, 0, 0, 0)),
        s(Uuid::new_v4(), "v9", "desktop", at(12, 3, 0, 0, 0)),
        s(id(6), "v2", "mobile", at(12, 0, 0, 0, 0)),
        s(id(8), "v1", "mobile", last_us(14)),
        s(id(8), "v2", "DESKTOP", at(15, 9, 0, 0, 0)),
        s(id(13), "v2", "desktop", at(3, 11, 0, 0, 0)),
    ];
    let lonely = followups[11].id;
    Named {
        fx: Fixture {
            followups,
            sessions,
            creation: Vec::new(),
            actions: Vec::new(),
        },
        lonely,
    }
}

/// One day of each rollup table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Drafts {
    created: i64,
    published: i64,
    deleted: i64,
    open: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Engagement {
    followups: i64,
    unique_visitors: i64,
    engaged_followups: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Mobile {
    sessions: i64,
    mobile: i64,
    tablet: i64,
    desktop: i64,
    other: i64,
}

#[derive(Debug, Default, PartialEq)]
struct Days {
    drafts: BTreeMap<NaiveDate, Drafts>,
    engagement: BTreeMap<NaiveDate, Engagement>,
    mobile: BTreeMap<NaiveDate, Mobile>,
}

impl Days {
    fn all_days(&self) -> BTreeSet<NaiveDate> {
        self.drafts
            .keys()
            .chain(self.engagement.keys())
            .chain(self.mobile.keys())
            .copied()
            .collect()
    }

    /// Only the days in `from..=to`.
    fn between(&self, from: NaiveDate, to: NaiveDate) -> Self {
        let keep = |d: &&NaiveDate| **d >= from && **d <= to;
        Self {
            drafts: self
                .drafts
                .iter()
                .filter(|(d, _)| keep(d))
                .map(|(d, v)| (*d, *v))
                .collect(),
            engagement: self
                .engagement
                .iter()
                .filter(|(d, _)| keep(d))
                .map(|(d, v)| (*d, *v))
                .collect(),
            mobile: self
                .mobile
                .iter()
                .filter(|(d, _)| keep(d))
                .map(|(d, v)| (*d, *v))
                .collect(),
        }
    }
}

/// The independent computation: each row goes to its timestamp's UTC
/// calendar day; rows after `now` are left out (today is counted up to
/// now); days from `first` on, and days with rows only.
fn expected_days(fx: &Fixture, first: NaiveDate, now: DateTime<Utc>) -> Days {
    let day_of = |t: DateTime<Utc>| (t <= now && t.date_naive() >= first).then(|| t.date_naive());
    let mut out = Days::default();
    for r in &fx.followups {
        if let Some(d) = day_of(r.created) {
            let e = out.drafts.entry(d).or_default();
            e.created += 1;
            if r.published.is_some() {
                e.published += 1;
            } else if r.deleted.is_some() {
                e.deleted += 1;
            } else {
                e.open += 1;
            }
        }
        if let Some(d) = r.published.and_then(day_of) {
            let visitors: BTreeSet<&str> = fx
                .sessions
                .iter()
                .filter(|s| s.followup == r.id && s.started <= now)
                .map(|s| s.visitor.as_str())
                .collect();
            let e = out.engagement.entry(d).or_default();
            e.followups += 1;
            e.unique_visitors += visitors.len() as i64;
            e.engaged_followups += i64::from(!visitors.is_empty());
        }
    }
    for s in &fx.sessions {
        if let Some(d) = day_of(s.started) {
            let e = out.mobile.entry(d).or_default();
            e.sessions += 1;
            match s.device.as_str() {
                "mobile" => e.mobile += 1,
                "tablet" => e.tablet += 1,
                "desktop" => e.desktop += 1,
                _ => e.other += 1,
            }
        }
    }
    out
}

/// The rollup tables as stored.
async fn stored(pool: &PgPool) -> Days {
    let drafts: Vec<(NaiveDate, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT day, created, published, deleted, open FROM okr_draft_completions ORDER BY day",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let engagement: Vec<(NaiveDate, i64, i64, i64)> = sqlx::query_as(
        "SELECT day, followups, unique_visitors, engaged_followups FROM okr_engagement ORDER BY day",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mobile: Vec<(NaiveDate, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT day, sessions, mobile, tablet, desktop, other FROM okr_mobile_usage ORDER BY day",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    Days {
        drafts: drafts
            .into_iter()
            .map(|(d, created, published, deleted, open)| {
                (
                    d,
                    Drafts {
                        created,
                        published,
                        deleted,
                        open,
                    },
                )
            })
            .collect(),
        engagement: engagement
            .into_iter()
            .map(|(d, followups, unique_visitors, engaged_followups)| {
                (
                    d,
                    Engagement {
                        followups,
                        unique_visitors,
                        engaged_followups,
                    },
                )
            })
            .collect(),
        mobile: mobile
            .into_iter()
            .map(|(d, sessions, mobile, tablet, desktop, other)| {
                (
                    d,
                    Mobile {
                        sessions,
                        mobile,
                        tablet,
                        desktop,
                        other,
                    },
                )
            })
            .collect(),
    }
}

fn scheduler(pool: &PgPool, settings: Settings) -> Scheduler {
    Scheduler::new(
        vec![Arc::new(RollupCollector)],
        pool.clone(),
        pool.clone(),
        Arc::new(settings),
        Arc::new(SnapshotStore::default()),
        CollectorMetrics::default(),
    )
}

/// Runs the rollup at `now` and checks every day of the recomputed range
/// against `reference`: closed days, today (up to now), and no row for a
/// day without data; days before the range are as `before_range` says.
async fn run_and_check(
    pool: &PgPool,
    sched: &Scheduler,
    now: DateTime<Utc>,
    reference: &Fixture,
    before_range: &Days,
    what: &str,
) -> Days {
    sched
        .run_one(&RollupCollector, now)
        .await
        .unwrap_or_else(|e| panic!("{what}: rollup run failed: {e}"));
    let got = stored(pool).await;
    let first = rollup_start(now, parse_windows(WINDOWS).unwrap().longest()).date_naive();
    assert_eq!(
        first,
        first_day(),
        "the range starts at the UTC day of now - 10d"
    );
    let today = now.date_naive();
    let yesterday = today.pred_opt().unwrap();
    let exp = expected_days(reference, first, now);

    // Closed days, one by one, with the day in the message.
    let closed = got.between(first, yesterday);
    let exp_closed = exp.between(first, yesterday);
    let mut day = first;
    while day <= yesterday {
        assert_eq!(
            closed.drafts.get(&day),
            exp_closed.drafts.get(&day),
            "{what}: okr_draft_completions {day}"
        );
        assert_eq!(
            closed.engagement.get(&day),
            exp_closed.engagement.get(&day),
            "{what}: okr_engagement {day}"
        );
        assert_eq!(
            closed.mobile.get(&day),
            exp_closed.mobile.get(&day),
            "{what}: okr_mobile_usage {day}"
        );
        day = day.succ_opt().unwrap();
    }
    // Today, counted up to now.
    assert_eq!(
        got.between(today, today),
        exp.between(today, today),
        "{what}: today ({today}) up to now"
    );
    // Nothing after today; days before the range untouched.
    let last_day = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
    assert_eq!(
        got.between(today.succ_opt().unwrap(), last_day),
        Days::default(),
        "{what}: rows after today"
    );
    assert_eq!(
        &got.between(NaiveDate::MIN, first.pred_opt().unwrap()),
        before_range,
        "{what}: rows before the recomputed range"
    );
    got
}

/// The report's history equals the independent numbers, for every day
/// with a row in any rollup table.
async fn check_history(pool: &PgPool, exp: &Days, what: &str) {
    let days = (Utc::now().date_naive() - date(5, 1)).num_days() as u32 + 2;
    let history = okr_exporter::report::history(pool, days).await.unwrap();
    let got_days: BTreeSet<NaiveDate> = history.iter().map(|h| h.day).collect();
    assert_eq!(got_days, exp.all_days(), "{what}: history days");
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-12,
        (None, None) => true,
        _ => false,
    };
    for h in &history {
        let d = exp.drafts.get(&h.day);
        let e = exp.engagement.get(&h.day);
        let m = exp.mobile.get(&h.day);
        let ratio = |n: i64, t: i64| (t > 0).then(|| n as f64 / t as f64);
        let want_draft = d.and_then(|d| ratio(d.published, d.created));
        let want_engagement = e.and_then(|e| ratio(e.unique_visitors, e.followups));
        let want_mobile = m.and_then(|m| ratio(m.mobile, m.sessions));
        assert!(
            close(h.draft_completion_ratio, want_draft),
            "{what}: {} draft_completion_ratio {:?} vs {want_draft:?}",
            h.day,
            h.draft_completion_ratio
        );
        assert!(
            close(h.engagement_ratio, want_engagement),
            "{what}: {} engagement_ratio {:?} vs {want_engagement:?}",
            h.day,
            h.engagement_ratio
        );
        assert!(
            close(h.mobile_views_ratio, want_mobile),
            "{what}: {} mobile_views_ratio {:?} vs {want_mobile:?}",
            h.day,
            h.mobile_views_ratio
        );
        assert_eq!(h.drafts_created, d.map(|d| d.created), "{what}: {}", h.day);
        assert_eq!(
            h.drafts_published,
            d.map(|d| d.published),
            "{what}: {}",
            h.day
        );
        assert_eq!(
            h.followups_published,
            e.map(|e| e.followups),
            "{what}: {}",
            h.day
        );
        assert_eq!(
            h.unique_visitors,
            e.map(|e| e.unique_visitors),
            "{what}: {}",
            h.day
        );
        assert_eq!(h.sessions, m.map(|m| m.sessions), "{what}: {}", h.day);
    }
}

#[tokio::test]
async fn each_closed_days_rollup_row_equals_an_independent_computation() {
    let db = prepared_db().await;
    let pool = &db.pool;
    let named = fixture();
    load(pool, &named.fx).await;
    // A stale row inside the range for a day without data (must go), and
    // an old row before the range (history: must stay as it is).
    sqlx::raw_sql(
        "INSERT INTO okr_draft_completions (day, created, published, deleted, open) VALUES ('2026-06-11', 9, 9, 0, 0), ('2026-05-01', 4, 3, 1, 0);
         INSERT INTO okr_engagement (day, followups, unique_visitors, engaged_followups) VALUES ('2026-06-11', 2, 5, 2);
         INSERT INTO okr_mobile_usage (day, sessions, mobile, tablet, desktop, other) VALUES ('2026-06-11', 3, 1, 1, 1, 0), ('2026-05-01', 10, 4, 3, 2, 1)",
    )
    .execute(pool)
    .await
    .unwrap();
    let before_range = Days {
        drafts: BTreeMap::from([(
            date(5, 1),
            Drafts {
                created: 4,
                published: 3,
                deleted: 1,
                open: 0,
            },
        )]),
        engagement: BTreeMap::new(),
        mobile: BTreeMap::from([(
            date(5, 1),
            Mobile {
                sessions: 10,
                mobile: 4,
                tablet: 3,
                desktop: 2,
                other: 1,
            },
        )]),
    };

    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.windows = parse_windows(WINDOWS).unwrap();
    let sched = scheduler(pool, settings);

    // First run.
    let got = run_and_check(pool, &sched, now(), &named.fx, &before_range, "first run").await;
    // Hand-checked spots of the fixture, so the reference is not the only judge.
    assert_eq!(
        got.drafts.get(&date(6, 5)),
        Some(&Drafts {
            created: 1,
            published: 1,
            deleted: 0,
            open: 0
        })
    );
    assert_eq!(got.drafts.get(&date(6, 4)), None);
    assert_eq!(
        got.engagement.get(&date(6, 5)),
        // Follow-ups 0 (v1, v2, v3) and 1 (v1, v5).
        Some(&Engagement {
            followups: 2,
            unique_visitors: 5,
            engaged_followups: 2
        })
    );
    assert_eq!(
        got.mobile.get(&date(6, 5)),
        Some(&Mobile {
            sessions: 2,
            mobile: 1,
            tablet: 0,
            desktop: 1,
            other: 0
        })
    );
    assert_eq!(
        got.drafts.get(&date(6, 10)),
        Some(&Drafts {
            created: 2,
            published: 2,
            deleted: 0,
            open: 0
        })
    );
    assert_eq!(got.drafts.get(&date(6, 11)), None, "stale row deleted");
    assert_eq!(got.engagement.get(&date(6, 11)), None, "stale row deleted");
    assert_eq!(got.mobile.get(&date(6, 11)), None, "stale row deleted");
    assert!(got.engagement.contains_key(&date(6, 13)));
    assert!(got.drafts.contains_key(&date(6, 13)));
    assert!(got.mobile.contains_key(&date(6, 14)));
    // 'smart-tv' (6-06), '' (6-07) count as other.
    assert_eq!(got.mobile.get(&date(6, 6)).map(|m| m.other), Some(1));
    assert_eq!(got.mobile.get(&date(6, 7)).map(|m| m.other), Some(1));
    // A rerun changes nothing.
    let again = run_and_check(pool, &sched, now(), &named.fx, &before_range, "rerun").await;
    assert_eq!(again, got);
    check_history(
        pool,
        &expected_days(&named.fx, first_day(), now()).merged(&before_range),
        "first run",
    )
    .await;

    // Mutations: a visitor erased (the only session of 2026-06-14), a
    // device fixed in place, the only follow-up of 2026-06-13 deleted.
    sqlx::query("DELETE FROM analytics_sessions WHERE visitor_id = 'v1'")
        .execute(pool)
        .await
        .unwrap();
    let n = sqlx::query(
        "UPDATE analytics_sessions SET device_type = 'tablet' WHERE device_type = 'smart-tv'",
    )
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
    sqlx::query("DELETE FROM followups WHERE id = $1")
        .bind(named.lonely)
        .execute(pool)
        .await
        .unwrap();
    // Half an hour later: the session at 12:00:00.000001 is now in.
    let later = now() + chrono::Duration::minutes(30);
    let current = read_back(pool).await;
    let got = run_and_check(
        pool,
        &sched,
        later,
        &current,
        &before_range,
        "after changes",
    )
    .await;
    assert_eq!(got.drafts.get(&date(6, 13)), None, "emptied day deleted");
    assert_eq!(
        got.engagement.get(&date(6, 13)),
        None,
        "emptied day deleted"
    );
    assert_eq!(got.mobile.get(&date(6, 14)), None, "emptied day deleted");
    assert_eq!(
        got.mobile.get(&date(6, 6)).map(|m| (m.tablet, m.other)),
        Some((1, 0))
    );
    check_history(
        pool,
        &expected_days(&current, first_day(), later).merged(&before_range),
        "after changes",
    )
    .await;
}

impl Days {
    /// `self` with `other`'s days added (days of `self` win).
    fn merged(mut self, other: &Days) -> Days {
        for (d, v) in &other.drafts {
            self.drafts.entry(*d).or_insert(*v);
        }
        for (d, v) in &other.engagement {
            self.engagement.entry(*d).or_insert(*v);
        }
        for (d, v) in &other.mobile {
            self.mobile.entry(*d).or_insert(*v);
        }
        self
    }
}
