//! Authenticated ingestion of client-side events.

use axum::Router;

use crate::config::Settings;
use crate::server::AppState;

/// The ingestion routes.
pub fn routes(_settings: &Settings) -> Router<AppState> {
    Router::new()
}
