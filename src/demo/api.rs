//! The demo's reference Follow-Up API: the few endpoints of the real
//! product the OKRs depend on, instrumented with [`HttpMetricsLayer`] and
//! serving its own `/metrics`, as the product's API would.
//!
//! | route | does |
//! |---|---|
//! | `POST /api/followups` | creates a draft: `{creator_id, company?, meeting_type?, creator_region?}` → 201 `{id}` |
//! | `GET /api/followups/{id}` | the follow-up |
//! | `PATCH /api/followups/{id}` | edits fields; `{"publish": true}` publishes, `creation_seconds` is the client's creation timer, relayed to the exporter |
//! | `DELETE /api/followups/{id}` | deletes it |
//! | `GET /api/followups/{id}/analytics` | sessions and unique visitors |
//! | `POST /api/followups/{id}/next-action` | the seller acts: relayed to the exporter, which keeps the first action |
//! | `POST /f/{id}/view` | a prospect opens the shared page: `{visitor_id, device_type}` |
//! | `GET /metrics` | the API's request-latency metrics |
//!
//! Handlers sleep a few tens of milliseconds (with a rare slow tail) so the
//! latency histograms look like a real service's and stay mostly within
//! the targets.
//!
//! The events only the client knows go the documented way (README,
//! *Sending client-side events*): once the publish is committed, the API
//! relays the creation time to the exporter's `POST /api/okr/creation-time`,
//! and a next action to `POST /api/okr/next-action`, with the ingest token
//! ([`ExporterRelay`]). The API never writes the exporter's tables. The
//! exporter's answers map to the API's: 200/201 pass through; its 409 and
//! 422 become the API's (fields renamed to the API's); any other 4xx means
//! the relay itself is misconfigured (wrong token, …): 502; a 5xx, a timeout
//! or an unreachable exporter: 503, to be retried — a retried publish
//! relays the same creation time again, which the exporter stores once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::api_error::ApiError;
use crate::config::{Secret, Settings};
use crate::http_metrics::HttpMetricsLayer;
use crate::ingest::{CreationTimeEvent, IngestResponse, NextActionEvent};

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest accepted text field.
const MAX_TEXT_LEN: usize = 200;
/// Largest creation time the API accepts without settings (one day, the
/// exporter's default `--max-creation-duration`).
const MAX_CREATION_SECONDS: f64 = 86_400.0;
/// How long the API waits for the exporter.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how the API relays client-side events: the exporter's base URL
/// and its ingest token (sent as `Authorization: Bearer`, never logged).
#[derive(Debug, Clone)]
pub struct ExporterRelay {
    base_url: String,
    token: Secret,
    client: reqwest::Client,
}

/// The exporter's error body.
#[derive(Debug, Deserialize)]
struct ExporterError {
    error: String,
    field: Option<String>,
}

impl ExporterRelay {
    /// Relays to the exporter at `base_url` (e.g. `http://127.0.0.1:9464`)
    /// with `token`.
    pub fn new(base_url: impl Into<String>, token: Secret) -> Self {
        let client = reqwest::Client::builder()
            .timeout(RELAY_TIMEOUT)
            .user_agent("okr-exporter-demo-api")
            .build()
            .unwrap_or_default();
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            token,
            client,
        }
    }

    /// POSTs `event` to the exporter's `path`. `Ok(true)` when the exporter
    /// stored something (201), `Ok(false)` when it already had it (200);
    /// otherwise the API's error (see the module documentation).
    async fn send<T: Serialize>(&self, path: &str, event: &T) -> Result<bool, ApiError> {
        let sent = self
            .client
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(self.token.expose())
            .json(event)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(path, error = %e, "demo API: the exporter is unreachable");
                return Err(ApiError::unavailable(
                    "the OKR exporter is unreachable; retry later",
                ));
            }
        };
        let status = resp.status();
        if status.is_success() {
            // The body says the same as the status; read it so that a
            // foreign answer is noticed.
            return match resp.json::<IngestResponse>().await {
                Ok(answer) => Ok(answer.recorded),
                Err(e) => {
                    tracing::warn!(path, error = %e, "demo API: unexpected answer from the exporter");
                    Err(ApiError::Upstream {
                        message: "the OKR exporter answered something unexpected".into(),
                    })
                }
            };
        }
        let answer = resp.json::<ExporterError>().await.ok();
        let message = answer
            .as_ref()
            .map_or_else(|| status.to_string(), |a| a.error.clone());
        let field = answer.and_then(|a| a.field).and_then(|f| match f.as_str() {
            "duration_seconds" => Some("creation_seconds"),
            "followup_id" => Some("id"),
            _ => None,
        });
        match status.as_u16() {
            409 | 422 => {
                tracing::info!(path, status = status.as_u16(), error = %message, "demo API: the exporter refused an event");
                let message = format!("the OKR exporter refused the event: {message}");
                let field = field.map(str::to_owned);
                Err(if status == StatusCode::CONFLICT {
                    ApiError::Conflict { message, field }
                } else {
                    ApiError::Invalid { field, message }
                })
            }
            400..=499 => {
                // The API built this request: a 401 (wrong token) or any
                // other refusal is a configuration error on the server side.
                tracing::error!(path, status = status.as_u16(), error = %message, "demo API: the exporter refused the relay (check the ingest token and URL)");
                Err(ApiError::Upstream {
                    message: format!(
                        "the OKR exporter refused the relayed event ({}): {message}",
                        status.as_u16()
                    ),
                })
            }
            _ => {
                tracing::warn!(path, status = status.as_u16(), error = %message, "demo API: the exporter cannot record events now");
                Err(ApiError::unavailable(format!(
                    "the OKR exporter cannot record events now ({message}); retry later"
                )))
            }
        }
    }
}

/// Shared state of the API's handlers.
#[derive(Clone)]
struct ApiState {
    pool: PgPool,
    registry: Arc<Registry>,
    metrics: HttpMetricsLayer,
    relay: Option<ExporterRelay>,
    max_creation_seconds: f64,
}

/// The API's routes over `pool`, instrumented with an [`HttpMetricsLayer`]
/// registered in `registry`, which `GET /metrics` serves. Without a relay,
/// requests that carry a creation time or a next action are refused with
/// 503 before anything changes ([`serve_api`] relays them).
pub fn router(pool: PgPool, mut registry: Registry) -> Router {
    let metrics = HttpMetricsLayer::new(&mut registry);
    routes(pool, registry, metrics, None, MAX_CREATION_SECONDS)
}

fn routes(
    pool: PgPool,
    registry: Registry,
    metrics: HttpMetricsLayer,
    relay: Option<ExporterRelay>,
    max_creation_seconds: f64,
) -> Router {
    let state = ApiState {
        pool,
        registry: Arc::new(registry),
        metrics: metrics.clone(),
        relay,
        max_creation_seconds,
    };
    Router::new()
        .route("/api/followups", post(create))
        .route(
            "/api/followups/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/followups/{id}/analytics", get(analytics))
        .route("/api/followups/{id}/next-action", post(next_action))
        .route("/f/{id}/view", post(view))
        .route("/metrics", get(metrics_page))
        .fallback(unknown_route)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so the 404 fallback and body-limit rejections are timed too.
        .layer(metrics)
}

/// Serves the API on `listener` until `shutdown` completes, relaying
/// creation times and next actions through `relay`. With `--request-log` in
/// `settings`, every request is also written to `performance_metrics`, and
/// the queue is flushed before returning. Creation times over
/// `--max-creation-duration` are refused before the publish, as the
/// exporter would refuse them after it.
pub async fn serve_api(
    listener: TcpListener,
    pool: PgPool,
    settings: Settings,
    relay: ExporterRelay,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    let (metrics, writer) = crate::server::instrument(&settings, &pool, &mut registry)
        .map_err(std::io::Error::other)?;
    let max_creation_seconds = settings.max_creation_duration.as_secs_f64();
    let app = routes(pool, registry, metrics, Some(relay), max_creation_seconds);
    // The exporter's own server: the same timeouts and connection cap.
    crate::serve::serve(listener, app, settings.http.clone(), shutdown).await;
    if let Some(writer) = writer {
        writer.shutdown().await;
    }
    Ok(())
}

/// A JSON body whose rejections are [`ApiError`]s: 400 malformed, 413 too
/// large, 415 not JSON, 422 wrong shape.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// Simulated work: `lo..=hi` milliseconds, and with probability `tail`
/// three to six times that.
async fn work(lo: u64, hi: u64, tail: f64) {
    let ms = {
        let mut rng = rand::rng();
        let base = rng.random_range(lo..=hi);
        if rng.random_bool(tail) {
            base * rng.random_range(3..=6)
        } else {
            base
        }
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        message: "no follow-up with this id".into(),
        field: Some("id".into()),
    }
}

/// Parses a path id; a value that is not a UUID names no follow-up.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

/// 503 for an event this API has nowhere to relay (a [`router`] without
/// relay), naming the request field that carried it.
fn no_relay(field: Option<&str>) -> ApiError {
    ApiError::Unavailable {
        message: "this API relays no events to an OKR exporter".into(),
        field: field.map(str::to_owned),
        retry_after: None,
    }
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "demo API database error");
    ApiError::unavailable("database unavailable")
}

fn check_text(field: &str, value: Option<&str>, required: bool) -> Result<(), ApiError> {
    match value {
        None if required => Err(ApiError::invalid(field, format!("{field} is required"))),
        Some(v) if required && v.trim().is_empty() => Err(ApiError::invalid(
            field,
            format!("{field} must not be empty"),
        )),
        Some(v) if v.chars().count() > MAX_TEXT_LEN => Err(ApiError::invalid(
            field,
            format!("{field} is longer than {MAX_TEXT_LEN} characters"),
        )),
        _ => Ok(()),
    }
}

/// A follow-up as the API returns it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Followup {
    id: Uuid,
    creator_id: String,
    company: Option<String>,
    meeting_type: Option<String>,
    creator_region: Option<String>,
    status: String,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
}

const FOLLOWUP_COLUMNS: &str = "id, creator_id, company, meeting_type, creator_region, status, \
                                created_at, published_at, deleted_at";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFollowup {
    creator_id: String,
    company: Option<String>,
    meeting_type: Option<String>,
    creator_region: Option<String>,
}

#[derive(Debug, Serialize)]
struct Created {
    id: Uuid,
}

async fn create(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<CreateFollowup>,
) -> Result<impl IntoResponse, ApiError> {
    check_text("creator_id", Some(&body.creator_id), true)?;
    check_text("company", body.company.as_deref(), false)?;
    check_text("meeting_type", body.meeting_type.as_deref(), false)?;
    check_text("creator_region", body.creator_region.as_deref(), false)?;
    work(10, 60, 0.02).await;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO followups (id, creator_id, company, meeting_type, creator_region,
                                status, created_at)
         VALUES ($1, $2, $3, $4, $5, 'draft', now())",
    )
    .bind(id)
    .bind(body.creator_id.trim())
    .bind(&body.company)
    .bind(&body.meeting_type)
    .bind(&body.creator_region)
    .execute(&state.pool)
    .await
    .map_err(db_error)?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Followup>, ApiError> {
    let id = parse_id(&id)?;
    work(5, 30, 0.01).await;
    let sql = format!("SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE id = $1");
    sqlx::query_as::<_, Followup>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&state.pool)
        .await
        .map_err(db_error)?
        .map(Json)
        .ok_or_else(not_found)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateFollowup {
    company: Option<String>,
    meeting_type: Option<String>,
    creator_region: Option<String>,
    #[serde(default)]
    publish: bool,
    creation_seconds: Option<f64>,
}

async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateFollowup>,
) -> Result<Json<Followup>, ApiError> {
    let id = parse_id(&id)?;
    check_text("company", body.company.as_deref(), false)?;
    check_text("meeting_type", body.meeting_type.as_deref(), false)?;
    check_text("creator_region", body.creator_region.as_deref(), false)?;
    if let Some(s) = body.creation_seconds {
        let max = state.max_creation_seconds;
        if !(s.is_finite() && (0.0..=max).contains(&s)) {
            return Err(ApiError::invalid(
                "creation_seconds",
                format!("creation_seconds must be between 0 and {max}"),
            ));
        }
        if state.relay.is_none() {
            return Err(no_relay(Some("creation_seconds")));
        }
    }
    work(5, 40, 0.02).await;
    let mut tx = state.pool.begin().await.map_err(db_error)?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT status FROM followups WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let Some((status,)) = current else {
        return Err(not_found());
    };
    if status == "deleted" {
        return Err(ApiError::Conflict {
            message: "the follow-up is deleted".into(),
            field: None,
        });
    }
    let publish_now = body.publish && status == "draft";
    if body.creation_seconds.is_some() && !(publish_now || status == "published") {
        return Err(ApiError::invalid(
            "creation_seconds",
            "creation_seconds is sent with the publish request",
        ));
    }
    let sql = format!(
        "UPDATE followups
            SET company = coalesce($2, company),
                meeting_type = coalesce($3, meeting_type),
                creator_region = coalesce($4, creator_region),
                status = CASE WHEN $5 THEN 'published' ELSE status END,
                published_at = CASE WHEN $5 THEN now() ELSE published_at END
          WHERE id = $1
      RETURNING {FOLLOWUP_COLUMNS}"
    );
    let row: Followup = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(&body.company)
        .bind(&body.meeting_type)
        .bind(&body.creator_region)
        .bind(publish_now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    // Relayed once the publish is stored, with the follow-up's own publish
    // time. A retry of the same request relays the same event again, which
    // the exporter stores once.
    if let (Some(seconds), Some(published_at), Some(relay)) =
        (body.creation_seconds, row.published_at, &state.relay)
    {
        let event = CreationTimeEvent {
            followup_id: id,
            duration_seconds: seconds,
            started_at: None,
            published_at: Some(published_at),
        };
        relay
            .send("/api/okr/creation-time", &event)
            .await
            .map_err(|e| {
                let e = e.map_message(|m| {
                    format!(
                        "the follow-up is published, but its creation time was not recorded: {m}"
                    )
                });
                // What the exporter refused is this request's creation time.
                match e {
                    ApiError::Conflict { message, .. } => ApiError::Conflict {
                        message,
                        field: Some("creation_seconds".into()),
                    },
                    ApiError::Invalid { message, .. } => {
                        ApiError::invalid("creation_seconds", message)
                    }
                    e => e,
                }
            })?;
    }
    Ok(Json(row))
}

async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Followup>, ApiError> {
    let id = parse_id(&id)?;
    work(5, 30, 0.01).await;
    let sql = format!(
        "UPDATE followups SET status = 'deleted', deleted_at = coalesce(deleted_at, now())
          WHERE id = $1 RETURNING {FOLLOWUP_COLUMNS}"
    );
    sqlx::query_as::<_, Followup>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&state.pool)
        .await
        .map_err(db_error)?
        .map(Json)
        .ok_or_else(not_found)
}

#[derive(Debug, Serialize)]
struct Devices {
    mobile: i64,
    tablet: i64,
    desktop: i64,
    other: i64,
}

#[derive(Debug, Serialize)]
struct Analytics {
    followup_id: Uuid,
    sessions: i64,
    unique_visitors: i64,
    devices: Devices,
}

async fn analytics(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Analytics>, ApiError> {
    let id = parse_id(&id)?;
    work(20, 120, 0.03).await;
    let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT count(s.id),
                count(DISTINCT s.visitor_id),
                count(s.id) FILTER (WHERE s.device_type = 'mobile'),
                count(s.id) FILTER (WHERE s.device_type = 'tablet'),
                count(s.id) FILTER (WHERE s.device_type = 'desktop')
           FROM followups f
           LEFT JOIN analytics_sessions s ON s.followup_id = f.id
          WHERE f.id = $1
          GROUP BY f.id",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_error)?;
    let (sessions, unique_visitors, mobile, tablet, desktop) = row.ok_or_else(not_found)?;
    Ok(Json(Analytics {
        followup_id: id,
        sessions,
        unique_visitors,
        devices: Devices {
            mobile,
            tablet,
            desktop,
            other: sessions - mobile - tablet - desktop,
        },
    }))
}

/// The answer to a next action: the event relayed, and whether the
/// exporter recorded it (false when it already holds an earlier or the
/// same action, which stays the follow-up's next action).
#[derive(Debug, Serialize)]
struct NextAction {
    followup_id: Uuid,
    action_at: DateTime<Utc>,
    days_to_action: f64,
    recorded: bool,
}

async fn next_action(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let relay = state.relay.as_ref().ok_or_else(|| no_relay(None))?;
    work(5, 25, 0.01).await;
    let published: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT published_at FROM followups WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await
            .map_err(db_error)?;
    let Some((published_at,)) = published else {
        return Err(not_found());
    };
    let Some(published_at) = published_at else {
        return Err(ApiError::Conflict {
            message: "the follow-up is not published".into(),
            field: None,
        });
    };
    // Now, at the database's microsecond precision, and never before the
    // publish (the exporter refuses an action before it).
    let now = Utc::now();
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let action_at = now.max(published_at);
    let event = NextActionEvent {
        followup_id: id,
        action_at,
    };
    let recorded = relay.send("/api/okr/next-action", &event).await?;
    let days_to_action = (action_at - published_at)
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 86_400e6);
    let status = if recorded {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = NextAction {
        followup_id: id,
        action_at,
        days_to_action,
        recorded,
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct View {
    visitor_id: String,
    device_type: String,
}

async fn view(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<View>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    check_text("visitor_id", Some(&body.visitor_id), true)?;
    check_text("device_type", Some(&body.device_type), true)?;
    work(3, 15, 0.01).await;
    // Only a published, live follow-up has a page to open.
    let done = sqlx::query(
        "INSERT INTO analytics_sessions (followup_id, visitor_id, device_type, started_at)
         SELECT id, $2, $3, now() FROM followups
          WHERE id = $1 AND published_at IS NOT NULL AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(&body.visitor_id)
    .bind(&body.device_type)
    .execute(&state.pool)
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::scrape::respond(&state.registry, Some(&state.metrics), &headers)
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound {
        message: "no such route".into(),
        field: None,
    }
}
