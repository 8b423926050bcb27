//! The response body of a request served through the layer: polled and dropped in the
//! request's context.

#![deny(unsafe_code)]

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body::{Body, Frame as BodyFrame, SizeHint};
use pin_project_lite::pin_project;

use contextvars::plumbing::{CallerFrames, TaskFrame};

use super::restore_caller;

pin_project! {
    /// A response body polled in the context its request had when the response was made.
    ///
    /// It is also dropped in that context: when a client goes away mid-stream, the
    /// body's clean-up (and whatever it logs) sees the request's values, and a `set` in
    /// its destructor stays in the request.
    pub struct ContextBody<B> {
        #[pin]
        pub(super) inner: Option<B>,
        pub(super) frame: TaskFrame,
        // Set by `ResponseFuture` when it hands the body out.
        pub(super) caller: CallerFrames,
    }

    impl<B> PinnedDrop for ContextBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The request is over, before the connection is restored.
            this.frame.end_pinned(this.inner);
            // The response is done: the connection is ready for its next request.
            restore_caller(this.caller);
        }
    }
}

const BODY_GONE: &str = "the inner body lives as long as the wrapper";

impl<B> ContextBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        self.inner.as_ref().expect(BODY_GONE)
    }

    /// The wrapped body, unwrapped (it is then dropped wherever its new owner drops it).
    pub fn into_inner(mut self) -> B {
        self.inner.take().expect(BODY_GONE)
    }
}

impl<B: Body> Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<BodyFrame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let inner = this.inner.as_pin_mut().expect(BODY_GONE);
        this.frame.enter(|| inner.poll_frame(cx))
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref().size_hint()
    }
}

impl<B> fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody").finish_non_exhaustive()
    }
}
