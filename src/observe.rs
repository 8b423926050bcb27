//! Cross-thread observation: every thread's current context, readable from any thread.
//!
//! Profilers, watchdogs and debug endpoints need to ask "what is each thread working on
//! right now?" without stopping the threads. With publication switched on, every thread
//! publishes its current context each time it changes (a [`set`](crate::ContextVar::set),
//! a [`reset`](crate::ContextVar::reset), entering or leaving a [`Context`](crate::Context)
//! or a future's context), and [`threads`] reads what every live thread published last,
//! from any thread, without locks:
//!
//! ```
//! use contextvars::{context_var, observe};
//!
//! context_var! {
//!     /// The request a thread is serving.
//!     static REQUEST_ID: u64;
//! }
//!
//! observe::enable();
//! let (started, finish) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
//! std::thread::scope(|s| {
//!     std::thread::Builder::new()
//!         .name("worker".into())
//!         .spawn_scoped(s, || {
//!             let _token = REQUEST_ID.set(42); // published
//!             started.wait();
//!             finish.wait(); // "working"
//!         })
//!         .unwrap();
//!
//!     started.wait();
//!     // Any thread can look, while the worker is busy.
//!     let worker = observe::threads()
//!         .into_iter()
//!         .find(|thread| thread.name() == Some("worker"))
//!         .expect("the worker published its context");
//!     assert_eq!(worker.snapshot().get(&REQUEST_ID), Some(&42));
//!     assert_eq!(format!("{:?}", worker.snapshot()), "{REQUEST_ID: 42}");
//!     finish.wait();
//! });
//! observe::disable();
//! ```
//!
//! # What a reader sees
//!
//! [`threads`] returns one [`ThreadInfo`] per live thread that has published: its
//! [`ThreadId`], its name, and an owned [`Snapshot`] of the context it ran when it last
//! changed context. A snapshot is immutable and is never torn or freed under the reader:
//! it is the same persistent map the thread itself reads, shared by reference count, so
//! it can be kept, iterated (with variable names and `Debug` values) and sent elsewhere.
//! A thread that exits is removed from the registry; one that is exiting while
//! [`threads`] runs may or may not be listed.
//!
//! A thread appears once it changes context while publication is on ([`enable`]
//! publishes the calling thread at once). A thread that has not changed context since
//! publication was switched on has nothing to show and is not listed: its context is
//! whatever it was, which only it can read.
//!
//! # Cost
//!
//! Publication is **off by default**. While it is off, every set, reset and context
//! switch pays one relaxed load of a global flag, and nothing else: no thread registers,
//! nothing is allocated. While it is on, each change also clones the new snapshot (one
//! reference-count increment), allocates a small record for it and swaps it into the
//! thread's slot (an `arc_swap` store), and a thread's first publication registers it
//! (one allocation and a CAS).
//!
//! Per operation while it is on: `set` + `reset` publish once each, and
//! [`Context::run`](crate::Context::run) twice (entering and leaving). The measured
//! figures (`benches/observe.rs`: off, on, and on while another thread calls [`threads`]
//! in a loop) are in the repository's `BENCHMARKS.md`. About a third of a publication is
//! `arc_swap`'s store settling readers' outstanding loads; a reader polling in a tight
//! loop, and so contending for the same cache lines, is the worst case.
//!
//! Readers never block the observed threads, and the observed threads never wait for
//! readers: the slots are `arc_swap` cells (lock-free stores, wait-free loads), and the
//! registry of slots is a lock-free list whose removed nodes are reclaimed with
//! `crossbeam-epoch` once no reader can still hold them.
//!
//! # Where values are dropped
//!
//! A published snapshot holds references to the values in it. A value whose last
//! reference was a published snapshot is dropped by whoever lets go of that snapshot last:
//! the thread itself on its next publication or at exit, [`disable`] (which empties every
//! slot), or a reader dropping its [`ThreadInfo`]. So, as with any [`Snapshot`], a value's
//! destructor may run on another thread than the one that set it.

#![deny(unsafe_code)]

use std::fmt;
use std::thread::ThreadId;

use crate::engine;
use crate::snapshot::Snapshot;
use crate::sync::{Arc, AtomicList, ListEntry, OnceCell, SnapshotCell, globals, thread_locals};

globals! {
    /// The live threads' slots.
    static REGISTRY: Arc<AtomicList<ThreadSlot>> = lazy Arc::new(AtomicList::new());
}

// This thread's registration, made at its first publication; dropping it (at thread exit)
// empties the slot and removes it from the registry.
thread_locals! {
    static SLOT: OnceCell<Registration> = OnceCell::new();
}

/// What one thread publishes: its current snapshot. A separate record (rather than the
/// snapshot's root node itself) because an empty context has no root node, and a thread
/// in an empty context must still be told apart from one that has nothing published.
struct Published {
    vars: engine::Vars,
}

/// One thread's entry in the registry.
struct ThreadSlot {
    id: ThreadId,
    name: Option<String>,
    /// The last published snapshot; empty before the first publication and after
    /// [`disable`] or thread exit.
    current: SnapshotCell<Published>,
}

/// A thread's registry entry, in its `SLOT` thread-local.
struct Registration(ListEntry<ThreadSlot>);

impl Drop for Registration {
    fn drop(&mut self) {
        // Drop the last snapshot here, on the exiting thread, rather than wherever the
        // registry's garbage is collected; the entry then unlinks the slot.
        drop(self.0.get().current.swap(None));
    }
}

/// Switches publication on: from now on every thread publishes its context when it
/// changes. The calling thread publishes at once.
///
/// ```
/// use contextvars::observe;
/// observe::enable();
/// assert!(observe::is_enabled());
/// let me = std::thread::current().id();
/// assert!(observe::threads().iter().any(|thread| thread.id() == me));
/// # observe::disable();
/// ```
pub fn enable() {
    // Relaxed: other threads start publishing when they see the flag; nothing they
    // publish depends on anything written before it.
    engine::set_announcer(on_change, true);
    on_change();
}

/// Switches publication off and empties every thread's slot, releasing the snapshots
/// they held. Threads stay registered until they exit, so switching publication on
/// again is cheap.
///
/// A thread that is publishing while `disable` runs either has its slot emptied by
/// `disable` or empties it itself (see the implementation notes of `on_change`), so no
/// snapshot outlives the switch in a slot.
///
/// ```
/// use contextvars::observe;
/// observe::enable();
/// observe::disable();
/// assert!(!observe::is_enabled());
/// assert!(observe::threads().is_empty());
/// ```
pub fn disable() {
    engine::set_announcer(on_change, false);
    let mut released = Vec::new();
    REGISTRY.for_each(|slot| released.extend(slot.current.swap(None)));
    // Dropped after the registry pass: user destructors do not run while pinned.
    drop(released);
}

/// Whether publication is on.
pub fn is_enabled() -> bool {
    engine::announcing()
}

/// Every live thread's published context, newest registered thread first.
///
/// Lock-free, and callable from any thread (also from an observed one, which then sees
/// its own last publication). Empty while publication is off. See the
/// [module docs](self) for which threads are listed.
///
/// ```
/// use contextvars::{ContextVar, observe};
/// static STAGE: ContextVar<&str> = contextvars::context_var!(&'static str, "stage");
///
/// observe::enable();
/// let _token = STAGE.set("parsing");
/// let me = std::thread::current().id();
/// let mine = observe::threads().into_iter().find(|t| t.id() == me).unwrap();
/// assert_eq!(mine.snapshot().get(&STAGE), Some(&"parsing"));
/// # observe::disable();
/// ```
pub fn threads() -> Vec<ThreadInfo> {
    let mut found = Vec::new();
    REGISTRY.for_each(|slot| {
        if let Some(published) = slot.current.load() {
            found.push((slot.id, slot.name.clone(), published));
        }
    });
    // Built after the registry pass, so no user code (a value's destructor, when a
    // record turns out to be the last reference) runs while pinned.
    found
        .into_iter()
        .map(|(id, name, published)| ThreadInfo {
            id,
            name,
            snapshot: Snapshot::new(published.vars.clone()),
        })
        .collect()
}

/// One thread's published context, as returned by [`threads`].
///
/// Owned: it stays valid (and keeps the snapshot's values alive) after the thread moves
/// on or exits.
#[derive(Clone)]
pub struct ThreadInfo {
    id: ThreadId,
    name: Option<String>,
    snapshot: Snapshot,
}

impl ThreadInfo {
    /// The thread's id ([`std::thread::Thread::id`]).
    pub fn id(&self) -> ThreadId {
        self.id
    }

    /// The thread's name ([`std::thread::Thread::name`]), if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The context the thread published last: its bindings when it last changed context.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot, by value.
    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }
}

impl fmt::Debug for ThreadInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// Publishes the current thread's current snapshot. Called after a change, once the
/// thread's state is consistent again (it reads it through `engine::vars`).
///
/// **Racing `disable`.** After storing its snapshot the thread re-reads the switch and,
/// if it is now off, empties its slot again. The slot's `swap` is a read-modify-write
/// with (at least) acquire-release semantics on one location, so this thread's swap and
/// `disable`'s are ordered: if `disable`'s comes later, it takes this snapshot out; if
/// this one comes later, it read the value `disable` stored, so `disable`'s earlier store
/// of `false` happens before the re-read here, which then sees it. Either way the slot
/// ends up empty. (A `Relaxed` re-read is enough: the ordering comes from the swaps.)
#[cold]
#[inline(never)]
fn on_change() {
    let released = SLOT.try_with(|slot| {
        let registration = slot.get_or_init(register);
        let cell = &registration.0.get().current;
        let new = Arc::new(Published {
            vars: engine::vars(),
        });
        let old = cell.swap(Some(new));
        let withdrawn = if engine::announcing() {
            None
        } else {
            cell.swap(None)
        };
        (old, withdrawn)
    });
    // Dropped outside the thread-local access: a value's destructor may change context
    // and publish again.
    drop(released);
}

/// Adds the current thread to the registry.
fn register() -> Registration {
    let thread = std::thread::current();
    Registration(AtomicList::insert(
        &REGISTRY,
        ThreadSlot {
            id: thread.id(),
            name: thread.name().map(str::to_owned),
            current: SnapshotCell::new(None),
        },
    ))
}

/// The registry's list, for the loom models in `loom-tests/`. Not public API.
#[cfg(loom)]
#[doc(hidden)]
pub mod __model {
    pub use crate::sync::{AtomicList, ListEntry};
}
