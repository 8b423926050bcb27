//! Type-erased bindings: what a snapshot stores for each variable.
//!
//! A snapshot holds values of many types, so each binding is an [`Entry`]: two words,
//! the value (or a pointer to it) and a pointer to a table of functions for its type
//! ([`Vtable`]: clone, drop, print, compare). Entries come in two forms:
//!
//! * **Boxed**: the word is an `Arc<Binding<T>>` in raw form (`Arc::into_raw`), the
//!   binding holding the variable's id, name and traits next to the value; cloning an
//!   entry counts a reference, dropping the last one drops the value. The table is one
//!   constant per type.
//! * **Inline**: the word *is* the value. Only for a variable declared as a `static`
//!   with `context_var!` whose type is `Copy + Eq` and fits a pointer-sized word (on
//!   64-bit targets a `u64`, `bool`, `char` or field-less enum; not a `&'static str`,
//!   which is two words): its sets allocate nothing for the value, cloning an entry
//!   copies two words and dropping one does nothing. The table pointer is tagged (low bit
//!   set) and points at the variable's [`InlineMeta`], which leads to the variable itself
//!   (its name, id and traits): a `static`, so it outlives every entry.
//!
//! Reading a value back as `T` is the unsafe step: [`Entry::downcast_unchecked`] and
//! [`Entry::read_inline`] skip the type check because a variable id is only ever bound by
//! its own `ContextVar<T>` (see the invariant below), and the check would cost a virtual
//! call on the hottest path of the crate. Debug builds still check it.
//!
//! **Invariant (id → type).** Every entry stored under key `k` was created by
//! [`Entry::boxed::<T>`] with `var_id == k` or by [`Entry::inline::<T>`] for the
//! variable whose id is `k`, and the only callers are `ContextVar<T>` with its own id
//! (which is unique and never reused) and its own [`InlineMeta`]. So the entry under `k`
//! always holds a value of the one `T` of that variable.
//!
//! **Invariant (inline → `Copy`).** An inline entry exists only for a type with a
//! [`CopyEq`] proof, which only the compiler can make (for `T: Copy + Eq`; invariant in
//! `T`, so no subtyping carries it to another type): so reading one as a bitwise copy
//! ([`Entry::read_inline`]) runs no code of the program's and holds no reference into the
//! snapshot while the caller's closure runs.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crate::sync::Arc;
use crate::var::ContextVar;

/// How to print and compare values of one variable's type, found by the declaration
/// macro (each `None` where the type lacks the trait).
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct ValueTraits<T> {
    /// `<T as Debug>::fmt`, if `T: Debug`.
    pub debug: Option<fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result>,
    /// `<T as PartialEq>::eq`, if `T: PartialEq`.
    pub eq: Option<fn(&T, &T) -> bool>,
}

impl<T> ValueTraits<T> {
    /// Neither.
    pub const NONE: Self = Self {
        debug: None,
        eq: None,
    };

    /// Prints `value` with its `Debug`, or as `<type name>` without one.
    pub(crate) fn fmt_value(&self, value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.debug {
            Some(debug) => debug(value, f),
            None => write!(f, "<{}>", std::any::type_name::<T>()),
        }
    }
}

/// A proof that `T` is `Copy + Eq`, which only the compiler can make ([`CopyEq::new`]
/// has those bounds), carrying `T`'s `==`: what lets a variable store its values inline
/// (see the module docs). The declaration macro finds it by the inherent-before-trait
/// rule for associated constants (`__private::Probe::COPY_EQ`).
///
/// Invariant in `T` (`fn(T) -> T`): a covariant proof could be turned into one for a
/// supertype that is not `Copy` (a type generic over a higher-ranked `fn` that is `Copy`
/// only at that one type).
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct CopyEq<T> {
    eq: fn(&T, &T) -> bool,
    invariant: PhantomData<fn(T) -> T>,
}

impl<T: Copy + Eq> CopyEq<T> {
    /// The proof, for a type that is `Copy + Eq`.
    pub const fn new() -> Self {
        CopyEq {
            eq: <T as PartialEq>::eq,
            invariant: PhantomData,
        }
    }
}

impl<T: Copy + Eq> Default for CopyEq<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for CopyEq<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for CopyEq<T> {}

/// An entry's value word: a pointer (boxed) or the value's bytes (inline).
type Word = MaybeUninit<*const ()>;

/// Whether a `T` fits an entry's value word (only such values are stored inline).
pub(crate) const fn fits_inline<T>() -> bool {
    size_of::<T>() <= size_of::<Word>() && align_of::<T>() <= align_of::<Word>()
}

/// Whether a variable of type `T` may store its values inline: `T` fits the word and has
/// no drop glue (only a `Copy + Eq` type is stored inline, and a `Copy` type has none;
/// an `Arc` or a `Box` fits but never is). Known at compile time, so a read of any other
/// type skips the inline paths altogether.
pub(crate) const fn may_be_inline<T>() -> bool {
    fits_inline::<T>() && !std::mem::needs_drop::<T>()
}

/// A copy of an entry's value word, as the engine's read cache keeps it (`engine::thread`'s
/// module docs): an inline value's bytes, or a boxed entry's pointer to its binding.
#[derive(Clone, Copy)]
pub(crate) struct CachedWord(Word);

impl CachedWord {
    /// No value: a cache slot holds it only while it is not valid, so it is never read.
    pub(crate) const EMPTY: Self = Self(Word::uninit());

    /// A boxed variable's slot: no binding (a boxed entry's word is never null).
    pub(crate) const UNBOUND: Self = Self(Word::new(std::ptr::null()));

    /// Whether this is [`UNBOUND`](Self::UNBOUND).
    ///
    /// # Safety
    ///
    /// `self` must be initialized: a boxed entry's word ([`Entry::cached_word`]) or
    /// `UNBOUND`, as a valid slot of a boxed variable holds (not `EMPTY`, and not an
    /// inline value's word, whose padding may be uninitialized).
    #[inline(always)]
    pub(crate) unsafe fn is_unbound(self) -> bool {
        // SAFETY: initialized (the caller's guarantee).
        unsafe { self.0.assume_init() }.is_null()
    }

    /// The value of the inline entry this word was copied from, copied out.
    ///
    /// # Safety
    ///
    /// `self` must come from [`Entry::cached_word`] of an inline entry made for a `T`:
    /// then the word holds an initialized `T`, and `T` is `Copy` (the invariant
    /// inline → `Copy`), so the copy runs no code and owns nothing.
    #[inline(always)]
    pub(crate) unsafe fn read<T>(self) -> T {
        debug_assert!(fits_inline::<T>());
        // SAFETY: the word holds an initialized `T`, aligned (`fits_inline`), and a `T`
        // is `Copy` (caller's guarantee).
        unsafe { self.0.as_ptr().cast::<T>().read() }
    }

    /// The value of the boxed entry this word was copied from, in place.
    ///
    /// # Safety
    ///
    /// `self` must come from [`Entry::cached_word`] of a boxed entry made for a `T`, and
    /// that entry (or another that counts a reference to the same binding) must outlive
    /// `'a`.
    #[inline(always)]
    pub(crate) unsafe fn boxed_value<'a, T: 'static>(self) -> &'a T {
        // SAFETY: a boxed entry's word is the pointer `Arc::into_raw` gave for its
        // `Arc<Binding<T>>`, alive while an entry counts it (caller's guarantee).
        unsafe { &(*self.0.assume_init().cast::<Binding<T>>()).value }
    }
}

/// The functions an entry of one type needs: one constant per type for boxed entries,
/// one per type for inline entries (reached through the variable's [`InlineMeta`]).
pub(crate) struct Vtable {
    /// Boxed: counts one more reference. Inline: unused.
    retain: unsafe fn(&Entry),
    /// Boxed: gives up the entry's reference. Inline: unused.
    release: unsafe fn(&Entry),
    var_id: unsafe fn(&Entry) -> u64,
    name: unsafe fn(&Entry) -> &'static str,
    type_name: fn() -> &'static str,
    value_any: unsafe fn(&Entry) -> &dyn Any,
    fmt_value: unsafe fn(&Entry, &mut fmt::Formatter<'_>) -> fmt::Result,
    /// `==` on the values if the type supports it; `None` if it does not (or if `other`
    /// holds another type).
    eq_value: unsafe fn(&Entry, &Entry) -> Option<bool>,
}

/// One boxed binding, with the variable's metadata copied in so that it outlives the
/// variable.
struct Binding<T> {
    var_id: u64,
    name: &'static str,
    traits: fn() -> ValueTraits<T>,
    value: T,
}

impl<T: Send + Sync + 'static> Binding<T> {
    const VTABLE: Vtable = Vtable {
        retain: Self::retain,
        release: Self::release,
        var_id: |entry| {
            // SAFETY: the vtable's own functions are only called on its entries.
            unsafe { Self::of(entry) }.var_id
        },
        name: |entry| {
            // SAFETY: as above.
            unsafe { Self::of(entry) }.name
        },
        type_name: std::any::type_name::<T>,
        value_any: |entry| {
            // SAFETY: as above.
            &unsafe { Self::of(entry) }.value
        },
        fmt_value: |entry, f| {
            // SAFETY: as above.
            let binding = unsafe { Self::of(entry) };
            (binding.traits)().fmt_value(&binding.value, f)
        },
        eq_value: |entry, other| {
            // SAFETY: as above.
            let binding = unsafe { Self::of(entry) };
            eq_with((binding.traits)(), &binding.value, other)
        },
    };

    /// The binding a boxed entry of this type points to.
    ///
    /// # Safety
    ///
    /// `entry` must be a boxed entry made for a `T` ([`Entry::boxed`]).
    #[inline]
    unsafe fn of(entry: &Entry) -> &Self {
        // SAFETY: a boxed entry's word is the pointer `Arc::into_raw` gave for an
        // `Arc<Binding<T>>` (by the caller's guarantee), and the entry owns a strong count,
        // so the binding lives at least as long as `entry`; it is only ever read.
        unsafe { &*entry.word.assume_init().cast::<Self>() }
    }

    /// # Safety
    ///
    /// As [`of`](Self::of).
    unsafe fn retain(entry: &Entry) {
        // SAFETY: the pointer came from `Arc::into_raw` of an `Arc<Binding<T>>` (caller's
        // guarantee) and `entry`'s strong count keeps it alive for the call; the clone
        // that calls this owns the count added here.
        unsafe { Arc::increment_strong_count(entry.word.assume_init().cast::<Self>()) };
    }

    /// # Safety
    ///
    /// As [`of`](Self::of), and `entry` is not used again.
    unsafe fn release(entry: &Entry) {
        // SAFETY: the pointer came from `Arc::into_raw` of an `Arc<Binding<T>>` (caller's
        // guarantee), and `entry` owns one strong count, given up here, once.
        unsafe { drop(Arc::from_raw(entry.word.assume_init().cast::<Self>())) };
    }
}

fn eq_with<T: 'static>(traits: ValueTraits<T>, value: &T, other: &Entry) -> Option<bool> {
    let eq = traits.eq?;
    let other = other.value_any().downcast_ref::<T>()?;
    Some(eq(value, other))
}

/// What a variable that stores its values inline keeps for its entries (see the module
/// docs): an inline entry's tagged table pointer points here, and this leads to the
/// variable itself. Only a `static` uses one: the declaration macro gives the static a
/// reference to itself, and [`ContextVar`] makes an inline entry only if that reference
/// is to itself; its type is `Copy + Eq` and fits the word.
#[repr(C)] // `vtable` first: `Entry::vtable` reads it through an untyped pointer.
pub(crate) struct InlineMeta<T: 'static> {
    vtable: &'static Vtable,
    this: &'static ContextVar<T>,
    proof: CopyEq<T>,
}

impl<T: Send + Sync + 'static> InlineMeta<T> {
    /// The metadata for the variable `this`, or `None` if `T` does not fit the word or
    /// has no `Copy + Eq` proof.
    pub(crate) const fn new(
        this: &'static ContextVar<T>,
        proof: Option<CopyEq<T>>,
    ) -> Option<Self> {
        match proof {
            Some(proof) if fits_inline::<T>() => Some(InlineMeta {
                vtable: const { &Self::VTABLE },
                this,
                proof,
            }),
            _ => None,
        }
    }

    /// The variable this metadata belongs to (if it is `var`, the variable may make
    /// inline entries).
    pub(crate) fn var(&self) -> &'static ContextVar<T> {
        self.this
    }

    const VTABLE: Vtable = Vtable {
        retain: |_| (),
        release: |_| (),
        var_id: |entry| {
            // SAFETY: the vtable's own functions are only called on its entries.
            unsafe { Self::of(entry) }.var().raw_id()
        },
        name: |entry| {
            // SAFETY: as above.
            unsafe { Self::of(entry) }.var().name()
        },
        type_name: std::any::type_name::<T>,
        value_any: |entry| {
            // SAFETY: as above.
            unsafe { entry.inline_ref::<T>() }
        },
        fmt_value: |entry, f| {
            // SAFETY: as above.
            let var = unsafe { Self::of(entry) }.var();
            // SAFETY: as above.
            var.fmt_value(unsafe { entry.inline_ref::<T>() }, f)
        },
        eq_value: |entry, other| {
            // The proof's `==` (the type is `Eq`), whatever the variable's traits say.
            // SAFETY: as above.
            let eq = unsafe { Self::of(entry) }.proof.eq;
            // SAFETY: as above.
            let value = unsafe { entry.inline_ref::<T>() };
            let other = other.value_any().downcast_ref::<T>()?;
            Some(eq(value, other))
        },
    };

    /// The metadata an inline entry of this type points to.
    ///
    /// # Safety
    ///
    /// `entry` must be an inline entry made for a `T` ([`Entry::inline`]).
    unsafe fn of(entry: &Entry) -> &'static Self {
        // SAFETY: an inline entry's untagged pointer came from a `&'static InlineMeta<T>`
        // (by the caller's guarantee), whose provenance it kept.
        unsafe { &*entry.meta_ptr().cast::<Self>() }
    }
}

/// A variable's binding in a snapshot: its id, name and value.
///
/// Yielded by [`Snapshot::iter`](crate::Snapshot::iter) and a snapshot's owning iterator
/// (`for entry in ctx.snapshot()`). Cloning an entry counts one reference (or, for a
/// small `Copy` value of a `static` variable, copies two words); the value itself is
/// never cloned.
pub struct Entry {
    /// Boxed: what `Arc::into_raw` gave for the binding's `Arc<Binding<T>>`; the entry owns
    /// that one strong count. Inline: the value's bytes (a `T: Copy`).
    word: Word,
    /// Boxed: the type's [`Vtable`]. Inline: the variable's [`InlineMeta`], tagged with
    /// the low bit ([`INLINE`]).
    meta: NonNull<()>,
}

/// The tag of an inline entry's `meta` pointer. `Vtable` and `InlineMeta` start with a
/// pointer, so the low bit of their addresses is always clear.
const INLINE: usize = 1;

// An entry is a `T: Send + Sync` (inline) or an `Arc` of a `Binding<T>` with
// `T: Send + Sync` (boxed), and `'static` pointers to tables of functions and to
// `Sync` metadata: `Send + Sync` either way.
// SAFETY: see above.
unsafe impl Send for Entry {}
// SAFETY: as above.
unsafe impl Sync for Entry {}

impl Entry {
    /// A boxed entry: one allocation.
    pub(crate) fn boxed<T: Send + Sync + 'static>(
        var_id: u64,
        name: &'static str,
        traits: fn() -> ValueTraits<T>,
        value: T,
    ) -> Self {
        let arc = Arc::new(Binding {
            var_id,
            name,
            traits,
            value,
        });
        let vtable: &'static Vtable = const { &Binding::<T>::VTABLE };
        Entry {
            word: MaybeUninit::new(Arc::into_raw(arc).cast::<()>()),
            meta: NonNull::from(vtable).cast(),
        }
    }

    /// An inline entry of the variable `meta` belongs to: no allocation.
    pub(crate) fn inline<T: Send + Sync + 'static>(meta: &'static InlineMeta<T>, value: T) -> Self {
        let mut word = Word::uninit();
        // `InlineMeta::new` checked that a `T` fits the word.
        assert!(fits_inline::<T>());
        // SAFETY: the word has room for a `T`, aligned (checked above).
        unsafe { word.as_mut_ptr().cast::<T>().write(value) };
        let meta = NonNull::from(meta)
            .cast::<()>()
            .map_addr(|addr| addr | INLINE);
        Entry { word, meta }
    }

    /// Whether the value is stored inline (see the module docs).
    #[inline(always)]
    pub(crate) fn is_inline(&self) -> bool {
        self.meta.addr().get() & INLINE != 0
    }

    /// A copy of the value word, for the read cache: the value of an inline entry, the
    /// binding's address for a boxed one ([`is_inline`](Self::is_inline) tells which).
    #[inline(always)]
    pub(crate) fn cached_word(&self) -> CachedWord {
        CachedWord(self.word)
    }

    /// The untagged `meta` pointer.
    #[inline]
    fn meta_ptr(&self) -> *const () {
        self.meta
            .as_ptr()
            .cast_const()
            .map_addr(|addr| addr & !INLINE)
    }

    /// The entry's functions.
    #[inline]
    fn vtable(&self) -> &'static Vtable {
        if self.is_inline() {
            // SAFETY: an inline entry's untagged pointer came from a `&'static
            // InlineMeta<T>`, whose first field is its `&'static Vtable`; the pointer
            // kept the metadata's provenance.
            unsafe { *self.meta_ptr().cast::<&'static Vtable>() }
        } else {
            // SAFETY: a boxed entry's pointer came from a `&'static Vtable`.
            unsafe { &*self.meta_ptr().cast::<Vtable>() }
        }
    }

    /// The value of an inline entry, in place.
    ///
    /// # Safety
    ///
    /// `self` must be an inline entry made for a `T`.
    #[inline]
    unsafe fn inline_ref<T>(&self) -> &T {
        // SAFETY: an inline entry made for a `T` holds an initialized `T` in its word
        // (caller's guarantee).
        unsafe { &*self.word.as_ptr().cast::<T>() }
    }

    /// A copy of the value of an inline entry.
    ///
    /// # Safety
    ///
    /// `self` must be an inline entry ([`is_inline`](Self::is_inline)) made for a `T`:
    /// then `T` is `Copy` (the invariant inline → `Copy`), so the copy runs no code and
    /// owns nothing.
    #[inline(always)]
    pub(crate) unsafe fn read_inline<T: 'static>(&self) -> T {
        debug_assert!(self.is_inline() && self.value_any().is::<T>());
        // SAFETY: an inline entry made for a `T` (caller's guarantee).
        unsafe { self.cached_word().read::<T>() }
    }

    /// The value of an entry that is not inline, as a `T`, without checking the type.
    ///
    /// # Safety
    ///
    /// `self` must be boxed (not [`is_inline`](Self::is_inline)), and `T` the type it was
    /// created with (as for [`downcast_unchecked`](Self::downcast_unchecked)).
    #[inline(always)]
    pub(crate) unsafe fn downcast_boxed_unchecked<T: 'static>(&self) -> &T {
        debug_assert!(!self.is_inline() && self.value_any().is::<T>());
        // SAFETY: a boxed entry made for a `T` (caller's guarantee), which counts a
        // reference to its binding for as long as the borrow of `self` lasts.
        unsafe { self.cached_word().boxed_value::<T>() }
    }

    /// The value as a `T`, without checking the type.
    ///
    /// # Safety
    ///
    /// `T` must be the type this entry was created with. The module invariant (id → type)
    /// guarantees it for an entry found under the id of a `ContextVar<T>`.
    #[inline]
    pub(crate) unsafe fn downcast_unchecked<T: 'static>(&self) -> &T {
        debug_assert!(self.value_any().is::<T>(), "id → type invariant broken");
        if self.is_inline() {
            // SAFETY: an inline entry made for a `T` (caller's guarantee).
            unsafe { self.inline_ref::<T>() }
        } else {
            // SAFETY: a boxed entry made for a `T` (caller's guarantee).
            unsafe { self.downcast_boxed_unchecked::<T>() }
        }
    }

    /// The id of the variable this binding belongs to.
    pub fn var_id(&self) -> crate::VarId {
        // SAFETY: the vtable's functions are called on entries of its own type.
        crate::VarId(unsafe { (self.vtable().var_id)(self) })
    }

    /// The name the variable was declared with.
    pub fn name(&self) -> &'static str {
        // SAFETY: as above.
        unsafe { (self.vtable().name)(self) }
    }

    /// The Rust type name of the value (from [`std::any::type_name`]).
    pub fn type_name(&self) -> &'static str {
        (self.vtable().type_name)()
    }

    /// The value, if `var` is the variable this entry belongs to.
    pub fn get<'a, T: Send + Sync + 'static>(
        &'a self,
        var: &crate::ContextVar<T>,
    ) -> Option<&'a T> {
        if var.existing_id() == Some(self.var_id().0) {
            // SAFETY: the entry belongs to `var`, a `ContextVar<T>` (id → type invariant).
            Some(unsafe { self.downcast_unchecked::<T>() })
        } else {
            None
        }
    }

    /// The value as `&dyn Any`, for callers that know the type but not the variable.
    pub fn value_any(&self) -> &dyn Any {
        // SAFETY: the vtable's functions are called on entries of its own type.
        unsafe { (self.vtable().value_any)(self) }
    }

    /// Whether both entries hold the very same boxed value object (one `set` made both).
    /// Inline values have no identity: they compare with `==` (their type is `Eq`).
    pub(crate) fn same_value(&self, other: &Entry) -> bool {
        !self.is_inline()
            && !other.is_inline()
            && std::ptr::addr_eq(
                // SAFETY: a boxed entry's word is an initialized pointer.
                unsafe { self.word.assume_init() },
                // SAFETY: as above.
                unsafe { other.word.assume_init() },
            )
    }

    /// The equality used by [`Context`](crate::Context)'s `==`: the same value object, or
    /// `==` on the values when the variable's type has `PartialEq` (see the crate docs).
    pub(crate) fn value_eq(&self, other: &Entry) -> bool {
        // SAFETY: the vtable's functions are called on entries of its own type.
        self.same_value(other) || unsafe { (self.vtable().eq_value)(self, other) }.unwrap_or(false)
    }

    /// A `Debug` view of the value alone.
    pub fn value_debug(&self) -> impl fmt::Debug + '_ {
        ValueDebug(self)
    }

    fn fmt_value(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: the vtable's functions are called on entries of its own type.
        unsafe { (self.vtable().fmt_value)(self, f) }
    }
}

impl Clone for Entry {
    /// One strong-count increment (boxed), or a copy of two words (inline).
    #[inline]
    fn clone(&self) -> Self {
        if !self.is_inline() {
            // SAFETY: a boxed entry's own vtable; the new entry owns the count added.
            unsafe { (self.vtable().retain)(self) };
        }
        Entry {
            word: self.word,
            meta: self.meta,
        }
    }
}

impl Drop for Entry {
    /// Releases a boxed entry's strong count (the last one drops the binding and its
    /// value); an inline entry owns nothing.
    #[inline]
    fn drop(&mut self) {
        if !self.is_inline() {
            // SAFETY: a boxed entry's own vtable; `self` is not used again.
            unsafe { (self.vtable().release)(self) };
        }
    }
}

struct ValueDebug<'a>(&'a Entry);

impl fmt::Debug for ValueDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_value(f)
    }
}

impl fmt::Debug for Entry {
    /// `name: value`, with the value printed by its `Debug` when the variable was declared
    /// with [`context_var!`](crate::context_var) (or as `<type name>` otherwise).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name())?;
        self.fmt_value(f)
    }
}
