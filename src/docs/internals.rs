//! # Internals: how `contextvars` is built
//!
//! This is the design essay: what the structures are, which invariants the `unsafe` code
//! relies on, and how each atomic ordering pairs up. Read it before changing
//! `src/current.rs`, `src/context.rs` or `src/sync.rs`.
//!
//! ## Snapshots
//!
//! A snapshot is a persistent map from variable id (`u64`) to an `Entry` (an
//! `Arc<dyn ErasedBinding>` holding the variable's id, name, formatting/equality hooks and
//! the value). It is our own code (`src/map/`): a *small form* for up to 16 bindings (one
//! node, indexed by a 64-bit bitmap over the low 6 bits of the id, so a lookup is a bit
//! test, a popcount and one compare), and a 32-way HAMT beyond that. Variable ids are
//! handed out densely from 1, so the id is its own perfect hash: no hashing, no collision
//! nodes, and at most 13 levels for any `u64`. Every update path-copies the nodes from the
//! root to the changed slot; older versions are never modified, so a snapshot can be read
//! from any thread without synchronisation once it has been published. `src/map/tests.rs`
//! checks the map against `std::collections::HashMap` with proptest.
//!
//! ## The per-thread frame
//!
//! Each thread has a *frame*: the snapshot it is running in now, the context object that
//! snapshot belongs to (if any), the frame's identity (for token checks) and a change
//! marker. `Context::run` saves the thread's frame on the Rust stack inside a guard,
//! installs a new one, and restores the old one when the guard drops, also during
//! unwinding: the stack of entered contexts is the call stack.
//!
//! The frame lives in two thread-locals (`src/current.rs`). `HOT` has no destructor and a
//! `const` initialiser, so accessing it is a plain TLS load; it holds a raw pointer to the
//! root node of the current snapshot, which is all `ContextVar::get` needs. `STATE` owns
//! the frame. The two are always updated together before any user code can run.
//!
//! Work that usually only reads (a rayon job, a future's poll, `Context::run`) runs in a
//! *light frame*: only `HOT.root` (and `HOT.light`, a pointer to a record on the stack of
//! the call that runs the work) change on entry and exit. The first operation that needs
//! the frame itself (a set, a reset, a handle, a nested frame) *materializes* it: the
//! frame moves into `STATE`, and the frame it displaces waits in the light frame's record
//! until the work returns. A rayon job's light frame borrows its parent's snapshot and
//! takes a counted copy only when it materializes.
//!
//! ### Invariant: the root pointer is owned
//!
//! Whenever user code can run, the node behind `HOT.root` is kept alive by its owner:
//! `STATE.vars` if no light frame is current, otherwise the current light frame's
//! snapshot, which is owned by the call running it (a task's frame, or the parent's
//! snapshot that a rayon job borrows, which outlives the job) until that call returns,
//! and that call restores `HOT.root` before it returns, also when unwinding. `with_binding` dereferences it (the first
//! `unsafe` block) and hands the caller a `&T` into the node. While that reference is in
//! use, user code may run (the closure of `ContextVar::with`, or `T::clone` in `get`), and
//! that code may `set`, `reset` or `run`, which replaces `STATE.vars`. So a reader
//! increments `HOT.borrows` for the duration, and every snapshot that stops being current
//! goes through `retire`: dropped at once if no borrow is active, parked in
//! `STATE.graveyard` otherwise, and dropped by the last borrow to end. The places a
//! snapshot can stop being current are exactly: a set (the old snapshot moves into the
//! token, whose drop retires it), a reset, a publication (the context object's previous
//! snapshot), and a frame exit.
//!
//! ### Invariant: id → type
//!
//! The second `unsafe` block (`Entry::downcast_unchecked`) reads an entry as a `T`
//! without a `TypeId` check. It is only called for the entry found under the id of a
//! `ContextVar<T>`, and only that variable ever binds its id, because ids are unique and
//! never reused. Debug builds assert the type anyway.
//!
//! ### No borrow across user code
//!
//! Every field of the frame is a `Cell`, accessed with `take`/`replace`/`set`; there is no
//! `RefCell`, so there is no borrow to be held while a destructor or a closure runs. A
//! value's `Drop` may therefore read and set context variables freely (the bug class of
//! opentelemetry-rust #3738 and #2871).
//!
//! ### Thread teardown
//!
//! `STATE`'s destructor nulls `HOT.root` before its fields are dropped, so values dropped
//! at thread exit that read variables see defaults. Writing through `try_set`,
//! `Context::try_current` or `try_run` at that point returns an [`AccessError`]; the
//! panicking forms document that they panic only then.
//!
//! [`AccessError`]: crate::AccessError
//!
//! ## Context objects and publication
//!
//! A [`Context`](crate::Context) is `{ initial snapshot, lazily made Shared }`. `Shared`
//! holds the identity, the published snapshot in a `SnapshotCell` (arc-swap's
//! `ArcSwapOption`; a mutex stand-in under loom), and the `entered` flag. Deferring
//! `Shared` keeps `copy_context()` and `Context::copy` to a single reference-count
//! increment; the first `run` (or a handle to a running frame) makes it.
//!
//! While a frame runs a context object, each `set`/`reset` publishes the new snapshot into
//! the object's cell so other threads (and the caller, after `run`) see it. Publication is
//! skipped when nobody can observe the object: frames with no context object (a thread's
//! base context until [`Context::current`](crate::Context::current) is called, and the
//! private snapshots later used by rayon jobs and futures), and objects whose only
//! reference is the frame itself (`Arc::strong_count == 1`: all handles were dropped, and
//! a `&Context` cannot exist without a handle). Such a frame is marked dirty; a handle made
//! later publishes first.
//!
//! ### The `entered` flag
//!
//! `try_run` takes the flag with `compare_exchange(false, true, Acquire, Relaxed)` and the
//! frame guard releases it with `store(false, Release)`. The pair orders everything one
//! runner did (including its last publication) before everything the next runner does, on
//! whichever thread. A frame made into a context object by `Context::current` starts
//! entered and is released when the frame ends (for a thread's base context, at thread
//! exit). `loom-tests/tests/enter_race.rs` model-checks that exactly one of two racing
//! threads enters.
//!
//! ## Tokens
//!
//! A token records the frame identity, the snapshot from before its set (which gives
//! `old_value` and the fast reset path) and two change markers. The frame's change marker
//! is a per-thread sequence number updated on every set and reset. If the frame's marker
//! still equals the token's, nothing changed since the set, and reset simply reinstalls
//! the old snapshot (no allocation); otherwise it path-copies the old value back (or
//! removes the binding if there was none). Tokens are `!Send`, so the per-thread sequence
//! is enough to make markers unique.
//!
//! ## The `sync` shim
//!
//! `src/sync.rs` is the only module that names atomics, cells, `thread_local!`,
//! arc-swap or loom. Under `--cfg contextvars_loom` it swaps in loom's types and a
//! mutex-based stand-in for arc-swap, which loom cannot see. Variable ids use a std
//! atomic in every build, because `static` variables need a `const` constructor.
//!
//! ## Where `unsafe` lives
//!
//! * `src/current.rs`: dereferencing `HOT.root` (invariant: the root pointer is owned).
//! * `src/value.rs`: `Entry::downcast_unchecked` (invariant: id → type).
//! * `src/sync.rs`: the loom stand-in's `OnceArc::get` (loom builds only).
//!
//! Every other module says `#![deny(unsafe_code)]`, and `.ci/run`'s tidy stage checks it.
