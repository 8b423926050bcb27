//! std threads and tokio tasks that start in the spawner's context.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::thread::{BuilderExt, ScopeExt, SpawnError};
use contextvars::{Context, ContextVar};

use crate::isolated;

static REQUEST: ContextVar<u64> = contextvars::context_var!(u64, "request");
static TENANT: ContextVar<&str> = contextvars::context_var!(&'static str, "tenant", default "none");

#[test]
fn thread_spawn_runs_in_a_copy() {
    isolated(|| {
        let token = REQUEST.set(1);
        let handle = contextvars::thread::spawn(|| {
            let seen = REQUEST.get();
            drop(REQUEST.set(2));
            (seen, REQUEST.get())
        });
        REQUEST.reset(token).unwrap(); // after the spawn: the copy was taken already
        assert_eq!(handle.join().unwrap(), (1, 2));
        assert!(!REQUEST.is_set());
        // A plain std thread starts empty, as in Python.
        let _token = REQUEST.set(3);
        assert!(!std::thread::spawn(|| REQUEST.is_set()).join().unwrap());
    });
}

#[test]
fn thread_spawn_in_uses_the_object() {
    let ctx = Arc::new(Context::new().with_value(&TENANT, "acme"));
    let checked = Arc::new(std::sync::Barrier::new(2));
    let handle = contextvars::thread::spawn_in(&ctx, {
        let checked = checked.clone();
        move || {
            checked.wait(); // stay in the context until the main thread has checked
            let tenant = TENANT.get();
            drop(REQUEST.set(7));
            tenant
        }
    });
    // Entered from the call until the thread ends: a second entry is an error, now.
    let again = contextvars::thread::try_spawn_in(&ctx, || ());
    assert!(again.unwrap_err().is_already_entered());
    assert!(ctx.try_run(|| ()).unwrap_err().is_already_entered());
    checked.wait();
    assert_eq!(handle.join().unwrap(), "acme");
    assert_eq!(
        ctx.snapshot().get(&REQUEST).cloned(),
        Some(7),
        "the child's set is kept by the object"
    );
    // Left again: it can be entered.
    ctx.run(|| assert_eq!(REQUEST.get(), 7));
}

#[test]
fn builder_spawns() {
    isolated(|| {
        let _token = REQUEST.set(11);
        let named = std::thread::Builder::new()
            .name("ctx-worker".into())
            .spawn_in_copied_context(|| {
                (
                    std::thread::current().name().map(str::to_owned),
                    REQUEST.get(),
                )
            })
            .unwrap();
        assert_eq!(named.join().unwrap(), (Some("ctx-worker".to_owned()), 11));

        let ctx = Context::new();
        let first = std::thread::Builder::new()
            .spawn_in_context(&ctx, || drop(REQUEST.set(12)))
            .unwrap();
        first.join().unwrap();
        assert_eq!(ctx.snapshot().get(&REQUEST).cloned(), Some(12));

        let held = ctx.copy();
        let blocker = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn_in_context(&held, || {
                blocker.wait(); // held entered until the main thread has checked
                blocker.wait();
            });
            blocker.wait();
            let error = std::thread::Builder::new()
                .spawn_in_context(&held, || ())
                .unwrap_err();
            assert!(matches!(error, SpawnError::AlreadyEntered(_)), "{error}");
            assert!(error.to_string().contains("already entered"), "{error}");
            let io: std::io::Error = error.into();
            assert_eq!(io.kind(), std::io::ErrorKind::ResourceBusy);
            assert!(s.try_spawn_in_context(&held, || ()).is_err());
            blocker.wait();
        });
        held.run(|| ()); // left when the scoped thread ended
    });
}

#[test]
fn scoped_threads() {
    isolated(|| {
        let _token = REQUEST.set(21);
        let counter = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn_in_copied_context(|| {
                    assert_eq!(REQUEST.get(), 21);
                    drop(REQUEST.set(22));
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
            let handle = std::thread::Builder::new()
                .spawn_scoped_in_copied_context(s, || REQUEST.get())
                .unwrap();
            assert_eq!(handle.join().unwrap(), 21);
        });
        assert_eq!(counter.load(Ordering::Relaxed), 4);
        assert_eq!(REQUEST.get(), 21);
    });
}

#[cfg(feature = "tokio")]
mod tokio_tasks {
    use super::*;
    use crate::iterations;
    use contextvars::tokio::JoinSetExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The test: 1,000+ concurrent tasks on a multi-thread runtime, each with its
    /// own request id across many yields and nested spawns; none ever sees another's.
    #[test]
    fn concurrent_tasks_keep_their_own_request_id() {
        let tasks = iterations(1_200) as u64;
        let yields = iterations(20);
        let checks = Arc::new(AtomicUsize::new(0));
        runtime().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for id in 0..tasks {
                let checks = checks.clone();
                REQUEST.scope(id, || {
                    set.spawn_in_copied_context(async move {
                        for round in 0..yields {
                            tokio::task::yield_now().await;
                            assert_eq!(REQUEST.get(), id, "task {id} round {round}");
                            checks.fetch_add(1, Ordering::Relaxed);
                        }
                        // Sets in the task stay in it, across awaits and worker moves.
                        drop(REQUEST.set(id + 1_000_000));
                        let child = contextvars::tokio::spawn(async move {
                            tokio::task::yield_now().await;
                            let seen = REQUEST.get();
                            drop(REQUEST.set(0)); // the child's own
                            seen
                        });
                        assert_eq!(child.await.unwrap(), id + 1_000_000);
                        let blocking = contextvars::tokio::spawn_blocking(|| REQUEST.get());
                        assert_eq!(blocking.await.unwrap(), id + 1_000_000);
                        tokio::task::yield_now().await;
                        assert_eq!(REQUEST.get(), id + 1_000_000);
                        id
                    });
                });
            }
            let mut done: Vec<u64> = set.join_all().await;
            done.sort_unstable();
            assert_eq!(done, (0..tasks).collect::<Vec<_>>());
        });
        assert_eq!(checks.load(Ordering::Relaxed), tasks as usize * yields);
    }

    #[test]
    fn spawn_blocking_sees_the_spawners_values() {
        isolated(|| {
            let _token = TENANT.set("blocking");
            let rt = runtime();
            let seen = rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                set.spawn_blocking_in_copied_context(|| TENANT.get());
                let direct = contextvars::tokio::spawn_blocking(|| TENANT.get())
                    .await
                    .unwrap();
                (direct, set.join_next().await.unwrap().unwrap())
            });
            assert_eq!(seen, ("blocking", "blocking"));
            // Plain tokio::spawn does not carry context.
            let plain = rt.block_on(async { tokio::spawn(async { TENANT.get() }).await });
            assert_eq!(plain.unwrap(), "none");
        });
    }

    #[test]
    fn spawn_local_inherits() {
        isolated(|| {
            let _token = TENANT.set("local");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let seen = local.block_on(&rt, async {
                let mut set = tokio::task::JoinSet::new();
                set.spawn_local_in_copied_context(async { TENANT.get() });
                let direct = contextvars::tokio::spawn_local(async { TENANT.get() })
                    .await
                    .unwrap();
                (direct, set.join_next().await.unwrap().unwrap())
            });
            assert_eq!(seen, ("local", "local"));
        });
    }
}
