//! What travels with a captured context besides its snapshot: the state of the one
//! registered [`Carrier`] (`contextvars-tracing`'s carries the current `tracing` span).
//!
//! Every place the crate carries a context to other work (thread spawns, the future
//! wrapper and the tokio helpers built on it, rayon's `join`, scopes, spawns, `install`
//! and the parallel-iterator adapter, and whatever an integration builds on
//! [`TaskFrame`](crate::plumbing::TaskFrame)) captures a [`Carried`] with the snapshot and
//! enters it around each run, poll or job of the child, leaving it before returning (on
//! unwind too, if the carrier's `enter` is written that way). So a log line from a rayon
//! job or a `spawn_blocking` closure sits inside the request's span, as it does in the
//! handler that started the work.
//!
//! Cost: with no carrier registered a capture is one acquire load (the registration's
//! `OnceLock`), and a run, poll or job whose capture found nothing pays one branch. A
//! carrier's capture is its own cost plus, when it carries something, one allocation
//! (the shared state); entering it is one dynamic call around the child.
//!
//! The carried state is entered *outside* the context's frame: the carrier's `enter`
//! runs in the state of the thread that runs the child, as tracing's `Instrument` does.

#![deny(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use crate::engine::{self, Frame};
use crate::sync::OnceLock;

/// Something that travels with every context the crate captures, besides its bindings:
/// thread-local state of another library (the current `tracing` span, say) that should
/// follow the work into threads, tasks and jobs.
///
/// One carrier is registered per process ([`set_carrier`]). At each capture (a thread
/// spawn, a wrapped future, a rayon job, a [`TaskFrame`](crate::plumbing::TaskFrame))
/// the crate asks it for the state current now, and enters that state around every run,
/// poll or job of the child.
///
/// ```
/// use std::cell::Cell;
/// use std::sync::Arc;
/// use contextvars::plumbing::{Carried, Carrier, set_carrier};
///
/// thread_local!(static SPAN: Cell<u32> = const { Cell::new(0) });
///
/// /// Carries `SPAN` into threads and tasks.
/// struct SpanCarrier;
/// struct CarriedSpan(u32);
///
/// impl Carrier for SpanCarrier {
///     fn capture(&self) -> Option<Arc<dyn Carried>> {
///         let span = SPAN.get();
///         (span != 0).then(|| Arc::new(CarriedSpan(span)) as Arc<dyn Carried>)
///     }
/// }
///
/// impl Carried for CarriedSpan {
///     fn enter(&self, run: &mut dyn FnMut()) {
///         // Restore the outer value also when `run` unwinds.
///         struct Restore(u32);
///         impl Drop for Restore {
///             fn drop(&mut self) {
///                 SPAN.set(self.0);
///             }
///         }
///         let _restore = Restore(SPAN.replace(self.0));
///         run();
///     }
/// }
///
/// static CARRIER: SpanCarrier = SpanCarrier;
/// set_carrier(&CARRIER).unwrap();
///
/// SPAN.set(7);
/// let seen = contextvars::thread::spawn(|| SPAN.get()).join().unwrap();
/// assert_eq!(seen, 7);
/// ```
pub trait Carrier: std::any::Any + Send + Sync {
    /// The state to carry with a context captured now, or `None` if there is nothing to
    /// carry (then nothing is allocated and the child pays one branch). Called on the
    /// capturing thread, outside any frame switch; it must not panic.
    fn capture(&self) -> Option<Arc<dyn Carried>>;
}

/// The state a [`Carrier`] captured, entered around each run, poll or job of the work it
/// travels with.
pub trait Carried: Send + Sync + 'static {
    /// Calls `run` exactly once, inside this state: enter it before, leave it after, also
    /// when `run` unwinds. Not calling `run` (or calling it twice) panics in the crate
    /// with a message naming the contract.
    fn enter(&self, run: &mut dyn FnMut());
}

/// A carrier of another type is registered already ([`set_carrier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarrierTaken;

impl fmt::Display for CarrierTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "another carrier is registered: a process has one `contextvars::plumbing::Carrier` \
             (registering one of the same type again is fine)",
        )
    }
}

impl std::error::Error for CarrierTaken {}

/// The registered carrier.
static CARRIER: OnceLock<&'static dyn Carrier> = OnceLock::new();

/// Registers `carrier` for the rest of the process: every context captured from now on
/// carries its state (see [`Carrier`]). Registering a carrier of the same type again is
/// `Ok` (and changes nothing); one of another type is refused with [`CarrierTaken`].
pub fn set_carrier(carrier: &'static dyn Carrier) -> Result<(), CarrierTaken> {
    let set: &dyn std::any::Any = *CARRIER.get_or_init(|| carrier);
    // By type, not by address: distinct zero-sized statics may share one.
    let offered: &dyn std::any::Any = carrier;
    if set.type_id() == offered.type_id() {
        Ok(())
    } else {
        Err(CarrierTaken)
    }
}

/// The carrier's state at a capture, or nothing (no carrier, or it had nothing to carry).
#[derive(Clone, Default)]
pub(crate) struct CarriedState {
    state: Option<Arc<dyn Carried>>,
}

impl CarriedState {
    /// Nothing carried: for calls made while the captured state is already entered.
    pub(crate) const NONE: Self = Self { state: None };

    /// The registered carrier's state now, if it has one.
    #[inline]
    pub(crate) fn current() -> Self {
        match CARRIER.get() {
            None => Self::NONE,
            Some(carrier) => Self {
                state: carrier.capture(),
            },
        }
    }

    /// Runs `f` inside the carried state (entered before, left after), or just runs it if
    /// nothing was carried.
    #[inline]
    pub(crate) fn in_state<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.state {
            None => f(),
            Some(state) => enter_carried(&**state, f),
        }
    }
}

/// [`CarriedState::in_state`] with something carried: out of line, so that the common
/// case (nothing carried) stays a branch.
#[inline(never)]
fn enter_carried<R>(state: &dyn Carried, f: impl FnOnce() -> R) -> R {
    let mut f = Some(f);
    let mut out = None;
    state.enter(&mut || {
        let f = f
            .take()
            .expect("a `contextvars::plumbing::Carried` called its `run` twice");
        out = Some(f());
    });
    out.expect("a `contextvars::plumbing::Carried` returned without calling its `run`")
}

/// `f`, made into a job that runs in `frame` under the carried state current now,
/// wherever and whenever it is called (thread spawns, `spawn_blocking`, rayon's
/// `'static` spawns).
pub(crate) fn job<F, T>(frame: Frame, f: F) -> impl FnOnce() -> T + Send
where
    F: FnOnce() -> T + Send,
{
    let carried = CarriedState::current();
    move || carried.in_state(|| engine::run_owned(frame, f))
}
