//! `Snapshot`: an immutable view of a context's bindings, and its iterators.

#![deny(unsafe_code)]

use std::fmt;

use crate::engine::Vars;
use crate::value::Entry;
use crate::var::{ContextVar, VarId};

/// An immutable set of bindings: what a [`Context`](crate::Context) holds at one moment.
///
/// Cloning is O(1) and no later [`set`](ContextVar::set) changes a snapshot, so it can
/// be kept, compared, printed and iterated at leisure, from any thread. Borrowing reads
/// ([`get`](Self::get), [`iter`](Self::iter)) return references into it.
///
/// ```
/// use contextvars::{Context, context_var};
/// context_var! { static TENANT: String; }
/// let ctx = Context::new().with_value(&TENANT, "acme".to_string());
/// let snapshot = ctx.snapshot();
/// assert_eq!(snapshot.get(&TENANT).map(String::as_str), Some("acme"));
/// assert_eq!(format!("{snapshot:?}"), r#"{TENANT: "acme"}"#);
/// ```
#[derive(Clone)]
pub struct Snapshot {
    vars: Vars,
}

impl Snapshot {
    pub(crate) fn new(vars: Vars) -> Self {
        Self { vars }
    }

    /// The bindings.
    pub(crate) fn vars(&self) -> &Vars {
        &self.vars
    }

    /// The number of bindings.
    ///
    /// # Cost
    ///
    /// O(1): the length is stored in the snapshot's root node.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// `var`'s binding, ignoring the variable's default.
    ///
    /// # Cost
    ///
    /// A relaxed load of the variable's id, a bounded lookup (one node up to 4 variables,
    /// else O(log₃₂ n) trie levels, at most 13) and a check of the entry's id through its
    /// table of functions. No allocation, no atomic read-modify-write.
    pub fn get<T: Send + Sync + 'static>(&self, var: &ContextVar<T>) -> Option<&T> {
        self.vars.get(var.existing_id()?)?.get(var)
    }

    /// Whether `var` is bound.
    ///
    /// # Cost
    ///
    /// As [`get`](Self::get).
    pub fn contains<T: Send + Sync + 'static>(&self, var: &ContextVar<T>) -> bool {
        var.existing_id()
            .is_some_and(|id| self.vars.contains_key(id))
    }

    /// The bindings, in the snapshot's own order (the trie's, stable for one snapshot;
    /// not the order of the sets).
    ///
    /// # Cost
    ///
    /// No allocation and no atomic read-modify-write: the iterator walks the trie with a
    /// fixed stack of 13 levels, O(n) in all. The owning iterator (`for entry in
    /// snapshot`) instead collects the entries first (see its `into_iter`).
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.vars.iter(),
        }
    }

    /// The bound variables' ids.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = VarId> + '_ {
        self.iter().map(Entry::var_id)
    }

    /// The bound values, as entries' value views (`Debug`, downcast).
    pub fn values(&self) -> impl ExactSizeIterator<Item = ValueRef<'_>> + '_ {
        self.iter().map(|entry| ValueRef { entry })
    }

    /// Whether both snapshots are the same object (then they are certainly equal).
    pub fn ptr_eq(&self, other: &Snapshot) -> bool {
        self.vars.ptr_eq(&other.vars)
    }
}

impl PartialEq for Snapshot {
    /// The same bindings with equal values (see [`Context`](crate::Context)'s equality).
    ///
    /// # Cost
    ///
    /// O(1) if both are the same snapshot or their lengths differ; otherwise each binding
    /// is looked up in `other` and compared (identity first, then the type's `==`):
    /// O(n log₃₂ n), with no allocation or atomic read-modify-write but the values' `==`.
    fn eq(&self, other: &Self) -> bool {
        self.vars.eq_by(&other.vars, Entry::value_eq)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for entry in self {
            map.key(&format_args!("{}", entry.name()));
            map.value(&entry.value_debug());
        }
        map.finish()
    }
}

impl<'a> IntoIterator for &'a Snapshot {
    type Item = &'a Entry;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Snapshot {
    type Item = Entry;
    type IntoIter = IntoIter;
    /// Collects the entries (one reference-count increment each) into a `Vec` (one
    /// allocation), so the iterator owns what it yields.
    fn into_iter(self) -> IntoIter {
        IntoIter {
            inner: self.iter().cloned().collect::<Vec<_>>().into_iter(),
        }
    }
}

/// Borrowing iterator over a [`Snapshot`]'s entries.
pub struct Iter<'a> {
    inner: crate::map::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Entry;
    fn next(&mut self) -> Option<&'a Entry> {
        self.inner.next().map(|(_, entry)| entry)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.len())
            .finish()
    }
}

/// Owning iterator over a snapshot's entries (`for entry in ctx.snapshot()`).
#[derive(Debug)]
pub struct IntoIter {
    inner: std::vec::IntoIter<Entry>,
}

impl Iterator for IntoIter {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        self.inner.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for IntoIter {}

/// A bound value seen without its variable: printable, and downcastable by type.
#[derive(Clone, Copy)]
pub struct ValueRef<'a> {
    entry: &'a Entry,
}

impl<'a> ValueRef<'a> {
    /// The value, if it is a `T`.
    pub fn downcast_ref<T: 'static>(self) -> Option<&'a T> {
        self.entry.value_any().downcast_ref()
    }

    /// The entry (variable and value) this value belongs to.
    pub fn entry(self) -> &'a Entry {
        self.entry
    }
}

impl fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.entry.value_debug(), f)
    }
}
