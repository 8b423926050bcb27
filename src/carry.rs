//! What travels with a captured context besides its snapshot: the `tracing` span that was
//! current at the capture (feature `tracing`).
//!
//! Every place the crate carries a context to other work (thread spawns, the future
//! wrapper and the tokio helpers built on it, rayon's `join`, scopes, spawns, `install`
//! and the parallel-iterator adapter, the tower layer) captures a [`CarriedSpan`] with
//! the snapshot and enters it around each run, poll or job of the child, leaving it
//! before returning (on unwind too: the span's guard exits it). So a log line from a
//! rayon job or a `spawn_blocking` closure sits inside the request's span, as it does in
//! the handler that started the work.
//!
//! Cost: without the feature a [`CarriedSpan`] is zero-sized and entering it is the call
//! itself. With it, a capture first checks (one relaxed load) whether any subscriber was
//! ever installed, and if one was, asks the dispatcher for the current span (with
//! tracing-subscriber's `Registry`, about 9 ns: a thread-local lookup). A child whose
//! capture found no span pays one branch per run, poll or job. A carried span costs a
//! reference-count increment on the subscriber at capture and the subscriber's own
//! `enter` and `exit` per run, poll or job, which is what tracing's `Instrument` does.
//! Figures: `benches/tracing.rs` (group `span_carry`) and the `tracing` module docs.
//!
//! The span is entered *outside* the context's frame: the subscriber's `enter` and
//! `exit` run in the state of the thread that runs the child, as they would under
//! `Instrument`.

#![deny(unsafe_code)]

use crate::engine::{self, Frame};

/// The tracing span current at a capture, or nothing (no span current, or the feature
/// off, where the type is zero-sized).
#[derive(Clone, Default)]
pub(crate) struct CarriedSpan {
    #[cfg(feature = "tracing")]
    span: Option<::tracing::Span>,
}

impl CarriedSpan {
    /// Nothing carried: for calls made while the captured span is already entered.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub(crate) const NONE: Self = Self {
        #[cfg(feature = "tracing")]
        span: None,
    };

    /// The span current now, if there is one.
    #[inline]
    pub(crate) fn current() -> Self {
        #[cfg(feature = "tracing")]
        {
            // No subscriber was ever installed (the process does not use tracing): no
            // span can be current, and one relaxed load says so. `has_been_set` is
            // `#[doc(hidden)]`, but it is what tracing's own macros use to skip their
            // work when tracing is unused. Like them, a capture made on another thread
            // in the instant a global subscriber is being installed may miss a span
            // entered through it (tracing-core publishes the subscriber before this
            // flag); a scoped default sets the flag first on its own thread.
            if !::tracing_core::dispatcher::has_been_set() {
                return Self { span: None };
            }
            let span = ::tracing::Span::current();
            Self {
                span: (!span.is_none()).then_some(span),
            }
        }
        #[cfg(not(feature = "tracing"))]
        {
            Self {}
        }
    }

    /// Runs `f` inside the carried span (entered before, exited after, also on unwind),
    /// or just runs it if nothing was carried.
    #[inline]
    pub(crate) fn in_span<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            let _entered = span.enter();
            return f();
        }
        f()
    }
}

/// `f`, made into a job that runs in `frame` under the span current now, wherever and
/// whenever it is called (thread spawns, `spawn_blocking`, rayon's `'static` spawns).
pub(crate) fn job<F, T>(frame: Frame, f: F) -> impl FnOnce() -> T + Send
where
    F: FnOnce() -> T + Send,
{
    let span = CarriedSpan::current();
    move || span.in_span(|| engine::run_owned(frame, f))
}

/// Ends a unit of work that is being dropped (a wrapped future, a response body): drops
/// `inner` inside `frame` under `span`, so its destructors see the unit's values and a
/// `set` in them stays in the unit, then releases the frame where no other code can see
/// what the destructors of its values do (`engine::release_isolated`).
pub(crate) fn drop_in_frame<T>(
    mut inner: std::pin::Pin<&mut Option<T>>,
    frame: &mut Frame,
    span: &CarriedSpan,
) {
    if inner.is_some() {
        let in_frame = &mut *frame;
        span.in_span(|| engine::run_in(in_frame, || inner.set(None)));
    }
    engine::release_isolated(frame);
}
