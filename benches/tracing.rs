//! The cost of `contextvars::tracing::ContextFields`: one event through
//! `tracing_subscriber::fmt().json()` writing to `std::io::sink()`, plain and with 2 and
//! 8 context variables added to it, in the same run.
//!
//! ```text
//! cargo bench --features tracing --bench tracing                    # full run
//! cargo bench --features tracing --bench tracing -- --test          # smoke
//! ```
//!
//! Every contender is its own `#[inline(never)]` function emitting the same event (a
//! message, a string field and an integer field, `black_box`ed), in the same context
//! (all 8 variables bound, half `u64`, half `String`); only the subscriber differs. The
//! subscriber is made the thread's default once, outside the measured loop, as an
//! application's global subscriber is.

use std::hint::black_box;

use contextvars::tracing::ContextFields;
use contextvars::{Context, context_var};
use criterion::{Criterion, criterion_group};
use tracing::Dispatch;

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
    let rows: [Row; 3] = [
        ("plain", plain, plain_event),
        ("context_fields_2", two_vars, two_vars_event),
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

criterion_group!(benches, json_event);

fn main() {
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary::print(
        started,
        &[("tracing_json_event", &["tracing_json_event/plain"])],
    );
}
