//! The middleware service.

use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{Request, Response};
use tower::Service;

use super::future::ResponseFuture;
use super::guard::RequestGuard;
use super::layer::State;
use super::shared::Shared;
use super::sink::LogExtra;
use super::store::method_index;

/// The service produced by [`HttpMetricsLayer`](super::HttpMetricsLayer):
/// records each request it forwards to `S`.
///
/// Responses come back as `Response<axum::body::Body>`; an inner
/// `axum::body::Body` is passed through without re-boxing.
pub struct HttpMetrics<S> {
    inner: S,
    state: Shared<State>,
}

impl<S> HttpMetrics<S> {
    pub(crate) fn new(inner: S, state: Shared<State>) -> Self {
        Self { inner, state }
    }
}

impl<S: Clone> Clone for HttpMetrics<S> {
    /// axum clones a route's service for every request: the state's handle
    /// is cloned on this thread's shard, which the route's own handle soon
    /// holds too (`shared.rs`).
    #[inline]
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for HttpMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = method_index(request.method());
        // Set by axum's router before it calls a route's layers; absent for
        // the fallback and for `nest_service`, which keeps raw paths out.
        let route = self
            .state
            .routes
            .resolve_matched(request.extensions().get::<MatchedPath>());
        let log = self
            .state
            .log
            .as_ref()
            .and_then(|log| LogExtra::capture(&request, method, log.user_id_header.as_ref()));
        let trace_id = self
            .state
            .trace_ids
            .as_ref()
            .and_then(|source| source.read(request.headers()));
        let start = self.state.clock.raw();
        // The guard is made after the inner call, not before: with the guard
        // first, rustc copied axum's ~320-byte route future once more on its
        // way into the box axum puts it in (see `BENCHMARKS.md`). The clock
        // still starts before the call; a panic inside the inner service's
        // `call` itself (axum's routes do no work there) leaves the request
        // uncounted rather than counted as started and never finished.
        ResponseFuture::new(
            self.inner.call(request),
            RequestGuard::start(self.state.clone(), route, method, start, log, trace_id),
        )
    }
}
