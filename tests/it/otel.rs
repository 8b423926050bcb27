//! Context across processes: the `opentelemetry` feature.
//!
//! * The two services of `examples/across_processes.rs` under load: 1,000 requests, 64
//!   at a time; B's handler, spawned task and rayon job see A's values, B's spans are
//!   remote children of A's.
//! * Interop: headers written by OpenTelemetry's own propagators read by ours, and ours
//!   read by theirs; OpenTelemetry's `Context` both ways.
//! * Bad input: every kind the issue lists is ignored and counted, never a panic.
//! * W3C strictness: the `tracestate` cases of the W3C Trace Context test suite (strict
//!   ones included: duplicate keys, also across headers; vendor format; key and value
//!   grammar and lengths; 32 members) and the baggage property grammar.
//! * Round trips: inject → extract for every provided codec (proptest).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextvars::{Context, ContextVar};
use contextvars_opentelemetry::{
    Bool, Deadline, ExtractReport, Int, Millis, OTEL_CONTEXT, Propagation, Reason, Text,
};
use contextvars_tower::{InitError, Initializer};
use http::{HeaderMap, HeaderValue};
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use proptest::prelude::*;

use crate::isolated;

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static TENANT: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "tenant");
static DEADLINE: ContextVar<Instant> = contextvars::context_var!(Instant, "deadline");
static AUTH_TOKEN: ContextVar<String> = contextvars::context_var!(String, "auth_token");
static DEBUG: ContextVar<bool> = contextvars::context_var!(bool, "debug");
static TIMEOUT: ContextVar<Duration> = contextvars::context_var!(Duration, "timeout");
static SMALL: ContextVar<i8> = contextvars::context_var!(i8, "small");
static BIG: ContextVar<u128> = contextvars::context_var!(u128, "big");
static NAME: ContextVar<String> = contextvars::context_var!(String, "name");
static LABEL: ContextVar<Box<str>> = contextvars::context_var!(Box<str>, "label");

fn propagation() -> Propagation {
    Propagation::new()
        .var(&REQUEST_ID, "request_id", Int)
        .var(&TENANT, "tenant", Text)
        .var(&DEADLINE, "deadline_ms", Deadline)
        .var(&DEBUG, "debug", Bool)
        .var(&TIMEOUT, "timeout_ms", Millis)
        .var(&SMALL, "small", Int)
        .var(&BIG, "big", Int)
        .var(&NAME, "name", Text)
        .var(&LABEL, "label", Text)
}

/// A header far over every limit (a megabyte; less under miri, still over them).
const HUGE: usize = if cfg!(miri) { 1 << 14 } else { 1 << 20 };

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

fn span_context(remote: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex(SPAN_ID).unwrap(),
        TraceFlags::SAMPLED,
        remote,
        "vendor=abc,other=1".parse::<TraceState>().unwrap(),
    )
}

fn headers_of(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    headers
}

fn baggage(value: &str) -> HeaderMap {
    headers_of(&[("baggage", value.as_bytes())])
}

fn counts(report: &ExtractReport) -> Vec<(Reason, u32)> {
    report.iter().collect()
}

// ------------------------------------------------------------------- two services

#[allow(dead_code, unreachable_pub)]
#[cfg(all(feature = "tokio", feature = "rayon"))]
#[path = "../../examples/across_processes.rs"]
mod across_processes;

/// The issue's proof: 1,000 requests through A to B, 64 concurrent.
#[cfg(all(feature = "tokio", feature = "rayon"))]
#[test]
#[cfg_attr(miri, ignore)]
fn two_services_1000_requests_64_concurrent() {
    const REQUESTS: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (seen, spans) = runtime
        .block_on(across_processes::run(REQUESTS, 64))
        .unwrap_or_else(|error| panic!("run: {error}"));
    assert_eq!(seen.len() as u64, REQUESTS);
    across_processes::check(REQUESTS, &seen, &spans).unwrap_or_else(|error| panic!("{error}"));
}

// ------------------------------------------------------------------------- interop

/// Headers written by OpenTelemetry's own propagators (not ours), read by ours.
#[test]
fn their_headers_our_extract() {
    let cx = OtelContext::new()
        .with_remote_span_context(span_context(false))
        .with_baggage([
            KeyValue::new("request_id", "42"),
            KeyValue::new("tenant", "acme, inc. = ü"),
            KeyValue::new("deadline_ms", "1500"),
            KeyValue::new("debug", "true"),
            KeyValue::new("region", "eu-west"),
        ]);
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    BaggagePropagator::new().inject_context(&cx, &mut carrier);
    let mut headers = HeaderMap::new();
    for (name, value) in &carrier {
        headers.insert(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }

    let before = Instant::now();
    let (context, report) = propagation().extract_with_report(&headers);
    assert_eq!(counts(&report), [(Reason::UnknownKey, 1)], "{report}");
    context.run(|| {
        assert_eq!(REQUEST_ID.get(), 42);
        assert_eq!(&*TENANT.get(), "acme, inc. = ü");
        assert!(DEBUG.get());
        let deadline = DEADLINE.get();
        assert!(deadline >= before + Duration::from_millis(1_500));
        assert!(deadline <= Instant::now() + Duration::from_millis(1_500));
        let cx = OTEL_CONTEXT.get();
        let remote = cx.span().span_context().clone();
        assert_eq!(remote.trace_id().to_string(), TRACE_ID);
        assert_eq!(remote.span_id().to_string(), SPAN_ID);
        assert!(remote.is_remote() && remote.is_sampled());
        assert_eq!(remote.trace_state().get("vendor"), Some("abc"));
        // Unknown keys: kept as OpenTelemetry baggage, bound to nothing.
        assert_eq!(
            cx.baggage().get("region").map(|v| v.as_str()),
            Some("eu-west")
        );
        assert!(!AUTH_TOKEN.is_set());
    });
}

/// Headers written by ours, read by OpenTelemetry's own propagators.
#[test]
fn our_headers_their_extract() {
    isolated(|| {
        let base = OtelContext::new()
            .with_remote_span_context(span_context(false))
            .with_baggage([KeyValue::new("region", "eu-west")]);
        let _otel = OTEL_CONTEXT.scoped_set(base);
        let _id = REQUEST_ID.scoped_set(7);
        // The characters OpenTelemetry's encoder leaves raw (`%`, `\`) and those it
        // encodes (`,;= "` and non-ASCII).
        let _tenant = TENANT.scoped_set(Arc::from(r#"100% a\b, c;d=e "f" ü"#));
        let _timeout = TIMEOUT.scoped_set(Duration::from_millis(250));
        let _secret = AUTH_TOKEN.scoped_set("hunter2".to_owned());
        let mut headers = HeaderMap::new();
        propagation().inject(&mut headers);

        let carrier: HashMap<String, String> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        assert!(!carrier["baggage"].contains("hunter2"));
        assert!(!carrier["baggage"].contains("auth_token"));
        let cx = TraceContextPropagator::new()
            .extract_with_context(&BaggagePropagator::new().extract(&carrier), &carrier);
        let value = |key: &str| cx.baggage().get(key).map(|v| v.as_str().to_owned());
        assert_eq!(value("request_id").as_deref(), Some("7"));
        assert_eq!(value("tenant").as_deref(), Some(r#"100% a\b, c;d=e "f" ü"#));
        assert_eq!(value("timeout_ms").as_deref(), Some("250"));
        assert_eq!(value("region").as_deref(), Some("eu-west"));
        assert_eq!(cx.baggage().len(), 4, "{:?}", cx.baggage());
        let remote = cx.span().span_context().clone();
        assert_eq!(remote.trace_id().to_string(), TRACE_ID);
        assert_eq!(remote.span_id().to_string(), SPAN_ID);
        assert_eq!(remote.trace_state().get("other"), Some("1"));
    });
}

/// OpenTelemetry's `Context` both ways, in process.
#[test]
fn otel_context_both_ways() {
    isolated(|| {
        let propagation = propagation();
        let _otel = OTEL_CONTEXT.scoped_set(
            OtelContext::new()
                .with_baggage([KeyValue::new("request_id", "1"), KeyValue::new("x", "y")]),
        );
        // A declared key in OTEL_CONTEXT's baggage is the variable's, not the old text.
        let _id = REQUEST_ID.scoped_set(9);
        let cx = propagation.otel_context();
        assert_eq!(
            cx.baggage().get("request_id").map(|v| v.as_str()),
            Some("9")
        );
        assert_eq!(cx.baggage().get("x").map(|v| v.as_str()), Some("y"));
        // Raw text in process: no wire escaping.
        let cx = TENANT.scope(Arc::from("50%"), || propagation.otel_context());
        assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str()), Some("50%"));

        let theirs = OtelContext::new().with_baggage([
            KeyValue::new("request_id", "12"),
            KeyValue::new("small", "300"), // out of i8's range
            KeyValue::new("region", "eu"),
        ]);
        let (context, report) = propagation.from_otel(&theirs);
        assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(12));
        assert!(!context.snapshot().contains(&SMALL));
        assert_eq!(
            counts(&report),
            [(Reason::UnknownKey, 1), (Reason::CodecRejected, 1)]
        );
        let kept = context.snapshot().get(&OTEL_CONTEXT).cloned().unwrap();
        assert_eq!(kept.baggage().get("region").map(|v| v.as_str()), Some("eu"));
    });
}

/// Only declared variables leave; defaults are not sent; nothing set means no header.
#[test]
fn only_declared_and_set_variables_are_sent() {
    isolated(|| {
        let _otel = OTEL_CONTEXT.scoped_set(OtelContext::new());
        // Stale propagation headers (say, of a forwarded request) are removed.
        let mut headers = headers_of(&[
            ("baggage", b"request_id=1"),
            (
                "traceparent",
                format!("00-{TRACE_ID}-{SPAN_ID}-01").as_bytes(),
            ),
            ("tracestate", b"a=b"),
            ("x-other", b"kept"),
        ]);
        let _secret = AUTH_TOKEN.scoped_set("hunter2".to_owned());
        propagation().inject(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-other"], "kept");
        headers.clear();
        let _debug = DEBUG.scoped_set(false);
        propagation().inject(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["baggage"], "debug=false");
        // A propagation that declares nothing sends nothing of ours.
        let mut headers = HeaderMap::new();
        Propagation::new().inject(&mut headers);
        assert!(headers.is_empty(), "{headers:?}");
    });
}

/// An expired deadline is sent as 0 and arrives expired.
#[test]
fn expired_deadline_is_sent_as_zero() {
    isolated(|| {
        let _otel = OTEL_CONTEXT.scoped_set(OtelContext::new());
        let _deadline = DEADLINE.scoped_set(Instant::now() - Duration::from_millis(1));
        let mut headers = HeaderMap::new();
        propagation().inject(&mut headers);
        assert_eq!(headers["baggage"], "deadline_ms=0");
        let after = Instant::now();
        let received = propagation()
            .extract(&headers)
            .snapshot()
            .get(&DEADLINE)
            .cloned()
            .unwrap();
        assert!(received >= after && received <= Instant::now());
    });
}

#[test]
#[should_panic(expected = "declared twice")]
fn a_key_declared_twice_panics() {
    let _ = Propagation::new()
        .var(&NAME, "k", Text)
        .var(&LABEL, "k", Text);
}

#[test]
#[should_panic(expected = "not a valid baggage key")]
fn an_invalid_key_panics() {
    let _ = Propagation::new().var(&NAME, "a key", Text);
}

// ----------------------------------------------------------------------- bad input

/// Each malformed member is dropped with its reason; the good ones still bind.
#[test]
fn malformed_baggage_members_are_dropped_and_counted() {
    let cases: &[(&[u8], Reason)] = &[
        (b"name=%zz", Reason::BadPercentEncoding),
        (b"name=%4", Reason::BadPercentEncoding),
        (b"name=%ff%fe", Reason::InvalidUtf8),
        (b"name=%c3", Reason::InvalidUtf8),
        (b"name", Reason::MissingEquals),
        (b";name=x", Reason::MissingEquals),
        (b"=x", Reason::InvalidKey),
        (b"na(me=x", Reason::InvalidKey),
        (b"na%6De=x", Reason::InvalidKey),
        (b"name=a b", Reason::InvalidValue),
        (b"name=a\"b", Reason::InvalidValue),
        (b"name=a\\b", Reason::InvalidValue),
        (b"name=\xc3\xbc", Reason::InvalidValue),
        (b"name=x;prop=\xff", Reason::InvalidProperty),
        (b"name=x;", Reason::InvalidProperty),
        (b"name=x;p;;q", Reason::InvalidProperty),
        (b"name=x;=v", Reason::InvalidProperty),
        (b"name=x;p q", Reason::InvalidProperty),
        (b"name=x;p=\"q\"", Reason::InvalidProperty),
        (b"name=x;p(=1", Reason::InvalidProperty),
        (b"small=128", Reason::CodecRejected),
        (b"debug=yes", Reason::CodecRejected),
        (b"big=+1", Reason::CodecRejected),
        (b"deadline_ms=-5", Reason::CodecRejected),
        (b"deadline_ms=99999999999999999999", Reason::CodecRejected),
        (b"nobody=1", Reason::UnknownKey),
    ];
    for (member, reason) in cases {
        let mut value = b"request_id=5,".to_vec();
        value.extend_from_slice(member);
        value.extend_from_slice(b", label=ok");
        let headers = headers_of(&[("baggage", &value)]);
        let (context, report) = propagation().extract_with_report(&headers);
        let shown = String::from_utf8_lossy(member);
        assert_eq!(counts(&report), [(*reason, 1)], "{shown}: {report}");
        assert_eq!(
            context.snapshot().get(&REQUEST_ID).cloned(),
            Some(5),
            "{shown}"
        );
        assert_eq!(
            context.snapshot().get(&LABEL).cloned().as_deref(),
            Some("ok"),
            "{shown}"
        );
        assert!(
            !context.snapshot().contains(&NAME) && !context.snapshot().contains(&SMALL),
            "{shown}"
        );
        // The reasons reach the server side too (an InitError, except for unknown keys).
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.headers = headers;
        let outcome = isolated(|| propagation().initialize_head(&mut parts));
        assert_eq!(parts.extensions.get::<ExtractReport>(), Some(&report));
        assert_eq!(outcome.is_err(), reason.is_malformed(), "{shown}");
    }
}

/// Of duplicate keys the first counts; a raw `=` in a value survives; properties and
/// whitespace are allowed.
#[test]
fn duplicates_equals_signs_properties_and_whitespace() {
    let (context, report) = propagation().extract_with_report(&baggage(
        " name = a=b=c ;p1;p2=v , request_id=1,request_id=2,,",
    ));
    assert_eq!(counts(&report), [(Reason::DuplicateKey, 1)]);
    assert_eq!(
        context.snapshot().get(&NAME).cloned().as_deref(),
        Some("a=b=c")
    );
    assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(1));
    let (_, cx) = (0, context.snapshot().get(&OTEL_CONTEXT).cloned().unwrap());
    let (value, metadata) = cx.baggage().get_with_metadata("name").unwrap();
    assert_eq!(value.as_str(), "a=b=c");
    assert_eq!(metadata.as_str(), "p1;p2=v");

    // Properties with `%`: dropped (OpenTelemetry would decode them and re-send them
    // raw), the member kept.
    let (context, report) = propagation().extract_with_report(&baggage("name=x;p=a%2Cb,k=v;q"));
    assert_eq!(
        counts(&report),
        [(Reason::PropertiesDropped, 1), (Reason::UnknownKey, 1)]
    );
    assert_eq!(context.snapshot().get(&NAME).cloned().as_deref(), Some("x"));
    let cx = context.snapshot().get(&OTEL_CONTEXT).cloned().unwrap();
    assert_eq!(
        cx.baggage().get_with_metadata("name").unwrap().1.as_str(),
        ""
    );
    assert_eq!(cx.baggage().get_with_metadata("k").unwrap().1.as_str(), "q");
    // On the way out, properties that would not read back the same are not sent.
    isolated(|| {
        let unsafe_metadata = OtelContext::new().with_baggage([
            KeyValueMetadata::new("a", "1", "p=x,y"),
            KeyValueMetadata::new("b", "2", "q=50%"),
            KeyValueMetadata::new("c", "3", "r=ok;s"),
            KeyValueMetadata::new("d", "4", "t u"),
            KeyValueMetadata::new("e", "5", "v;"),
        ]);
        let _otel = OTEL_CONTEXT.scoped_set(unsafe_metadata);
        let mut headers = HeaderMap::new();
        propagation().inject(&mut headers);
        let (context, report) = propagation().extract_with_report(&headers);
        assert_eq!(counts(&report), [(Reason::UnknownKey, 5)], "{headers:?}");
        let cx = context.snapshot().get(&OTEL_CONTEXT).cloned().unwrap();
        let metadata = |key: &str| cx.baggage().get_with_metadata(key).unwrap().1.to_string();
        assert_eq!(
            ["a", "b", "c", "d", "e"].map(metadata),
            ["", "", "r=ok;s", "", ""]
        );
    });
}

/// W3C limits: 8,192 bytes and 180 members, over all `baggage` headers together; over
/// either, all baggage is ignored.
#[test]
fn baggage_limits() {
    // 180 members: the limit, accepted (the first 64 reach OpenTelemetry's Baggage,
    // the declared one among them).
    let mut members: Vec<String> = (0..179).map(|i| format!("k{i}=v")).collect();
    members.push("request_id=3".to_owned());
    let (context, report) = propagation().extract_with_report(&baggage(&members.join(",")));
    assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(3));
    assert_eq!(report.count(Reason::OverEntryLimit), 180 - 64);
    assert_eq!(report.count(Reason::UnknownKey), 63);
    assert_eq!(report.total(), 179);
    let cx = context.snapshot().get(&OTEL_CONTEXT).cloned().unwrap();
    assert_eq!(cx.baggage().len(), 64);

    // 181 members: over.
    members.push("k179=v".to_owned());
    let (context, report) = propagation().extract_with_report(&baggage(&members.join(",")));
    assert_eq!(counts(&report), [(Reason::BaggageTooManyMembers, 1)]);
    assert!(!context.snapshot().contains(&REQUEST_ID));
    assert_eq!(
        context
            .snapshot()
            .get(&OTEL_CONTEXT)
            .cloned()
            .unwrap()
            .baggage()
            .len(),
        0
    );
    // Split over two headers: the same.
    let (first, second) = members.split_at(90);
    let headers = headers_of(&[
        ("baggage", first.join(",").as_bytes()),
        ("baggage", second.join(",").as_bytes()),
    ]);
    let (_, report) = propagation().extract_with_report(&headers);
    assert_eq!(counts(&report), [(Reason::BaggageTooManyMembers, 1)]);

    // 8,192 bytes: the limit, accepted; 8,193: over.
    let header = |len: usize| format!("name={}", "x".repeat(len - "name=".len()));
    let (context, report) = propagation().extract_with_report(&baggage(&header(8_192)));
    assert!(report.is_empty(), "{report}");
    assert_eq!(
        context
            .snapshot()
            .get(&NAME)
            .cloned()
            .map(|name| name.len()),
        Some(8_187)
    );
    let (context, report) = propagation().extract_with_report(&baggage(&header(8_193)));
    assert_eq!(counts(&report), [(Reason::BaggageTooLong, 1)]);
    assert!(!context.snapshot().contains(&NAME));
    // Two headers of 4,096 bytes are 8,193 with the joining comma.
    let half = format!("k={}", "x".repeat(4_094));
    let headers = headers_of(&[("baggage", half.as_bytes()), ("baggage", half.as_bytes())]);
    let (_, report) = propagation().extract_with_report(&headers);
    assert_eq!(counts(&report), [(Reason::BaggageTooLong, 1)]);
    // A megabyte of commas is refused on its length.
    let (_, report) = propagation().extract_with_report(&baggage(&",".repeat(HUGE)));
    assert_eq!(counts(&report), [(Reason::BaggageTooLong, 1)]);
}

/// Declared keys are kept first when more members arrive than OpenTelemetry's
/// `Baggage` holds.
#[test]
fn declared_keys_survive_the_64_entry_cap() {
    let mut members: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
    members.push("request_id=8".to_owned());
    members.push("tenant=late".to_owned());
    let (context, report) = propagation().extract_with_report(&baggage(&members.join(",")));
    assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(8));
    assert_eq!(
        context.snapshot().get(&TENANT).cloned().as_deref(),
        Some("late")
    );
    assert_eq!(report.count(Reason::OverEntryLimit), 102 - 64);
}

/// `traceparent` and `tracestate`: every malformed kind is ignored with its reason; the
/// baggage still binds.
#[test]
fn bad_trace_context() {
    let good = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let long = format!("00-{TRACE_ID}-{SPAN_ID}-01{}", "-".repeat(HUGE));
    /// Headers, and the reason they are refused for (none: accepted).
    type Case = (Vec<(&'static str, Vec<u8>)>, Option<Reason>);
    let cases: Vec<Case> = vec![
        (vec![("traceparent", good.clone().into())], None),
        (vec![("traceparent", format!("  {good} ").into())], None),
        // A later version: read as its first 55 bytes, the rest set off by `-`.
        (
            vec![(
                "traceparent",
                format!("cc-{TRACE_ID}-{SPAN_ID}-01-what-ever").into(),
            )],
            None,
        ),
        (
            vec![("traceparent", format!("ff-{TRACE_ID}-{SPAN_ID}-01").into())],
            Some(Reason::TraceparentVersion),
        ),
        (
            vec![("traceparent", format!("0A-{TRACE_ID}-{SPAN_ID}-01").into())],
            Some(Reason::TraceparentVersion),
        ),
        (
            vec![("traceparent", format!("zz-{TRACE_ID}-{SPAN_ID}-01").into())],
            Some(Reason::TraceparentVersion),
        ),
        (
            vec![("traceparent", b"0".to_vec())],
            Some(Reason::TraceparentVersion),
        ),
        (
            vec![
                ("traceparent", good.clone().into()),
                ("traceparent", good.clone().into()),
            ],
            Some(Reason::TraceparentDuplicate),
        ),
        (
            vec![("traceparent", format!("{good}-00").into())],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![("traceparent", format!("cc-{TRACE_ID}-{SPAN_ID}-01x").into())],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![("traceparent", long.into())],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![(
                "traceparent",
                format!("00-{}-{SPAN_ID}-01", "0".repeat(32)).into(),
            )],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![(
                "traceparent",
                format!("00-{TRACE_ID}-{}-01", "0".repeat(16)).into(),
            )],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![(
                "traceparent",
                format!("00-{}-{SPAN_ID}-01", TRACE_ID.to_uppercase()).into(),
            )],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![("traceparent", format!("00-{TRACE_ID}-{SPAN_ID}-0g").into())],
            Some(Reason::TraceparentInvalid),
        ),
        (
            vec![(
                "traceparent",
                format!("00-{TRACE_ID}-{SPAN_ID}-\u{fc}").into(),
            )],
            Some(Reason::TraceparentInvalid),
        ),
    ];
    for (pairs, reason) in cases {
        let mut all: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (*n, &v[..])).collect();
        all.push(("baggage", b"request_id=4"));
        let (context, report) = propagation().extract_with_report(&headers_of(&all));
        let shown = format!(
            "{:?}",
            String::from_utf8_lossy(&pairs[0].1)
                .chars()
                .take(80)
                .collect::<String>()
        );
        assert_eq!(
            counts(&report),
            reason.map(|r| (r, 1)).into_iter().collect::<Vec<_>>(),
            "{shown}"
        );
        assert_eq!(
            context.snapshot().get(&REQUEST_ID).cloned(),
            Some(4),
            "{shown}"
        );
        let remote = context
            .snapshot()
            .get(&OTEL_CONTEXT)
            .cloned()
            .unwrap()
            .span()
            .span_context()
            .clone();
        assert_eq!(remote.is_valid(), reason.is_none(), "{shown}");
        if reason.is_none() {
            assert_eq!(remote.trace_id().to_string(), TRACE_ID);
        }
    }

    // tracestate: dropped when invalid, the trace context kept (the strict cases are
    // in `tracestate_w3c_strict_cases`).
    let too_long = format!("a={}", "x".repeat(8_200));
    let too_many = (0..33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    for (state, reason) in [
        ("vendor=abc", None),
        (too_long.as_str(), Some(Reason::TracestateTooLong)),
        (too_many.as_str(), Some(Reason::TracestateTooManyMembers)),
        ("UPPER=x", Some(Reason::TracestateInvalidKey)),
        ("a=b=c", Some(Reason::TracestateInvalidValue)),
    ] {
        let (header, report) = tracestate_of(&[state.as_bytes()]);
        match reason {
            None => {
                assert!(report.is_empty(), "{report}");
                assert_eq!(header, "vendor=abc");
            }
            Some(reason) => {
                assert_eq!(counts(&report), [(reason, 1)], "{state:.40}");
                assert_eq!(header, "");
            }
        }
    }
}

/// Extracts a valid `traceparent` with these `tracestate` headers: the tracestate
/// OpenTelemetry then holds (as it would send it on), and the report.
fn tracestate_of(states: &[&[u8]]) -> (String, ExtractReport) {
    let good = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let mut pairs: Vec<(&str, &[u8])> = vec![("traceparent", good.as_bytes())];
    pairs.extend(states.iter().map(|state| ("tracestate", *state)));
    let (context, report) = propagation().extract_with_report(&headers_of(&pairs));
    let remote = context
        .snapshot()
        .get(&OTEL_CONTEXT)
        .cloned()
        .unwrap()
        .span()
        .span_context()
        .clone();
    // W3C: a bad tracestate never costs the traceparent.
    assert!(remote.is_valid(), "{report}");
    (remote.trace_state().header(), report)
}

/// The `tracestate` cases of the W3C Trace Context test suite (`test/test.py`, the
/// strict ones included) and the grammar's edges: a tracestate that breaks a rule is
/// discarded whole, once counted, the trace context kept; a valid one reaches
/// OpenTelemetry as one list, OWS and empty members gone.
#[test]
fn tracestate_w3c_strict_cases() {
    let z256 = format!("{}=1", "z".repeat(256));
    let z257 = format!("{}=1", "z".repeat(257));
    let foo_z256 = format!("foo=1,{z256}");
    let tenant241_v14 = format!("foo=1,{}@{}=1", "t".repeat(241), "v".repeat(14));
    let tenant241_v13 = format!("{}@{}=1", "t".repeat(241), "v".repeat(13));
    let tenant242 = format!("{}@v=1", "t".repeat(242));
    let system15 = format!("t@{}=1", "v".repeat(15));
    let value256 = format!("foo={}", "v".repeat(256));
    let value257 = format!("foo={}", "v".repeat(257));
    // The suite's "all allowed characters": every key character, and a value of every
    // allowed byte (which starts with a space, part of the value).
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let value: String = (0x20u8..=0x7E)
        .filter(|byte| *byte != b',' && *byte != b'=')
        .map(char::from)
        .collect();
    let all_plain = format!("{key}={value}");
    let all_tenant = format!("{key}@a-z0-9_-*/={value}");
    let bars = |range: std::ops::RangeInclusive<u32>| {
        range
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let bars32 = bars(1..=32);
    let bars33 = [bars(1..=10), bars(11..=20), bars(21..=30), bars(31..=33)];
    let bars32_split = [bars(1..=10), bars(11..=20), bars(21..=30), bars(31..=32)];

    use Reason::{
        TracestateDuplicateKey as Duplicate, TracestateInvalidKey as Key,
        TracestateInvalidValue as Value, TracestateMemberRefused as Refused,
        TracestateTooManyMembers as TooMany,
    };
    /// The `tracestate` headers; then the tracestate OpenTelemetry holds and the report
    /// (empty when `None`), or the reason it was all discarded for.
    type Case<'a> = (
        Vec<&'a str>,
        Result<(&'a str, Option<(Reason, u32)>), Reason>,
    );
    let cases: Vec<Case<'_>> = vec![
        // Duplicate keys, in one header or split across two.
        (vec!["foo=1,foo=1"], Err(Duplicate)),
        (vec!["foo=1,foo=2"], Err(Duplicate)),
        (vec!["foo=1", "foo=1"], Err(Duplicate)),
        (vec!["foo=1", "foo=2"], Err(Duplicate)),
        (vec!["a=1,foo=1", " b=2 , foo=3"], Err(Duplicate)),
        // Keys: vendor format.
        (vec!["foo@=1,bar=2"], Err(Key)),
        (vec!["@foo=1,bar=2"], Err(Key)),
        (vec!["foo@@bar=1,bar=2"], Err(Key)),
        (vec!["foo@bar@baz=1,bar=2"], Err(Key)),
        (vec!["t@1v=1"], Err(Key)),
        (vec!["t@V=1"], Err(Key)),
        // Keys: characters.
        (vec!["foo =1"], Err(Key)),
        (vec!["FOO=1"], Err(Key)),
        (vec!["fOo=1"], Err(Key)),
        (vec!["foo.bar=1"], Err(Key)),
        (vec!["1foo=1"], Err(Key)),
        (vec!["_foo=1"], Err(Key)),
        (vec!["=1"], Err(Key)),
        // Keys: lengths (256 characters, tenant 241, system 14).
        (vec!["foo=1", &z256], Ok((&foo_z256, None))),
        (vec!["foo=1", &z257], Err(Key)),
        (vec![&tenant242], Err(Key)),
        (vec![&system15], Err(Key)),
        (vec![&tenant241_v13], Ok((&tenant241_v13, None))),
        // W3C-valid, but OpenTelemetry's TraceState refuses a 14-character system id:
        // that member alone is dropped.
        (vec![&tenant241_v14], Ok(("foo=1", Some((Refused, 1))))),
        // Valid multi-tenant keys.
        (
            vec!["tenant@vendor=1,0tenant@v=2"],
            Ok(("tenant@vendor=1,0tenant@v=2", None)),
        ),
        (
            vec!["a-b_c*d/e@x-y_z*/=v"],
            Ok(("a-b_c*d/e@x-y_z*/=v", None)),
        ),
        (vec![&all_plain], Ok((&all_plain, None))),
        (vec![&all_tenant], Ok((&all_tenant, None))),
        // Values.
        (vec!["foo=bar=baz"], Err(Value)),
        (vec!["foo=,bar=3"], Err(Value)),
        (vec!["foo="], Err(Value)),
        (vec!["foo= \t"], Err(Value)),
        (vec!["foo"], Err(Value)),
        (vec!["foo=a,b"], Err(Value)),
        (vec!["foo=a\tb"], Err(Value)),
        (vec![&value257], Err(Value)),
        (vec![&value256], Ok((&value256, None))),
        // A trailing space is OWS, a leading one part of the value.
        (vec!["foo=1 "], Ok(("foo=1", None))),
        (vec!["foo= 1  , bar=x y"], Ok(("foo= 1,bar=x y", None))),
        // 32 members (across headers, empty ones not counted) and 33.
        (vec![&bars32], Ok((&bars32, None))),
        (
            bars32_split.iter().map(String::as_str).collect(),
            Ok((&bars32, None)),
        ),
        (vec![&bars32, ",, ,\t"], Ok((&bars32, None))),
        (bars33.iter().map(String::as_str).collect(), Err(TooMany)),
        // OWS and empty members and headers.
        (
            vec!["foo=1 \t , \t bar=2, \t baz=3"],
            Ok(("foo=1,bar=2,baz=3", None)),
        ),
        (
            vec!["foo=1\t \t,\t \tbar=2,\t \tbaz=3"],
            Ok(("foo=1,bar=2,baz=3", None)),
        ),
        (vec![" foo=1"], Ok(("foo=1", None))),
        (vec!["\t foo=1 \t"], Ok(("foo=1", None))),
        (vec!["foo=1", ""], Ok(("foo=1", None))),
        (vec!["", "foo=1"], Ok(("foo=1", None))),
        (vec![",foo=1,,bar=2,"], Ok(("foo=1,bar=2", None))),
        (vec![""], Ok(("", None))),
        // Several headers: one list, in order.
        (
            vec!["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            Ok(("foo=1,bar=2,rojo=1,congo=2,baz=3", None)),
        ),
        // The first rule broken is the one counted.
        (vec!["a=1,a=2,B=3"], Err(Duplicate)),
        (vec!["B=3,a=1,a=2"], Err(Key)),
        (vec!["a=,B=3"], Err(Value)),
    ];
    for (states, expected) in cases {
        let raw: Vec<&[u8]> = states.iter().map(|state| state.as_bytes()).collect();
        let (header, report) = tracestate_of(&raw);
        let shown = format!("{states:?}");
        match expected {
            Ok((kept, counted)) => {
                assert_eq!(header, kept, "{shown}");
                assert_eq!(
                    counts(&report),
                    counted.into_iter().collect::<Vec<_>>(),
                    "{shown}"
                );
            }
            Err(reason) => {
                assert_eq!(header, "", "{shown}");
                assert_eq!(counts(&report), [(reason, 1)], "{shown}");
            }
        }
    }

    // Bytes outside printable ASCII, in a key or a value.
    for state in [&b"foo=\xc3\xbc"[..], b"f\xc3\xbco=1", b"foo=a\xffb"] {
        let (header, report) = tracestate_of(&[state]);
        assert_eq!(header, "");
        assert_eq!(report.total(), 1, "{report}");
        assert!(
            report
                .iter()
                .all(|(reason, _)| reason.header() == "tracestate")
        );
    }
}

/// The tracestate is read only with a traceparent that is taken (W3C: a vendor that
/// failed to parse `traceparent` must not parse `tracestate`): no tracestate reason is
/// counted otherwise.
#[test]
fn tracestate_is_read_only_with_a_traceparent() {
    let (context, report) = propagation().extract_with_report(&headers_of(&[
        ("tracestate", b"FOO=1,foo=1"),
        ("baggage", b"request_id=2"),
    ]));
    assert!(report.is_empty(), "{report}");
    assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(2));
    // A traceparent that passes the shape checks and that OpenTelemetry refuses.
    let zeros = format!("00-{}-{SPAN_ID}-01", "0".repeat(32));
    let (_, report) = propagation().extract_with_report(&headers_of(&[
        ("traceparent", zeros.as_bytes()),
        ("tracestate", b"foo=1,foo=1"),
    ]));
    assert_eq!(counts(&report), [(Reason::TraceparentInvalid, 1)]);
}

/// What the report says about a request with both headers bad: each reason counted,
/// each under its header, and the summary.
#[test]
fn report_counts_both_headers() {
    let good = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let headers = headers_of(&[
        ("baggage", b"request_id=1,tenant=a;;p"),
        ("baggage", b"request_id=2, name = x ; p = 1"),
        ("traceparent", good.as_bytes()),
        ("tracestate", b"rojo=1,congo=2"),
        ("tracestate", b"rojo=3"),
    ]);
    let (context, report) = propagation().extract_with_report(&headers);
    assert_eq!(
        counts(&report),
        [
            (Reason::InvalidProperty, 1),
            (Reason::DuplicateKey, 1),
            (Reason::TracestateDuplicateKey, 1),
        ]
    );
    assert_eq!(report.malformed(), 3);
    assert_eq!(
        report.to_string(),
        "1 × invalid baggage property, 1 × duplicate baggage key, 1 × duplicate tracestate key"
    );
    assert_eq!(context.snapshot().get(&REQUEST_ID).cloned(), Some(1));
    assert!(!context.snapshot().contains(&TENANT));
    assert_eq!(context.snapshot().get(&NAME).cloned().as_deref(), Some("x"));
    let headers_of_reasons: Vec<&str> = report.iter().map(|(reason, _)| reason.header()).collect();
    assert_eq!(headers_of_reasons, ["baggage", "baggage", "tracestate"]);

    // Every reason names its header and reads as text of its own.
    let mut seen = std::collections::HashSet::new();
    for reason in Reason::ALL {
        assert!(["baggage", "traceparent", "tracestate"].contains(&reason.header()));
        assert!(reason.to_string().contains(reason.header()), "{reason}");
        assert!(seen.insert(reason.to_string()), "{reason}");
    }
}
/// Through the server layer: the request's handler sees the values, and the report
/// (and an InitError) in its extensions.
#[test]
fn server_layer_extracts_and_reports() {
    use contextvars_tower::{ContextLayer, Layer, Service};
    use std::future::{Ready, ready};
    use std::task::{Context as TaskContext, Poll};

    #[derive(Clone)]
    struct Inner;
    impl Service<http::Request<()>> for Inner {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let report = request
                .extensions()
                .get::<ExtractReport>()
                .map(|r| r.to_string());
            let error = request
                .extensions()
                .get::<InitError>()
                .map(|e| e.to_string());
            ready(Ok(http::Response::new(format!(
                "{} {} {report:?} {error:?}",
                REQUEST_ID.get_or(0),
                TENANT.try_get().map(|t| t.to_string()).unwrap_or_default()
            ))))
        }
    }

    let mut service = ContextLayer::new().init(propagation()).layer(Inner);
    let mut call = |baggage: &str| {
        let mut request = http::Request::new(());
        request
            .headers_mut()
            .insert("baggage", baggage.parse().unwrap());
        let future = isolated(|| service.call(request));
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut TaskContext::from_waker(waker))
        else {
            panic!("not ready")
        };
        response.into_body().into_inner()
    };
    assert_eq!(call("request_id=1,tenant=a"), "1 a None None");
    assert_eq!(
        call("request_id=2,tenant=b,x=1"),
        r#"2 b Some("1 × baggage key not declared") None"#
    );
    assert_eq!(
        call("request_id=3,request_id=4,tenant=%ff"),
        r#"3  Some("1 × baggage value not UTF-8, 1 × duplicate baggage key") Some("propagation headers partly ignored: 1 × baggage value not UTF-8, 1 × duplicate baggage key")"#
    );
    // Nothing leaks between requests.
    assert_eq!(
        call("x=1"),
        r#"0  Some("1 × baggage key not declared") None"#
    );
}

/// Pseudo-random header bytes (and mutations of valid headers): never a panic, and
/// what binds is always what a valid member said.
#[test]
fn random_headers_never_panic() {
    let valid = "request_id=5,tenant=a%2Cb,debug=true,k=v;p".to_owned();
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    for seed in 0..crate::iterations(3_000) as u64 {
        let noise = crate::pseudo_random_bytes(seed, (seed % 97) as usize);
        let mut mutated = valid.clone().into_bytes();
        let at = (seed as usize * 7) % mutated.len();
        mutated.splice(at..at, noise.iter().copied().take(3));
        let mut parent = traceparent.clone().into_bytes();
        let at = (seed as usize * 13) % parent.len();
        parent[at] = noise.first().copied().unwrap_or(b'-');
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("baggage", &noise),
            ("baggage", &mutated),
            ("traceparent", &parent),
            ("tracestate", &noise),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name, value);
            }
        }
        let (context, report) = propagation().extract_with_report(&headers);
        if let Some(id) = context.snapshot().get(&REQUEST_ID).cloned() {
            assert!(report.total() > 0 || id == 5);
        }
        assert!(context.snapshot().contains(&OTEL_CONTEXT));
    }
}

// ---------------------------------------------------------------------- round trips

fn round_trip<T: Clone + Send + Sync + 'static>(
    var: &'static ContextVar<T>,
    value: T,
) -> Option<T> {
    let context = Context::new()
        .with_value(&OTEL_CONTEXT, OtelContext::new())
        .with_value(var, value);
    let mut headers = HeaderMap::new();
    propagation().inject_context(&context, &mut headers);
    let (received, report) = propagation().extract_with_report(&headers);
    assert!(report.is_empty(), "{report} for {headers:?}");
    received.snapshot().get(var).cloned()
}

proptest! {
    // No failure files: a failing case prints its input (and miri's isolation has no
    // working directory for them).
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn int_round_trips(id: u64, small: i8, big: u128) {
        prop_assert_eq!(round_trip(&REQUEST_ID, id), Some(id));
        prop_assert_eq!(round_trip(&SMALL, small), Some(small));
        prop_assert_eq!(round_trip(&BIG, big), Some(big));
    }

    /// Any text, but OpenTelemetry's baggage propagator trims values on both ends.
    #[test]
    fn text_round_trips(text in any::<String>(), ascii in "[ -~]{0,40}") {
        for text in [text, ascii] {
            let expected = text.trim().to_owned();
            prop_assert_eq!(round_trip(&NAME, text.clone()), Some(expected.clone()));
            prop_assert_eq!(round_trip(&TENANT, Arc::from(text.as_str())), Some(Arc::from(expected.as_str())));
            prop_assert_eq!(round_trip(&LABEL, Box::from(text.as_str())), Some(Box::from(expected.as_str())));
        }
    }

    #[test]
    fn bool_round_trips(flag: bool) {
        prop_assert_eq!(round_trip(&DEBUG, flag), Some(flag));
    }

    #[test]
    fn millis_round_trip(ms: u64) {
        let duration = Duration::from_millis(ms);
        prop_assert_eq!(round_trip(&TIMEOUT, duration), Some(duration));
    }

    /// A deadline arrives as the same time remaining, give or take the time spent
    /// between the sender's clock reading and the receiver's (and a millisecond of
    /// rounding down).
    #[test]
    fn deadline_round_trips(remaining_ms in 0u64..10_000_000_000) {
        let sent = Instant::now();
        let deadline = sent + Duration::from_millis(remaining_ms);
        let received = round_trip(&DEADLINE, deadline).unwrap();
        let elapsed = sent.elapsed();
        prop_assert!(received <= deadline + elapsed, "received later than the deadline");
        prop_assert!(received + Duration::from_millis(1) + elapsed >= deadline);
    }
}
