//! Authenticated ingestion of the events only the client knows (DESIGN §5):
//! the creation timer and the next action after publishing.
//!
//! Service-to-service: the Follow-Up backend relays what its frontend
//! measured, with the bearer token. Every rejection is a JSON error with the
//! right 4xx status and changes no row; a retry of the same event is stored
//! once.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api_error::ApiError;
use crate::config::Settings;
use crate::server::{AppState, secret_eq};

/// How far in the future a client timestamp may be (clock skew).
const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// The ingestion routes, with the configured body limit.
pub fn routes(settings: &Settings) -> Router<AppState> {
    Router::new()
        .route("/api/okr/creation-time", post(creation_time))
        .route("/api/okr/next-action", post(next_action))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
}

/// `POST /api/okr/creation-time` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreationTimeEvent {
    /// The follow-up that was published.
    pub followup_id: Uuid,
    /// Client-measured time from the "Create Follow-Up" click to "Publish".
    pub duration_seconds: f64,
    /// When the click happened (optional).
    pub started_at: Option<DateTime<Utc>>,
    /// When the follow-up was published (defaults to followups.published_at, else now).
    pub published_at: Option<DateTime<Utc>>,
}

/// `POST /api/okr/next-action` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NextActionEvent {
    /// The published follow-up.
    pub followup_id: Uuid,
    /// When the seller's next action happened.
    pub action_at: DateTime<Utc>,
}

/// Outcome of an ingestion call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IngestResponse {
    /// The follow-up concerned.
    pub followup_id: Uuid,
    /// True when this call stored or changed a row.
    pub recorded: bool,
    /// What happened, in words.
    pub detail: String,
}

/// A JSON body parsed with precise errors: 415 for another media type, 413
/// over the limit, 400 for malformed JSON, 422 naming the field whose value
/// is wrong.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                ApiError::malformed("could not read the request body")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T`, classifying errors as 400 (syntax) or 422 (value).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::malformed(format!("malformed JSON: {inner}"))
            }
            Category::Data => {
                let msg = inner.to_string();
                // A missing or unknown field is reported at the parent path;
                // name the field itself.
                let field = msg
                    .split('`')
                    .nth(1)
                    .filter(|_| {
                        msg.starts_with("missing field") || msg.starts_with("unknown field")
                    })
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        if path == "." {
                            String::new()
                        } else {
                            path.clone()
                        }
                    });
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                if field.is_empty() {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)
                } else {
                    ApiError::invalid(&field, msg)
                }
            }
        }
    })
}

/// Checks the bearer token; 503 while no token is configured.
fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.settings.ingest_token else {
        return Err(ApiError::unavailable(
            "ingestion is disabled: no ingest token is configured (--ingest-token / OKR_INGEST_TOKEN)",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
        });
    match presented {
        None => Err(ApiError::unauthorized("missing bearer token")),
        Some(t) if secret_eq(expected, t) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
    }
}

fn db_unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "ingestion could not reach the database");
    ApiError::unavailable("database unavailable; retry later")
}

fn not_in_future(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), ApiError> {
    if t > now + ChronoDuration::seconds(MAX_CLOCK_SKEW_SECONDS) {
        return Err(ApiError::invalid(
            field,
            format!("{field} is in the future"),
        ));
    }
    Ok(())
}

/// Validates a creation-time event against the settings and `now`.
pub fn validate_creation_time(
    ev: &CreationTimeEvent,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let d = ev.duration_seconds;
    if !d.is_finite() || d < 0.0 {
        return Err(ApiError::invalid(
            "duration_seconds",
            "duration_seconds must be a finite number >= 0",
        ));
    }
    let max = settings.max_creation_duration.as_secs_f64();
    if d > max {
        return Err(ApiError::invalid(
            "duration_seconds",
            format!("duration_seconds exceeds the maximum of {max} s"),
        ));
    }
    if let Some(s) = ev.started_at {
        not_in_future("started_at", s, now)?;
    }
    if let Some(p) = ev.published_at {
        not_in_future("published_at", p, now)?;
    }
    if let (Some(s), Some(p)) = (ev.started_at, ev.published_at)
        && p < s
    {
        return Err(ApiError::invalid(
            "published_at",
            "published_at is before started_at",
        ));
    }
    Ok(())
}

async fn creation_time(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<JsonBody<CreationTimeEvent>, ApiError>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let JsonBody(ev) = body?;
    let now = Utc::now();
    validate_creation_time(&ev, &state.settings, now)?;

    let followup: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT published_at FROM followups WHERE id = $1")
            .bind(ev.followup_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(db_unavailable)?;
    let Some((source_published,)) = followup else {
        return Err(ApiError::invalid("followup_id", "unknown follow-up"));
    };
    let published_at = ev.published_at.or(source_published).unwrap_or(now);
    let started_at = ev.started_at.or_else(|| {
        ChronoDuration::from_std(std::time::Duration::from_secs_f64(ev.duration_seconds))
            .ok()
            .map(|d| published_at - d)
    });

    // The primary key makes a retry a no-op; the first event wins.
    let inserted = sqlx::query(
        "INSERT INTO okr_creation_time (followup_id, started_at, published_at, duration_seconds, status)
         VALUES ($1, $2, $3, $4, 'published')
         ON CONFLICT (followup_id) DO NOTHING",
    )
    .bind(ev.followup_id)
    .bind(started_at)
    .bind(published_at)
    .bind(ev.duration_seconds)
    .execute(&state.pool)
    .await
    .map_err(db_unavailable)?
    .rows_affected();
    if inserted == 1 {
        return Ok((
            StatusCode::CREATED,
            Json(IngestResponse {
                followup_id: ev.followup_id,
                recorded: true,
                detail: "creation time recorded".into(),
            }),
        )
            .into_response());
    }
    let (existing,): (f64,) =
        sqlx::query_as("SELECT duration_seconds FROM okr_creation_time WHERE followup_id = $1")
            .bind(ev.followup_id)
            .fetch_one(&state.pool)
            .await
            .map_err(db_unavailable)?;
    if existing == ev.duration_seconds {
        Ok((
            StatusCode::OK,
            Json(IngestResponse {
                followup_id: ev.followup_id,
                recorded: false,
                detail: "already recorded (duplicate event)".into(),
            }),
        )
            .into_response())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a different creation time ({existing} s) is already recorded for this follow-up"
            ),
        )
        .field("followup_id"))
    }
}

async fn next_action(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<JsonBody<NextActionEvent>, ApiError>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let JsonBody(ev) = body?;
    let now = Utc::now();
    not_in_future("action_at", ev.action_at, now)?;

    let followup: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT published_at FROM followups WHERE id = $1")
            .bind(ev.followup_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(db_unavailable)?;
    let published_at = match followup {
        None => return Err(ApiError::invalid("followup_id", "unknown follow-up")),
        Some((None,)) => {
            return Err(ApiError::invalid(
                "followup_id",
                "the follow-up is not published",
            ));
        }
        Some((Some(p),)) => p,
    };
    if ev.action_at < published_at {
        return Err(ApiError::invalid(
            "action_at",
            "action_at is before the follow-up was published",
        ));
    }
    let days = (ev.action_at - published_at)
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 86_400e6);

    // The next action is the first one after publishing: a retry changes
    // nothing, a later action is acknowledged but not stored, an earlier one
    // replaces the stored one.
    let changed = sqlx::query(
        "INSERT INTO okr_next_actions (followup_id, action_at, published_at, days_to_action)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (followup_id) DO UPDATE
            SET action_at = EXCLUDED.action_at,
                published_at = EXCLUDED.published_at,
                days_to_action = EXCLUDED.days_to_action,
                recorded_at = now()
          WHERE okr_next_actions.action_at > EXCLUDED.action_at",
    )
    .bind(ev.followup_id)
    .bind(ev.action_at)
    .bind(published_at)
    .bind(days)
    .execute(&state.pool)
    .await
    .map_err(db_unavailable)?
    .rows_affected();
    let (status, detail) = if changed == 1 {
        (StatusCode::CREATED, "next action recorded")
    } else {
        (
            StatusCode::OK,
            "an earlier or identical next action is already recorded; nothing changed",
        )
    };
    Ok((
        status,
        Json(IngestResponse {
            followup_id: ev.followup_id,
            recorded: changed == 1,
            detail: detail.into(),
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified() {
        let e = parse_json::<CreationTimeEvent>(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_json::<CreationTimeEvent>(br#"{"duration_seconds": 3}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field.as_deref(), Some("followup_id"));
        let e =
            parse_json::<CreationTimeEvent>(br#"{"followup_id": "nope", "duration_seconds": 3}"#)
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("followup_id"));
        let e = parse_json::<CreationTimeEvent>(
            br#"{"followup_id": "6f1c1f9e-0000-4000-8000-000000000000", "duration_seconds": "x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("duration_seconds"));
        let e = parse_json::<CreationTimeEvent>(
            br#"{"followup_id": "6f1c1f9e-0000-4000-8000-000000000000", "duration_seconds": 1, "extra": 1}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("extra"));
    }
}
