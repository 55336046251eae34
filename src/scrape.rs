//! `GET /metrics`: the registry encoded in the format the scraper
//! negotiated (Prometheus text or OpenMetrics, [`crate::exposition`]).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::api_error::ApiError;
use crate::exposition;
use crate::state::AppState;

/// The scrape route (put behind the read guard by [`crate::server`]).
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    respond(&state.registry, &headers)
}

/// `registry` encoded in the format `headers`' `Accept` asks for, with its
/// content type.
pub fn respond(registry: &Registry, headers: &HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(accept);
    let body = exposition::encode(registry, format).map_err(|_| ApiError::Internal {
        message: "encoding metrics failed".into(),
    })?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}
