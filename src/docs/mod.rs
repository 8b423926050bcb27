//! Documentation-only modules: topics too long for the item docs.
//!
//! * [`python`]: how each piece of Python's `contextvars` maps to this crate, and what
//!   differs on purpose.
//! * [`performance`]: the cost model and where the measured figures are.
//! * [`internals`]: the design: snapshots, the per-thread frame, publication, tokens,
//!   and the invariants the `unsafe` code relies on.

pub mod internals;
pub mod performance;
pub mod python;
