//! Streams in their context: polled in it, isolated from the caller, dropped in it.

use std::sync::{Arc, Mutex};

use contextvars::{Context, ContextVar};
use contextvars_futures::ContextStreamExt;
use futures_util::StreamExt;

static TASK: ContextVar<u64> = contextvars::context_var!(u64, "task");

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn streams_poll_in_their_context() {
    Context::new().run(|| {
        let _token = TASK.set(3);
        let stream = futures_util::stream::iter(0..4u64)
            .map(|n| {
                let seen = n + TASK.get();
                drop(TASK.set(seen)); // stays in the stream
                seen
            })
            .in_copied_context();
        drop(_token);
        let seen: Vec<u64> = block_on(stream.collect());
        assert_eq!(seen, [3, 4, 6, 9]);
        assert_eq!(TASK.get(), 3, "the stream's sets did not reach the caller");
    });
}

#[test]
fn a_context_object_is_entered_while_the_stream_lives() {
    let ctx = Context::new();
    ctx.run(|| drop(TASK.set(5)));
    let stream = futures_util::stream::iter(0..2u64)
        .map(|n| n + TASK.get())
        .in_context(&ctx);
    assert!(ctx.try_run(|| ()).is_err(), "entered by the stream");
    assert!(
        futures_util::stream::empty::<u64>()
            .try_in_context(&ctx)
            .is_err()
    );
    assert_eq!(block_on(stream.collect::<Vec<_>>()), [5, 6]);
    assert_eq!(
        ctx.try_run(|| TASK.get()),
        Ok(5),
        "left when the stream was dropped"
    );
}

#[test]
fn an_unfinished_stream_is_dropped_in_its_context() {
    struct OnDrop(Arc<Mutex<Option<u64>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = TASK.try_get().ok();
        }
    }
    let seen = Arc::new(Mutex::new(None));
    Context::new().run(|| {
        let _token = TASK.set(8);
        let guard = OnDrop(seen.clone());
        let stream = futures_util::stream::pending::<()>()
            .map(move |item| {
                let _ = &guard;
                item
            })
            .in_copied_context();
        drop(_token);
        drop(stream);
    });
    assert_eq!(*seen.lock().unwrap(), Some(8));
}
