//! `contextvars_tracing::ContextFields` under a panic hook that logs through `tracing`
//! (a common set-up): a panic must stay a panic, never become an abort ("panicked while
//! processing panic"), whatever the variables' `Display` and `Debug` do.
//!
//! A panic hook is process-wide, and the failure guarded against kills the process, so
//! each scenario runs in a child process: this test binary again, running only the test
//! that started it, with [`SCENARIO`] set. The parent checks the child's exit status and
//! its output (the child's subscriber writes to its stdout).

use std::fmt;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use contextvars::{Context, ContextVar};
use contextvars_tracing::ContextFields;
use serde_json::{Value as Json, json};

/// The environment variable that makes a test run its scenario (its value says which)
/// instead of starting a child.
const SCENARIO: &str = "CONTEXTVARS_PANIC_HOOK_SCENARIO";

/// The text a child prints once its scenario has run to the end.
const SURVIVED: &str = "scenario survived";

static REQUEST_ID: ContextVar<Arc<str>> = contextvars::context_var!(Arc<str>, "request_id");
static ATTEMPT: ContextVar<u32> = contextvars::context_var!(u32, "attempt");
static PEER: ContextVar<IpAddr> = contextvars::context_var!(IpAddr, "peer");
static BAD_DISPLAY: ContextVar<PanicsInDisplay> =
    contextvars::context_var!(PanicsInDisplay, "bad_display");
static BAD_DEBUG: ContextVar<PanicsInDebug> = contextvars::context_var!(PanicsInDebug, "bad_debug");
/// Read before the panic, so its lazy default is computed by then.
static COMPUTED: ContextVar<u64> = contextvars::context_var!(u64, "computed", lazy 5);
/// Never read before the panic: its initialiser must not run inside the hook.
static NOT_COMPUTED: ContextVar<u64> = contextvars::context_var!(u64, "not_computed", lazy {
    NOT_COMPUTED_RAN.store(true, Ordering::SeqCst);
    6
});
static NOT_COMPUTED_RAN: AtomicBool = AtomicBool::new(false);

struct PanicsInDisplay;

impl fmt::Display for PanicsInDisplay {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("a Display that panics")
    }
}

struct PanicsInDebug;

impl fmt::Debug for PanicsInDebug {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("a Debug that panics")
    }
}

/// The format of the child's subscriber.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Text,
    Json,
}

/// Which variable of the child panics when it is formatted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    Display,
    Debug,
}

impl Bad {
    /// The variable's field name.
    fn field(self) -> &'static str {
        match self {
            Bad::Display => "bad_display",
            Bad::Debug => "bad_debug",
        }
    }

    /// Its panic's message.
    fn message(self) -> &'static str {
        match self {
            Bad::Display => "a Display that panics",
            Bad::Debug => "a Debug that panics",
        }
    }
}

/// Every variable of the scenarios, around `format`.
fn wrap<E>(format: E) -> ContextFields<E> {
    ContextFields::new(format)
        .var(&REQUEST_ID)
        .var(&ATTEMPT)
        .var_display(&PEER)
        .var_display(&BAD_DISPLAY)
        .var_debug(&BAD_DEBUG)
        .var(&COMPUTED)
        .var(&NOT_COMPUTED)
}

/// The child's side: a global subscriber wrapped with `ContextFields`, a panic hook that
/// logs the panic through `tracing`, then a panic of the program's own, then an event
/// whose variable panics (which runs the hook from inside the variable's formatting).
fn child(format: Format, bad: Bad) {
    // End the test harness's `test name ... ` line: the events start on lines of their own.
    println!();
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stdout);
    match format {
        Format::Text => {
            tracing::subscriber::set_global_default(builder.map_event_format(wrap).finish())
        }
        Format::Json => {
            tracing::subscriber::set_global_default(builder.json().map_event_format(wrap).finish())
        }
    }
    .unwrap();
    panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("?");
        tracing::error!(payload = text, "panicked");
    }));
    Context::new().run(|| {
        let _id = REQUEST_ID.set(Arc::from("req-7"));
        let _attempt = ATTEMPT.set(3);
        let _peer = PEER.set([10, 0, 0, 1].into());
        let _bad_display = (bad == Bad::Display).then(|| BAD_DISPLAY.set(PanicsInDisplay));
        let _bad_debug = (bad == Bad::Debug).then(|| BAD_DEBUG.set(PanicsInDebug));
        assert_eq!(COMPUTED.get(), 5);
        let result = panic::catch_unwind(AssertUnwindSafe(|| panic!("the program's own")));
        assert!(result.is_err());
        println!(
            "not_computed's initialiser ran: {}",
            NOT_COMPUTED_RAN.load(Ordering::SeqCst)
        );
        // Formatting this event runs the hook from inside the panicking variable's
        // formatting (the variables are read in the order they were added, so
        // `not_computed`, added last, is not computed yet then).
        tracing::info!("an event");
    });
    println!("{SURVIVED}");
}

/// Runs this test binary's test `name` in a child with [`SCENARIO`] set to `scenario`,
/// and returns its stdout once it has exited successfully.
fn run_child(name: &str, scenario: &str) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child did not exit successfully ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
    assert!(stdout.contains(SURVIVED), "{stdout}");
    assert!(
        stdout.contains("not_computed's initialiser ran: false"),
        "{stdout}"
    );
    stdout
}

/// Runs `child(format, bad)` if this process is the child of test `name`, else starts
/// that child and checks what it wrote; the events' fields, one map per event line.
fn scenario(name: &str, format: Format, bad: Bad) -> Option<Vec<serde_json::Map<String, Json>>> {
    let scenario = format!("{format:?}/{bad:?}");
    if let Ok(wanted) = std::env::var(SCENARIO) {
        if wanted == scenario {
            child(format, bad);
        }
        return None;
    }
    let stdout = run_child(name, &scenario);
    let events = match format {
        Format::Json => stdout
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| {
                let event: Json = serde_json::from_str(line).unwrap();
                event["fields"].as_object().unwrap().clone()
            })
            .collect(),
        Format::Text => stdout
            .lines()
            .filter(|line| line.starts_with(" INFO ") || line.starts_with("ERROR "))
            .filter_map(|line| line.split_once(": "))
            .map(|(_, rest)| text_fields(rest))
            .collect(),
    };
    Some(events)
}

/// The fields of a text event after its target: `message key=value key="value" ...`,
/// with the message under `message` (here no message has a `=`, and no quoted value a
/// `"`).
fn text_fields(rest: &str) -> serde_json::Map<String, Json> {
    let mut fields = serde_json::Map::new();
    let mut message = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let word_end = rest.find(' ').unwrap_or(rest.len());
        let word = &rest[..word_end];
        let mut next = word_end;
        match word.split_once('=') {
            Some((key, value)) if value.starts_with('"') => {
                // A quoted value runs to the next `"`, spaces included.
                let start = key.len() + 2;
                let len = rest[start..].find('"').expect("a closing quote");
                fields.insert(key.to_owned(), json!(&rest[start..start + len]));
                next = start + len + 1;
            }
            Some((key, value)) => {
                let value = value
                    .parse::<u64>()
                    .map_or_else(|_| json!(value), |number| json!(number));
                fields.insert(key.to_owned(), value);
            }
            None => message.push(word),
        }
        rest = rest[next..].trim_start();
    }
    fields.insert("message".to_owned(), json!(message.join(" ")));
    fields
}

/// The event whose message is `message` (and whose `payload` is `payload`, if given).
fn event<'a>(
    events: &'a [serde_json::Map<String, Json>],
    message: &str,
    payload: Option<&str>,
) -> &'a serde_json::Map<String, Json> {
    events
        .iter()
        .find(|fields| {
            fields["message"] == json!(message)
                && payload.is_none_or(|payload| fields.get("payload") == Some(&json!(payload)))
        })
        .unwrap_or_else(|| panic!("no event {message:?} ({payload:?}) in {events:?}"))
}

/// What every scenario checks: outside the hook, every variable that can be formatted
/// is shown; inside it, only those whose formatting runs no code of the program's.
fn check(events: &[serde_json::Map<String, Json>], bad: Bad) {
    let request_id = json!("req-7");
    // `Display` text (unquoted in the text format).
    let peer = json!("10.0.0.1");

    // The event formatted outside any panic: the variable that panics is left out,
    // the others are shown (`not_computed` computed now).
    let outside = event(events, "an event", None);
    assert_eq!(outside["request_id"], request_id, "{outside:?}");
    assert_eq!(outside["attempt"], json!(3), "{outside:?}");
    assert_eq!(outside["peer"], peer, "{outside:?}");
    assert_eq!(outside["computed"], json!(5), "{outside:?}");
    assert_eq!(outside["not_computed"], json!(6), "{outside:?}");
    assert!(outside.get(bad.field()).is_none(), "{outside:?}");

    // The hook's events: the one for the program's panic and the one for the
    // variable's (logged from inside the formatting of "an event"). Both keep the
    // variables that record no program code (`Arc<str>`, integers, a lazy default
    // already computed), and leave out the `Display`/`Debug` ones and the lazy default
    // not yet computed.
    for payload in [bad.message(), "the program's own"] {
        let hook = event(events, "panicked", Some(payload));
        assert_eq!(hook["request_id"], request_id, "{hook:?}");
        assert_eq!(hook["attempt"], json!(3), "{hook:?}");
        assert_eq!(hook["computed"], json!(5), "{hook:?}");
        for left_out in ["peer", "bad_display", "bad_debug", "not_computed"] {
            assert!(hook.get(left_out).is_none(), "{left_out}: {hook:?}");
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)] // starts a process: miri's isolation forbids it
fn text_a_display_that_panics() {
    let (format, bad) = (Format::Text, Bad::Display);
    if let Some(events) = scenario("text_a_display_that_panics", format, bad) {
        check(&events, bad);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // starts a process: miri's isolation forbids it
fn text_a_debug_that_panics() {
    let (format, bad) = (Format::Text, Bad::Debug);
    if let Some(events) = scenario("text_a_debug_that_panics", format, bad) {
        check(&events, bad);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // starts a process: miri's isolation forbids it
fn json_a_display_that_panics() {
    let (format, bad) = (Format::Json, Bad::Display);
    if let Some(events) = scenario("json_a_display_that_panics", format, bad) {
        check(&events, bad);
    }
}

#[test]
#[cfg_attr(miri, ignore)] // starts a process: miri's isolation forbids it
fn json_a_debug_that_panics() {
    let (format, bad) = (Format::Json, Bad::Debug);
    if let Some(events) = scenario("json_a_debug_that_panics", format, bad) {
        check(&events, bad);
    }
}
