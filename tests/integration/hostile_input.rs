//! Hostile input (DESIGN §5): generated and adversarial bodies, headers and
//! query strings thrown at `POST /api/okr/creation-time`,
//! `POST /api/okr/next-action` and `GET /api/okr/report`, through the
//! exporter's router in-process with a real PostgreSQL behind it.
//!
//! Every ingestion case carries at least one defect that makes it invalid
//! (a wrong type, a number out of range or not JSON at all, a timestamp
//! that disagrees with the follow-up, deep nesting, invalid UTF-8, an
//! enormous string, a repeated key, a truncated or broken body, …), with
//! valid or invalid headers around it; every answer must be a 4xx with a
//! JSON `error`, never a 5xx or a panic, and no row of `okr_creation_time`
//! or `okr_next_actions` may change. Report query strings are judged by an
//! independent oracle: 200 when every known parameter is valid and given
//! once, else a 4xx with a JSON `error`.
//!
//! `OKR_FUZZ_CASES` sets the number of cases (default 3,000), and
//! `OKR_FUZZ_SEED` fixes the seed (printed by every run).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Request, StatusCode};
use okr_exporter::config::{Secret, Settings};
use okr_exporter::server::Exporter;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

use crate::support::{TestDb, prepared_db};

const TOKEN: &str = "fuzz-ingest-token";
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The follow-ups the cases point at.
#[derive(Debug, Clone, Copy)]
struct Fixture {
    /// Published, with a creation time and a next action already stored.
    recorded: Uuid,
    /// Published, nothing stored yet (a valid event would insert).
    fresh: Uuid,
    /// A draft.
    draft: Uuid,
    created_at: DateTime<Utc>,
    published_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

async fn fixture(db: &TestDb) -> Fixture {
    let now = Utc::now();
    let fx = Fixture {
        recorded: Uuid::new_v4(),
        fresh: Uuid::new_v4(),
        draft: Uuid::new_v4(),
        created_at: now - chrono::Duration::hours(3),
        published_at: now - chrono::Duration::hours(1),
        now,
    };
    sqlx::query(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at)
         VALUES ($1, 'c', 'published', $4, $5), ($2, 'c', 'published', $4, $5),
                ($3, 'c', 'draft', $4, NULL)",
    )
    .bind(fx.recorded)
    .bind(fx.fresh)
    .bind(fx.draft)
    .bind(fx.created_at)
    .bind(fx.published_at)
    .execute(&db.pool)
    .await
    .expect("follow-ups");
    sqlx::query(
        "INSERT INTO okr_creation_time (followup_id, started_at, published_at, duration_seconds)
         VALUES ($1, $2 - interval '600 seconds', $2, 600)",
    )
    .bind(fx.recorded)
    .bind(fx.published_at)
    .execute(&db.pool)
    .await
    .expect("creation time");
    // An action 30 minutes after publishing: any earlier valid action
    // would replace it.
    sqlx::query(
        "INSERT INTO okr_next_actions (followup_id, action_at, published_at, days_to_action)
         VALUES ($1, $2 + interval '30 minutes', $2, 30.0 / 1440)",
    )
    .bind(fx.recorded)
    .bind(fx.published_at)
    .execute(&db.pool)
    .await
    .expect("next action");
    fx
}

/// Every row of both tables, as text: equal before and after, or a row changed.
async fn table_contents(db: &TestDb) -> (String, String) {
    let read = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (text,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {table} t"
            )))
            .fetch_one(&pool)
            .await
            .expect("table contents");
            text.unwrap_or_default()
        }
    };
    (
        read("okr_creation_time").await,
        read("okr_next_actions").await,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    CreationTime,
    NextAction,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::CreationTime => "/api/okr/creation-time",
            Self::NextAction => "/api/okr/next-action",
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::CreationTime => &[
                "followup_id",
                "duration_seconds",
                "started_at",
                "published_at",
            ],
            Self::NextAction => &["followup_id", "action_at"],
        }
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            Self::CreationTime => &["followup_id", "duration_seconds"],
            Self::NextAction => &["followup_id", "action_at"],
        }
    }

    fn timestamps(self) -> &'static [&'static str] {
        match self {
            Self::CreationTime => &["started_at", "published_at"],
            Self::NextAction => &["action_at"],
        }
    }
}

/// A JSON value of some type.
#[derive(Debug, Clone)]
enum Junk {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    EmptyArray,
    Numbers(Vec<i32>),
    Object,
}

impl Junk {
    fn json(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => serde_json::to_string(f).expect("finite"),
            Self::Text(s) => json_str(s),
            Self::EmptyArray => "[]".into(),
            Self::Numbers(v) => serde_json::to_string(v).expect("numbers"),
            Self::Object => r#"{"a": 1}"#.into(),
        }
    }

    /// This value as a wrong one for `field`: a number is a valid
    /// duration, so it is sent as a string; null is a valid absent
    /// optional timestamp, so `true` is sent instead.
    fn wrong_for(&self, field: &str) -> String {
        match (field, self) {
            ("duration_seconds", Self::Int(_) | Self::Float(_)) => json_str(&self.json()),
            ("started_at" | "published_at", Self::Null) => "true".into(),
            _ => self.json(),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Number literals none of which is a valid duration (nor any other field).
const BAD_NUMBERS: &[&str] = &[
    "-1",
    "-0.001",
    "-1e-300",
    "86400.001",
    "1e308",
    "1e400",
    "-1e400",
    "1e99999",
    "99999999999999999999999999999",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "0x10",
    "01",
    "1.",
    ".5",
    "+1",
    "1e",
    "--1",
    "1_000",
    "\"NaN\"",
    "\"Infinity\"",
    "\"1e400\"",
    "\"-0\"",
];

/// Bytes never valid in UTF-8 (or a lone continuation byte).
const INVALID_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",
    b"\xc1",
    b"\xf5\x80\x80\x80",
    b"\xed\xa0\x80",
    b"\x80",
];

const BAD_TIME_KINDS: usize = 12;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A timestamp `field` must refuse for the fixture's follow-ups (given the
/// base duration `duration` of a creation-time event).
fn bad_time(field: &str, kind: usize, fx: &Fixture, duration: chrono::Duration) -> String {
    let s = chrono::Duration::seconds;
    let fixed = [
        "1970-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "-0001-12-31T23:59:59Z",
        "-262143-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2026-13-01T00:00:00Z",
        "yesterday",
        "2026-03-01",
    ];
    let relative = match field {
        "started_at" => [
            fx.created_at - s(2),
            fx.published_at + s(2),
            fx.published_at - duration - s(5),
            fx.now + chrono::Duration::days(1),
        ],
        "published_at" => [
            fx.published_at + chrono::Duration::milliseconds(1500),
            fx.published_at - s(2),
            fx.published_at - chrono::Duration::days(365),
            fx.now + chrono::Duration::days(1),
        ],
        _ => [
            fx.published_at - s(1),
            fx.published_at - chrono::Duration::days(1),
            fx.created_at,
            fx.now + chrono::Duration::days(1),
        ],
    };
    let k = kind % BAD_TIME_KINDS;
    if k < fixed.len() {
        json_str(fixed[k])
    } else {
        json_str(&ts(relative[k - fixed.len()]))
    }
}

/// One defect; each alone makes the request invalid, and none undoes another.
#[derive(Debug, Clone)]
enum Poison {
    Missing(usize),
    WrongType(usize, Junk),
    BadNumber(usize, &'static str),
    BadTime(usize, usize),
    UnknownField(String, Junk),
    Duplicate(usize, bool),
    UnknownFollowup(u128),
    Draft,
    /// A field (or, with `None`, the whole body) nested `depth` deep in
    /// arrays or objects.
    Nested(Option<usize>, usize, bool),
    Unbalanced(usize),
    Huge(usize, usize, char),
    InvalidUtf8(usize, &'static [u8]),
    /// Cut before the closing brace, at this many thousandths.
    Truncated(usize),
    Garbage(Vec<u8>),
    /// The body as the wrong JSON type, or the event wrapped in an array.
    WrongRoot(Junk, bool),
    /// The client sends this many bytes, then the body fails.
    BrokenStream(usize),
}

#[derive(Debug, Clone)]
enum Auth {
    Good,
    LowercaseScheme,
    Missing,
    Wrong(String),
    Basic,
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Media {
    Json,
    JsonCharset,
    MixedCase,
    ProblemJson,
    Missing,
    Other(&'static str),
    Raw(Vec<u8>),
}

/// Valid variations of a valid event, applied before the defects.
#[derive(Debug, Clone)]
struct Noise {
    fresh_followup: bool,
    duration_ms: u32,
    minus_zero: bool,
    exponent: bool,
    explicit_start: bool,
    explicit_publish: Option<i32>,
    action_after_s: u32,
    reverse: bool,
    spaces: usize,
    bogus_length: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct IngestCase {
    endpoint: Endpoint,
    auth: Auth,
    media: Media,
    noise: Noise,
    poisons: Vec<Poison>,
}

#[derive(Debug, Clone)]
enum Param {
    Window(String),
    Format(String),
    Days(String),
    Other(String, String),
    Bare(String),
}

#[derive(Debug, Clone)]
struct ReportCase {
    params: Vec<Param>,
    encode_all: bool,
    accept: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Case {
    Ingest(IngestCase),
    Report(ReportCase),
}

fn junk() -> impl Strategy<Value = Junk> {
    prop_oneof![
        Just(Junk::Null),
        any::<bool>().prop_map(Junk::Bool),
        any::<i64>().prop_map(Junk::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Junk::Float),
        "[g-z :.]{0,30}".prop_map(Junk::Text),
        Just(Junk::EmptyArray),
        prop::collection::vec(any::<i32>(), 0..5).prop_map(Junk::Numbers),
        Just(Junk::Object),
    ]
}

fn poison() -> impl Strategy<Value = Poison> {
    prop_oneof![
        (0..2usize).prop_map(Poison::Missing),
        (0..4usize, junk()).prop_map(|(f, j)| Poison::WrongType(f, j)),
        (0..4usize, prop::sample::select(BAD_NUMBERS)).prop_map(|(f, n)| Poison::BadNumber(f, n)),
        (0..4usize, 0..BAD_TIME_KINDS).prop_map(|(f, k)| Poison::BadTime(f, k)),
        ("[a-zA-Z_]{1,24}", junk()).prop_map(|(k, j)| Poison::UnknownField(k, j)),
        (0..4usize, any::<bool>()).prop_map(|(f, same)| Poison::Duplicate(f, same)),
        any::<u128>().prop_map(Poison::UnknownFollowup),
        Just(Poison::Draft),
        (
            prop::option::of(0..4usize),
            prop_oneof![1..200usize, 200..12_000usize],
            any::<bool>()
        )
            .prop_map(|(f, d, objects)| Poison::Nested(f, d, objects)),
        (1..5_000usize).prop_map(Poison::Unbalanced),
        (
            0..4usize,
            prop_oneof![1..5_000usize, 5_000..100_000usize],
            prop::sample::select(vec!['x', 'é', '😀', '"', '\\', '\u{0}', '\u{2028}'])
        )
            .prop_map(|(f, n, c)| Poison::Huge(f, n, c)),
        (0..=1000usize, prop::sample::select(INVALID_UTF8))
            .prop_map(|(at, b)| Poison::InvalidUtf8(at, b)),
        (0..1000usize).prop_map(Poison::Truncated),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Poison::Garbage),
        (junk(), any::<bool>()).prop_map(|(j, wrap)| Poison::WrongRoot(j, wrap)),
        (0..2_000usize).prop_map(Poison::BrokenStream),
    ]
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        30 => Just(Auth::Good),
        1 => Just(Auth::LowercaseScheme),
        1 => Just(Auth::Missing),
        1 => "[A-Za-z0-9]{0,40}".prop_map(Auth::Wrong),
        1 => Just(Auth::Basic),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Auth::Raw),
    ]
}

fn media() -> impl Strategy<Value = Media> {
    prop_oneof![
        30 => Just(Media::Json),
        1 => Just(Media::JsonCharset),
        1 => Just(Media::MixedCase),
        1 => Just(Media::ProblemJson),
        1 => Just(Media::Missing),
        1 => prop::sample::select(vec![
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
            "application/",
            "*/*",
            "",
        ])
        .prop_map(Media::Other),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Media::Raw),
    ]
}

fn noise() -> impl Strategy<Value = Noise> {
    (
        (
            any::<bool>(),
            0..=3_600_000u32,
            prop::bool::weighted(0.05),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::option::of(-900..=900i32),
            0..3_600u32,
            any::<bool>(),
            0..3usize,
            prop::option::weighted(
                0.05,
                prop::sample::select(vec!["abc", "99999999999999999999", "0", "-1", "1"]),
            ),
        ),
    )
        .prop_map(
            |(
                (fresh_followup, duration_ms, minus_zero, exponent, explicit_start),
                (explicit_publish, action_after_s, reverse, spaces, bogus_length),
            )| Noise {
                fresh_followup,
                duration_ms,
                minus_zero,
                exponent,
                explicit_start,
                explicit_publish,
                action_after_s,
                reverse,
                spaces,
                bogus_length,
            },
        )
}

fn ingest_case() -> impl Strategy<Value = IngestCase> {
    (
        prop_oneof![Just(Endpoint::CreationTime), Just(Endpoint::NextAction)],
        auth(),
        media(),
        noise(),
        prop::collection::vec(poison(), 1..=2),
    )
        .prop_map(|(endpoint, auth, media, noise, poisons)| IngestCase {
            endpoint,
            auth,
            media,
            noise,
            poisons,
        })
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[0-9a-zA-Z%&=+;. -]{0,8}",
        (1..3_000usize).prop_map(|n| "x".repeat(n)),
    ]
}

fn param() -> impl Strategy<Value = Param> {
    let window = prop_oneof![
        3 => prop::sample::select(vec!["1d", "7d", "30d"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", "5d", "7D", " 7d", "7d ", "7d\0", "１d", "30d,7d"])
            .prop_map(str::to_owned),
        1 => text_value(),
    ];
    let format = prop_oneof![
        3 => prop::sample::select(vec!["json", "csv"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", "JSON", "xml", "json ", "csv\n"]).prop_map(str::to_owned),
        1 => text_value(),
    ];
    let days = prop_oneof![
        3 => (1..=400u32).prop_map(|d| d.to_string()),
        1 => prop::sample::select(vec![
            "0", "401", "-1", "1e3", "NaN", "4294967297", "99999999999999999999", "", " 5",
            "5.0", "007", "0400", "0x10",
        ])
        .prop_map(str::to_owned),
        1 => "[0-9]{1,25}",
        // A leading '+' is a matter of taste ("+5" reads as 5): left out.
        1 => text_value().prop_filter("no leading +", |s| !s.starts_with('+')),
    ];
    let other_key = "[a-z_]{1,10}|\\PC{1,6}".prop_filter("not a known parameter", |k| {
        !matches!(k.as_str(), "window" | "format" | "days")
    });
    prop_oneof![
        2 => window.prop_map(Param::Window),
        2 => format.prop_map(Param::Format),
        2 => days.prop_map(Param::Days),
        1 => (other_key.clone(), text_value()).prop_map(|(k, v)| Param::Other(k, v)),
        1 => other_key.prop_map(Param::Bare),
    ]
}

fn report_case() -> impl Strategy<Value = ReportCase> {
    (
        prop::collection::vec(param(), 0..5),
        any::<bool>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(|(params, encode_all, accept)| ReportCase {
            params,
            encode_all,
            accept,
        })
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        4 => ingest_case().prop_map(Case::Ingest),
        1 => report_case().prop_map(Case::Report),
    ]
}

/// The JSON fields of an event, in order, as raw JSON text (keys may repeat).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }
}

fn nest(depth: usize, objects: bool) -> String {
    if objects {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// The request body of `case`, and how many of its bytes a broken client
/// sends before failing.
fn ingest_body(case: &IngestCase, fx: &Fixture) -> (Vec<u8>, Option<usize>) {
    let endpoint = case.endpoint;
    let n = &case.noise;
    let followup = if n.fresh_followup {
        fx.fresh
    } else {
        fx.recorded
    };
    let duration = chrono::Duration::milliseconds(i64::from(n.duration_ms));
    let mut fields = Fields(vec![(
        "followup_id".into(),
        json_str(&followup.to_string()),
    )]);
    match endpoint {
        Endpoint::CreationTime => {
            let seconds = f64::from(n.duration_ms) / 1000.0;
            let literal = if n.minus_zero {
                "-0.0".to_owned()
            } else if n.exponent {
                format!("{seconds:e}")
            } else {
                seconds.to_string()
            };
            fields.set("duration_seconds", literal);
            let duration = if n.minus_zero {
                chrono::Duration::zero()
            } else {
                duration
            };
            if n.explicit_start {
                fields.set("started_at", json_str(&ts(fx.published_at - duration)));
            }
            if let Some(ms) = n.explicit_publish {
                let at = fx.published_at + chrono::Duration::milliseconds(i64::from(ms));
                fields.set("published_at", json_str(&ts(at)));
            }
        }
        Endpoint::NextAction => {
            let at = fx.published_at + chrono::Duration::seconds(i64::from(n.action_after_s));
            fields.set("action_at", json_str(&ts(at)));
        }
    }

    let all = endpoint.fields();
    let pick = |i: usize| all[i % all.len()];
    for p in &case.poisons {
        match p {
            Poison::Missing(i) => {
                let required = endpoint.required();
                fields.remove(required[i % required.len()]);
            }
            Poison::WrongType(i, j) => fields.set(pick(*i), j.wrong_for(pick(*i))),
            Poison::BadNumber(i, literal) => fields.set(pick(*i), (*literal).to_owned()),
            Poison::BadTime(i, kind) => {
                let stamps = endpoint.timestamps();
                let field = stamps[i % stamps.len()];
                fields.set(field, bad_time(field, *kind, fx, duration));
            }
            Poison::UnknownField(key, j) => {
                let key = if all.contains(&key.as_str()) {
                    format!("{key}_")
                } else {
                    key.clone()
                };
                fields.0.push((key, j.json()));
            }
            Poison::Duplicate(i, same) => {
                let field = pick(*i);
                let value = match (fields.get(field), same) {
                    (Some(v), true) => v,
                    _ => match field {
                        "followup_id" => json_str(&fx.fresh.to_string()),
                        "duration_seconds" => "1".into(),
                        "action_at" => json_str(&ts(fx.published_at)),
                        _ => "null".into(),
                    },
                };
                if fields.get(field).is_none() {
                    fields.0.push((field.to_owned(), value.clone()));
                }
                fields.0.push((field.to_owned(), value));
            }
            Poison::UnknownFollowup(u) => {
                let mut id = Uuid::from_u128(*u);
                if [fx.recorded, fx.fresh, fx.draft].contains(&id) {
                    id = Uuid::from_u128(!*u);
                }
                fields.set("followup_id", json_str(&id.to_string()));
            }
            Poison::Draft => fields.set("followup_id", json_str(&fx.draft.to_string())),
            Poison::Nested(Some(i), depth, objects) => fields.set(pick(*i), nest(*depth, *objects)),
            Poison::Huge(i, len, c) => {
                fields.set(pick(*i), json_str(&c.to_string().repeat(*len)));
            }
            _ => {}
        }
    }

    if n.reverse {
        fields.0.reverse();
    }
    let gap = " ".repeat(n.spaces);
    let members: Vec<String> = fields
        .0
        .iter()
        .map(|(k, v)| format!("{gap}{}{gap}:{gap}{v}", json_str(k)))
        .collect();
    let mut body = format!("{{{}{gap}}}{gap}", members.join(",")).into_bytes();

    let mut broken = None;
    for p in &case.poisons {
        match p {
            Poison::Nested(None, depth, objects) => body = nest(*depth, *objects).into_bytes(),
            Poison::Unbalanced(depth) => body = "[".repeat(*depth).into_bytes(),
            Poison::InvalidUtf8(at, bytes) => {
                let at = at * body.len() / 1000;
                body.splice(at..at, bytes.iter().copied());
            }
            Poison::Truncated(frac) => {
                let close = body
                    .iter()
                    .rposition(|b| matches!(b, b'}' | b']'))
                    .unwrap_or(body.len());
                body.truncate(frac * close / 1000);
            }
            Poison::Garbage(bytes) => body = bytes.clone(),
            Poison::WrongRoot(j, wrap) => {
                body = if *wrap {
                    [b"[".as_slice(), &body, b"]"].concat()
                } else {
                    j.json().into_bytes()
                };
            }
            Poison::BrokenStream(k) => broken = Some(*k),
            _ => {}
        }
    }
    let broken = broken.map(|k| k % (body.len() + 1));
    (body, broken)
}

fn header(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

fn ingest_request(case: &IngestCase, fx: &Fixture) -> Request<Body> {
    let mut req = Request::post(case.endpoint.path());
    let auth = match &case.auth {
        Auth::Good => header(format!("Bearer {TOKEN}").as_bytes()),
        Auth::LowercaseScheme => header(format!("bearer   {TOKEN}").as_bytes()),
        Auth::Missing => None,
        Auth::Wrong(t) => header(format!("Bearer {t}").as_bytes()),
        Auth::Basic => header(b"Basic dXNlcjpwYXNz"),
        Auth::Raw(b) => header(b),
    };
    if let Some(v) = auth {
        req = req.header("authorization", v);
    }
    let media = match &case.media {
        Media::Json => header(b"application/json"),
        Media::JsonCharset => header(b"application/json; charset=utf-8"),
        Media::MixedCase => header(b"Application/JSON"),
        Media::ProblemJson => header(b"application/problem+json"),
        Media::Missing => None,
        Media::Other(t) => header(t.as_bytes()),
        Media::Raw(b) => header(b),
    };
    if let Some(v) = media {
        req = req.header("content-type", v);
    }
    if let Some(len) = case.noise.bogus_length {
        req = req.header("content-length", len);
    }
    let (body, broken) = ingest_body(case, fx);
    let body = match broken {
        None => Body::from(body),
        Some(k) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::copy_from_slice(&body[..k])),
                Err(std::io::Error::other("the client went away")),
            ];
            Body::from_stream(futures_util::stream::iter(chunks))
        }
    };
    req.body(body).expect("request")
}

/// Percent-encodes every byte but the unreserved ones (all of them with
/// `all`).
fn encode(s: &str, all: bool) -> String {
    s.bytes()
        .map(|b| {
            if !all && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn report_request(case: &ReportCase) -> Request<Body> {
    let pairs: Vec<String> = case
        .params
        .iter()
        .map(|p| {
            let (k, v) = match p {
                Param::Window(v) => ("window", Some(v.as_str())),
                Param::Format(v) => ("format", Some(v.as_str())),
                Param::Days(v) => ("days", Some(v.as_str())),
                Param::Other(k, v) => (k.as_str(), Some(v.as_str())),
                Param::Bare(k) => (k.as_str(), None),
            };
            match v {
                Some(v) => format!(
                    "{}={}",
                    encode(k, case.encode_all),
                    encode(v, case.encode_all)
                ),
                None => encode(k, case.encode_all),
            }
        })
        .collect();
    let mut req = Request::get(format!("/api/okr/report?{}", pairs.join("&")));
    if let Some(v) = case.accept.as_deref().and_then(header) {
        req = req.header("accept", v);
    }
    req.body(Body::empty()).expect("request")
}

/// The oracle: the report answers 200 iff each known parameter is given at
/// most once and is valid (a configured window, json or csv, a whole number
/// of days from 1 to 400 written in decimal digits).
fn report_is_valid(case: &ReportCase) -> Option<&'static str> {
    let mut seen = HashSet::new();
    let mut format = "json";
    for p in &case.params {
        let (key, ok) = match p {
            Param::Window(v) => ("window", ["1d", "7d", "30d"].contains(&v.as_str())),
            Param::Format(v) => {
                format = if v == "csv" { "csv" } else { "json" };
                ("format", v == "json" || v == "csv")
            }
            Param::Days(v) => {
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                let significant = v.trim_start_matches('0');
                let value = if significant.len() > 3 {
                    u32::MAX
                } else {
                    significant.parse().unwrap_or(0)
                };
                ("days", digits && (1..=400).contains(&value))
            }
            Param::Other(..) | Param::Bare(_) => continue,
        };
        if !ok || !seen.insert(key) {
            return None;
        }
    }
    Some(format)
}

/// An answer: status, content type, body.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req))
        .await
        .expect("an answer within 30 s")
        .expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    Answer {
        status,
        content_type,
        body,
    }
}

fn check_json_error(a: &Answer) -> Result<(), TestCaseError> {
    prop_assert!(
        a.status.is_client_error(),
        "{} {:?}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    prop_assert!(
        a.content_type.starts_with("application/json"),
        "{}",
        a.content_type
    );
    let v: Value = serde_json::from_slice(&a.body)
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {:?}", a.body)))?;
    prop_assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    Ok(())
}

#[test]
fn hostile_input_gets_a_json_4xx_and_changes_nothing() {
    let cases: u32 = std::env::var("OKR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let seed: u64 = std::env::var("OKR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("hostile input: {cases} cases, OKR_FUZZ_SEED={seed}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, fx, app) = rt.block_on(async {
        let db = prepared_db().await;
        let fx = fixture(&db).await;
        let mut s = Settings::for_database(Some(db.database_url()));
        s.ingest_token = Some(Secret::new(TOKEN));
        s.max_body_bytes = MAX_BODY_BYTES;
        let app = Exporter::new(s).expect("exporter").router();
        (db, fx, app)
    });
    let before = rt.block_on(table_contents(&db));
    assert!(!before.0.is_empty() && !before.1.is_empty());

    let statuses = RefCell::new(BTreeMap::<u16, u64>::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&case(), |case| {
        let answer = match &case {
            Case::Ingest(c) => rt.block_on(send(&app, ingest_request(c, &fx))),
            Case::Report(c) => rt.block_on(send(&app, report_request(c))),
        };
        *statuses
            .borrow_mut()
            .entry(answer.status.as_u16())
            .or_default() += 1;
        match &case {
            Case::Report(c) => match report_is_valid(c) {
                Some(format) => {
                    prop_assert_eq!(answer.status, StatusCode::OK);
                    let expected = if format == "csv" {
                        "text/csv"
                    } else {
                        "application/json"
                    };
                    prop_assert!(answer.content_type.starts_with(expected));
                }
                None => check_json_error(&answer)?,
            },
            Case::Ingest(_) => check_json_error(&answer)?,
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    eprintln!(
        "hostile input: {cases} cases in {elapsed:.1?}, answers by status {:?}",
        statuses.borrow()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let after = rt.block_on(table_contents(&db));
    assert_eq!(
        before, after,
        "a row of okr_creation_time or okr_next_actions changed"
    );
}
