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
        let Some(mut guard) = this.guard.take() else {
            // Polled again after completion: nothing left to record.
            return Poll::Ready(result.map(|response| response.map(axum::body::Body::new)));
        };
        Poll::Ready(match result {
            Ok(response) => {
                guard.set_status(response.status().as_u16());
                let body = response.body();
                if body.size_hint().exact().is_some() || body.is_end_stream() {
                    // Empty or of known length: everything axum builds from
                    // in-memory data (strings, JSON, bytes). The response is
                    // complete now; recording here avoids boxing a wrapper,
                    // and `Body::new` does not re-box an `axum::body::Body`.
                    drop(guard);
                    Ok(response.map(axum::body::Body::new))
                } else {
                    // Streaming: the clock runs until the body ends or is
                    // dropped.
                    Ok(response.map(|body| axum::body::Body::new(ResponseBody::new(body, guard))))
                }
            }
            Err(error) => {
                guard.set_status(STATUS_INTERNAL_ERROR);
                Err(error)
            }
        })
    }
}
