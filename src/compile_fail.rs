//! Compile-fail doctests pinning the crate's `Send`/`Sync` contracts, each with a
//! passing twin. Compiled only by `cargo test --doc`.
//!
//! `Context` is `Send + Sync`, so it can be handed to or shared with other threads:
//!
//! ```
//! fn assert_send_sync<T: Send + Sync>() {}
//! assert_send_sync::<contextvars::Context>();
//! assert_send_sync::<contextvars::Snapshot>();
//! assert_send_sync::<contextvars::ContextVar<String>>();
//! ```
//!
//! A `Token` is `!Send`: it restores the state of the thread that made it.
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<contextvars::Token<'static, u32>>();
//! ```
//!
//! Nor is it `Sync`:
//!
//! ```compile_fail
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<contextvars::Token<'static, u32>>();
//! ```
//!
//! A `ScopedSet` guard is `!Send`, so a future holding one across an `.await` is `!Send`
//! and cannot be spawned on a multi-threaded runtime:
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<contextvars::ScopedSet<'static, u32>>();
//! ```
//!
//! ```compile_fail
//! use contextvars::ContextVar;
//! static V: ContextVar<u32> = contextvars::context_var!(u32, "v");
//! fn assert_send<T: Send>(_: T) {}
//! async fn yield_now() {}
//! assert_send(async {
//!     let _guard = V.scoped_set(1);
//!     yield_now().await; // the guard lives across the await
//! });
//! ```
//!
//! The passing twin: a future that drops the guard before awaiting is `Send`.
//!
//! ```
//! use contextvars::ContextVar;
//! static V: ContextVar<u32> = contextvars::context_var!(u32, "v");
//! fn assert_send<T: Send>(_: T) {}
//! async fn yield_now() {}
//! assert_send(async {
//!     V.scope(1, || ());
//!     yield_now().await;
//! });
//! ```
//!
//! A token of one variable type cannot reset another type's variable (Python checks this
//! at run time):
//!
//! ```compile_fail
//! use contextvars::ContextVar;
//! static A: ContextVar<u32> = contextvars::context_var!(u32, "a");
//! static B: ContextVar<String> = contextvars::context_var!(String, "b");
//! let token = A.set(1);
//! let _ = B.reset(token);
//! ```
//!
//! A token cannot be used twice (Python: `RuntimeError: ... has already been used once`):
//!
//! ```compile_fail
//! use contextvars::ContextVar;
//! static A: ContextVar<u32> = contextvars::context_var!(u32, "a");
//! let token = A.set(1);
//! let _ = A.reset(token);
//! let _ = A.reset(token);
//! ```
//!
//! Inline values: the proof that a type is `Copy + Eq` is invariant in the type, so a
//! proof for a type that is `Copy` at one higher-ranked `fn` type cannot be turned into
//! one for a supertype that is not (which would store a non-`Copy` value inline):
//!
//! ```compile_fail,E0308
//! use contextvars::ContextVar;
//! use contextvars::__private::{CopyEq, ValueTraits};
//! use std::marker::PhantomData;
//!
//! pub struct H<T>(PhantomData<T>, u64);
//! impl Clone for H<for<'a> fn(&'a ())> {
//!     fn clone(&self) -> Self {
//!         *self
//!     }
//! }
//! impl Copy for H<for<'a> fn(&'a ())> {}
//! impl<T> PartialEq for H<T> {
//!     fn eq(&self, other: &Self) -> bool {
//!         self.1 == other.1
//!     }
//! }
//! impl<T> Eq for H<T> {}
//! type NotCopy = H<fn(&'static ())>; // a supertype of the `Copy` one, not `Copy` itself
//! const PROOF: Option<CopyEq<H<for<'a> fn(&'a ())>>> = Some(CopyEq::new());
//! static V: ContextVar<NotCopy> =
//!     ContextVar::__new("v", || ValueTraits::NONE).__in_static(&V, PROOF);
//! assert_eq!(V.name(), "v");
//! ```
//!
//! The same declaration with the proof's own type compiles:
//!
//! ```
//! use contextvars::ContextVar;
//! use contextvars::__private::{CopyEq, ValueTraits};
//! use std::marker::PhantomData;
//!
//! pub struct H<T>(PhantomData<T>, u64);
//! impl Clone for H<for<'a> fn(&'a ())> {
//!     fn clone(&self) -> Self {
//!         *self
//!     }
//! }
//! impl Copy for H<for<'a> fn(&'a ())> {}
//! impl<T> PartialEq for H<T> {
//!     fn eq(&self, other: &Self) -> bool {
//!         self.1 == other.1
//!     }
//! }
//! impl<T> Eq for H<T> {}
//! type IsCopy = H<for<'a> fn(&'a ())>;
//! const PROOF: Option<CopyEq<IsCopy>> = Some(CopyEq::new());
//! static V: ContextVar<IsCopy> =
//!     ContextVar::__new("v", || ValueTraits::NONE).__in_static(&V, PROOF);
//! assert_eq!(V.name(), "v");
//! ```

#![deny(unsafe_code)]
