//! Fuzz target for the propagation extractor (`contextvars_opentelemetry`), which reads
//! `baggage`, `traceparent` and `tracestate` headers from anyone: it must never panic,
//! and what it binds must survive being sent on.
//!
//! Checked for every input:
//!
//! * `extract_with_report` returns (no panic, no runaway allocation under ASAN's limits);
//! * the report counts at most two reasons per baggage member (dropped properties, and
//!   one for the member; or one for a whole baggage refused on its limits), one for the
//!   `traceparent`, and for the `tracestate` one (discarded whole) or one per member
//!   (the members OpenTelemetry's `TraceState` refuses, dropped alone);
//! * re-injecting the extracted context and extracting again binds every declared
//!   variable to the same value, with no malformed input reported (when the re-encoded
//!   baggage is within the 8,192-byte limit: percent-encoding can lengthen it).
//!
//! Inputs are text-like: one header per line, `name: value` with `name` one of
//! `baggage`, `traceparent`, `tracestate` (any other line is a `baggage` value), so the
//! seed corpus in `fuzz/corpus/extract/` reads as plain header sets. Run from the
//! repository root:
//!
//! ```text
//! cargo fuzz run extract                              # nightly, with ASAN
//! cargo fuzz run -s none extract fuzz/corpus/extract  # stable, no sanitizer
//! ```

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use contextvars::{Context, ContextVar};
use contextvars_opentelemetry::{Bool, Deadline, Int, Millis, Propagation, Reason, Text};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static TENANT: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "tenant");
static DEADLINE: ContextVar<Instant> = contextvars::context_var!(Instant, "deadline");
static DEBUG: ContextVar<bool> = contextvars::context_var!(bool, "debug");
static TIMEOUT: ContextVar<std::time::Duration> =
    contextvars::context_var!(std::time::Duration, "timeout");
static SMALL: ContextVar<i8> = contextvars::context_var!(i8, "small");

fn propagation() -> &'static Propagation {
    static PROPAGATION: OnceLock<Propagation> = OnceLock::new();
    PROPAGATION.get_or_init(|| {
        Propagation::new()
            .var(&REQUEST_ID, "request_id", Int)
            .var(&TENANT, "tenant", Text)
            .var(&DEADLINE, "deadline_ms", Deadline)
            .var(&DEBUG, "debug", Bool)
            .var(&TIMEOUT, "timeout_ms", Millis)
            .var(&SMALL, "small", Int)
    })
}

fn headers(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|byte| *byte == b'\n') {
        let (name, value) = [&b"baggage"[..], b"traceparent", b"tracestate"]
            .into_iter()
            .find_map(|name| {
                let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
                Some((name, rest.strip_prefix(b" ").unwrap_or(rest)))
            })
            .unwrap_or((b"baggage", line));
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(
                http::header::HeaderName::from_bytes(name).expect("a valid name"),
                value,
            );
        }
    }
    headers
}

/// The declared variables other than the deadline (whose remaining time moves on).
fn stable_values(context: &Context) -> impl PartialEq + std::fmt::Debug {
    (
        context.snapshot().get(&REQUEST_ID).cloned(),
        context.snapshot().get(&TENANT).cloned(),
        context.snapshot().get(&DEBUG).cloned(),
        context.snapshot().get(&TIMEOUT).cloned(),
        context.snapshot().get(&SMALL).cloned(),
    )
}

fuzz_target!(|data: &[u8]| {
    let headers = headers(data);
    let (context, report) = propagation().extract_with_report(&headers);

    let members: usize = headers
        .get_all("baggage")
        .iter()
        .map(|value| value.as_bytes().split(|byte| *byte == b',').count())
        .sum();
    let tracestate_members: usize = headers
        .get_all("tracestate")
        .iter()
        .map(|value| value.as_bytes().split(|byte| *byte == b',').count())
        .sum();
    let bound = 2 * members.max(1) + 2 + tracestate_members.max(1);
    assert!(
        report.total() as usize <= bound,
        "{report} for {members} members"
    );

    let mut again = HeaderMap::new();
    propagation().inject_context(&context, &mut again);
    let fits = again.get("baggage").is_none_or(|value| value.len() <= 8192);
    if fits {
        let (second, report) = propagation().extract_with_report(&again);
        assert_eq!(
            report.malformed(),
            0,
            "{report} re-extracting {again:?} from {headers:?}"
        );
        assert_eq!(stable_values(&second), stable_values(&context), "{again:?}");
        assert_eq!(
            second.snapshot().contains(&DEADLINE),
            context.snapshot().contains(&DEADLINE)
        );
        assert_eq!(report.count(Reason::CodecRejected), 0);
    }
});
