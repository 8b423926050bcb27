//! Threads: a fresh thread starts empty, contexts move and are shared between threads,
//! one context is entered by one thread at a time, and handles outlive their thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;

use contextvars::{Context, ContextVar, context_var, copy_context};

use crate::{isolated, iterations};

#[test]
fn fresh_thread_starts_empty() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    static D: ContextVar<i32> = contextvars::context_var!(i32, "d", default 5);
    isolated(|| {
        let _keep = V.set(1);
        let _keep_d = D.set(6);
        thread::spawn(|| {
            assert!(V.try_get().is_err());
            assert!(!V.is_set());
            assert_eq!(D.get(), 5);
            assert!(copy_context().snapshot().is_empty());
            assert!(Context::current().snapshot().is_empty());
        })
        .join()
        .unwrap();
        assert_eq!((V.get(), D.get()), (1, 6));
    });
}

#[test]
fn many_threads_set_the_same_var_independently() {
    // CPython's `test_context_threads_1`, with `yield_now` instead of sleeps and more
    // rounds.
    static V: ContextVar<usize> = contextvars::context_var!(usize, "v");
    let rounds = iterations(200);
    thread::scope(|scope| {
        for num in 0..10 {
            scope.spawn(move || {
                for i in 0..rounds {
                    let token = V.set(num * 1_000_000 + i);
                    thread::yield_now();
                    assert_eq!(V.get(), num * 1_000_000 + i);
                    if i % 2 == 0 {
                        V.reset(token).unwrap();
                    } else {
                        drop(token);
                    }
                }
            });
        }
    });
}

#[test]
fn copy_context_moved_into_a_thread() {
    static V: ContextVar<String> = contextvars::context_var!(String, "v");
    isolated(|| {
        let _keep = V.set("parent".to_string());
        let ctx = copy_context();
        let (seen, ctx) = thread::spawn(move || {
            let seen = ctx.run(|| {
                let seen = V.get();
                drop(V.set("child".to_string()));
                seen
            });
            (seen, ctx)
        })
        .join()
        .unwrap();
        assert_eq!(seen, "parent");
        // The child's set stayed in the copy, not in the parent.
        assert_eq!(ctx.snapshot().get(&V).cloned().as_deref(), Some("child"));
        assert_eq!(V.get(), "parent");
    });
}

#[test]
fn one_context_shared_between_threads() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    let set_done = Barrier::new(2);
    let checked = Barrier::new(2);
    thread::scope(|scope| {
        scope.spawn(|| {
            ctx.run(|| {
                drop(V.set(1));
                set_done.wait();
                checked.wait(); // stay inside while the other thread checks
                drop(V.set(2));
            });
        });
        scope.spawn(|| {
            set_done.wait();
            // The running thread's set is visible through the shared object.
            assert_eq!(ctx.snapshot().get(&V).cloned(), Some(1));
            assert!(ctx.snapshot().contains(&V));
            assert_eq!(ctx.snapshot().len(), 1);
            // A second, simultaneous entry fails (CPython: "is already entered").
            let error = ctx.try_run(|| ()).unwrap_err();
            assert!(error.is_already_entered());
            assert!(error.to_string().contains("is already entered"));
            checked.wait();
        });
    });
    // Both threads are done: the last set is there and the context can be entered.
    assert_eq!(ctx.snapshot().get(&V).cloned(), Some(2));
    assert_eq!(ctx.run(|| V.get()), 2);
}

#[test]
fn one_context_run_by_threads_in_turn() {
    static N: ContextVar<usize> = contextvars::context_var!(usize, "n", default 0);
    let ctx = Arc::new(Context::new());
    let rounds = iterations(50);
    for _ in 0..rounds {
        let ctx = Arc::clone(&ctx);
        thread::spawn(move || ctx.run(|| drop(N.set(N.get() + 1))))
            .join()
            .unwrap();
    }
    assert_eq!(ctx.snapshot().get(&N).cloned(), Some(rounds));
}

#[test]
fn contended_entry_is_exclusive() {
    // Many threads race to run one context; whoever gets in increments twice with a
    // yield in between. Exclusive entry means no increment is lost.
    static N: ContextVar<usize> = contextvars::context_var!(usize, "n", default 0);
    let ctx = Context::new();
    let attempts = iterations(200);
    let entered: usize = thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut entered = 0;
                    for _ in 0..attempts {
                        let result = ctx.try_run(|| {
                            drop(N.set(N.get() + 1));
                            thread::yield_now();
                            drop(N.set(N.get() + 1));
                        });
                        match result {
                            Ok(()) => entered += 1,
                            Err(error) => assert!(error.is_already_entered()),
                        }
                    }
                    entered
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(entered >= 1);
    assert_eq!(ctx.snapshot().get(&N).cloned(), Some(2 * entered));
}

#[test]
fn current_handle_read_from_another_thread() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let ctx = Context::new();
    ctx.run(|| {
        let here = Context::current();
        drop(V.set(1));
        thread::scope(|scope| {
            scope.spawn(|| {
                assert_eq!(here.snapshot().get(&V).cloned(), Some(1));
                assert!(here.try_run(|| ()).unwrap_err().is_already_entered());
            });
        });
        drop(V.set(2));
        thread::scope(|scope| {
            scope.spawn(|| assert_eq!(here.snapshot().get(&V).cloned(), Some(2)));
        });
        // Inside `ctx.run`, the handle is `ctx` itself.
        assert_eq!(ctx.snapshot().get(&V).cloned(), Some(2));
    });
}

#[test]
fn current_handle_of_thread_base_context_outlives_the_thread() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    static W: ContextVar<i32> = contextvars::context_var!(i32, "w");
    let (to_main, from_thread) = mpsc::channel();
    let (to_thread, from_main) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        drop(V.set(1));
        let handle = Context::current();
        drop(W.set(2)); // after the handle: seen through it
        to_main.send(handle).unwrap();
        from_main.recv().unwrap();
        drop(V.set(3));
        // A handle taken and dropped, then a set nobody observes, then exit.
        drop(Context::current());
        drop(W.set(4));
    });
    let handle = from_thread.recv().unwrap();
    assert_eq!(
        (
            handle.snapshot().get(&V).cloned(),
            handle.snapshot().get(&W).cloned()
        ),
        (Some(1), Some(2))
    );
    // The owner thread is running in it: no one else can enter it.
    assert!(handle.try_run(|| ()).unwrap_err().is_already_entered());
    to_thread.send(()).unwrap();
    owner.join().unwrap();
    // The owner exited: the handle has its last bindings and can be run here.
    assert_eq!(
        (
            handle.snapshot().get(&V).cloned(),
            handle.snapshot().get(&W).cloned()
        ),
        (Some(3), Some(4))
    );
    assert_eq!(handle.run(|| (V.get(), W.get())), (3, 4));
    handle.run(|| drop(V.set(5)));
    assert_eq!(handle.snapshot().get(&V).cloned(), Some(5));
}

#[test]
fn current_handle_of_a_run_is_enterable_after_the_run() {
    static V: ContextVar<i32> = contextvars::context_var!(i32, "v");
    let handle = Context::new().run(|| {
        drop(V.set(1));
        Context::current()
    });
    assert_eq!(handle.snapshot().get(&V).cloned(), Some(1));
    let handle = thread::spawn(move || {
        handle.run(|| drop(V.set(2)));
        handle
    })
    .join()
    .unwrap();
    assert_eq!(handle.snapshot().get(&V).cloned(), Some(2));
}

#[test]
fn snapshots_and_equality_across_threads() {
    context_var! {
        static NAME: String;
    }
    let ctx = Context::new().with_value(&NAME, "a".to_string());
    let snapshot = ctx.snapshot();
    let (snapshot, copy) = thread::spawn(move || {
        let copy = Context::new().with_value(&NAME, "a".to_string());
        (snapshot, copy)
    })
    .join()
    .unwrap();
    assert_eq!(snapshot, copy.snapshot());
    assert_eq!(ctx, copy);
}

/// A child thread reads through its copy of the parent's snapshot and drops the copy; the
/// parent, now the node's only holder again, keeps setting and resetting in place while
/// the child may still be finishing. The in-place write must happen after the child's
/// reads (the child's `Release` decrement, the parent's `Acquire`): under ThreadSanitizer
/// this failed every time while `unique_mut` synchronised through a fence, which TSAN does
/// not model (`build.rs`).
#[test]
fn in_place_sets_after_a_child_dropped_its_copy() {
    static V: ContextVar<u64> = contextvars::context_var!(u64, "in_place_after_child");
    // The test thread's own context: a private frame, where sets are in place (inside
    // `isolated` every set would path-copy, the context object being shared).
    //
    // The child raises a `Relaxed` flag after its read, and the parent waits for it and a
    // moment more (the child drops its copy as its closure returns) before it sets: so the
    // in-place write goes into the very node the child read. Neither a relaxed flag nor a
    // sleep is synchronisation to ThreadSanitizer, so the only edge it can see is the
    // reference count's (the `Release` decrement, and `unique_mut`'s `Acquire`).
    thread::spawn(|| {
        drop(V.set(1));
        for round in 0..iterations(20) {
            let read = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&read);
            let child = contextvars::thread::spawn(move || {
                let value = V.get();
                flag.store(true, Ordering::Relaxed);
                value
            });
            while !read.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            thread::sleep(std::time::Duration::from_millis(1));
            for i in 0..iterations(200) as u64 {
                let token = V.set(i);
                V.reset(token).expect("same context");
            }
            assert_eq!(child.join().expect("child"), 1, "round {round}");
        }
    })
    .join()
    .expect("test thread");
}
