//! The synchronisation shim: the only module (with its two children, [`entered`] and
//! [`list`], the primitives built on it) that names an atomic, a cell primitive,
//! `thread_local!`, `arc_swap`, `crossbeam_epoch` or `loom`.
//!
//! Every other module says `crate::sync::X`. Under `--cfg loom` (the ecosystem's
//! convention: `RUSTFLAGS="--cfg loom"`, no feature) the names switch to loom's
//! model-checked types, so loom models (the crate's own in `loom-tests/`, and a user's,
//! see `docs::model_checking`) see every access that matters:
//!
//! | name | normal build | loom build |
//! |---|---|---|
//! | `Arc` | `std::sync::Arc` | `loom::sync::Arc` (leak-checked) |
//! | `unique_mut` | strong count 1 + `Acquire` fence (no `Weak`s exist); `Arc::get_mut` under TSAN | `loom::sync::Arc::get_mut` |
//! | `AtomicBool`, `Ordering` | `std::sync::atomic` | `loom::sync::atomic` |
//! | `SnapshotCell` | `arc_swap::ArcSwapOption` | `loom::sync::Mutex<Option<Arc<T>>>` (arc-swap is not loom-aware) |
//! | `PublishCell`, `Replaced` | an `AtomicPtr` from `Arc::into_raw` and a counter word (two counts of loads in progress and a phase bit): one writer at a time, O(1) stores ([`publish`]) | the same code on loom's atomics, `Arc` and `UnsafeCell` |
//! | `OnceArc`, `ArcRef` | an `AtomicPtr` from `Arc::into_raw`, set once by compare-and-swap (once_cell's `race::OnceBox`, for an `Arc`) | `loom::sync::Mutex<Option<Arc<T>>>` |
//! | `StaticCounter` | `std::sync::atomic::AtomicU64` | the same: it must be `const`-constructible for `static` vars, and loom atomics are not |
//! | `thread_locals!` | `std::thread_local!` with `const` init | `loom::thread_local!` (which rejects `const` init) |
//! | `globals!` | a `static` (`const` init) or a `std::sync::LazyLock` (`lazy` init) | `loom::lazy_static!` (one value per execution) |
//! | `OnceCell` | `std::cell::OnceCell` | the same (thread-local, not a synchronisation primitive) |
//! | `AtomicList`, `ListEntry` | a lock-free list on `crossbeam_epoch` | the same code, on crossbeam-epoch's loom build with `--cfg crossbeam_loom` (the crate's own models), on its normal build otherwise |
//! | `spawn_thread`, `JoinHandle` | `std::thread` | `loom::thread` (a model's threads must be loom's) |
//!
//! `SnapshotCell` was chosen over an `AtomicPtr` with crossbeam-epoch reclamation by
//! measurement (`benches/cells.rs`). It now serves only the observation registry, whose
//! slots several threads write; a context object's snapshot, written by one thread at a
//! time, is in a `PublishCell`, whose store does not grow with the number of threads
//! (`docs::internals`).

#![allow(unreachable_pub)]

#[cfg(not(loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
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

    /// A lazily initialised, then immutable, `Arc<T>`: one word, the pointer of
    /// `Arc::into_raw` (null until initialised), where `OnceLock<Arc<T>>` takes two and
    /// its drop checks a state word (once_cell's `race::OnceBox`, for an `Arc`). Racing
    /// initialisers each make a value; the first compare-and-swap wins and the others
    /// drop theirs, as with `OnceBox`.
    pub struct OnceArc<T> {
        ptr: AtomicPtr<T>,
        /// Owns an `Arc<T>`: `Send`, `Sync` and drop checking follow `Arc<T>`'s (an
        /// `AtomicPtr` alone would be `Send + Sync` for any `T`).
        _owns: std::marker::PhantomData<Arc<T>>,
    }

    /// A borrowed view of the `Arc` in a [`OnceArc`], as if it were `&Arc<T>`: an `Arc`
    /// rebuilt from the stored pointer, never dropped, so the count is untouched.
    pub struct ArcRef<'a, T> {
        arc: std::mem::ManuallyDrop<Arc<T>>,
        _borrow: std::marker::PhantomData<&'a OnceArc<T>>,
    }

    impl<T> std::ops::Deref for ArcRef<'_, T> {
        type Target = Arc<T>;
        #[inline]
        fn deref(&self) -> &Arc<T> {
            &self.arc
        }
    }

    impl<T> OnceArc<T> {
        pub fn new() -> Self {
            Self {
                ptr: AtomicPtr::new(std::ptr::null_mut()),
                _owns: std::marker::PhantomData,
            }
        }

        pub fn with_value(value: Arc<T>) -> Self {
            Self {
                ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
                _owns: std::marker::PhantomData,
            }
        }

        /// The value, if initialised. `Acquire`: pairs with the `Release` of the
        /// compare-and-swap that published it in `get_or_init`, so the `Arc`'s contents
        /// are visible.
        #[inline]
        pub fn get(&self) -> Option<ArcRef<'_, T>> {
            let ptr = self.ptr.load(Ordering::Acquire);
            // SAFETY: a non-null pointer came from `Arc::into_raw` and is owned by `self`
            // until `self` drops, which the returned borrow of `self` prevents.
            (!ptr.is_null()).then(|| unsafe { self.view(ptr) })
        }

        #[inline]
        pub fn get_or_init(&self, init: impl FnOnce() -> Arc<T>) -> ArcRef<'_, T> {
            match self.get() {
                Some(arc) => arc,
                None => self.init(init),
            }
        }

        #[cold]
        fn init(&self, init: impl FnOnce() -> Arc<T>) -> ArcRef<'_, T> {
            let new = Arc::into_raw(init()).cast_mut();
            // `AcqRel` on success: `Release` publishes the new `Arc` to `get`'s `Acquire`
            // load. `Acquire` on failure: pairs with the winner's `Release`, so its `Arc`
            // is visible before we use it.
            let ptr = match self.ptr.compare_exchange(
                std::ptr::null_mut(),
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => new,
                Err(winner) => {
                    // SAFETY: `new` came from `Arc::into_raw` above and was never
                    // published: this is its only owner.
                    drop(unsafe { Arc::from_raw(new) });
                    winner
                }
            };
            // SAFETY: `ptr` is the published pointer, owned by `self` from now on.
            unsafe { self.view(ptr) }
        }

        /// Takes the value out, leaving the cell uninitialised: for an owner's `Drop` that
        /// releases it in a cold path of its own.
        #[inline]
        pub fn take(&mut self) -> Option<Arc<T>> {
            let ptr = *self.ptr.get_mut();
            if ptr.is_null() {
                return None;
            }
            *self.ptr.get_mut() = std::ptr::null_mut();
            // SAFETY: a non-null pointer came from `Arc::into_raw`, and `self` owned that
            // count; it no longer holds the pointer, so the count is handed over once.
            Some(unsafe { Arc::from_raw(ptr) })
        }

        /// # Safety
        ///
        /// `ptr` must be the non-null pointer `self` holds.
        #[inline]
        unsafe fn view(&self, ptr: *mut T) -> ArcRef<'_, T> {
            ArcRef {
                // SAFETY: `ptr` came from `Arc::into_raw` and `self` owns that count; the
                // `ManuallyDrop` never gives it up.
                arc: std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(ptr) }),
                _borrow: std::marker::PhantomData,
            }
        }
    }

    impl<T> Drop for OnceArc<T> {
        #[inline]
        fn drop(&mut self) {
            // `Relaxed`: `&mut self` is exclusive, so whatever published the value happened
            // before this drop already.
            let ptr = self.ptr.load(Ordering::Relaxed);
            if !ptr.is_null() {
                // SAFETY: the pointer came from `Arc::into_raw`, and `self` owns that count.
                drop(unsafe { Arc::from_raw(ptr) });
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
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

    /// The loom stand-in: a mutex around the `Option`. (The std build's `AtomicPtr` form,
    /// run under loom, kept `loom-tests`' `stolen_run_inside_run` from ever reading a
    /// context object that another thread had made and published; until that is
    /// understood, loom models keep the stand-in they were written against.)
    pub struct OnceArc<T>(loom::sync::Mutex<Option<Arc<T>>>);

    impl<T> OnceArc<T> {
        pub fn new() -> Self {
            Self(loom::sync::Mutex::new(None))
        }
        pub fn with_value(value: Arc<T>) -> Self {
            Self(loom::sync::Mutex::new(Some(value)))
        }
        pub fn get(&self) -> Option<ArcRef<'_, T>> {
            let guard = self.0.lock().unwrap();
            let ptr: Option<*const Arc<T>> = guard.as_ref().map(|a| a as *const Arc<T>);
            drop(guard);
            // SAFETY: once set, the `Option` is changed again only by `take`, which needs
            // `&mut self` and so cannot overlap the returned borrow of `self`: the `Arc`
            // stays at this address for as long as the borrow lives; the mutex made its
            // initialisation visible to this thread.
            ptr.map(|p| ArcRef(unsafe { &*p }))
        }
        pub fn take(&mut self) -> Option<Arc<T>> {
            // `get_mut`: exclusive, so no lock (and no scheduling point in a model).
            self.0.get_mut().unwrap().take()
        }
        pub fn get_or_init(&self, init: impl FnOnce() -> Arc<T>) -> ArcRef<'_, T> {
            {
                let mut guard = self.0.lock().unwrap();
                if guard.is_none() {
                    *guard = Some(init());
                }
            }
            self.get().expect("initialised above")
        }
    }

    /// The loom build's view of a [`OnceArc`]'s `Arc`: a reference.
    pub struct ArcRef<'a, T>(&'a Arc<T>);

    impl<T> std::ops::Deref for ArcRef<'_, T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            self.0
        }
    }
}

pub use imp::*;

/// One more `Arc` for the value at `ptr`: counts a reference and makes an `Arc` of it
/// (`Arc::increment_strong_count`, then `Arc::from_raw`; std and loom alike).
///
/// # Safety
///
/// `ptr` must come from `Arc::as_ptr` or `Arc::into_raw` of an `Arc<T>` that stays alive
/// until this call returns. (std documents `increment_strong_count` for pointers from
/// `into_raw`; `as_ptr` gives the same pointer, with the provenance of the whole
/// allocation: `into_raw` is `as_ptr` and a `forget`.)
#[inline]
pub unsafe fn arc_clone_raw<T>(ptr: *const T) -> Arc<T> {
    // SAFETY: `ptr` points to the value of a live `Arc<T>` (caller's guarantee), so the
    // strong count is at least 1 during the increment, and the new count is the one the
    // returned `Arc` owns.
    unsafe {
        Arc::increment_strong_count(ptr);
        Arc::from_raw(ptr)
    }
}

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

mod entered;
pub use entered::EnteredCell;

mod publish;
pub use publish::{PublishCell, Replaced};

/// A thread-local `Cell`. Re-exported so that nothing outside this module names a cell
/// primitive; `Cell` is not a synchronisation primitive, but keeping the import here
/// makes "what touches shared or thread state" greppable.
pub use std::cell::Cell;

/// A thread-local write-once cell (the per-thread publication slot of `observe`). Like
/// `Cell`, re-exported only so that cell primitives are named here.
pub use std::cell::OnceCell;

pub use list::{AtomicList, ListEntry};

mod list;
