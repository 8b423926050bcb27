//! `contextvars::tracing::ContextFields` formatting an event re-entrantly: a variable's
//! `Debug` logs while the event it is a field of is being formatted.
//!
//! A test binary of its own, not a module of `tests/it`: only a *global* subscriber
//! receives an event emitted while another is being dispatched on the same thread
//! (tracing drops such an event while any scoped dispatcher exists in the process), and
//! a global subscriber is process-wide.

#![cfg(feature = "tracing")]

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use contextvars::tracing::ContextFields;
use contextvars::{Context, ContextVar};

static REQUEST_ID: ContextVar<u64> = ContextVar::new("request_id");
static NOISY: ContextVar<Noisy> = ContextVar::new("noisy");

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

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_event_logged_while_formatting_one_is_formatted_too() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .without_time()
        .with_writer(move || writer.clone())
        .map_event_format(|format| {
            ContextFields::new(format)
                .var(&REQUEST_ID)
                .var_debug(&NOISY)
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    Context::new().run(|| {
        let _id = REQUEST_ID.set(4);
        let _noisy = NOISY.set(Noisy);
        tracing::info!("outer");
        tracing::info!("outer again");
        assert_eq!(REQUEST_ID.get(), 4);
    });

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
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
    assert_eq!(summary, expected, "{text}");
    assert!(
        lines
            .iter()
            .filter(|line| line["fields"]["nested"] == true)
            .count()
            == 2
    );
}
