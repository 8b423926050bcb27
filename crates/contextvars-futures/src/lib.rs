//! Streams that carry a [`contextvars`] context: every `poll_next` of a wrapped
//! [`Stream`] runs in it, as every poll of a `contextvars::future::WithContext` future
//! does.
//!
//! A crate of its own because `Stream` is `futures-core`'s, which is not 1.0 yet: its
//! releases do not force one of `contextvars` (tokio keeps its stream support in
//! `tokio-stream` for the same reason). Built on `contextvars::plumbing` only.
//!
//! ```
//! use contextvars_futures::ContextStreamExt;
//! use futures_util::StreamExt;
//!
//! contextvars::context_var! { static OFFSET: u32; }
//!
//! let _token = OFFSET.set(10);
//! let stream = futures_util::stream::iter(1..=3)
//!     .map(|n| n + OFFSET.get())
//!     .in_copied_context(); // a copy of the context current now
//! drop(_token); // later changes do not reach the stream
//! # let collected: Vec<u32> = tokio::runtime::Builder::new_current_thread().build().unwrap()
//! #     .block_on(stream.collect());
//! assert_eq!(collected, [11, 12, 13]);
//! ```
//!
//! # Cost
//!
//! As for a wrapped future: wrapping copies the current context (one reference-count
//! increment) or enters the given context object; each `poll_next` swaps the stream's
//! frame into the thread's state and back (no reference count, no allocation); the
//! stream is dropped inside its context, then the context is released where no other
//! code sees what the values' destructors do.

#![deny(unsafe_code)]

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use contextvars::plumbing::TaskFrame;
use contextvars::{Context, EnterError};
pub use futures_core::Stream;
use pin_project_lite::pin_project;

pin_project! {
    /// A stream that runs every `poll_next` of the inner one in its own context, and is
    /// dropped inside it. Made by [`ContextStreamExt`].
    #[must_use = "streams do nothing unless polled"]
    pub struct StreamWithContext<S> {
        #[pin]
        inner: Option<S>,
        frame: TaskFrame,
    }

    impl<S> PinnedDrop for StreamWithContext<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The stream's destructors see its values, and a set there stays in it.
            this.frame.end_pinned(this.inner);
        }
    }
}

const GONE: &str = "the inner stream lives as long as the wrapper";

impl<S> StreamWithContext<S> {
    /// A shared reference to the wrapped stream.
    pub fn get_ref(&self) -> &S {
        self.inner.as_ref().expect(GONE)
    }

    /// A pinned mutable reference to the wrapped stream.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().inner.as_pin_mut().expect(GONE)
    }
}

impl<S: Stream> Stream for StreamWithContext<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let inner = this.inner.as_pin_mut().expect(GONE);
        this.frame.enter(|| inner.poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.get_ref().size_hint()
    }
}

impl<S> fmt::Debug for StreamWithContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWithContext").finish_non_exhaustive()
    }
}

/// Wraps streams in a context. Implemented for every [`Stream`].
pub trait ContextStreamExt: Stream + Sized {
    /// Runs every poll in a copy of the context current now (like
    /// `contextvars::future::ContextFutureExt::in_copied_context`).
    fn in_copied_context(self) -> StreamWithContext<Self> {
        StreamWithContext {
            inner: Some(self),
            frame: TaskFrame::capture_task(),
        }
    }

    /// Runs every poll in the context object `ctx`, entered now and left when the stream
    /// is dropped.
    ///
    /// # Panics
    ///
    /// If `ctx` is already entered; [`try_in_context`](Self::try_in_context) returns the
    /// error instead.
    #[track_caller]
    fn in_context(self, ctx: &Context) -> StreamWithContext<Self> {
        match self.try_in_context(ctx) {
            Ok(stream) => stream,
            Err(error) => panic!("{error}"),
        }
    }

    /// [`in_context`](Self::in_context), returning an [`EnterError`] if `ctx` is already
    /// entered (by a thread, or by another wrapper that is still alive).
    fn try_in_context(self, ctx: &Context) -> Result<StreamWithContext<Self>, EnterError> {
        Ok(StreamWithContext {
            inner: Some(self),
            frame: TaskFrame::for_context(ctx)?,
        })
    }
}

impl<S: Stream> ContextStreamExt for S {}
