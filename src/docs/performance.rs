//! # Performance: the cost model
//!
//! "Private frame" below means a frame whose snapshot nobody else holds: a thread's own
//! context, a task's (`in_current_context`), a rayon job's once it writes, a
//! `Context::run` of an object no other handle observes. "Observed" means a context
//! object some other handle can read while it runs: each change is published to it.
//!
//! | operation | what it does | allocations | atomic RMW |
//! |---|---|---|---|
//! | `ContextVar::get` / `with` | an inlined TLS access for the root pointer, then per level a bitmap test, a position-table load and a key compare (one level up to 16 variables, two for about a thousand, at most 13 for any id); a non-atomic borrow counter | 0 | 0 |
//! | `get` of a never-set variable | one relaxed load of the variable's id (0: nothing to look up) | 0 | 0 |
//! | `ContextVar::set`, private frame | writes the binding into the snapshot's node in place (a new key or a replaced value in the small form; a replaced value in the trie) | 1 (the value) | 0 |
//! | `ContextVar::set`, shared snapshot | path copy of O(log₃₂ n) nodes (one node up to 16 variables), the value's allocation, publication if the context object is observed | 1 + copied nodes | one per entry of each copied node (reference counts), plus the publication's |
//! | `reset` | in place if the snapshot is the frame's alone; else reinstalls the snapshot its set replaced if nothing changed since; else a path copy | 0 (in place, reinstall) | 1 (the replaced value's release) |
//! | `copy_context`, `Context::copy` | shares the snapshot | 0 | 1 |
//! | `Context::run` | the entered flag's CAS, a light frame over the runner's own copy of the snapshot (no reference count, no arc-swap load), the flag's release store | 0 | 1 (the CAS) |
//! | a future's poll, a rayon job (`contextvars::rayon`) | a light frame: two TLS cell swaps on entry and exit; the first write materializes a copy | 0 | 0 (a job: 1 if it writes) |
//! | `contextvars::rayon::join` | lends the current snapshot to both halves (no count inside a light frame; one count otherwise) | 0 | 0 or 2 |
//! | `Context` iteration | walks the snapshot | 1 (`Context::iter` collects) / 0 (`Snapshot::iter`) | per entry (owning iterator) |
//!
//! Measured figures, side by side with `thread_local!`, tokio's `task_local!`,
//! opentelemetry's `Context` and the other peers in the same run, are in `BENCHMARKS.md`
//! and the README's performance section; they come from `cargo bench` (`benches/ops.rs`,
//! `benches/peers.rs`, `benches/propagation.rs`, `benches/observe.rs`, `benches/cells.rs`,
//! `benches/map.rs`).
