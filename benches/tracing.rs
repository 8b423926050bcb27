//! The cost of `contextvars_tracing::ContextFields`: one event through
//! `tracing_subscriber::fmt().json()` writing to `std::io::sink()`, plain and with 2 and
//! 8 context variables added to it, in the same run.
//!
//! ```text
//! cargo bench --features rayon --bench tracing                      # full run
//! cargo bench --features rayon --bench tracing -- --test            # smoke
//! ```
//!
//! Every contender is its own `#[inline(never)]` function emitting the same event (a
//! message, a string field and an integer field, `black_box`ed), in the same context
//! (all 8 variables bound, half `u64`, half `String`); only the subscriber differs. The
//! subscriber is made the thread's default once, outside the measured loop, as an
//! application's global subscriber is.

use std::hint::black_box;

use std::future::Future;
use std::time::Instant;

use contextvars::future::ContextFutureExt;
use contextvars::{Context, context_var};
use contextvars_tracing::ContextFields;
use criterion::{Criterion, criterion_group};
use tracing::{Dispatch, Instrument};

#[path = "support/summary.rs"]
mod summary;

context_var! {
    static REQUEST_ID: u64;
    static TENANT: String;
    static V2: u64;
    static V3: String;
    static V4: u64;
    static V5: String;
    static V6: u64;
    static V7: String;
}

// ----- contenders ------------------------------------------------------------------------

#[inline(never)]
fn event(user: &str, status: u64) {
    tracing::info!(user, status, "request done");
}

/// The same event with the 2 fields written at the call (what `ContextFields` saves the
/// user from writing): the cost of formatting the fields themselves.
#[inline(never)]
fn written_2_event(user: &str, status: u64) {
    tracing::info!(
        user,
        status,
        request_id = black_box(7u64),
        tenant = black_box("acme"),
        "request done"
    );
}

/// The same event with the 8 fields written at the call.
#[inline(never)]
fn written_8_event(user: &str, status: u64) {
    tracing::info!(
        user,
        status,
        request_id = black_box(7u64),
        tenant = black_box("acme"),
        v2 = black_box(2u64),
        v3 = black_box("three"),
        v4 = black_box(4u64),
        v5 = black_box("five"),
        v6 = black_box(6u64),
        v7 = black_box("seven"),
        "request done"
    );
}

#[inline(never)]
fn plain_event(user: &str, status: u64) {
    event(user, status);
}

#[inline(never)]
fn two_vars_event(user: &str, status: u64) {
    event(user, status);
}

#[inline(never)]
fn eight_vars_event(user: &str, status: u64) {
    event(user, status);
}

// ----- subscribers -----------------------------------------------------------------------

fn plain() -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .finish(),
    )
}

fn two_vars() -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT))
            .finish(),
    )
}

fn eight_vars() -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .map_event_format(|format| {
                ContextFields::new(format)
                    .var(&REQUEST_ID)
                    .var(&TENANT)
                    .var(&V2)
                    .var(&V3)
                    .var(&V4)
                    .var(&V5)
                    .var(&V6)
                    .var(&V7)
            })
            .finish(),
    )
}

/// A context with all eight variables bound.
fn context() -> Context {
    Context::new().run(|| {
        let _ = (
            REQUEST_ID.set(7),
            TENANT.set("acme".to_owned()),
            V2.set(2),
            V3.set("three".to_owned()),
            V4.set(4),
            V5.set("five".to_owned()),
            V6.set(6),
            V7.set("seven".to_owned()),
        );
        contextvars::copy_context()
    })
}

/// A row: its name, its subscriber, and its contender.
type Row = (&'static str, fn() -> Dispatch, fn(&str, u64));

fn json_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracing_json_event");
    let ctx = context();
    let rows: [Row; 5] = [
        ("plain", plain, plain_event),
        ("written_2", plain, written_2_event),
        ("context_fields_2", two_vars, two_vars_event),
        ("written_8", plain, written_8_event),
        ("context_fields_8", eight_vars, eight_vars_event),
    ];
    for (name, subscriber, contender) in rows {
        let dispatch = subscriber();
        ctx.run(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                group.bench_function(name, |b| {
                    b.iter(|| contender(black_box("ada"), black_box(200)));
                });
            });
        });
    }
    group.finish();
}

// ----- the span that follows the work ---------------------------------------------------

/// A wrapped future that is never ready, so each iteration is one whole poll.
fn pending_in_copied_context() -> contextvars::future::WithContext<std::future::Pending<()>> {
    std::future::pending::<()>().in_copied_context()
}

#[inline(never)]
fn poll_once<F: Future<Output = ()>>(future: std::pin::Pin<&mut F>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut cx).is_pending()
}

#[inline(never)]
fn join_pair() -> (u64, u64) {
    contextvars::rayon::join(|| black_box(1u64), || black_box(2u64))
}

#[inline(never)]
fn plain_join_pair() -> (u64, u64) {
    rayon::join(|| black_box(1u64), || black_box(2u64))
}

/// What users write today to carry a span into rayon (rayon#1018): the span captured by
/// hand and entered on both sides of a plain `rayon::join`.
#[inline(never)]
fn manual_span_join_pair() -> (u64, u64) {
    let span = tracing::Span::current();
    rayon::join(
        || span.in_scope(|| black_box(1u64)),
        || span.in_scope(|| black_box(2u64)),
    )
}

/// Runs `join` `iters` times on `pool`'s one worker, inside an entered `request` span if
/// `with_span`, and returns the time taken.
fn time_joins(
    pool: &rayon::ThreadPool,
    iters: u64,
    with_span: bool,
    join: fn() -> (u64, u64),
) -> std::time::Duration {
    pool.install(|| {
        let span = with_span.then(|| tracing::info_span!("request"));
        let _entered = span.as_ref().map(tracing::Span::enter);
        let start = Instant::now();
        for _ in 0..iters {
            black_box(join());
        }
        start.elapsed()
    })
}

/// A poll of the future wrapper and a rayon `join` (on a 1-worker pool: both closures on
/// the calling worker). First with no subscriber at all (`no_subscriber`: the span carrier
/// registered, nothing installed), then with tracing-subscriber's `Registry` (which tracks spans,
/// and prints nothing) installed as the global default, as an application installs its
/// subscriber: made where no span is current (`no_span`) and where one is (`span`). The
/// peers: tracing's own `Instrument`, which enters its span on each poll, and a plain
/// `rayon::join` with the span carried by hand.
fn span_carry(c: &mut Criterion) {
    // The span carrier, as an application that uses `contextvars-tracing` registers it
    // (`ContextFields::new` in `json_event` would too, but that group runs later).
    contextvars_tracing::carry_spans().expect("the only carrier of this bench");
    let mut group = c.benchmark_group("span_carry");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut bare = std::pin::pin!(pending_in_copied_context());
    group.bench_function("poll/no_subscriber", |b| {
        b.iter(|| poll_once(bare.as_mut()));
    });
    group.bench_function("join/no_subscriber", |b| {
        b.iter_custom(|iters| time_joins(&pool, iters, false, join_pair));
    });
    group.bench_function("join/plain_rayon", |b| {
        b.iter_custom(|iters| time_joins(&pool, iters, false, plain_join_pair));
    });

    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("the bench's only global subscriber");
    let span = tracing::info_span!("request");
    let mut bare = std::pin::pin!(pending_in_copied_context());
    group.bench_function("poll/no_span", |b| {
        b.iter(|| poll_once(bare.as_mut()));
    });
    let mut carried = std::pin::pin!(span.in_scope(pending_in_copied_context));
    group.bench_function("poll/span", |b| {
        b.iter(|| poll_once(carried.as_mut()));
    });
    let mut instrumented = std::pin::pin!(std::future::pending::<()>().instrument(span.clone()));
    group.bench_function("poll/tracing_instrument", |b| {
        b.iter(|| poll_once(instrumented.as_mut()));
    });
    group.bench_function("join/no_span", |b| {
        b.iter_custom(|iters| time_joins(&pool, iters, false, join_pair));
    });
    group.bench_function("join/span", |b| {
        b.iter_custom(|iters| time_joins(&pool, iters, true, join_pair));
    });
    group.bench_function("join/manual_span", |b| {
        b.iter_custom(|iters| time_joins(&pool, iters, true, manual_span_join_pair));
    });
    group.finish();
}

// `span_carry` first: its `no_subscriber` rows need a process in which no dispatcher was
// ever installed (`json_event` installs scoped ones).
criterion_group!(benches, span_carry, json_event);

fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary::print(
        started,
        &[
            (
                "tracing_json_event",
                &[
                    "tracing_json_event/plain",
                    "tracing_json_event/written_2",
                    "tracing_json_event/written_8",
                ],
            ),
            (
                "span_carry",
                &[
                    "span_carry/poll_no_subscriber",
                    "span_carry/join_plain_rayon",
                    "span_carry/join_no_subscriber",
                ],
            ),
        ],
    );
}
