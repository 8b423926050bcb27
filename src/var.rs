//! `ContextVar<T>`: a typed key with a name and an optional default.

#![deny(unsafe_code)]

use std::fmt;

use crate::engine;
use crate::error::{LookupError, ResetError, SetError};
use crate::future::WithContext;
use crate::sync::{Cell, OnceLock, StaticCounter, thread_locals};
use crate::token::{ScopedSet, Token};
use crate::value::{CopyEq, Entry, InlineMeta, ValueTraits, may_be_inline};

/// Sources of variable ids (0 means "not assigned yet"), dense, so that the variables of
/// a program fill the root of a snapshot's trie first. Which source an id came from says
/// which kind of word the engine's read cache keeps for it, so each kind has its own:
///
/// * variables that store values inline take 1, 2, 3, ... while they are below
///   `engine::READ_CACHE_SLOTS` (the cache's inline slots), then [`OVERFLOW_INLINE_IDS`];
/// * every other variable takes ids from `READ_CACHE_SLOTS + 16` up, the first of which
///   have the cache's boxed slots (`engine::has_boxed_slot`).
///
/// A read tests its id alone to choose the cache. The boxed source starts half a trie
/// level (16) above the inline one: the low five bits choose the slot of a trie's root,
/// so a program's first 15 inline and first 16 boxed variables take different slots (a
/// boxed source starting at `READ_CACHE_SLOTS` itself put the first of each kind in the
/// same ones). Ascending, so that sets in declaration order append to a small snapshot
/// node rather than shift it (counting down made a set and reset 9% longer). A small node
/// (up to 4 bindings) tells keys apart by their low six bits, so there inline ids 16 to
/// 63 can meet boxed ids 80 to 127: the node then takes the trie's form, which costs a
/// little, and changes nothing else.
static NEXT_INLINE_VAR_ID: StaticCounter = StaticCounter::new(1);
static NEXT_VAR_ID: StaticCounter = StaticCounter::new(engine::READ_CACHE_SLOTS + 16);
/// Inline variables past the first 63: far above every boxed id, so that none of them
/// has a slot of the read cache meant for boxed values.
static OVERFLOW_INLINE_IDS: StaticCounter = StaticCounter::new(1 << 40);

/// The identity of a [`ContextVar`]: unique in the process and never reused, even after
/// the variable is dropped. Two variables with the same name have different ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VarId(pub(crate) u64);

impl VarId {
    /// The id as an integer: at least 1, unique in the process, assigned on the
    /// variable's first use. Nothing else is promised about its value (not the order of
    /// first use).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for VarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VarId({})", self.0)
    }
}

enum Default<T> {
    None,
    Value(T),
    Lazy(fn() -> T, OnceLock<T>),
}

// The lazy defaults this thread is computing now (their cells' addresses): a lazy
// default that reads its own variable would otherwise wait for itself forever in
// `OnceLock::get_or_init`.
thread_locals! {
    static LAZY_IN_PROGRESS: Cell<Vec<usize>> = Cell::new(Vec::new());
}

/// Computes the lazy default in `cell` with `init`, unless this thread is computing it
/// already (`init` reads its own variable): then `Err(())`, instead of a deadlock.
fn lazy_default<T>(cell: &OnceLock<T>, init: fn() -> T) -> Result<&T, ()> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let key = std::ptr::from_ref(cell).addr();
    // During thread teardown the list is gone; computing without the check is what
    // `OnceLock` alone would do.
    let entered = LAZY_IN_PROGRESS
        .try_with(|list| {
            let mut keys = list.take();
            let cycle = keys.contains(&key);
            if !cycle {
                keys.push(key);
            }
            list.set(keys);
            !cycle
        })
        .unwrap_or(true);
    if !entered {
        return Err(());
    }
    /// Takes the cell off the list when `init` returns or unwinds.
    struct Done(usize);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = LAZY_IN_PROGRESS.try_with(|list| {
                let mut keys = list.take();
                keys.retain(|&key| key != self.0);
                list.set(keys);
            });
        }
    }
    let _done = Done(key);
    Ok(cell.get_or_init(init))
}

/// A context variable: a typed key into the current [`Context`](crate::Context).
///
/// A `ContextVar<T>` does not hold a value itself. Each thread runs in a context, and
/// [`set`](Self::set) binds a value for this variable *in the current context*;
/// [`get`](Self::get) and [`with`](Self::with) read the binding of the current context,
/// falling back to a default. Code running in another context (another thread, a
/// [`Context::run`](crate::Context::run), a task) sees its own binding.
///
/// Declare variables with [`context_var!`](crate::context_var), the one way to make one
/// (statics named after their identifier, or a constant expression with a name of your
/// choosing):
///
/// ```
/// use contextvars::{ContextVar, context_var};
///
/// context_var! {
///     /// The id of the request being served.
///     pub static REQUEST_ID: u64;
///     /// The tenant, "public" unless a request says otherwise.
///     pub static TENANT: &'static str = "public";
/// }
/// static RETRIES: ContextVar<u32> = contextvars::context_var!(u32, "retries", default 3);
///
/// assert!(REQUEST_ID.try_get().is_err()); // no binding, no default
/// assert_eq!(TENANT.get(), "public");
/// let token = REQUEST_ID.set(42);
/// assert_eq!(REQUEST_ID.get(), 42);
/// REQUEST_ID.reset(token).unwrap();
/// assert!(REQUEST_ID.try_get().is_err());
/// assert_eq!(RETRIES.get(), 3);
/// ```
///
/// # Identity
///
/// A variable's identity is its [`VarId`], assigned on first use and never reused. Two
/// variables with the same name are different keys, as in Python.
///
/// # Reading
///
/// Precedence follows Python: the binding in the current context, then a default given
/// at the call ([`get_or`](Self::get_or), [`with_or`](Self::with_or)), then the variable's
/// own default, else a [`LookupError`]. Reading is wait-free: a thread-local load and a
/// bounded lookup, with no lock, no atomic read-modify-write and no allocation.
///
/// # Inline values
///
/// A variable declared as a `static` with [`context_var!`](crate::context_var) whose type
/// is `Copy + Eq` and at most a pointer's size and alignment (on 64-bit targets: `u64`,
/// `u32`, `bool`, `char`, a field-less enum, `(u32, u32)`, `Option<NonZeroU64>`) stores
/// its values in the snapshot itself: a [`set`](Self::set) allocates nothing for the
/// value (a set in place allocates nothing at all; a path copy still makes its nodes),
/// cloning a snapshot's entry copies it, and a read copies the value out. That includes a static with a name
/// of its own (`static REQUEST_ID: u64 as "request_id";`). Other variables *box* each
/// value (one allocation per set, shared by every snapshot that binds it): other types,
/// and the expression form `context_var!(T, "name")`, whose result could be moved (even
/// when it initialises a `static`). The word is a pointer's size: 8 bytes on 64-bit
/// targets, 4 on 32-bit ones (where a `u64` is boxed).
///
/// Both forms read, set, print and propagate the same; they differ in cost (as
/// [`docs::performance`](crate::docs::performance) details: a read of an inline `static`
/// that the thread's read cache holds is the shortest read there is, and a boxed
/// variable of a type that could be inline, a `u64` of the expression form, reads
/// through one call more than either) and in two details of
/// identity: [`with`](Self::with) hands its closure a reference to a copy of an inline
/// value (its address is not stable across calls), and `==` on contexts compares inline
/// values with their `Eq` only, where boxed values that are the very same object (one
/// `set` made both) are equal without it.
///
/// ```
/// contextvars::context_var! {
///     /// Stored inline: a `static` of a `Copy + Eq` type that fits a word.
///     static REQUEST_ID: u64;
///     /// Boxed: a `String` is not `Copy`.
///     static USER: String;
/// }
/// let _id = REQUEST_ID.scoped_set(7); // nothing allocated for the value
/// assert_eq!(REQUEST_ID.get(), 7);
/// ```
pub struct ContextVar<T: 'static> {
    name: &'static str,
    /// The id (see [`NEXT_VAR_ID`]; 0 before one is assigned): below
    /// `engine::READ_CACHE_SLOTS` exactly for the inline variables the engine's read cache
    /// serves.
    id: StaticCounter,
    /// The read cache's inline slot: the id, once assigned, of an inline variable among
    /// the cache's (see `engine::CacheSlot`), else 0. The read indexes the cache with it,
    /// so the id's range needs no test there.
    slot: engine::CacheSlot,
    default: Default<T>,
    traits: fn() -> ValueTraits<T>,
    /// Set for a `static` whose type is `Copy + Eq` and fits a word: its values are stored
    /// in the snapshot's entries themselves (no allocation; see `value`'s module docs).
    inline: Option<InlineMeta<T>>,
}

impl<T: Send + Sync + 'static> ContextVar<T> {
    // The constructors of the `context_var!` macro, the one way to make a variable (so
    // every variable prints and compares its values the same way). Not public API.

    #[doc(hidden)]
    pub const fn __new(name: &'static str, traits: fn() -> ValueTraits<T>) -> Self {
        Self::build(name, Default::None, traits)
    }

    #[doc(hidden)]
    pub const fn __with_default(
        name: &'static str,
        value: T,
        traits: fn() -> ValueTraits<T>,
    ) -> Self {
        Self::build(name, Default::Value(value), traits)
    }

    #[doc(hidden)]
    pub const fn __with_lazy_default(
        name: &'static str,
        init: fn() -> T,
        traits: fn() -> ValueTraits<T>,
    ) -> Self {
        Self::build(name, Default::Lazy(init, OnceLock::new()), traits)
    }

    const fn build(
        name: &'static str,
        default: Default<T>,
        traits: fn() -> ValueTraits<T>,
    ) -> Self {
        Self {
            name,
            id: StaticCounter::new(0),
            slot: engine::CacheSlot::new(),
            default,
            traits,
            inline: None,
        }
    }

    /// Marks a variable that is the initializer of a `static` (`this` is that static):
    /// if `proof` shows its type is `Copy + Eq` and the type fits a word, its values are
    /// stored inline. A `this` that is another variable only means that this one never
    /// stores inline.
    #[doc(hidden)]
    pub const fn __in_static(
        mut self,
        this: &'static ContextVar<T>,
        proof: Option<CopyEq<T>>,
    ) -> Self {
        self.inline = InlineMeta::new(this, proof);
        self
    }

    /// The name given at declaration.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// This variable's identity.
    pub fn id(&self) -> VarId {
        VarId(self.raw_id())
    }

    /// The variable's own default, if it has one (computing a lazy default now).
    ///
    /// # Panics
    ///
    /// If the initialiser of a lazy default reads this variable's default itself (a
    /// cycle, which would otherwise never finish); [`try_default_value`](Self::try_default_value)
    /// returns the error instead. A panic of the initialiser propagates, and the next
    /// read tries again.
    #[track_caller]
    pub fn default_value(&self) -> Option<&T> {
        match self.try_default_value() {
            Ok(default) => default,
            Err(error) => error.panic(),
        }
    }

    /// [`default_value`](Self::default_value), returning a [`LookupError`] (for which
    /// [`LookupError::is_lazy_default_cycle`] is true) if a lazy default's initialiser
    /// reads the variable itself.
    pub fn try_default_value(&self) -> Result<Option<&T>, LookupError> {
        match &self.default {
            Default::None => Ok(None),
            Default::Value(value) => Ok(Some(value)),
            Default::Lazy(init, cell) => lazy_default(cell, *init)
                .map(Some)
                .map_err(|()| LookupError::lazy_default_cycle(self.name)),
        }
    }

    /// The id, assigning one on first use.
    #[inline]
    pub(crate) fn raw_id(&self) -> u64 {
        match self.existing_id() {
            Some(id) => id,
            None => self.assign_id(),
        }
    }

    /// The id if one was assigned. A variable without an id was never set anywhere, so no
    /// context can hold a binding for it.
    #[inline]
    pub(crate) fn existing_id(&self) -> Option<u64> {
        match self.id.load() {
            0 => None,
            id => Some(id),
        }
    }

    /// The key a read looks up: the id, or 0 if none was assigned yet. No binding has key
    /// 0 (ids start at 1), so such a lookup simply misses, and a read need not test for
    /// it: one branch fewer on every read.
    #[inline(always)]
    fn lookup_key(&self) -> u64 {
        self.id.load()
    }

    #[cold]
    fn assign_id(&self) -> u64 {
        let inline = self.stores_inline();
        let fresh = if inline {
            Some(NEXT_INLINE_VAR_ID.fetch_add(1))
                .filter(|&id| id < engine::READ_CACHE_SLOTS)
                .unwrap_or_else(|| OVERFLOW_INLINE_IDS.fetch_add(1))
        } else {
            NEXT_VAR_ID.fetch_add(1)
        };
        // Another thread may have assigned one meanwhile; theirs wins and ours is simply
        // never used (ids need to be unique, not dense).
        let id = self.id.compare_exchange(0, fresh);
        if inline {
            // Every thread that assigns gives the slot of the id that won.
            self.slot.assign(id);
        }
        id
    }

    /// The read cache's inline slot of this variable (see `engine::CacheSlot`), for the
    /// engine's tests.
    #[cfg(test)]
    pub(crate) fn cache_slot(&self) -> &engine::CacheSlot {
        &self.slot
    }

    /// Whether this variable stores its values inline (see
    /// [Inline values](Self#inline-values)): its metadata is its own.
    fn stores_inline(&self) -> bool {
        self.inline
            .as_ref()
            .is_some_and(|meta| std::ptr::eq(meta.var(), self))
    }

    /// The entry that binds `value` to this variable, whose id is `id` (from
    /// [`raw_id`](Self::raw_id), which every caller needs for the binding's key anyway:
    /// the id is an atomic, so a second load here cost a compare and a branch): inline,
    /// or boxed (out of line, so that making an inline entry needs no stack frame: it took
    /// 24 instructions in `scope`, 10 of them saving and restoring registers for the
    /// boxed path's calls).
    #[inline]
    pub(crate) fn make_entry(&self, id: u64, value: T) -> Entry {
        debug_assert_eq!(id, self.lookup_key(), "the variable's assigned id");
        if let Some(meta) = &self.inline {
            let var = meta.var();
            if std::ptr::eq(var, self) {
                // `var` is `self` with a `'static` lifetime, so is its metadata.
                let meta = var.inline.as_ref().expect("the same variable");
                return Entry::inline(meta, value);
            }
        }
        self.make_boxed_entry(id, value)
    }

    #[inline(never)]
    fn make_boxed_entry(&self, id: u64, value: T) -> Entry {
        Entry::boxed(id, self.name, self.traits, value)
    }

    pub(crate) fn fmt_value(&self, value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.traits)().fmt_value(value, f)
    }

    // ----- reading -------------------------------------------------------------------

    /// Calls `f` with the current value: the binding in the current context, else the
    /// variable's default. No clone, no allocation.
    ///
    /// # Panics
    ///
    /// If there is neither (Python's `LookupError`); [`try_with`](Self::try_with) returns
    /// the error instead.
    ///
    /// # Cost
    ///
    /// For one of a program's first variables (63 that store values inline, see
    /// [Inline values](Self#inline-values), and 48 that box them), the thread's *read
    /// cache*: a relaxed load of the variable's cache slot (a boxed variable of a
    /// word-sized type loads its id too, after its empty inline slot), a compare of two
    /// thread-local words and a load, if this thread read the variable (or set or scoped
    /// it) since its context last changed to another snapshot. Otherwise a thread-local
    /// load and a bounded lookup: one node up to 4 variables, else O(log₃₂ n) trie levels
    /// (at most 13), which fills the cache. No allocation, no lock, no atomic
    /// read-modify-write; a lazy default runs its initialiser once per process. An inline
    /// value is copied out and `f` gets the copy; a boxed value is lent in place, and while
    /// `f` runs a non-atomic counter marks the borrow, so a set inside `f` path-copies
    /// instead of writing in place.
    ///
    /// The cache survives a switch into the *same* snapshot (a rayon job of
    /// `contextvars::rayon`, the poll of a task that set nothing, `Context::run` of an
    /// unchanged copy), and a set or reset of another variable; see
    /// [`docs::performance`](crate::docs::performance) for the counts.
    #[track_caller]
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.read(f, |var, f| var.with_default(f))
    }

    /// `f` with the binding of this variable in the current context, if it has one: from
    /// the read cache if it holds it (a compare and a load), else by the lookup in the
    /// current snapshot (`engine::lookup_bound`, which fills the cache), else in a
    /// scope's record (`engine::with_bound_scoped`); `miss(self, f)` if there is none (the
    /// caller's default), so that each reader says what a miss returns and `with`
    /// returns `R` itself.
    #[track_caller]
    #[inline(always)]
    fn read<R, F: FnOnce(&T) -> R>(&self, f: F, miss: impl FnOnce(&Self, F) -> R) -> R {
        if const { may_be_inline::<T>() } {
            // A type that could be inline. A variable that stores inline and that the
            // cache serves has its slot (`engine::CacheSlot`); every other one has slot 0,
            // which is never filled: it misses. The miss path keeps inline only what
            // calls nothing (the lookup of an inline value); everything else is a call
            // whose result is the read's, so the read keeps no register across a call and
            // needs no stack frame of its own.
            if let Some(value) = engine::cached::<T>(&self.slot) {
                return f(&value);
            }
            let key = self.lookup_key();
            if engine::has_boxed_slot(key) {
                // A boxed variable with a slot: "unbound" is answered here, a value is
                // lent out of line.
                return match engine::cached_boxed(key) {
                    engine::BoxedSlot::Bound(word) => self.lend_boxed(word, f),
                    engine::BoxedSlot::Unbound => miss(self, f),
                    engine::BoxedSlot::Unknown => self.read_missed(key, f, miss),
                };
            }
            return match engine::lookup_inline::<T>(key) {
                engine::InlineLookup::Value(value) => f(&value),
                engine::InlineLookup::Unbound => miss(self, f),
                engine::InlineLookup::Other => self.read_missed(key, f, miss),
            };
        }
        let key = self.lookup_key();
        // A boxed variable the cache serves has an id in the boxed range.
        if engine::has_boxed_slot(key) {
            return match engine::with_cached_boxed(key, f) {
                engine::CachedBoxed::Value(result) => result,
                engine::CachedBoxed::Unbound(f) => miss(self, f),
                engine::CachedBoxed::Unknown(f) => self.look_up(key, f, miss),
            };
        }
        self.look_up(key, f, miss)
    }

    /// [`read`](Self::read) of a boxed variable of a type that could be inline, whose
    /// boxed slot holds its binding: the lend, out of line, so that the read keeps no
    /// register across the borrow's end.
    #[inline(never)]
    fn lend_boxed<R>(&self, word: engine::BoxedWord, f: impl FnOnce(&T) -> R) -> R {
        engine::lend_boxed(word, f)
    }

    /// [`read`](Self::read) of a type that could be inline, after its slot missed and
    /// [`engine::lookup_inline`] could not finish the read (a boxed binding, no bindings
    /// at all, or a scope's records linked), or after a boxed slot missed: the whole
    /// lookup, out of line like every call on that read's miss path.
    #[track_caller]
    #[inline(never)]
    fn read_missed<R, F: FnOnce(&T) -> R>(
        &self,
        key: u64,
        f: F,
        miss: impl FnOnce(&Self, F) -> R,
    ) -> R {
        self.look_up(key, f, miss)
    }

    /// [`read`](Self::read) without the cache, `key` being the id (or 0). Inlined where it
    /// is called rather than joined after `read`'s branches: a key that `read` picked
    /// from either branch made the first read after a frame switch 5 instructions longer.
    #[track_caller]
    #[inline(always)]
    fn look_up<R, F: FnOnce(&T) -> R>(
        &self,
        key: u64,
        f: F,
        miss: impl FnOnce(&Self, F) -> R,
    ) -> R {
        match engine::lookup_bound(key, f) {
            Ok(result) => result,
            Err(f) => match engine::with_bound_scoped(key, f) {
                Ok(result) => result,
                Err(f) => miss(self, f),
            },
        }
    }

    /// [`with`](Self::with)'s fallback: `f` with the default, or the panic. Out of line,
    /// and returning `R` itself rather than a `Result` (which a caller would receive in
    /// memory): a read that finds its binding then needs no stack frame.
    #[track_caller]
    #[inline(never)]
    fn with_default<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        match self.default_or_error(f) {
            Ok(result) => result,
            Err(error) => error.panic(),
        }
    }

    /// Calls `f` with the current value, or returns a [`LookupError`] if the variable has
    /// no binding in the current context and no default.
    ///
    /// # Cost
    ///
    /// As [`with`](Self::with). The error allocates nothing (it reads a few thread-locals
    /// for its hint).
    #[inline(always)]
    pub fn try_with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, LookupError> {
        self.read(
            |value| Ok(f(value)),
            |var, f| var.apply_default(f).and_then(|result| result),
        )
    }

    /// Calls `f` with the binding in the current context, or with `default` if there is
    /// none (Python's `var.get(default)`: the variable's own default is not consulted).
    ///
    /// # Cost
    ///
    /// As [`with`](Self::with); a lazy default is never computed.
    pub fn with_or<R>(&self, default: &T, f: impl FnOnce(&T) -> R) -> R {
        self.read(f, |_, f| f(default))
    }

    /// Whether the current context binds this variable (defaults do not count).
    ///
    /// # Cost
    ///
    /// The lookup of [`with`](Self::with): no allocation, no atomic read-modify-write, no
    /// default computed.
    pub fn is_set(&self) -> bool {
        self.read(|_| true, |_, _| false)
    }

    /// A clone of the current value.
    ///
    /// # Panics
    ///
    /// If there is no binding and no default; [`try_get`](Self::try_get) returns the
    /// error instead.
    ///
    /// # Cost
    ///
    /// As [`with`](Self::with), plus `T::clone` (which may itself allocate or count a
    /// reference: `with` avoids it).
    #[track_caller]
    #[inline]
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.with(T::clone)
    }

    /// A clone of the current value, or a [`LookupError`].
    ///
    /// # Cost
    ///
    /// As [`try_with`](Self::try_with), plus `T::clone` on success.
    #[inline]
    pub fn try_get(&self) -> Result<T, LookupError>
    where
        T: Clone,
    {
        self.try_with(T::clone)
    }

    /// A clone of the binding in the current context, else `default` (Python's
    /// `var.get(default)`).
    ///
    /// # Cost
    ///
    /// As [`with`](Self::with), plus `T::clone` on a hit. `default` is built by the caller
    /// on every call, hit or miss ([`with_or`](Self::with_or) borrows it instead).
    pub fn get_or(&self, default: T) -> T
    where
        T: Clone,
    {
        self.read(T::clone, |_, _| default)
    }

    /// [`try_with`](Self::try_with), except that a lazy default not computed yet is not
    /// computed (`None`, as for a variable with no value): runs no code of the program's
    /// but `f`, for readers that must not, such as the formatting of an event inside a
    /// panic hook.
    pub(crate) fn with_computed<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.read(
            |value| Some(f(value)),
            |var, f| match &var.default {
                Default::None => None,
                Default::Value(value) => f(value),
                Default::Lazy(_, cell) => cell.get().and_then(f),
            },
        )
    }

    /// Calls `f` with the default, or explains why there is none. Out of line, so that
    /// the hit path of a read (`try_with`) inlines into its caller as a few instructions.
    #[inline(never)]
    fn apply_default<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, LookupError> {
        self.default_or_error(f)
    }

    /// `f` with the variable's own default, or the error: the end of every read's miss.
    #[inline(always)]
    fn default_or_error<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, LookupError> {
        match self.try_default_value()? {
            Some(default) => Ok(f(default)),
            None => Err(LookupError::in_current_context(self.name)),
        }
    }

    // ----- writing -------------------------------------------------------------------

    /// Binds `value` in the current context and returns a [`Token`] that
    /// [`reset`](Self::reset) uses to restore the previous state.
    ///
    /// Earlier copies of the context ([`copy_context`](crate::copy_context)) keep the old
    /// value. Dropping the token keeps the new one.
    ///
    /// # Where a set lives
    ///
    /// In the *current context*, which is a thread's, a task's or a job's:
    ///
    /// * in plain code, the thread's own context, until it is reset or the thread ends;
    /// * inside [`Context::run`](crate::Context::run), that context object;
    /// * in a task wrapped by `in_copied_context` / `contextvars::tokio::spawn`, or under
    ///   the `contextvars_tower` layer, the task's or request's own copy, across every
    ///   `.await`, and never anyone else's;
    /// * in a rayon job or item of `contextvars::rayon`, that job or item.
    ///
    /// A thread that belongs to a pool runs many unrelated units of work in its own
    /// context: a tokio worker or blocking thread polling a *plain* `tokio::spawn`ed task
    /// (every connection task a server spawns is one), a rayon worker running a plain job
    /// or parallel iterator, or a thread declared with
    /// [`thread::declare_pool_thread`](crate::thread::declare_pool_thread). A set there
    /// would be seen by the next unit the thread runs (another request, in a server), so
    /// it is **refused** in every build, whatever the crate's features (a [`SetError`]
    /// for which [`is_pool_thread`](SetError::is_pool_thread) is true; `set` panics with
    /// it, naming the fix for where it happened). Give such work a context of its own
    /// (the forms in the list above).
    ///
    /// # Panics
    ///
    /// If the set is refused (above), or while the thread is being torn down (its
    /// context storage is already gone, e.g. in a thread-local's destructor);
    /// [`try_set`](Self::try_set) returns the [`SetError`] instead.
    ///
    /// # Cost
    ///
    /// One allocation, the value, unless it is stored inline (see
    /// [Inline values](Self#inline-values): then none). It is written in place, with no atomic read-modify-write,
    /// if the frame holds its snapshot alone (as
    /// [`docs::performance`](crate::docs::performance) details), no [`with`](Self::with)
    /// borrow is active, and the variable is bound already or the small form (up to 4
    /// variables) has room. Otherwise O(log₃₂ n) nodes are path-copied (one allocation up
    /// to 4 variables, two per trie level), with a reference-count increment per slot
    /// copied, and a context object another handle holds gets a store in its published
    /// cell (a swap and one read-modify-write, whatever the number of threads).
    /// Amortized: a shared `fetch_add` per 65,536 change markers of the thread (two more
    /// at a variable's first use, for its id). While [`observe`](crate::observe)
    /// publication is on, each set and reset, and each entry into or exit from a context
    /// (a `run`, a poll, a job), also publishes.
    #[track_caller]
    pub fn set(&self, value: T) -> Token<'_, T> {
        // The token is made here, not in `try_set`: a `Result` of a token, matched
        // here, was copied twice on the way out (12 instructions of a set and reset's 567).
        match self.bind(value) {
            Ok(state) => Token::new(self, state),
            Err(refused) => SetError::from_refusal(self.name, refused).panic(),
        }
    }

    /// [`set`](Self::set), returning a [`SetError`] instead of panicking.
    ///
    /// # Cost
    ///
    /// As [`set`](Self::set). A refused set has made the value's binding already (an
    /// allocation, unless the value is stored inline), and drops it.
    pub fn try_set(&self, value: T) -> Result<Token<'_, T>, SetError> {
        let state = self
            .bind(value)
            .map_err(|refused| SetError::from_refusal(self.name, refused))?;
        Ok(Token::new(self, state))
    }

    /// The set itself, for [`set`](Self::set) and [`try_set`](Self::try_set): the entry,
    /// bound in the current frame.
    #[inline(always)]
    fn bind(&self, value: T) -> Result<engine::SetState, engine::SetRefused> {
        let id = self.raw_id();
        engine::set_binding(id, self.make_entry(id, value))
    }

    /// Restores the state from before the [`set`](Self::set) that made `token`: the old
    /// value, or no binding at all if there was none (the default does not count).
    ///
    /// Resets need not be in LIFO order: a stale token restores a stale value, as in
    /// Python. A token can be used once (it is moved in); the errors Python raises for
    /// reuse therefore cannot happen.
    ///
    /// # Errors
    ///
    /// A [`ResetError`] that hands the token back if it was made by a different variable
    /// or in a different [`Context`](crate::Context) than the current one.
    ///
    /// # Cost
    ///
    /// No allocation when the frame holds its snapshot alone and no borrow is active (the
    /// old binding is written back in place; over 4 variables, only if there was one), or
    /// when nothing changed since the set and its token kept the snapshot the set replaced
    /// (it is reinstalled). Otherwise a path copy, as in [`set`](Self::set). Atomic
    /// read-modify-writes: the release of the value the set bound (one decrement; none
    /// for an inline value) and, unless in place, of the snapshot replaced; publication as
    /// in `set`.
    pub fn reset<'v>(&self, token: Token<'v, T>) -> Result<(), ResetError<'v, T>> {
        token.reset_in(self)
    }

    /// Sets `value` until the returned guard is dropped, then resets: Python 3.14's
    /// `with var.set(value):`. The restore also happens on panic.
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// static LEVEL: ContextVar<u8> = contextvars::context_var!(u8, "level", default 0);
    /// {
    ///     let _guard = LEVEL.scoped_set(3);
    ///     assert_eq!(LEVEL.get(), 3);
    /// }
    /// assert_eq!(LEVEL.get(), 0);
    /// ```
    ///
    /// # Panics
    ///
    /// As [`set`](Self::set). Dropping the guard panics if the current context is no
    /// longer the one it was made in (it was moved into another context's `run`); use
    /// [`ScopedSet::reset`] to get that as an error.
    ///
    /// # Cost
    ///
    /// A [`set`](Self::set) now and a [`reset`](Self::reset) when the guard drops; the
    /// guard itself allocates nothing.
    #[track_caller]
    pub fn scoped_set(&self, value: T) -> ScopedSet<'_, T> {
        ScopedSet::new(self.set(value))
    }

    /// [`scoped_set`](Self::scoped_set), returning a [`SetError`] if the set is refused.
    ///
    /// # Cost
    ///
    /// As [`scoped_set`](Self::scoped_set).
    pub fn try_scoped_set(&self, value: T) -> Result<ScopedSet<'_, T>, SetError> {
        self.try_set(value).map(ScopedSet::new)
    }

    /// Runs `f` with `value` set, then restores the previous state (also on panic).
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// static USER: ContextVar<&str> = contextvars::context_var!(&'static str, "user", default "anonymous");
    /// let greeting = USER.scope("ada", || format!("hello {}", USER.get()));
    /// assert_eq!(greeting, "hello ada");
    /// assert_eq!(USER.get(), "anonymous");
    /// ```
    ///
    /// `f` runs synchronously: a closure that *returns a future*
    /// (`VAR.scope(v, || next.run(req))`) gets back a future that is polled after the
    /// scope has ended, without `v`. For a future, use
    /// [`scope_future`](Self::scope_future).
    ///
    /// # Panics
    ///
    /// As [`set`](Self::set) (before `f` runs); [`try_scope`](Self::try_scope) returns
    /// the error instead. Panics of `f` propagate after the value is restored.
    ///
    /// # Cost
    ///
    /// While `f` only reads, nothing but the value itself (one allocation, none for a
    /// value stored inline: see [Inline values](Self#inline-values)): the binding stays
    /// on this call's stack and reads inside `f` find it there, after missing the
    /// snapshot, through one call. No snapshot is changed and no token is made. The
    /// first thing in `f` that is not a read or a scope (a [`set`](Self::set), a copy of
    /// the context, a [`Context::run`](crate::Context::run), a spawned task or thread, a
    /// parallel iterator) first makes the binding a real set, at a [`set`](Self::set)'s
    /// cost, which the scope's end then undoes at a [`reset`](Self::reset)'s. It is also
    /// a real set from the start where someone else can see the current context's
    /// bindings: inside [`Context::run`](crate::Context::run) (the `Context` is a handle
    /// that reads them), while a [`Context::current`](crate::Context::current) handle of
    /// this frame is held, or while [`observe`](crate::observe) is on; and for a scope
    /// nested inside 8 others that kept their bindings on the stack (so a read walks at
    /// most 8 of them).
    ///
    /// The value is dropped when the scope ends (unless a copy of the context took it),
    /// as a reset releases it in Python.
    #[track_caller]
    pub fn scope<R>(&self, value: T, f: impl FnOnce() -> R) -> R {
        match self.try_scope(value, f) {
            Ok(result) => result,
            Err(error) => error.panic(),
        }
    }

    /// The async form of [`scope`](Self::scope): `future`, wrapped to run in a copy of the
    /// current context with `value` bound (tokio's `TASK.scope(value, future)`). The copy
    /// is taken now; every poll runs in it, wherever the future is polled, and sets inside
    /// stay in it. Nothing is set in the caller's context, so this is never refused. If
    /// the future calls `contextvars_tower::ContextLayer`, each request's end gives the
    /// copy back the bindings it started with (as for a task made with
    /// [`in_copied_context`](crate::future::ContextFutureExt::in_copied_context)): a
    /// plain `set` made inside it for one request does not outlive that request.
    ///
    /// ```
    /// use contextvars::ContextVar;
    /// static REQUEST_ID: ContextVar<u64> = contextvars::context_var!(u64, "request_id");
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let id = REQUEST_ID
    ///     .scope_future(7, async {
    ///         tokio::task::yield_now().await;
    ///         REQUEST_ID.get()
    ///     })
    ///     .await;
    /// assert_eq!(id, 7);
    /// assert!(!REQUEST_ID.is_set());
    /// # });
    /// ```
    ///
    /// # Cost
    ///
    /// At the call, the value's allocation (none if it is stored inline) and a path copy
    /// of the current snapshot (one more allocation up to 4 variables; O(log₃₂ n) nodes, two allocations per trie
    /// level, beyond), with a reference-count increment per slot copied; the caller's
    /// context is not changed. Each poll costs what a [`WithContext`] poll costs.
    pub fn scope_future<F: std::future::Future>(&self, value: T, future: F) -> WithContext<F> {
        let id = self.raw_id();
        let entry = self.make_entry(id, value);
        WithContext::in_vars(future, engine::vars().insert(id, entry))
    }

    /// [`scope`](Self::scope), returning a [`SetError`] (without running `f`) if the set
    /// is refused.
    ///
    /// # Cost
    ///
    /// As [`scope`](Self::scope).
    pub fn try_scope<R>(&self, value: T, f: impl FnOnce() -> R) -> Result<R, SetError> {
        // The binding lives on this call's stack while `f` only reads; anything else
        // makes it a real set first, whose token this resets, as `scoped_set`'s guard
        // does (see `engine::scope`). The entry is made once the scope is allowed.
        let id = self.raw_id();
        engine::scope(
            id,
            || self.make_entry(id, value),
            f,
            |state| {
                drop(ScopedSet::new(Token::new(self, state)));
            },
        )
        .map_err(|refused| SetError::from_refusal(self.name, refused))
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for ContextVar<T> {
    /// Python's repr without the address: `<ContextVar name='a' default=123>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<ContextVar name={:?}", self.name)?;
        let default = match &self.default {
            Default::None => None,
            Default::Value(value) => Some(value),
            Default::Lazy(_, cell) => cell.get(),
        };
        if let Some(value) = default {
            f.write_str(" default=")?;
            self.fmt_value(value, f)?;
        }
        f.write_str(">")
    }
}
