//! The one error type of the exporter's HTTP handlers: each variant says
//! what went wrong and maps itself to a status code and a JSON body
//! `{"error": …, "field": …}` (`field` only when one request field is at
//! fault).
//!
//! ```
//! use axum::http::StatusCode;
//! use axum::response::IntoResponse;
//! use okr_exporter::api_error::ApiError;
//!
//! let e = ApiError::invalid("days", "days must be a whole number from 1 to 400");
//! assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
//! assert_eq!(e.field(), Some("days"));
//! assert_eq!(e.into_response().status(), StatusCode::UNPROCESSABLE_ENTITY);
//! ```

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request cannot be read (not one JSON value, a query string
    /// that does not parse, a body that could not be received).
    Malformed {
        /// What is wrong.
        message: String,
        /// Where in the body, when known.
        field: Option<String>,
    },
    /// 401: credentials missing or wrong. The answer carries a `Bearer`
    /// challenge, and a `Basic` one too when `offer_basic`.
    Unauthorized {
        /// What is wrong.
        message: &'static str,
        /// Whether basic credentials would be accepted.
        offer_basic: bool,
    },
    /// 404: no such thing (a route, a follow-up).
    NotFound {
        /// What was not found.
        message: String,
        /// The request field that named it.
        field: Option<String>,
    },
    /// 408: the request body did not arrive in time.
    Timeout {
        /// What was too slow.
        message: String,
    },
    /// 409: the request contradicts what is already recorded.
    Conflict {
        /// What it contradicts.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// 413: the body is over the configured limit.
    PayloadTooLarge {
        /// The limit that was hit.
        message: String,
    },
    /// 415: the body is not of the media type the endpoint reads.
    UnsupportedMediaType {
        /// The media type expected.
        message: String,
    },
    /// 422: a well-formed value that is not acceptable (wrong type, out of
    /// range, missing, unknown, repeated). `field` is `None` when the body
    /// as a whole is of the wrong type.
    Invalid {
        /// The field at fault.
        field: Option<String>,
        /// Why it is refused.
        message: String,
    },
    /// 500: this service failed on its own.
    Internal {
        /// What failed.
        message: String,
    },
    /// 502: a service this one relays to answered something unexpected or
    /// refused what this service built.
    Upstream {
        /// What the other service did.
        message: String,
    },
    /// 503: the service cannot answer now (database down, not configured,
    /// no answer in time); `Retry-After` when `retry_after` is given.
    Unavailable {
        /// Why.
        message: String,
        /// The field whose handling is unavailable, when there is one.
        field: Option<String>,
        /// When to retry (whole seconds in `Retry-After`).
        retry_after: Option<Duration>,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// 422: `field` holds a value that is not acceptable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 503 without `Retry-After` or field.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The human-readable message (`"error"` in the body).
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthorized { message, .. } => message,
            Self::Malformed { message, .. }
            | Self::NotFound { message, .. }
            | Self::Timeout { message }
            | Self::Conflict { message, .. }
            | Self::PayloadTooLarge { message }
            | Self::UnsupportedMediaType { message }
            | Self::Invalid { message, .. }
            | Self::Internal { message }
            | Self::Upstream { message }
            | Self::Unavailable { message, .. } => message,
        }
    }

    /// The request field at fault (`"field"` in the body), when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Malformed { field, .. }
            | Self::NotFound { field, .. }
            | Self::Conflict { field, .. }
            | Self::Invalid { field, .. }
            | Self::Unavailable { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The same error with its message rewritten by `f` (to say in which
    /// step of a larger operation it happened).
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Self::Unauthorized { .. } => self,
            Self::Malformed { message, field } => Self::Malformed {
                message: f(&message),
                field,
            },
            Self::NotFound { message, field } => Self::NotFound {
                message: f(&message),
                field,
            },
            Self::Timeout { message } => Self::Timeout {
                message: f(&message),
            },
            Self::Conflict { message, field } => Self::Conflict {
                message: f(&message),
                field,
            },
            Self::PayloadTooLarge { message } => Self::PayloadTooLarge {
                message: f(&message),
            },
            Self::UnsupportedMediaType { message } => Self::UnsupportedMediaType {
                message: f(&message),
            },
            Self::Invalid { field, message } => Self::Invalid {
                field,
                message: f(&message),
            },
            Self::Internal { message } => Self::Internal {
                message: f(&message),
            },
            Self::Upstream { message } => Self::Upstream {
                message: f(&message),
            },
            Self::Unavailable {
                message,
                field,
                retry_after,
            } => Self::Unavailable {
                message: f(&message),
                field,
                retry_after,
            },
        }
    }
}

/// axum's JSON extractor's rejection, classified: 400 not JSON or not
/// received, 413 over the limit, 415 not declared JSON, 422 wrong shape.
/// The message is axum's.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => Self::Invalid {
                field: None,
                message,
            },
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType { message },
            r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge { message },
            _ => Self::Malformed {
                message,
                field: None,
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status(), self.message())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.message(),
            field: self.field(),
        };
        let mut resp = (self.status(), Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            Self::Unauthorized { offer_basic, .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"okr-exporter\""),
                );
                if *offer_basic {
                    headers.append(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"okr-exporter\""),
                    );
                }
            }
            Self::Unavailable {
                retry_after: Some(after),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answered(e: ApiError) -> (StatusCode, Vec<String>, Option<String>, String) {
        let resp = e.into_response();
        let status = resp.status();
        let challenges = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            challenges,
            retry,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn each_variant_answers_its_status_headers_and_body() {
        let (s, ch, retry, body) = answered(ApiError::invalid("days", "out of range")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(ch.is_empty() && retry.is_none());
        assert_eq!(body, r#"{"error":"out of range","field":"days"}"#);

        let (s, ch, _, body) = answered(ApiError::Unauthorized {
            message: "wrong bearer token",
            offer_basic: false,
        })
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(ch, ["Bearer realm=\"okr-exporter\""]);
        assert_eq!(body, r#"{"error":"wrong bearer token"}"#);

        let (_, ch, _, _) = answered(ApiError::Unauthorized {
            message: "missing or wrong credentials",
            offer_basic: true,
        })
        .await;
        assert_eq!(
            ch,
            [
                "Bearer realm=\"okr-exporter\"",
                "Basic realm=\"okr-exporter\""
            ]
        );

        let (s, _, retry, body) = answered(ApiError::Unavailable {
            message: "database unavailable; retry later".into(),
            field: None,
            retry_after: Some(Duration::from_secs(5)),
        })
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("5"));
        assert_eq!(body, r#"{"error":"database unavailable; retry later"}"#);

        for (e, status) in [
            (
                ApiError::Malformed {
                    message: "x".into(),
                    field: None,
                },
                400,
            ),
            (
                ApiError::NotFound {
                    message: "x".into(),
                    field: None,
                },
                404,
            ),
            (
                ApiError::Timeout {
                    message: "x".into(),
                },
                408,
            ),
            (
                ApiError::Conflict {
                    message: "x".into(),
                    field: None,
                },
                409,
            ),
            (
                ApiError::PayloadTooLarge {
                    message: "x".into(),
                },
                413,
            ),
            (
                ApiError::UnsupportedMediaType {
                    message: "x".into(),
                },
                415,
            ),
            (
                ApiError::Internal {
                    message: "x".into(),
                },
                500,
            ),
            (
                ApiError::Upstream {
                    message: "x".into(),
                },
                502,
            ),
        ] {
            let (s, ch, retry, body) = answered(e).await;
            assert_eq!(s.as_u16(), status);
            assert!(ch.is_empty() && retry.is_none());
            assert_eq!(body, r#"{"error":"x"}"#);
        }
    }

    #[test]
    fn a_rewritten_message_keeps_the_kind_and_field() {
        let e = ApiError::Conflict {
            message: "already recorded".into(),
            field: Some("followup_id".into()),
        }
        .map_message(|m| format!("not stored: {m}"));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.message(), "not stored: already recorded");
        assert_eq!(e.field(), Some("followup_id"));
    }
}
