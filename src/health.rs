//! `GET /healthz` (liveness: the process answers) and `GET /readyz`
//! (readiness: migrations applied and the database reachable), open to
//! anyone (DESIGN §5).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::api_error::ApiError;
use crate::state::AppState;

/// How long readiness waits for the database to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The health routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.migrated.load(Ordering::Acquire) {
        return Err(ApiError::unavailable("migrations not applied yet"));
    }
    let ping =
        tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool)).await;
    match ping {
        Ok(Ok(_)) => Ok("ready\n"),
        _ => Err(ApiError::unavailable("database unreachable")),
    }
}
