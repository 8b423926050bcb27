//! `contextvars_tracing::ContextFields`: context variables as fields
//! of every event, in the JSON and text formats of tracing-subscriber's `fmt`.
//!
//! Most tests format the same events with the plain format and with the wrapped one and
//! compare: the wrapped output must be the plain output plus the variables' fields, in
//! the place of the event's own fields, and nothing else.

use std::fmt;
use std::sync::{Arc, Barrier};
use std::thread;

use contextvars::{Context, ContextVar};
use contextvars_tracing::ContextFields;
use serde_json::{Value as Json, json};
use tracing::Dispatch;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::isolated;
use crate::log_buffer::Buffer;

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static TENANT: ContextVar<String> = contextvars::context_var!(String, "tenant");

/// The same subscriber twice, one plain and one with `ContextFields` wrapping its event
/// format (adding `$vars`), each writing to its own buffer.
macro_rules! plain_and_wrapped {
    ($builder:expr, |$format:ident| $wrap:expr) => {{
        let plain_buffer = Buffer::default();
        let wrapped_buffer = Buffer::default();
        let plain = Dispatch::new($builder.with_writer(plain_buffer.clone()).finish());
        let wrapped = Dispatch::new(
            $builder
                .with_writer(wrapped_buffer.clone())
                .map_event_format(|$format| $wrap)
                .finish(),
        );
        ((plain, plain_buffer), (wrapped, wrapped_buffer))
    }};
}

/// `tracing_subscriber::fmt()` without colours (the `ansi` feature is on for the tests
/// of the `Pretty` format).
fn fmt() -> tracing_subscriber::fmt::SubscriberBuilder {
    tracing_subscriber::fmt().with_ansi(false)
}

/// Runs `events` once under each dispatcher.
fn run_both(plain: &Dispatch, wrapped: &Dispatch, events: impl Fn()) {
    tracing::dispatcher::with_default(plain, &events);
    tracing::dispatcher::with_default(wrapped, &events);
}

/// Events inside a span, in a context with both variables set.
fn request_events() {
    isolated(|| {
        let _id = REQUEST_ID.set(7);
        let _tenant = TENANT.set("acme".to_owned());
        let span = tracing::info_span!("request", path = "/orders");
        let _entered = span.enter();
        tracing::info!(user = "ada", count = 3u64, ratio = 0.5, ok = true, "hello");
        tracing::warn!(error = %"boom", debug = ?Some(1), last = -4i64, "second");
    });
}

/// `plain` with `fields` inserted after the text `after` (the event's last field).
fn insert_after(plain: &str, after: &str, fields: &str) -> String {
    let at = plain.find(after).expect("the event's last field") + after.len();
    format!("{}{fields}{}", &plain[..at], &plain[at..])
}

#[test]
fn json_variables_are_fields_of_their_own_type() {
    let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
        fmt()
            .json()
            .without_time()
            .with_current_span(true)
            .with_span_list(true),
        |format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT)
    );
    run_both(&plain, &wrapped, request_events);

    let plain = plain_out.json_lines();
    let wrapped = wrapped_out.json_lines();
    assert_eq!(plain.len(), 2);
    assert_eq!(wrapped.len(), 2);
    for (plain, wrapped) in plain.iter().zip(&wrapped) {
        assert_eq!(wrapped["fields"]["request_id"], json!(7));
        assert!(wrapped["fields"]["request_id"].is_u64());
        assert_eq!(wrapped["fields"]["tenant"], json!("acme"));
        assert_eq!(wrapped["span"]["name"], json!("request"));
        assert_eq!(wrapped["spans"][0]["path"], json!("/orders"));
        // Without the two fields, the line is the plain line: message, the event's own
        // fields (with their JSON types), level, target, span and span list.
        let mut without = wrapped.clone();
        let fields = without["fields"].as_object_mut().unwrap();
        fields.remove("request_id");
        fields.remove("tenant");
        assert_eq!(&without, plain);
    }
    assert_eq!(wrapped[0]["fields"]["message"], json!("hello"));
    assert_eq!(wrapped[0]["fields"]["count"], json!(3));
    assert_eq!(wrapped[0]["fields"]["ratio"], json!(0.5));
    assert_eq!(wrapped[0]["fields"]["ok"], json!(true));
    assert_eq!(wrapped[1]["fields"]["error"], json!("boom"));
    assert_eq!(wrapped[1]["fields"]["debug"], json!("Some(1)"));
    assert_eq!(wrapped[1]["fields"]["last"], json!(-4));
}

#[test]
fn json_flattened_variables_are_top_level_keys() {
    let ((plain, plain_out), (wrapped, wrapped_out)) =
        plain_and_wrapped!(fmt().json().flatten_event(true).without_time(), |format| {
            ContextFields::new(format).var(&REQUEST_ID).var(&TENANT)
        });
    run_both(&plain, &wrapped, request_events);
    for (plain, wrapped) in plain_out.json_lines().iter().zip(wrapped_out.json_lines()) {
        assert_eq!(wrapped["request_id"], json!(7));
        assert_eq!(wrapped["tenant"], json!("acme"));
        let mut without = wrapped.clone();
        without.as_object_mut().unwrap().remove("request_id");
        without.as_object_mut().unwrap().remove("tenant");
        assert_eq!(&without, plain);
    }
}

#[test]
fn full_text_format_adds_the_fields_after_the_events_own() {
    let ((plain, plain_out), (wrapped, wrapped_out)) =
        plain_and_wrapped!(fmt().without_time(), |format| ContextFields::new(format)
            .var(&REQUEST_ID)
            .var(&TENANT));
    run_both(&plain, &wrapped, request_events);
    let plain = plain_out.lines();
    let wrapped = wrapped_out.lines();
    assert_eq!(plain.len(), 2);
    assert!(
        plain[0].contains("request{path=\"/orders\"}"),
        "{}",
        plain[0]
    );
    let added = " request_id=7 tenant=\"acme\"";
    assert_eq!(wrapped[0], insert_after(&plain[0], "ok=true", added));
    assert_eq!(wrapped[1], insert_after(&plain[1], "last=-4", added));
    assert!(
        wrapped[0]
            .ends_with("hello user=\"ada\" count=3 ratio=0.5 ok=true request_id=7 tenant=\"acme\""),
        "{}",
        wrapped[0]
    );
}

#[test]
fn compact_text_format_adds_the_fields_after_the_events_own() {
    let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
        fmt().compact().without_time(),
        |format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT)
    );
    run_both(&plain, &wrapped, request_events);
    let plain = plain_out.lines();
    let wrapped = wrapped_out.lines();
    assert_eq!(plain.len(), 2);
    let added = " request_id=7 tenant=\"acme\"";
    assert_eq!(wrapped[0], insert_after(&plain[0], "ok=true", added));
    assert_eq!(wrapped[1], insert_after(&plain[1], "last=-4", added));
}

#[test]
fn pretty_text_format_adds_the_fields_after_the_events_own() {
    let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
        fmt().pretty().without_time(),
        |format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT)
    );
    run_both(&plain, &wrapped, request_events);
    let plain = plain_out.text();
    let wrapped = wrapped_out.text();
    let expected = insert_after(&plain, "ok: true", ", request_id: 7, tenant: \"acme\"");
    let expected = insert_after(&expected, "last: -4", ", request_id: 7, tenant: \"acme\"");
    assert_eq!(wrapped, expected);
}

#[test]
fn the_layer_form_works_too() {
    use tracing_subscriber::layer::SubscriberExt;

    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID)),
    );
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _id = REQUEST_ID.set(11);
            tracing::info!("via a layer");
        })
    });
    let lines = buffer.json_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["fields"]["request_id"], json!(11));
    assert_eq!(lines[0]["fields"]["message"], json!("via a layer"));
}

/// A JSON subscriber with both variables, and its buffer.
fn json_subscriber() -> (Dispatch, Buffer) {
    let buffer = Buffer::default();
    let dispatch = Dispatch::new(
        fmt()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT))
            .finish(),
    );
    (dispatch, buffer)
}

#[test]
fn values_are_those_of_the_events_own_context() {
    let (dispatch, buffer) = json_subscriber();
    tracing::dispatcher::with_default(&dispatch, || {
        let first = Context::new();
        let second = Context::new();
        first.run(|| {
            let _id = REQUEST_ID.set(1);
            let _tenant = TENANT.set("one".to_owned());
        });
        second.run(|| {
            let _id = REQUEST_ID.set(2);
            let _tenant = TENANT.set("two".to_owned());
        });
        first.run(|| tracing::info!(n = 1u64, "first"));
        second.run(|| tracing::info!(n = 2u64, "second"));
        first.run(|| {
            let _id = REQUEST_ID.set(10);
            tracing::info!(n = 10u64, "first, changed");
        });
        second.run(|| tracing::info!(n = 2u64, "second again"));
    });
    let lines = buffer.json_lines();
    let seen: Vec<(Json, Json, Json)> = lines
        .iter()
        .map(|line| {
            let fields = &line["fields"];
            (
                fields["n"].clone(),
                fields["request_id"].clone(),
                fields["tenant"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (json!(1), json!(1), json!("one")),
            (json!(2), json!(2), json!("two")),
            (json!(10), json!(10), json!("one")),
            (json!(2), json!(2), json!("two")),
        ]
    );
}

#[test]
fn threads_logging_concurrently_show_their_own_values() {
    const THREADS: u64 = 4;
    let events = crate::iterations(200) as u64;
    let (dispatch, buffer) = json_subscriber();
    let barrier = Barrier::new(THREADS as usize);
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (dispatch, barrier) = (&dispatch, &barrier);
            scope.spawn(move || {
                tracing::dispatcher::with_default(dispatch, || {
                    barrier.wait();
                    for i in 0..events {
                        let id = t * 1_000_000 + i;
                        Context::new().run(|| {
                            let _id = REQUEST_ID.set(id);
                            let _tenant = TENANT.set(format!("tenant-{t}"));
                            tracing::info!(expected = id, thread = t, "event");
                        });
                    }
                });
            });
        }
    });
    let lines = buffer.json_lines();
    assert_eq!(lines.len() as u64, THREADS * events);
    for line in lines {
        let fields = &line["fields"];
        assert_eq!(fields["request_id"], fields["expected"], "{line}");
        let thread = fields["thread"].as_u64().unwrap();
        assert_eq!(
            fields["tenant"],
            json!(format!("tenant-{thread}")),
            "{line}"
        );
    }
}

#[test]
fn variables_without_a_value_are_left_out_and_defaults_are_shown() {
    static UNSET: ContextVar<u64> = contextvars::context_var!(u64, "unset");
    static REGION: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "region", default "eu");
    static BROKEN: ContextVar<u64> =
        contextvars::context_var!(u64, "broken", lazy panic!("a lazy default that panics"));
    let buffer = Buffer::default();
    let subscriber = fmt()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var(&UNSET)
                .var(&REGION)
                .var(&BROKEN)
                .var(&REQUEST_ID)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            tracing::info!("nothing set");
            let _id = REQUEST_ID.set(5);
            tracing::info!("request set");
            let _region = REGION.set("us");
            let _unset = UNSET.set(1);
            tracing::info!("all set");
        })
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].ends_with(": nothing set region=\"eu\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with(": request set region=\"eu\" request_id=5"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with(": all set unset=1 region=\"us\" request_id=5"),
        "{}",
        lines[2]
    );
    assert!(!buffer.text().contains("broken"));
}

#[test]
fn an_event_with_no_variable_set_is_formatted_as_is() {
    let ((plain, plain_out), (wrapped, wrapped_out)) =
        plain_and_wrapped!(fmt().without_time(), |format| ContextFields::new(format)
            .var(&REQUEST_ID)
            .var(&TENANT));
    let events = || isolated(|| tracing::info!(a = 1, "no variables here"));
    run_both(&plain, &wrapped, events);
    assert_eq!(wrapped_out.text(), plain_out.text());
    assert!(plain_out.text().ends_with("no variables here a=1\n"));
}

/// An inner format that prints only the event's parentage and fields, to see what the
/// wrapped format is handed.
struct Parentage;

impl<S, N> FormatEvent<S, N> for Parentage
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if event.is_root() {
            write!(writer, "root")?;
        } else if let Some(parent) = event.parent() {
            let name = ctx.span(parent).map_or("?", |span| span.name());
            write!(writer, "explicit:{name}")?;
        } else if event.is_contextual() {
            write!(writer, "contextual")?;
        }
        write!(writer, " {} ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[test]
fn parentage_is_kept() {
    let buffer = Buffer::default();
    let subscriber = fmt()
        .with_writer(buffer.clone())
        .event_format(Parentage)
        .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _id = REQUEST_ID.set(3);
            let outer = tracing::info_span!("outer");
            let other = tracing::info_span!("other");
            let _entered = outer.enter();
            tracing::info!("in the current span");
            tracing::warn!(parent: &other, "explicit parent");
            tracing::error!(parent: None, "root");
        })
    });
    assert_eq!(
        buffer.lines(),
        [
            "contextual INFO in the current span request_id=3",
            "explicit:other WARN explicit parent request_id=3",
            "root ERROR root request_id=3",
        ]
    );
}

#[test]
fn json_explicit_parent_is_the_span_shown() {
    let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
        fmt().json().without_time().with_current_span(true),
        |format| ContextFields::new(format).var(&REQUEST_ID)
    );
    let events = || {
        isolated(|| {
            let _id = REQUEST_ID.set(3);
            let outer = tracing::info_span!("outer");
            let other = tracing::info_span!("other");
            let _entered = outer.enter();
            tracing::info!(parent: &other, "explicit parent");
        })
    };
    run_both(&plain, &wrapped, events);
    let plain = plain_out.json_lines();
    let wrapped = wrapped_out.json_lines();
    assert_eq!(plain[0]["span"]["name"], json!("other"));
    assert_eq!(wrapped[0]["span"]["name"], json!("other"));
    assert_eq!(wrapped[0]["fields"]["request_id"], json!(3));
}

#[test]
fn the_events_own_field_wins_a_name_clash() {
    static SHADOW: ContextVar<u64> = contextvars::context_var!(u64, "request_id"); // same name, other var
    let buffer = Buffer::default();
    let subscriber = fmt()
        .json()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var(&REQUEST_ID)
                .var(&SHADOW)
                .var(&TENANT)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _id = REQUEST_ID.set(7);
            let _shadow = SHADOW.set(8);
            let _tenant = TENANT.set("acme".to_owned());
            tracing::info!(request_id = 99u64, "own field");
            tracing::info!("no own field");
        })
    });
    let text = buffer.text();
    let lines = buffer.json_lines();
    // The event's own `request_id`, once (serde_json would keep the last of duplicates,
    // so count the key in the text too).
    assert_eq!(lines[0]["fields"]["request_id"], json!(99));
    assert_eq!(lines[0]["fields"]["tenant"], json!("acme"));
    let first_line = text.lines().next().unwrap();
    assert_eq!(
        first_line.matches("\"request_id\"").count(),
        1,
        "{first_line}"
    );
    // Of two variables with one name, the first added.
    assert_eq!(lines[1]["fields"]["request_id"], json!(7));
    let second_line = text.lines().nth(1).unwrap();
    assert_eq!(
        second_line.matches("\"request_id\"").count(),
        1,
        "{second_line}"
    );
}

#[test]
fn display_and_debug_variables() {
    #[derive(Debug)]
    #[allow(dead_code)] // read by `Debug`
    struct Budget {
        millis: u32,
    }
    static PEER: ContextVar<std::net::IpAddr> = contextvars::context_var!(std::net::IpAddr, "peer");
    static BUDGET: ContextVar<Budget> = contextvars::context_var!(Budget, "budget");
    static TRACE_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "trace_id");
    static USER: ContextVar<Option<u64>> = contextvars::context_var!(Option<u64>, "user");
    let buffer = Buffer::default();
    let subscriber = fmt()
        .json()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var_display(&PEER)
                .var_debug(&BUDGET)
                .var_display(&TRACE_ID)
                .var(&USER)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _peer = PEER.set([10, 0, 0, 1].into());
            let _budget = BUDGET.set(Budget { millis: 250 });
            let _trace = TRACE_ID.set("abc".into());
            let user = USER.set(None);
            tracing::info!("typed");
            USER.reset(user).unwrap();
            let _user = USER.set(Some(12));
            tracing::info!("typed, with a user");
        })
    });
    let lines = buffer.json_lines();
    assert_eq!(lines[0]["fields"]["peer"], json!("10.0.0.1"));
    assert_eq!(
        lines[0]["fields"]["budget"],
        json!("Budget { millis: 250 }")
    );
    assert_eq!(lines[0]["fields"]["trace_id"], json!("abc"));
    // An `Option` variable that is `None` is left out; `Some` is its value.
    assert!(lines[0]["fields"].get("user").is_none(), "{}", lines[0]);
    assert_eq!(lines[1]["fields"]["user"], json!(12));
}

#[test]
fn errors_bytes_and_wide_integers_are_copied_faithfully() {
    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer failed")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner cause")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    for json in [false, true] {
        let events = || {
            isolated(|| {
                let _id = REQUEST_ID.set(1);
                let error = Outer(Inner);
                tracing::info!(
                    error = &error as &(dyn std::error::Error + 'static),
                    wide = u128::MAX,
                    negative = i128::MIN,
                    bytes = &b"\x00\xffab"[..],
                    "kinds"
                );
            })
        };
        let (plain, wrapped) = if json {
            let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
                fmt().json().without_time(),
                |format| ContextFields::new(format).var(&REQUEST_ID)
            );
            run_both(&plain, &wrapped, events);
            (plain_out.text(), wrapped_out.text())
        } else {
            let ((plain, plain_out), (wrapped, wrapped_out)) =
                plain_and_wrapped!(fmt().without_time(), |format| ContextFields::new(format)
                    .var(&REQUEST_ID));
            run_both(&plain, &wrapped, events);
            (plain_out.text(), wrapped_out.text())
        };
        if json {
            let mut wrapped: Json = serde_json::from_str(&wrapped).unwrap();
            let plain: Json = serde_json::from_str(&plain).unwrap();
            assert_eq!(wrapped["fields"]["request_id"], json!(1));
            wrapped["fields"]
                .as_object_mut()
                .unwrap()
                .remove("request_id");
            assert_eq!(wrapped, plain);
        } else {
            // The text format prints the error's source chain.
            assert!(plain.contains("error.sources=[inner cause]"), "{plain}");
            let expected = format!("{} request_id=1\n", plain.trim_end());
            assert_eq!(wrapped, expected);
        }
    }
}

#[test]
fn a_value_whose_debug_logs_and_reads_variables_neither_deadlocks_nor_panics() {
    struct Noisy;
    impl fmt::Debug for Noisy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // With a scoped dispatcher, tracing drops an event emitted while one is being
            // dispatched on this thread; the global-dispatcher case, where the event does
            // reach the subscriber again, is in `tests/tracing_global.rs`.
            tracing::info!("from Debug");
            let _guard = TENANT.scoped_set("set in Debug".to_owned());
            write!(
                f,
                "noisy({:?}, {:?})",
                REQUEST_ID.try_get().ok(),
                TENANT.get()
            )
        }
    }
    static NOISY: ContextVar<Noisy> = contextvars::context_var!(Noisy, "noisy");
    let buffer = Buffer::default();
    let subscriber = fmt()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var(&REQUEST_ID)
                .var_debug(&NOISY)
                .var(&TENANT)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _id = REQUEST_ID.set(4);
            let _noisy = NOISY.set(Noisy);
            let _tenant = TENANT.set("acme".to_owned());
            tracing::info!("outer");
            assert_eq!(TENANT.get(), "acme");
        })
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].ends_with(
            ": outer request_id=4 noisy=noisy(Some(4), \"set in Debug\") tenant=\"acme\""
        ),
        "{}",
        lines[0]
    );
}

#[test]
fn a_value_whose_display_panics_is_left_out() {
    struct Panics;
    impl fmt::Display for Panics {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("a Display that panics")
        }
    }
    static BAD: ContextVar<Panics> = contextvars::context_var!(Panics, "bad");
    let buffer = Buffer::default();
    let subscriber = fmt()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var_display(&BAD)
                .var(&REQUEST_ID)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _bad = BAD.set(Panics);
            let _id = REQUEST_ID.set(2);
            tracing::info!(a = 1, "survives");
        })
    });
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].ends_with(": survives a=1 request_id=2"),
        "{}",
        lines[0]
    );
}

#[test]
fn log_records_keep_their_own_target_file_and_line() {
    // Forwards `log` records to the current tracing dispatcher (process-wide; no other
    // test uses `log`, and a second `init` is refused harmlessly).
    let _ = tracing_log::LogTracer::init();
    for json in [false, true] {
        let events = || {
            isolated(|| {
                let _id = REQUEST_ID.set(5);
                log::warn!(target: "billing", "from log {}", 1);
                log::info!("from log, default target");
            })
        };
        let (plain, wrapped) = if json {
            let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
                fmt()
                    .json()
                    .without_time()
                    .with_file(true)
                    .with_line_number(true),
                |format| ContextFields::new(format).var(&REQUEST_ID)
            );
            run_both(&plain, &wrapped, events);
            (plain_out.text(), wrapped_out.text())
        } else {
            let ((plain, plain_out), (wrapped, wrapped_out)) = plain_and_wrapped!(
                fmt().without_time().with_file(true).with_line_number(true),
                |format| ContextFields::new(format).var(&REQUEST_ID)
            );
            run_both(&plain, &wrapped, events);
            (plain_out.text(), wrapped_out.text())
        };
        let plain: Vec<&str> = plain.lines().collect();
        let wrapped: Vec<&str> = wrapped.lines().collect();
        assert_eq!(plain.len(), 2);
        assert_eq!(wrapped.len(), 2);
        if json {
            for (plain, wrapped) in plain.iter().zip(&wrapped) {
                let plain: Json = serde_json::from_str(plain).unwrap();
                let mut wrapped: Json = serde_json::from_str(wrapped).unwrap();
                assert_eq!(wrapped["fields"]["request_id"], json!(5));
                wrapped["fields"]
                    .as_object_mut()
                    .unwrap()
                    .remove("request_id");
                assert_eq!(wrapped, plain);
            }
            let first: Json = serde_json::from_str(wrapped[0]).unwrap();
            assert_eq!(first["target"], json!("billing"));
            assert!(first["line_number"].is_u64());
        } else {
            // Normalized like the plain format: the record's target, file and line.
            assert!(plain[0].contains(" billing: "), "{}", plain[0]);
            assert!(plain[0].contains("tracing_fields.rs:"), "{}", plain[0]);
            for (plain, wrapped) in plain.iter().zip(&wrapped) {
                assert_eq!(*wrapped, format!("{plain} request_id=5"));
            }
        }
    }
}

#[test]
fn named_renames_the_last_variable_and_raw_identifiers_clash() {
    contextvars::context_var! {
        static KIND: &'static str;
        static ATTEMPT: u32;
    }
    let buffer = Buffer::default();
    let subscriber = fmt()
        .json()
        .without_time()
        .with_writer(buffer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var(&KIND)
                .named("type")
                .var(&ATTEMPT)
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        isolated(|| {
            let _kind = KIND.set("from context");
            let _attempt = ATTEMPT.set(2);
            tracing::info!("renamed");
            tracing::info!(r#type = "own", "raw identifier");
        })
    });
    let lines = buffer.json_lines();
    assert_eq!(lines[0]["fields"]["type"], json!("from context"));
    assert_eq!(lines[0]["fields"]["ATTEMPT"], json!(2));
    assert_eq!(lines[1]["fields"]["type"], json!("own"));
    let second = buffer.lines()[1].clone();
    assert_eq!(second.matches("\"type\"").count(), 1, "{second}");
}

/// `tower::RequestId`'s variable type, `Arc<str>`, is named in `var` directly and
/// recorded as text: a string in JSON, quoted in the text formats, as a `String` is.
#[test]
fn an_arc_str_request_id_is_text_in_json_and_in_text() {
    static ARC_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "request_id");
    let ((plain, plain_buffer), (wrapped, wrapped_buffer)) =
        plain_and_wrapped!(fmt().without_time(), |format| ContextFields::new(format)
            .var(&ARC_ID));
    run_both(&plain, &wrapped, || {
        isolated(|| {
            let _id = ARC_ID.set(Arc::from("4f2a"));
            tracing::info!(user = "ada", "hello");
        })
    });
    let plain = plain_buffer.text();
    assert_eq!(
        wrapped_buffer.text(),
        insert_after(&plain, "user=\"ada\"", " request_id=\"4f2a\"")
    );

    let buffer = Buffer::default();
    let json = Dispatch::new(
        fmt()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| ContextFields::new(format).var(&ARC_ID))
            .finish(),
    );
    tracing::dispatcher::with_default(&json, || {
        isolated(|| {
            let _id = ARC_ID.set(Arc::from("4f2a"));
            tracing::info!("hello");
        })
    });
    let lines = buffer.json_lines();
    assert_eq!(
        lines[0]["fields"]["request_id"],
        json!("4f2a"),
        "{}",
        lines[0]
    );
}

/// Text of every owned and borrowed kind, `Option`s, `Box`es and `NonZero`s: each is the
/// field its contents would be at a log call.
#[test]
fn text_numbers_and_wrappers_are_fields_of_their_own_kind() {
    use std::borrow::Cow;
    use std::num::NonZero;
    static BOXED: ContextVar<Box<str>> = contextvars::context_var!(Box<str>, "boxed");
    static COW: ContextVar<Cow<'static, str>> = contextvars::context_var!(Cow<'static, str>, "cow");
    static STATIC: ContextVar<&'static str> =
        contextvars::context_var!(&'static str, "static", default "fixed");
    static MAYBE: ContextVar<Option<Arc<str>>> =
        contextvars::context_var!(Option<Arc<str>>, "maybe");
    static BYTES: ContextVar<Arc<[u8]>> = contextvars::context_var!(Arc<[u8]>, "bytes");
    static NONZERO: ContextVar<NonZero<u32>> = contextvars::context_var!(NonZero<u32>, "nonzero");
    static RATIO: ContextVar<f32> = contextvars::context_var!(f32, "ratio");
    static BOXED_NUMBER: ContextVar<Box<i64>> = contextvars::context_var!(Box<i64>, "boxed_number");
    let buffer = Buffer::default();
    let dispatch = Dispatch::new(
        fmt()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| {
                ContextFields::new(format)
                    .var(&BOXED)
                    .var(&COW)
                    .var(&STATIC)
                    .var(&MAYBE)
                    .var(&BYTES)
                    .var(&NONZERO)
                    .var(&RATIO)
                    .var(&BOXED_NUMBER)
            })
            .finish(),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        isolated(|| {
            let _boxed = BOXED.set("boxed".into());
            let _cow = COW.set(Cow::Owned("owned".to_owned()));
            let _maybe = MAYBE.set(Some("some".into()));
            let _bytes = BYTES.set(Arc::from(&b"ab"[..]));
            let _nonzero = NONZERO.set(NonZero::new(9).unwrap());
            let _ratio = RATIO.set(0.5);
            let _number = BOXED_NUMBER.set(Box::new(-3));
            tracing::info!("all");
            let _cow = COW.set(Cow::Borrowed("borrowed"));
            let _maybe = MAYBE.set(None);
            // The same values written at the call, for comparison.
            tracing::info!(bytes = &b"ab"[..], "at the call");
        })
    });
    let lines = buffer.json_lines();
    let fields = &lines[0]["fields"];
    assert_eq!(fields["boxed"], json!("boxed"), "{fields}");
    assert_eq!(fields["cow"], json!("owned"), "{fields}");
    assert_eq!(fields["static"], json!("fixed"), "{fields}");
    assert_eq!(fields["maybe"], json!("some"), "{fields}");
    assert_eq!(fields["bytes"], lines[1]["fields"]["bytes"], "{fields}");
    assert_eq!(fields["nonzero"], json!(9), "{fields}");
    assert_eq!(fields["ratio"], json!(0.5), "{fields}");
    assert_eq!(fields["boxed_number"], json!(-3), "{fields}");
    assert_eq!(lines[1]["fields"]["cow"], json!("borrowed"));
    assert!(lines[1]["fields"].get("maybe").is_none(), "{}", lines[1]);
}

/// Every type a codec of `contextvars_opentelemetry` decodes baggage into is named in
/// `var` directly: integers stay numbers, text is a string, a `Duration` its `Debug`
/// text, an `Instant` the time from the event to it.
#[test]
fn every_codecs_type_is_named_in_var_directly() {
    use std::time::{Duration, Instant};

    use contextvars_opentelemetry::{Bool, Codec, Deadline, Int, Millis, Text};
    use contextvars_tracing::FieldValue;

    /// What `codec` decodes `text` into, for a type `var` takes.
    fn decoded<T: FieldValue>(codec: &impl Codec<T>, text: &str) -> T {
        codec.decode(text).unwrap()
    }

    macro_rules! int_vars {
        ($($name:ident: $t:ty = $text:literal,)*) => {
            $(static $name: ContextVar<$t> = contextvars::context_var!($t, stringify!($t));)*
            /// Adds the integer variables.
            fn add_ints<E>(fields: ContextFields<E>) -> ContextFields<E> {
                fields$(.var(&$name))*
            }
            /// Sets each integer variable to its codec's reading of its text, for `f`.
            fn with_ints(f: impl FnOnce()) {
                let tokens = ($($name.set(decoded(&Int, $text)),)*);
                f();
                drop(tokens);
            }
            /// Each integer variable's field name and its text.
            fn int_fields() -> Vec<(&'static str, &'static str)> {
                vec![$((stringify!($t), $text),)*]
            }
        };
    }
    int_vars! {
        U8: u8 = "8",
        U16: u16 = "16",
        U32: u32 = "32",
        U64: u64 = "64",
        U128: u128 = "128",
        USIZE: usize = "7",
        I8: i8 = "-8",
        I16: i16 = "-16",
        I32: i32 = "-32",
        I64: i64 = "-64",
        I128: i128 = "-128",
        ISIZE: isize = "-7",
    }
    static STRING: ContextVar<String> = contextvars::context_var!(String, "string");
    static ARC: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "arc");
    static BOXED: ContextVar<Box<str>> = contextvars::context_var!(Box<str>, "boxed");
    static FLAG: ContextVar<bool> = contextvars::context_var!(bool, "flag");
    static BUDGET: ContextVar<Duration> = contextvars::context_var!(Duration, "budget");
    static DEADLINE: ContextVar<Instant> = contextvars::context_var!(Instant, "deadline");
    static STARTED: ContextVar<Instant> = contextvars::context_var!(Instant, "started");

    let buffer = Buffer::default();
    let dispatch = Dispatch::new(
        fmt()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| {
                add_ints(ContextFields::new(format))
                    .var(&STRING)
                    .var(&ARC)
                    .var(&BOXED)
                    .var(&FLAG)
                    .var(&BUDGET)
                    .var(&DEADLINE)
                    .var(&STARTED)
            })
            .finish(),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        isolated(|| {
            with_ints(|| {
                let _string = STRING.set(decoded(&Text, "acme"));
                let _arc = ARC.set(decoded(&Text, "4f2a"));
                let _boxed = BOXED.set(decoded(&Text, "eu"));
                let _flag = FLAG.set(decoded(&Bool, "true"));
                let _budget = BUDGET.set(decoded(&Millis, "250"));
                let _deadline = DEADLINE.set(decoded(&Deadline, "3600000"));
                let _started = STARTED.set(Instant::now() - Duration::from_secs(3600));
                tracing::info!("decoded");
            })
        });
        // 128-bit integers at a log call, for comparison.
        tracing::info!(wide = 128u128, negative = -128i128, "at the call");
    });
    let lines = buffer.json_lines();
    let fields = &lines[0]["fields"];
    assert_eq!(lines[1]["fields"]["wide"], json!("128"), "{}", lines[1]);
    for (name, text) in int_fields() {
        let expected = match name {
            // tracing-subscriber's JSON writes 128-bit integers as strings, as it does
            // at a log call.
            "u128" => lines[1]["fields"]["wide"].clone(),
            "i128" => lines[1]["fields"]["negative"].clone(),
            _ => serde_json::from_str(text).unwrap(),
        };
        assert_eq!(fields[name], expected, "{name}: {fields}");
    }
    assert_eq!(fields["string"], json!("acme"), "{fields}");
    assert_eq!(fields["arc"], json!("4f2a"), "{fields}");
    assert_eq!(fields["boxed"], json!("eu"), "{fields}");
    assert_eq!(fields["flag"], json!(true), "{fields}");
    assert_eq!(fields["budget"], json!("250ms"), "{fields}");
    // `Duration`'s `Debug` text in seconds, as a number.
    let seconds = |name: &str| -> f64 {
        let text = fields[name].as_str().unwrap();
        text.strip_suffix('s').unwrap().parse().unwrap()
    };
    // An hour ahead, read a little later: just under an hour (`3599.99...s`).
    let deadline = seconds("deadline");
    assert!((3_500.0..=3_600.0).contains(&deadline), "{fields}");
    // An hour ago: a little over an hour, negative (`-3600.00...s`).
    let started = seconds("started");
    assert!((-3_700.0..=-3_600.0).contains(&started), "{fields}");
}
