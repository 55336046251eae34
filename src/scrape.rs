//! `GET /metrics`: the registry encoded in the format the scraper
//! negotiated (Prometheus protobuf, OpenMetrics or Prometheus text,
//! [`crate::exposition`]), with the latency middleware's exemplars.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::api_error::ApiError;
use crate::exposition;
use crate::http_metrics::HttpMetricsLayer;
use crate::state::AppState;

/// The scrape route (put behind the read guard by [`crate::server`]).
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    respond(&state.registry, Some(&state.http_metrics), &headers)
}

/// `registry` encoded in the format `headers`' `Accept` asks for, with its
/// content type, and with `layer`'s exemplars when given (`layer` must be
/// registered in `registry`).
pub fn respond(
    registry: &Registry,
    layer: Option<&HttpMetricsLayer>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(accept);
    let exemplars = layer.map(HttpMetricsLayer::exemplars).unwrap_or_default();
    let body =
        exposition::encode_with_exemplars(registry, &exemplars, format).map_err(|error| {
            tracing::error!(%error, "encoding /metrics failed");
            ApiError::Internal {
                message: "encoding metrics failed".into(),
            }
        })?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}
