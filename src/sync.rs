//! The synchronisation shim: the only module that names an atomic, a cell primitive,
//! `thread_local!`, `arc_swap` or `loom`.
//!
//! Every other module says `crate::sync::X`. Under `--cfg contextvars_loom` (with the
//! semver-exempt `loom` feature) the names switch to loom's model-checked types, so the
//! models in `loom-tests/` see every access that matters:
//!
//! | name | normal build | loom build |
//! |---|---|---|
//! | `Arc` | `std::sync::Arc` | `loom::sync::Arc` (leak-checked) |
//! | `AtomicBool`, `Ordering` | `std::sync::atomic` | `loom::sync::atomic` |
//! | `SnapshotCell` | `arc_swap::ArcSwapOption` | `loom::sync::Mutex<Option<Arc<T>>>` (arc-swap is not loom-aware) |
//! | `OnceArc` | `std::sync::OnceLock<Arc<T>>` | `loom::sync::Mutex<Option<Arc<T>>>` |
//! | `StaticCounter` | `std::sync::atomic::AtomicU64` | the same: it must be `const`-constructible for `static` vars, and loom atomics are not |
//! | `thread_locals!` | `std::thread_local!` with `const` init | `loom::thread_local!` (which rejects `const` init) |
//!
//! `SnapshotCell` was chosen over an `AtomicPtr` with crossbeam-epoch reclamation by
//! measurement: see `benches/cells.rs` and `docs::internals`.

#![allow(unreachable_pub)]

#[cfg(not(contextvars_loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, Ordering};

    /// Declares thread-locals with a `const` initialiser (no lazy-init check on access).
    macro_rules! thread_locals {
        ($($vis:vis static $name:ident: $t:ty = $init:expr;)*) => {
            std::thread_local! { $($vis static $name: $t = const { $init };)* }
        };
    }
    pub(crate) use thread_locals;

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

#[cfg(contextvars_loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, Ordering};

    macro_rules! thread_locals {
        ($($vis:vis static $name:ident: $t:ty = $init:expr;)*) => {
            loom::thread_local! { $($vis static $name: $t = $init;)* }
        };
    }
    pub(crate) use thread_locals;

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
    pub fn load(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Adds `n`, returning the previous value. `Relaxed`: uniqueness comes from the RMW's
    /// atomicity, not from ordering.
    pub fn fetch_add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed)
    }
    /// Installs `new` if the cell still holds `current`; returns the value now in the cell.
    /// `Relaxed` for the same reason as `load`.
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

/// A thread-local `Cell`. Re-exported so that nothing outside this module names a cell
/// primitive; `Cell` is not a synchronisation primitive, but keeping the import here
/// makes "what touches shared or thread state" greppable.
pub use std::cell::Cell;
