//! The probes behind BENCHMARKS.md's instruction counts for the isolation checks: each
//! `#[inline(never)]` function below is one operation, called 100,000 times with its
//! inputs and results `black_box`ed, so that callgrind, collecting only inside it, counts
//! its instructions per call exactly. `benches/cost_probes.sh` builds this example at
//! two commits and prints the counts side by side.
//!
//! ```text
//! cargo run --release --example cost_probes --features tokio
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use contextvars::ContextVar;
use contextvars::future::{ContextFutureExt, WithContext};
use contextvars_tower::{ContextBody, ContextLayer, Layer, Service};
use http_body::Body;

static VAR: ContextVar<u64> = contextvars::context_var!(u64, "v");
static OTHER: ContextVar<u64> = contextvars::context_var!(u64, "o");

/// `set` + `reset` in the thread's own context.
#[inline(never)]
fn set_reset(v: u64) {
    let token = VAR.set(black_box(v));
    black_box(VAR.reset(token).is_ok());
}

/// `scope(v, || get())` in the thread's own context.
#[inline(never)]
fn scope_get(v: u64) -> u64 {
    VAR.scope(black_box(v), || VAR.get())
}

/// A wrapped future's create + poll + drop.
#[inline(never)]
fn wrapped_future(cx: &mut Context<'_>) -> u64 {
    let future = pin!(async { VAR.get_or(0) + black_box(1) }.in_copied_context());
    match future.poll(cx) {
        Poll::Ready(v) => v,
        Poll::Pending => 0,
    }
}

/// A future that reads a variable and stays pending.
struct Forever;

impl Future for Forever {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u64> {
        black_box(VAR.get_or(0));
        Poll::Pending
    }
}

/// One poll of a wrapped future.
#[inline(never)]
fn poll_once(future: Pin<&mut WithContext<Forever>>, cx: &mut Context<'_>) -> bool {
    future.poll(cx).is_pending()
}

/// Reads a variable and yields `0` more times.
struct YieldN(u64);

impl Future for YieldN {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.0 == 0 {
            return Poll::Ready(VAR.get_or(0));
        }
        self.0 -= 1;
        black_box(VAR.get_or(0));
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A spawned task's `n` polls (divide by `n`), on a current-thread runtime (with the
/// task hooks under `--cfg tokio_unstable`).
#[inline(never)]
fn task_polls(rt: &tokio::runtime::Runtime, n: u64) -> u64 {
    rt.block_on(async move { tokio::spawn(YieldN(n)).await.unwrap() })
}

/// Answers with the request's body and a variable.
#[derive(Clone)]
struct Echo;

impl Service<http::Request<String>> for Echo {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<String>) -> Self::Future {
        let text = format!("{}{}", request.body(), VAR.get_or(0));
        std::future::ready(Ok(http::Response::new(text)))
    }
}

/// One request through `ContextService`: call, poll, the body polled to its end, drop.
#[inline(never)]
fn one_request<S>(service: &mut S, cx: &mut Context<'_>) -> usize
where
    S: Service<http::Request<String>, Response = http::Response<ContextBody<String>>>,
{
    let request = http::Request::new(black_box(String::from("x")));
    let mut future = pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future.as_mut().poll(cx) else {
        unreachable!("the echo answers at once")
    };
    let mut body = pin!(response.into_body());
    let mut bytes = 0;
    while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(cx) {
        bytes += frame.into_data().map_or(0, |data| data.len());
    }
    bytes
}

fn main() {
    const CALLS: u64 = 100_000;
    let _other = OTHER.set(1);
    let mut acc = 0;
    for i in 0..CALLS {
        set_reset(i);
    }
    for i in 0..CALLS {
        acc += scope_get(i);
    }
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..CALLS {
        acc += wrapped_future(&mut cx);
    }
    let mut forever = pin!(Forever.in_copied_context());
    for _ in 0..CALLS {
        black_box(poll_once(forever.as_mut(), &mut cx));
    }
    let mut builder = tokio::runtime::Builder::new_current_thread();
    #[cfg(tokio_unstable)]
    contextvars::tokio::isolate_tasks(&mut builder);
    let rt = builder.build().expect("runtime");
    acc += task_polls(&rt, 1_000); // warm-up, not counted (1,000 polls of 101,000)
    acc += task_polls(&rt, CALLS);
    let _var = VAR.set(3);
    let mut service = ContextLayer::new().layer(Echo);
    let mut bytes = 0;
    for _ in 0..CALLS {
        bytes += one_request(&mut service, &mut cx);
    }
    black_box((acc, bytes));
    println!("cost_probes: {CALLS} calls of each probe done");
}
