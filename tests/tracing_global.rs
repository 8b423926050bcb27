//! `contextvars_tracing::ContextFields` with process-wide state, so in a test binary of
//! its own rather than in `tests/it`:
//!
//! * formatting an event re-entrantly (a variable's `Debug` logs while the event it is a
//!   field of is being formatted): only a *global* subscriber receives an event emitted
//!   while another is being dispatched on the same thread, and only while no scoped
//!   dispatcher exists anywhere in the process;
//! * the allocations of a wrapped event, counted by a global allocator.
//!
//! The tests take [`serial`]: the allocation test's scoped dispatchers must not exist
//! while the re-entrancy test runs.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

use contextvars::{Context, ContextVar};
use contextvars_tracing::ContextFields;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

#[path = "support/log_buffer.rs"]
mod log_buffer;
use log_buffer::Buffer;

static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
static NOISY: ContextVar<Noisy> = contextvars::context_var!(Noisy, "noisy");

thread_local! {
    static IN_DEBUG: Cell<bool> = const { Cell::new(false) };
}

/// Logs an event from its `Debug` (once: the nested event formats `NOISY` too), and
/// reads and sets variables there.
struct Noisy;

impl fmt::Debug for Noisy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !IN_DEBUG.replace(true) {
            let _id = REQUEST_ID.scoped_set(99);
            tracing::info!(nested = true, "from Debug");
            IN_DEBUG.set(false);
        }
        write!(f, "noisy({:?})", REQUEST_ID.try_get().ok())
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the tests of this binary one at a time.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_wrapped_event_allocates_no_more_than_a_plain_one() {
    static TENANT: ContextVar<String> = contextvars::context_var!(String, "tenant");
    let _serial = serial();
    let plain = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .without_time()
            .with_writer(io::sink)
            .finish(),
    );
    let wrapped = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .without_time()
            .with_writer(io::sink)
            .map_event_format(|format| ContextFields::new(format).var(&REQUEST_ID).var(&TENANT))
            .finish(),
    );
    let events = || {
        for i in 0..100u64 {
            tracing::info!(user = "ada", i, debug = ?(i, "x"), "event {i}");
        }
    };
    Context::new().run(|| {
        let _id = REQUEST_ID.set(7);
        let _tenant = TENANT.set("acme".to_owned());
        let mut counts = [0; 2];
        for (dispatch, count) in [&plain, &wrapped].into_iter().zip(&mut counts) {
            tracing::dispatcher::with_default(dispatch, || {
                events(); // warm up: buffers, caches, the combined callsite
                *count = allocations(events).0;
            });
        }
        let [plain, wrapped] = counts;
        // Plain JSON formatting allocates nothing once warm (its buffer is reused), and
        // neither do the wrapper's copies.
        assert!(
            wrapped <= plain,
            "100 events: plain {plain} allocations, wrapped {wrapped}"
        );
    });
}

/// The global subscriber (JSON, with `REQUEST_ID` and `NOISY`), installed on first use,
/// and its buffer.
fn global() -> &'static Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .without_time()
            .with_writer(buffer.clone())
            .map_event_format(|format| {
                ContextFields::new(format)
                    .var(&REQUEST_ID)
                    .var_debug(&NOISY)
            })
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

#[test]
fn an_event_logged_while_formatting_one_is_formatted_too() {
    let _serial = serial();
    let buffer = global();
    let start = buffer.len();

    Context::new().run(|| {
        let _id = REQUEST_ID.set(4);
        let _noisy = NOISY.set(Noisy);
        tracing::info!("outer");
        tracing::info!("outer again");
        assert_eq!(REQUEST_ID.get(), 4);
    });

    let lines = buffer.json_lines_from(start);
    // Each nested event is written before the event whose formatting logged it.
    let summary: Vec<_> = lines
        .iter()
        .map(|line| {
            let fields = &line["fields"];
            (
                fields["message"].as_str().unwrap().to_owned(),
                fields["request_id"].clone(),
                fields["noisy"].clone(),
            )
        })
        .collect();
    let expected = [
        ("from Debug", 99, "noisy(Some(99))"),
        ("outer", 4, "noisy(Some(4))"),
        ("from Debug", 99, "noisy(Some(99))"),
        ("outer again", 4, "noisy(Some(4))"),
    ]
    .map(|(message, id, noisy)| {
        (
            message.to_owned(),
            serde_json::json!(id),
            serde_json::json!(noisy),
        )
    });
    assert_eq!(summary, expected, "{lines:?}");
    let nested = lines.iter().filter(|line| line["fields"]["nested"] == true);
    assert_eq!(nested.count(), 2);
}

/// Logs from its destructor, which runs while the thread's thread-locals (the context
/// storage, the wrapper's caches) are being destroyed.
struct LogsAtExit;

impl Drop for LogsAtExit {
    fn drop(&mut self) {
        tracing::info!(at_exit = true, "thread exiting");
    }
}

thread_local! {
    static AT_EXIT: LogsAtExit = const { LogsAtExit };
}

#[test]
fn an_event_logged_during_thread_teardown_is_formatted() {
    let _serial = serial();
    let buffer = global();
    let start = buffer.len();
    std::thread::spawn(|| {
        let _id = REQUEST_ID.set(6);
        tracing::info!("before exit");
        AT_EXIT.with(|_| {});
    })
    .join()
    .unwrap();
    let lines = buffer.json_lines_from(start);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["fields"]["request_id"], serde_json::json!(6));
    assert_eq!(
        lines[1]["fields"]["message"],
        serde_json::json!("thread exiting")
    );
    // The value, if the context storage was still there, or nothing; never a panic.
    let at_exit = &lines[1]["fields"]["request_id"];
    assert!(
        at_exit.is_null() || *at_exit == serde_json::json!(6),
        "{at_exit}"
    );
}
