//! What runs first in each request's context: initializers, and the request-id one.

#![deny(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use contextvars::ContextVar;

/// Sets variables from a request's head, in the request's fresh context, before the
/// inner service is called; see [`ContextLayer::init`](super::ContextLayer::init).
pub trait Initializer: Clone + Send + Sync + 'static {
    /// Sets what the request says (the tokens may be dropped: the values then stay for
    /// the whole request). An error does not fail the request: the layer puts it into
    /// the request's extensions.
    fn initialize(&self, request: &Parts) -> Result<(), InitError>;

    /// What the layer calls: [`initialize`](Self::initialize), unless an initializer has
    /// more to say than an [`InitError`] and puts it into the request's extensions (the
    /// `opentelemetry` feature's `Propagation` adds its `ExtractReport`). The head is the
    /// one the inner service receives.
    fn initialize_head(&self, request: &mut Parts) -> Result<(), InitError> {
        self.initialize(request)
    }
}

/// No initializer ([`ContextLayer::new`](super::ContextLayer::new)).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInit;

impl Initializer for NoInit {
    fn initialize(&self, _: &Parts) -> Result<(), InitError> {
        Ok(())
    }
}

impl<F> Initializer for F
where
    F: Fn(&Parts) -> Result<(), InitError> + Clone + Send + Sync + 'static,
{
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        self(request)
    }
}

/// Both, in order; both run even if the first fails, and the first error is returned.
impl<A: Initializer, B: Initializer> Initializer for (A, B) {
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        let first = self.0.initialize(request);
        let second = self.1.initialize(request);
        first.and(second)
    }

    fn initialize_head(&self, request: &mut Parts) -> Result<(), InitError> {
        let first = self.0.initialize_head(request);
        let second = self.1.initialize_head(request);
        first.and(second)
    }
}

/// An initializer's complaint about a request: reported in the request's extensions,
/// never a failed request or a panic.
#[derive(Clone, PartialEq, Eq)]
pub struct InitError {
    message: Cow<'static, str>,
}

impl InitError {
    /// An error saying `message`.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InitError").field(&self.message).finish()
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InitError {}

/// Binds a request id: the request's `x-request-id` header (or another one) if it can be
/// trusted, otherwise a fresh id, like tower-http's request-id layer.
///
/// A header is trusted only if it appears once, is not empty, is at most
/// [`max_len`](Self::max_len) bytes (128 unless set) and is visible ASCII; otherwise the
/// request gets a fresh id and the layer reports why ([`InitError`] in the request's
/// extensions). Fresh ids are 16 hex digits, unique in the process and unpredictable
/// across processes.
#[derive(Clone, Debug)]
pub struct RequestId {
    var: &'static ContextVar<Arc<str>>,
    header: HeaderName,
    max_len: usize,
}

impl RequestId {
    /// Binds `var` from `x-request-id`.
    pub fn new(var: &'static ContextVar<Arc<str>>) -> Self {
        Self {
            var,
            header: HeaderName::from_static("x-request-id"),
            max_len: 128,
        }
    }

    /// Reads `header` instead of `x-request-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Trusts header values of at most `max_len` bytes (at least 1).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// The header's value if it can be trusted, else why not.
    fn trusted<'a>(&self, request: &'a Parts) -> Result<Option<&'a str>, &'static str> {
        let mut values = request.headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err("appears more than once");
        }
        check_request_id(value, self.max_len).map(Some)
    }
}

fn check_request_id(value: &HeaderValue, max_len: usize) -> Result<&str, &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > max_len {
        return Err("is longer than the limit");
    }
    // `HeaderValue::to_str` also accepts spaces and tabs; an id is visible ASCII only.
    let bytes = value.as_bytes();
    if !bytes.iter().all(|byte| (0x21..=0x7e).contains(byte)) {
        return Err("is not visible ASCII");
    }
    value.to_str().map_err(|_| "is not visible ASCII")
}

impl Initializer for RequestId {
    fn initialize(&self, request: &Parts) -> Result<(), InitError> {
        let (id, outcome) = match self.trusted(request) {
            Ok(Some(id)) => (Arc::from(id), Ok(())),
            Ok(None) => (fresh_request_id(), Ok(())),
            Err(reason) => (
                fresh_request_id(),
                Err(InitError::new(format!(
                    "untrusted {} header ({reason}): the request got a fresh id",
                    self.header
                ))),
            ),
        };
        self.var
            .try_set(id)
            .map(drop)
            .map_err(|error| InitError::new(error.to_string()))?;
        outcome
    }
}

/// A fresh request id: 16 hex digits, from a process-wide counter mixed with a seed
/// drawn once per process (std's `RandomState`), so ids do not repeat within a process
/// and are not guessable across processes.
pub fn fresh_request_id() -> Arc<str> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    // splitmix64 of a per-process permutation of the counter: distinct inputs give
    // distinct outputs (it is a bijection on u64).
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Arc::from(format!("{z:016x}"))
}
