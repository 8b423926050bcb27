//! Type-erased bindings: what a snapshot stores for each variable.
//!
//! A snapshot holds values of many types, so each binding is an `Arc<dyn ErasedBinding>`
//! that remembers the variable's id and name and how to format and compare the value.
//! An [`Entry`] holds that `Arc` in raw form (`Arc::into_raw`), so that reading the value
//! is a pointer cast; cloning and dropping an entry go back through `Arc`'s own
//! `increment_strong_count` and `from_raw`. Reading a value back as `T` is the other
//! unsafe step: [`Entry::downcast_unchecked`] skips the `TypeId` check because a variable
//! id is only ever bound by its own `ContextVar<T>` (see the invariant below), and the
//! check would cost a virtual call on the hottest path of the crate. Debug builds still
//! check it.
//!
//! **Invariant (id → type).** Every binding stored under key `k` was created by
//! [`Entry::new::<T>`] with `var_id == k`, and the only caller that passes `var_id` is
//! `ContextVar<T>` with its own id, which is unique and never reused. So the binding
//! under `k` is always a `Binding<T>` for the one `T` of that variable.

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;

use crate::sync::{Arc, arc_dyn};

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
}

/// One binding, with the variable's metadata copied in so that it outlives the variable.
struct Binding<T> {
    var_id: u64,
    name: &'static str,
    traits: fn() -> ValueTraits<T>,
    value: T,
}

/// The object-safe face of a `Binding<T>`.
trait ErasedBinding: Send + Sync + 'static {
    fn var_id(&self) -> u64;
    fn name(&self) -> &'static str;
    fn type_name(&self) -> &'static str;
    fn fmt_value(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    /// `==` on the values if the variable's type supports it; `None` if it does not.
    fn eq_value(&self, other: &dyn ErasedBinding) -> Option<bool>;
    fn value_any(&self) -> &dyn Any;
}

impl<T: Send + Sync + 'static> ErasedBinding for Binding<T> {
    fn var_id(&self) -> u64 {
        self.var_id
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn fmt_value(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.traits)().debug {
            Some(debug) => debug(&self.value, f),
            None => write!(f, "<{}>", std::any::type_name::<T>()),
        }
    }
    fn eq_value(&self, other: &dyn ErasedBinding) -> Option<bool> {
        let eq = (self.traits)().eq?;
        let other = other.value_any().downcast_ref::<T>()?;
        Some(eq(&self.value, other))
    }
    fn value_any(&self) -> &dyn Any {
        &self.value
    }
}

/// A variable's binding in a snapshot: its id, name and value.
///
/// Yielded by [`Snapshot::iter`](crate::Snapshot::iter) and a snapshot's owning iterator
/// (`for entry in ctx.snapshot()`). Cloning an entry is one reference-count
/// increment; the value itself is shared, never copied.
pub struct Entry {
    /// What `Arc::into_raw` gave for the binding's `Arc`; the entry owns that one strong
    /// count. Kept raw rather than as the `Arc` for the read path: `Arc::as_ptr` of an
    /// `Arc<dyn _>` finds the value by rounding the header size up to the alignment it
    /// loads from the vtable, on every read, while the raw pointer already points at the
    /// binding ([`Entry::downcast_unchecked`] is a cast).
    raw: NonNull<dyn ErasedBinding>,
}

// The `Arc` an entry stands for must be `Send + Sync` for the two impls below to hold;
// this stops compiling if it ever is not.
const _: () = {
    const fn send_sync<T: Send + Sync + ?Sized>() {}
    send_sync::<Arc<dyn ErasedBinding>>();
};

// SAFETY: an `Entry` is an `Arc<dyn ErasedBinding>` in raw form, and `ErasedBinding` is
// `Send + Sync`, so the `Arc` it stands for is `Send + Sync` (checked above).
unsafe impl Send for Entry {}
// SAFETY: as above.
unsafe impl Sync for Entry {}

impl Entry {
    pub(crate) fn new<T: Send + Sync + 'static>(
        var_id: u64,
        name: &'static str,
        traits: fn() -> ValueTraits<T>,
        value: T,
    ) -> Self {
        let arc: Arc<dyn ErasedBinding> = arc_dyn!(Binding {
            var_id,
            name,
            traits,
            value,
        });
        let raw = Arc::into_raw(arc).cast_mut();
        // `Arc::into_raw` never gives a null pointer.
        let raw = NonNull::new(raw).expect("Arc::into_raw is never null");
        Entry { raw }
    }

    /// The binding, for the methods that go through its vtable.
    #[inline]
    fn binding(&self) -> &dyn ErasedBinding {
        // SAFETY: `raw` came from `Arc::into_raw` and this entry owns a strong count, so
        // the binding lives at least as long as `self`; it is only ever read.
        unsafe { self.raw.as_ref() }
    }

    /// The value as a `T`, without checking the type.
    ///
    /// # Safety
    ///
    /// `T` must be the type this entry was created with by [`Entry::new`]. The module
    /// invariant (id → type) guarantees it for an entry found under the id of a
    /// `ContextVar<T>`.
    #[inline]
    pub(crate) unsafe fn downcast_unchecked<T: 'static>(&self) -> &T {
        debug_assert!(
            self.binding().value_any().is::<T>(),
            "id → type invariant broken"
        );
        // SAFETY: by the caller's guarantee the pointee is a `Binding<T>`, so dropping the
        // fat pointer's metadata leaves a pointer to that binding; it is alive for as long
        // as `self` (which owns a strong count).
        unsafe { &(*self.raw.as_ptr().cast::<Binding<T>>()).value }
    }

    /// The id of the variable this binding belongs to.
    pub fn var_id(&self) -> crate::VarId {
        crate::VarId(self.binding().var_id())
    }

    /// The name the variable was declared with.
    pub fn name(&self) -> &'static str {
        self.binding().name()
    }

    /// The Rust type name of the value (from [`std::any::type_name`]).
    pub fn type_name(&self) -> &'static str {
        self.binding().type_name()
    }

    /// The value, if `var` is the variable this entry belongs to.
    pub fn get<'a, T: Send + Sync + 'static>(
        &'a self,
        var: &crate::ContextVar<T>,
    ) -> Option<&'a T> {
        if var.existing_id() == Some(self.binding().var_id()) {
            // SAFETY: the entry belongs to `var`, a `ContextVar<T>` (id → type invariant).
            Some(unsafe { self.downcast_unchecked::<T>() })
        } else {
            None
        }
    }

    /// The value as `&dyn Any`, for callers that know the type but not the variable.
    pub fn value_any(&self) -> &dyn Any {
        self.binding().value_any()
    }

    /// Whether both entries hold the very same value object (one `set` made both).
    pub(crate) fn same_value(&self, other: &Entry) -> bool {
        std::ptr::addr_eq(self.raw.as_ptr(), other.raw.as_ptr())
    }

    /// The equality used by [`Context`](crate::Context)'s `==`: the same value object, or
    /// `==` on the values when the variable's type has `PartialEq` (see the crate docs).
    pub(crate) fn value_eq(&self, other: &Entry) -> bool {
        self.same_value(other) || self.binding().eq_value(other.binding()).unwrap_or(false)
    }

    /// A `Debug` view of the value alone.
    pub fn value_debug(&self) -> impl fmt::Debug + '_ {
        ValueDebug(self)
    }
}

impl Clone for Entry {
    /// One strong-count increment.
    #[inline]
    fn clone(&self) -> Self {
        // SAFETY: `raw` came from `Arc::into_raw` and this entry's strong count keeps the
        // `Arc` alive for the call; the new entry owns the count added here.
        unsafe { Arc::increment_strong_count(self.raw.as_ptr().cast_const()) };
        Entry { raw: self.raw }
    }
}

impl Drop for Entry {
    /// Releases the entry's strong count; the last one drops the binding and its value.
    fn drop(&mut self) {
        // SAFETY: `raw` came from `Arc::into_raw` and this entry owns one strong count,
        // which it gives up here, once (`self` is not used again).
        unsafe { drop(Arc::from_raw(self.raw.as_ptr().cast_const())) };
    }
}

struct ValueDebug<'a>(&'a Entry);

impl fmt::Debug for ValueDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.binding().fmt_value(f)
    }
}

impl fmt::Debug for Entry {
    /// `name: value`, with the value printed by its `Debug` when the variable was declared
    /// with [`context_var!`](crate::context_var) (or as `<type name>` otherwise).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name())?;
        self.binding().fmt_value(f)
    }
}
