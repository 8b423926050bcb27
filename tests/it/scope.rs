//! `ContextVar::scope`: a scope's binding lives on its call's stack while only reads
//! happen, and becomes a real set (a *flush*) before anything else the engine does. These
//! tests check that every kind of "anything else" sees what an eager set would have
//! shown, that the scope's end restores the state before it either way, and that a
//! scope's value never reaches other work. (`differential`'s random programs nest every
//! operation inside scopes too, against the plain model.)

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use contextvars::{Context, ContextVar, context_var, copy_context};

use contextvars::future::ContextFutureExt;

use crate::isolated;

/// Runs `check` in each kind of frame a scope can start in, each starting empty: a
/// thread's own base frame and a future's poll (where the scope's binding stays on the
/// stack while only reads happen), and `Context::run` (whose `Context` is a handle that
/// sees every set: there the scope sets for real at once).
fn in_every_frame(check: impl Fn() + Send + Sync) {
    thread::scope(|s| {
        s.spawn(&check);
    });
    thread::scope(|s| {
        s.spawn(|| {
            // The copy of a fresh thread's context is empty.
            let polled = std::future::poll_fn(|_| {
                check();
                std::task::Poll::Ready(())
            })
            .in_copied_context();
            poll_to_completion(polled);
        });
    });
    isolated(&check);
}

/// Polls `future` to completion on this thread (it never waits here).
fn poll_to_completion<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
    }
}

context_var! {
    /// Inline (a `static` of a small `Copy` type).
    static ID: u64;
    /// Boxed.
    static NAME: String;
    /// Another inline one, never scoped: read through the frame's snapshot while a
    /// scope's records are linked.
    static OTHER: u32;
}

/// Boxed, through the expression form.
static COUNT: ContextVar<u64> = contextvars::context_var!(u64, "count");

#[test]
fn reads_inside_see_the_value_and_the_end_restores_the_state_before() {
    let check = || {
        let _other = OTHER.set(5);
        let _id = ID.set(1);
        ID.scope(2, || {
            assert_eq!(ID.get(), 2);
            assert_eq!(
                OTHER.get(),
                5,
                "a variable no scope binds: the frame's value"
            );
            assert!(!NAME.is_set());
            assert_eq!(NAME.get_or("none".into()), "none");
            NAME.scope("ada".into(), || {
                assert_eq!(NAME.with(String::len), 3);
                assert_eq!(ID.with_or(&0, |id| *id), 2);
                COUNT.scope(7, || assert_eq!((ID.get(), COUNT.get()), (2, 7)));
                ID.scope(3, || assert_eq!(ID.get(), 3));
                assert_eq!(ID.get(), 2);
            });
            assert!(!NAME.is_set());
        });
        assert_eq!(ID.get(), 1);
        assert!(!COUNT.is_set());
    };
    in_every_frame(check);
    // In an empty context: the frame has no snapshot at all.
    in_every_frame(|| {
        ID.scope(4, || assert_eq!(ID.get(), 4));
        assert!(!ID.is_set());
    });
}

#[test]
fn a_copy_inside_includes_every_scope_and_keeps_it() {
    in_every_frame(|| {
        let _id = ID.set(1);
        let copies = ID.scope(2, || {
            NAME.scope("inner".into(), || {
                ID.scope(3, || {
                    let copy = copy_context();
                    // The flush made them real; reads go on seeing the same values.
                    assert_eq!((ID.get(), NAME.get()), (3, "inner".to_string()));
                    (copy, Context::current())
                })
            })
        });
        let (copy, current) = copies;
        copy.run(|| assert_eq!((ID.get(), NAME.get()), (3, "inner".to_string())));
        assert_eq!(ID.get(), 1);
        assert!(!NAME.is_set());
        // The handle is the frame's own context object: it sees the frame as it is now.
        assert_eq!(current.snapshot().get(&ID), Some(&1));
        assert_eq!(current.snapshot().get(&NAME), None);
    });
}

#[test]
fn a_set_inside_is_undone_by_the_end_as_scoped_set_would() {
    in_every_frame(|| {
        let before = ID.set(1);
        let token = ID.scope(2, || {
            let token = ID.set(3);
            assert_eq!(ID.get(), 3);
            COUNT.scope(9, || assert_eq!(ID.get(), 3));
            token
        });
        // The scope's end restored the value from before it; the inner token is stale
        // and restores the scope's value, as in Python.
        assert_eq!(ID.get(), 1);
        ID.reset(token).unwrap();
        assert_eq!(ID.get(), 2);
        ID.reset(before).unwrap();
        assert!(!ID.is_set());
    });
}

#[test]
fn frames_entered_inside_do_not_see_it_unless_they_copied_it() {
    in_every_frame(|| {
        let fresh = Context::new();
        ID.scope(2, || {
            fresh.run(|| assert!(!ID.is_set()));
            assert_eq!(ID.get(), 2, "the scope's value again after the run");
            copy_context().run(|| {
                assert_eq!(ID.get(), 2);
                // A scope inside the copy's run is the copy's.
                ID.scope(3, || assert_eq!(ID.get(), 3));
                assert_eq!(ID.get(), 2);
            });
            let from_thread = contextvars::thread::spawn(|| ID.get()).join().unwrap();
            assert_eq!(from_thread, 2);
            let fresh_thread = thread::spawn(|| ID.try_get().is_err()).join().unwrap();
            assert!(fresh_thread);
        });
        assert!(!ID.is_set());
        fresh.run(|| assert!(!ID.is_set()));
    });
}

#[test]
fn an_unwinding_scope_restores_the_state_linked_or_flushed() {
    in_every_frame(|| {
        let _id = ID.set(1);
        let unwound = catch_unwind(AssertUnwindSafe(|| ID.scope(2, || panic!("linked"))));
        assert!(unwound.is_err());
        assert_eq!(ID.get(), 1);
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            ID.scope(2, || {
                NAME.scope("x".into(), || {
                    let _copy = copy_context();
                    panic!("flushed")
                })
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(ID.get(), 1);
        assert!(!NAME.is_set());
        // The frame is usable: a scope and a set work as before.
        ID.scope(3, || assert_eq!(ID.get(), 3));
        let token = ID.set(4);
        ID.reset(token).unwrap();
        assert_eq!(ID.get(), 1);
    });
}

/// A value whose `Drop` records what the context held when it ran.
struct Witness {
    seen: Arc<Mutex<Vec<Option<u64>>>>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.seen.lock().unwrap().push(ID.try_get().ok());
        // A destructor may scope too.
        ID.scope(99, || assert_eq!(ID.get(), 99));
    }
}

contextvars::context_var! {
    static WITNESS: Arc<Witness>;
}

#[test]
fn the_value_is_dropped_after_the_end_with_the_state_restored() {
    for flush in [false, true] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        in_every_frame(|| {
            let _id = ID.set(1);
            ID.scope(2, || {
                let witness = Arc::new(Witness { seen: seen.clone() });
                WITNESS.scope(witness, || {
                    if flush {
                        drop(copy_context());
                    }
                    assert!(WITNESS.is_set());
                });
            });
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [Some(2), Some(2), Some(2)],
            "flushed: {flush}"
        );
    }
}

#[test]
fn a_borrowed_value_outlives_a_flush_inside_the_borrow() {
    in_every_frame(|| {
        NAME.scope("borrowed".to_string(), || {
            NAME.with(|name| {
                // Flushes: the record's value becomes a binding of the snapshot too.
                let copy = copy_context();
                ID.scope(5, || assert_eq!(name, "borrowed"));
                let token = NAME.set("replaced".into());
                assert_eq!(name, "borrowed");
                NAME.reset(token).unwrap();
                copy.run(|| assert_eq!(NAME.get(), "borrowed"));
            });
        });
        assert!(!NAME.is_set());
    });
}

#[test]
fn refused_where_a_set_is_refused_before_running_f() {
    thread::spawn(|| {
        contextvars::thread::declare_pool_thread("scope-test-pool");
        let ran = AtomicUsize::new(0);
        let error = ID
            .try_scope(1, || ran.fetch_add(1, Ordering::Relaxed))
            .unwrap_err();
        assert!(error.to_string().contains("scope-test-pool"), "{error}");
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert!(!ID.is_set());
        // A refused scope drops its value (it is made into an entry only once allowed).
        let value = Arc::new(String::from("refused"));
        assert!(SHARED.try_scope(Arc::clone(&value), || ()).is_err());
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the refused value was dropped"
        );
        // Inside a context of its own, the same thread may scope.
        isolated(|| ID.scope(2, || assert_eq!(ID.get(), 2)));
    })
    .join()
    .unwrap();
}

contextvars::context_var! {
    /// Boxed, with a value whose drop a test counts.
    static SHARED: Arc<String>;
}

/// In a module named `rayon`: miri runs these under Tree Borrows (crossbeam-epoch, under
/// rayon, breaks Stacked Borrows; see `.ci/run`).
#[cfg(feature = "rayon")]
mod rayon {
    use super::*;

    #[test]
    fn parallel_work_inside_sees_the_value_and_items_do_not_share_scopes() {
        use ::rayon::prelude::*;
        use contextvars::rayon::ParallelIteratorExt;
        in_every_frame(|| {
            ID.scope(7, || {
                let seen: Vec<u64> = (0..64u64)
                    .into_par_iter()
                    .in_copied_context()
                    .map(|i| {
                        assert_eq!(ID.get(), 7);
                        ID.scope(i, || assert_eq!(ID.get(), i));
                        ID.get()
                    })
                    .collect();
                assert!(seen.iter().all(|&id| id == 7));
                let (a, b) = contextvars::rayon::join(|| ID.get(), || ID.get());
                assert_eq!((a, b), (7, 7));
            });
            assert!(!ID.is_set());
        });
    }
}

#[test]
fn handles_of_the_running_context_see_it() {
    // `Context::run`: the `Context` is a handle of the running frame's object.
    let ctx = Context::new();
    ctx.run(|| {
        ID.scope(1, || {
            assert_eq!(ctx.snapshot().get(&ID), Some(&1));
            assert_eq!(ctx.snapshot(), Context::current().snapshot());
        });
        assert_eq!(ctx.snapshot().get(&ID), None);
    });
    // A thread's own context, with a handle taken before the scope, read from another
    // thread that synchronises with this one.
    thread::spawn(|| {
        let me = Context::current();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        thread::scope(|s| {
            let me = &me;
            s.spawn(move || {
                rx.recv().unwrap();
                assert_eq!(me.snapshot().get(&ID), Some(&2));
                done_tx.send(()).unwrap();
            });
            ID.scope(2, || {
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
            });
        });
        assert_eq!(me.snapshot().get(&ID), None);
        // Without a handle left, the frame's object is its own: a scope stays on the
        // stack, and a new handle flushes it.
        drop(me);
        ID.scope(3, || {
            assert_eq!(Context::current().snapshot().get(&ID), Some(&3));
        });
        assert!(!ID.is_set());
    })
    .join()
    .unwrap();
}

/// Random programs run twice: with `scope` (its records on the stack) and with the plain
/// model of a scope, a `scoped_set` guard around the body (a set and a reset). Every
/// observation must agree.
mod against_scoped_set {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Scope { var: u8, value: u8, body: Vec<Op> },
        Set { var: u8, value: u8 },
        ResetNewest,
        Get,
        Copy,
        RunCopy { body: Vec<Op> },
        RunFresh { body: Vec<Op> },
        Current,
        Spawn { body: Vec<Op> },
    }

    fn op() -> impl Strategy<Value = Op> {
        let leaf = prop_oneof![
            (0..3u8, 0..4u8).prop_map(|(var, value)| Op::Set { var, value }),
            Just(Op::ResetNewest),
            Just(Op::Get),
            Just(Op::Copy),
            Just(Op::Current),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                3 => (0..3u8, 0..4u8, prop::collection::vec(inner.clone(), 0..6))
                    .prop_map(|(var, value, body)| Op::Scope { var, value, body }),
                1 => prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|body| Op::RunCopy { body }),
                1 => prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|body| Op::RunFresh { body }),
                1 => prop::collection::vec(inner, 0..3).prop_map(|body| Op::Spawn { body }),
            ]
        })
    }

    /// Which implementation of a scope to run.
    #[derive(Clone, Copy)]
    enum Scopes {
        OnTheStack,
        SetAndReset,
    }

    /// What every variable reads now, as text.
    fn reads() -> String {
        format!(
            "{:?} {:?} {:?}",
            ID.try_get().ok(),
            NAME.try_get().ok(),
            COUNT.try_get().ok()
        )
    }

    fn snapshot_text(ctx: &Context) -> String {
        let snapshot = ctx.snapshot();
        format!(
            "{:?} {:?} {:?}",
            snapshot.get(&ID),
            snapshot.get(&NAME),
            snapshot.get(&COUNT)
        )
    }

    struct Runner {
        how: Scopes,
        seen: Vec<String>,
        tokens: Vec<Box<dyn FnOnce() -> bool>>,
    }

    impl Runner {
        fn set(&mut self, var: u8, value: u8) {
            let value = u64::from(value);
            let reset: Box<dyn FnOnce() -> bool> = match var {
                0 => {
                    let token = ID.set(value);
                    Box::new(move || ID.reset(token).is_ok())
                }
                1 => {
                    let token = NAME.set(format!("n{value}"));
                    Box::new(move || NAME.reset(token).is_ok())
                }
                _ => {
                    let token = COUNT.set(value);
                    Box::new(move || COUNT.reset(token).is_ok())
                }
            };
            self.tokens.push(reset);
        }

        fn scope(&mut self, var: u8, value: u8, body: &[Op]) {
            let value = u64::from(value);
            let how = self.how;
            let mut run = || self.exec(body);
            match (how, var) {
                (Scopes::OnTheStack, 0) => ID.scope(value, run),
                (Scopes::OnTheStack, 1) => NAME.scope(format!("n{value}"), run),
                (Scopes::OnTheStack, _) => COUNT.scope(value, run),
                (Scopes::SetAndReset, 0) => {
                    let _guard = ID.scoped_set(value);
                    run();
                }
                (Scopes::SetAndReset, 1) => {
                    let _guard = NAME.scoped_set(format!("n{value}"));
                    run();
                }
                (Scopes::SetAndReset, _) => {
                    let _guard = COUNT.scoped_set(value);
                    run();
                }
            }
        }

        fn exec(&mut self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::Scope { var, value, body } => self.scope(*var, *value, body),
                    Op::Set { var, value } => self.set(*var, *value),
                    Op::ResetNewest => {
                        if let Some(reset) = self.tokens.pop() {
                            let ok = reset();
                            self.seen.push(format!("reset {ok}"));
                        }
                    }
                    Op::Get => {
                        let now = reads();
                        self.seen.push(now);
                    }
                    Op::Copy => {
                        let copy = copy_context();
                        self.seen.push(format!("copy {}", snapshot_text(&copy)));
                    }
                    Op::RunCopy { body } => {
                        let copy = copy_context();
                        // Tokens made inside stay inside: they belong to the copy.
                        let outer = std::mem::take(&mut self.tokens);
                        copy.run(|| self.exec(body));
                        self.tokens = outer;
                        self.seen
                            .push(format!("after run {}", snapshot_text(&copy)));
                    }
                    Op::RunFresh { body } => {
                        let fresh = Context::new();
                        let outer = std::mem::take(&mut self.tokens);
                        fresh.run(|| self.exec(body));
                        self.tokens = outer;
                        self.seen
                            .push(format!("after fresh run {}", snapshot_text(&fresh)));
                    }
                    Op::Current => {
                        let current = Context::current();
                        self.seen
                            .push(format!("current {}", snapshot_text(&current)));
                    }
                    Op::Spawn { body } => {
                        let body = body.clone();
                        let how = self.how;
                        let seen = contextvars::thread::spawn(move || {
                            let mut runner = Runner {
                                how,
                                seen: Vec::new(),
                                tokens: Vec::new(),
                            };
                            runner.exec(&body);
                            runner.seen
                        })
                        .join()
                        .unwrap();
                        self.seen.extend(seen);
                    }
                }
                self.seen.push(reads());
            }
        }
    }

    /// Runs `ops` in a fresh thread's own context, with scopes made `how`.
    fn observe(ops: &[Op], how: Scopes) -> Vec<String> {
        let ops = ops.to_vec();
        thread::spawn(move || {
            let mut runner = Runner {
                how,
                seen: Vec::new(),
                tokens: Vec::new(),
            };
            runner.exec(&ops);
            // Dropping the tokens keeps their bindings: the end state is compared too.
            runner.tokens.clear();
            runner.seen.push(reads());
            runner.seen
        })
        .join()
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn scopes_on_the_stack_show_what_set_and_reset_show(
            ops in prop::collection::vec(op(), 0..12)
        ) {
            let on_the_stack = observe(&ops, Scopes::OnTheStack);
            let set_and_reset = observe(&ops, Scopes::SetAndReset);
            prop_assert_eq!(on_the_stack, set_and_reset);
        }
    }
}

/// A task's frame with a context object whose handle a poll took and kept: a later poll's
/// scope must be seen through that handle (the frame's object is observed).
#[test]
fn a_handle_a_task_kept_from_an_earlier_poll_sees_the_scope() {
    thread::spawn(|| {
        let handle: std::cell::RefCell<Option<Context>> = std::cell::RefCell::new(None);
        let mut polls = 0;
        let task = std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                *handle.borrow_mut() = Some(Context::current());
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let kept = handle.borrow();
            let kept = kept.as_ref().unwrap();
            ID.scope(7, || assert_eq!(kept.snapshot().get(&ID), Some(&7)));
            assert_eq!(kept.snapshot().get(&ID), None);
            std::task::Poll::Ready(())
        })
        .in_copied_context();
        poll_to_completion(task);
    })
    .join()
    .unwrap();
}

/// A scope's value is released when the scope ends, as a reset releases it in Python,
/// also while a read of another variable is in progress around the scope.
#[test]
fn the_value_is_released_at_the_end_even_inside_a_read() {
    thread::spawn(|| {
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        contextvars::context_var! {
            static COUNTED: Arc<Counted>;
        }
        let _name = NAME.set("outer".into());
        NAME.with(|_| {
            COUNTED.scope(Arc::new(Counted(dropped.clone())), || {});
            assert_eq!(dropped.load(Ordering::SeqCst), 1);
        });
    })
    .join()
    .unwrap();
}

/// Scopes nested deeper than the chain holds set at once: reads at every depth, and the
/// ends, still agree with the plain model.
#[test]
fn deeply_nested_scopes_read_and_end_right() {
    fn nest(depth: u64, max: u64) {
        if depth == max {
            assert_eq!(ID.get(), max);
            assert_eq!(OTHER.get(), 5);
            let copy = copy_context();
            copy.run(|| assert_eq!(ID.get(), max));
            return;
        }
        ID.scope(depth + 1, || {
            assert_eq!(ID.get(), depth + 1);
            nest(depth + 1, max);
            assert_eq!(ID.get(), depth + 1);
        });
    }
    in_every_frame(|| {
        let _other = OTHER.set(5);
        for max in [1, 7, 8, 9, 30] {
            nest(0, max);
            assert!(!ID.is_set());
        }
    });
}
