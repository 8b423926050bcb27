//! # Internals: how `contextvars` is built
//!
//! This is the design essay: what the structures are, which invariants the `unsafe` code
//! relies on, and how each atomic ordering pairs up. Read it before changing
//! `src/engine/`, `src/context.rs` or `src/sync/`.
//!
//! ## Snapshots
//!
//! A snapshot is a persistent map from variable id (`u64`) to an `Entry`: two words, a
//! value word and a pointer to the functions for the value's type (`src/value.rs`). A
//! *boxed* entry's word is an `Arc` of a binding (the variable's id, name,
//! formatting/equality hooks and the value), kept in raw form. An *inline* entry's word is
//! the value itself: a `static` declared with `context_var!` whose type is `Copy + Eq`
//! and fits a word stores its values so, which makes a set allocate nothing and lets a
//! read copy the value out instead of counting a borrow of the snapshot (a copy runs no
//! code of the program's). Its function pointer is tagged and leads to the variable, a
//! `static` that outlives every entry; the declaration macro finds the `Copy + Eq` proof
//! (`value::CopyEq`, which only the compiler can make, invariant in its type) and gives
//! the static a reference to itself, which the variable checks is itself before it
//! stores inline. Inline values are compared with the proof's `==` (they have no
//! identity to compare).
//!
//! The map is our own code (`src/map/`): a *small form* for up to 4 bindings (one node
//! holding the ids in ascending order in four words, the unused ones repeating the
//! first, so a lookup is up to four compares with no length test, then the value's
//! load), and a 32-way HAMT beyond that (one level, with the same loads plus the slot
//! array's, for up to 32 sequential ids). Variable ids are
//! handed out densely from 1, so the id is its own perfect hash: no hashing, no collision
//! nodes, and at most 13 levels for any `u64`. An update path-copies the nodes from the
//! root to the changed slot, unless nobody else holds them (in place, see below); a
//! version anyone else can see is never modified, so a snapshot can be read
//! from any thread without synchronisation once it has been published. `src/map/tests.rs`
//! checks the map against `std::collections::HashMap` with proptest.
//!
//! ## The per-thread frame
//!
//! Each thread has a *frame*: the snapshot it is running in now, the context object that
//! snapshot belongs to (if any), the frame's identity (for token checks) and a change
//! marker. `Context::run` makes another frame current for the duration of its closure and
//! puts the old one back when it returns, also during unwinding: the stack of entered
//! contexts is the call stack.
//!
//! The frame lives in one thread-local, `HOT` (`src/engine/thread.rs`), which has a `const`
//! initialiser and **no destructor** (its owning fields are `ManuallyDrop`, and a
//! compile-time assertion checks `needs_drop`), so reaching it is a plain TLS address
//! computation with no liveness check. `with_hot` takes only the address inside
//! `LocalKey::with`, so that the access inlines into `ContextVar::get` whatever the
//! size of the code around it (left to LLVM, `get` was a call plus an indirect call into
//! the TLS accessor, and cost twice the instructions). A zero-sized thread-local, `TEARDOWN`,
//! registered the first time the thread stores something in its frame, releases the frame
//! at thread exit and marks `HOT` torn down, after which writes are refused with an
//! [`AccessError`].
//!
//! Work that usually only reads (a rayon job, a future's poll, `Context::run`) runs in a
//! *light frame*: only `HOT.root` (and `HOT.light`, a pointer to a record on the stack of
//! the call that runs the work) change on entry and exit. The first operation that needs
//! the frame itself (a set, a reset, a handle, a nested frame) *materializes* it: a copy
//! of the light frame becomes the thread's frame, and the frame it displaces waits in the
//! light frame's record until the work returns; then the copy, with what the work made of
//! it, is written back to the light frame's storage. The storage is never written while
//! the light frame runs, so its snapshot can be lent to rayon jobs without a reference
//! count (`with_captured`), even if something on the same thread materializes meanwhile.
//!
//! ### The design rule: every frame switch is lexically scoped
//!
//! > Every frame switch is entered and left inside one call of the crate (`enter(frame,
//! > f)` style), also on unwind. No value that user code can move, leak, `mem::forget`
//! > or drop out of order ever restores a frame.
//!
//! The engine (`src/engine/`) enters frames only in `enter_light`, whose exit guard lives
//! on its own stack frame, and which every entry point (`run_in`, `run_owned`,
//! `run_borrowed`, `run_borrowed_fold`, `run_entered`) calls with the work as a closure.
//! The integrations do the same: a future's poll, a rayon job, and *each call* into the
//! consumer, folder, reducer or producer of `in_copied_context()` enters the captured
//! frame and leaves it before returning. rayon's plumbing traits are public, so any safe
//! code can drive those folders: move them, complete them inside some other
//! `Context::run`, drop them anywhere or never. Before this rule the folder held a guard
//! that restored the worker's frame when it was dropped, and driving it out of order
//! freed a snapshot that was still current (a use-after-free from safe code), ran one
//! context object on two threads, and let the items of one job share a context handle.
//! Now a folder holds only a borrow of the captured snapshot and the wrapped folder; each
//! item runs in a frame that starts from the captured bindings by construction
//! (`run_borrowed_fold` reuses a frame for the next item only if the item never
//! materialized it), so no per-item restore is needed either. `tests/it/hostile.rs` and
//! the `hostile` fuzz target drive the folders in arbitrary orders against a model.
//!
//! **The one exception: tokio's task hooks.** `contextvars::tokio::isolate_tasks` can only
//! act through tokio's `on_before_task_poll` / `on_after_task_poll`, which tokio calls as
//! a pair around each poll, on the polling thread; no call of the crate spans the poll.
//! The engine's `enter_detached` / `leave_detached` keep that sound by construction of a
//! different kind: the task's frame and the frame it displaces are *owned* and move by
//! value (no borrowed snapshot, no pointer into a stack record), and `leave_detached`
//! refuses unless the detached frame is the thread's current one (`HOT.light` is null and
//! the count of frames stacked above the base is the one recorded at entry), so a leave
//! can never pull a frame out from under a light frame whose exit would restore a root
//! pointer into it. The leave can also never come: tokio keeps one function per hook,
//! so registering another `on_after_task_poll` after `isolate_tasks` replaces ours. A
//! light frame that exits with detached frames still current inside it ends them first
//! (`Exit::end_stranded`, found by comparing `HOT.stacked` with the level recorded when it
//! materialized: only a materialized light frame can have them), so
//! it always leaves from the frame it materialized into, the only one that may hand
//! back its context object's entered flag; before that fix (found in review), the
//! stranded copy handed the flag back a second time at thread exit, while another
//! thread ran the context: a double entry and a use-after-free. Outside any light frame
//! a missing leave leaves the thread in the task's context: a wrong value, never a
//! dangling one. `tests/it/hooks.rs` covers both.
//!
//! Two more facts of tokio's shape the hooks: tokio marks a task idle *before* it calls
//! the after-poll hook, so a task woken from another thread can be polled on a second
//! worker while the first has not filed its frame back yet. The registry therefore
//! checks a task's frame out for a poll and in after it, and a poll that finds it still
//! out waits for the check-in (not when it was taken out on its own thread, nor before
//! any after-poll hook has run: both mean a replaced hook that will never come).
//!
//! A future's frame (the hooks', or a wrapped future's: `in_copied_context`,
//! `in_context`, `scope_future`) remembers the bindings it started with
//! (`Frame::with_origin`, `Frame::remembering_origin`: nothing at creation; the frame's
//! first set or reset keeps a counted clone of its starting snapshot, and the frame gets
//! an id from the thread's counter when the layer first asks for it; an `in_context`
//! frame has its object's). Any of them may be
//! a connection task. The tower layer records which such frame called it, and the
//! nearest one outside it (`origin_frames`, a walk outward over the light frames'
//! records: `Light.outer` for the unmaterialized ones, `HOT.materialized` and each
//! record's displaced frame for the materialized ones). When the request ends, the one
//! that is current gets back its starting bindings (`restore_origin`: a binding change,
//! never a frame switch; tokens made in the frame stay valid), and one that is not waits
//! (`HOT.pending_restore`, and a flag in the current light frame's record that its exit
//! tests anyway) until the frames inside it exit and it is current again
//! (`restore_origins`). So a middleware outside the layer cannot carry one keep-alive
//! request's values into the next, also when it calls the layer, awaits it or drops the
//! body inside a `scope_future`, a wrapper or a `Context::run` of its own. One restore
//! waits per thread at a time; a later request's replaces it.
//!
//! Every frame entry also records what ran when it was entered (`Light.entered` while the
//! frame is light, `HOT.entered_cell` once it materializes or for a detached frame): a
//! future's frame is its own whichever task polls it; a
//! frame entered by synchronous code (`Context::run`, a thread's, a job's) records the
//! tokio task running then, if any, and a set there while another task runs (a runtime
//! driven by `block_on`, or dropped, inside it) is refused; the frame a rayon worker
//! waits in inside a call of `contextvars::rayon` is read-only. `crate::pool` has the
//! rules. A future's own frame is never checked, so tasks that a future's poll drives
//! inside it are not seen: a `LocalSet` whose `run_until` future is itself wrapped
//! (its `spawn_local` tasks are polled in that frame, and share it), or `block_on`
//! of a current-thread runtime inside a poll outside any runtime. Recording the task at
//! every poll would cost each poll a read of tokio's task id. What a finished
//! unit held (a request's context, a task's frame released by a hook, the snapshot a
//! restore replaces) is released inside a fresh empty frame (`isolated`), so a value's
//! destructor that sets cannot bind anywhere another unit could see.
//!
//! ### Invariant: the root pointer is owned
//!
//! Whenever user code can run, the node behind `HOT.root` is kept alive by its owner:
//! `HOT.vars` if no light frame is current, otherwise the current light frame's
//! snapshot, which is owned by the call running it (a task's frame, the parent's
//! snapshot that a rayon job borrows, or the context object's runner copy that
//! `Context::run` borrows, each of which outlives the work) until that call returns, and
//! that call restores `HOT.root` before it returns, also when unwinding. `lookup_bound`
//! dereferences it (the first `unsafe` block). An inline value is copied out of the node
//! before anything else runs, and the caller gets a `&T` to the copy: no borrow. A boxed
//! value is handed to the caller as a `&T` into its binding, which the node owns. While
//! that reference is in use, user code may run (the closure of `ContextVar::with`,
//! or `T::clone` in `get`), and that code may `set`, `reset` or `run`, which replaces
//! `HOT.vars`. So a reader increments `HOT.borrows` for the duration, and every snapshot
//! that stops being current goes through `retire`: dropped at once if no borrow is
//! active, parked in `HOT.graveyard` otherwise, and dropped by the last borrow to end.
//!
//! ### Invariant: in-place changes only to what nobody else can see
//!
//! A set or reset writes into the current snapshot's root node instead of path-copying
//! it when (a) no borrow is active (`HOT.borrows == 0`: no `&T` into the node exists) and
//! (b) the node's strong count is 1 (`sync::unique_mut`; map nodes never have `Weak`
//! references). (b) rules out every other holder: a copy (`copy_context`, a task's or a
//! job's counted capture), a published version (a context object's cell, the observation
//! slot), a token that kept the snapshot for its reinstall shortcut. Snapshots lent
//! without a count (a rayon job's borrowed snapshot, `Context::run`'s runner copy, a
//! light frame's storage) are never the thread's current `HOT.vars`: a write in a light
//! frame materializes a counted copy first, which then has a count of at least 2. So a
//! snapshot anyone else can observe is never changed; one only this frame can reach is
//! changed without allocating a node where the map's form allows it (any change in the
//! small form, up to 4 bindings; a replaced value in the trie), and the set allocates only
//! the binding itself (nothing, for an inline value). A new key in a trie path-copies the root (node, slot array,
//! binding); its reset reinstalls the replaced root.
//!
//! ### Scopes: bindings on the stack
//!
//! `ContextVar::scope(v, f)` binds `v` for exactly one call, so while only reads happen it
//! changes nothing at all: `engine::scope` keeps the binding in a record on its own stack,
//! links it onto the thread's chain (`HOT.scopes`), runs `f` and unlinks it; nothing is
//! allocated, no node written, no token made. While a record is linked, `HOT.root` is
//! null and the frame's root waits in `HOT.scoped_root`, so a read outside any scope pays
//! nothing (its fast path tests the root for null already), and one that misses there
//! (every read inside a scope) looks at the chain on its miss path
//! (`engine::with_bound_scoped`), before any default.
//!
//! Everything else the engine does first *flushes* the chain (`flush_scopes`): each
//! record, oldest first, becomes the real set it stands for, in the frame it was made in,
//! and the scope's end resets it as `ScopedSet` would. The calls that flush: `with_state`
//! (every set, reset, context handle, detached entry, restore), `enter_light` (every
//! frame entered: a `run`, a poll, a job), `vars` and `with_captured` (every copy and
//! capture of the context), `leave_detached`, the origin walk and a lookup error's hint.
//! So a record is only ever seen by reads on its own thread, in its own frame, while
//! nothing but reads and scopes has happened there since it was linked; what any other
//! operation observes is what the eager set would have shown. Three conditions keep it
//! exact:
//!
//! * the chain only holds records of the current frame: entering any frame flushes first,
//!   and a frame entered inside a scope returns before the scope does;
//! * a scope is refused where a set is (`pool::refusal`), checked when it starts; its
//!   flush is not checked again (what runs later in the same frame, a task polled by a
//!   `block_on` inside `f`, must not undo a scope that was allowed);
//! * if the frame's context object can be seen by anyone but the frame (a `Context`
//!   being run is such a handle, as is any `Context::current` handle still held), or
//!   `observe` is on, the scope sets for real at once: those read the object's published
//!   snapshot, from any thread, without passing through this thread's engine.
//!
//! A record's value is lent to reads without a borrow count: the record lives on the
//! stack of the scope's call, which encloses every read that can see it. The flush
//! counts a borrow while it sets, and announces once at the end, so the snapshots it
//! replaces are parked and no destructor runs with half the chain flushed. The chain
//! holds at most 8 records: a scope nested deeper sets at once (after a flush), so a read
//! walks at most 8 records and a flush recurses at most 8 deep. The end of a linked scope
//! announces the change, for `observe` switched on while it ran. One difference with the
//! eager set is deliberate: a linked record's value is dropped when its scope ends, even
//! while a read of another variable is in progress around the scope (a reset would have
//! parked the replaced snapshot, and the value with it, until that read ended), which is
//! when a reset releases it in Python. `scoped_set` (a guard, which user code can move,
//! leak or forget) keeps the token path.
//!
//! ### The read cache
//!
//! Each thread keeps, for a program's first variables, the value a read last found and
//! the *epoch* it was found in: two arrays of 128 words at the end of `HOT`. The first 63
//! variables that store values inline to take an id (on first use, not in declaration
//! order) take ids 1 to 63 (`var::NEXT_INLINE_VAR_ID`), and their slots hold the value
//! itself; every variable that boxes its values takes an id from 80 up, and the first 48
//! ids (80 to 127; an id lost to a race between two threads assigning one to the same
//! variable is used up) have slots that hold the entry's word (the address of its
//! binding) or say that the variable has no binding. Inline variables past
//! the 63rd take ids from 2^40 up, so an id's range says what its slot holds. A read
//! compares its slot's epoch with the thread's and, if they match, copies the value out
//! (inline: 13 instructions in the benchmark's probe, against 41 for the lookup) or lends
//! the binding under a borrow count (boxed); a slot that says "unbound" goes straight to
//! the default. A read that misses looks the value up and fills the slot before its
//! closure runs. The slot's word is read back as the variable's `T` under the
//! id → type invariant below (a slot is filled only with the words of entries bound under
//! its id, or, in the boxed range, the unbound marker, and a variable's entries are all
//! inline or all boxed).
//!
//! An inline variable does not index the cache with its id: it keeps its slot in a field
//! of its own (`engine::CacheSlot`), the id if it is below 64 and 0 otherwise, written
//! once when the id is assigned and never above 63. Slot 0 is never filled (no variable
//! has id 0), so a variable without a slot (no id yet, past the 63rd, or one that boxes)
//! reads it and misses, and the read needs no compare of the id with the cache's size:
//! it is the field's load, the thread's epoch against the slot's, and the value's load.
//! For a type that could be stored inline (a word, no drop glue), the miss path keeps
//! only what calls nothing inline: the lookup of an inline value in the snapshot, its
//! fill and its copy (`engine::lookup_inline`), and a boxed slot's "unbound". Everything
//! else (lending a boxed value, the scope records, the default) is a call whose result
//! is the read's, so the read keeps no register across a call and needs no stack frame
//! of its own beyond its caller's. (Moving the whole miss path into one `#[cold]` call,
//! in `3f04b41`, made the hit 12 instructions but the first read after a switch 52; the 13th
//! instruction of the hit now is a jump to the benchmark's shared `black_box` and return,
//! which LLVM lays out after the miss path.) A boxed variable of such a type (the
//! expression form of `context_var!` in a `static` boxes even a `u64`) misses the inline
//! slot first and lends its value through one call: 30 instructions, against 26 when the
//! whole read was inline (its first read after a switch: 58 against 45). A type with drop
//! glue (an `Arc`, a `Box`) is never stored inline, and its reads skip the inline slot at
//! compile time.
//!
//! **Invariant: a valid slot shows what a lookup would.** For every slot whose epoch is
//! the thread's, the slot holds the variable's binding that a read would find now (or,
//! for a boxed variable, says that there is none): in the chain of scope records if one
//! binds it, else in the snapshot behind `HOT.root` (or `HOT.scoped_root` while records
//! are linked). Every write of that state keeps it:
//!
//! * `Hot::set_root` (every frame switch, install, teardown) starts a new epoch when the
//!   root *pointer* changes, and keeps it when it does not. The node behind `HOT.root` is
//!   owned by the current frame (the invariant above), so while the pointer stays the
//!   same it is the same live node, whose bindings change only through the next point:
//!   a node cannot be freed and another made at its address while the pointer is
//!   current. This keeps the cache across the switches that propagation makes into the
//!   same snapshot: a rayon job, a poll of a task's unchanged copy, `Context::run` of a
//!   copy.
//! * A set or reset rebinds one variable (`Hot::rebound`, from `rebind_in_place` and
//!   `rebind_copy`): the new snapshot differs from the old in that binding alone, so
//!   that variable's slot is written (the new entry's word) or emptied, and the epoch
//!   stays. A reset that reinstalls an earlier snapshot goes through `set_root`.
//! * A scope's first record nulls `HOT.root` and a read then looks at the chain: linking
//!   a record writes its variable's slot (`Hot::link_scope`), unlinking it empties that
//!   slot (`Hot::unlink_scope`); the frame's bindings are unchanged, so every other slot
//!   stays valid. While records are linked, nothing but linking another record writes a
//!   slot (a read fills only through a non-null `HOT.root`; everything else flushes the
//!   chain first, and the flush starts a new epoch and goes through `rebound`); a
//!   record linked over another of the same variable overwrites the slot, and its
//!   unlink empties it, so the next read finds the outer record by the walk.
//! * Thread teardown starts a new epoch unconditionally: from then on reads see defaults.
//!
//! A boxed slot's binding is owned by an entry of the current snapshot (or of a linked
//! record) while the slot is valid; the reader counts a borrow while its closure runs,
//! as a lookup does, so a snapshot that closure replaces is parked until it returns.
//!
//! The cost lands on the first read after the root changes (39 instructions against 32
//! for an inline value, 45 against 40 for a boxed one: the missed compare and the fill)
//! and on every switch (a compare), and a set or reset writes a slot.
//! `tests/read_cache.rs` runs random programs of sets, resets, scopes, runs, polls of
//! futures whose copy was taken before the thread's context changed, handles, threads and
//! rayon jobs against a model of the bindings (two inline and two boxed variables),
//! reading every variable after every step; removing the epoch on a pointer change, a
//! set's slot update, a link's slot write or an unlink's emptying fails it. One test
//! exits the process inside a scope and reads in a thread-local destructor that runs
//! after the teardown: without teardown's epoch it read the scope's value.
//!
//! ### Invariant: id → type
//!
//! The second `unsafe` block (`Entry::downcast_unchecked`, `downcast_boxed_unchecked`,
//! `read_inline`) reads an entry as a `T` without a `TypeId` check. It is only called for
//! the entry found under the id of a `ContextVar<T>`, and only that variable ever binds
//! its id, because ids are unique and never reused. Debug builds assert the type anyway.
//!
//! ### Invariant: inline → `Copy`
//!
//! `read_inline` copies an inline entry's word out as a `T` bit for bit, which is a copy
//! only for a `Copy` type. An inline entry is made only by `Entry::inline`, from a
//! variable's `InlineMeta`, which exists only with a `CopyEq<T>` proof: constructible only
//! where the compiler checks `T: Copy + Eq`, and invariant in `T`, so no subtyping turns a
//! proof for one type into one for another. `ContextVar::make_entry` makes one only if the
//! metadata's `this` is the variable itself (a `&'static`, so it outlives every entry and
//! never changes); the hidden constructor `__in_static` is safe to call with anything.
//!
//! ### No borrow across user code
//!
//! Every field of the frame is a `Cell`, accessed with `take`/`replace`/`set`; there is no
//! `RefCell`, so there is no borrow to be held while a destructor or a closure runs. A
//! value's `Drop` may therefore read and set context variables freely (the bug class of
//! opentelemetry-rust #3738 and #2871).
//!
//! ### Thread teardown
//!
//! The `TEARDOWN` guard's destructor nulls `HOT.root` before it releases the frame, so
//! values dropped at thread exit that read variables see defaults. Writing through
//! `Context::try_current` or `try_run` at that point returns an [`AccessError`], and
//! `try_set` a `SetError` for which `is_access_error` is true; the panicking forms
//! document when they panic.
//!
//! [`AccessError`]: crate::AccessError
//!
//! ## Context objects and publication
//!
//! A [`Context`](crate::Context) is `{ lazily made Shared, initial snapshot }`: two
//! words, the `Shared` an `Arc` kept as its raw pointer and set once by
//! compare-and-swap (`sync::OnceArc`). `Shared` holds the identity, the published
//! snapshot in a `PublishCell` (below), and an `EnteredCell<Vars>`: the entered flag
//! together with the runner's own copy of the snapshot. Deferring `Shared`
//! keeps `copy_context()`, and `Context::copy` of a context never run, to a single
//! reference-count increment; the first `run` (or a handle to a running frame) makes it,
//! and from then on a copy also loads from its cell.
//!
//! While a frame runs a context object, each `set`/`reset` publishes the new snapshot into
//! the object's cell so other threads (and the caller, after `run`) see it. Publication is
//! skipped when nobody can observe the object: frames with no context object (a thread's
//! base context until [`Context::current`](crate::Context::current) is called, and the
//! private snapshots used by rayon jobs and futures), and objects whose only reference is
//! the frame itself (`Arc::strong_count == 1`: all handles were dropped, and a `&Context`
//! cannot exist without a handle). Such a frame is marked dirty; a handle made later
//! publishes first. Because the published cell shares the snapshot, sets in an observable
//! context object always path-copy (two allocations up to 4 variables: the node and the
//! value, one for an inline value; more for the trie, two per copied branch). Sets in a
//! frame nobody else holds are in place (one allocation, the value, none inline), except a
//! new key in the trie form.
//!
//! ### The published cell
//!
//! Only the holder of the entered flag writes the object's cell (the flag's hand-over,
//! or the move of the frame that holds it between threads, orders the writes), so it
//! need not be a many-writer cell. `sync::PublishCell` holds the snapshot's
//! `Arc::into_raw` in an `AtomicPtr` and one counter word: two counts of loads in
//! progress and a phase bit that says which count new loads join. A load counts itself
//! in, loads the pointer, counts a reference, and counts itself out; a publication swaps
//! the pointer and reads the word with a read-modify-write. With both counts at 0 it
//! hands the old snapshot back to be retired; otherwise the cell keeps it until each
//! count has been read at 0 since its swap. A publication that finds the current count
//! busy and the other idle switches the phase, so that under steady loads each count
//! still reaches 0 in turn and the cell keeps at most the last two or so snapshots; only
//! a load stalled mid-way (a preempted thread) holds them longer, while it stalls. A
//! frame that ends without publishing hands back what it can (`PublishCell::reclaim`),
//! and the cell's drop releases the rest. Both sides are lock-free and O(1): arc-swap,
//! which held the snapshot before, walked every thread's debt slots on each store, so a
//! set in an observed context cost more the more threads had ever loaded through
//! arc-swap (2,397 instructions for a set and reset with none, 4,609 after 8 threads had
//! loaded: see `BENCHMARKS.md`). The module docs of `sync::publish` give the proof; loom
//! checks the cell in `loom-tests/tests/handoff.rs` within the CI's preemption bound,
//! with a canary whose publication ignores the counts. The observation registry's
//! per-thread slots keep arc-swap (`sync::SnapshotCell`): several threads write them.
//!
//! ### The entered flag and the runner's copy
//!
//! `EnteredCell::try_enter` takes the flag with `compare_exchange(false, true, Acquire,
//! Relaxed)`; `leave` / `leave_with` release it with `store(false, Release)`. The pair
//! orders everything one runner did (including its last publication and the runner copy
//! it handed back) before everything the next runner does, on whichever thread. Only the
//! holder reads or writes the runner copy, so `Context::run` reads it through a plain
//! reference, with no reference count and no load from the cell: an empty `run` is the CAS,
//! a read of tokio's task id (for the isolation check), the release store and two swaps
//! of `HOT` cells. A frame of the object (materialized
//! from `run`'s light frame, or made by `Frame::entered` for threads and tasks) hands its
//! final snapshot back with `leave_with` when it ends. A frame made into a context object
//! by `Context::current` starts entered and is released when the frame ends (for a
//! thread's base context, at thread exit). `loom-tests/tests/enter_race.rs` model-checks
//! that exactly one of two racing threads enters.
//!
//! ## Tokens
//!
//! A token records the frame identity, the variable's previous binding (which gives
//! `old_value`, and what reset puts back), and two change markers. If its set had to
//! path-copy (the snapshot was shared), it also keeps the replaced snapshot. Reset, in
//! order of preference: writes the old binding back in place (the snapshot is the
//! frame's alone); reinstalls the kept snapshot, if the frame's change marker shows that
//! nothing changed since the set (no allocation: the common case in an observable context
//! object); otherwise path-copies the old binding back, or removes the binding if there
//! was none. Change markers are fresh ids from the thread's id block, updated on every set,
//! reset and reinstall, so they stay unique when a task's frame moves
//! between threads. Tokens are `!Send`.
//!
//! ## The `sync` shim
//!
//! `src/sync/` is the only module that names atomics, cells, `thread_local!`,
//! arc-swap or loom. Under `--cfg loom` (the ecosystem's convention, see
//! [`model_checking`](super::model_checking)) it swaps in loom's types, loom's threads
//! and, for the observation registry's arc-swap cells (which loom cannot see), a
//! mutex-based stand-in; the context objects' `PublishCell` is the same code in both. Variable ids use a std
//! atomic in every build, because `static` variables need a `const` constructor.
//!
//! ## Where `unsafe` lives
//!
//! * `src/engine/thread.rs`: `with_hot` and `with_state` (a reference to the
//!   destructor-free `HOT`), cloning the current snapshot through a reference into its
//!   cell (`vars_clone`: a `Map` clone runs no program code), reading the context
//!   object's reference count the same way (`object_observed`), handing the runner copy
//!   back at thread exit, and reading a read-cache slot's word as a `T` (`Hot::cached`:
//!   invariants id → type, inline → `Copy`, and the read cache's own; its unchecked
//!   index is a `CacheSlot`, which only ever holds 0 or an id below 64).
//! * `src/engine/binding.rs` also lends a boxed value from a read-cache slot
//!   (`with_cached_boxed`, or `cached_boxed` then `lend_boxed` with nothing run between:
//!   invariants id → type and the read cache's own, under a borrow count).
//! * `src/engine/binding.rs`: dereferencing `HOT.root` in `lookup_bound` and
//!   `lookup_inline` (invariant: the root pointer is owned), reaching `HOT` through its
//!   address.
//! * `src/engine/scope.rs`: following the chain of scope records (each on the stack of a
//!   `scope` call that has not returned), reading the current light frame's record and
//!   storage (`object_observed`), and lending a record's value.
//! * `src/engine/frame.rs`: the runner copy of an entered context object
//!   (`Frame::entered`, `Frame::release`).
//! * `src/engine/light.rs`: the light-frame record, its storage and its borrowed
//!   snapshot (`enter_light`, `materialize`, `with_captured`), and `vars`, which counts
//!   one more reference to the node behind `HOT.root` (invariant: the root pointer is
//!   owned).
//! * `src/engine/run.rs`: `run_entered`'s borrow of the runner copy, and its leave.
//! * `src/engine/origin.rs`: walking the light-frame records outward (`origin_frames`)
//!   and reading the storage of the current one (`restore_origin`).
//! * `src/value.rs`: the two forms of `Entry` (invariants: id → type, inline → `Copy`):
//!   `downcast_unchecked`, `downcast_boxed_unchecked`, `read_inline` and
//!   `CachedWord::read`, `CachedWord::boxed_value` and `CachedWord::is_unbound` (the same
//!   reads, from a read-cache slot), writing an inline
//!   value (`Entry::inline`), the tagged metadata pointer (`vtable`, `InlineMeta::of`),
//!   the boxed form's `Arc` (`Binding::of`, `retain`, `release`), and `Send`/`Sync` for
//!   `Entry`.
//! * `src/sync/`: `unique_mut` (a strong count of 1 with no `Weak`s), `EnteredCell`
//!   (the value behind the entered flag), the observation registry's lock-free list,
//!   `arc_clone_raw` (an `Arc` from `Arc::as_ptr` of a live one), `OnceArc` (an `Arc`
//!   kept as its raw pointer, set once by compare-and-swap, lent as a never-dropped
//!   `ArcRef`, taken back out by `take` through `&mut`; loom builds keep a mutex
//!   stand-in, as for `SnapshotCell`), `PublishCell` (an `Arc` kept as its raw pointer,
//!   cloned under a counter of loads in progress; its writer-only list of kept
//!   values).
//!
//! Every other code module says `#![deny(unsafe_code)]`, and `.ci/run`'s tidy stage
//! checks it (`lib.rs`, `engine/mod.rs` and the documentation modules, which hold no
//! unsafe code of their own, are exempt; `#![deny]` in a parent would reach the children).
#![deny(unsafe_code)]
