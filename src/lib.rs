//! Python's [`contextvars`](https://docs.python.org/3/library/contextvars.html)
//! (PEP 567) for Rust: typed context variables on a lock-free persistent snapshot store.
//!
//! # Why
//!
//! Services carry request metadata (a request id, the tenant, a deadline, the caller's
//! identity) through code that should not have to pass it by hand. Thread-locals get this
//! wrong as soon as work moves between threads or tasks, and the usual alternatives either
//! copy a whole map on every change, or cannot take a snapshot of "everything the current
//! request has set" at all. Python solved this with *context variables*: each thread runs
//! in a [`Context`], a cheap immutable snapshot of bindings that can be copied in O(1) and
//! handed to other work, and a [`ContextVar`] reads its binding in the current context.
//!
//! ```
//! use contextvars::{context_var, copy_context};
//!
//! context_var! {
//!     /// The request being served.
//!     pub static REQUEST_ID: u64;
//!     /// Who it is served for.
//!     pub static TENANT: &'static str = "public";
//! }
//!
//! fn log(message: &str) -> String {
//!     format!("[{} {}] {message}", REQUEST_ID.get_or(0), TENANT.get())
//! }
//!
//! let token = REQUEST_ID.set(42);
//! assert_eq!(log("hello"), "[42 public] hello");
//!
//! // Hand the current context to other work: O(1), and isolated from later changes.
//! let ctx = copy_context();
//! let handle = std::thread::spawn(move || ctx.run(|| log("from a thread")));
//! assert_eq!(handle.join().unwrap(), "[42 public] from a thread");
//!
//! REQUEST_ID.reset(token).unwrap();
//! assert_eq!(log("bye"), "[0 public] bye");
//! ```
//!
//! # Contents
//!
//! * [`ContextVar<T>`]: a typed key with a name and an optional default, declared as a
//!   `static` (with [`context_var!`] or the `const` constructors). [`get`](ContextVar::get)
//!   / [`with`](ContextVar::with) read the current binding; [`set`](ContextVar::set)
//!   returns a [`Token`] for [`reset`](ContextVar::reset);
//!   [`scoped_set`](ContextVar::scoped_set) and [`scope`](ContextVar::scope) restore on
//!   scope exit (Python 3.14's `with var.set(v):`).
//! * [`Context`]: a context object. [`copy_context`] copies the current one,
//!   [`Context::run`] runs code in one, [`Context::current`] is a handle to the running one,
//!   and [`Context::snapshot`] gives its bindings as an immutable mapping ([`Snapshot`]:
//!   `get`, `contains`, `len`, `iter`); both have `==` and `Debug`.
//! * [`Snapshot`]: an immutable view of a context's bindings, and [`Entry`], one binding.
//! * Errors: [`LookupError`], [`SetError`], [`ResetError`], [`EnterError`],
//!   [`AccessError`].
//! * [`observe`]: every thread's current context, readable from any thread without
//!   locks (for watchdogs, profilers and debug endpoints); off unless switched on.
//! * [`plumbing`]: the building blocks the integrations are made of (a task's captured
//!   context, a carrier for state such as a tracing span), for executors and pools the
//!   crate does not know.
//! * [`docs`]: the Python mapping, the cost model and the internals, in depth.
//! * Model checking: build with `RUSTFLAGS="--cfg loom"` and a [loom](https://docs.rs/loom)
//!   model of your own code sees each modelled thread's context and the crate's own
//!   synchronisation ([`docs::model_checking`], with a worked example).
//!
//! # Cost model
//!
//! | operation | cost |
//! |---|---|
//! | [`ContextVar::get`] / [`with`](ContextVar::with) | a thread-local load and a bounded trie lookup: no lock, no atomic read-modify-write, no allocation (wait-free) |
//! | [`ContextVar::set`] / [`reset`](ContextVar::reset) | in place when the frame holds its snapshot alone and the key has room (no node allocated; the value's own allocation, unless it is stored inline); otherwise path copying: O(log₃₂ n) new nodes, one node for up to 4 variables, two (a node and its slot array) up to 32 |
//! | [`copy_context`] | one reference-count increment, whatever the size |
//! | [`Context::copy`] | the same for a context never run; for one that has run (or a [`Context::current`] handle), a load from its published cell too (lock-free) |
//! | [`Context::run`] | a compare-and-swap on the enter flag, two thread-local swaps (no reference count unless the code inside writes) |
//!
//! Figures measured against `thread_local!` and tokio's `task_local!` are in the
//! repository's `BENCHMARKS.md`; [`docs::performance`] explains the cost model.
//!
//! # Propagation
//!
//! A new thread or task starts with an empty context, as in Python. The propagation
//! modules make the context follow the work, each unit of work in its own O(1) copy (so
//! its `set`s stay inside it), as asyncio does for tasks:
//!
//! * [`thread`]: `std::thread` spawns (also `Builder` and `scope`) in a copy, or in a
//!   given [`Context`] object (Python's `Thread(context=ctx)`);
//! * [`future`]: a runtime-agnostic future wrapper, [`future::WithContext`];
//! * `tokio` (feature `tokio`): `spawn`, `spawn_blocking`, `spawn_local`, `JoinSet`, and
//!   (`--cfg tokio_unstable`) `isolate_tasks`, every task of a runtime in its own context;
//! * `rayon` (feature `rayon`): `join`, `scope`, `spawn`, `ThreadPool::install` and a
//!   parallel-iterator adapter; every job and every call into the adapter enters its
//!   context and leaves it before returning, so a worker's own state is never disturbed.
//!
//! Integrations with crates that are not 1.0 yet are crates of their own, built on
//! [`plumbing`], so that their releases do not force one of this crate:
//!
//! * `contextvars-futures`: the same wrapper for `futures_core::Stream`s;
//! * `contextvars-tower`: a tower `Layer` that runs each HTTP request in its own context
//!   (axum, hyper-util, tonic);
//! * `contextvars-tracing`: the current span follows the work into every hand-off, and
//!   context variables are fields of every event that tracing-subscriber's `fmt`
//!   formats, text or JSON, with nothing at the log call;
//! * `contextvars-opentelemetry`: declared variables cross process boundaries as W3C
//!   baggage, with the trace context, through OpenTelemetry's propagators (server and
//!   client tower layers).
//!
//! By hand: `let ctx = copy_context(); spawn(move || ctx.run(f))`. [`Context`] is
//! `Send + Sync`; a [`Token`] and a [`ScopedSet`] guard are `!Send`, because they restore
//! *this* thread's (or task's) state. [`docs::isolation`] has the full propagation table.
//!
//! # Differences from Python
//!
//! Where Rust can rule a misuse out at compile time, it does: a token is moved into
//! `reset`, so it cannot be used twice; a token of another variable's type does not
//! type-check; values are typed. See [`docs::python`] for the full mapping.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88 (the `rust-version` in `Cargo.toml`; CI's `msrv` stage builds every crate of
//! the workspace with it).

#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod carry;
mod context;
pub mod docs;
mod engine;
mod error;
pub mod future;
mod map;
pub mod observe;
pub mod plumbing;
mod pool;
#[cfg(feature = "rayon")]
#[cfg_attr(docsrs, doc(cfg(feature = "rayon")))]
pub mod rayon;
mod snapshot;
mod sync;
pub mod thread;
mod token;
// tokio does not build under `--cfg loom`, where it is not a dependency.
#[cfg(all(feature = "tokio", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
mod value;
mod var;

#[cfg(doctest)]
mod compile_fail;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use context::{Context, copy_context};
pub use error::{AccessError, EnterError, LookupError, ResetError, SetError};
pub use snapshot::{IntoIter, Iter, Snapshot, ValueRef};
pub use token::{ScopedSet, Token};
pub use value::Entry;
pub use var::{ContextVar, VarId};

/// Declares [`ContextVar`]s: the one way to make a variable. Its values print with their
/// `Debug` and compare with their `PartialEq` (when the type has them; otherwise they
/// print as their type's name and compare by identity) in a [`Context`]'s or
/// [`Snapshot`]'s `Debug` and `==`, as Python's do.
///
/// **Statics**, named after their identifier. A default is either a constant expression
/// (`= expr`) or computed once, on first need (`= lazy expr`):
///
/// ```
/// use contextvars::context_var;
/// use std::time::Instant;
///
/// context_var! {
///     /// No default: `get` panics and `try_get` errs until it is set.
///     pub static REQUEST_ID: u64;
///     /// A constant default.
///     pub(crate) static TENANT: &'static str = "public";
///     /// A default computed once, on first use.
///     static STARTED: Instant = lazy Instant::now();
/// }
///
/// assert_eq!(REQUEST_ID.name(), "REQUEST_ID");
/// assert_eq!(TENANT.get(), "public");
/// assert!(STARTED.get() <= Instant::now());
/// ```
///
/// A static of a `Copy + Eq` type that fits a word (here `REQUEST_ID`) stores its values
/// inline: its sets allocate nothing for the value ([Inline values](ContextVar#inline-values)).
///
/// **A name of your choosing** for a static (what `Debug` prints, and the field name
/// `contextvars-tracing` logs): `as "name"` after the type, a string literal (a name in
/// a `const` needs the expression form below).
///
/// ```
/// contextvars::context_var! {
///     pub static REQUEST_ID: u64 as "request_id";
///     static TENANT: &'static str as "tenant" = "public";
/// }
///
/// assert_eq!(REQUEST_ID.name(), "request_id");
/// assert_eq!(TENANT.name(), "tenant");
/// assert_eq!(TENANT.get(), "public");
/// ```
///
/// **A value** (`context_var!(Type, name)`, then optionally `, default expr` or
/// `, lazy expr`, as Python's `ContextVar("request_id")`), for an array of variables, a
/// name that is not a literal, or a variable made at run time (leaked, as variables are
/// never freed in Python either). It is a constant expression:
///
/// ```
/// use contextvars::{ContextVar, context_var};
///
/// static REQUEST_ID: ContextVar<u64> = context_var!(u64, "request_id");
/// static RETRIES: ContextVar<u32> = context_var!(u32, "retries", default 3);
/// static SHARDS: [ContextVar<u8>; 4] = [const { context_var!(u8, "shard") }; 4];
/// let plugin: &'static ContextVar<String> =
///     Box::leak(Box::new(context_var!(String, "plugin", lazy String::from("none"))));
///
/// assert_eq!(REQUEST_ID.name(), "request_id");
/// assert_eq!(RETRIES.get(), 3);
/// assert_ne!(SHARDS[0].id(), SHARDS[1].id()); // each is a variable of its own
/// assert_eq!(plugin.get(), "none");
/// ```
///
/// A value's variable boxes every value it is set to (one allocation per set), whatever
/// its type: unlike a static's, its address is not fixed, so a snapshot cannot point back
/// at it.
#[macro_export]
macro_rules! context_var {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident : $t:ty $(as $alias:literal)? ; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::ContextVar<$t> =
            $crate::context_var!($t, $crate::__var_name!($name $(, $alias)?))
                .__in_static(&$name, $crate::__copy_eq!($t));
        $crate::context_var!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : $t:ty $(as $alias:literal)? = lazy $init:expr ; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::ContextVar<$t> =
            $crate::context_var!($t, $crate::__var_name!($name $(, $alias)?), lazy $init)
                .__in_static(&$name, $crate::__copy_eq!($t));
        $crate::context_var!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : $t:ty $(as $alias:literal)? = $default:expr ; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::ContextVar<$t> =
            $crate::context_var!($t, $crate::__var_name!($name $(, $alias)?), default $default)
                .__in_static(&$name, $crate::__copy_eq!($t));
        $crate::context_var!($($rest)*);
    };
    ($t:ty, $name:expr $(,)?) => {
        $crate::ContextVar::<$t>::__new($name, $crate::__value_traits!($t))
    };
    ($t:ty, $name:expr, lazy $init:expr $(,)?) => {
        $crate::ContextVar::<$t>::__with_lazy_default($name, || $init, $crate::__value_traits!($t))
    };
    ($t:ty, $name:expr, default $default:expr $(,)?) => {
        $crate::ContextVar::<$t>::__with_default($name, $default, $crate::__value_traits!($t))
    };
}

/// Finds `Debug` and `PartialEq` for a concrete type by autoref specialisation, inside a
/// function item so that it can be named in a `static` initialiser.
#[doc(hidden)]
#[macro_export]
macro_rules! __value_traits {
    ($t:ty) => {{
        fn value_traits() -> $crate::__private::ValueTraits<$t> {
            #[allow(unused_imports)]
            use $crate::__private::{NoDebug as _, NoEq as _, ViaDebug as _, ViaEq as _};
            let probe = $crate::__private::Probe::<$t>::NEW;
            $crate::__private::ValueTraits {
                debug: (&&probe).debug_fn(),
                eq: (&&probe).eq_fn(),
            }
        }
        value_traits
    }};
}

/// A static's variable name: the one after `as`, else the static's identifier.
#[doc(hidden)]
#[macro_export]
macro_rules! __var_name {
    ($name:ident) => {
        ::core::stringify!($name)
    };
    ($name:ident, $alias:literal) => {
        $alias
    };
}

/// The proof that a concrete type is `Copy + Eq`, if it is (an inherent associated
/// constant, found before the trait's fallback only where its bounds hold).
#[doc(hidden)]
#[macro_export]
macro_rules! __copy_eq {
    ($t:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::NotCopyEq as _;
        $crate::__private::Probe::<$t>::COPY_EQ
    }};
}

#[doc(hidden)]
pub mod __private {
    //! Support for the macros. Not public API.
    #![allow(missing_docs, missing_debug_implementations)]

    use std::fmt;
    use std::marker::PhantomData;

    pub use crate::value::{CopyEq, ValueTraits};

    pub struct Probe<T>(PhantomData<T>);

    impl<T> Probe<T> {
        pub const NEW: Self = Probe(PhantomData);
    }

    impl<T: Copy + Eq> Probe<T> {
        pub const COPY_EQ: Option<CopyEq<T>> = Some(CopyEq::new());
    }
    pub trait NotCopyEq<T> {
        const COPY_EQ: Option<CopyEq<T>> = None;
    }
    impl<T> NotCopyEq<T> for Probe<T> {}

    type DebugFn<T> = fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result;

    pub trait ViaDebug<T> {
        fn debug_fn(&self) -> Option<DebugFn<T>>;
    }
    impl<T: fmt::Debug> ViaDebug<T> for &Probe<T> {
        fn debug_fn(&self) -> Option<DebugFn<T>> {
            Some(<T as fmt::Debug>::fmt)
        }
    }
    pub trait NoDebug<T> {
        fn debug_fn(&self) -> Option<DebugFn<T>>;
    }
    impl<T> NoDebug<T> for Probe<T> {
        fn debug_fn(&self) -> Option<DebugFn<T>> {
            None
        }
    }

    pub trait ViaEq<T> {
        fn eq_fn(&self) -> Option<fn(&T, &T) -> bool>;
    }
    impl<T: PartialEq> ViaEq<T> for &Probe<T> {
        fn eq_fn(&self) -> Option<fn(&T, &T) -> bool> {
            Some(<T as PartialEq>::eq)
        }
    }
    pub trait NoEq<T> {
        fn eq_fn(&self) -> Option<fn(&T, &T) -> bool>;
    }
    impl<T> NoEq<T> for Probe<T> {
        fn eq_fn(&self) -> Option<fn(&T, &T) -> bool> {
            None
        }
    }
}
