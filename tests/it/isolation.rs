//! Isolation in async code (issue 12): a `set` that would bind in a tokio worker thread's
//! own context while a task is being polled is refused with an error that names the
//! fixes, and the forms that give a task a context of its own are not.

use contextvars::{Context, ContextVar, SetError};

use crate::expect_panic;

static REQUEST_ID: ContextVar<u64> = ContextVar::new("request_id");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime")
}

fn assert_unisolated(error: SetError) {
    assert!(error.is_unisolated_task(), "{error:?}");
    assert!(!error.is_access_error());
    assert_eq!(error.var_name(), "request_id");
    let text = error.to_string();
    for needle in [
        "\"request_id\"",
        "worker thread's own context",
        "contextvars::tower::ContextLayer",
        "contextvars::tokio::isolate_tasks",
        "contextvars::tokio::spawn",
        "in_current_context",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[test]
#[cfg_attr(miri, ignore)] // tokio's runtimes: nothing of ours miri does not see elsewhere
fn set_in_a_plain_task_is_refused_with_the_fixes() {
    let rt = runtime();
    let error = rt
        .block_on(rt.spawn(async { REQUEST_ID.try_set(1).map(drop) }))
        .expect("task")
        .expect_err("a plain task's set must be refused");
    assert_unisolated(error);
    // scoped_set and scope too, and the panicking forms say the same.
    let (scoped, scope, message) = rt
        .block_on(rt.spawn(async {
            let scoped = REQUEST_ID.try_scoped_set(2).map(drop).unwrap_err();
            let scope = REQUEST_ID.try_scope(3, || ()).unwrap_err();
            let message = expect_panic(|| drop(REQUEST_ID.set(4)));
            (scoped, scope, message)
        }))
        .expect("task");
    assert_unisolated(scoped);
    assert_unisolated(scope);
    assert!(
        message.contains("refused to set <ContextVar name=\"request_id\">"),
        "{message}"
    );
    // Nothing was bound on any worker.
    let leaked = rt
        .block_on(rt.spawn(async { REQUEST_ID.try_get().ok() }))
        .expect("task");
    assert_eq!(leaked, None);
}

#[test]
#[cfg_attr(miri, ignore)] // tokio's runtimes: nothing of ours miri does not see elsewhere
fn plain_spawn_blocking_is_refused_too() {
    let rt = runtime();
    let refused = rt
        .block_on(rt.spawn_blocking(|| REQUEST_ID.try_set(5).map(drop)))
        .expect("blocking task");
    assert_unisolated(refused.unwrap_err());
}

#[test]
#[cfg_attr(miri, ignore)] // tokio's runtimes: nothing of ours miri does not see elsewhere
fn tasks_with_a_context_of_their_own_may_set() {
    let rt = runtime();
    let seen = rt.block_on(async {
        // block_on's own future is not a task: it runs in the caller's context.
        let _token = REQUEST_ID.set(10);
        let wrapped = contextvars::tokio::spawn(async {
            drop(REQUEST_ID.set(11)); // the task's own context keeps it
            tokio::task::yield_now().await;
            REQUEST_ID.get()
        });
        let blocking = contextvars::tokio::spawn_blocking(|| {
            drop(REQUEST_ID.set(12));
            REQUEST_ID.get()
        });
        let scoped = tokio::spawn(REQUEST_ID.scope_future(13, async {
            tokio::task::yield_now().await;
            let before = REQUEST_ID.get();
            REQUEST_ID.scope(14, || (before, REQUEST_ID.get()))
        }));
        // A Context::run inside a plain task is a context of the task's own.
        let ran = tokio::spawn(async {
            let ctx = Context::new();
            ctx.run(|| REQUEST_ID.scope(15, || REQUEST_ID.get()))
        });
        (
            wrapped.await.unwrap(),
            blocking.await.unwrap(),
            scoped.await.unwrap(),
            ran.await.unwrap(),
            REQUEST_ID.get(),
        )
    });
    assert_eq!(seen, (11, 12, (13, 14), 15, 10));
}

#[test]
#[cfg_attr(miri, ignore)] // tokio's runtimes: nothing of ours miri does not see elsewhere
fn code_outside_tasks_is_unaffected() {
    // A plain thread, and a current-thread runtime's block_on.
    std::thread::spawn(|| {
        let _token = REQUEST_ID.set(20);
        assert_eq!(REQUEST_ID.get(), 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _token = REQUEST_ID.set(21);
            assert_eq!(REQUEST_ID.get(), 21);
        });
    })
    .join()
    .expect("thread");
}
