//! Type-erased bindings: what a snapshot stores for each variable.
//!
//! A snapshot holds values of many types, so each binding is an `Arc<dyn ErasedBinding>`
//! that remembers the variable's id and name and how to format and compare the value.
//! Reading a value back as `T` is the one unsafe step in this module:
//! [`Entry::downcast_unchecked`] skips the `TypeId` check because a variable id is only
//! ever bound by its own `ContextVar<T>` (see the invariant below), and the check would
//! cost a virtual call on the hottest path of the crate. Debug builds still check it.
//!
//! **Invariant (id → type).** Every binding stored under key `k` was created by
//! [`Entry::new::<T>`] with `var_id == k`, and the only caller that passes `var_id` is
//! `ContextVar<T>` with its own id, which is unique and never reused. So the binding
//! under `k` is always a `Binding<T>` for the one `T` of that variable.

use std::any::Any;
use std::fmt;

use crate::sync::{Arc, arc_dyn};

/// How to print and compare values of one variable's type, found by the declaration
/// macro (or absent for [`ContextVar::new`](crate::ContextVar::new)).
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
/// Yielded by [`Snapshot::iter`](crate::Snapshot::iter) and
/// [`Context::iter`](crate::Context::iter). Cloning an entry is one reference-count
/// increment; the value itself is shared, never copied.
#[derive(Clone)]
pub struct Entry(Arc<dyn ErasedBinding>);

impl Entry {
    pub(crate) fn new<T: Send + Sync + 'static>(
        var_id: u64,
        name: &'static str,
        traits: fn() -> ValueTraits<T>,
        value: T,
    ) -> Self {
        Entry(arc_dyn!(Binding {
            var_id,
            name,
            traits,
            value,
        }))
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
        debug_assert!(self.0.value_any().is::<T>(), "id → type invariant broken");
        let erased: *const dyn ErasedBinding = Arc::as_ptr(&self.0);
        // SAFETY: by the caller's guarantee the pointee is a `Binding<T>`, so casting the
        // fat pointer to a thin `*const Binding<T>` points at that binding; it is alive for
        // as long as `self` (the `Arc` keeps it).
        unsafe { &(*(erased as *const Binding<T>)).value }
    }

    /// The id of the variable this binding belongs to.
    pub fn var_id(&self) -> crate::VarId {
        crate::VarId(self.0.var_id())
    }

    /// The name the variable was declared with.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The Rust type name of the value (from [`std::any::type_name`]).
    pub fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    /// The value, if `var` is the variable this entry belongs to.
    pub fn get<'a, T: Send + Sync + 'static>(
        &'a self,
        var: &crate::ContextVar<T>,
    ) -> Option<&'a T> {
        if var.existing_id() == Some(self.0.var_id()) {
            // SAFETY: the entry belongs to `var`, a `ContextVar<T>` (id → type invariant).
            Some(unsafe { self.downcast_unchecked::<T>() })
        } else {
            None
        }
    }

    /// The value as `&dyn Any`, for callers that know the type but not the variable.
    pub fn value_any(&self) -> &dyn Any {
        self.0.value_any()
    }

    /// Whether both entries hold the very same value object (one `set` made both).
    pub(crate) fn same_value(&self, other: &Entry) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The equality used by [`Context`](crate::Context)'s `==`: the same value object, or
    /// `==` on the values when the variable's type has `PartialEq` (see the crate docs).
    pub(crate) fn value_eq(&self, other: &Entry) -> bool {
        self.same_value(other) || self.0.eq_value(&*other.0).unwrap_or(false)
    }

    /// A `Debug` view of the value alone.
    pub fn value_debug(&self) -> impl fmt::Debug + '_ {
        ValueDebug(self)
    }
}

struct ValueDebug<'a>(&'a Entry);

impl fmt::Debug for ValueDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.0.fmt_value(f)
    }
}

impl fmt::Debug for Entry {
    /// `name: value`, with the value printed by its `Debug` when the variable was declared
    /// with [`context_var!`](crate::context_var) (or as `<type name>` otherwise).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name())?;
        self.0.fmt_value(f)
    }
}
