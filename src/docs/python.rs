//! # Python's `contextvars` in this crate
//!
//! This crate follows CPython's `contextvars` (PEP 567): the same objects, the same
//! semantics, the same error cases where Rust can reach them at run time. This page maps
//! each piece of the Python API to its Rust form, and lists every test of CPython's
//! `Lib/test/test_context.py` with the Rust test that ports it (or why none does).
//! `cargo run --example tour` walks through the lines of the overview this project
//! started from, one at a time (see [the overview's lines](#the-overviews-lines)).
//!
//! ## The API, side by side
//!
//! | Python | Rust |
//! |---|---|
//! | `v = ContextVar('v')` | [`context_var!`](crate::context_var)` { static V: T; }` (named `"V"`), or `static V: ContextVar<T> = context_var!(T, "v");` for a name of your choosing; values print and compare in a [`Context`](crate::Context)'s `Debug` and `==` with their type's `Debug` and `PartialEq` |
//! | `ContextVar('v', default=x)` | `context_var! { static V: T = x; }` or `context_var!(T, "v", default x)`; a default computed once on first need: `= lazy expr` or `, lazy expr` |
//! | `v.name` | [`ContextVar::name`](crate::ContextVar::name) (read-only: there is no setter) |
//! | `hash(v)`, identity | [`ContextVar::id`](crate::ContextVar::id), a [`VarId`](crate::VarId) unique in the process; two variables with the same name are different keys |
//! | `repr(v)` | `Debug`: `<ContextVar name="v" default=123>` (no address) |
//! | `v.get()` | [`ContextVar::get`](crate::ContextVar::get) (clones; panics with the `LookupError` message), [`try_get`](crate::ContextVar::try_get) (returns [`LookupError`](crate::LookupError)), [`with`](crate::ContextVar::with) / [`try_with`](crate::ContextVar::try_with) (borrow, no clone) |
//! | `v.get(default)` | [`ContextVar::get_or`](crate::ContextVar::get_or), [`with_or`](crate::ContextVar::with_or): the binding, else the call-site default; the variable's own default is **not** consulted, as in Python |
//! | `v in copy_context()` | [`ContextVar::is_set`](crate::ContextVar::is_set): defaults do not count |
//! | `tok = v.set(x)` | `let tok = V.set(x);` returns a [`Token`](crate::Token) (`#[must_use]`; dropping it keeps the value, as discarding Python's token does: `drop(V.set(x))` sets for the rest of the context); [`try_set`](crate::ContextVar::try_set) returns a [`SetError`](crate::SetError) during thread teardown, or in the own context of a pool thread (a tokio task or rayon job with no context of its own) |
//! | `v.reset(tok)` | [`ContextVar::reset`](crate::ContextVar::reset)`(tok)`, returning a [`ResetError`](crate::ResetError) that hands the token back |
//! | `tok.var` | [`Token::var`](crate::Token::var) |
//! | `tok.old_value` | [`Token::old_value`](crate::Token::old_value): `Some(&old)` |
//! | `Token.MISSING` | `None` from [`Token::old_value`](crate::Token::old_value) (the default does not count as a binding) |
//! | `with v.set(x):` (3.14) | [`ContextVar::scoped_set`](crate::ContextVar::scoped_set) (a [`ScopedSet`](crate::ScopedSet) guard; [`ScopedSet::token`](crate::ScopedSet::token) is `as tok`) or [`ContextVar::scope`](crate::ContextVar::scope)`(x, f)`; both restore on panic |
//! | `Context()` | [`Context::new`](crate::Context::new) / `Context::default()` |
//! | `copy_context()` | [`copy_context`](crate::copy_context), O(1) |
//! | `ctx.run(f, *args, **kw)` | [`Context::run`](crate::Context::run)`(\|\| f(args))`; [`try_run`](crate::Context::try_run) returns [`EnterError`](crate::EnterError) instead of panicking |
//! | `ctx.copy()` | [`Context::copy`](crate::Context::copy) (`Context` is deliberately not `Clone`) |
//! | `ctx[v]`, `ctx.get(v)`, `ctx.get(v, d)` | [`Context::snapshot`](crate::Context::snapshot) (O(1): the bindings as of now, a [`Snapshot`](crate::Snapshot) that later sets do not change), then [`Snapshot::get`](crate::Snapshot::get) → `Option<&T>` (`.cloned()`, `.unwrap_or(&d)`). Variable defaults are ignored, as in Python |
//! | `v in ctx`, `len(ctx)` | [`Snapshot::contains`](crate::Snapshot::contains), [`Snapshot::len`](crate::Snapshot::len), [`is_empty`](crate::Snapshot::is_empty), on `ctx.snapshot()` |
//! | `iter(ctx)`, `ctx.keys()` | [`Snapshot::iter`](crate::Snapshot::iter) (an [`Entry`](crate::Entry) per binding; `into_iter` for owned entries), [`Snapshot::keys`](crate::Snapshot::keys) ([`VarId`](crate::VarId)s); like Python's, they walk what the context held when the snapshot was taken |
//! | `ctx.values()`, `ctx.items()` | [`Snapshot::values`](crate::Snapshot::values) ([`ValueRef`](crate::ValueRef): `Debug`, `downcast_ref`), [`Snapshot::iter`](crate::Snapshot::iter) + [`Entry::get`](crate::Entry::get) |
//! | `ctx1 == ctx2` | `PartialEq` on [`Context`](crate::Context) and [`Snapshot`](crate::Snapshot): same variables, and values that are the same value object or, where the type is `PartialEq`, `==` (values of other types compare by identity only; values stored inline, by `==` only) |
//! | `repr(ctx)` | `Debug`: `Context {REQUEST: 42, opaque: <u64>}` |
//! | `Thread(target=f, context=ctx)` (3.14) | [`thread::spawn_in`](crate::thread::spawn_in)`(&ctx, f)` (the sets are made to `ctx`), or by hand `spawn(move \|\| ctx.run(f))` with a moved context, or a borrowed/`Arc` one to share the object (`std::thread::scope`); [`thread::spawn`](crate::thread::spawn) runs `f` in a copy of the current context. A plain thread starts **empty**, like CPython with `thread_inherit_context=0` |
//! | `asyncio.create_task(coro)` (a copy of the current context) | `fut.in_copied_context()` ([`ContextFutureExt`](crate::future::ContextFutureExt)) on any executor; with tokio, `contextvars::tokio::spawn` (feature `tokio`). A plain `tokio::spawn`ed task has no context of its own: see [`isolation`](super::isolation) |
//! | `asyncio.create_task(coro, context=ctx)` | `fut.in_context(&ctx)` ([`ContextFutureExt`](crate::future::ContextFutureExt)) |
//! | the overview's `get_current_context()` (Python has no such function, only `copy_context()`) | [`Context::current`](crate::Context::current): a handle to the running context (it counts as entered while it runs, so set through the variable; readable from any thread) |
//! | the overview's factory functions (a context with one more binding) | [`Context::with_value`](crate::Context::with_value): a new context, without entering anything |
//!
//! What differs on purpose:
//!
//! * **Misuse that Rust rejects at compile time.** A token is moved into `reset`, so it
//!   cannot be used twice ("has already been used once"); a token of another value type
//!   does not type-check; `Token`/`ScopedSet` are `!Send` (they restore this thread's
//!   state). These are pinned by compile-fail doctests in `src/compile_fail.rs`. Keys are
//!   typed `&ContextVar<T>`, so "a ContextVar key was expected" cannot happen; argument
//!   counts and types are checked by the compiler.
//! * **No subclassing, pickling, weak references or hashing of contexts**: not Rust
//!   concepts; `Context` is `Send + Sync` but not `Clone`.
//! * **Iteration order** is unspecified (as in CPython, where it follows hashes); it does
//!   not depend on insertion order.
//! * **Thread teardown** (no Python twin): while a thread's context storage is being
//!   destroyed, reads see no bindings (defaults apply) and writes return an error through
//!   the `try_*` methods ([`SetError`](crate::SetError) from `try_set`,
//!   [`AccessError`](crate::AccessError) from the others).
//! * **Tasks without a context** (no Python twin; asyncio gives every task one): a plain
//!   `tokio::spawn`ed task runs in the worker thread's own context, and a plain rayon job
//!   in its worker's. A `set` there is refused in every build
//!   ([`SetError::is_pool_thread`](crate::SetError::is_pool_thread)) instead of leaking
//!   into the next task or job, where Python's thread pools leak. The layer of
//!   `contextvars-tower`, `contextvars::tokio::isolate_tasks`, the wrappers and
//!   `contextvars::rayon` give the work contexts of their own; [`isolation`](super::isolation)
//!   goes through every configuration.
//!
//! ## The overview's lines
//!
//! This project started from an overview of `contextvars` whose examples are not all
//! valid Python. `cargo run --example tour` runs each of its steps the correct way and
//! prints what happens; this is what each of those lines becomes.
//!
//! | the overview | Rust | why |
//! |---|---|---|
//! | `context = Context(); context[user_id] = 12345` | `context.run(\|\| drop(USER_ID.set(12345)))`, or `Context::new().with_value(&USER_ID, 12345)` | invalid in Python: a `Context` is a read-only mapping |
//! | `with contextvars.ContextVar('user_id').set(67890):` | `let _guard = USER_ID.scoped_set(67890);` | the overview's line makes a *new* variable; the scoped set is on `user_id` itself |
//! | `user_id.reset()` | `USER_ID.reset(token)` | `reset` needs the token that `set` returned; use `scoped_set` for the token-free style |
//! | `return contextvars.Context().set(user_id, 12345)` | `Context::new().with_value(&USER_ID, 12345)` | no such method in Python; `with_value` returns a new context |
//! | `contextvars.get_current_context()[user_id] = 67890` | `let current = Context::current(); let token = USER_ID.set(67890);` | Python has no such function; the handle counts as entered, so the set goes through the variable |
//! | "each thread can have its own context" | [`copy_context`](crate::copy_context) handed to the thread and [`Context::run`](crate::Context::run) there, or [`thread::spawn`](crate::thread::spawn) | a new thread starts with an empty context (Python's default too) |
//!
//! ## CPython's `ContextTest`, test by test
//!
//! The Rust ports live in the integration test binary `tests/it/` (module
//! `tests/it/cpython.rs` unless noted) and carry the CPython test's name. "Not ported"
//! rows have no run-time meaning in Rust.
//!
//! | # | CPython test | Rust |
//! |---|---|---|
//! | 1 | `test_context_var_new_1` | `test_context_var_new_1`: name, same-name variables have different ids. Missing/non-`str` names and the read-only `.name` are compile-time. |
//! | 2 | `test_context_var_repr_1` | `test_context_var_repr_1`: the name and default in `Debug`, the token's `Debug` contains the variable's. The self-referencing default (`...`) cannot be expressed (infinite type); a *used* token cannot be observed (consumed by `reset`). |
//! | 3 | `test_token_repr_1` | `test_token_repr_1`: the exact format, `<Token var=<ContextVar name="a">>` (no addresses). |
//! | 4 | `test_context_subclassing_1` | Not ported: Rust has no subclassing. |
//! | 5 | `test_context_new_1` | `test_context_new_1`: `Context::new()` and `Context::default()` (`Context(**{})`) are empty and equal; arguments are compile-time. |
//! | 6 | `test_context_new_unhashable_str_subclass` | Not ported: names are `&'static str`; a variable's identity never runs user code. |
//! | 7 | `test_context_typerrors_1` | Not ported: mapping keys are typed `&ContextVar<T>`. |
//! | 8 | `test_context_get_context_1` | `test_context_get_context_1`: the type is static; checks the copy equals, but is not, the running context (the running one is entered, the copy can be run). |
//! | 9 | `test_context_run_1` | Not ported: `run` without a callable does not compile. |
//! | 10 | `test_context_run_2` | `test_context_run_2`: arguments (captured) reach the callable, the result comes back, borrowed arguments are not mutated; closures and fn items. |
//! | 11 | `test_context_run_3` | `test_context_run_3`: a panic propagates through `run` (and the context is left). |
//! | 12 | `test_context_run_4` | `test_context_run_4` |
//! | 13 | `test_context_run_5` | `test_context_run_5` (also checks that the set stays in the context object) |
//! | 14 | `test_context_run_6` | `test_context_run_6` |
//! | 15 | `test_context_run_7` | `test_context_run_7`: `try_run` gives `is_already_entered()`, `run` panics; both messages contain "is already entered". |
//! | 16 | `test_context_getset_1` | `test_context_getset_1` and `test_context_getset_1_reset_missing_removes_binding`. Reusing a token is compile-time. |
//! | 17 | `test_context_getset_2` | `test_context_getset_2`: `is_different_var()`, message "was created by a different ContextVar", the token handed back still works. |
//! | 18 | `test_context_getset_3` | `test_context_getset_3` |
//! | 19 | `test_context_getset_4` | `test_context_getset_4` ("was created in a different Context", then the reset works back in the context) and `test_context_getset_4_copy_is_a_different_context`. |
//! | 20 | `test_context_getset_5` | `test_context_getset_5` (Python's shared list is an `Arc<Mutex<Vec<_>>>`) |
//! | 21 | `test_context_copy_1` | `test_context_copy_1` |
//! | 22 | `test_context_isinstance` | `test_context_isinstance`: `Mapping` ABC registration has no Rust meaning; the test exercises every read-only mapping method instead. |
//! | 23 | `test_context_threads_1` | `test_context_threads_1` (10 scoped threads, short sleeps); also `threads::many_threads_set_the_same_var_independently`. |
//! | 24 | `test_context_thread_inherit` | `test_context_thread_inherit`: a plain thread sees nothing; `copy_context` handed over gives inheritance; a shared context object keeps the thread's sets; `Context::new()` sees nothing. |
//! | 25 | `test_token_contextmanager_with_default` | `test_token_contextmanager_with_default` (`scoped_set`) |
//! | 26 | `test_token_contextmanager_without_default` | `test_token_contextmanager_without_default`: the error and the panic message contain `<ContextVar name="c"`. |
//! | 27 | `test_token_contextmanager_on_exception` | `test_token_contextmanager_on_exception` (a panic, with `scoped_set` and `scope`) |
//! | 28 | `test_token_contextmanager_reentrant` | Not ported: a guard cannot be entered twice and its token cannot be reset twice (compile-time). |
//! | 29 | `test_token_contextmanager_multiple_c_set` | `test_token_contextmanager_multiple_c_set` |
//! | 30 | `test_token_contextmanager_with_explicit_reset_the_same_token` | `test_token_contextmanager_with_explicit_reset_the_same_token`: the explicit reset is [`ScopedSet::reset`](crate::ScopedSet::reset), which consumes the guard, so nothing is reset again at the end of the scope (CPython raises there instead). |
//! | 31 | `test_token_contextmanager_with_explicit_reset_another_token` | `test_token_contextmanager_with_explicit_reset_another_token` |
//! | 32 | `test_context_eq_reentrant_contextvar_set` (gh-142829) | `test_context_eq_reentrant_contextvar_set`: a `context_var!` value whose `PartialEq` runs the compared context and replaces the very value being compared. `==` compares `Arc` snapshots taken when it starts, so the value stays alive (checked without touching its memory) and the use-after-free CPython had cannot happen. |
//! | 33 | `test_context_eq_reentrant_contextvar_set_in_hash` | Keys never run user code (no user `__hash__`/`__eq__` on variables), so the exact scenario does not exist. The closest analogue, `test_context_eq_reentrant_contextvar_set_in_hash_1_structure_change`, adds and replaces bindings in *both* contexts from inside `==`. |
//!
//! The Appendix A tests of the unmerged CPython PR #99634 (`with ctx:`, per-generator
//! contexts) are not part of CPython's behaviour and are not ported.
//!
//! ## CPython's `HamtTest`
//!
//! The 23 `HamtTest` tests drive CPython's persistent map directly (basics, collisions,
//! deletes, iteration, equality, GC). Their properties (persistence of older versions,
//! the identity shortcut for an unchanged map, deletes down to empty, iteration and
//! equality against a model) are covered by the map's own property tests in
//! `src/map/tests.rs`. Collision-node and hash-error tests have no counterpart: variable
//! ids are unique and never hashed by user code. GC and refleak tests have no meaning
//! with reference counting and no cycles through the map.
//!
//! ## Beyond the CPython suite
//!
//! `tests/it/` also checks what Python gets from the GIL and Rust must get by
//! construction:
//!
//! * `panic_safety`: a panic in [`Context::run`](crate::Context::run) restores the outer
//!   context, leaves the context enterable and keeps the sets made before the panic (as
//!   CPython keeps them after an exception); a panic inside `scope`/`scoped_set` restores
//!   the value; a panicking `Drop` of a value leaves the state consistent.
//! * `drop_reentrancy`: values whose `Drop` reads and sets variables (the same one, too)
//!   when dropped by reset, overwrite, context drop, leaving a `run` and thread exit; a
//!   `Clone` that sets a variable during [`ContextVar::get`](crate::ContextVar::get); a
//!   [`with`](crate::ContextVar::with) closure that sets variables while it holds `&T`.
//! * `threads`: fresh threads start empty; a context moved to, shared with, or run in
//!   turn by other threads; one entry at a time; [`Context::current`](crate::Context::current)
//!   handles read from other threads and run after their owner thread exits.
//! * `teardown`: thread-local destructors that call the API during thread exit.
//! * `var`, `token`, `context`: precedence of defaults, lazy defaults, `is_set`, `Debug`,
//!   equality, iteration snapshots, [`Context::with_value`](crate::Context::with_value).
