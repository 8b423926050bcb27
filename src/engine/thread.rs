//! The thread's state: one destructor-free thread-local, `HOT`, that holds the frame the
//! thread runs now, and everything that must not touch a shared cache line (ids, the
//! borrow counter, the graveyard of snapshots whose release waits for a borrow to end).
//!
//! `HOT` has a `const` initialiser and no destructor (the owning fields are
//! `ManuallyDrop`), so reaching it compiles to a TLS address computation with no lazy
//! initialisation or liveness check ([`with_hot`]). The zero-sized `TEARDOWN`
//! thread-local, registered the first time a frame is stored ([`with_state`]), releases
//! the frame at thread exit: it nulls `HOT.root` first, so code that runs while the
//! thread's values are dropped reads defaults instead of freed memory, and marks the
//! thread torn down, so writes from then on fail with [`TornDown`].
//!
//! **No borrow across user code.** Every field is a `Cell`; state is read with
//! `take`/`replace` and written back before any user code (a closure, a value's `Drop`)
//! can run. Snapshots that stop being current are dropped only after the state is
//! consistent again ([`retire`]).
//!
//! **The read cache.** `HOT.cache_epochs` and `HOT.cache_words` hold, for each of a
//! program's first variables (`var::assign_id` gives the ids below [`READ_CACHE_SLOTS`]
//! to the first 63 that store values inline, and those from [`BOXED_CACHE_FIRST`] to 127
//! to the first 48 that box them), what a read found last and the *epoch* it found it in:
//! an inline value's bytes, a boxed entry's word (its binding's address), or, for a boxed
//! variable, that it has no binding ([`CachedWord::UNBOUND`]). A slot whose epoch is the
//! current one holds what a lookup of its variable would find now, so a read that finds
//! one ([`Hot::cached`], [`Hot::cached_boxed`]) is a compare and a load, with no lookup.
//! Every write of `HOT.root` keeps that true:
//!
//! * [`Hot::set_root`] starts a new epoch (every slot goes stale) when the root *pointer*
//!   changes, and keeps the epoch when it does not. `HOT.root` always points at a node
//!   owned by the current frame (`frame`'s module docs), so two frames that show the same
//!   pointer show the same node, whose bindings change only in place, through the next
//!   point; the node cannot be freed and another made at its address while the pointer
//!   is current. This is what keeps the cache across the switches into a copy of the
//!   same snapshot that propagation makes: a rayon job, a poll, `Context::run` of a copy.
//! * A set or reset rebinds one variable ([`Hot::rebound`]): the new root differs from
//!   the old in that binding alone, so that variable's slot is updated (or emptied) and
//!   the epoch stays.
//! * A scope's record (`super::scope`) binds one variable while `root` is null: linking
//!   it writes that variable's slot ([`Hot::link_scope`]), unlinking it empties the slot
//!   ([`Hot::unlink_scope`]). While records are linked, "what a lookup would find" is
//!   the chain's record, else `scoped_root`'s binding.
//! * Thread teardown starts a new epoch whatever the root was.
//!
//! A slot is filled only by a read that looked its variable up through a non-null
//! `HOT.root` ([`Hot::fill`], [`Hot::fill_unbound`], before the reader's closure runs; no
//! scope's record is linked then), by the set, reset or flush that bound it
//! ([`Hot::rebound`]), or by the scope that links it. An inline value is `Copy`, so
//! serving one runs no code and holds no reference into a snapshot. A boxed value is lent
//! in place under a borrow count, as a lookup lends it (below): its binding is owned by
//! the current snapshot (or a linked record) while the slot is valid, and the borrow
//! keeps that snapshot alive while the reader runs.
//!
//! **Borrows.** A reader that runs user code while holding a reference into the current
//! root node (the closure of `ContextVar::with`, or `T::clone`) counts itself in
//! `HOT.borrows` ([`Borrow`]); while that count is non-zero, no change is made in place,
//! and a snapshot that stops being current is parked in `HOT.graveyard` instead of
//! dropped, so the node outlives the reference. The last borrow to end drops the parked
//! snapshots.

use std::mem::ManuallyDrop;
use std::ptr;

use super::Vars;
use super::object::{Published, Shared};
use super::scope::{ScopeRecord, flush_scopes};
use crate::map::{Map, Node};
use crate::pool::Entered;
use crate::sync::{Arc, Cell, StaticCounter, thread_locals};
use crate::value::{CachedWord, Entry};

/// The read cache's slots for inline values (see the module docs): ids below this, which
/// `var::assign_id` gives to the first variables that store values inline. Slot 0 is
/// never filled (no variable has id 0).
pub(crate) const READ_CACHE_SLOTS: u64 = 64;

/// The read cache's slots for boxed values: ids from `BOXED_CACHE_FIRST` to just below
/// `BOXED_CACHE_END`, the first ones `var::assign_id` gives to variables that box their
/// values (inline variables past the first 63 take ids far above: a slot's range says
/// which kind of word it holds).
pub(crate) const BOXED_CACHE_FIRST: u64 = READ_CACHE_SLOTS + 16;
const BOXED_CACHE_END: u64 = 128;

/// Whether the read cache has a slot for the boxed variable whose id is `key`.
#[inline(always)]
pub(crate) fn has_boxed_slot(key: u64) -> bool {
    key.wrapping_sub(BOXED_CACHE_FIRST) < BOXED_CACHE_END - BOXED_CACHE_FIRST
}

/// An empty slot of the read cache's epochs (`Hot::epoch` starts at 1, so a slot that
/// holds 0 is never valid).
const NO_EPOCH: u64 = 0;

/// A variable's slot of the read cache's inline range: its id if it stores its values
/// inline and its id is below [`READ_CACHE_SLOTS`], else 0 (a slot that is never filled,
/// so a read through it always misses). Written once, when the id is assigned, and only
/// with a value below `READ_CACHE_SLOTS`, so a read indexes the cache with it unchecked:
/// no compare of the id with the cache's size on the read's path.
pub(crate) struct CacheSlot(StaticCounter);

impl CacheSlot {
    /// No slot (yet).
    pub(crate) const fn new() -> Self {
        Self(StaticCounter::new(0))
    }

    /// Gives the variable whose id is `id`, which stores its values inline, the slot of
    /// that id, if the cache has one. Relaxed (`StaticCounter`): a thread that does not
    /// see it yet reads through slot 0, and misses.
    pub(crate) fn assign(&self, id: u64) {
        if id < READ_CACHE_SLOTS {
            self.0.compare_exchange(0, id);
        }
    }

    /// The slot's index: below `READ_CACHE_SLOTS`.
    #[inline(always)]
    pub(super) fn index(&self) -> usize {
        let index = self.0.load();
        debug_assert!(index < READ_CACHE_SLOTS);
        // The cast is lossless: `index` is below `READ_CACHE_SLOTS`.
        index as usize
    }
}

/// Context and frame ids are handed out in blocks, so a thread allocates ids without
/// touching a shared counter. 0 means "not assigned".
static NEXT_ID_BLOCK: StaticCounter = StaticCounter::new(1);
const ID_BLOCK: u64 = 1 << 16;

/// The thread's state is gone: the thread is exiting and its thread-locals are being
/// destroyed. The API layer turns it into [`AccessError`](crate::AccessError).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TornDown;

/// The thread's state.
///
/// **Layout.** `repr(C)` with the fields a read touches first (`root`, `borrows`,
/// `deferred`) and those every frame switch touches next (`light`, `stacked`, `status`),
/// and on Linux and Android `align(64)`: there they share the first cache line in every
/// process. With the default layout the compiler orders the fields and the thread-local
/// block's alignment decides where lines fall, so a read touched one line or two
/// depending on where the loader put the block. Elsewhere the 64-byte alignment is not
/// asked for: some targets do not honour an over-aligned thread-local (rust-lang/rust#135719
/// on windows-gnu), and a reference to a misaligned `Hot` would be undefined behaviour.
/// The read cache's two arrays come last (2 KiB): a cached read touches the first line
/// (`epoch`) and its slot's two words, one line each.
#[repr(C)]
#[cfg_attr(any(target_os = "linux", target_os = "android"), repr(align(64)))]
pub(super) struct Hot {
    /// The root node of the snapshot reads see: `vars`' root, or the current light
    /// frame's (see `frame`'s module docs for why it is always owned). Written only
    /// through [`Hot::set_root`], [`Hot::rebound`], [`Hot::link_scope`] and
    /// [`Hot::unlink_scope`], which keep the read cache right.
    root: Cell<*const Node<Entry>>,
    /// The read cache's current epoch (see the module docs): starts at 1.
    epoch: Cell<u64>,
    pub(super) borrows: Cell<usize>,
    /// The newest record of a scope running in the current frame (`super::scope`), null
    /// when none is linked; while one is, `root` is null and the frame's root is in
    /// `scoped_root`.
    pub(super) scopes: Cell<*const ScopeRecord>,
    pub(super) scoped_root: Cell<*const Node<Entry>>,
    /// The light frame running now, if the current frame is one (`frame::Light`).
    pub(super) light: Cell<*const super::light::Light>,
    /// How many frames that are not light sit above the thread's base frame now
    /// (materialized light frames): with `light`, tells whether the thread runs in its
    /// own base frame ([`Hot::in_base_frame`]).
    pub(super) stacked: Cell<u32>,
    deferred: Cell<bool>,
    /// Whether the thread's teardown guard is registered, and whether it has run.
    pub(super) status: Cell<Status>,
    /// What ran when the current frame was entered (`crate::pool::Entered`), unless the
    /// current frame is light (its `Light` has it): a set compares it with what runs
    /// now ([`Hot::entered`]). The base frame's is `OUTSIDE_TASKS`; a light frame that
    /// materializes, and a detached frame, save it and put it back when they end.
    pub(super) entered_cell: Cell<Entered>,
    /// The frames (by id, 0 for none) that a request ended inside of, to be given back
    /// their starting bindings when each is current again (`frame::restore_origins`).
    /// Looked at when a light frame flagged for it exits.
    pub(super) pending_restore: Cell<[u64; 2]>,
    /// The light frame whose materialized copy is the thread's frame now (`HOT.vars`
    /// and the fields after it), if it is one: null for the base frame and a detached
    /// one. Set by `frame::materialize` and put back when that light frame exits (and
    /// around detached frames), so it always points to the `Light` of an active
    /// `enter_light` call on this thread.
    pub(super) materialized: Cell<*const super::light::Light>,
    ids_next: Cell<u64>,
    ids_end: Cell<u64>,
    // ----- the current frame (moved in and out as a whole by `frame::swap_frame`) -----
    // The fields that own something are `ManuallyDrop`, so that `Hot` has no destructor
    // (one would add a liveness check to every access); `Teardown` empties them instead.
    pub(super) vars: ManuallyDrop<Cell<Vars>>,
    pub(super) ctx: ManuallyDrop<Cell<Option<Arc<Shared>>>>,
    pub(super) id: Cell<u64>,
    /// Changed (to a fresh id) by every set, reset and restore of this frame's snapshot,
    /// so a token can tell whether anything happened since its set.
    pub(super) last_change: Cell<u64>,
    /// A set or reset was not published to `ctx` because nobody else could see it.
    pub(super) dirty: Cell<bool>,
    /// Whether the frame remembers its starting bindings, and keeps them in
    /// `origin_vars` (see `frame::Origin`).
    pub(super) origin: Cell<super::frame::Origin>,
    pub(super) origin_vars: ManuallyDrop<Cell<Vars>>,
    /// Snapshots retired while a borrow was active, dropped when the last borrow ends.
    graveyard: ManuallyDrop<Cell<Vec<Vars>>>,
    /// The frames that detached frames displaced (`frame::enter_detached`), innermost
    /// last, each with the value of `stacked` while its detached frame is current and
    /// the `entered` and `materialized` it displaced.
    pub(super) detached: ManuallyDrop<Cell<Vec<DetachedEntry>>>,
    /// The read cache (see the module docs): slot `k`, for the variable whose id is `k`,
    /// is valid while `cache_epochs[k]` is the current epoch, and then holds the value
    /// `cache_words[k]`. Two arrays rather than one of pairs: a slot is reached with a
    /// scaled index, no multiplication.
    cache_epochs: [Cell<u64>; BOXED_CACHE_END as usize],
    cache_words: [Cell<CachedWord>; BOXED_CACHE_END as usize],
}

/// What entering a detached frame displaced: `HOT.stacked` while the detached frame is
/// current, then the `entered_cell`, `materialized` and frame it replaced.
pub(super) type DetachedEntry = (u32, Entered, *const super::light::Light, super::Frame);

/// Where the thread is in its life, as far as `HOT` is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// The teardown guard (`TEARDOWN`) is not registered yet: nothing that needs
    /// releasing has been stored.
    Fresh,
    /// The guard is registered and will release the frame at thread exit.
    Alive,
    /// The guard has run: the thread is being torn down, and writes are refused.
    TornDown,
}

/// The read cache's slot index of variable `key`: out of bounds (`usize::MAX`) for an id
/// the cache does not serve, so one bounds test covers both.
#[inline(always)]
fn slot_index(key: u64) -> usize {
    usize::try_from(key).unwrap_or(usize::MAX)
}

impl Hot {
    const fn new() -> Self {
        Self {
            root: Cell::new(ptr::null()),
            epoch: Cell::new(1),
            scopes: Cell::new(ptr::null()),
            scoped_root: Cell::new(ptr::null()),
            light: Cell::new(ptr::null()),
            stacked: Cell::new(0),
            borrows: Cell::new(0),
            deferred: Cell::new(false),
            ids_next: Cell::new(0),
            ids_end: Cell::new(0),
            status: Cell::new(Status::Fresh),
            entered_cell: Cell::new(Entered::OUTSIDE_TASKS),
            pending_restore: Cell::new([0, 0]),
            materialized: Cell::new(ptr::null()),
            vars: ManuallyDrop::new(Cell::new(Map::new())),
            ctx: ManuallyDrop::new(Cell::new(None)),
            id: Cell::new(0),
            last_change: Cell::new(0),
            dirty: Cell::new(false),
            origin: Cell::new(super::frame::Origin::None),
            origin_vars: ManuallyDrop::new(Cell::new(Map::new())),
            graveyard: ManuallyDrop::new(Cell::new(Vec::new())),
            detached: ManuallyDrop::new(Cell::new(Vec::new())),
            cache_epochs: [const { Cell::new(NO_EPOCH) }; BOXED_CACHE_END as usize],
            cache_words: [const { Cell::new(CachedWord::EMPTY) }; BOXED_CACHE_END as usize],
        }
    }

    /// The root node reads follow now (null: no bindings, or a scope's records linked).
    #[inline(always)]
    pub(super) fn root(&self) -> *const Node<Entry> {
        self.root.get()
    }

    /// Makes `root` what reads follow. A different pointer starts a new epoch, so that
    /// every cached read is stale; the same pointer is the same node, and keeps them (see
    /// the module docs).
    #[inline(always)]
    pub(super) fn set_root(&self, root: *const Node<Entry>) {
        if self.root.replace(root) != root {
            self.new_epoch();
        }
    }

    /// After a set or reset rebound variable `key` alone, to the entry whose word is `now`
    /// (`None`: unbound): makes `root` what reads follow and updates `key`'s cache slot.
    /// Every other binding is as before, so the epoch stays.
    #[inline(always)]
    pub(super) fn rebound(&self, root: *const Node<Entry>, key: u64, now: Option<CachedWord>) {
        self.root.set(root);
        self.set_slot(key, now);
    }

    /// Links a scope's record (`super::scope`): `HOT.root` becomes null (if it is not
    /// already, a record being linked), so that reads miss it and look at the chain, and
    /// `key`'s slot gets the record's entry's word (`now`). The frame's bindings are the
    /// same, so every other slot stays right, and so does the epoch. Returns the root it
    /// replaced: the frame's for the first record, null for the others.
    #[inline(always)]
    pub(super) fn link_scope(&self, key: u64, now: CachedWord) -> *const Node<Entry> {
        self.set_slot(key, Some(now));
        self.root.replace(ptr::null())
    }

    /// Unlinks a scope's record for `key`: its slot is emptied (the value below it, in a
    /// record or the frame, is found by the next read), and `root`, if the chain is empty
    /// now, is the frame's root again. While the record was linked, no read filled a slot
    /// (a read fills only through a non-null `HOT.root`, and everything else flushes the
    /// chain first); only records linked above it wrote their own, and their unlinks
    /// emptied them. So every other slot is still right.
    #[inline(always)]
    pub(super) fn unlink_scope(&self, key: u64, root: Option<*const Node<Entry>>) {
        self.set_slot(key, None);
        if let Some(root) = root {
            self.root.set(root);
        }
    }

    /// Starts a new epoch: every cached read is stale.
    pub(super) fn new_epoch(&self) {
        self.epoch.set(self.epoch.get() + 1);
    }

    /// Makes `key`'s slot hold `now` (an entry's word) for this epoch, or empties it.
    #[inline(always)]
    fn set_slot(&self, key: u64, now: Option<CachedWord>) {
        match now {
            Some(word) => self.fill(key, word),
            None => {
                if let Some(epoch) = self.cache_epochs.get(slot_index(key)) {
                    epoch.set(NO_EPOCH);
                }
            }
        }
    }

    /// The cached inline value of the variable whose cache slot is `slot`, if the read
    /// cache holds it for this epoch.
    ///
    /// # Safety
    ///
    /// `slot` must be the [`CacheSlot`] of a `ContextVar<T>`: it then holds 0 or the
    /// variable's id, below [`READ_CACHE_SLOTS`], and a filled slot there holds the word
    /// of an inline entry made for a `T` (only variables that store values inline have
    /// such ids, and such slots are filled only with the words of entries bound under the
    /// id, by [`fill`](Self::fill), [`rebound`](Self::rebound) and
    /// [`link_scope`](Self::link_scope); the id → type invariant of `value`); slot 0 is
    /// never filled.
    #[inline(always)]
    pub(super) unsafe fn cached<T>(&self, slot: &CacheSlot) -> Option<T> {
        let index = slot.index();
        // SAFETY: `CacheSlot` holds an index below `READ_CACHE_SLOTS`, within both arrays.
        if unsafe { self.cache_epochs.get_unchecked(index) }.get() != self.epoch.get() {
            return None;
        }
        // SAFETY: a valid slot in the inline range holds the word of an inline entry made
        // for a `T` (the caller's guarantee); the index is in bounds (as above).
        Some(unsafe { self.cache_words.get_unchecked(index).get().read::<T>() })
    }

    /// The cached word of variable `key`'s boxed entry, if the read cache holds it for
    /// this epoch: a valid slot in the boxed range holds the word of a boxed entry bound
    /// under `key` (only variables that box their values have such ids) in the current
    /// snapshot or a linked scope's record, which keeps the binding alive until the
    /// snapshot stops being current (or the scope ends); or [`CachedWord::UNBOUND`] if
    /// the variable has no binding.
    #[inline(always)]
    pub(super) fn cached_boxed(&self, key: u64) -> Option<CachedWord> {
        if !has_boxed_slot(key) {
            return None;
        }
        let index = slot_index(key);
        if self.cache_epochs.get(index)?.get() != self.epoch.get() {
            return None;
        }
        self.cache_words.get(index).map(Cell::get)
    }

    /// Caches that variable `key` has no binding (a lookup through a non-null `HOT.root`
    /// just missed it), if it is a boxed variable with a slot: its slot gets the unbound
    /// word, which no boxed entry has. (An inline slot cannot say it: every word is a
    /// value there.)
    #[inline(always)]
    pub(super) fn fill_unbound(&self, key: u64) {
        if has_boxed_slot(key) {
            self.fill(key, CachedWord::UNBOUND);
        }
    }

    /// Caches `word`, the word of the entry just found (or bound) under `key` through
    /// `HOT.root`, for this epoch, if the cache has a slot for `key`. Called before the
    /// reader's closure runs (it may change the frame).
    #[inline(always)]
    pub(super) fn fill(&self, key: u64, word: CachedWord) {
        let index = slot_index(key);
        if let (Some(epoch), Some(slot)) =
            (self.cache_epochs.get(index), self.cache_words.get(index))
        {
            slot.set(word);
            epoch.set(self.epoch.get());
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        let next = self.ids_next.get();
        if next != self.ids_end.get() {
            self.ids_next.set(next + 1);
            return next;
        }
        let start = NEXT_ID_BLOCK.fetch_add(ID_BLOCK);
        self.ids_next.set(start + 1);
        self.ids_end.set(start + ID_BLOCK);
        start
    }

    pub(super) fn frame_id(&self) -> u64 {
        match self.id.get() {
            0 => {
                let id = self.next_id();
                self.id.set(id);
                id
            }
            id => id,
        }
    }

    /// What ran when the current frame was entered (`crate::pool::Entered`).
    #[inline]
    pub(super) fn entered(&self) -> Entered {
        let light = self.light.get();
        if light.is_null() {
            return self.entered_cell.get();
        }
        // SAFETY: a non-null `HOT.light` points to the live `Light` of an active
        // `enter_light` on this thread (see `frame::Light`).
        unsafe { (*light).entered }
    }

    /// Whether the thread runs in its own base frame: no frame was entered on it, or all
    /// that were have ended.
    #[inline]
    pub(super) fn in_base_frame(&self) -> bool {
        self.light.get().is_null() && self.stacked.get() == 0
    }

    #[inline]
    pub(super) fn vars_clone(&self) -> Vars {
        // SAFETY: a shared reference into the cell, used only for the clone: cloning a
        // `Map` counts a reference to its root node (the map is that one pointer), which
        // runs no code of the program's and cannot reach `HOT`, so nothing writes the
        // cell while the reference lives (`Cell` is `!Sync`: no other thread can).
        unsafe { (*self.vars.as_ptr()).clone() }
    }

    /// Whether the frame's context object, if it has one, has a holder besides the frame
    /// (a handle someone can read it through).
    #[inline]
    pub(super) fn object_observed(&self) -> bool {
        // SAFETY: a shared reference into the cell, used only to read a reference count,
        // which runs no code of the program's and cannot reach `HOT`, so nothing writes
        // the cell while the reference lives (`Cell` is `!Sync`: no other thread can).
        let ctx = unsafe { &*self.ctx.as_ptr() };
        ctx.as_ref().is_some_and(|ctx| Arc::strong_count(ctx) > 1)
    }

    /// Makes `new` the current snapshot and returns the old one. No user code runs.
    pub(super) fn install(&self, new: Vars) -> Vars {
        self.set_root(new.root_ptr());
        self.vars.replace(new)
    }

    /// Publishes the current snapshot to the frame's context object if anyone else can
    /// see that object, and returns what the object held before (to be retired by the
    /// caller). A context object referenced only by this frame (`strong_count == 1`: its
    /// handles were all dropped) cannot be observed, so the publication is skipped and
    /// the frame marked dirty; a handle made later publishes first
    /// (`binding::current_shared`).
    ///
    /// The caller retires the old snapshot with [`retire_published`]: snapshots that
    /// earlier publications had to leave in the object's cell (a load from another
    /// thread was in progress) may come back with this one, and are parked in the
    /// graveyard until then.
    #[inline]
    pub(super) fn publish(&self) -> Option<Vars> {
        // No context object (a private frame): the cell is left holding `None`.
        let shared = self.ctx.take()?;
        self.publish_to_object(shared)
    }

    #[cold]
    fn publish_to_object(&self, shared: Arc<Shared>) -> Option<Vars> {
        // SAFETY: a frame with a context object holds its entered flag (see
        // `Frame::release`), and `self` is that frame's state.
        let published = unsafe { publish_to(&shared, || self.vars_clone()) };
        self.dirty.set(published.is_none());
        self.ctx.set(Some(shared));
        let published = published?;
        if !published.earlier.is_empty() {
            self.park_earlier(published.earlier);
        }
        Some(Map::from_arc(published.old))
    }

    /// Parks snapshots that earlier publications left in the object's cell, for
    /// [`retire_published`] to drop once the caller's state is consistent (or the last
    /// borrow to drop, if one is active then).
    #[cold]
    #[inline(never)]
    fn park_earlier(&self, earlier: Vec<Arc<Node<Entry>>>) {
        let mut graveyard = self.graveyard.take();
        graveyard.extend(earlier.into_iter().map(|vars| Map::from_arc(Some(vars))));
        self.graveyard.set(graveyard);
        self.deferred.set(true);
    }
}

/// Stores `vars()` in `shared` if anyone besides the running frame can see the object
/// (`strong_count > 1`), returning the object's previous snapshot for the caller to
/// retire ([`retire_published`]); `None` if the publication was skipped.
///
/// # Safety
///
/// The caller runs `shared`: it holds the object's entered flag.
pub(super) unsafe fn publish_to(
    shared: &Arc<Shared>,
    vars: impl FnOnce() -> Vars,
) -> Option<Published> {
    // SAFETY: the caller holds the flag (this function's contract): the flag's holder
    // alone replaces the snapshot, and the flag is handed on with `Release` and taken
    // with `Acquire` (`EnteredCell`), or the frame that holds it is moved between threads
    // by an executor's hand-over, which orders the moves: the replacements are
    // serialised.
    (Arc::strong_count(shared) > 1)
        .then(|| unsafe { shared.published().replace(vars().into_arc()) })
}

/// A frame's last word to its object before it leaves it: publishes `vars()` if the
/// frame is `dirty` ([`publish_to`]); otherwise takes back what the object's cell kept
/// from earlier publications while other threads loaded it, if they are done now
/// (`PublishCell::reclaim`: usually nothing is kept, and that is one test). Returns what
/// the caller releases ([`retire_replaced`]) once it has left the object.
///
/// # Safety
///
/// As for [`publish_to`]: the caller holds the object's entered flag.
pub(super) unsafe fn publish_final(
    shared: &Arc<Shared>,
    dirty: bool,
    vars: impl FnOnce() -> Vars,
) -> Published {
    let published = if dirty {
        // SAFETY: the caller holds the flag (this function's contract).
        unsafe { publish_to(shared, vars) }
    } else {
        None
    };
    published.unwrap_or_else(|| Published {
        old: None,
        // SAFETY: as above.
        earlier: unsafe { shared.published().reclaim() },
    })
}

/// The thread's teardown guard: `HOT` has no destructor (so that reaching it is a plain
/// TLS access), and this zero-sized thread-local, registered the first time the thread
/// stores something in `HOT`'s frame, releases that frame at thread exit.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = HOT.try_with(tear_down);
    }
}

/// Releases the thread's frame at thread exit and refuses writes from then on.
fn tear_down(hot: &Hot) {
    hot.status.set(Status::TornDown);
    // Readers that run while the values below are dropped must not follow the root, and
    // writers are refused from here on (`with_state`).
    hot.set_root(ptr::null());
    // While a scope's records are linked, cached reads are right although `root` is
    // null already; from here on reads must see defaults.
    hot.new_epoch();
    // A scope's record may still be linked here (`std::process::exit` inside its `f`
    // runs the thread-local destructors with the scope's call still on the stack): the
    // chain is emptied, so that nothing follows it from now on, and the scope's end finds
    // its record unlinked and unflushed, with nothing to undo.
    hot.scopes.set(ptr::null());
    hot.scoped_root.set(ptr::null());
    hot.light.set(ptr::null());
    hot.materialized.set(ptr::null());
    let vars = hot.vars.take();
    if let Some(shared) = hot.ctx.take() {
        // SAFETY: the thread's base frame holds its object's flag (below).
        let released = unsafe { publish_final(&shared, hot.dirty.get(), || vars.clone()) };
        // SAFETY: the thread's base frame holds its object's flag (`current_shared` made
        // it entered, `Shared::new(.., true)`); nothing borrows the runner's copy now: every light
        // frame of this thread has returned (they are scoped to calls on its stack).
        drop(unsafe { shared.owner().leave_with(vars.clone()) });
        // Dropped after leaving, as `Frame::release` does: a destructor that panics must
        // not leave the object entered.
        drop(released);
    }
    // May run user destructors, which see defaults and cannot write.
    drop(vars);
    drop(hot.origin_vars.take());
    drop(hot.graveyard.take());
    drop(hot.detached.take());
}

/// Loom drops every thread-local of a finished thread, `HOT` included, in an order of
/// its own: if `HOT` goes first, `TEARDOWN` can no longer reach it, so `HOT` releases the
/// frame itself (the second of the two finds it empty). Normal builds keep `HOT` free of
/// a destructor (see `with_hot`).
#[cfg(loom)]
impl Drop for Hot {
    fn drop(&mut self) {
        tear_down(self);
    }
}

thread_locals! {
    static HOT: Hot = Hot::new();
    static TEARDOWN: Teardown = Teardown;
}

// `with_hot` relies on this: no destructor, hence no teardown of `HOT`'s storage.
#[cfg(not(loom))]
const _: () = assert!(!std::mem::needs_drop::<Hot>());

/// Calls `f` with this thread's `Hot`.
///
/// `HOT.with(f)` is a generic call that LLVM often leaves out of line when `f` is large
/// (it was, for `ContextVar::get`: a call plus an indirect call to the TLS accessor).
/// Taking only the address inside `with` keeps that closure trivial, so the whole access
/// inlines to a TLS address computation.
#[inline(always)]
pub(super) fn with_hot<R>(f: impl FnOnce(&Hot) -> R) -> R {
    let hot = hot_ptr();
    // SAFETY: `HOT` has a `const` initialiser and no destructor, so its storage is
    // initialised before first use and stays valid until the thread's TLS block is freed,
    // after every frame of this thread (including the caller's) has returned. `Hot` is
    // `!Sync`, and the reference does not outlive the call, so it is used on this thread
    // only, and only through `Cell`s.
    f(unsafe { &*hot })
}

/// The address of this thread's `Hot`, for callers that cannot afford a closure (LLVM may
/// leave `with_hot`'s out of line). Dereferencing it is sound for as long as
/// [`with_hot`]'s argument is: within the caller's call, on this thread, through `Cell`s.
///
/// Never inlined under loom: `loom::thread_local!` builds the `Hot` (some 2.7 KB) on the
/// stack of whatever inlines its first access, so every caller carried a 4 KB frame, and
/// a model's deeper paths overflowed the 32 KB stack loom gives a model's main thread
/// (its panic on a causality violation then aborted instead of reporting).
#[cfg_attr(not(loom), inline(always))]
#[cfg_attr(loom, inline(never))]
pub(super) fn hot_ptr() -> *const Hot {
    HOT.with(ptr::from_ref)
}

/// Calls `f` with the thread's state, registering the teardown guard on first use;
/// `Err` during thread teardown.
#[inline(always)]
pub(super) fn with_state<R>(f: impl FnOnce(&Hot) -> R) -> Result<R, TornDown> {
    // Not through `with_hot`: LLVM left that closure, holding all of `f`, out of line.
    // SAFETY: as in `with_hot` (see `hot_ptr`).
    let hot = unsafe { &*hot_ptr() };
    if !is_alive(hot) {
        return Err(TornDown);
    }
    // Whatever `f` does, it is not a read: scoped bindings become real sets first.
    flush_scopes(hot);
    Ok(f(hot))
}

/// Whether the thread's state can be written: the teardown guard is registered (now, if
/// the thread was fresh) and has not run.
#[inline]
pub(super) fn is_alive(hot: &Hot) -> bool {
    hot.status.get() == Status::Alive || register(hot)
}

/// Registers the teardown guard if the thread is fresh; `false` if it is torn down.
#[cold]
fn register(hot: &Hot) -> bool {
    if hot.status.get() == Status::Fresh && TEARDOWN.try_with(|_| ()).is_ok() {
        hot.status.set(Status::Alive);
    }
    hot.status.get() == Status::Alive
}

/// Retires the snapshot [`Hot::publish`] replaced, and any that earlier publications
/// left to it (parked by `Hot::park_earlier`). Out of line and cold, like
/// `Hot::publish_to_object`: only a frame with a context object publishes, and inlined
/// into the set and the reset (or merely out of line), this moved their private path's
/// register allocation (11, then 6 instructions of a set and reset's 550; cold: 1).
#[cold]
#[inline(never)]
pub(super) fn retire_published(old: Vars) {
    retire(old);
    let parked = with_hot(|hot| hot.deferred.get() && hot.borrows.get() == 0);
    if parked {
        drain_parked();
    }
}

#[cold]
#[inline(never)]
fn drain_parked() {
    with_hot(|hot| hot.deferred.set(false));
    drain_graveyard();
}

/// Retires what [`publish_to`] gave back: the replaced snapshot, and any that earlier
/// publications had to leave in the cell.
pub(super) fn retire_replaced(published: Published) {
    if let Some(old) = published.old {
        retire(Map::from_arc(Some(old)));
    }
    for vars in published.earlier {
        retire(Map::from_arc(Some(vars)));
    }
}

/// Drops `vars` now, or parks it until the last active borrow ends.
pub(super) fn retire(vars: Vars) {
    let parked = with_hot(|hot| {
        if hot.borrows.get() == 0 {
            return Some(vars);
        }
        if hot.status.get() == Status::TornDown {
            // Nothing would drain the graveyard any more.
            return Some(vars);
        }
        let mut graveyard = hot.graveyard.take();
        graveyard.push(vars);
        hot.graveyard.set(graveyard);
        hot.deferred.set(true);
        None
    });
    drop(parked);
}

#[cold]
fn drain_graveyard() {
    let _ = HOT.try_with(|hot| {
        loop {
            let dead = hot.graveyard.take();
            if dead.is_empty() {
                break;
            }
            drop(dead); // may run user destructors, which may park more snapshots
        }
    });
}

/// Counts an active borrow of the current snapshot; see the module docs.
pub(super) struct Borrow<'a>(&'a Hot);

impl<'a> Borrow<'a> {
    #[inline]
    pub(super) fn new(hot: &'a Hot) -> Self {
        hot.borrows.set(hot.borrows.get() + 1);
        Borrow(hot)
    }
}

impl Drop for Borrow<'_> {
    #[inline]
    fn drop(&mut self) {
        let left = self.0.borrows.get() - 1;
        self.0.borrows.set(left);
        if left == 0 && self.0.deferred.get() {
            self.0.deferred.set(false);
            drain_graveyard();
        }
    }
}

/// `Ok` unless the thread's state is being torn down.
#[inline]
pub(crate) fn check_alive() -> Result<(), TornDown> {
    // Not `with_state`: nothing is done here, so nothing needs flushing.
    // SAFETY: as in `with_hot` (see `hot_ptr`).
    if is_alive(unsafe { &*hot_ptr() }) {
        Ok(())
    } else {
        Err(TornDown)
    }
}

/// A fresh context id from this thread's block. Context ids and frame ids share one
/// space, unique across threads.
pub(crate) fn next_context_id() -> u64 {
    with_hot(Hot::next_id)
}
