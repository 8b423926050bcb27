//! Documentation-only modules: topics too long for the item docs.
//!
//! * [`python`]: how each piece of Python's `contextvars` maps to this crate, and what
//!   differs on purpose.
//! * [`isolation`]: how the context follows work into threads, tasks, jobs and requests,
//!   where a `set` lives, and which server and pool configurations are isolated, refused
//!   or not covered (with the remedy).
//! * [`performance`]: the cost model and where the measured figures are.
//! * [`internals`]: the design: snapshots, the per-thread frame, publication, tokens,
//!   and the invariants the `unsafe` code relies on.
//! * [`model_checking`]: checking your own concurrent code that uses context variables
//!   with loom (`RUSTFLAGS="--cfg loom"`), with a worked example.

pub mod internals;
pub mod isolation;
pub mod model_checking;
pub mod performance;
pub mod python;
