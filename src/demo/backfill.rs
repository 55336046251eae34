//! Deterministic history for the demo: `days` days of follow-ups, prospect
//! sessions, creation timings and next actions ending at `now`, generated
//! from one seed and loaded with a few array-bound `INSERT … SELECT unnest`
//! statements in a single transaction.

use chrono::{DateTime, Datelike, Duration, SubsecRound, Utc, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

use super::profile::{self, Outcome};
use crate::db::{DbError, ctx};

/// Rows per INSERT statement: large enough to amortise round trips, small
/// enough to keep each statement's arrays a few hundred kilobytes.
const BATCH: usize = 5_000;

/// Serialises concurrent backfills of one database (two demos started on
/// the same `--database-url`).
const ADVISORY_LOCK_KEY: i64 = 0x6f6b_725f_6465_6d6f; // "okr_demo"

/// What a backfill wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillSummary {
    /// True when the database already held follow-ups and nothing was written.
    pub skipped: bool,
    /// Rows written to `followups`.
    pub followups: usize,
    /// Of those, rows with `published_at` set (including later deleted ones).
    pub published: usize,
    /// Of those, rows with `deleted_at` set.
    pub deleted: usize,
    /// Rows written to `analytics_sessions`.
    pub sessions: usize,
    /// Rows written to `okr_creation_time`.
    pub creation_times: usize,
    /// Rows written to `okr_next_actions`.
    pub next_actions: usize,
}

/// The generated history, one vector per column.
#[derive(Default)]
struct History {
    f_id: Vec<Uuid>,
    f_creator: Vec<String>,
    f_company: Vec<Option<String>>,
    f_meeting: Vec<Option<String>>,
    f_region: Vec<Option<String>>,
    f_status: Vec<String>,
    f_created: Vec<DateTime<Utc>>,
    f_published: Vec<Option<DateTime<Utc>>>,
    f_deleted: Vec<Option<DateTime<Utc>>>,
    s_followup: Vec<Uuid>,
    s_visitor: Vec<String>,
    s_device: Vec<String>,
    s_started: Vec<DateTime<Utc>>,
    c_followup: Vec<Uuid>,
    c_started: Vec<DateTime<Utc>>,
    c_published: Vec<DateTime<Utc>>,
    c_seconds: Vec<f64>,
    n_followup: Vec<Uuid>,
    n_action: Vec<DateTime<Utc>>,
    n_published: Vec<DateTime<Utc>>,
    n_days: Vec<f64>,
}

/// Writes `days` days of history ending at `now`, about `per_day`
/// follow-ups a day, generated from `seed` (same seed and `now`, same rows).
/// Does nothing when `followups` already has rows, so restarting the demo on
/// an external database keeps its data.
pub async fn backfill(
    pool: &PgPool,
    seed: u64,
    days: u32,
    per_day: u32,
    now: DateTime<Utc>,
) -> Result<BackfillSummary, DbError> {
    let mut tx = pool.begin().await.map_err(ctx("starting the backfill"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(ctx("locking the backfill"))?;
    let has_rows: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM followups)")
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx("checking for existing follow-ups"))?;
    if has_rows {
        return Ok(BackfillSummary {
            skipped: true,
            ..BackfillSummary::default()
        });
    }
    let history = generate(seed, days, per_day, now);
    let summary = history.summary();
    insert(&mut tx, &history).await?;
    tx.commit().await.map_err(ctx("committing the backfill"))?;
    Ok(summary)
}

/// Relative number of follow-ups created on a weekday (averages ≈ 1 over a week).
fn weekday_factor(day: Weekday) -> f64 {
    match day {
        Weekday::Sat | Weekday::Sun => 0.6,
        _ => 1.15,
    }
}

fn micros(seconds: f64) -> Duration {
    Duration::microseconds((seconds * 1e6).round() as i64)
}

/// `to − from` in seconds, exact to the microsecond.
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Generates the history in memory; every timestamp is a whole microsecond
/// (PostgreSQL's precision), so durations read back exactly.
fn generate(seed: u64, days: u32, per_day: u32, now: DateTime<Utc>) -> History {
    let now = now.trunc_subsecs(6);
    let mut rng = StdRng::seed_from_u64(seed);
    let creators = profile::creators(&mut rng);
    let mut h = History::default();
    for d in 0..days {
        let day_start = now - Duration::days(i64::from(days - d));
        let noon = day_start + Duration::hours(12);
        let expected = f64::from(per_day) * weekday_factor(noon.weekday());
        let count = (expected * rng.random_range(0.85..1.15)).round() as usize;
        let mut offsets: Vec<f64> = (0..count)
            .map(|_| rng.random_range(0.0..86_400.0))
            .collect();
        offsets.sort_by(f64::total_cmp);
        for offset in offsets {
            followup(&mut rng, &mut h, &creators, day_start + micros(offset), now);
        }
    }
    // Sessions in time order, as the application would have written them.
    let mut order: Vec<usize> = (0..h.s_started.len()).collect();
    order.sort_by_key(|&i| h.s_started[i]);
    h.s_followup = order.iter().map(|&i| h.s_followup[i]).collect();
    h.s_visitor = order.iter().map(|&i| h.s_visitor[i].clone()).collect();
    h.s_device = order.iter().map(|&i| h.s_device[i].clone()).collect();
    h.s_started = order.iter().map(|&i| h.s_started[i]).collect();
    h
}

/// One follow-up created at `created` and everything that followed it up to `now`.
fn followup(
    rng: &mut StdRng,
    h: &mut History,
    creators: &[profile::Creator],
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let creator = profile::pick_creator(rng, creators);
    let company = profile::company(rng);
    let (meeting_type, engagement) = profile::meeting_type(rng);
    let creation = profile::creation_seconds(rng);
    let planned_publish = created + micros(creation);
    let outcome = profile::outcome(rng);
    let after_publish = micros(rng.random_range(3_600.0..5.0 * 86_400.0));
    let as_draft = micros(rng.random_range(120.0..2.0 * 86_400.0));

    let published = match outcome {
        Outcome::Published | Outcome::PublishedThenDeleted if planned_publish <= now => {
            Some(planned_publish)
        }
        _ => None,
    };
    let deleted = match (outcome, published) {
        (Outcome::PublishedThenDeleted, Some(p)) => Some(p + after_publish),
        (Outcome::Deleted, _) => Some(created + as_draft),
        _ => None,
    }
    .filter(|t| *t <= now);
    let status = match (published, deleted) {
        (_, Some(_)) => "deleted",
        (Some(_), None) => "published",
        (None, None) => "draft",
    };
    h.f_id.push(id);
    h.f_creator.push(creator.id.clone());
    h.f_company.push(company.map(str::to_owned));
    h.f_meeting.push(meeting_type.map(str::to_owned));
    h.f_region.push(creator.region.map(str::to_owned));
    h.f_status.push(status.to_owned());
    h.f_created.push(created);
    h.f_published.push(published);
    h.f_deleted.push(deleted);

    let Some(published) = published else {
        return;
    };
    // The client's creation timer reaches us for most, not all, publishes.
    if rng.random_bool(0.9) {
        h.c_followup.push(id);
        h.c_started.push(created);
        h.c_published.push(published);
        h.c_seconds.push(seconds_between(created, published));
    }
    let visible_until = deleted.unwrap_or(now).min(now);
    for _ in 0..profile::visitor_count(rng, engagement) {
        let visitor = profile::visitor_id(rng);
        let device = profile::device(rng);
        let mut at = published + micros(120.0 + profile::exponential(rng, 3.0 * 3600.0));
        for _ in 0..profile::sessions_per_visitor(rng) {
            if at > visible_until {
                break;
            }
            h.s_followup.push(id);
            h.s_visitor.push(visitor.clone());
            h.s_device.push(device.to_owned());
            h.s_started.push(at);
            at += micros(600.0 + profile::exponential(rng, 30.0 * 3600.0));
        }
    }
    if deleted.is_none() && rng.random_bool(0.6) {
        let days = profile::days_to_next_action(rng);
        let action = published + micros(days * 86_400.0);
        if action <= now {
            h.n_followup.push(id);
            h.n_action.push(action);
            h.n_published.push(published);
            h.n_days.push(seconds_between(published, action) / 86_400.0);
        }
    }
}

impl History {
    fn summary(&self) -> BackfillSummary {
        BackfillSummary {
            skipped: false,
            followups: self.f_id.len(),
            published: self.f_published.iter().flatten().count(),
            deleted: self.f_deleted.iter().flatten().count(),
            sessions: self.s_followup.len(),
            creation_times: self.c_followup.len(),
            next_actions: self.n_followup.len(),
        }
    }
}

async fn insert(tx: &mut sqlx::PgConnection, h: &History) -> Result<(), DbError> {
    for start in (0..h.f_id.len()).step_by(BATCH) {
        let r = start..(start + BATCH).min(h.f_id.len());
        sqlx::query(
            "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region,
                                    status, created_at, published_at, deleted_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::timestamptz[],
                                  $9::timestamptz[])",
        )
        .bind(&h.f_id[r.clone()])
        .bind(&h.f_creator[r.clone()])
        .bind(&h.f_company[r.clone()])
        .bind(&h.f_meeting[r.clone()])
        .bind(&h.f_region[r.clone()])
        .bind(&h.f_status[r.clone()])
        .bind(&h.f_created[r.clone()])
        .bind(&h.f_published[r.clone()])
        .bind(&h.f_deleted[r])
        .execute(&mut *tx)
        .await
        .map_err(ctx("backfilling followups"))?;
    }
    for start in (0..h.s_followup.len()).step_by(BATCH) {
        let r = start..(start + BATCH).min(h.s_followup.len());
        sqlx::query(
            "INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])",
        )
        .bind(&h.s_followup[r.clone()])
        .bind(&h.s_visitor[r.clone()])
        .bind(&h.s_device[r.clone()])
        .bind(&h.s_started[r])
        .execute(&mut *tx)
        .await
        .map_err(ctx("backfilling analytics_sessions"))?;
    }
    // recorded_at is the event time, as if relayed when it happened.
    for start in (0..h.c_followup.len()).step_by(BATCH) {
        let r = start..(start + BATCH).min(h.c_followup.len());
        sqlx::query(
            "INSERT INTO okr_creation_time (followup_id, started_at, published_at,
                                            duration_seconds, status, recorded_at)
             SELECT f, s, p, d, 'published', p
             FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::float8[])
                  AS t(f, s, p, d)
             ON CONFLICT (followup_id) DO NOTHING",
        )
        .bind(&h.c_followup[r.clone()])
        .bind(&h.c_started[r.clone()])
        .bind(&h.c_published[r.clone()])
        .bind(&h.c_seconds[r])
        .execute(&mut *tx)
        .await
        .map_err(ctx("backfilling okr_creation_time"))?;
    }
    for start in (0..h.n_followup.len()).step_by(BATCH) {
        let r = start..(start + BATCH).min(h.n_followup.len());
        sqlx::query(
            "INSERT INTO okr_next_actions (followup_id, action_at, published_at,
                                           days_to_action, recorded_at)
             SELECT f, a, p, d, a
             FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::float8[])
                  AS t(f, a, p, d)
             ON CONFLICT (followup_id) DO NOTHING",
        )
        .bind(&h.n_followup[r.clone()])
        .bind(&h.n_action[r.clone()])
        .bind(&h.n_published[r.clone()])
        .bind(&h.n_days[r])
        .execute(&mut *tx)
        .await
        .map_err(ctx("backfilling okr_next_actions"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-04T10:20:30.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn same_seed_same_history() {
        let a = generate(42, 10, 50, fixed_now());
        let b = generate(42, 10, 50, fixed_now());
        assert_eq!(a.f_id, b.f_id);
        assert_eq!(a.s_started, b.s_started);
        assert_eq!(a.c_seconds, b.c_seconds);
        let c = generate(43, 10, 50, fixed_now());
        assert_ne!(a.f_id, c.f_id);
    }

    #[test]
    fn history_respects_time_and_status_rules() {
        let now = fixed_now();
        let h = generate(7, 30, 60, now);
        let n = h.f_id.len();
        // 30 days × 60 a day, ± the daily jitter and the weekday profile.
        assert!((1_400..2_200).contains(&n), "{n} follow-ups");
        for i in 0..n {
            assert!(h.f_created[i] < now);
            if let Some(p) = h.f_published[i] {
                assert!(p > h.f_created[i] && p <= now);
            }
            if let Some(d) = h.f_deleted[i] {
                assert!(d > h.f_created[i] && d <= now);
                assert_eq!(h.f_status[i], "deleted");
            }
        }
        assert!(h.s_started.iter().all(|t| *t <= now));
        assert!(h.s_started.windows(2).all(|w| w[0] <= w[1]));
        assert!(h.n_action.iter().all(|t| *t <= now));
        for i in 0..h.c_followup.len() {
            let secs = (h.c_published[i] - h.c_started[i])
                .num_microseconds()
                .unwrap() as f64
                / 1e6;
            assert_eq!(secs, h.c_seconds[i]);
        }
        for i in 0..h.n_followup.len() {
            let gap = (h.n_action[i] - h.n_published[i]).num_seconds() as f64 / 86_400.0;
            assert!((1.0..=10.0 + 1e-6).contains(&gap));
            assert!((gap - h.n_days[i]).abs() < 1e-4);
        }
    }
}
