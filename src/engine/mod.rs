//! The engine: which bindings each thread sees now, and how that changes.
//!
//! Everything the public API does to the current context goes through here, and nothing
//! here knows the public API: the engine imports neither `context`, `var`, `token` nor
//! `observe`. One job per file:
//!
//! * [`thread`]: the thread's state, `HOT`, one destructor-free thread-local holding the
//!   current frame, the root pointer reads follow, ids, the borrow counter and teardown;
//! * [`frame`]: the frame, the state a thread runs in, and releasing it;
//! * [`light`]: light frames, current for reads only, and making one the thread's own
//!   (`materialize`);
//! * [`run`]: entering frames, every lexically scoped entry point (`run_in`,
//!   `run_owned`, `run_borrowed`, `run_entered`, ...), and the detached pair;
//! * [`origin`]: the frames a request layer restores when a request ends;
//! * [`binding`]: reading and changing bindings in the current frame (`lookup_bound`,
//!   `lookup_inline`, the read cache's `cached`, `cached_boxed` and `lend_boxed`,
//!   `set_binding`, `reset_binding`) and the frame's context object (`current_shared`);
//! * [`scope`]: lexical scoped bindings (`ContextVar::scope`), kept on the stack while only
//!   reads happen, and made real sets (flushed) before anything else.
//!
//! [`object`] is the shared cell of a context object, below the frames that run it.
//!
//! # The design rule
//!
//! > Every frame switch is lexically scoped: entered and left inside one call of the
//! > crate (`enter(frame, f)` style), also on unwind. No value that user code can move,
//! > leak, `mem::forget` or drop out of order ever restores a frame.
//!
//! The frames on a thread therefore always form a stack that matches the call stack, and
//! the owner of the snapshot behind `HOT.root` is always a caller of whatever reads it.
//! The integrations follow it: a future's poll, a rayon job, each call into a folder of
//! `in_copied_context()` and each `Context::run` enters its frame inside the call and
//! leaves it before returning. Values the crate hands to user code (tokens, scoped sets,
//! folders, futures, frames held by wrappers) hold frames and snapshots as *data*; they
//! never switch the thread's frame when they are dropped.
//!
//! The one switch that cannot be scoped is tokio's task hooks (`enter_detached` /
//! `leave_detached`, called by tokio as a pair around a poll): it moves owned frames
//! only, refuses to leave unless the detached frame is current, and a light frame ends
//! detached frames left stranded inside it before it exits; `docs::internals` gives the
//! argument.
//!
//! # Announcing changes
//!
//! `observe` publishes each thread's current snapshot while it is enabled. The engine
//! announces every change of the current bindings through one hook ([`announce`]): a
//! relaxed load of a global switch, and, when it is on, a call of the function that
//! `observe` registered ([`set_announcer`]).

mod binding;
mod frame;
mod light;
mod object;
mod origin;
mod run;
mod scope;
mod thread;

pub(crate) use binding::{
    BoxedSlot, BoxedWord, CachedBoxed, InlineLookup, MissSite, ResetFailure, SetRefused, SetState,
    cached, cached_boxed, current_shared, lend_boxed, lookup_bound, lookup_inline, miss_site,
    reset_binding, set_binding, with_cached_boxed,
};
pub(crate) use frame::Frame;
pub(crate) use light::vars;
#[allow(
    unused_imports,
    reason = "the rayon module's (feature `rayon`); the engine does not know its users"
)]
pub(crate) use light::with_captured;
pub(crate) use object::Shared;
pub(crate) use origin::{origin_frames, restore_origins};
#[allow(
    unused_imports,
    reason = "tokio's task hooks' (`contextvars::tokio::isolate_tasks`); not public API"
)]
pub(crate) use run::{enter_detached, leave_detached};
pub(crate) use run::{
    release_isolated, run_borrowed, run_borrowed_fold, run_entered, run_in, run_owned,
    run_read_only,
};
pub(crate) use scope::{scope, with_bound_scoped};
pub(crate) use thread::{
    CacheSlot, READ_CACHE_SLOTS, TornDown, check_alive, has_boxed_slot, next_context_id,
};

use crate::map::Map;
use crate::sync::{AtomicBool, OnceLock, Ordering, globals};
use crate::value::Entry;

/// A snapshot of bindings: var id → entry.
pub(crate) type Vars = Map<Entry>;

globals! {
    /// Whether changes are announced. Read `Relaxed` on every set, reset and frame
    /// switch ([`announce`]); `observe` documents why nothing stronger is needed.
    static ANNOUNCING: AtomicBool = const AtomicBool::new(false);
}

/// The function [`announce`] calls while the switch is on.
static ANNOUNCER: OnceLock<fn()> = OnceLock::new();

/// Registers `announcer` (the first registration wins; the crate has one) and turns
/// announcements on or off. Relaxed: see `observe::on_change`.
pub(crate) fn set_announcer(announcer: fn(), on: bool) {
    let _ = ANNOUNCER.get_or_init(|| announcer);
    ANNOUNCING.store(on, Ordering::Relaxed);
}

/// Whether changes are announced now.
#[inline]
pub(crate) fn announcing() -> bool {
    ANNOUNCING.load(Ordering::Relaxed)
}

/// Tells the registered announcer that the current bindings changed. Called once the
/// thread's state is consistent again (the announcer reads it through [`vars`]).
#[inline]
fn announce() {
    if announcing() {
        announce_slow();
    }
}

#[cold]
fn announce_slow() {
    if let Some(announcer) = ANNOUNCER.get() {
        announcer();
    }
}
