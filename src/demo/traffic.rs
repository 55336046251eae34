//! Live traffic against the reference API: sellers create, edit and publish
//! follow-ups, prospects open them, sellers read analytics and record next
//! actions, and now and then a client sends something wrong or a scanner
//! probes a path that does not exist.
//!
//! One request leaves every `1 / rps` seconds. A request that belongs to a
//! follow-up's story (an edit, the publish, a prospect's visit) waits in a
//! schedule until it is due; the others are drawn from a seeded mix. Time
//! is compressed: a draft is published a minute or so after it is created,
//! carrying a realistic creation time (minutes) as the client's timer would.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use super::profile::{self, Outcome};
use crate::db::{DbError, ctx};

/// Requests in flight at most; a tick finding none free is skipped.
const MAX_IN_FLIGHT: usize = 64;
/// Scheduled steps kept at most; above it no new drafts are started.
const MAX_SCHEDULED: usize = 20_000;
/// Published follow-ups remembered for reads.
const MAX_KNOWN: usize = 2_000;

/// What the simulator needs.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Base URL of the API, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Requests per second (must be positive).
    pub rps: f64,
    /// Seed of the request mix.
    pub seed: u64,
    /// Published follow-ups that already exist, for the first reads.
    pub known: Vec<Uuid>,
}

/// Up to `limit` most recently published follow-ups, to seed
/// [`TrafficConfig::known`].
pub async fn recent_published(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, DbError> {
    sqlx::query_scalar(
        "SELECT id FROM followups
          WHERE published_at IS NOT NULL AND deleted_at IS NULL
          ORDER BY published_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(ctx("reading recent follow-ups"))
}

/// One HTTP request of the simulation.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    body: Option<Body>,
    /// For a create: the story to schedule once the id is known.
    plan: Option<Plan>,
}

#[derive(Debug)]
enum Body {
    Json(Value),
    /// Sent as is with a JSON content type (malformed on purpose).
    Raw(&'static str),
}

/// A draft's story, drawn when it is created.
#[derive(Debug)]
struct Plan {
    outcome: Outcome,
    edits: usize,
    creation_seconds: f64,
    /// (visitor id, device, sessions)
    visitors: Vec<(String, &'static str, usize)>,
    next_action: bool,
}

/// Runs until `shutdown` completes. Failed requests are logged at debug
/// level; the simulation carries on.
pub async fn run_traffic(config: TrafficConfig, shutdown: impl Future<Output = ()>) {
    if !(config.rps.is_finite() && config.rps > 0.0) {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .user_agent("okr-exporter-demo-traffic")
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "demo traffic cannot start its HTTP client");
            return;
        }
    };
    let mut sim = Simulation::new(&config);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Uuid, Plan)>();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rps));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let base = config.base_url.trim_end_matches('/').to_owned();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        while let Ok((id, plan)) = rx.try_recv() {
            sim.schedule_story(id, plan);
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let call = sim.next_call(Instant::now());
        let client = client.clone();
        let url = format!("{base}{}", call.path);
        let tx = tx.clone();
        tasks.spawn(async move {
            send(&client, &url, call, &tx).await;
            drop(permit);
        });
    }
    tasks.shutdown().await;
}

/// A W3C `traceparent` with a random trace id and parent id, sampled.
fn traceparent() -> String {
    let trace_id: u128 = rand::random::<u128>().max(1);
    let parent_id: u64 = rand::random::<u64>().max(1);
    format!("00-{trace_id:032x}-{parent_id:016x}-01")
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    call: Call,
    created: &mpsc::UnboundedSender<(Uuid, Plan)>,
) {
    // Every request is traced, as a traced client's would be, so that the
    // latency buckets carry exemplars for the dashboards to show.
    let mut req = client
        .request(call.method.clone(), url)
        .header("traceparent", traceparent());
    req = match call.body {
        Some(Body::Json(v)) => req.json(&v),
        Some(Body::Raw(s)) => req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(s),
        None => req,
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, method = %call.method, url, "demo traffic request failed");
            return;
        }
    };
    let Some(plan) = call.plan else {
        return;
    };
    if !resp.status().is_success() {
        return;
    }
    #[derive(serde::Deserialize)]
    struct Created {
        id: Uuid,
    }
    match resp.json::<Created>().await {
        Ok(c) => {
            let _ = created.send((c.id, plan));
        }
        Err(e) => tracing::debug!(error = %e, "demo traffic: unexpected create response"),
    }
}

/// The simulation's state: who exists, what is due when.
struct Simulation {
    rng: StdRng,
    creators: Vec<profile::Creator>,
    /// Due time (and a sequence number breaking ties) → request.
    schedule: BTreeMap<(Instant, u64), Call>,
    seq: u64,
    known: VecDeque<Uuid>,
}

impl Simulation {
    fn new(config: &TrafficConfig) -> Self {
        // A different stream from the backfill's, from the same seed.
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x7472_6166_6669_6300);
        let creators = profile::creators(&mut rng);
        Self {
            rng,
            creators,
            schedule: BTreeMap::new(),
            seq: 0,
            known: config.known.iter().copied().take(MAX_KNOWN).collect(),
        }
    }

    fn at(&mut self, due: Instant, call: Call) {
        self.seq += 1;
        self.schedule.insert((due, self.seq), call);
    }

    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.rng.random_range(lo..hi))
    }

    fn remember(&mut self, id: Uuid) {
        if self.known.len() >= MAX_KNOWN {
            self.known.pop_front();
        }
        self.known.push_back(id);
    }

    fn known_id(&mut self) -> Option<Uuid> {
        if self.known.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.known.len());
        self.known.get(i).copied()
    }

    /// The next request: a due step of a story, else one drawn from the mix.
    fn next_call(&mut self, now: Instant) -> Call {
        if let Some(entry) = self.schedule.first_entry()
            && entry.key().0 <= now
        {
            let call = entry.remove();
            if call.method == Method::PATCH
                && let Some(id) = publish_target(&call)
            {
                self.remember(id);
            }
            return call;
        }
        // Creates are rare, as in the product: each one brings a dozen
        // autosaves, a publish and its visits along.
        let u: f64 = self.rng.random();
        if u < 0.02 && self.schedule.len() < MAX_SCHEDULED {
            return self.create();
        }
        let Some(id) = self.known_id() else {
            return self.create();
        };
        if u < 0.42 {
            get(format!("/api/followups/{id}/analytics"))
        } else if u < 0.92 {
            get(format!("/api/followups/{id}"))
        } else if u < 0.97 {
            self.bad_request(id)
        } else {
            const PROBES: [&str; 5] = [
                "/wp-login.php",
                "/.env",
                "/admin",
                "/phpmyadmin/",
                "/.git/config",
            ];
            get(PROBES[self.rng.random_range(0..PROBES.len())].to_owned())
        }
    }

    fn create(&mut self) -> Call {
        let creator = profile::pick_creator(&mut self.rng, &self.creators).clone();
        let company = profile::company(&mut self.rng);
        let (meeting_type, engagement) = profile::meeting_type(&mut self.rng);
        let outcome = profile::outcome(&mut self.rng);
        let edits = self.rng.random_range(3..=12);
        let creation_seconds = (profile::creation_seconds(&mut self.rng) * 1000.0).round() / 1000.0;
        let visitors = (0..profile::visitor_count(&mut self.rng, engagement))
            .map(|_| {
                (
                    profile::visitor_id(&mut self.rng),
                    profile::device(&mut self.rng),
                    profile::sessions_per_visitor(&mut self.rng),
                )
            })
            .collect();
        let next_action = self.rng.random_bool(0.6);
        // Some clients fill the company and meeting type only while editing.
        let mut body = json!({ "creator_id": creator.id });
        if let Some(region) = creator.region {
            body["creator_region"] = json!(region);
        }
        if self.rng.random_bool(0.5) {
            body["company"] = json!(company);
            body["meeting_type"] = json!(meeting_type);
        }
        Call {
            method: Method::POST,
            path: "/api/followups".to_owned(),
            body: Some(Body::Json(body)),
            plan: Some(Plan {
                outcome,
                edits,
                creation_seconds,
                visitors,
                next_action,
            }),
        }
    }

    /// Schedules the story of a freshly created draft.
    fn schedule_story(&mut self, id: Uuid, plan: Plan) {
        let path = format!("/api/followups/{id}");
        let mut t = Instant::now();
        // Autosaves while the seller writes; the first one sets the fields.
        for i in 0..plan.edits {
            t += self.secs(2.0, 8.0);
            let (company, meeting_type) = if i == 0 {
                (
                    profile::company(&mut self.rng),
                    profile::meeting_type(&mut self.rng).0,
                )
            } else {
                (None, None)
            };
            let mut body = json!({});
            if let Some(c) = company {
                body["company"] = json!(c);
            }
            if let Some(m) = meeting_type {
                body["meeting_type"] = json!(m);
            }
            self.at(t, patch(&path, body));
        }
        t += self.secs(3.0, 20.0);
        let publish = json!({ "publish": true, "creation_seconds": plan.creation_seconds });
        match plan.outcome {
            Outcome::Abandoned => return,
            Outcome::Deleted => {
                self.at(t, delete(&path));
                return;
            }
            Outcome::Published => self.at(t, patch(&path, publish)),
            Outcome::PublishedThenDeleted => {
                self.at(t, patch(&path, publish));
                let later = t + self.secs(60.0, 600.0);
                self.at(later, delete(&path));
            }
        }
        let published = t;
        for (visitor, device, sessions) in plan.visitors {
            let mut v = published + self.secs(5.0, 120.0);
            for _ in 0..sessions {
                let body = json!({ "visitor_id": visitor, "device_type": device });
                self.at(
                    v,
                    Call {
                        method: Method::POST,
                        path: format!("/f/{id}/view"),
                        body: Some(Body::Json(body)),
                        plan: None,
                    },
                );
                v += self.secs(30.0, 300.0);
            }
        }
        if plan.next_action && plan.outcome == Outcome::Published {
            let due = published + self.secs(20.0, 300.0);
            self.at(
                due,
                Call {
                    method: Method::POST,
                    path: format!("/api/followups/{id}/next-action"),
                    body: None,
                    plan: None,
                },
            );
        }
    }

    /// A request the API must refuse with a 4xx.
    fn bad_request(&mut self, known: Uuid) -> Call {
        match self.rng.random_range(0..5) {
            0 => Call {
                method: Method::POST,
                path: "/api/followups".to_owned(),
                body: Some(Body::Json(json!({ "creator_id": "" }))),
                plan: None,
            },
            1 => Call {
                method: Method::POST,
                path: "/api/followups".to_owned(),
                body: Some(Body::Raw("{\"creator_id\": ")),
                plan: None,
            },
            2 => {
                let unknown = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
                get(format!("/api/followups/{unknown}"))
            }
            3 => patch(
                &format!("/api/followups/{known}"),
                json!({ "creation_seconds": -5 }),
            ),
            _ => get("/api/followups/not-a-follow-up/analytics".to_owned()),
        }
    }
}

fn get(path: String) -> Call {
    Call {
        method: Method::GET,
        path,
        body: None,
        plan: None,
    }
}

fn patch(path: &str, body: Value) -> Call {
    Call {
        method: Method::PATCH,
        path: path.to_owned(),
        body: Some(Body::Json(body)),
        plan: None,
    }
}

fn delete(path: &str) -> Call {
    Call {
        method: Method::DELETE,
        path: path.to_owned(),
        body: None,
        plan: None,
    }
}

/// The follow-up a publishing PATCH targets.
fn publish_target(call: &Call) -> Option<Uuid> {
    let Some(Body::Json(body)) = &call.body else {
        return None;
    };
    if body.get("publish") != Some(&Value::Bool(true)) {
        return None;
    }
    call.path
        .strip_prefix("/api/followups/")
        .and_then(|id| Uuid::parse_str(id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Simulation {
        Simulation::new(&TrafficConfig {
            base_url: "http://127.0.0.1:1".to_owned(),
            rps: 10.0,
            seed: 3,
            known: vec![Uuid::nil()],
        })
    }

    #[test]
    fn stories_publish_and_get_visited() {
        let mut s = sim();
        let plan = Plan {
            outcome: Outcome::Published,
            edits: 2,
            creation_seconds: 400.0,
            visitors: vec![("v-1".to_owned(), "mobile", 2)],
            next_action: true,
        };
        let id = Uuid::from_u128(7);
        s.schedule_story(id, plan);
        let calls: Vec<&Call> = s.schedule.values().collect();
        // 2 edits, the publish, 2 sessions, the next action.
        assert_eq!(calls.len(), 6);
        assert_eq!(
            calls.iter().filter(|c| publish_target(c).is_some()).count(),
            1
        );
        assert_eq!(
            calls.iter().filter(|c| c.path.ends_with("/view")).count(),
            2
        );
        // Replaying the schedule in time order, the publish precedes the visits.
        let far = Instant::now() + Duration::from_secs(3_600);
        let order: Vec<Call> = (0..6).map(|_| s.next_call(far)).collect();
        let publish_at = order.iter().position(|c| publish_target(c) == Some(id));
        let first_view = order.iter().position(|c| c.path.ends_with("/view"));
        assert!(publish_at.is_some() && publish_at < first_view);
        assert!(s.known.contains(&id));
    }

    #[test]
    fn the_mix_is_seeded() {
        let now = Instant::now();
        let paths = |mut s: Simulation| -> Vec<String> {
            (0..200).map(|_| s.next_call(now).path).collect()
        };
        assert_eq!(paths(sim()), paths(sim()));
    }

    /// The demo's traced requests leave exemplars in the middleware.
    #[tokio::test]
    async fn generated_traceparents_become_exemplars() {
        use crate::http_metrics::HttpMetricsLayer;
        use axum::{Router, body::Body, http::Request, routing::get};
        use tower::ServiceExt;
        let mut registry = prometheus_client::registry::Registry::default();
        let layer = HttpMetricsLayer::new(&mut registry);
        let app = Router::new()
            .route("/r", get(|| async { "ok" }))
            .layer(layer.clone());
        let header = traceparent();
        let request = Request::get("/r")
            .header("traceparent", &header)
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap();
        let kept = layer.exemplars();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].trace_id, header[3..35]);
        assert_ne!(traceparent(), header, "a new trace id per request");
    }
}
