//! Who may read and who may ingest (DESIGN §5): one parser of the
//! `Authorization` header ([`credentials`]), one constant-time comparison
//! ([`secret_eq`]), the read guard put in front of `/metrics`, `/` and the
//! report ([`require_read_credentials`]) and the ingestion token check
//! ([`require_ingest_token`]).
//!
//! ```
//! use axum::http::{HeaderMap, HeaderValue, header};
//! use okr_exporter::auth::{Credentials, credentials};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
//! assert_eq!(credentials(&headers), Some(Credentials::Bearer("s3cret")));
//! ```

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::config::Settings;

/// Credentials presented in an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Bearer <token>` (scheme in any case, token trimmed).
    Bearer(&'a str),
    /// `Basic <base64 of user:password>`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

/// The credentials of a request: `None` without an `Authorization` header,
/// with another scheme, or with a basic payload that is not base64 of UTF-8
/// `user:password`.
pub fn credentials(headers: &HeaderMap) -> Option<Credentials<'_>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = after_scheme(value, "bearer ") {
        return Some(Credentials::Bearer(token));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(after_scheme(value, "basic ")?)
        .ok()?;
    let pair = String::from_utf8(raw).ok()?;
    let (user, password) = pair.split_once(':')?;
    Some(Credentials::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// What follows `scheme` (given in lower case, with its space) in `value`,
/// trimmed; `None` for another scheme or nothing after it.
fn after_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (head, rest) = value.split_at_checked(scheme.len())?;
    (!rest.is_empty() && head.eq_ignore_ascii_case(scheme)).then(|| rest.trim())
}

/// Compares a presented secret with the expected one in constant time (for
/// equal lengths; a length difference is not hidden).
pub fn secret_eq(expected: &str, presented: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Whether `presented` opens the read endpoints under `settings`'s metrics
/// token or basic credentials.
fn may_read(settings: &Settings, presented: Option<Credentials<'_>>) -> bool {
    match presented {
        Some(Credentials::Bearer(token)) => settings
            .metrics_token
            .as_ref()
            .is_some_and(|t| secret_eq(t.expose(), token)),
        Some(Credentials::Basic { user, password }) => {
            settings.metrics_basic_auth.as_ref().is_some_and(|c| {
                // `&`, not `&&`: both comparisons always run.
                secret_eq(&c.user, &user) & secret_eq(c.password.expose(), &password)
            })
        }
        None => false,
    }
}

/// Middleware guarding `/metrics`, `/` and the report when a metrics token
/// or basic credentials are configured: 401 with the challenges accepted
/// otherwise. Open when neither is configured.
pub async fn require_read_credentials(
    State(settings): State<Arc<Settings>>,
    req: Request,
    next: Next,
) -> Response {
    if settings.metrics_token.is_none() && settings.metrics_basic_auth.is_none() {
        return next.run(req).await;
    }
    if may_read(&settings, credentials(req.headers())) {
        next.run(req).await
    } else {
        ApiError::Unauthorized {
            message: "missing or wrong credentials",
            offer_basic: settings.metrics_basic_auth.is_some(),
        }
        .into_response()
    }
}

/// Checks the ingestion bearer token: 503 while no token is configured,
/// 401 when it is missing or wrong.
pub fn require_ingest_token(settings: &Settings, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &settings.ingest_token else {
        return Err(ApiError::unavailable(
            "ingestion is disabled: no ingest token is configured (--ingest-token / OKR_INGEST_TOKEN)",
        ));
    };
    let message = match credentials(headers) {
        Some(Credentials::Bearer(token)) if secret_eq(expected.expose(), token) => return Ok(()),
        Some(Credentials::Bearer(_)) => "wrong bearer token",
        _ => "missing bearer token",
    };
    Err(ApiError::Unauthorized {
        message,
        offer_basic: false,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::{BasicCredentials, Secret};

    fn headers(authorization: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(authorization),
        );
        h
    }

    #[test]
    fn the_authorization_header_is_parsed_once_for_both_schemes() {
        assert_eq!(credentials(&HeaderMap::new()), None);
        assert_eq!(
            credentials(&headers("Bearer abc")),
            Some(Credentials::Bearer("abc"))
        );
        assert_eq!(
            credentials(&headers("bEaReR  abc ")),
            Some(Credentials::Bearer("abc"))
        );
        assert_eq!(
            credentials(&headers("Bearer  ")),
            Some(Credentials::Bearer(""))
        );
        assert_eq!(credentials(&headers("Bearer ")), None);
        assert_eq!(credentials(&headers("Bearer")), None);
        assert_eq!(credentials(&headers("Token abc")), None);
        // base64("ann:pa:ss") — the password may hold a colon.
        assert_eq!(
            credentials(&headers("basic YW5uOnBhOnNz")),
            Some(Credentials::Basic {
                user: "ann".into(),
                password: "pa:ss".into()
            })
        );
        // base64("annpass"): no colon.
        assert_eq!(credentials(&headers("Basic YW5ucGFzcw==")), None);
        assert_eq!(credentials(&headers("Basic !!!")), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_eq("s3cret", "s3cret"));
        assert!(!secret_eq("s3cret", "s3cre"));
        assert!(!secret_eq("s3cret", "s3cret "));
        assert!(!secret_eq("s3cret", ""));
    }

    #[test]
    fn reading_takes_the_configured_token_or_credentials_only() {
        let mut s = Settings::for_database(None);
        s.metrics_token = Some(Secret::new("tok"));
        assert!(may_read(&s, Some(Credentials::Bearer("tok"))));
        assert!(!may_read(&s, Some(Credentials::Bearer("nope"))));
        let basic = |user: &str, password: &str| {
            Some(Credentials::Basic {
                user: user.into(),
                password: password.into(),
            })
        };
        assert!(!may_read(&s, basic("ann", "pw")), "no basic configured");
        s.metrics_basic_auth = Some(BasicCredentials {
            user: "ann".into(),
            password: Secret::new("pw"),
        });
        assert!(may_read(&s, basic("ann", "pw")));
        assert!(!may_read(&s, basic("ann", "px")));
        assert!(!may_read(&s, basic("bob", "pw")));
        assert!(!may_read(&s, None));
    }

    #[test]
    fn ingestion_takes_the_bearer_token_only() {
        let mut s = Settings::for_database(None);
        let refused = |s: &Settings, h: &HeaderMap| {
            require_ingest_token(s, h)
                .err()
                .map(|e| (e.status().as_u16(), e.message().to_owned()))
        };
        assert_eq!(refused(&s, &headers("Bearer tok")).map(|r| r.0), Some(503));
        s.ingest_token = Some(Secret::new("tok"));
        assert_eq!(refused(&s, &headers("Bearer tok")), None);
        assert_eq!(
            refused(&s, &headers("Bearer nope")),
            Some((401, "wrong bearer token".into()))
        );
        assert_eq!(
            refused(&s, &headers("Basic dG9rOnRvaw==")),
            Some((401, "missing bearer token".into()))
        );
        assert_eq!(
            refused(&s, &HeaderMap::new()),
            Some((401, "missing bearer token".into()))
        );
    }
}
