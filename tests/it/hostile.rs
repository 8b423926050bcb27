//! Hostile use of the rayon adapter and of the binding guards: what safe code
//! can do with rayon's public plumbing traits and with `Token` / `ScopedSet` must stay
//! memory-safe and must not change what anyone reads.
//!
//! * The issue's four reproductions, as regression tests: a folder made in one
//!   `Context::run` and completed in another, outside any run, forgotten, or dropped in
//!   another run (a use-after-free before the fix); a pipeline of two adapters (the
//!   consuming closures saw the inner capture); items of one job sharing one
//!   `Context::current()` handle; a lazy default that reads itself (a deadlock).
//! * Drop orders of `Token` and `ScopedSet` not covered by `token.rs` and
//!   `panic_safety.rs`: `mem::forget`, out-of-order drops, drops in another run and
//!   during unwinding.
//! * A property test whose custom `ParallelIterator` drives the consumer
//!   `in_copied_context()` hands it in arbitrary order, nested in `Context::run`s, with
//!   panics and threads, checked against a model after every op ([`hostile_driver`]; the
//!   cargo-fuzz target `fuzz/fuzz_targets/hostile.rs` runs the same driver on bytes).
//!
//! `mem::forget` here is [`forget`]: the value is never dropped, but stays reachable, so
//! neither miri's leak check nor LeakSanitizer flags the leak the tests mean to make.
//! Under miri, the two tests in `hostile::pool::` start rayon's global pool, so they need
//! Tree Borrows and `-Zmiri-ignore-leaks` (as `rayon::` does); the rest runs under
//! Stacked Borrows with the leak check on.

#[path = "hostile_driver.rs"]
mod hostile_driver;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use contextvars::rayon::ParallelIteratorExt;
use contextvars::{Context, ContextVar, LookupError, copy_context};
use proptest::prelude::*;
use rayon::iter::plumbing::{Folder, UnindexedConsumer};
use rayon::prelude::*;

use hostile_driver::{
    Items, Kind, MAX_RUN_BODY, MODES, Op, PLACES, POOLS, Program, Stats, decode, encode, forget,
    run, run_bytes,
};

use crate::{expect_panic, isolated, iterations, panic_message};

// ============================================================ 1. a folder outlives its run

/// The issue's variable (named `x` as there).
static S: ContextVar<String> = contextvars::context_var!(String, "x");

/// Where the evil driver puts the folder it made inside `a.run`.
#[derive(Clone, Copy, Debug)]
enum Evil {
    /// The issue's code: the driver sets `base-2`, then completes inside `c.run`.
    CompleteInOtherRun,
    /// Completed outside any run.
    CompleteOutside,
    /// `mem::forget`, and so is a second folder made outside any run; the driver returns
    /// a spare consumer's result.
    Forget,
    /// Fed an item and dropped inside `c.run`, after the driver set `base-2`.
    DropInOtherRun,
}

/// A `ParallelIterator` whose driver makes its folder inside `a.run` and disposes of it as
/// [`Evil`] says, then checks that its own frame and both contexts are untouched.
struct EvilDriver<'a> {
    a: &'a Context,
    c: &'a Context,
    how: Evil,
}

impl ParallelIterator for EvilDriver<'_> {
    type Item = u32;

    fn drive_unindexed<C: UnindexedConsumer<u32>>(self, consumer: C) -> C::Result {
        let EvilDriver { a, c, how } = self;
        let own = |expected: &str, when: &str| {
            assert_eq!(
                S.get(),
                expected,
                "{how:?}, {when}: the driver's frame changed under it"
            );
        };
        let spare = consumer.split_off_left();
        let folder = a.run(move || consumer.into_folder());
        own("base-1", "after into_folder inside a.run");
        let (result, own_value) = match how {
            Evil::CompleteInOtherRun => {
                drop(S.set("base-2".to_owned())); // the base frame's root is now unique
                (c.run(move || folder.complete()), "base-2")
            }
            Evil::CompleteOutside => (folder.complete(), "base-1"),
            Evil::Forget => {
                forget(folder);
                own("base-1", "after forgetting the folder made in a.run");
                forget(spare.split_off_left().into_folder());
                own("base-1", "after forgetting a folder made outside any run");
                drop(S.set("base-2".to_owned()));
                (spare.split_off_left().into_folder().complete(), "base-2")
            }
            Evil::DropInOtherRun => {
                drop(S.set("base-2".to_owned()));
                c.run(move || drop(folder.consume(7)));
                (spare.split_off_left().into_folder().complete(), "base-2")
            }
        };
        // The read that hit freed memory before the fix.
        own(own_value, "at the end");
        assert_eq!(
            a.try_run(|| S.get()).ok().as_deref(),
            Some("in-a"),
            "{how:?}: `a` is left entered or changed"
        );
        assert_eq!(
            c.try_run(|| S.get()).ok().as_deref(),
            Some("in-c"),
            "{how:?}: `c` is left entered or changed"
        );
        drop(spare);
        result
    }
}

fn contexts_a_and_c() -> (Context, Context) {
    (
        Context::new().with_value(&S, "in-a".to_owned()),
        Context::new().with_value(&S, "in-c".to_owned()),
    )
}

/// Runs an [`EvilDriver`] captured under `captured`, driven from `base-1` (the issue's
/// code captures `base-1` itself: a distinct capture also shows a frame left entered),
/// checks everything afterwards and returns what the driver's frame reads at the end.
fn run_evil(a: &Context, c: &Context, how: Evil) -> String {
    drop(S.set("captured".to_owned()));
    let iter = EvilDriver { a, c, how }.in_copied_context();
    drop(S.set("base-1".to_owned()));
    let seen = Mutex::new(Vec::new());
    iter.for_each(|item| seen.lock().unwrap().push((item, S.get())));
    let seen = seen.into_inner().unwrap();
    let expected_items: &[(u32, &str)] = match how {
        Evil::DropInOtherRun => &[(7, "captured")],
        _ => &[],
    };
    let seen_items: Vec<(u32, &str)> = seen.iter().map(|(n, s)| (*n, s.as_str())).collect();
    assert_eq!(
        seen_items, expected_items,
        "{how:?}: the consuming closure must see the capture"
    );
    for (name, ctx, value) in [("a", a, "in-a"), ("c", c, "in-c")] {
        assert_eq!(
            ctx.try_run(|| S.get()).ok().as_deref(),
            Some(value),
            "{how:?}: after the call, `{name}` is left entered or changed"
        );
    }
    assert_eq!(a.snapshot().get(&S).cloned().as_deref(), Some("in-a"));
    assert_eq!(c.snapshot().get(&S).cloned().as_deref(), Some("in-c"));
    S.get()
}

/// Runs `f` on a new thread, in its base context: the issue's shape (there the driver's
/// set leaves the frame's snapshot unique, so a frame switch undone too late frees it).
/// The tests also run each driver inside a `Context::run` ([`isolated`]).
fn in_thread_base<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| scope.spawn(f).join()).unwrap_or_else(|e| resume_unwind(e))
}

/// The issue's code (natively a garbage read or a crash, a use-after-free under miri
/// and ASAN before the fix).
#[test]
fn evil_folder_completed_in_another_run() {
    let (a, c) = contexts_a_and_c();
    let after = in_thread_base(|| run_evil(&a, &c, Evil::CompleteInOtherRun));
    assert_eq!(after, "base-2");
    let after = isolated(|| run_evil(&a, &c, Evil::CompleteInOtherRun));
    assert_eq!(after, "base-2");
    assert!(a.try_run(|| ()).is_ok() && c.try_run(|| ()).is_ok());
}

/// Completed outside any run, on a thread that then exits while a second thread runs
/// `a`: before the fix the first thread kept running in `a`'s frame after `a` was
/// released, so `a` was entered twice and the first thread's teardown freed what the
/// second was reading.
#[test]
fn evil_folder_completed_outside_any_run() {
    let (a, c) = contexts_a_and_c();
    let (a, c) = (&a, &c);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (exited_tx, exited_rx) = mpsc::channel::<()>();
        let first = scope.spawn(move || {
            let after = run_evil(a, c, Evil::CompleteOutside);
            let _ = done_tx.send(());
            let _ = exit_rx.recv(); // then exit (and tear down) while `second` runs `a`
            after
        });
        // A closed channel (the first thread panicked) ends the wait too.
        let _ = done_rx.recv();
        let second = scope.spawn(move || {
            a.try_run(|| {
                let on_entry = S.get();
                let _ = entered_tx.send(());
                let _ = exited_rx.recv();
                (on_entry, S.get())
            })
        });
        let _ = entered_rx.recv();
        let _ = exit_tx.send(());
        let first = first.join();
        let _ = exited_tx.send(());
        let second = second.join();
        let after = first.unwrap_or_else(|payload| resume_unwind(payload));
        assert_eq!(after, "base-1", "the first thread's own frame changed");
        let second = second.unwrap_or_else(|payload| resume_unwind(payload));
        assert_eq!(
            second.ok(),
            Some(("in-a".to_owned(), "in-a".to_owned())),
            "another thread could not run `a`, or read something else in it while the \
             first thread exited"
        );
    });
    let after = isolated(|| run_evil(a, c, Evil::CompleteOutside));
    assert_eq!(after, "base-1");
    assert!(a.try_run(|| ()).is_ok() && c.try_run(|| ()).is_ok());
}

#[test]
fn evil_folder_forgotten() {
    let (a, c) = contexts_a_and_c();
    // Twice on one thread: nothing of the first forgotten folder is left around.
    let after = in_thread_base(|| {
        (
            run_evil(&a, &c, Evil::Forget),
            run_evil(&a, &c, Evil::Forget),
        )
    });
    assert_eq!(after, ("base-2".to_owned(), "base-2".to_owned()));
    let after = isolated(|| run_evil(&a, &c, Evil::Forget));
    assert_eq!(after, "base-2");
    assert!(a.try_run(|| ()).is_ok() && c.try_run(|| ()).is_ok());
}

#[test]
fn evil_folder_dropped_in_another_run() {
    let (a, c) = contexts_a_and_c();
    let after = in_thread_base(|| run_evil(&a, &c, Evil::DropInOtherRun));
    assert_eq!(after, "base-2");
    let after = isolated(|| run_evil(&a, &c, Evil::DropInOtherRun));
    assert_eq!(after, "base-2");
    assert!(a.try_run(|| ()).is_ok() && c.try_run(|| ()).is_ok());
}

// ======================================= 2 and 3: on rayon's pool (`hostile::pool::`)

/// The reproductions that run real parallel iterators, so start rayon's global pool:
/// under miri they need Tree Borrows (crossbeam-epoch, under rayon, violates Stacked
/// Borrows), like `rayon::`; everything else in `hostile::` runs under Stacked Borrows.
mod pool {
    use std::sync::Mutex;

    use contextvars::rayon::ParallelIteratorExt;
    use contextvars::{Context, ContextVar};
    use rayon::prelude::*;

    use crate::isolated;

    // ======================================= 2. two adapters: each closure in its capture

    static N: ContextVar<usize> = contextvars::context_var!(usize, "n");

    /// The issue's pipeline. The consuming closure (`for_each`, after the outer adapter) must
    /// see the outer capture (2); before the fix it saw the inner one. `map` comes after the
    /// inner adapter and before the outer one: `in_copied_context`'s docs say each adapter's
    /// capture covers what comes after it, so `map` sees the inner capture (1).
    #[test]
    fn two_adapters_each_closure_runs_in_its_capture() {
        isolated(|| {
            let seen = Mutex::new(Vec::new());
            let inner = N.scope(1, || (0..4usize).into_par_iter().in_copied_context());
            let _outer = N.set(2);
            inner
                .map(|_| N.get())
                .in_copied_context()
                .for_each(|mapped| seen.lock().unwrap().push((mapped, N.get())));
            let seen = seen.into_inner().unwrap();
            let consuming: Vec<usize> = seen.iter().map(|(_, consumed)| *consumed).collect();
            assert_eq!(
                consuming, [2; 4],
                "for_each's closure must see the outer capture; (map, for_each) read {seen:?}"
            );
            let mapped: Vec<usize> = seen.iter().map(|(mapped, _)| *mapped).collect();
            assert_eq!(
                mapped, [1; 4],
                "map, after the inner adapter, runs in the inner capture; (map, for_each) read \
                 {seen:?}"
            );
            assert_eq!(N.get(), 2);
        });
    }

    // ============================================ 3. items of a job do not share a handle

    #[test]
    fn items_of_one_job_do_not_share_a_context_handle() {
        const ITEMS: usize = 8;
        isolated(|| {
            let _captured = N.set(1);
            let seen = Mutex::new(Vec::new());
            (0..ITEMS)
                .into_par_iter()
                .with_min_len(4) // every job gets at least four items
                .in_copied_context()
                .for_each(|i| {
                    let before = N.get();
                    let _ = N.set(10 + i); // token dropped: the binding stays in this item
                    seen.lock().unwrap().push((i, before, Context::current()));
                });
            let mut seen = seen.into_inner().unwrap();
            seen.sort_by_key(|(i, ..)| *i);
            assert_eq!(seen.len(), ITEMS);
            for (i, before, _) in &seen {
                assert_eq!(
                    *before, 1,
                    "item {i} started from another item's set, not the capture"
                );
            }
            let held: Vec<Option<usize>> = seen
                .iter()
                .map(|(_, _, handle)| handle.snapshot().get(&N).cloned())
                .collect();
            let expected: Vec<Option<usize>> = (0..ITEMS).map(|i| Some(10 + i)).collect();
            assert_eq!(
                held, expected,
                "each item's Context::current() must keep that item's own set"
            );
            assert_eq!(N.get(), 1);
        });
    }
}

// ================================================ 4. a lazy default that reads itself

/// Runs `f` on a new thread and waits at most 10 s for it (on the code before the fix the
/// lazy-default tests deadlock: the test must fail, not hang CI).
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match receive.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => resume_unwind(payload),
        Err(RecvTimeoutError::Timeout) => panic!("{what} hangs (no answer within 10 s)"),
        Err(RecvTimeoutError::Disconnected) => unreachable!("the thread always sends"),
    }
}

/// A cycle message names the variable (quoted, as a `LookupError` does) and the cause.
fn assert_cycle_message(message: &str) {
    assert!(
        message.contains("\"l\"") && message.contains("lazy default"),
        "the panic must name the variable \"l\" and say `lazy default`: {message}"
    );
}

#[test]
fn lazy_default_reading_itself_panics() {
    static L: ContextVar<u64> = contextvars::context_var!(u64, "l", lazy L.get() + 1);
    let messages = within("L.get() in L's lazy default", || {
        // Twice: the first failure must not leave the variable marked as initialising.
        (expect_panic(|| L.get()), expect_panic(|| L.get()))
    });
    assert_cycle_message(&messages.0);
    assert_cycle_message(&messages.1);
}

#[test]
fn lazy_default_reading_itself_try_get_is_an_error() {
    static INNER: Mutex<Option<Result<u64, LookupError>>> = Mutex::new(None);
    static L: ContextVar<u64> = contextvars::context_var!(u64, "l", lazy {
        let inner = L.try_get();
        *INNER.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        41
    });
    let outer = within("L.try_get() in L's lazy default", || L.try_get());
    let inner = INNER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("the lazy default ran");
    let error = inner.expect_err("the re-entrant try_get must be an error");
    assert_eq!(error.var_name(), "l");
    assert_eq!(
        outer,
        Ok(41),
        "the outer read gets what the default returned"
    );
}

/// The issue's exact variable read with `try_get` from outside: whichever way the cycle is
/// reported (the inner `get` panics through the outer call, or the outer call returns the
/// error), it names the variable and never hangs.
#[test]
fn lazy_default_reading_itself_never_hangs_try_get() {
    static L: ContextVar<u64> = contextvars::context_var!(u64, "l", lazy L.get() + 1);
    let outcome = within("L.try_get() with L.get() in its lazy default", || {
        catch_unwind(|| L.try_get()).map_err(|payload| panic_message(&*payload))
    });
    match outcome {
        Ok(Ok(value)) => panic!("a cyclic lazy default produced a value: {value}"),
        Ok(Err(error)) => assert_eq!(error.var_name(), "l"),
        Err(message) => assert_cycle_message(&message),
    }
}

#[test]
fn lazy_default_reading_another_lazy_default_works() {
    static P: ContextVar<u64> = contextvars::context_var!(u64, "p", lazy Q.get() * 2);
    static Q: ContextVar<u64> = contextvars::context_var!(u64, "q", lazy R.get() + 1);
    static R: ContextVar<u64> = contextvars::context_var!(u64, "r", lazy 20);
    let seen = within("a chain of lazy defaults", || (P.get(), Q.get(), R.get()));
    assert_eq!(seen, (42, 21, 20));
    // From another thread, now that they are computed.
    assert_eq!(within("computed lazy defaults", || P.get()), 42);
}

#[test]
fn lazy_default_that_panics_poisons_nothing() {
    static B: ContextVar<u64> =
        contextvars::context_var!(u64, "b", lazy panic!("b's default failed"));
    static OK: ContextVar<u64> = contextvars::context_var!(u64, "ok", lazy 7);
    let (first, second, other, try_get) = within("a panicking lazy default", || {
        let first = expect_panic(|| B.get());
        // Not reported as a cycle: the failed computation is over.
        let second = expect_panic(|| B.get());
        let other = OK.get();
        let try_get = expect_panic(|| B.try_get());
        (first, second, other, try_get)
    });
    assert!(first.contains("b's default failed"), "{first}");
    assert!(second.contains("b's default failed"), "{second}");
    assert!(try_get.contains("b's default failed"), "{try_get}");
    assert_eq!(other, 7);
    assert_eq!(within("another thread", || OK.get()), 7);
}

// ================================================== Token and ScopedSet drop orders

/// `String` values: a read of a freed value is a use-after-free miri and ASAN report.
static V: ContextVar<String> = contextvars::context_var!(String, "v");

fn v() -> Option<String> {
    V.try_get().ok()
}

fn some(value: &str) -> Option<String> {
    Some(value.to_owned())
}

#[test]
fn forgotten_token_keeps_the_value() {
    isolated(|| {
        forget(V.set("a".into()));
        assert_eq!(v(), some("a"));
        let copy = copy_context(); // shared: the next set path-copies
        forget(V.set("b".into())); // its token held the old snapshot
        assert_eq!(v(), some("b"));
        assert_eq!(copy.snapshot().get(&V).cloned(), some("a"));
        let token = V.set("c".into());
        assert_eq!(token.old_value().map(String::as_str), Some("b"));
        V.reset(token).unwrap();
        assert_eq!(v(), some("b"));
        // Forgotten inside a run: the run still ends, the context keeps the value.
        let ctx = Context::new();
        ctx.run(|| forget(V.set("in ctx".into())));
        assert_eq!(ctx.snapshot().get(&V).cloned(), some("in ctx"));
        assert!(ctx.try_run(|| ()).is_ok(), "the run was left");
        assert_eq!(ctx.run(v), some("in ctx"));
        assert_eq!(v(), some("b"));
    });
}

#[test]
fn forgotten_scoped_set_never_resets() {
    isolated(|| {
        let _base = V.set("base".into());
        forget(V.scoped_set("kept".into()));
        assert_eq!(v(), some("kept"));
        V.scope("inner".into(), || assert_eq!(v(), some("inner")));
        assert_eq!(v(), some("kept"));
        let ctx = Context::new();
        ctx.run(|| forget(V.scoped_set("in ctx".into())));
        assert_eq!(ctx.snapshot().get(&V).cloned(), some("in ctx"));
        assert!(ctx.try_run(|| ()).is_ok(), "the run was left");
        assert_eq!(v(), some("kept"));
    });
}

#[test]
fn scoped_sets_dropped_out_of_order() {
    // Python's rule for stale tokens: each reset restores its own old value.
    isolated(|| {
        let _base = V.set("base".into());
        let outer = V.scoped_set("outer".into());
        let inner = V.scoped_set("inner".into());
        drop(outer);
        assert_eq!(v(), some("base"), "the outer guard restores its old value");
        assert_eq!(
            inner.token().old_value().map(String::as_str),
            Some("outer"),
            "the inner guard still holds its old value"
        );
        drop(inner);
        assert_eq!(v(), some("outer"), "the inner guard restores its old value");

        // The same with `ScopedSet::reset`, and a guard and a token interleaved.
        let guard = V.scoped_set("guard".into());
        let token = V.set("token".into());
        guard.reset().unwrap();
        assert_eq!(v(), some("outer"));
        V.reset(token).unwrap();
        assert_eq!(v(), some("guard"));
    });
}

#[test]
fn token_outer_reset_first_with_copies_in_between() {
    // `token.rs` covers out-of-order resets of one variable without copies and of two
    // variables with copies: here one variable with copies, so each set path-copies.
    isolated(|| {
        let t1 = V.set("one".into());
        let c1 = copy_context();
        let t2 = V.set("two".into());
        let c2 = copy_context();
        V.reset(t1).unwrap();
        assert_eq!(v(), None);
        assert_eq!(
            t2.old_value().map(String::as_str),
            Some("one"),
            "a token keeps its old value alive whatever was reset since"
        );
        V.reset(t2).unwrap();
        assert_eq!(v(), some("one"));
        assert_eq!(c1.snapshot().get(&V).cloned(), some("one"));
        assert_eq!(c2.snapshot().get(&V).cloned(), some("two"));
    });
}

#[test]
fn scoped_set_escaping_its_run() {
    isolated(|| {
        let _base = V.set("base".into());
        let ctx = Context::new();
        // Made inside the run, reset outside it: refused, the token comes back.
        let guard = ctx.run(|| V.scoped_set("in ctx".into()));
        assert!(ctx.try_run(|| ()).is_ok(), "the run was left");
        assert_eq!(ctx.snapshot().get(&V).cloned(), some("in ctx"));
        let error = guard.reset().unwrap_err();
        assert!(error.is_different_context(), "{error:?}");
        assert_eq!(v(), some("base"));
        // It works in a later run of the context it was made in.
        ctx.run(|| V.reset(error.into_token())).unwrap();
        assert_eq!(ctx.snapshot().get(&V).cloned(), None);

        // Dropped inside a later run of its own context: resets there.
        let guard = ctx.run(|| V.scoped_set("again".into()));
        ctx.run(move || drop(guard));
        assert_eq!(ctx.snapshot().get(&V).cloned(), None);

        // Dropped inside another context's run: a panic (not unwinding), and both
        // contexts stay usable and unchanged.
        let guard = ctx.run(|| V.scoped_set("third".into()));
        let other = Context::new();
        let message = expect_panic(|| other.run(move || drop(guard)));
        assert!(message.contains("different Context"), "{message}");
        assert!(other.try_run(|| ()).is_ok() && ctx.try_run(|| ()).is_ok());
        assert!(!other.snapshot().contains(&V));
        assert_eq!(ctx.snapshot().get(&V).cloned(), some("third"));
        assert_eq!(v(), some("base"));
    });
}

#[test]
fn scoped_set_dropped_while_unwinding_in_another_run() {
    isolated(|| {
        let _base = V.set("base".into());
        let guard = V.scoped_set("guarded".into());
        let other = Context::new();
        let message = expect_panic(|| {
            other.run(move || {
                let _guard = guard;
                panic!("unwinding past a guard from elsewhere");
            })
        });
        // The guard's own error is not raised while unwinding (that would abort).
        assert_eq!(message, "unwinding past a guard from elsewhere");
        assert_eq!(
            v(),
            some("guarded"),
            "a guard dropped elsewhere does not reset"
        );
        assert!(!other.snapshot().contains(&V));
        assert!(other.try_run(|| ()).is_ok());
    });
}

#[test]
fn scoped_sets_dropped_out_of_order_while_unwinding() {
    isolated(|| {
        let _base = V.set("base".into());
        let message = expect_panic(|| {
            let outer = V.scoped_set("outer".into());
            let inner = V.scoped_set("inner".into());
            // A tuple drops its fields in order: the outer guard first.
            let _pair = (outer, inner);
            panic!("unwinding with guards out of order");
        });
        assert_eq!(message, "unwinding with guards out of order");
        assert_eq!(v(), some("outer"), "each guard restored its own old value");
    });
}

// ====================================================== the hostile driver, as a proptest

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Plain),
        3 => Just(Kind::Set),
        1 => Just(Kind::Handle),
        1 => Just(Kind::Panic),
    ]
}

fn items() -> impl Strategy<Value = Items> {
    (0..=3u8, kind(), kind(), kind()).prop_map(|(count, a, b, c)| {
        Items(count | (a as u8) << 2 | (b as u8) << 4 | (c as u8) << 6)
    })
}

fn op() -> impl Strategy<Value = Op> {
    let index = any::<u8>;
    let pool = || prop::sample::select(POOLS.to_vec());
    prop_oneof![
        2 => index().prop_map(|consumer| Op::SplitOffLeft { consumer }),
        2 => (index(), index()).prop_map(|(consumer, index)| Op::SplitAt { consumer, index }),
        1 => index().prop_map(|consumer| Op::ToReducer { consumer }),
        4 => index().prop_map(|consumer| Op::IntoFolder { consumer }),
        5 => (index(), kind()).prop_map(|(folder, kind)| Op::Consume { folder, kind }),
        3 => (index(), items(), prop::bool::weighted(0.1)).prop_map(
            |(folder, items, iter_panics)| Op::ConsumeIter { folder, items, iter_panics }
        ),
        1 => index().prop_map(|folder| Op::Full { folder }),
        4 => index().prop_map(|folder| Op::Complete { folder }),
        3 => (index(), index(), index())
            .prop_map(|(reducer, left, right)| Op::Reduce { reducer, left, right }),
        2 => (pool(), index()).prop_map(|(pool, index)| Op::Drop { pool, index }),
        1 => (pool(), index()).prop_map(|(pool, index)| Op::Forget { pool, index }),
        3 => (index(), any::<bool>()).prop_map(|(value, keep)| Op::Set { value, keep }),
        2 => index().prop_map(|token| Op::Reset { token }),
        4 => (0..3u8, 0..MAX_RUN_BODY).prop_map(|(ctx, len)| Op::Run { ctx, len }),
        1 => (index(), items()).prop_map(|(consumer, items)| Op::Thread { consumer, items }),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    (
        prop::sample::select(MODES.to_vec()),
        prop::sample::select(PLACES.to_vec()),
        prop::collection::vec(op(), 0..if cfg!(miri) { 24 } else { 64 }),
    )
        .prop_map(|(mode, place, ops)| Program { mode, place, ops })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        // No files: keeps miri free of isolation exceptions; a failing program is printed
        // as code instead (paste it into a regression test below).
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_driver_agrees_with_the_model(program in program()) {
        run(&program);
    }

    // Pure model code: nothing for miri to see.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn decode_inverts_encode(program in program()) {
        prop_assert_eq!(decode(&encode(&program)), program);
    }
}

/// Random byte strings (what the fuzzer feeds) decode to programs that run, and together
/// they reach every case the driver distinguishes.
#[test]
fn hostile_byte_programs_reach_every_case() {
    let (programs, len) = if cfg!(miri) {
        (2, 48)
    } else {
        (iterations(300) as u64, 300)
    };
    let mut total = Stats::default();
    for seed in 0..programs {
        total.add(&run_bytes(&crate::pseudo_random_bytes(seed, len)));
    }
    eprintln!("{total:?}");
    assert!(total.folders > 0, "{total:?}");
    if cfg!(miri) {
        return;
    }
    assert!(
        total.items > 0 && total.completes > 0 && total.reduces > 0,
        "{total:?}"
    );
    assert!(total.splits > 0 && total.injected_panics > 0, "{total:?}");
    assert!(total.cross_frame > 0, "{total:?}");
    assert!(total.drops > 0 && total.forgets > 0, "{total:?}");
    assert!(total.runs > 0 && total.refused_runs > 0, "{total:?}");
    assert!(total.threads > 0 && total.handles > 0, "{total:?}");
    assert!(total.sets > 0 && total.resets_ok > 0, "{total:?}");
    assert!(total.resets_refused > 0, "{total:?}");
    assert!(total.max_depth >= 3, "{total:?}");
}

// ----------------------------------------------------------------------- fixed programs
//
// The issue's shapes as driver programs, run in every mode and place;
// `fuzz/corpus/hostile/` holds them encoded as seeds.

/// Runs `ops` in every [`Mode`](hostile_driver::Mode) and
/// [`Place`](hostile_driver::Place).
fn run_everywhere(ops: &[Op]) {
    for mode in MODES {
        for place in PLACES {
            run(&Program {
                mode,
                place,
                ops: ops.to_vec(),
            });
        }
    }
}

/// The fixed programs, by name (also the seed corpus's file names).
fn fixed_programs() -> Vec<(&'static str, Vec<Op>)> {
    use Op::*;
    let plain = Kind::Plain;
    // Three items: `Set`, `Handle`, `Plain`.
    let set_handle_plain = Items(3 | (Kind::Set as u8) << 2 | (Kind::Handle as u8) << 4);
    vec![
        (
            // The issue's use-after-free: made in run 0, driver sets, completed in run 1.
            "program-complete-in-other-run",
            vec![
                Run { ctx: 0, len: 1 },
                IntoFolder { consumer: 0 },
                Set {
                    value: 2,
                    keep: false,
                },
                Run { ctx: 1, len: 2 },
                Consume {
                    folder: 0,
                    kind: Kind::Set,
                },
                Complete { folder: 0 },
            ],
        ),
        (
            // Made in a run, completed outside any run, then the context is run again.
            "program-complete-outside",
            vec![
                Run { ctx: 0, len: 1 },
                IntoFolder { consumer: 0 },
                Consume {
                    folder: 0,
                    kind: plain,
                },
                Complete { folder: 0 },
                Run { ctx: 0, len: 1 },
                Set {
                    value: 9,
                    keep: true,
                },
            ],
        ),
        (
            // Forgotten and dropped folders, in and out of nested runs.
            "program-forget-and-drop",
            vec![
                SplitOffLeft { consumer: 0 },
                Run { ctx: 1, len: 4 },
                IntoFolder { consumer: 0 },
                IntoFolder { consumer: 0 },
                Run { ctx: 2, len: 1 },
                Forget {
                    pool: hostile_driver::Pool::Folder,
                    index: 0,
                },
                Set {
                    value: 1,
                    keep: true,
                },
                Drop {
                    pool: hostile_driver::Pool::Folder,
                    index: 0,
                },
                Reset { token: 0 },
            ],
        ),
        (
            // Several items in one folder, with handles, then a panic; split and reduce.
            "program-items-and-panics",
            vec![
                SplitAt {
                    consumer: 0,
                    index: 1,
                },
                IntoFolder { consumer: 0 },
                ConsumeIter {
                    folder: 0,
                    items: set_handle_plain,
                    iter_panics: false,
                },
                Consume {
                    folder: 0,
                    kind: Kind::Handle,
                },
                Complete { folder: 0 },
                IntoFolder { consumer: 0 },
                Consume {
                    folder: 0,
                    kind: Kind::Panic,
                },
                IntoFolder { consumer: 0 },
                Complete { folder: 0 },
                Reduce {
                    reducer: 0,
                    left: 0,
                    right: 1,
                },
            ],
        ),
        (
            // A consumer split off and moved to a thread; its result reduced at home.
            "program-thread-hand-off",
            vec![
                SplitOffLeft { consumer: 0 },
                Run { ctx: 0, len: 1 },
                Thread {
                    consumer: 1,
                    items: set_handle_plain,
                },
                IntoFolder { consumer: 0 },
                Run { ctx: 1, len: 2 },
                ConsumeIter {
                    folder: 0,
                    items: set_handle_plain,
                    iter_panics: true,
                },
                ToReducer { consumer: 0 },
            ],
        ),
    ]
}

#[test]
fn fixed_programs_pass_everywhere() {
    for (name, ops) in fixed_programs() {
        let outcome = catch_unwind(AssertUnwindSafe(|| run_everywhere(&ops)));
        if let Err(payload) = outcome {
            panic!("{name}: {}", panic_message(&*payload));
        }
    }
}

/// The committed seeds are the fixed programs, encoded (each with some mode and place: the
/// ops decode the same in all).
#[test]
#[cfg_attr(miri, ignore)]
fn seed_corpus_matches_the_fixed_programs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/hostile");
    for (name, ops) in fixed_programs() {
        let path = format!("{dir}/{name}");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let program = decode(&bytes);
        assert_eq!(program.ops, ops, "{path} does not decode to {name}");
        let expected = encode(&Program { ops, ..program });
        assert_eq!(bytes, expected, "{path}");
    }
}
