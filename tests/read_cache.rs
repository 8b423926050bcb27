//! The per-thread read cache (`engine::thread`'s module docs) against a plain model.
//!
//! The cache serves reads of a program's first variables (values stored inline or boxed),
//! and keeps its slots across switches into the *same* snapshot node. A stale
//! slot would show a value of another frame, so this is an isolation test: random
//! programs of sets, resets, scopes (on the stack and eager), runs of copies and fresh
//! contexts, polls of futures whose copy was taken before the thread's context changed,
//! context handles held across work, spawned threads and rayon jobs, checked after every
//! step against a model that is a stack of maps. The test binary declares few variables,
//! so all four are served by the cache (checked first): two inline, two boxed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use contextvars::future::ContextFutureExt;
use contextvars::{Context, ContextVar, context_var, copy_context};
use proptest::prelude::*;

context_var! {
    /// Inline, served by the cache.
    static A: u64;
    /// Inline, with a default, served by the cache.
    static B: u32 = 5;
    /// Boxed (a `String` is not `Copy`).
    static S: String;
}

/// Boxed: the expression form boxes even a `u64`.
static E: ContextVar<u64> = contextvars::context_var!(u64, "e");

/// The variables, by index: `A`, `B`, `S`, `E`.
const VARS: u8 = 4;

/// What variable `var` reads now (the model's notation: `None` for no value).
fn read(var: u8) -> Option<u64> {
    match var {
        0 => A.try_get().ok(),
        1 => B.try_get().ok().map(u64::from),
        2 => S.try_get().ok().map(|s| s[1..].parse().unwrap()),
        _ => E.try_get().ok(),
    }
}

/// What variable `var` holds in `ctx` (no defaults).
fn held(ctx: &Context, var: u8) -> Option<u64> {
    let snapshot = ctx.snapshot();
    match var {
        0 => snapshot.get(&A).copied(),
        1 => snapshot.get(&B).map(|&b| u64::from(b)),
        2 => snapshot.get(&S).map(|s| s[1..].parse().unwrap()),
        _ => snapshot.get(&E).copied(),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Set {
        var: u8,
        value: u8,
    },
    ResetNewest,
    Scope {
        var: u8,
        value: u8,
        body: Vec<Op>,
    },
    ScopedSet {
        var: u8,
        value: u8,
        body: Vec<Op>,
    },
    RunCopy {
        body: Vec<Op>,
    },
    RunFresh {
        body: Vec<Op>,
    },
    /// Makes a future in a copy of the context, runs `before` (which may change the
    /// thread's context), then polls the future once: its poll runs `body`.
    PollLater {
        before: Vec<Op>,
        body: Vec<Op>,
    },
    /// Holds a `Context::current` handle while `body` runs (scopes then set at once).
    HoldCurrent {
        body: Vec<Op>,
    },
    Spawn {
        body: Vec<Op>,
    },
    Job {
        body: Vec<Op>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        3 => (0..VARS, 0..4u8).prop_map(|(var, value)| Op::Set { var, value }),
        2 => Just(Op::ResetNewest),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        let body = || prop::collection::vec(inner.clone(), 0..5);
        prop_oneof![
            2 => (0..VARS, 0..4u8, body()).prop_map(|(var, value, body)| Op::Scope { var, value, body }),
            1 => (0..VARS, 0..4u8, body())
                .prop_map(|(var, value, body)| Op::ScopedSet { var, value, body }),
            1 => body().prop_map(|body| Op::RunCopy { body }),
            1 => body().prop_map(|body| Op::RunFresh { body }),
            2 => (body(), body()).prop_map(|(before, body)| Op::PollLater { before, body }),
            1 => body().prop_map(|body| Op::HoldCurrent { body }),
            1 => body().prop_map(|body| Op::Spawn { body }),
            1 => body().prop_map(|body| Op::Job { body }),
        ]
    })
}

/// The model of one frame's bindings.
type Bindings = BTreeMap<u8, u64>;

/// A set's reset (true if it succeeded), with the variable and the binding it restores.
type Reset = (Box<dyn FnOnce() -> bool>, u8, Option<u64>);

/// What a variable reads in a frame whose bindings are `frame`: its binding, else its
/// default.
fn model_read(frame: &Bindings, var: u8) -> Option<u64> {
    frame.get(&var).copied().or_else(|| (var == 1).then_some(5))
}

/// Runs programs in one frame of the real thing and of the model side by side.
struct Runner {
    /// The model of the current frame's bindings.
    frame: Bindings,
    /// Resets of this frame's sets, newest last, each with the model's change.
    tokens: Vec<Reset>,
}

impl Runner {
    fn new(frame: Bindings) -> Self {
        Self {
            frame,
            tokens: Vec::new(),
        }
    }

    /// Every variable reads what the model says.
    fn check(&self, at: &Op) {
        for var in 0..VARS {
            assert_eq!(
                read(var),
                model_read(&self.frame, var),
                "variable {var} after {at:?}"
            );
        }
    }

    /// Binds `var` to `value` in the real thing (the model is the caller's), returning
    /// the reset.
    fn bind(var: u8, value: u64) -> Box<dyn FnOnce() -> bool> {
        match var {
            0 => {
                let token = A.set(value);
                Box::new(move || A.reset(token).is_ok())
            }
            1 => {
                let token = B.set(u32::try_from(value).unwrap());
                Box::new(move || B.reset(token).is_ok())
            }
            2 => {
                let token = S.set(format!("s{value}"));
                Box::new(move || S.reset(token).is_ok())
            }
            _ => {
                let token = E.set(value);
                Box::new(move || E.reset(token).is_ok())
            }
        }
    }

    /// Runs `body` with `var` bound to `value` by `scope` (or a `scoped_set` guard).
    fn scoped(&mut self, var: u8, value: u64, body: &[Op], on_the_stack: bool) {
        let before = self.frame.insert(var, value);
        {
            let mut run = || self.exec(body);
            match (on_the_stack, var) {
                (true, 0) => A.scope(value, run),
                (true, 1) => B.scope(u32::try_from(value).unwrap(), run),
                (true, 2) => S.scope(format!("s{value}"), run),
                (true, _) => E.scope(value, run),
                (false, 0) => {
                    let _guard = A.scoped_set(value);
                    run();
                }
                (false, 1) => {
                    let _guard = B.scoped_set(u32::try_from(value).unwrap());
                    run();
                }
                (false, 2) => {
                    let _guard = S.scoped_set(format!("s{value}"));
                    run();
                }
                (false, _) => {
                    let _guard = E.scoped_set(value);
                    run();
                }
            }
        }
        // The end puts back the binding from before the scope, whatever happened inside.
        match before {
            Some(value) => self.frame.insert(var, value),
            None => self.frame.remove(&var),
        };
    }

    /// Runs `body` with a runner of its own whose model frame starts as `frame`, inside
    /// `enter` (which enters the real frame), and returns the model frame at the end.
    /// Tokens made inside stay inside: their frame has ended.
    fn nested(frame: Bindings, body: &[Op], enter: impl FnOnce(&mut dyn FnMut())) -> Bindings {
        let mut inner = Runner::new(frame);
        enter(&mut || {
            inner.exec(body);
            inner.tokens.clear();
        });
        inner.frame
    }

    fn exec(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Set { var, value } => {
                    let value = u64::from(*value);
                    let reset = Self::bind(*var, value);
                    let old = self.frame.insert(*var, value);
                    self.tokens.push((reset, *var, old));
                }
                Op::ResetNewest => {
                    if let Some((reset, var, old)) = self.tokens.pop() {
                        assert!(reset(), "a reset in the frame of its set");
                        match old {
                            Some(value) => self.frame.insert(var, value),
                            None => self.frame.remove(&var),
                        };
                    }
                }
                Op::Scope { var, value, body } => {
                    self.scoped(*var, u64::from(*value), body, true);
                }
                Op::ScopedSet { var, value, body } => {
                    self.scoped(*var, u64::from(*value), body, false);
                }
                Op::RunCopy { body } => {
                    let copy = copy_context();
                    let end = Self::nested(self.frame.clone(), body, |f| copy.run(f));
                    for var in 0..VARS {
                        assert_eq!(held(&copy, var), end.get(&var).copied(), "the copy's end");
                    }
                }
                Op::RunFresh { body } => {
                    let fresh = Context::new();
                    let end = Self::nested(Bindings::new(), body, |f| fresh.run(f));
                    for var in 0..VARS {
                        assert_eq!(held(&fresh, var), end.get(&var).copied(), "the fresh end");
                    }
                }
                Op::PollLater { before, body } => {
                    let copied = self.frame.clone();
                    let mut inner = Runner::new(copied);
                    let mut future = pin!(
                        std::future::poll_fn(|_| {
                            inner.exec(body);
                            inner.tokens.clear();
                            Poll::Ready(())
                        })
                        .in_copied_context()
                    );
                    self.exec(before);
                    self.check(op);
                    let polled = future
                        .as_mut()
                        .poll(&mut TaskContext::from_waker(Waker::noop()));
                    assert!(polled.is_ready());
                }
                Op::HoldCurrent { body } => {
                    let handle = Context::current();
                    self.exec(body);
                    drop(handle);
                }
                Op::Spawn { body } => {
                    let frame = self.frame.clone();
                    let body = body.clone();
                    contextvars::thread::spawn(move || {
                        let mut inner = Runner::new(frame);
                        inner.exec(&body);
                        inner.tokens.clear();
                    })
                    .join()
                    .unwrap();
                }
                Op::Job { body } => {
                    let frame = self.frame.clone();
                    let body = body.clone();
                    job(move || {
                        let mut inner = Runner::new(frame);
                        inner.exec(&body);
                        inner.tokens.clear();
                    });
                }
            }
            self.check(op);
        }
    }
}

/// Runs `f` in a job of `contextvars::rayon` on the global pool (with the feature; else
/// on a thread of its own, in a copy of the context).
fn job(f: impl FnOnce() + Send + 'static) {
    #[cfg(feature = "rayon")]
    contextvars::rayon::join(f, || ());
    #[cfg(not(feature = "rayon"))]
    contextvars::thread::spawn(f).join().unwrap();
}

#[test]
fn the_variables_are_served_by_the_cache() {
    // Ids are assigned on first use; the cache serves inline variables' ids below 64 and
    // boxed ones' from 80 to 127 (`engine::thread`).
    assert!(A.id().as_u64() < 64 && B.id().as_u64() < 64);
    for id in [S.id().as_u64(), E.id().as_u64()] {
        assert!((80..128).contains(&id), "{id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn reads_show_what_the_model_shows(ops in prop::collection::vec(op(), 0..14)) {
        std::thread::spawn(move || {
            let mut runner = Runner::new(Bindings::new());
            runner.exec(&ops);
            runner.tokens.clear();
            for var in 0..VARS {
                assert_eq!(read(var), model_read(&runner.frame, var));
            }
        })
        .join()
        .map_err(|_| TestCaseError::fail("a read differed from the model (see the panic)"))?;
    }
}

context_var! {
    /// Read only by `reads_after_the_teardown_of_a_thread_inside_a_scope_see_defaults`.
    static AT_EXIT: u64;
    /// Its boxed twin.
    static AT_EXIT_NAME: String;
}

/// Reads both `AT_EXIT` variables when the thread-locals of the thread that made it are
/// destroyed, and prints what it found.
struct ReadAtExit;

impl Drop for ReadAtExit {
    fn drop(&mut self) {
        eprintln!(
            "at exit: {:?} {:?}",
            AT_EXIT.try_get().ok(),
            AT_EXIT_NAME.try_get().ok()
        );
    }
}

thread_local! {
    static READ_AT_EXIT: ReadAtExit = const { ReadAtExit };
}

/// `std::process::exit` inside a scope runs the thread-local destructors with the scope's
/// call still on the stack: the crate's teardown empties the chain of records and drops
/// the frame, and a destructor that runs after it must read defaults, not the scope's
/// values from the cache (for the boxed one, a binding already freed). Run in a child
/// process (this test binary again), since it exits.
#[test]
#[cfg_attr(miri, ignore = "spawns a process")]
fn reads_after_the_teardown_of_a_thread_inside_a_scope_see_defaults() {
    const CHILD: &str = "CONTEXTVARS_READ_CACHE_EXIT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // Registered before the crate's teardown guard (registered by the first set or
        // scope), so destroyed after it.
        READ_AT_EXIT.with(|_| ());
        let _outer = AT_EXIT.set(1);
        AT_EXIT_NAME.scope("x".to_owned(), || {
            AT_EXIT.scope(7, || {
                assert_eq!((AT_EXIT.get(), AT_EXIT_NAME.get()), (7, "x".to_owned()));
                std::process::exit(0);
            })
        });
        unreachable!("the scope exits the process");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reads_after_the_teardown_of_a_thread_inside_a_scope_see_defaults",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("at exit: None None"), "{stderr}");
}

/// Hostile readers and values against the cache (from a review of the boxed cache): a
/// `Clone` that replaces the value being lent, scope records lent and then flushed,
/// destructors that read and set during resets, scope ends and thread exit, and the
/// cached absence of a boxed variable across a snapshot that empties in place. Each
/// passes under Miri.
mod hostile {
    use contextvars::{Context, context_var, copy_context};

    /// A value whose `Clone` (run by `get` while the value is lent) replaces it.
    #[derive(Debug, PartialEq)]
    struct Evil(u64, Box<u64>);

    context_var! {
        static S: String;
        static OTHER: u64;
        static EVIL: Evil;
        static D: Dropper;
    }

    impl Clone for Evil {
        fn clone(&self) -> Self {
            if self.0 < 5 {
                // Replace the binding being lent (the token dropped: the value stays),
                // read it again.
                drop(EVIL.set(Evil(self.0 + 10, Box::new(self.0 + 10))));
                let _ = EVIL.with(|e| e.0);
                let t = OTHER.set(self.0);
                OTHER.reset(t).unwrap();
                Context::new().run(|| assert!(!EVIL.is_set()));
            }
            Evil(self.0, Box::new(*self.1))
        }
    }

    /// A value whose `Drop` reads, and for 1 sets, variables.
    #[derive(Debug)]
    struct Dropper(u64);
    impl Drop for Dropper {
        fn drop(&mut self) {
            let _ = S.try_get();
            let _ = D.try_with(|d| d.0);
            if self.0 == 1
                && let Ok(token) = S.try_set("from drop".into())
            {
                drop(token);
            }
        }
    }

    #[test]
    fn clone_replaces_lent() {
        std::thread::spawn(|| {
            let _t = OTHER.set(0);
            drop(EVIL.set(Evil(1, Box::new(1))));
            assert_eq!(EVIL.get().0, 1); // fill (clone replaces)
            assert_eq!(EVIL.get().0, 11); // hit
            assert_eq!(*EVIL.get().1, 11);
            drop(EVIL.set(Evil(2, Box::new(2))));
            assert_eq!(EVIL.get().0, 2); // hit from rebound slot, clone replaces
            assert_eq!(*EVIL.get().1, 12);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn scope_record_lent_then_flushed() {
        std::thread::spawn(|| {
            let _t = OTHER.set(0);
            let _ = S.try_get(); // UNBOUND
            S.scope("a".into(), || {
                S.with(|a| {
                    let t = OTHER.set(1); // flush
                    let t2 = S.set("b".into());
                    assert_eq!(S.get(), "b");
                    S.with(|b| assert_eq!(b, "b"));
                    S.reset(t2).unwrap();
                    OTHER.reset(t).unwrap();
                    assert_eq!(a, "a");
                    S.scope("c".into(), || {
                        S.with(|c| {
                            assert_eq!(c, "c");
                            drop(S.set("d".into()));
                            assert_eq!(S.get(), "d");
                        });
                    });
                    assert_eq!(S.get(), "a");
                    assert_eq!(a, "a");
                });
                assert_eq!(S.get(), "a");
            });
            assert!(S.try_get().is_err());
            let c = copy_context();
            S.scope("x".into(), || {
                c.run(|| assert!(S.try_get().is_err()));
                assert_eq!(S.get(), "x");
            });
            assert!(S.try_get().is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn drop_reads_and_sets() {
        std::thread::spawn(|| {
            let _t = OTHER.set(0);
            let _ = S.try_get();
            let t = D.set(Dropper(1));
            let _ = D.with(|d| d.0);
            let t2 = D.set(Dropper(2));
            let _ = D.with(|d| d.0);
            D.reset(t2).unwrap();
            let _ = D.with(|d| d.0);
            D.reset(t).unwrap();
            let _ = S.try_get();
            assert!(D.try_with(|d| d.0).is_err());
            D.scope(Dropper(1), || {
                let _ = D.with(|d| d.0);
            });
            let _ = S.try_get();
            let _ = D.try_with(|d| d.0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn thread_exit_with_bindings() {
        std::thread::spawn(|| {
            let _ = S.try_get();
            drop(D.set(Dropper(1)));
            drop(S.set("x".into()));
            let _ = S.get();
            let _ = D.with(|d| d.0);
        })
        .join()
        .unwrap();
    }

    context_var! {
        static S2: String;
    }

    #[test]
    fn unbound_across_empty_root() {
        std::thread::spawn(|| {
            let t = OTHER.set(1);
            assert!(S.try_get().is_err()); // UNBOUND for S
            assert!(S2.try_get().is_err()); // UNBOUND for S2
            OTHER.reset(t).unwrap(); // map empties in place: root null, epoch kept
            S2.scope("z".into(), || {
                assert_eq!(S2.get(), "z");
                assert!(S.try_get().is_err());
                let t = S.set("y".into()); // flush with null scoped_root, no new epoch
                assert_eq!(S.get(), "y");
                assert_eq!(S2.get(), "z");
                let c = copy_context();
                Context::new().run(|| assert!(S.try_get().is_err()));
                c.run(|| assert_eq!(S.get(), "y"));
                S.reset(t).unwrap();
                assert!(S.try_get().is_err());
                assert_eq!(S2.get(), "z");
            });
            assert!(S2.try_get().is_err());
            assert!(S.try_get().is_err());
            let c = Context::new().with_value(&S, "w".to_string());
            c.run(|| {
                assert_eq!(S.get(), "w");
                S2.scope("q".into(), || assert_eq!(S.get(), "w"));
            });
            assert!(S.try_get().is_err());
        })
        .join()
        .unwrap();
    }
}
