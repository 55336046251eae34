//! `GET /`: the landing page with the OKR scorecard.

use axum::extract::State;
use axum::response::Html;

use crate::server::AppState;

/// Renders the landing page.
pub async fn page(State(_state): State<AppState>) -> Html<String> {
    Html(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>okr-exporter</title></head>\
         <body><h1>okr-exporter</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>"
            .to_owned(),
    )
}
