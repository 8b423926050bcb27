//! # Isolation: where a `set` lives, configuration by configuration
//!
//! A [`set`](crate::ContextVar::set) binds a value in the *current context*, where it
//! stays until it is reset or the context ends. Whether that is safe depends on what else
//! runs in the same context. Python's rule, which this crate applies everywhere, is that
//! a unit of work that runs concurrently starts with a **copy** of the context current
//! when it was created, as an asyncio task does: its sets never reach the code that
//! created it, nor its siblings. The copy costs one reference-count increment.
//!
//! Rust's executors and pools know nothing of this. A plain `tokio::spawn`ed task, the
//! connection task a server spawns, and a plain rayon job all run in their worker
//! thread's *own* context, which every task or job that worker runs next would also see.
//! So the crate gives work a context of its own wherever one of its hand-offs is used,
//! and where none is, it **refuses** the set
//! ([`SetError::is_pool_thread`](crate::SetError::is_pool_thread); `set` panics with a
//! message that names the fix) instead of letting one request's values leak into
//! another's. This happens in every build, whatever the features.
//!
//! This page lists the hand-offs and what each gives the work it starts, explains where a
//! set lands in async code, goes through a server's configurations one by one (isolated,
//! refused, or not covered), and gives the one remedy for the cases the crate cannot
//! cover.
//!
//! ## Context follows the work
//!
//! Each row is a way to start work somewhere else. The third column is the context the
//! work starts in; the last is where a `set` made by that work ends up.
//!
//! | where the work runs | how | the work starts with | a `set` in the work |
//! |---|---|---|---|
//! | `std::thread::spawn` | plain | an empty context (as in Python) | stays in the thread |
//! | a new thread | [`thread::spawn`](crate::thread::spawn), `Builder::spawn_in_copied_context`, `Scope::spawn_in_copied_context` (traits [`BuilderExt`](crate::thread::BuilderExt), [`ScopeExt`](crate::thread::ScopeExt)) | a copy of the spawner's context | stays in the thread |
//! | a new thread | [`thread::spawn_in`](crate::thread::spawn_in)`(&ctx, f)` (Python's `Thread(context=ctx)`) | the [`Context`](crate::Context) object `ctx` | is made to `ctx`, and visible through it afterwards; `ctx` counts as entered until the thread ends |
//! | a future or stream, on any executor | `fut.in_copied_context()` ([`ContextFutureExt`](crate::future::ContextFutureExt); streams: `contextvars_futures::ContextStreamExt`) | a copy, taken when the wrapper is made | stays in the task, across every `.await` and worker thread |
//! | a future, in a given context | `fut.in_context(&ctx)` (Python's `create_task(..., context=ctx)`) | `ctx` | is made to `ctx`, which stays entered until the wrapper is dropped |
//! | a future | [`VAR.scope_future(v, fut)`](crate::ContextVar::scope_future) | a copy of the current context with `VAR = v` | stays in the future |
//! | a tokio task (feature `tokio`) | `contextvars::tokio::{spawn, spawn_blocking, spawn_local}`, `JoinSetExt::spawn_in_copied_context` (and `_blocking`, `_local`) | a copy of the spawner's context | stays in the task |
//! | a tokio task | plain `tokio::spawn`, `spawn_blocking` | the worker thread's own context (empty) | is **refused**: it would stay in the worker for every task it polls next |
//! | a tokio task | plain `tokio::spawn`, on a runtime built with `contextvars::tokio::isolate_tasks(&mut builder)` (feature `tokio`, `--cfg tokio_unstable`) | a copy of the spawner's context | stays in the task: every task of the runtime behaves like an asyncio task |
//! | an HTTP request (axum, hyper-util, tonic) | `.layer(ContextLayer::new())`, from the crate `contextvars-tower` | a copy of the context current when the service is called, plus what its initializer sets (for example a request id) | stays in the request: its middleware, handler and response body |
//! | a rayon job (feature `rayon`) | `contextvars::rayon::{join, join_context, scope, in_place_scope, spawn, spawn_fifo}`, `ThreadPoolExt` (`install_in_copied_context`, `spawn_in_copied_context`, `spawn_fifo_in_copied_context`) | a copy of the caller's context | stays in the job |
//! | a rayon parallel iterator | `.in_copied_context()` (`ParallelIteratorExt`), right after the source and before the adapters whose closures read variables (again after a `zip`- or `enumerate`-like adapter) | a copy captured once, entered inside every call rayon makes into the adapter | stays in the item: the next item starts from the capture again |
//! | a rayon job | plain `rayon::spawn`, `join`, `scope`, `install`, `par_iter` | the worker thread's own context (empty) | is **refused**: it would stay in the worker for every job it runs next |
//! | a thread of another pool | [`thread::declare_pool_thread`](crate::thread::declare_pool_thread)`("name")` at the thread's start | the thread's own context | is **refused**; run the work in a context captured when it was submitted ([`copy_context`](crate::copy_context), [`Context::run`](crate::Context::run)) |
//! | this thread | [`ctx.run(f)`](crate::Context::run) | `ctx` | is made to `ctx` (Python's `ctx.run`) |
//!
//! Executors and pools the crate does not know (async-std, smol, a hand-written pool) are
//! not recognised as pools: declare their threads with
//! [`thread::declare_pool_thread`](crate::thread::declare_pool_thread), and give their
//! tasks contexts of their own with the future wrapper or with
//! [`plumbing`](crate::plumbing), which the integration crates are built on.
//! `examples/async_executor.rs` in the repository does both for async-executor.
//!
//! [`VAR.scope(v, || ...)`](crate::ContextVar::scope) is synchronous: a closure that
//! returns a future gets a future that is polled after the scope has ended. Use
//! [`VAR.scope_future(v, fut)`](crate::ContextVar::scope_future) for futures.
//!
//! ```
//! # #[cfg(all(feature = "rayon", feature = "tokio"))] {
//! use contextvars::rayon::ParallelIteratorExt;
//! use rayon::prelude::*;
//!
//! contextvars::context_var! { static REQUEST_ID: u64; }
//!
//! let _guard = REQUEST_ID.scoped_set(7);
//! let ids: Vec<u64> = (0..4).into_par_iter().in_copied_context().map(|_| REQUEST_ID.get()).collect();
//! assert_eq!(ids, [7, 7, 7, 7]);
//!
//! // `block_on` polls its future in the caller's context; the helper copies it into the task.
//! let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
//! let seen = rt.block_on(async {
//!     contextvars::tokio::spawn(async { REQUEST_ID.get() + 1 }).await.unwrap()
//! });
//! assert_eq!(seen, 8);
//! # }
//! ```
//!
//! ## Where a set lives in async code, and the one line for a server
//!
//! A task spawned with the helpers above, a future wrapped with `in_copied_context`, and
//! a request under the tower layer each have a context of their own, so their sets stay
//! in it across every `.await`. A *plain* `tokio::spawn`ed task, and every connection
//! task a server spawns, have none: they run in the worker thread's own context. That is
//! where the refusals above come from, and the message of the panic says what to add
//! where it happened, down to the order of the layers.
//!
//! For an axum service the fix is one line, the `ContextLayer` of the crate
//! `contextvars-tower`, added **last** so that it wraps every route and every middleware:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use contextvars::ContextVar;
//! use contextvars_tower::{ContextLayer, RequestId};
//!
//! static REQUEST_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "request_id");
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { REQUEST_ID.get().to_string() }))
//!     .layer(ContextLayer::new().init(RequestId::new(&REQUEST_ID))); // x-request-id, or a fresh id
//! # drop(app);
//! ```
//!
//! ## A server, configuration by configuration
//!
//! What the most natural code does in an axum server, over keep-alive connections where
//! half the requests carry no tenant. There are two columns:
//!
//! * **plain**: any build, whatever the core's features;
//! * **hooks**: a runtime built with `contextvars::tokio::isolate_tasks` (feature
//!   `tokio`, `--cfg tokio_unstable`), where every task has a context of its own.
//!
//! Each cell reads *isolated* (no request sees another's value), *refused* (the set is
//! refused, so nothing leaks and the code is told how to fix it), or *not covered* (a
//! value can reach another request, and the remedy below applies). Each row is a cell of
//! `tests/isolation_matrix.rs` in the repository, which sends 10,000 requests over 256
//! concurrent connections per cell and counts every response and log line that carries
//! another request's value: there are none in any cell marked isolated or refused.
//!
//! | the code | plain | hooks |
//! |---|---|---|
//! | a middleware sets, no `ContextLayer` anywhere | **refused**: "add `contextvars_tower::ContextLayer` to the service" | **not covered**: the requests of a keep-alive connection share its task's context (in the test, nearly every request saw another's value); the crate says so on stderr, once, after the first task that sets |
//! | a middleware sets, `ContextLayer` added last (it wraps the middleware) | isolated | isolated |
//! | a middleware sets, added *after* `ContextLayer` (outside it) | **refused**: "this code runs outside it ... add the context layer last" | isolated: when each request ends (its body dropped, or its future dropped without one) the connection task gets back the bindings it started with |
//! | the same middleware answers a request itself, without calling the layer (a rejection) | **refused** | **not covered**: no code of the crate runs for that request, so its value stays in the connection task and the next request on the connection sees it everywhere, its handler included (every such request in the test); the request after that is clean again. The crate says on stderr, once, that a middleware outside the layer sets, and how to order the layer |
//! | a middleware outside the layer sets, in a connection task the server spawned with `contextvars::tokio::spawn`, `.in_copied_context()`, `.in_context(&ctx)` or `VAR.scope_future(v, ..)` (a hand-written accept loop) | isolated: the task has a context of its own, where the set is accepted, and the layer gives it back the bindings it started with when each request ends (the same restore as under the hooks, with the same uncovered rejection case) | isolated |
//! | a handler's plain `tokio::spawn` sets | **refused** in the task | isolated: the task has a copy of the request's context |
//! | a handler's plain rayon job (`rayon::spawn`, `par_iter`) sets | **refused** | **refused** |
//! | a handler's plain `spawn_blocking` sets | **refused** | **refused** |
//! | a handler's `std::thread::spawn` sets | isolated (a new thread's own context) | isolated |
//! | a response body's destructor sets, behind the layer | isolated: the body is dropped in its request's context | isolated |
//! | a response body's destructor sets, no layer | **refused** | **not covered** (as without a layer) |
//! | tasks still pending when a multi-thread runtime shuts down: their destructors set and read | **refused**, and they read nothing | **refused**, and they read nothing |
//! | tasks still pending when a current-thread runtime is dropped inside `Context::run` | **refused**: tokio drops them on the dropping thread, in that context, which was entered outside them ("polled (or dropped) inside a context that was entered outside the task"); they read the context's own value, never another task's | **refused** (the same) |
//! | plain tasks of a current-thread runtime driven by `block_on` inside `Context::run` or a thread's context | **refused** (the same message, for every task of the test); the `block_on` future itself is not a task and may set there | isolated: each task has its own context |
//! | a plain rayon job that a worker steals while it waits inside a `contextvars::rayon` call (`join`, `scope`, `install`, a parallel iterator) | **refused**: the worker waits in an empty, read-only context, so the stolen job reads nothing and its set is refused (every forced steal of the test); the waiting job keeps its own values | **refused** (the same) |
//! | a plain rayon call (`rayon::join`, a parallel iterator without `.in_copied_context()`) made *inside* a `contextvars::rayon` job, and a plain job the worker steals while it waits there | **not covered**: rayon has no per-job hook, so the stolen job runs in the waiting job's context | **not covered** (the same) |
//! | a middleware outside the layer sets in a connection task that has a context of its own (wrapped, or under the hooks), then calls the layer (or awaits its future, or drops the body) inside a `scope_future`, `Context::run` or wrapper of its own | isolated: the layer records the calling frame and the nearest one outside it that remembers its start; a request that ends inside a frame the task entered restores the task as soon as the task's frame is current again | isolated |
//! | the `spawn_local` tasks of a `LocalSet` whose `run_until` future is itself wrapped (`rt.block_on(local.run_until(..).in_copied_context())`) | **not covered**: they are polled inside that future's own frame, which is never checked (checking it would cost every poll a read of tokio's task id), so a local task's set lands there and the next local task sees it; unwrapped, the local tasks run in the thread's own context, where their sets are refused | **not covered** (the same: the hooks do not see local tasks) |
//!
//! ## The remedy for what is not covered
//!
//! The uncovered rows share one remedy: give the work a context of its own where it
//! starts. Add `ContextLayer` last, so that it is the outermost layer, and hand rayon
//! work over with `contextvars::rayon` everywhere, not in some places only.
//!
//! A connection task that has a context of its own (spawned with
//! `contextvars::tokio::spawn`, wrapped with `.in_copied_context()`, or any task under
//! the hooks) gets back the bindings it *started* with after each request. So a value
//! meant for the whole connection belongs in the context the task is spawned from, not
//! in a set inside the task.
//!
//! ## Outside a server
//!
//! The same rules hold: a plain rayon job's set is refused in every build, and so is a
//! set in the own context of a thread declared with
//! [`thread::declare_pool_thread`](crate::thread::declare_pool_thread). A
//! [`LookupError`](crate::LookupError) raised where a hand-off was forgotten (a plain
//! task, job or thread reads a variable that has no value there) names the helpers that
//! carry the context there.
//!
//! ## Isolated in both directions
//!
//! The work cannot disturb the thread that runs it either. Every job, item, poll and
//! [`run`](crate::Context::run) enters its context inside the call that runs it and
//! leaves it before that call returns: also when the worker, blocked in a `join`, runs
//! stolen work made by these helpers, and also when the work panics. No value the crate
//! hands out (a parallel-iterator folder, a future, a token) switches a thread's context
//! when it is dropped, so no drop order, `mem::forget` or hand-written rayon driver can
//! leave a thread in the wrong context ([`internals`](super::internals) explains the
//! design rule behind this).
//!
//! A [`Token`](crate::Token) and a [`ScopedSet`](crate::ScopedSet) guard are `!Send`, so
//! holding one across an `.await` in a task that may move between threads is a compile
//! error. Inside a wrapped task on a single-threaded executor, the reset happens in the
//! task's own context.
//!
//! ## How this is tested
//!
//! In the repository:
//!
//! * `tests/isolation_matrix.rs`: every row of the table above, plain and under the task
//!   hooks, with 10,000 keep-alive requests over 256 concurrent connections per cell,
//!   half of them without a tenant; a task's context across 960,000 wake-ups from another
//!   thread under the hooks; runtime shutdown with tasks pending.
//! * `tests/it/server.rs`, `tests/it/isolation.rs` and `tests/it/hooks.rs`: an axum
//!   server on 127.0.0.1 with the natural middleware, 10,000 requests over 256 concurrent
//!   connections with injected handler panics, dropped connections and timeouts, behind
//!   the tower layer and under the task hooks. No response or log line carries another
//!   request's values; with neither, the set is refused.
