//! Authenticated ingestion of the events only the client knows (DESIGN §5):
//! the creation timer and the next action after publishing.
//!
//! Service-to-service: the Follow-Up backend relays what its frontend
//! measured, with the bearer token. Every rejection is a JSON error with the
//! right 4xx status and changes no row; a retry of the same event is stored
//! once. The field at fault is named from the deserializer's path, never
//! read out of an error message. Client timestamps are checked against the
//! follow-up's own row ([`creation_times`]). While the database is known to
//! be down, events are refused at once with 503 and `Retry-After`
//! ([`crate::db_availability`]).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api_error::ApiError;
use crate::auth;
use crate::config::Settings;
use crate::db_availability::{RETRY_AFTER, Ticket, Unavailable};
use crate::state::AppState;

/// How far in the future a client timestamp may be (clock skew).
const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// How far a client's timestamp may be from the one it must agree with:
/// `published_at` from the follow-up's publish time, `started_at` from the
/// follow-up's creation and from `published_at − duration_seconds`. Absorbs
/// rounding (the database keeps microseconds, clients often milliseconds or
/// seconds) and the small clock difference between the two backends.
pub const TIMESTAMP_TOLERANCE: ChronoDuration = ChronoDuration::seconds(1);

/// A field path echoed in an error is cut at this many characters.
const MAX_FIELD_CHARS: usize = 128;

/// A deserializer's message echoed in an error is cut at this many characters.
const MAX_MESSAGE_CHARS: usize = 300;

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
    /// When the click happened (optional; must agree with the follow-up's
    /// creation and with `published_at − duration_seconds`).
    pub started_at: Option<DateTime<Utc>>,
    /// When the follow-up was published (optional; must agree with
    /// followups.published_at, which is what is stored).
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

/// A request body read from JSON through a wire form whose fields are all
/// optional, so that a missing field is named by this code rather than
/// found in serde's message.
pub trait FromJson: Sized {
    /// The body as sent: every field optional, unknown fields refused.
    type Wire: DeserializeOwned;
    /// The body with its required fields present (422 naming the first
    /// missing one otherwise).
    fn from_wire(wire: Self::Wire) -> Result<Self, ApiError>;
}

/// Wire form of [`CreationTimeEvent`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "CreationTimeEvent")]
pub struct CreationTimeWire {
    followup_id: Option<Uuid>,
    duration_seconds: Option<f64>,
    started_at: Option<DateTime<Utc>>,
    published_at: Option<DateTime<Utc>>,
}

/// Wire form of [`NextActionEvent`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "NextActionEvent")]
pub struct NextActionWire {
    followup_id: Option<Uuid>,
    action_at: Option<DateTime<Utc>>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
}

impl FromJson for CreationTimeEvent {
    type Wire = CreationTimeWire;

    fn from_wire(w: CreationTimeWire) -> Result<Self, ApiError> {
        Ok(Self {
            followup_id: required(w.followup_id, "followup_id")?,
            duration_seconds: required(w.duration_seconds, "duration_seconds")?,
            started_at: w.started_at,
            published_at: w.published_at,
        })
    }
}

impl FromJson for NextActionEvent {
    type Wire = NextActionWire;

    fn from_wire(w: NextActionWire) -> Result<Self, ApiError> {
        Ok(Self {
            followup_id: required(w.followup_id, "followup_id")?,
            action_at: required(w.action_at, "action_at")?,
        })
    }
}

/// A JSON body parsed with precise errors: 415 for another media type, 413
/// over the limit, 400 for anything that is not one JSON value, 422 naming
/// the field whose value is wrong, missing, unknown or repeated.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: FromJson,
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
            return Err(ApiError::UnsupportedMediaType {
                message: "expected Content-Type: application/json".into(),
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    message: "request body too large".into(),
                }
            } else {
                ApiError::Malformed {
                    message: "could not read the request body".into(),
                    field: None,
                }
            }
        })?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T`'s wire form, then requires `T`'s fields.
pub fn parse_body<T: FromJson>(bytes: &[u8]) -> Result<T, ApiError> {
    T::from_wire(parse_json(bytes)?)
}

/// Parses `bytes` as `T`: 400 for anything that is not exactly one JSON
/// value, 422 for a key repeated in an object, a value of the wrong type or
/// an unknown field. The field is the path the deserializer reports
/// (`a.b[2].c`), absent when the body as a whole is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_syntax_and_keys(bytes)?;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        let field = field_of(err.path().iter().map(Segment::from));
        classified(err.inner(), field)
    })?;
    de.end().map_err(|e| classified(&e, None))?;
    Ok(value)
}

/// An error of the typed pass: syntax was checked before, so this is a
/// value that does not fit (422), unless the input changed under us.
fn classified(e: &serde_json::Error, field: Option<String>) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::Invalid {
            field,
            message: without_position(e),
        },
        Category::Syntax | Category::Eof | Category::Io => ApiError::Malformed {
            message: format!("malformed JSON: {e}"),
            field,
        },
    }
}

/// The error's message without serde_json's " at line L column C", cut at
/// [`MAX_MESSAGE_CHARS`] (serde quotes the offending value, which may be
/// most of the body).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut text = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
    if let Some((cut, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
    Unknown,
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Map { key } => Self::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Self::Key(variant.clone()),
            serde_path_to_error::Segment::Seq { index } => Self::Index(*index),
            serde_path_to_error::Segment::Unknown => Self::Unknown,
        }
    }
}

/// `a.b[2].c`, cut at [`MAX_FIELD_CHARS`]; `None` for the root.
fn field_of(path: impl IntoIterator<Item = Segment>) -> Option<String> {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    if let Some((cut, _)) = out.char_indices().nth(MAX_FIELD_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

/// The first pass over a body: exactly one well-formed JSON value (400
/// otherwise, naming the field the error is in), and no object that repeats
/// a key (422 naming it: which of the two values counts would be a guess).
fn check_syntax_and_keys(bytes: &[u8]) -> Result<(), ApiError> {
    let path = RefCell::new(Vec::new());
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let checked = KeyCheck {
        path: &path,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    let Err(e) = checked else {
        return Ok(());
    };
    let field = field_of(path.take());
    if duplicate.get() {
        let field = field.unwrap_or_default();
        let message = format!("{field} is given more than once");
        return Err(ApiError::invalid(field, message));
    }
    Err(ApiError::Malformed {
        message: format!("malformed JSON: {e}"),
        field,
    })
}

/// Walks any JSON value, failing at the first object that repeats a key.
/// On failure `path` ends where the error is (serde_json bounds the depth).
#[derive(Clone, Copy)]
struct KeyCheck<'a> {
    path: &'a RefCell<Vec<Segment>>,
    duplicate: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for KeyCheck<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCheck<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0.. {
            self.path.borrow_mut().push(Segment::Index(i));
            let more = seq.next_element_seed(self)?.is_some();
            self.path.borrow_mut().pop();
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            self.path.borrow_mut().push(Segment::Key(key.clone()));
            if !seen.insert(key) {
                self.duplicate.set(true);
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self)?;
            self.path.borrow_mut().pop();
        }
        Ok(())
    }
}

/// Reports `result` to the availability gate; an error is a 503.
fn observed<T>(ticket: &Ticket, result: Result<T, sqlx::Error>) -> Result<T, ApiError> {
    ticket.observe(&result);
    result.map_err(|e| {
        tracing::warn!(error = %e, probe = ticket.is_probe(), "ingestion could not use the database");
        ApiError::from(Unavailable {
            retry_after: RETRY_AFTER,
        })
    })
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

/// Checks a creation-time event on its own, before the follow-up is read:
/// the duration's range, no timestamp in the future, start before publish.
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

/// A follow-up's own times, from the source table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowupTimes {
    /// followups.created_at.
    pub created_at: DateTime<Utc>,
    /// followups.published_at; `None` while it is a draft.
    pub published_at: Option<DateTime<Utc>>,
}

/// The row a creation-time event stores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CreationTimes {
    /// The client's `started_at`, or `published_at − duration_seconds`.
    pub started_at: DateTime<Utc>,
    /// Always the follow-up's own publish time.
    pub published_at: DateTime<Utc>,
    /// The client's duration (−0 stored as 0).
    pub duration_seconds: f64,
}

/// Checks an event (already through [`validate_creation_time`]) against its
/// follow-up, with P its publish time, C its creation time and T
/// [`TIMESTAMP_TOLERANCE`] (1 s):
///
/// - the follow-up is published (`followup_id` otherwise);
/// - `published_at`, when sent, is within T of P; P is what is stored;
/// - `started_at`, when sent, is in [C − T, P + T] and within T of
///   P − `duration_seconds`; it is stored as sent;
/// - without `started_at`, P − `duration_seconds` is stored; it is not
///   held to C, because the click may come before the draft's row is
///   written (and the demo compresses its sellers' time).
pub fn creation_times(
    ev: &CreationTimeEvent,
    followup: FollowupTimes,
) -> Result<CreationTimes, ApiError> {
    let Some(published) = followup.published_at else {
        return Err(ApiError::invalid(
            "followup_id",
            "the follow-up is not published: send its creation time once it is",
        ));
    };
    let t = TIMESTAMP_TOLERANCE;
    if let Some(p) = ev.published_at
        && (p - published).abs() > t
    {
        return Err(ApiError::invalid(
            "published_at",
            format!(
                "published_at must be the follow-up's publish time ({}) within {} s",
                published.to_rfc3339(),
                t.num_seconds()
            ),
        ));
    }
    // +0.0 turns −0 into 0.
    let duration_seconds = ev.duration_seconds + 0.0;
    let duration = ChronoDuration::microseconds((duration_seconds * 1e6).round() as i64);
    let started_at = match ev.started_at {
        None => published.checked_sub_signed(duration).ok_or_else(|| {
            ApiError::invalid("duration_seconds", "duration_seconds is out of range")
        })?,
        Some(s) => {
            if s > published + t {
                return Err(ApiError::invalid(
                    "started_at",
                    "started_at is after the follow-up was published",
                ));
            }
            if s < followup.created_at - t {
                return Err(ApiError::invalid(
                    "started_at",
                    format!(
                        "started_at is before the follow-up was created ({})",
                        followup.created_at.to_rfc3339()
                    ),
                ));
            }
            if ((published - s) - duration).abs() > t {
                return Err(ApiError::invalid(
                    "started_at",
                    format!(
                        "started_at must be the publish time minus duration_seconds within {} s",
                        t.num_seconds()
                    ),
                ));
            }
            s
        }
    };
    Ok(CreationTimes {
        started_at,
        published_at: published,
        duration_seconds,
    })
}

async fn creation_time(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<CreationTimeEvent>, ApiError>,
) -> Result<Response, ApiError> {
    auth::require_ingest_token(&state.settings, &headers)?;
    let JsonBody(ev) = body?;
    validate_creation_time(&ev, &state.settings, Utc::now())?;
    let db = state.database.admit()?;

    let followup: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = observed(
        &db,
        sqlx::query_as("SELECT created_at, published_at FROM followups WHERE id = $1")
            .bind(ev.followup_id)
            .fetch_optional(&state.pool)
            .await,
    )?;
    let Some((created_at, published_at)) = followup else {
        return Err(ApiError::invalid("followup_id", "unknown follow-up"));
    };
    let row = creation_times(
        &ev,
        FollowupTimes {
            created_at,
            published_at,
        },
    )?;

    // The primary key makes a retry a no-op; the first event wins.
    let inserted = observed(
        &db,
        sqlx::query(
            "INSERT INTO okr_creation_time (followup_id, started_at, published_at, duration_seconds, status)
             VALUES ($1, $2, $3, $4, 'published')
             ON CONFLICT (followup_id) DO NOTHING",
        )
        .bind(ev.followup_id)
        .bind(row.started_at)
        .bind(row.published_at)
        .bind(row.duration_seconds)
        .execute(&state.pool)
        .await,
    )?
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
    let (existing,): (f64,) = observed(
        &db,
        sqlx::query_as("SELECT duration_seconds FROM okr_creation_time WHERE followup_id = $1")
            .bind(ev.followup_id)
            .fetch_one(&state.pool)
            .await,
    )?;
    if existing == row.duration_seconds {
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
        Err(ApiError::Conflict {
            message: format!(
                "a different creation time ({existing} s) is already recorded for this follow-up"
            ),
            field: Some("followup_id".into()),
        })
    }
}

async fn next_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<NextActionEvent>, ApiError>,
) -> Result<Response, ApiError> {
    auth::require_ingest_token(&state.settings, &headers)?;
    let JsonBody(ev) = body?;
    not_in_future("action_at", ev.action_at, Utc::now())?;
    let db = state.database.admit()?;

    let followup: Option<(Option<DateTime<Utc>>,)> = observed(
        &db,
        sqlx::query_as("SELECT published_at FROM followups WHERE id = $1")
            .bind(ev.followup_id)
            .fetch_optional(&state.pool)
            .await,
    )?;
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
    let changed = observed(
        &db,
        sqlx::query(
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
        .await,
    )?
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

    const ID: &str = "6f1c1f9e-0000-4000-8000-000000000000";

    fn err<T: FromJson + fmt::Debug>(body: &str) -> ApiError {
        parse_body::<T>(body.as_bytes()).unwrap_err()
    }

    fn field(e: &ApiError) -> Option<&str> {
        e.field()
    }

    #[test]
    fn missing_wrong_typed_unknown_and_repeated_fields_are_named() {
        let e = err::<CreationTimeEvent>(r#"{"duration_seconds": 3}"#);
        assert_eq!(
            (e.status(), field(&e)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("followup_id"))
        );
        let e = err::<CreationTimeEvent>(&format!(r#"{{"followup_id": "{ID}"}}"#));
        assert_eq!(field(&e), Some("duration_seconds"));
        let e = err::<CreationTimeEvent>(r#"{"followup_id": null, "duration_seconds": 3}"#);
        assert_eq!(field(&e), Some("followup_id"), "null is missing");
        let e = err::<NextActionEvent>(&format!(r#"{{"followup_id": "{ID}"}}"#));
        assert_eq!(field(&e), Some("action_at"));

        for (body, at) in [
            (
                r#"{"followup_id": "nope", "duration_seconds": 3}"#,
                "followup_id",
            ),
            (
                r#"{"followup_id": 7, "duration_seconds": 3}"#,
                "followup_id",
            ),
            (
                r#"{"followup_id": {"id": [1, 2]}, "duration_seconds": 3}"#,
                "followup_id",
            ),
        ] {
            let e = err::<CreationTimeEvent>(body);
            assert_eq!(
                (e.status(), field(&e)),
                (StatusCode::UNPROCESSABLE_ENTITY, Some(at)),
                "{body}"
            );
        }
        for value in [r#""x""#, r#""5""#, "true", "[]", "{}"] {
            let e = err::<CreationTimeEvent>(&format!(
                r#"{{"followup_id": "{ID}", "duration_seconds": {value}}}"#
            ));
            assert_eq!(
                (e.status(), field(&e)),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("duration_seconds")),
                "{value}"
            );
        }
        let e = err::<CreationTimeEvent>(&format!(
            r#"{{"followup_id": "{ID}", "duration_seconds": 1, "started_at": "yesterday"}}"#
        ));
        assert_eq!(field(&e), Some("started_at"));
        assert!(!e.message().contains("line"), "{}", e.message());
        let e = err::<CreationTimeEvent>(&format!(
            r#"{{"followup_id": "{ID}", "duration_seconds": 1, "extra": {{"a": 1}}}}"#
        ));
        assert_eq!(
            (e.status(), field(&e)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("extra"))
        );
        let e = err::<CreationTimeEvent>(&format!(
            r#"{{"followup_id": "{ID}", "duration_seconds": 1, "duration_seconds": 1}}"#
        ));
        assert_eq!(
            (e.status(), field(&e)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("duration_seconds")),
            "{}",
            e.message()
        );
        // The body as a whole is of the wrong type: no field.
        for body in ["null", "[]", "\"x\"", "3"] {
            let e = err::<CreationTimeEvent>(body);
            assert_eq!(
                (e.status(), field(&e)),
                (StatusCode::UNPROCESSABLE_ENTITY, None)
            );
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        at: DateTime<Utc>,
        n: Option<u8>,
    }

    #[test]
    fn nested_fields_are_named_by_their_path() {
        let ok = r#"{"inner": [{"at": "2026-01-01T00:00:00Z"}]}"#;
        assert!(parse_json::<Outer>(ok.as_bytes()).is_ok());
        for (body, status, at) in [
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z"}, {"at": 5}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inner[1].at",
            ),
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z", "n": 256}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inner[0].n",
            ),
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z", "typo": 1}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inner[0].typo",
            ),
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z", "n": 1, "n": 1}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "inner[0].n",
            ),
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z", "n": 1e400}]}"#,
                StatusCode::BAD_REQUEST,
                "inner[0].n",
            ),
            (
                r#"{"inner": [{"at": "2026-01-01T00:00:00Z"}, ]}"#,
                StatusCode::BAD_REQUEST,
                "inner[1]",
            ),
        ] {
            let e = parse_json::<Outer>(body.as_bytes()).unwrap_err();
            assert_eq!((e.status(), field(&e)), (status, Some(at)), "{body}: {e}");
        }
        // A missing field of a nested struct without a wire form is not
        // named (the path stops at its object) — which is why the request
        // bodies are read through wire forms with optional fields.
        let e = parse_json::<Outer>(br#"{"inner": [{}]}"#).unwrap_err();
        assert_eq!(field(&e), Some("inner[0]"));
    }

    #[test]
    fn anything_but_one_json_value_is_malformed() {
        for body in [
            &b""[..],
            b"{not json",
            b"{\"followup_id\": ",
            b"{} {}",
            b"{}x",
            b"[[[[[[[[",
            b"\"\xff\"",
            b"{\"a\": NaN}",
        ] {
            let e = parse_body::<CreationTimeEvent>(body).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body:?}: {e}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_body::<CreationTimeEvent>(deep.as_bytes()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        let e = parse_body::<CreationTimeEvent>(
            format!(r#"{{"followup_id": "{ID}", "duration_seconds": -1e400}}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (e.status(), field(&e)),
            (StatusCode::BAD_REQUEST, Some("duration_seconds"))
        );
        // A field path and a message echoed back are bounded.
        let long = "k".repeat(5000);
        let e =
            parse_body::<CreationTimeEvent>(format!(r#"{{"{long}": 1}}"#).as_bytes()).unwrap_err();
        assert_eq!(
            field(&e).map(|f| f.chars().count()),
            Some(MAX_FIELD_CHARS + 1)
        );
        assert!(
            e.message().chars().count() <= MAX_MESSAGE_CHARS + 1,
            "{}",
            e.message()
        );
        let e =
            parse_body::<CreationTimeEvent>(format!(r#"{{"followup_id": "{long}"}}"#).as_bytes())
                .unwrap_err();
        assert_eq!(field(&e), Some("followup_id"));
        assert!(
            e.message().chars().count() <= MAX_MESSAGE_CHARS + 1,
            "{}",
            e.message()
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn event(duration: f64, started: Option<&str>, published: Option<&str>) -> CreationTimeEvent {
        CreationTimeEvent {
            followup_id: Uuid::nil(),
            duration_seconds: duration,
            started_at: started.map(at),
            published_at: published.map(at),
        }
    }

    const CREATED: &str = "2026-03-01T10:00:00Z";
    const PUBLISHED: &str = "2026-03-01T10:10:00Z";

    fn followup() -> FollowupTimes {
        FollowupTimes {
            created_at: at(CREATED),
            published_at: Some(at(PUBLISHED)),
        }
    }

    fn refused_field(ev: CreationTimeEvent) -> Option<String> {
        creation_times(&ev, followup())
            .err()
            .and_then(|e| e.field().map(str::to_owned))
    }

    #[test]
    fn creation_times_agree_with_the_followup() {
        // A draft: refused, nothing stored.
        let draft = FollowupTimes {
            published_at: None,
            ..followup()
        };
        let e = creation_times(&event(5.0, None, None), draft).unwrap_err();
        assert_eq!(
            (e.status(), field(&e)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("followup_id"))
        );

        // published_at: the follow-up's own, within 1 s either way.
        let stored = creation_times(&event(540.0, None, None), followup()).unwrap();
        assert_eq!(stored.published_at, at(PUBLISHED));
        assert_eq!(stored.started_at, at("2026-03-01T10:01:00Z"));
        for ok in [
            "2026-03-01T10:10:01Z",
            "2026-03-01T10:09:59Z",
            "2026-03-01T10:10:00.999Z",
        ] {
            let stored = creation_times(&event(540.0, None, Some(ok)), followup()).unwrap();
            assert_eq!(stored.published_at, at(PUBLISHED), "{ok}: the source wins");
        }
        for bad in [
            "2026-03-01T10:10:01.000001Z",
            "2026-03-01T10:09:58.999999Z",
            "1970-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(
                refused_field(event(540.0, None, Some(bad))).as_deref(),
                Some("published_at"),
                "{bad}"
            );
        }

        // started_at: in [created − 1 s, published + 1 s] and within 1 s
        // of published − duration.
        for (duration, started) in [
            (600.0, "2026-03-01T10:00:00Z"),
            (601.0, "2026-03-01T09:59:59Z"),
            (0.0, "2026-03-01T10:10:00Z"),
            (0.0, "2026-03-01T10:10:01Z"),
            (300.5, "2026-03-01T10:05:00Z"),
            (299.0, "2026-03-01T10:05:00Z"),
        ] {
            let stored = creation_times(&event(duration, Some(started), None), followup())
                .unwrap_or_else(|e| panic!("{duration} {started}: {e}"));
            assert_eq!(stored.started_at, at(started));
        }
        for (duration, started) in [
            (0.0, "2026-03-01T10:10:01.000001Z"),
            (602.0, "2026-03-01T09:59:58Z"),
            (0.0, "2020-01-01T00:00:00Z"),
            (0.0, "-0001-01-01T00:00:00Z"),
            (298.9, "2026-03-01T10:05:00Z"),
            (301.1, "2026-03-01T10:05:00Z"),
        ] {
            assert_eq!(
                refused_field(event(duration, Some(started), None)).as_deref(),
                Some("started_at"),
                "{duration} {started}"
            );
        }

        // −0 is stored as 0.
        let stored = creation_times(&event(-0.0, None, None), followup()).unwrap();
        assert!(stored.duration_seconds.is_sign_positive());
        assert_eq!(stored.started_at, at(PUBLISHED));
    }

    #[test]
    fn events_are_checked_on_their_own_first() {
        let s = Settings::for_database(None);
        let now = at("2026-03-02T00:00:00Z");
        for (ev, f) in [
            (event(-1.0, None, None), "duration_seconds"),
            (event(f64::NAN, None, None), "duration_seconds"),
            (event(86_401.0, None, None), "duration_seconds"),
            (event(1.0, Some("9999-01-01T00:00:00Z"), None), "started_at"),
            (
                event(1.0, None, Some("2026-03-02T00:05:01Z")),
                "published_at",
            ),
            (event(1.0, Some(PUBLISHED), Some(CREATED)), "published_at"),
        ] {
            let e = validate_creation_time(&ev, &s, now).unwrap_err();
            assert_eq!(field(&e), Some(f), "{ev:?}");
        }
        assert!(validate_creation_time(&event(-0.0, None, Some(PUBLISHED)), &s, now).is_ok());
    }
}
