//! The response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::STATUS_INTERNAL_ERROR;
use super::body::ResponseBody;
use super::guard::RequestGuard;

pin_project! {
    /// Response future of [`HttpMetrics`](super::HttpMetrics).
    ///
    /// Dropping it before the response is ready (client disconnect, timeout)
    /// records the request with status 499.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F> ResponseFuture<F> {
    #[inline(always)]
    pub(crate) fn new(inner: F, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<axum::body::Body>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // The response stays where it is and is converted once, at the end:
        // moving it into each branch took a fifth of this function's
        // instructions (91 → 69 per request, see `BENCHMARKS.md`).
        let mut streaming = None;
        if let Some(mut guard) = this.guard.take() {
            match &result {
                Ok(response) => {
                    guard.set_status(response.status().as_u16());
                    let body = response.body();
                    if body.size_hint().exact().is_none() && !body.is_end_stream() {
                        // Streaming: the clock runs until the body ends or
                        // is dropped.
                        streaming = Some(guard);
                    }
                    // Otherwise empty or of known length, as everything
                    // axum builds from in-memory data (strings, JSON,
                    // bytes): the response is complete now. Recording here
                    // (the guard drops) avoids boxing a wrapper, and
                    // `Body::new` does not re-box an `axum::body::Body`.
                }
                Err(_) => guard.set_status(STATUS_INTERNAL_ERROR),
            }
        }
        Poll::Ready(match streaming {
            None => result.map(|response| response.map(axum::body::Body::new)),
            Some(guard) => result.map(|response| {
                response.map(|body| axum::body::Body::new(ResponseBody::new(body, guard)))
            }),
        })
    }
}
