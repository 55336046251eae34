//! `GET /api/okr/report`: OKR snapshot with targets and pass/fail.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api_error::ApiError;
use crate::server::AppState;

/// Serves the report.
pub async fn report(State(_state): State<AppState>) -> Response {
    ApiError::unavailable("report not available yet").into_response()
}
