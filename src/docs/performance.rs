//! # Performance: the cost model
//!
//! "Private frame" below means a frame whose snapshot nobody else holds:
//! * a thread's own context, until `Context::current` hands out a handle to it;
//! * a task's (`in_copied_context`) or a rayon job's frame, after the first set in that
//!   poll or job. That first set path-copies, because the poll or job was lent its
//!   snapshot; the sets after it are in place.
//!
//! A copy taken from a private frame (`copy_context`, a spawn's, task's or job's capture)
//! shares its snapshot, so the frame's next set path-copies (and its result is private
//! again). In place also needs no `ContextVar::with` borrow of the snapshot active, and a
//! change the node's form allows: a replaced value, or a new key while the small form has
//! room (at most 4 variables).
//!
//! A frame that runs a context object is never private, since the `Context` being run
//! holds the object (`Context::run`, `in_context`, `spawn_in`). "Observed" means a
//! context object that some other handle can read while it runs: each change is published
//! to it.
//!
//! | operation | what it does | allocations | atomic RMW |
//! |---|---|---|---|
//! | `ContextVar::get` / `with` of a cached variable (one of a program's first 63 `static`s whose values are stored inline, or first 48 variables that box them) | the thread's read cache: a compare of the slot's epoch with the thread's and a load (two TLS words), if this thread read, set or scoped the variable since its context last changed to another snapshot node; an inline value is copied out, a boxed one lent under the borrow counter, and a cached "unbound" goes to the default at once. Switches into the same snapshot (a rayon job of `contextvars::rayon`, a poll of a copy nobody set in, `Context::run` of an unchanged copy) and sets of other variables keep it; otherwise the lookup below, which fills the slot | 0 | 0 |
//! | `ContextVar::get` / `with`, any other variable or a cache miss | an inlined TLS access for the root pointer, then a position-table load and a key compare (the small form, up to 4 variables), or per trie level a position-table load and a key compare (two levels for about a thousand variables, at most 13 for any id); an inline value is copied out, a boxed one is read in place under a non-atomic borrow counter. A miss also tests the thread's chain of scope records (a TLS load) before the default | 0 | 0 |
//! | `get` of a never-set variable | the lookup of its key, 0, which no binding has | 0 | 0 |
//! | `ContextVar::scope(v, f)`, while `f` only reads | the isolation check of a `set` (below); a record of the binding on the scope's stack, linked onto the thread's chain and unlinked at the end (a cached variable's slot gets the value, then is emptied); reads of a cached variable inside hit the cache, others miss the snapshot and find the record through one call. The first operation in `f` that is not a read or a scope makes each linked record a real `set` (its cost, below), which the scope's end resets. Inside `Context::run`, while a `Context::current` handle of the frame is held, with `observe` on, or nested more than 8 deep in linked scopes, the scope is a `set` and a `reset` from the start | 0 for an inline value, else 1 (the value) | 0 for an inline value, else 1 (the value's release) |
//! | `ContextVar::set`, private frame | writes the binding into the snapshot's node in place (a new key or a replaced value in the small form, while it has room; a replaced value in the trie; a new key in the trie, or one the small form has no room for, path-copies, as below) | 0 for an inline value (a `static` of a `Copy + Eq` type that fits a word), else 1 (the value); the first binding of an empty snapshot: 1 more (its root node); a new key in the trie: 2 more if it lands in the root branch (the root node and its slot array), plus 2 per deeper branch copied | 0 |
//! | `ContextVar::set`, shared snapshot | path copy of O(log₃₂ n) nodes (one node up to 4 variables), the value's allocation (none inline), publication if the context object is observed (a swap and a read-modify-write of the cell's counter of loads, whatever the number of threads) | 2 up to 4 variables (node + value; 1 for an inline value); a copied trie branch costs 2 (the node and its slot array) | one per boxed entry and child of each copied node (reference counts; inline entries are copied), plus the publication's |
//! | the isolation check of a `set` (`crate::pool`) | in a future's own frame (a wrapped future, a hooked task, a request behind the layer): none; in a frame entered by synchronous code (`run`, a thread's, a job's): tokio's task id (a thread-local read), compared with the one recorded when the frame was entered; in the thread's own context also rayon-core's worker index and the declared-pool flag | 0 | 0 |
//! | `reset` | in place if the snapshot is the frame's alone (in the trie, only if the variable had a value before the set); else reinstalls the snapshot its set replaced if nothing changed since; else a path copy | 0 (in place, reinstall); a path copy's as for a set | 1 (the replaced value's release; 0 inline); reinstalled or path-copied, also the replaced snapshot's release (one per slot if that frees it) |
//! | `copy_context`; `Context::copy` / `snapshot` of a context never run | shares the snapshot | 0 | 1 |
//! | `Context::copy` / `snapshot` of a context that has run (or a `Context::current` handle) | loads the published snapshot from its cell (`sync::PublishCell`: lock-free) | 0 | 1, plus two read-modify-writes of the cell's counter of loads in progress |
//! | `Context::run` | the entered flag's CAS, tokio's task id (a thread-local read, recorded for the isolation check), a light frame over the runner's own copy of the snapshot (no reference count, no load from the published cell), the flag's release store | 0 (1 the first time a `Context` is run: its shared object) | 1 (the CAS) |
//! | a future's poll, a rayon job (`contextvars::rayon`) | a light frame: two TLS cell swaps on entry and exit, each with a compare of the root pointers for the read cache (a job also reads tokio's task id); the first write materializes a copy | 0 | 0 (if it writes, one per snapshot and context object the copy holds: 1 for a job, 1 to 3 for a poll) |
//! | a task's starting bindings (a wrapped future's, a scope's future's or hooked task's frame, for the tower layer's restore) | nothing at creation; one check on each set or reset; at the frame's first change, a counted clone of its starting snapshot, held until the frame ends or is restored | 0 | 1 at the first change |
//! | a wrapped future's or request's end | its inner future (or body) dropped inside its frame; its frame released in a fresh empty frame only if it is the last owner of its snapshot, runs a context object or kept its starting bindings (a reference-count load decides), so a destructor that sets reaches no one | 0 | 1 (the snapshot's release) |
//! | an `in_copied_context()` item | runs in the frame of its batch (one light frame per call rayon makes into the adapter); an item that wrote (a set, a handle) ends that frame, and the next item enters a fresh one | 0 | 0 (1 if it writes) |
//! | `contextvars::rayon::join` | lends the current snapshot to both halves (no count inside a light frame; one count otherwise); on a rayon worker, the wait runs in an empty read-only light frame (two TLS cell swaps each way) | 0 | 0 or 2 |
//! | the `tracing` span at a hand-off (`contextvars-tracing`'s carrier) | at each capture (a spawn, a wrapped future, a `join`, a parallel iterator, a request), the dispatcher's current-span lookup; if a span is current, its handle is cloned, and each run, poll or job enters and exits it | 0 | 1–2 per capture with a span current (the subscriber's reference count, and the `Dispatch`'s under a scoped dispatcher), their releases when the child ends, plus what the subscriber's `enter`/`exit` do |
//! | an event through `contextvars_tracing::ContextFields` | a per-thread cache lookup of the combined callsite, one read per variable, a copy of the event's values into a reused per-thread buffer | 0 once warm | 0 |
//! | `Snapshot` iteration | walks the snapshot | 0 (`iter`) / 1, a `Vec` (the owning iterator) | 0 (`iter`) / per entry (the owning iterator's clones) |
//!
//! ## Memory
//!
//! What a context holds, on x86-64 (`benches/memory.rs` lists it per task):
//! * each boxed value: one allocation of a 16-byte reference-count header, 32 bytes of
//!   the variable's id, name and formatting hook, and the value (56 bytes for a `u64`,
//!   64 for an `Arc<str>` or an `Instant`); shared by every snapshot that binds it. An
//!   inline value (a `static` declared with `context_var!` of a `Copy + Eq` type of at
//!   most a word, 8 bytes on 64-bit targets: `u64`, `bool`, a field-less enum, a pair of
//!   `u32`) costs nothing beyond its entry;
//! * the snapshot's root node: 128 bytes, up to 4 bindings inline (the small form);
//!   beyond 4, a 32-way trie whose root node has
//!   the same size plus a slot array of 24 bytes per slot, and a child branch (72 bytes
//!   plus its slot array) per group of ids sharing the bits consumed so far;
//! * a snapshot shared by copies (`copy_context`, a task's or job's capture) costs nothing
//!   more; a set that path-copies a shared snapshot makes a new root (and the branches on
//!   the way to the key) and leaves the old one to its other holders;
//! * the handles: a `Snapshot` is one word (its root node, which keeps the length), a
//!   `Context` two (the root, and the shared object its first run makes, null until
//!   then).
//!
//! So a task that binds 3 small values from an empty context holds about 360 bytes of
//! heap in 4 allocations, plus the wrapper's share of the task (the `in_copied_context`
//! future is 88 bytes). tokio's `task_local!` keeps its values inside the future and
//! allocates nothing; the price of a snapshot is that it can outlive the future and be
//! shared.
//!
//! Measured figures, side by side with `thread_local!`, tokio's `task_local!`,
//! opentelemetry's `Context` and the other peers in the same run, are in `BENCHMARKS.md`
//! (with the commit and machine they were taken on); they come from `cargo bench`
//! (`benches/ops.rs`, `benches/peers.rs`, `benches/propagation.rs`, `benches/memory.rs`,
//! `benches/observe.rs`, `benches/cells.rs`, `benches/map.rs`).
