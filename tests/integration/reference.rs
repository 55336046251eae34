//! The reference computation of every OKR gauge (DESIGN §4 read literally,
//! plain Rust filters and counts over rows, no SQL and none of the
//! exporter's code), its input rows, and helpers to load them into the
//! source tables or read them back from there.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use okr_exporter::collector::GaugeFamily;
use okr_exporter::config::Targets;
use sqlx::PgPool;
use uuid::Uuid;

/// A `followups` row.
#[derive(Debug, Clone)]
pub struct F {
    pub id: Uuid,
    pub creator: String,
    pub company: Option<String>,
    pub meeting: Option<String>,
    pub region: Option<String>,
    pub status: String,
    pub created: DateTime<Utc>,
    pub published: Option<DateTime<Utc>>,
    pub deleted: Option<DateTime<Utc>>,
}

/// An `analytics_sessions` row.
#[derive(Debug, Clone)]
pub struct S {
    /// Explicit id, or `None` for the sequence's next value.
    pub id: Option<i64>,
    pub followup: Uuid,
    pub visitor: String,
    pub device: String,
    pub started: DateTime<Utc>,
}

/// The reference's input: the source tables and the exporter's event tables.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    pub followups: Vec<F>,
    pub sessions: Vec<S>,
    /// okr_creation_time: (published_at, duration)
    pub creation: Vec<(DateTime<Utc>, f64)>,
    /// okr_next_actions: (followup_id, published_at, action_at)
    pub actions: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)>,
}

/// A follow-up with a fresh id.
#[allow(clippy::too_many_arguments)]
pub fn f(
    creator: &str,
    company: Option<&str>,
    meeting: Option<&str>,
    region: Option<&str>,
    status: &str,
    created: DateTime<Utc>,
    published: Option<DateTime<Utc>>,
    deleted: Option<DateTime<Utc>>,
) -> F {
    F {
        id: Uuid::new_v4(),
        creator: creator.to_owned(),
        company: company.map(str::to_owned),
        meeting: meeting.map(str::to_owned),
        region: region.map(str::to_owned),
        status: status.to_owned(),
        created,
        published,
        deleted,
    }
}

/// A session of `followup` whose id comes from the sequence.
pub fn s(followup: Uuid, visitor: &str, device: &str, started: DateTime<Utc>) -> S {
    S {
        id: None,
        followup,
        visitor: visitor.to_owned(),
        device: device.to_owned(),
        started,
    }
}

/// Inserts one follow-up.
pub async fn insert_followup<'e, E>(exec: E, r: &F)
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region, status, created_at, published_at, deleted_at)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(r.id)
    .bind(&r.creator)
    .bind(&r.company)
    .bind(&r.meeting)
    .bind(&r.region)
    .bind(&r.status)
    .bind(r.created)
    .bind(r.published)
    .bind(r.deleted)
    .execute(exec)
    .await
    .unwrap();
}

/// Inserts one session (with its explicit id, if any).
pub async fn insert_session<'e, E>(exec: E, s: &S)
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO analytics_sessions (id, followup_id, visitor_id, device_type, started_at)
         VALUES (coalesce($1, nextval('analytics_sessions_id_seq')), $2, $3, $4, $5)",
    )
    .bind(s.id)
    .bind(s.followup)
    .bind(&s.visitor)
    .bind(&s.device)
    .bind(s.started)
    .execute(exec)
    .await
    .unwrap();
}

/// Inserts the fixture's rows.
pub async fn load(pool: &PgPool, fx: &Fixture) {
    for r in &fx.followups {
        insert_followup(pool, r).await;
    }
    for s in &fx.sessions {
        insert_session(pool, s).await;
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
    for (id, published, action) in &fx.actions {
        let secs = (*action - *published).num_microseconds().unwrap() as f64 / 1e6;
        sqlx::query(
            "INSERT INTO okr_next_actions (followup_id, action_at, published_at, days_to_action) VALUES ($1,$2,$3,$4)",
        )
        .bind(id)
        .bind(action)
        .bind(published)
        .bind(secs / 86_400.0)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// The tables as they are now, read back with plain SELECTs.
pub async fn read_back(pool: &PgPool) -> Fixture {
    type FRow = (
        Uuid,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let followups: Vec<FRow> = sqlx::query_as(
        "SELECT id, creator_id, company, meeting_type, creator_region, status, created_at, published_at, deleted_at
         FROM followups ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let sessions: Vec<(i64, Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, followup_id, visitor_id, device_type, started_at FROM analytics_sessions ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let creation: Vec<(DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT published_at, duration_seconds FROM okr_creation_time")
            .fetch_all(pool)
            .await
            .unwrap();
    let actions: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT followup_id, published_at, action_at FROM okr_next_actions")
            .fetch_all(pool)
            .await
            .unwrap();
    Fixture {
        followups: followups
            .into_iter()
            .map(
                |(id, creator, company, meeting, region, status, created, published, deleted)| F {
                    id,
                    creator,
                    company,
                    meeting,
                    region,
                    status,
                    created,
                    published,
                    deleted,
                },
            )
            .collect(),
        sessions: sessions
            .into_iter()
            .map(|(id, followup, visitor, device, started)| S {
                id: Some(id),
                followup,
                visitor,
                device,
                started,
            })
            .collect(),
        creation,
        actions,
    }
}

/// A series: metric name and label pairs.
pub type Key = (String, BTreeSet<(String, String)>);

/// The series `name{labels}`.
pub fn key(name: &str, labels: &[(&str, &str)]) -> Key {
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

/// The reference computation: DESIGN §4 read literally, over the fixture,
/// at `now`, for `windows` given as (label, length).
pub fn expected(
    fx: &Fixture,
    now: DateTime<Utc>,
    windows: &[(&str, Duration)],
    targets: &Targets,
    top_n: usize,
) -> BTreeMap<Key, f64> {
    let n = now;
    let mut m = BTreeMap::new();
    let inw = |t: DateTime<Utc>, len: Duration| t > n - len && t <= n;
    for &(w, len) in windows {
        let wl = [("window", w)];
        // creation time
        let mut durs: Vec<f64> = fx
            .creation
            .iter()
            .filter(|(p, _)| inw(*p, len))
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
            .filter(|r| inw(r.created, len))
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
            .filter(|(_, r)| r.published.is_some_and(|p| inw(p, len)))
            .collect();
        let visitors = |i: usize| -> usize {
            fx.sessions
                .iter()
                .filter(|s| s.followup == fx.followups[i].id && s.started <= n)
                .map(|s| s.visitor.as_str())
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
                    |r| norm(r.meeting.as_deref()),
                ),
                (
                    "okr_engagement_by_creator_region_ratio",
                    "creator_region",
                    |r| norm(r.region.as_deref()),
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
                let e = companies.entry(norm(r.company.as_deref())).or_default();
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
            .filter(|(_, _, a)| inw(*a, len))
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
        let sess: Vec<&S> = fx.sessions.iter().filter(|s| inw(s.started, len)).collect();
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
            .filter(|r| inw(r.created, len) || r.published.is_some_and(|p| inw(p, len)))
            .map(|r| r.creator.as_str())
            .collect();
        m.insert(key("okr_active_creators", &wl), active.len() as f64);
        let mut per_creator: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &created {
            *per_creator.entry(r.creator.as_str()).or_default() += 1;
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

/// The families' series; panics on a duplicate series.
pub fn flatten(families: &[Box<dyn GaugeFamily>]) -> BTreeMap<Key, f64> {
    let mut m = BTreeMap::new();
    for fam in families {
        for (labels, value) in fam.series() {
            let k = (
                fam.name().to_owned(),
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
            assert!(
                m.insert(k, value).is_none(),
                "duplicate series in {}",
                fam.name()
            );
        }
    }
    m
}

/// Asserts the same series, with the same values (relative 1e-9).
pub fn assert_same(actual: &BTreeMap<Key, f64>, expected: &BTreeMap<Key, f64>) {
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

/// Every difference between two sets of series (absent, extra, other
/// value beyond a relative 1e-9), one line each; empty when they agree.
pub fn differences(actual: &BTreeMap<Key, f64>, expected: &BTreeMap<Key, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, ev) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {k:?} (expected {ev})")),
            Some(av) if (av - ev).abs() > 1e-9 * ev.abs().max(1.0) => {
                out.push(format!("{k:?}: got {av}, expected {ev}"));
            }
            Some(_) => {}
        }
    }
    for (k, av) in actual {
        if !expected.contains_key(k) {
            out.push(format!("extra {k:?} = {av}"));
        }
    }
    out
}
