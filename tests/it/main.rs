//! The integration tests of `contextvars`, in one test binary.
//!
//! * [`cpython`]: a port of every test of CPython's `Lib/test/test_context.py::ContextTest`
//!   that has a run-time meaning in Rust, named after the test it ports (the full mapping,
//!   including what is not ported and why, is in `src/docs/python.rs`).
//! * [`var`], [`token`], [`context`]: the rest of the public API.
//! * [`threads`], [`panic_safety`], [`drop_reentrancy`], [`teardown`]: the properties that
//!   Python gets from the GIL and Rust has to get right by construction.
//!
//! Every test runs its body in a fresh context ([`isolated`], CPython's
//! `isolated_context`) or in a fresh thread, so no test sees another's bindings.

mod connection;
mod context;
mod cpython;
mod differential;
mod drop_reentrancy;
mod future;
#[cfg(all(feature = "tokio", tokio_unstable))]
mod hooks;
#[cfg(feature = "rayon")]
mod hostile;
mod isolation;
#[path = "../support/log_buffer.rs"]
mod log_buffer;
mod otel;
mod panic_safety;
mod plumbing;
#[cfg(feature = "rayon")]
mod rayon;
mod scope;
#[cfg(all(feature = "rayon", feature = "tokio"))]
mod server;
mod spawn;
mod teardown;
mod threads;
mod token;
mod tracing_fields;
mod var;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f` in a new, empty context (CPython's `isolated_context` decorator).
pub(crate) fn isolated<R>(f: impl FnOnce() -> R) -> R {
    contextvars::Context::new().run(f)
}

/// Loop counts: small under miri.
pub(crate) const fn iterations(normal: usize) -> usize {
    if cfg!(miri) { 10 } else { normal }
}

/// A tiny deterministic PRNG (xorshift64*), for the byte programs of the differential and hostile tests, independent of proptest.
pub(crate) fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The message of a panic payload (`panic!("literal")` or `panic!("{formatted}")`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Runs `f`, expects it to panic, and returns the panic message.
#[track_caller]
pub(crate) fn expect_panic<R>(f: impl FnOnce() -> R) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(payload) => panic_message(&*payload),
    }
}

/// Addresses of dropped tracked values, so that code holding `&T` can tell, without
/// touching the memory, whether the value was freed under it.
static DROPPED: std::sync::Mutex<Option<std::collections::HashSet<usize>>> =
    std::sync::Mutex::new(None);

/// Records that the value at `address` was dropped (call from `Drop`).
pub(crate) fn record_drop(address: usize) {
    DROPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default)
        .insert(address);
}

/// `address` holds a live value now: forget an earlier value dropped at the same address.
pub(crate) fn mark_alive(address: usize) {
    if let Some(set) = DROPPED.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(&address);
    }
}

/// Whether the value at `address` was dropped since [`mark_alive`].
pub(crate) fn was_dropped(address: usize) -> bool {
    DROPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|set| set.contains(&address))
}

/// The address of a value, as tracked by [`record_drop`].
pub(crate) fn addr<T>(value: &T) -> usize {
    value as *const T as usize
}

/// Runs the test `name` of this binary alone in a child process with `switch` set (a
/// fresh process: the crate's once-per-process notes and its layer flag start unset),
/// checks that it succeeded, and returns what it printed to stderr.
pub(crate) fn stderr_of_child(name: &str, switch: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(switch, "1")
        .output()
        .expect("child");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
