//! Thread teardown: destructors of the program's own thread-locals run while (or after)
//! the crate's per-thread storage is destroyed. Whatever they call must not panic: reads
//! give defaults or errors, writes give errors.
//!
//! Each destructor catches its own panics and logs them, so a failure shows up as a
//! failed assertion instead of an abort ("thread local panicked on drop").

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::thread;

use contextvars::{Context, ContextVar, ScopedSet, Token, copy_context};

use crate::panic_message;

/// What a destructor observed during teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    try_get: Result<i32, String>,
    get_with_default: i32,
    get_or: i32,
    is_set: bool,
    try_set_ok: bool,
    try_current_ok: bool,
    copy_len: usize,
    try_run: Result<i32, String>,
}

static VAR: ContextVar<i32> = contextvars::context_var!(i32, "teardown_var");
static WITH_DEFAULT: ContextVar<i32> =
    contextvars::context_var!(i32, "teardown_default", default 100);

fn observe() -> Observed {
    Observed {
        try_get: VAR.try_get().map_err(|e| e.to_string()),
        get_with_default: WITH_DEFAULT.get(),
        get_or: VAR.get_or(-1),
        is_set: VAR.is_set(),
        try_set_ok: VAR.try_set(7).map(drop).is_ok(),
        try_current_ok: Context::try_current().map(drop).is_ok(),
        copy_len: copy_context().snapshot().len(),
        try_run: Context::new()
            .try_run(|| VAR.get_or(-2))
            .map_err(|e| e.to_string()),
    }
}

/// Runs `observe` from a destructor, logging its result or its panic.
struct Observer {
    log: &'static Mutex<Vec<Result<Observed, String>>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        let result = catch_unwind(observe).map_err(|payload| panic_message(&*payload));
        self.log.lock().unwrap().push(result);
    }
}

/// Checks one observation: either the crate's storage was still alive (the thread's own
/// binding of 1 is seen) or it was gone (no binding, errors), never a mix that lies.
fn check(observed: &Observed) {
    match &observed.try_get {
        Ok(value) => {
            assert_eq!(*value, 1);
            assert_eq!(observed.get_with_default, 2);
            assert!(observed.is_set);
            assert_eq!(observed.get_or, 1);
        }
        Err(message) => {
            assert!(message.contains("teardown_var"), "{message}");
            assert_eq!(observed.get_with_default, 100);
            assert!(!observed.is_set);
            assert_eq!(observed.get_or, -1);
        }
    }
    if !observed.try_current_ok {
        // Storage gone: nothing can be written or entered.
        assert!(!observed.try_set_ok);
        assert_eq!(observed.copy_len, 0);
        assert!(observed.try_run.is_err());
        assert!(
            observed
                .try_run
                .as_ref()
                .unwrap_err()
                .contains("cannot enter context")
        );
    }
    if let Ok(value) = &observed.try_run {
        assert_eq!(*value, -2, "a new context is empty");
    }
}

#[test]
fn own_thread_local_registered_before_crate_storage() {
    // Registered first, destroyed last (after the crate's storage on platforms that
    // destroy in reverse order).
    static LOG: Mutex<Vec<Result<Observed, String>>> = Mutex::new(Vec::new());
    thread_local! {
        static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        OBSERVER.with(|o| *o.borrow_mut() = Some(Observer { log: &LOG }));
        drop(VAR.set(1));
        drop(WITH_DEFAULT.set(2));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "the destructor ran once");
    let observed = log[0]
        .as_ref()
        .unwrap_or_else(|panic| panic!("destructor panicked: {panic}"));
    check(observed);
}

#[test]
fn own_thread_local_registered_after_crate_storage() {
    static LOG: Mutex<Vec<Result<Observed, String>>> = Mutex::new(Vec::new());
    thread_local! {
        static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        drop(VAR.set(1));
        drop(WITH_DEFAULT.set(2));
        OBSERVER.with(|o| *o.borrow_mut() = Some(Observer { log: &LOG }));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "the destructor ran once");
    let observed = log[0]
        .as_ref()
        .unwrap_or_else(|panic| panic!("destructor panicked: {panic}"));
    check(observed);
}

#[test]
fn own_thread_local_on_a_thread_that_never_used_the_crate() {
    static LOG: Mutex<Vec<Result<Observed, String>>> = Mutex::new(Vec::new());
    thread_local! {
        static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        OBSERVER.with(|o| *o.borrow_mut() = Some(Observer { log: &LOG }));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    let observed = log[0]
        .as_ref()
        .unwrap_or_else(|panic| panic!("destructor panicked: {panic}"));
    check(observed);
    assert!(observed.try_get.is_err());
}

#[test]
fn bound_value_destructor_calls_everything_at_thread_exit() {
    // A value bound in the thread's own context is dropped with the crate's storage.
    static LOG: Mutex<Vec<Result<Observed, String>>> = Mutex::new(Vec::new());
    static HOLDS_OBSERVER: ContextVar<Observer> =
        contextvars::context_var!(Observer, "holds_observer");
    thread::spawn(|| {
        drop(VAR.set(1));
        drop(HOLDS_OBSERVER.set(Observer { log: &LOG }));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    let observed = log[0]
        .as_ref()
        .unwrap_or_else(|panic| panic!("destructor panicked: {panic}"));
    check(observed);
    // The storage is being destroyed: the thread's bindings are no longer visible.
    assert!(observed.try_get.is_err());
    assert!(!observed.try_current_ok);
}

/// Drops a token (or a guard) from a thread-local destructor, logging a panic.
struct Holder<G: 'static> {
    held: Option<G>,
    log: &'static Mutex<Vec<Result<(), String>>>,
}

impl<G> Drop for Holder<G> {
    fn drop(&mut self) {
        let held = self.held.take();
        let result = catch_unwind(AssertUnwindSafe(move || drop(held)))
            .map_err(|payload| panic_message(&*payload));
        self.log.lock().unwrap().push(result);
    }
}

#[test]
fn token_in_thread_local_dropped_at_exit() {
    static LOG: Mutex<Vec<Result<(), String>>> = Mutex::new(Vec::new());
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    thread_local! {
        static HOLDER: RefCell<Option<Holder<Token<'static, i32>>>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        HOLDER.with(|h| {
            drop(V.set(1));
            *h.borrow_mut() = Some(Holder {
                held: Some(V.set(2)),
                log: &LOG,
            });
        });
    })
    .join()
    .unwrap();
    assert_eq!(*LOG.lock().unwrap(), vec![Ok(())]);
}

#[test]
fn scoped_set_guard_in_thread_local_dropped_after_crate_storage() {
    // The guard is held by a thread-local registered *before* the crate's storage, so
    // (with reverse-order destruction) it is dropped after that storage is gone. There
    // is nothing left to restore; the drop must not panic.
    static LOG: Mutex<Vec<Result<(), String>>> = Mutex::new(Vec::new());
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    thread_local! {
        static HOLDER: RefCell<Option<Holder<ScopedSet<'static, i32>>>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        HOLDER.with(|h| {
            *h.borrow_mut() = Some(Holder {
                held: None,
                log: &LOG,
            });
        });
        let guard = V.scoped_set(1);
        HOLDER.with(|h| h.borrow_mut().as_mut().unwrap().held = Some(guard));
    })
    .join()
    .unwrap();
    assert_eq!(*LOG.lock().unwrap(), vec![Ok(())]);
}

#[test]
fn scoped_set_guard_in_thread_local_dropped_before_crate_storage() {
    // The other order: the crate's storage is alive, the guard resets normally.
    static LOG: Mutex<Vec<Result<(), String>>> = Mutex::new(Vec::new());
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    thread_local! {
        static HOLDER: RefCell<Option<Holder<ScopedSet<'static, i32>>>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        drop(V.set(0)); // the crate's storage is registered first
        let guard = V.scoped_set(1);
        HOLDER.with(|h| {
            *h.borrow_mut() = Some(Holder {
                held: Some(guard),
                log: &LOG,
            })
        });
    })
    .join()
    .unwrap();
    assert_eq!(*LOG.lock().unwrap(), vec![Ok(())]);
}

#[test]
fn context_in_thread_local_run_at_exit() {
    // A context object kept in a thread-local is run from its destructor.
    static LOG: Mutex<Vec<Result<Result<i32, String>, String>>> = Mutex::new(Vec::new());
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    struct RunsAtExit(Context);
    impl Drop for RunsAtExit {
        fn drop(&mut self) {
            let result = catch_unwind(AssertUnwindSafe(|| {
                self.0.try_run(|| V.get()).map_err(|e| e.to_string())
            }))
            .map_err(|payload| panic_message(&*payload));
            LOG.lock().unwrap().push(result);
        }
    }
    thread_local! {
        static CTX: RefCell<Option<RunsAtExit>> = const { RefCell::new(None) };
    }
    thread::spawn(|| {
        CTX.with(|c| *c.borrow_mut() = Some(RunsAtExit(Context::new().with_value(&V, 3))));
        drop(V.set(1));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    match &log[0] {
        Ok(Ok(value)) => assert_eq!(*value, 3),
        Ok(Err(message)) => assert!(message.contains("cannot enter context"), "{message}"),
        Err(panic) => panic!("destructor panicked: {panic}"),
    }
}
