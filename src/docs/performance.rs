//! # Performance: the cost model
//!
//! | operation | what it does | allocations | atomic RMW |
//! |---|---|---|---|
//! | `ContextVar::get` / `with` | TLS load of the root pointer, bitmap test + popcount + compare per trie level (one level up to 16 variables, at most 13 for any id), a non-atomic borrow counter | 0 | 0 |
//! | `get` of a never-set variable | one relaxed load of the variable's id (0: nothing to look up) | 0 | 0 |
//! | `ContextVar::set` | path copy of O(log₃₂ n) nodes (one node up to 16 variables), the value's allocation, publication if the context object is observed | value + copied nodes | one per entry of each copied node (reference counts) |
//! | `reset` right after its `set` | reinstalls the old snapshot | 0 | drops the newer snapshot |
//! | `copy_context`, `Context::copy` | shares the snapshot | 0 | 1 |
//! | `Context::run` | enter flag CAS, snapshot load from the cell, two frame swaps | 0 after the first run | about 4 |
//! | `Context` iteration | walks the snapshot | 1 (`Context::iter` collects) / 0 (`Snapshot::iter`) | per entry (owning iterator) |
//!
//! Measured figures, side by side with `thread_local!`, tokio's `task_local!` and the other
//! peers in the same run, are in the README's performance section and are produced by
//! `cargo bench` (`benches/ops.rs`, `benches/cells.rs`, `benches/map.rs`).
