//! # Model checking your code with context variables inside (loom)
//!
//! [loom](https://docs.rs/loom) runs a concurrent test many times, once for every
//! interleaving of its threads' synchronisation operations that matters (within a
//! bound), and checks each run against the C++11 memory model: a too-weak ordering, a
//! data race on a cell or a missed wake-up shows up as a failing run with the accesses
//! that caused it. It does this by replacing threads, atomics, mutexes, `Arc` and
//! thread-locals with its own, so every crate in the model has to use loom's types when
//! the model is built.
//!
//! `contextvars` does that for you, with the ecosystem's convention
//! (`concurrent-queue`, `event-listener`, `async-lock`): build with
//! `RUSTFLAGS="--cfg loom"`, and nothing else. There is no feature to enable.
//!
//! * Every thread-local of the crate (the thread's current context) is loom's, so each
//!   modelled thread has a context of its own. With std's, loom's threads, which run on
//!   one OS thread, would all share one context.
//! * The crate's atomics, `Arc`s and cells are loom's, so loom also explores the crate's
//!   own synchronisation: entering a [`Context`](crate::Context) (its entered flag),
//!   publishing to an observed context (the same lock-free cell as in a normal build).
//!   Only the observation registry's per-thread slots (`observe`, arc-swap, which loom
//!   cannot see) are a loom mutex in loom builds.
//! * [`thread::spawn`](crate::thread::spawn), [`thread::spawn_in`](crate::thread::spawn_in)
//!   and [`thread::try_spawn_in`](crate::thread::try_spawn_in) start `loom::thread`s
//!   (a model cannot use std threads) in a copy of the current context, or in a context
//!   object; [`copy_context`](crate::copy_context) +
//!   [`Context::run`](crate::Context::run) hands a captured context to a thread started
//!   any other way. So a model can say "this request's tenant is seen by the worker it
//!   hands off to".
//!
//! ## A worked example
//!
//! `loom-example/` in the repository is a small component to copy: a per-tenant quota
//! cache shared by worker threads. Each request runs in a context where a `TENANT`
//! variable is bound; the first request of a tenant computes the quota and publishes it
//! through a state byte and a plain cell, and later requests read it. Its model hands two
//! requests of one tenant to two worker threads and checks that both see the tenant's
//! quota:
//!
//! ```ignore
//! use contextvars::thread;
//! use loom::sync::Arc;
//! use loom_example::{QuotaCache, TENANT};
//!
//! #[test]
//! fn each_request_sees_its_tenants_quota() {
//!     loom::model(|| {
//!         let cache = Arc::new(QuotaCache::new(&["alpha"], lookup));
//!         let workers: Vec<_> = (0..2)
//!             .map(|_| {
//!                 let cache = cache.clone();
//!                 // The worker runs in a copy of this context: it sees the tenant.
//!                 TENANT.scope("alpha", || thread::spawn(move || cache.quota()))
//!             })
//!             .collect();
//!         for worker in workers {
//!             assert_eq!(worker.join().unwrap(), Some(10));
//!         }
//!     });
//! }
//! ```
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-example --release
//! ```
//!
//! passes: 2,498 interleavings for that model, 230 for a second one that hands contexts
//! over both ways (`thread::spawn`, and `Context::run` of a captured context) and checks
//! that a worker's `set` stays in its copy; about half a second in all. With
//! `LOOM_MAX_PREEMPTIONS=2` (the crate's CI) they are 87 and 28 interleavings, a few
//! milliseconds. (`LOOM_LOG=info` prints the counts.)
//!
//! **The seeded bug.** The same cache built with
//! `QuotaCache::with_publish_ordering(.., Ordering::Relaxed)` publishes the quota
//! without a release: a request that reads READY is not synchronised with the one that
//! wrote the quota. On x86 a test on real threads would pass; loom finds the interleaving
//! (the ignored model `seeded_relaxed_publish_is_caught`, run with `-- --ignored`):
//!
//! ```text
//! Causality violation: Concurrent read and write accesses.
//!     created: .../loom-0.7.3/src/cell/unsafe_cell.rs:207:9
//!        read: thread #2 @ loom-example/src/lib.rs:169:27
//!       write: thread #1 @ loom-example/src/lib.rs:155:20
//! ```
//!
//! (`LOOM_LOCATION=1` adds the two locations.) The crate's CI runs both: the models must
//! pass with `--cfg loom` alone, and the seeded one must fail with that report.
//!
//! ## Limits
//!
//! * **Preemption bound.** Without `LOOM_MAX_PREEMPTIONS`, loom explores every
//!   interleaving; the state space grows quickly with threads and operations. 2 or 3 is
//!   the usual bound (the crate's own models run with 2), and keep models to two or three
//!   threads with a few operations each.
//! * **What a context operation costs the model.** Reading a variable touches only the
//!   modelled thread's own state. Setting, resetting, `scope`, `copy_context` and
//!   hand-offs clone and drop snapshot nodes, which are loom `Arc`s: each reference-count
//!   change is a point where loom may switch threads, so they add interleavings (and
//!   loom checks that every node is freed). Entering a [`Context`](crate::Context)
//!   object (`run`, a thread spawned in it) is one atomic compare-and-swap and one
//!   store; a set in an *observed* context (one a [`Context`](crate::Context) handle
//!   elsewhere can read) is a swap and a read-modify-write in the context's cell. All are
//!   explored like the model's own atomics; keep the context operations in a model to
//!   the few the property needs.
//! * **Stack.** loom runs a model's main thread on a 32 KB stack, and a failing check
//!   panics on it: the crate keeps its own frames small under `--cfg loom` (the
//!   thread's context state is built in one out-of-line function, not in every caller),
//!   so the worked example's seeded bug reports its causality violation. A model whose
//!   own code needs more stack can run its body in a `loom::thread::Builder` thread with
//!   a larger `stack_size`.
//! * **What is not modelled.** Variable and context ids come from a std atomic counter
//!   (statics need a `const` constructor, which loom's atomics lack): unique, but not
//!   explored. A variable's lazy default
//!   (`context_var!`'s `lazy` form) is computed
//!   once per process in a std `OnceLock`, not once per execution: keep loom objects out
//!   of it, and make it a plain value. The observation registry
//!   (`observe`) runs on crossbeam-epoch's normal build unless `--cfg crossbeam_loom` is
//!   set too (the crate's own models set both, with crossbeam-epoch's `loom` feature): its
//!   list's own orderings are then not explored, and every modelled thread shares one OS
//!   thread's name and id in `observe::threads()`.
//! * **Integrations.** The core (variables, contexts, threads, futures, `observe`) is
//!   what a model exercises. The `rayon` helpers start real rayon jobs, which cannot run
//!   inside a model; `contextvars-tracing` and `tracing-subscriber` keep std
//!   thread-locals, shared by every modelled thread. `contextvars-tower` and
//!   `contextvars-opentelemetry` are built on the public API, and are not model material.
//! * **Not available under `--cfg loom`**: the `tokio` feature's module, and the check
//!   that refuses a set in a tokio task's own context. tokio itself does not build with
//!   `--cfg loom`, so the crate does not depend on it there; a model has no tokio tasks.
//!   rayon's workers are still recognised, and
//!   [`thread::declare_pool_thread`](crate::thread::declare_pool_thread) works. The
//!   extension traits [`BuilderExt`](crate::thread::BuilderExt) and
//!   [`ScopeExt`](crate::thread::ScopeExt) stay on `std::thread`, which a model cannot
//!   use: start loom threads with [`thread::spawn`](crate::thread::spawn).
//! * **Only inside a model.** Under `--cfg loom` the crate's thread-locals and
//!   synchronisation are loom's, so every use of the crate must happen inside
//!   `loom::model`; keep other tests of the same binary behind `#[cfg(not(loom))]` (the
//!   example's unit test does).
//! * **A failing model may end in an abort.** When loom reports a failure, it unwinds out
//!   of the model and drops the modelled threads' thread-locals outside it; releasing a
//!   thread's context there touches loom objects, which panics again ("panic in a
//!   destructor during cleanup", then an abort). loom's report is printed first: read
//!   the first panic. (Skipping the release while unwinding would avoid the abort, but
//!   loom runs every modelled thread on one OS thread, so it would also skip it for a
//!   thread that ends while *another* unwinds inside a passing model, and loom would
//!   report a false leak.)
