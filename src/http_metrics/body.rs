//! The response body wrapper for streaming bodies.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::RequestGuard;

pin_project! {
    /// Holds the request guard until the body ends, fails or is dropped.
    pub(crate) struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let finished = match &frame {
            None | Some(Err(_)) => true,
            // hyper stops polling once the body says it has ended.
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if finished {
            // Dropping the guard records the request.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
