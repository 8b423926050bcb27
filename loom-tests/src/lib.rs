//! loom models of contextvars live in `tests/`; this library is empty.
