//! The span follows the work: the `contextvars::plumbing::Carrier` that carries the
//! current `tracing` span with every captured context.

#![deny(unsafe_code)]

use std::sync::Arc;

use contextvars::plumbing::{self, Carried, Carrier, CarrierTaken};

/// Carries the span current at each capture of a context (see [`carry_spans`]).
struct SpanCarrier;

/// A captured span, entered around each run, poll or job of the work it travels with.
struct CarriedSpan(tracing::Span);

impl Carrier for SpanCarrier {
    fn capture(&self) -> Option<Arc<dyn Carried>> {
        // No subscriber was ever installed (the process does not use tracing): no span
        // can be current, and one relaxed load says so. `has_been_set` is
        // `#[doc(hidden)]`, but it is what tracing's own macros use to skip their work
        // when tracing is unused. Like them, a capture made on another thread in the
        // instant a global subscriber is being installed may miss a span entered through
        // it (tracing-core publishes the subscriber before this flag); a scoped default
        // sets the flag first on its own thread.
        if !tracing_core::dispatcher::has_been_set() {
            return None;
        }
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        Some(Arc::new(CarriedSpan(span)))
    }
}

impl Carried for CarriedSpan {
    fn enter(&self, run: &mut dyn FnMut()) {
        // The guard exits the span also when `run` unwinds.
        let _entered = self.0.enter();
        run();
    }
}

static SPAN_CARRIER: SpanCarrier = SpanCarrier;

/// From now on, every context the crate captures (thread spawns, wrapped futures and the
/// tokio helpers, rayon's `join`, scopes, spawns and parallel iterators, the tower
/// layer's requests, anything built on `contextvars::plumbing::TaskFrame`) carries the
/// `tracing` span current at the capture, and enters it around each run, poll or job of
/// the work, so the work's events sit in the span that started it. Call it once, early
/// (calling it again is fine); [`ContextFields::new`](crate::ContextFields::new) calls it
/// too.
///
/// # Errors
///
/// [`CarrierTaken`] if another `contextvars::plumbing::Carrier` is registered: a process
/// has one, and spans are then not carried.
pub fn carry_spans() -> Result<(), CarrierTaken> {
    plumbing::set_carrier(&SPAN_CARRIER)
}
