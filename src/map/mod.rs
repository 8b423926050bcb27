//! TEMPORARY stub of the persistent map (sorted vector, copy on write); replaced by the
//! real HAMT.
#![deny(unsafe_code)]
use crate::sync::Arc;

pub(crate) struct Node<V> {
    entries: Vec<(u64, V)>,
}
impl<V> Node<V> {
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.entries.binary_search_by_key(&key, |e| e.0).ok().map(|i| &self.entries[i].1)
    }
}
pub(crate) struct Map<V> {
    root: Option<Arc<Node<V>>>,
}
impl<V> Clone for Map<V> {
    fn clone(&self) -> Self {
        Self { root: self.root.clone() }
    }
}
impl<V> Default for Map<V> {
    fn default() -> Self {
        Self::new()
    }
}
pub(crate) struct Iter<'a, V> {
    inner: std::slice::Iter<'a, (u64, V)>,
}
impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (u64, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (*k, v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
impl<V> ExactSizeIterator for Iter<'_, V> {}
impl<V> Map<V> {
    pub(crate) const fn new() -> Self {
        Self { root: None }
    }
    pub(crate) fn from_arc(root: Option<Arc<Node<V>>>) -> Self {
        Self { root }
    }
    pub(crate) fn into_arc(self) -> Option<Arc<Node<V>>> {
        self.root
    }
    pub(crate) fn len(&self) -> usize {
        self.root.as_ref().map_or(0, |n| n.entries.len())
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.root.as_ref()?.get(key)
    }
    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }
    pub(crate) fn iter(&self) -> Iter<'_, V> {
        Iter { inner: self.root.as_ref().map_or(&[][..], |n| &n.entries[..]).iter() }
    }
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.root, &other.root) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    pub(crate) fn root_ptr(&self) -> *const Node<V> {
        self.root.as_ref().map_or(std::ptr::null(), Arc::as_ptr)
    }
    pub(crate) fn eq_by(&self, other: &Self, mut eq: impl FnMut(&V, &V) -> bool) -> bool {
        self.ptr_eq(other)
            || (self.len() == other.len()
                && self.iter().all(|(k, v)| other.get(k).is_some_and(|w| eq(v, w))))
    }
}
impl<V: Clone> Map<V> {
    pub(crate) fn insert(&self, key: u64, value: V) -> Self {
        let mut entries = self.root.as_ref().map_or_else(Vec::new, |n| n.entries.clone());
        match entries.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => entries[i].1 = value,
            Err(i) => entries.insert(i, (key, value)),
        }
        Self { root: Some(Arc::new(Node { entries })) }
    }
    pub(crate) fn remove(&self, key: u64) -> Option<Self> {
        let node = self.root.as_ref()?;
        let i = node.entries.binary_search_by_key(&key, |e| e.0).ok()?;
        let mut entries = node.entries.clone();
        entries.remove(i);
        Some(if entries.is_empty() { Self::new() } else { Self { root: Some(Arc::new(Node { entries })) } })
    }
}
