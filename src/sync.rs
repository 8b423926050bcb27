//! The synchronisation shim: the only module that names an atomic, a cell primitive,
//! `thread_local!`, `arc_swap` or `loom`.
//!
//! Every other module says `crate::sync::X`. Under `--cfg loom` (with the
//! semver-exempt `loom` feature) the names switch to loom's model-checked types, so the
//! models in `loom-tests/` see every access that matters:
//!
//! | name | normal build | loom build |
//! |---|---|---|
//! | `Arc` | `std::sync::Arc` | `loom::sync::Arc` (leak-checked) |
//! | `unique_mut` | strong count 1 + `Acquire` fence (no `Weak`s exist); `Arc::get_mut` under TSAN | `loom::sync::Arc::get_mut` |
//! | `AtomicBool`, `Ordering` | `std::sync::atomic` | `loom::sync::atomic` |
//! | `SnapshotCell` | `arc_swap::ArcSwapOption` | `loom::sync::Mutex<Option<Arc<T>>>` (arc-swap is not loom-aware) |
//! | `OnceArc` | `std::sync::OnceLock<Arc<T>>` | `loom::sync::Mutex<Option<Arc<T>>>` |
//! | `StaticCounter` | `std::sync::atomic::AtomicU64` | the same: it must be `const`-constructible for `static` vars, and loom atomics are not |
//! | `thread_locals!` | `std::thread_local!` with `const` init | `loom::thread_local!` (which rejects `const` init) |
//! | `globals!` | a `static` (`const` init) or a `std::sync::LazyLock` (`lazy` init) | `loom::lazy_static!` (one value per execution) |
//! | `OnceCell` | `std::cell::OnceCell` | the same (thread-local, not a synchronisation primitive) |
//! | `AtomicList`, `ListEntry` | a lock-free list on `crossbeam_epoch` | the same code, on crossbeam-epoch's loom build with `--cfg crossbeam_loom` (the crate's own models), on its normal build otherwise |
//! | `spawn_thread`, `JoinHandle` | `std::thread` | `loom::thread` (a model's threads must be loom's) |
//!
//! `SnapshotCell` was chosen over an `AtomicPtr` with crossbeam-epoch reclamation by
//! measurement: see `benches/cells.rs` and `docs::internals`.

#![allow(unreachable_pub)]

#[cfg(not(loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, Ordering};
    pub use std::thread::{JoinHandle, spawn as spawn_thread};

    /// Declares thread-locals with a `const` initialiser (no lazy-init check on access).
    macro_rules! thread_locals {
        ($($vis:vis static $name:ident: $t:ty = $init:expr;)*) => {
            std::thread_local! { $($vis static $name: $t = const { $init };)* }
        };
    }
    pub(crate) use thread_locals;

    /// Declares globals: `const` ones are plain `static`s (a `static` atomic costs one load,
    /// with no initialisation check), `lazy` ones are `std::sync::LazyLock`s. The loom twin
    /// makes both `loom::lazy_static!`s, which loom creates afresh for every execution.
    macro_rules! globals {
        () => {};
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const $init:expr; $($rest:tt)*) => {
            $(#[$attr])* $vis static $name: $t = $init;
            $crate::sync::globals!($($rest)*);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = lazy $init:expr; $($rest:tt)*) => {
            $(#[$attr])* $vis static $name: std::sync::LazyLock<$t> = std::sync::LazyLock::new(|| $init);
            $crate::sync::globals!($($rest)*);
        };
    }
    pub(crate) use globals;

    /// Wraps a value as the crate's shared, type-erased `Arc`.
    ///
    /// A macro because unsizing (`Arc<T>` to `Arc<dyn Trait>`) cannot be written
    /// generically on stable; the loom twin goes through `loom::sync::Arc::from_std`.
    macro_rules! arc_dyn {
        ($value:expr) => {
            $crate::sync::Arc::new($value)
        };
    }
    pub(crate) use arc_dyn;

    /// A cell holding an optional `Arc<T>` that any thread can read lock-free while one
    /// writer replaces it.
    ///
    /// Backed by `arc_swap::ArcSwapOption`: loads are wait-free while a thread holds at most
    /// a few arc-swap guards (we never hold one: `load` returns an owned `Arc`), stores are
    /// lock-free, and reclamation is exact.
    pub struct SnapshotCell<T>(arc_swap::ArcSwapOption<T>);

    impl<T> SnapshotCell<T> {
        pub fn new(value: Option<Arc<T>>) -> Self {
            Self(arc_swap::ArcSwapOption::new(value))
        }
        /// An owned copy of the current value. arc-swap's load is `SeqCst`-backed and
        /// pairs with the `store` below: a reader sees either the old or the new `Arc`,
        /// fully initialised (arc-swap's documented guarantee).
        pub fn load(&self) -> Option<Arc<T>> {
            self.0.load_full()
        }
        /// Replaces the value and returns the old one, which the caller drops when that
        /// is safe (it may be the last reference, and dropping runs user destructors).
        pub fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
            self.0.swap(value)
        }
    }

    /// `Arc::get_mut` for an `Arc` of a type that never has `Weak` references (the
    /// persistent map's nodes): `Some` exactly when this is the only reference.
    ///
    /// `Arc::get_mut` must also lock out a concurrent `Weak::upgrade`, which costs a
    /// compare-and-swap; with no `Weak` in existence, a strong count of 1 seen through
    /// our own `&mut Arc` cannot change under us (any other thread would need a
    /// reference of its own, which would be counted), so one load suffices.
    #[cfg(not(contextvars_sanitize_thread))]
    #[inline]
    pub fn unique_mut<T>(arc: &mut Arc<T>) -> Option<&mut T> {
        if Arc::strong_count(arc) != 1 {
            return None;
        }
        // Pairs with the `Release` decrement in the `Drop` of the last other `Arc` to
        // this value (on any thread), so that its reads of the value happen before our
        // writes; the same fence `Arc::get_mut` relies on.
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the strong count is 1 and there are no `Weak`s (the caller's type never
        // makes one), so `arc` is the only pointer to the value, and the `&mut Arc`
        // borrow stops it from being cloned while the returned reference lives. The
        // pointer comes from the `Arc`'s own allocation, with write provenance.
        Some(unsafe { &mut *Arc::as_ptr(arc).cast_mut() })
    }

    /// Under ThreadSanitizer (`--cfg contextvars_sanitize_thread`, set by `build.rs`):
    /// `Arc::get_mut`. TSAN does not model fences: it misses the edge from another
    /// thread's `Release` decrement (dropping its copy) to the `Acquire` fence above, and
    /// reports that thread's earlier reads of the node against the in-place write that
    /// follows. std's own `Arc` uses `Acquire` loads instead of fences under TSAN, and
    /// `get_mut` reads the strong count with one.
    #[cfg(contextvars_sanitize_thread)]
    #[inline]
    pub fn unique_mut<T>(arc: &mut Arc<T>) -> Option<&mut T> {
        Arc::get_mut(arc)
    }

    /// A lazily initialised, then immutable, `Arc<T>`.
    pub struct OnceArc<T>(std::sync::OnceLock<Arc<T>>);

    impl<T> OnceArc<T> {
        pub const fn new() -> Self {
            Self(std::sync::OnceLock::new())
        }
        pub fn with_value(value: Arc<T>) -> Self {
            Self(std::sync::OnceLock::from(value))
        }
        /// `OnceLock::get` is an `Acquire` load that pairs with the `Release` publication
        /// inside `get_or_init`, so the `Arc`'s contents are visible.
        pub fn get(&self) -> Option<&Arc<T>> {
            self.0.get()
        }
        pub fn get_or_init(&self, init: impl FnOnce() -> Arc<T>) -> &Arc<T> {
            self.0.get_or_init(init)
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, Ordering};
    pub use loom::thread::{JoinHandle, spawn as spawn_thread};

    macro_rules! thread_locals {
        ($($vis:vis static $name:ident: $t:ty = $init:expr;)*) => {
            loom::thread_local! { $($vis static $name: $t = $init;)* }
        };
    }
    pub(crate) use thread_locals;

    macro_rules! globals {
        () => {};
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $kind:ident $init:expr; $($rest:tt)*) => {
            loom::lazy_static! { $(#[$attr])* static ref $name: $t = $init; }
            $crate::sync::globals!($($rest)*);
        };
    }
    pub(crate) use globals;

    macro_rules! arc_dyn {
        ($value:expr) => {
            $crate::sync::Arc::from_std(std::sync::Arc::new($value))
        };
    }
    pub(crate) use arc_dyn;

    /// Loom stand-in for the arc-swap cell: a mutex, which loom can see and which has the
    /// same "old or new, never torn" behaviour.
    pub struct SnapshotCell<T>(loom::sync::Mutex<Option<Arc<T>>>);

    impl<T> SnapshotCell<T> {
        pub fn new(value: Option<Arc<T>>) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub fn load(&self) -> Option<Arc<T>> {
            self.0.lock().unwrap().clone()
        }
        pub fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
            std::mem::replace(&mut *self.0.lock().unwrap(), value)
        }
    }

    /// Loom twin: `Arc::get_mut`, which loom models.
    #[inline]
    pub fn unique_mut<T>(arc: &mut Arc<T>) -> Option<&mut T> {
        Arc::get_mut(arc)
    }

    pub struct OnceArc<T>(loom::sync::Mutex<Option<Arc<T>>>);

    impl<T> OnceArc<T> {
        pub fn new() -> Self {
            Self(loom::sync::Mutex::new(None))
        }
        pub fn with_value(value: Arc<T>) -> Self {
            Self(loom::sync::Mutex::new(Some(value)))
        }
        pub fn get(&self) -> Option<&Arc<T>> {
            let guard = self.0.lock().unwrap();
            let ptr: Option<*const Arc<T>> = guard.as_ref().map(|a| a as *const Arc<T>);
            drop(guard);
            // SAFETY: once set, the `Option` is never changed again (there is no setter
            // after initialisation), so the `Arc` stays at this address for as long as
            // `self` lives; the mutex made its initialisation visible to this thread.
            ptr.map(|p| unsafe { &*p })
        }
        pub fn get_or_init(&self, init: impl FnOnce() -> Arc<T>) -> &Arc<T> {
            {
                let mut guard = self.0.lock().unwrap();
                if guard.is_none() {
                    *guard = Some(init());
                }
            }
            self.get().expect("initialised above")
        }
    }
}

pub use imp::*;

/// A `const`-constructible 64-bit counter cell, used for variable ids and id blocks.
///
/// Deliberately std in every build: a `static ContextVar` needs a `const` constructor and
/// loom's atomics are not `const`. Id allocation is a single `fetch_add` whose only
/// requirement is uniqueness, which any ordering gives.
pub struct StaticCounter(std::sync::atomic::AtomicU64);

impl StaticCounter {
    pub const fn new(value: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(value))
    }
    /// `Relaxed`: the value is only ever compared with itself (an id), it publishes no data.
    #[inline]
    pub fn load(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Adds `n`, returning the previous value. `Relaxed`: uniqueness comes from the RMW's
    /// atomicity, not from ordering.
    #[inline]
    pub fn fetch_add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed)
    }
    /// Installs `new` if the cell still holds `current`; returns the value now in the cell.
    /// `Relaxed` for the same reason as `load`.
    #[inline]
    pub fn compare_exchange(&self, current: u64, new: u64) -> u64 {
        match self.0.compare_exchange(
            current,
            new,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => new,
            Err(actual) => actual,
        }
    }
}

/// A write-once cell for lazily computed variable defaults. std in every build, for the
/// same `const` reason as `StaticCounter`; defaults are not part of any modelled protocol.
pub use std::sync::OnceLock;

/// A value that belongs to whoever holds a flag: a try-lock with no waiting.
///
/// This is a context object's "entered" state together with the runner's own copy of its
/// snapshot. [`try_enter`](Self::try_enter) takes the flag (`Acquire` CAS, pairing with
/// the `Release` of the previous holder's [`leave_with`](Self::leave_with) or
/// [`leave`](Self::leave)); until the holder leaves, it alone may read or replace the
/// value, on whichever thread it runs by then. So entering costs one compare-and-swap and
/// reading the value costs nothing: no reference count, no arc-swap load.
///
/// The flag is a `crate::sync::AtomicBool` (loom's in loom builds, so the models check
/// the hand-over); the value is a std `UnsafeCell` in every build, as loom's cannot lend a
/// reference beyond a closure.
pub struct EnteredCell<T> {
    entered: AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only accessed by the flag's holder (the unsafe methods' contract),
// with the flag's Acquire/Release ordering at each hand-over, so the value moves between
// threads (`Send`); the holder may lend `&T` to several threads at once (rayon jobs
// reading the runner's snapshot), hence `Sync` too.
unsafe impl<T: Send + Sync> Sync for EnteredCell<T> {}

impl<T> EnteredCell<T> {
    /// A cell holding `value`, already entered if `entered`.
    pub fn new(value: T, entered: bool) -> Self {
        Self {
            entered: AtomicBool::new(entered),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    /// Takes the flag; `false` if someone holds it.
    #[inline]
    pub fn try_enter(&self) -> bool {
        // Acquire pairs with the Release in `leave`/`leave_with` by the previous holder,
        // so its writes to the value (and everything before) are visible to us.
        self.entered
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The value.
    ///
    /// # Safety
    ///
    /// The caller holds the flag, and the reference is not used after the caller
    /// leaves (or replaces the value).
    #[inline]
    pub unsafe fn get(&self) -> &T {
        // SAFETY: by the contract, only the holder accesses the value, and it does not
        // write it while this reference is in use.
        unsafe { &*self.value.get() }
    }

    /// Replaces the value and releases the flag; returns the old value.
    ///
    /// # Safety
    ///
    /// The caller holds the flag, and no reference from [`get`](Self::get) is in use.
    #[inline]
    pub unsafe fn leave_with(&self, value: T) -> T {
        // SAFETY: by the contract, the holder has exclusive access until the store below.
        let old = unsafe { std::mem::replace(&mut *self.value.get(), value) };
        // Release pairs with the Acquire CAS in `try_enter` by the next holder.
        self.entered.store(false, Ordering::Release);
        old
    }

    /// Releases the flag, leaving the value as it is.
    ///
    /// # Safety
    ///
    /// The caller holds the flag.
    #[inline]
    pub unsafe fn leave(&self) {
        // Release pairs with the Acquire CAS in `try_enter` by the next holder.
        self.entered.store(false, Ordering::Release);
    }
}

/// A thread-local `Cell`. Re-exported so that nothing outside this module names a cell
/// primitive; `Cell` is not a synchronisation primitive, but keeping the import here
/// makes "what touches shared or thread state" greppable.
pub use std::cell::Cell;

/// A thread-local write-once cell (the per-thread publication slot of `observe`). Like
/// `Cell`, re-exported only so that cell primitives are named here.
pub use std::cell::OnceCell;

pub use list::{AtomicList, ListEntry};

/// A lock-free list whose entries are added and removed by their owners while any thread
/// iterates it: the registry of `observe`'s per-thread slots.
///
/// **Shape.** A singly linked list of heap nodes, newest first, in the style of
/// crossbeam-epoch's own internal list (Harris–Michael): [`AtomicList::insert`] pushes a
/// node at the head with a CAS; dropping the returned [`ListEntry`] *marks* the node's
/// `next` pointer (tag bit 1: logically deleted, and `next` never changes again), then
/// unlinks marked nodes; iteration skips marked nodes and unlinks them on the way. A node
/// is unlinked by a successful CAS of its predecessor's `next` (or the head) from the node
/// to its successor, which can succeed only once, so exactly one thread hands each node to
/// [`defer_destroy`](crossbeam_epoch::Guard::defer_destroy).
///
/// **Reclamation.** The list owns a `crossbeam_epoch::Collector`, so the nodes (and the
/// values in them) are destroyed only inside this list's operations or when the list is
/// dropped, never by unrelated code that happens to pin the global collector. Every
/// operation registers a fresh handle with it: operations are rare (a thread's first
/// publication, its exit, a reader's pass), and a fresh handle needs no thread-local,
/// which matters during thread teardown. A destroyed node is one that was unlinked while
/// every reader pinned at the time has since unpinned, so no reader ever sees freed memory.
///
/// **Orderings.** The head CAS that inserts a node is `Release` and every traversal load
/// is `Acquire`: a reader that reaches a node sees it fully initialised. Every later CAS of
/// the head is a read-modify-write, so it continues the release sequence and a reader
/// that loads the head synchronises with every earlier insertion (older nodes, reached
/// through `next` pointers written `Relaxed` before their node was published, included).
/// The mark is a `Release` RMW read by the unlinker's `Acquire` load, so the owner's last
/// use of its node happens before the node is handed to the collector. An unlinking CAS is
/// `Release`: a reader that loads the new `next` synchronises with the unlinker, who had
/// itself acquired the successor.
///
/// Under `--cfg loom --cfg crossbeam_loom` the same code runs on crossbeam-epoch's loom
/// build (the crate's loom stage sets both), so the models in
/// `loom-tests/tests/observe.rs` check this protocol and crossbeam's reclamation together.
/// Under `--cfg loom` alone (a user's models) crossbeam-epoch is its normal build: the
/// list works inside a model, and loom sees its accesses through loom's `Arc` and the
/// ordering of its `Release`/`Acquire` pairs, but not crossbeam's own reclamation.
mod list {
    use std::marker::PhantomData;

    use super::Arc;
    use super::Ordering::{Acquire, Relaxed, Release};
    use crossbeam_epoch::{self as epoch, Atomic, Collector, Guard, Owned, Shared};

    /// The deletion mark, in the low bit of a node's `next` pointer.
    const MARK: usize = 1;

    struct Node<T> {
        value: T,
        next: Atomic<Node<T>>,
    }

    /// See the [module docs](self).
    pub struct AtomicList<T: Send + Sync> {
        head: Atomic<Node<T>>,
        collector: Collector,
        /// The ordering of the publishing CAS in `insert`, `Release`; a loom canary
        /// weakens it to check that the models notice.
        #[cfg(loom)]
        publish: super::Ordering,
    }

    impl<T: Send + Sync> Default for AtomicList<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T: Send + Sync> AtomicList<T> {
        /// An empty list with a collector of its own.
        pub fn new() -> Self {
            Self {
                head: Atomic::null(),
                collector: Collector::new(),
                #[cfg(loom)]
                publish: Release,
            }
        }

        /// A list whose `insert` publishes with `publish` instead of `Release`: only for
        /// the loom canary that shows a too-weak ordering is caught.
        #[cfg(loom)]
        pub fn with_publish_ordering(publish: super::Ordering) -> Self {
            let mut list = Self::new();
            list.publish = publish;
            list
        }

        fn publish_ordering(&self) -> super::Ordering {
            #[cfg(loom)]
            return self.publish;
            #[cfg(not(loom))]
            Release
        }

        fn pin(&self) -> Guard {
            self.collector.register().pin()
        }

        /// Adds `value` at the head. Lock-free: retries only when another insertion or
        /// an unlinking of the first node won the race for the head.
        ///
        /// The entry keeps the list alive (a thread's entry is dropped among its
        /// thread-locals, whose order relative to anything else is not ours to choose).
        pub fn insert(list: &Arc<Self>, value: T) -> ListEntry<T> {
            let this = &**list;
            let guard = this.pin();
            let mut node = Owned::new(Node {
                value,
                next: Atomic::null(),
            });
            // Relaxed: the head is only compared and stored into `next`, never followed.
            let mut head = this.head.load(Relaxed, &guard);
            loop {
                // Relaxed: published by the CAS below.
                node.next.store(head, Relaxed);
                // The publishing CAS (see the module docs). Failure: Relaxed, as above.
                match this.head.compare_exchange_weak(
                    head,
                    node,
                    this.publish_ordering(),
                    Relaxed,
                    &guard,
                ) {
                    Ok(shared) => {
                        return ListEntry {
                            list: list.clone(),
                            node: shared.as_raw(),
                            _not_send: PhantomData,
                        };
                    }
                    Err(error) => {
                        head = error.current;
                        node = error.new;
                    }
                }
            }
        }

        /// Calls `f` with every value whose entry has not been dropped, newest first, and
        /// unlinks the nodes of dropped entries it passes. Lock-free; `f` runs while this
        /// thread is pinned (it should be short, and must not block on other threads).
        ///
        /// A value whose entry is dropped during the pass may or may not be seen; one
        /// inserted during the pass is seen only if it was inserted before the pass read
        /// the head.
        pub fn for_each(&self, mut f: impl FnMut(&T)) {
            let guard = self.pin();
            let mut pred = &self.head;
            let mut curr = pred.load(Acquire, &guard);
            // SAFETY: `curr` is null or was loaded while pinned from the head or from a
            // node reached the same way; a node is destroyed only after it was unlinked
            // and every thread pinned at that time (this one included) has unpinned.
            while let Some(node) = unsafe { curr.as_ref() } {
                // Acquire: pairs with the owner's Release mark (and the inserter's
                // publication, through the head's release sequence).
                let succ = node.next.load(Acquire, &guard);
                if succ.tag() == MARK {
                    let succ = succ.with_tag(0);
                    // One try, and `pred` stays either way: on success it now points to
                    // `succ`; on failure (`pred` was marked, or `curr` was unlinked
                    // already) the node is left to a later pass and the walk goes on
                    // through it (a marked node's `next` is frozen, and this thread is
                    // pinned, so `succ` is still allocated).
                    self.unlink(pred, curr, succ, &guard);
                    curr = succ;
                    continue;
                }
                f(&node.value);
                pred = &node.next;
                curr = succ;
            }
        }

        /// Unlinks every marked node, restarting from the head whenever a CAS fails.
        fn unlink_marked(&self, guard: &Guard) {
            'restart: loop {
                let mut pred = &self.head;
                let mut curr = pred.load(Acquire, guard);
                // SAFETY: as in `for_each`.
                while let Some(node) = unsafe { curr.as_ref() } {
                    let succ = node.next.load(Acquire, guard);
                    if succ.tag() == MARK {
                        let succ = succ.with_tag(0);
                        if !self.unlink(pred, curr, succ, guard) {
                            continue 'restart;
                        }
                        curr = succ;
                        continue;
                    }
                    pred = &node.next;
                    curr = succ;
                }
                return;
            }
        }

        /// Swings `pred` from `curr` (a marked node) to `succ` (its successor), and if
        /// that succeeds hands `curr` to the collector. Fails if `pred` no longer points to
        /// `curr` unmarked: `pred` was marked itself, `curr` was unlinked already, or a
        /// node was inserted before it.
        fn unlink<'g>(
            &self,
            pred: &Atomic<Node<T>>,
            curr: Shared<'g, Node<T>>,
            succ: Shared<'g, Node<T>>,
            guard: &'g Guard,
        ) -> bool {
            // Release: a reader that loads `succ` from `pred` synchronises with this
            // thread, which acquired `succ` (see the module docs). Failure: Relaxed, the
            // value is not used.
            match pred.compare_exchange(curr, succ, Release, Relaxed, guard) {
                Ok(_) => {
                    // SAFETY: `curr` was reachable and is unreachable now: only the CAS
                    // from `curr` to `succ` on its one predecessor unlinks it, and a
                    // marked node's `next` never changes, so it cannot be linked again
                    // (insertion only links a node in front of the current head). This
                    // CAS succeeded, so this is the only `defer_destroy` of `curr`, and
                    // threads that may still hold it are pinned.
                    unsafe { guard.defer_destroy(curr) };
                    true
                }
                Err(_) => false,
            }
        }
    }

    impl<T: Send + Sync> std::fmt::Debug for AtomicList<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AtomicList").finish_non_exhaustive()
        }
    }

    impl<T: Send + Sync> Drop for AtomicList<T> {
        fn drop(&mut self) {
            // SAFETY: `&mut self`: no other thread uses the list (entries hold it, so
            // none is left), so no node is reachable by anyone else and the unprotected
            // guard is enough. Every node still linked is destroyed exactly once here;
            // unlinked ones belong to the collector, which runs them when it is dropped
            // (after this).
            unsafe {
                let guard = epoch::unprotected();
                let mut curr = self.head.load(Relaxed, guard);
                while !curr.is_null() {
                    let node = curr.with_tag(0).into_owned();
                    curr = node.next.load(Relaxed, guard);
                    drop(node);
                }
            }
        }
    }

    /// A value's membership of an [`AtomicList`]: reads the value without pinning, and
    /// removes it from the list when dropped. `!Send`: it stays with the thread that
    /// inserted the value (the registry keeps it in a thread-local).
    pub struct ListEntry<T: Send + Sync> {
        list: Arc<AtomicList<T>>,
        node: *const Node<T>,
        _not_send: PhantomData<*const ()>,
    }

    impl<T: Send + Sync> ListEntry<T> {
        /// The value this entry inserted.
        pub fn get(&self) -> &T {
            // SAFETY: only this entry's `drop` marks the node, a node is unlinked only
            // once marked, and destroyed only after it is unlinked (or with the list,
            // which this entry keeps alive): while the entry lives the node is allocated.
            unsafe { &(*self.node).value }
        }
    }

    impl<T: Send + Sync> std::fmt::Debug for ListEntry<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ListEntry").finish_non_exhaustive()
        }
    }

    impl<T: Send + Sync> Drop for ListEntry<T> {
        fn drop(&mut self) {
            let guard = self.list.pin();
            // SAFETY: as in `get`: the node is not marked yet, so it is allocated.
            let node = unsafe { &*self.node };
            // Release: pairs with the Acquire load of the unlinker (module docs).
            let before = node.next.fetch_or(MARK, Release, &guard);
            debug_assert_eq!(before.tag(), 0, "a node is marked only by its entry");
            self.list.unlink_marked(&guard);
        }
    }
}
