#![deny(unsafe_code)]
//! The persistent (immutable, path-copying) map from context-variable ids to values.
//!
//! Every context snapshot is a [`Map`]; `ContextVar::get` is a lookup in one, `set` builds
//! a new version that shares everything but one root-to-leaf path with the old one, and a
//! snapshot is taken by cloning the root `Arc`. Keys are `u64` ids handed out sequentially
//! from 1, so the key is its own perfect hash: no hashing, no collision handling. The map
//! is nevertheless correct for any `u64` keys; non-sequential keys only make it deeper.
//!
//! **Small form.** Most contexts hold a handful of variables, so a map with at most
//! [`SMALL_MAX`] (4) entries is one node with no children: the keys in ascending order in
//! a 4-word array and the values beside them, stored inline in the same allocation as the
//! `Arc` counts. The key array's unused tail repeats its first key, so a lookup compares
//! the wanted key with all four words in turn, with no length test and no bitmap: a
//! present key is found at its first occurrence, an absent one matches none. Why 4 and not
//! more: every root node, of either form, is as large as the small form (the two share one
//! type), and a request's context lives as long as the request: the node is 128 bytes
//! with its counts (a 64-byte position table and a bitmap made it 200 before). A one-level
//! trie (up to 32 sequential ids) reads as fast as the small form, within the noise of
//! `benches/ops.rs`' `get` rows.
//!
//! **Large form.** Otherwise the map is a 32-way hash array mapped trie (HAMT) over the raw
//! key: level `L` is indexed by bits `5L .. 5L + 5`, low bits first, so sequential ids fill
//! the root before anything goes deeper. A [`Branch`] has a `u32` bitmap, one compact
//! slot per set bit, each slot either an entry or a child branch, and a 32-byte position
//! table (the popcount of each bit's prefix, precomputed: baseline x86-64 has no `popcnt`
//! instruction, and the software fallback costs about a nanosecond). Two keys
//! meet in a slot only while they share all the bits consumed so far, and distinct keys
//! differ somewhere in 64 bits, so the depth is at most [`MAX_DEPTH`] (13) levels; lookups
//! are a loop of at most 13 steps of position load and key compare, with no bitmap test
//! (an absent key ends at a key that differs; about two levels for a
//! thousand sequential ids), and iterators walk the trie with
//! a fixed `[_; 13]` stack. The shape is canonical: an entry sits at the shallowest level
//! where no other key shares its bits, child branches always hold at least two keys (a
//! removal that leaves one entry pulls it up, an empty child disappears), and a trie that
//! shrinks back to [`SMALL_MAX`] entries becomes a small node again. Equal key sets
//! therefore have equal shapes and iterate in the same order.
//!
//! **Cost model.** `get` is wait-free: bounded steps, no allocation, no atomic operation.
//! `clone` is one `Arc` increment. `insert` and `remove` copy the nodes on the path from
//! the root to the key and nothing else: one allocation for a small-form node (by far the
//! common case), two for a branch (its `Arc` and its compact slot array: loom's `Arc`
//! cannot hold an unsized `[Slot]`, and a fixed 32-slot array would waste most of each
//! sparse deep node), plus one clone per slot of each copied node (a `V::clone` for an
//! entry, an `Arc` increment for a child). A `remove` of an absent key allocates nothing.
//! Form changes (a fifth entry, shrinking back) rebuild at most `SMALL_MAX + 1` entries.
//!
//! **In place.** [`Map::insert_in_place`] and [`Map::remove_in_place`] change a map whose
//! root node nobody else holds (`crate::sync::unique_mut`: a strong count of 1; nodes
//! never have `Weak` references) without copying: for the small form any change that
//! keeps it small, for the trie replacing a present key's value through branches that are
//! also unshared. They refuse (giving the value back) otherwise, and the caller falls
//! back to path copying. A map that was cloned is never changed in place, so versions
//! stay immutable for everyone who can see them; this is what lets a thread that owns its
//! context alone set and reset with no node allocation (`engine::binding`'s `rebind_in_place`).
//!
//! Nodes are only ever handled through `crate::sync::Arc::{new, clone, as_ptr, ptr_eq}`
//! and `crate::sync::unique_mut` (no unsizing), so the module also works with loom's
//! `Arc`.

use crate::sync::{Arc, unique_mut};
use std::fmt;
use std::iter::FusedIterator;

#[cfg(test)]
mod tests;

/// Most entries a small-form node holds.
pub(crate) const SMALL_MAX: usize = 4;
// `Small::get` compares exactly four keys.
const _: () = assert!(SMALL_MAX == 4);

/// Bits of the key consumed per trie level.
const BITS: u32 = 5;

/// Mask selecting one trie level's index from the shifted key.
const LEVEL_MASK: u64 = (1 << BITS) - 1;

/// Deepest possible trie (levels `0..=12` consume bits `0..64`), the iterator stack size.
pub(crate) const MAX_DEPTH: usize = 64_usize.div_ceil(BITS as usize);

/// A persistent map from `u64` keys to `V`; cloning it is O(1) and versions share structure.
pub(crate) struct Map<V> {
    /// The root node, `None` when the map is empty (an empty map allocates nothing). The
    /// map is this one pointer: its length is the root's (`Node::len`), so a snapshot
    /// handle, a `Context` and a frame each hold one word for their bindings.
    root: Option<Arc<Node<V>>>,
}

/// A map's root node: a small-form node or the root branch of a trie, with the map's
/// length (so a map can be rebuilt from its root alone: [`Map::from_arc`]).
pub(crate) struct Node<V> {
    len: usize,
    repr: Repr<V>,
}

/// The two shapes of a root node.
enum Repr<V> {
    /// At most [`SMALL_MAX`] entries.
    Small(Small<V>),
    /// The root branch of a HAMT (level 0).
    Trie(Branch<V>),
}

/// The small form: up to [`SMALL_MAX`] entries inline, in ascending key order. With `n`
/// entries (the node's `len`, at least 1): `keys[..n]` ascend strictly, `keys[n..]`
/// repeat `keys[0]`, `values[..n]` are `Some` and `values[n..]` `None`.
struct Small<V> {
    keys: [u64; SMALL_MAX],
    values: [Option<V>; SMALL_MAX],
}

/// A HAMT node: one slot per set bit of `bitmap`, in bit order.
struct Branch<V> {
    /// Bit `(key >> shift) & 31` is set for each occupied slot at this node's level.
    bitmap: u32,
    /// `pos[i]` is the slot index of bit `i` if it is set (a precomputed popcount);
    /// unspecified otherwise.
    pos: [u8; 32],
    /// The occupied slots; `slots.len() == bitmap.count_ones()`.
    slots: Box<[Slot<V>]>,
}

/// One occupied position of a [`Branch`].
enum Slot<V> {
    /// A single key and its value.
    Entry(u64, V),
    /// A subtrie holding at least two keys that share this slot's bits.
    Child(Arc<Branch<V>>),
}

/// What removing a key from a branch leaves behind, for the parent to install.
enum Shrunk<V> {
    /// Nothing: the slot disappears from the parent.
    Empty,
    /// A single entry with no children: the parent stores it inline.
    Single(u64, V),
    /// A branch that still needs its own node.
    Branch(Branch<V>),
}

impl<V> Map<V> {
    /// The empty map; allocates nothing.
    pub(crate) const fn new() -> Self {
        Self { root: None }
    }

    /// Number of entries, O(1).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.root.as_ref().map_or(0, |node| node.len)
    }

    /// Whether the map has no entries.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Whether dropping this map now would drop no value: it is empty, or its root node
    /// has other owners. A relaxed reading of the count: another owner may let go right
    /// after it, and then this map's drop is the one that drops the values.
    #[inline]
    pub(crate) fn is_shared_or_empty(&self) -> bool {
        self.root
            .as_ref()
            .is_none_or(|root| Arc::strong_count(root) > 1)
    }

    /// The value stored under `key`: wait-free, bounded, no allocation, no atomic operation.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        match &self.root {
            Some(root) => root.get(key),
            None => None,
        }
    }

    /// Whether `key` is present.
    #[inline]
    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Iterates over `(key, &value)`: in key order for at most [`SMALL_MAX`] entries (the
    /// small form), in trie order beyond; either way the order depends only on the key
    /// set.
    pub(crate) fn iter(&self) -> Iter<'_, V> {
        let mut iter = Iter {
            small_keys: [].iter(),
            small_values: [].iter(),
            stack: [&[]; MAX_DEPTH],
            depth: 0,
            remaining: self.len(),
        };
        if let Some(root) = &self.root {
            match &root.repr {
                Repr::Small(small) => {
                    iter.small_keys = small.keys[..self.len()].iter();
                    iter.small_values = small.values[..self.len()].iter();
                }
                Repr::Trie(branch) => {
                    iter.stack[0] = &branch.slots;
                    iter.depth = 1;
                }
            }
        }
        iter
    }

    /// Whether both maps share the same root (or are both empty): equal without looking.
    #[inline]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.root, &other.root) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The root node's address, null when empty. Valid for as long as this map (or any
    /// clone of it) is alive.
    #[inline]
    pub(crate) fn root_ptr(&self) -> *const Node<V> {
        match &self.root {
            Some(root) => Arc::as_ptr(root),
            None => std::ptr::null(),
        }
    }

    /// Equality with a value comparison: same root, or same length and every key of `self`
    /// present in `other` with `eq(self_value, other_value)`.
    pub(crate) fn eq_by(&self, other: &Self, mut eq: impl FnMut(&V, &V) -> bool) -> bool {
        if self.ptr_eq(other) {
            return true;
        }
        if self.len() != other.len() {
            return false;
        }
        self.iter()
            .all(|(key, value)| other.get(key).is_some_and(|theirs| eq(value, theirs)))
    }

    /// Wraps a root node.
    fn from_node(repr: Repr<V>, len: usize) -> Self {
        Self {
            root: Some(Arc::new(Node { len, repr })),
        }
    }

    /// The map whose root is `root` (as returned by [`Map::into_arc`]).
    pub(crate) fn from_arc(root: Option<Arc<Node<V>>>) -> Self {
        Self { root }
    }

    /// The root, for storing a map in a cell that holds `Option<Arc<_>>`.
    pub(crate) fn into_arc(self) -> Option<Arc<Node<V>>> {
        self.root
    }
}

impl<V: Clone> Map<V> {
    /// A new version with `key` mapped to `value` (replacing any previous value); `self`
    /// is unchanged. Copies only the nodes on the path to `key`.
    pub(crate) fn insert(&self, key: u64, value: V) -> Self {
        let Some(root) = &self.root else {
            return Self::from_node(Repr::Small(Small::single(key, value)), 1);
        };
        match &root.repr {
            Repr::Small(small) => match small.insert(self.len(), key, value) {
                Ok((small, added)) => {
                    Self::from_node(Repr::Small(small), self.len() + usize::from(added))
                }
                Err(value) => {
                    // One key too many.
                    let mut entries = small.to_vec();
                    entries.push((key, value));
                    let len = entries.len();
                    Self::from_node(Repr::Trie(Branch::build(entries, 0)), len)
                }
            },
            Repr::Trie(branch) => {
                let (branch, added) = branch.insert(key, value, 0);
                Self::from_node(Repr::Trie(branch), self.len() + usize::from(added))
            }
        }
    }

    /// A new version without `key`, or `None` (allocating nothing) if `key` is absent.
    pub(crate) fn remove(&self, key: u64) -> Option<Self> {
        let root = self.root.as_ref()?;
        let len = self.len() - 1;
        match &root.repr {
            Repr::Small(small) => {
                if len == 0 {
                    // The only key: nothing to copy.
                    small.position_of(key)?;
                    return Some(Self::new());
                }
                let small = small.remove(len + 1, key)?;
                Some(Self::from_node(Repr::Small(small), len))
            }
            Repr::Trie(branch) => {
                if len <= SMALL_MAX {
                    branch.get(key)?;
                    return Some(Self::from_node(
                        Repr::Small(Small::shrink(branch, key)),
                        len,
                    ));
                }
                Some(match branch.remove(key, 0)? {
                    Shrunk::Empty => Self::new(),
                    Shrunk::Single(key, value) => {
                        Self::from_node(Repr::Small(Small::single(key, value)), 1)
                    }
                    Shrunk::Branch(branch) => Self::from_node(Repr::Trie(branch), len),
                })
            }
        }
    }
}

impl<V> Map<V> {
    /// Sets `key` to `value` by writing into the root node, if this map is the root's only
    /// owner and the change fits the node's form; returns the value `key` had. `Err` gives
    /// `value` back when the change needs a new node ([`insert`](Self::insert) then
    /// path-copies).
    ///
    /// This is how a context's own thread sets a variable without allocating a node: a
    /// snapshot nobody else holds (no copy, no token, no context object sharing it) is
    /// not a snapshot anyone can observe, so changing it in place is indistinguishable
    /// from replacing it. Small form: any key, up to [`SMALL_MAX`] keys. Trie form:
    /// replacing the value of a present key, through branches that are also owned only
    /// by this map.
    #[inline(always)]
    pub(crate) fn insert_in_place(&mut self, key: u64, value: V) -> Result<Option<V>, V> {
        let Some(node) = self.root.as_mut().and_then(unique_mut) else {
            return Err(value);
        };
        match &mut node.repr {
            Repr::Small(small) => {
                let old = small.insert_in_place(node.len, key, value)?;
                if old.is_none() {
                    node.len += 1;
                }
                Ok(old)
            }
            Repr::Trie(branch) => branch.replace_in_place(key, value).map(Some),
        }
    }

    /// Removes `key` by writing into the root node, if this map is its only owner and it
    /// is in the small form; returns the value removed (`Ok(None)`: `key` was absent, on
    /// any map). `Err` means [`remove`](Self::remove) must path-copy.
    #[inline(always)]
    pub(crate) fn remove_in_place(&mut self, key: u64) -> Result<Option<V>, ()> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let Some(node) = self.root.as_mut().and_then(unique_mut) else {
            return Err(());
        };
        let Repr::Small(small) = &mut node.repr else {
            return Err(());
        };
        let old = small.remove_in_place(node.len, key);
        node.len -= 1;
        if node.len == 0 {
            // The node holds no entries now; dropping it drops no value.
            self.root = None;
        }
        Ok(old)
    }
}

impl<V> Small<V> {
    /// In-place twin of [`Small::insert`] for a node of `len` entries: `Ok(previous
    /// value)`, or `Err(value)` when the key is new and the node is full.
    #[inline(always)]
    fn insert_in_place(&mut self, len: usize, key: u64, value: V) -> Result<Option<V>, V> {
        if let Some(at) = self.position_of(key) {
            return Ok(self.values[at].replace(value));
        }
        if len == SMALL_MAX {
            return Err(value);
        }
        let at = self.insertion_point(len, key);
        // The value at `len` is `None` (the node is not full): rotate it down to `at`.
        self.values[at..=len].rotate_right(1);
        self.values[at] = Some(value);
        self.keys.copy_within(at..len, at + 1);
        self.keys[at] = key;
        self.pad(len + 1);
        Ok(None)
    }

    /// In-place twin of [`Small::remove`] for a key the caller found present, in a node
    /// of `len` entries (the caller drops a node left with none).
    #[inline]
    fn remove_in_place(&mut self, len: usize, key: u64) -> Option<V> {
        let at = self.position_of(key)?;
        let old = self.values[at].take();
        self.values[at..].rotate_left(1);
        self.keys.copy_within(at + 1..len, at);
        self.pad(len - 1);
        old
    }
}

impl<V> Branch<V> {
    /// Replaces the value of a present `key` in place, through child branches that this
    /// trie owns alone; `Err(value)` if the key is absent or a branch on the way is shared.
    fn replace_in_place(&mut self, key: u64, value: V) -> Result<V, V> {
        let mut node = self;
        let mut shift = 0;
        loop {
            let i = ((key >> shift) & LEVEL_MASK) as usize;
            if node.bitmap & (1 << i) == 0 {
                return Err(value);
            }
            // The position table, not a population count (which is a dozen instructions
            // on x86-64 without `popcnt`).
            let idx = usize::from(node.pos[i]);
            match &mut node.slots[idx] {
                Slot::Entry(k, slot) if *k == key => return Ok(std::mem::replace(slot, value)),
                Slot::Entry(..) => return Err(value),
                Slot::Child(child) => match unique_mut(child) {
                    Some(child) => {
                        node = child;
                        shift += BITS;
                    }
                    None => return Err(value),
                },
            }
        }
    }
}

impl<V> Node<V> {
    /// Looks `key` up in the map rooted at this node (see [`Map::get`]). Always inlined:
    /// it is most of a variable's read.
    #[inline(always)]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        match &self.repr {
            Repr::Small(small) => small.get(key),
            Repr::Trie(branch) => branch.get(key),
        }
    }
}

impl<V> Small<V> {
    /// The index of `key` if it is present: the first of the four keys equal to it (the
    /// unused tail repeats `keys[0]`, so it never comes first).
    #[inline(always)]
    fn position_of(&self, key: u64) -> Option<usize> {
        if self.keys[0] == key {
            Some(0)
        } else if self.keys[1] == key {
            Some(1)
        } else if self.keys[2] == key {
            Some(2)
        } else if self.keys[3] == key {
            Some(3)
        } else {
            None
        }
    }

    /// Where an absent `key` goes among the first `len` keys (the count of smaller ones).
    #[inline]
    fn insertion_point(&self, len: usize, key: u64) -> usize {
        self.keys[..len].iter().filter(|&&k| k < key).count()
    }

    /// Makes the unused tail past `len` repeat `keys[0]` (nothing to do for `len == 0`,
    /// a node its owner drops).
    #[inline]
    fn pad(&mut self, len: usize) {
        let first = self.keys[0];
        for k in &mut self.keys[len..] {
            *k = first;
        }
    }

    /// Small-form lookup: up to four key compares against words of the node, then the
    /// value's load. No length test: the unused tail repeats a present key, found first
    /// at its own index.
    #[inline]
    fn get(&self, key: u64) -> Option<&V> {
        self.values[self.position_of(key)?].as_ref()
    }

    /// A node of the `(key, value)` pairs in `entries`, ascending by key, at least one
    /// and at most [`SMALL_MAX`].
    fn from_sorted(entries: impl IntoIterator<Item = (u64, V)>) -> Self {
        let mut keys = [0; SMALL_MAX];
        let mut values: [Option<V>; SMALL_MAX] = std::array::from_fn(|_| None);
        let mut len = 0;
        for (key, value) in entries {
            debug_assert!(len == 0 || keys[len - 1] < key, "ascending keys");
            keys[len] = key;
            values[len] = Some(value);
            len += 1;
        }
        debug_assert!((1..=SMALL_MAX).contains(&len));
        let mut small = Self { keys, values };
        small.pad(len);
        small
    }

    /// A one-entry node.
    fn single(key: u64, value: V) -> Self {
        Self::from_sorted([(key, value)])
    }

    /// The entries in order.
    fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.keys
            .iter()
            .zip(&self.values)
            .map_while(|(&key, value)| Some((key, value.as_ref()?)))
    }
}

impl<V: Clone> Small<V> {
    /// The entries as owned pairs, in order, with room for one more.
    fn to_vec(&self) -> Vec<(u64, V)> {
        let mut entries = Vec::with_capacity(SMALL_MAX + 1);
        entries.extend(self.iter().map(|(key, value)| (key, value.clone())));
        entries
    }

    /// A copy of this node of `len` entries with `key` set to `value`, and whether the
    /// key is new; `Err(value)` when the key is new and the node is full.
    fn insert(&self, len: usize, key: u64, value: V) -> Result<(Self, bool), V> {
        if let Some(at) = self.position_of(key) {
            let mut values = self.values.clone();
            values[at] = Some(value);
            // Same keys.
            return Ok((
                Self {
                    keys: self.keys,
                    values,
                },
                false,
            ));
        }
        if len == SMALL_MAX {
            return Err(value);
        }
        // Clone (a plain copy for `Copy` values), then move the tail up by one; the last
        // value is `None` as the node is not full.
        let at = self.insertion_point(len, key);
        let mut values = self.values.clone();
        values[at..=len].rotate_right(1);
        values[at] = Some(value);
        let mut keys = self.keys;
        keys.copy_within(at..len, at + 1);
        keys[at] = key;
        let mut small = Self { keys, values };
        small.pad(len + 1);
        Ok((small, true))
    }

    /// A copy of this node of `len` entries (at least 2: the caller handles the last
    /// key) without `key`, or `None` if it is absent.
    fn remove(&self, len: usize, key: u64) -> Option<Self> {
        debug_assert!(len >= 2, "the last key is the caller's");
        let at = self.position_of(key)?;
        let mut values = self.values.clone();
        values[at] = None;
        values[at..].rotate_left(1);
        let mut keys = self.keys;
        keys.copy_within(at + 1..len, at);
        let mut small = Self { keys, values };
        small.pad(len - 1);
        Some(small)
    }

    /// The small form of `branch` minus its (present) `key`, whose other keys number at
    /// most [`SMALL_MAX`] (the caller checked).
    fn shrink(branch: &Branch<V>, key: u64) -> Self {
        let mut entries: Vec<(u64, V)> = BranchIter::new(branch)
            .filter(|&(k, _)| k != key)
            .map(|(k, v)| (k, v.clone()))
            .collect();
        entries.sort_unstable_by_key(|&(k, _)| k);
        Self::from_sorted(entries)
    }
}

/// The position table of a branch with `bitmap`: entry `b` is the index of the slot for
/// bit `b` (the number of set bits below it), for every set bit; the rest stay 0.
#[inline]
fn position_table(bitmap: u32) -> [u8; 32] {
    let mut pos = [0u8; 32];
    let mut bits = bitmap;
    let mut idx = 0;
    while bits != 0 {
        pos[bits.trailing_zeros() as usize] = idx;
        idx += 1;
        bits &= bits - 1;
    }
    pos
}

/// The slot index of `key` at the level that consumes bits `shift .. shift + 5`.
#[inline]
fn level_bit(key: u64, shift: u32) -> u32 {
    1 << ((key >> shift) & LEVEL_MASK)
}

impl<V> Branch<V> {
    /// A branch from its bitmap and matching slots, filling in the position table.
    fn new(bitmap: u32, slots: Box<[Slot<V>]>) -> Self {
        debug_assert_eq!(slots.len(), bitmap.count_ones() as usize);
        Self {
            bitmap,
            pos: position_table(bitmap),
            slots,
        }
    }

    /// Trie lookup from this branch (level 0): at most [`MAX_DEPTH`] iterations.
    ///
    /// The bitmap is not tested: a present key is in the slot
    /// `pos[i]` names at every level, and for an absent one whatever that slot holds
    /// leads to a key compare that fails, a child whose own slots do, or an index past the
    /// end (`slots.get`). Every step goes one level deeper, so the walk still ends within
    /// the trie's depth, and only an entry with the very key is ever returned.
    ///
    /// The root level is looked at before the loop: up to 32 sequential ids (most
    /// programs' variables) are found there, without the loop's setup.
    #[inline]
    fn get(&self, key: u64) -> Option<&V> {
        let mut node = match self
            .slots
            .get(usize::from(self.pos[(key & LEVEL_MASK) as usize]))?
        {
            Slot::Entry(k, v) => return if *k == key { Some(v) } else { None },
            Slot::Child(child) => child,
        };
        let mut shift = BITS;
        loop {
            let i = ((key >> shift) & LEVEL_MASK) as usize;
            match node.slots.get(usize::from(node.pos[i]))? {
                Slot::Entry(k, v) => return if *k == key { Some(v) } else { None },
                Slot::Child(child) => {
                    node = child;
                    shift += BITS;
                }
            }
        }
    }

    /// The slot position for `bit` (which must be set, or is where it would go).
    #[inline]
    fn position(&self, bit: u32) -> usize {
        (self.bitmap & (bit - 1)).count_ones() as usize
    }
}

impl<V: Clone> Clone for Slot<V> {
    fn clone(&self) -> Self {
        match self {
            Slot::Entry(key, value) => Slot::Entry(*key, value.clone()),
            Slot::Child(child) => Slot::Child(Arc::clone(child)),
        }
    }
}

impl<V: Clone> Branch<V> {
    /// A copy whose slot `idx` is replaced by `slot`.
    fn with_replaced(&self, idx: usize, slot: Slot<V>) -> Self {
        let mut slot = Some(slot);
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| match slot.take_if(|_| i == idx) {
                Some(new) => new,
                None => s.clone(),
            })
            .collect();
        // Same bitmap: the position table is unchanged.
        Self {
            bitmap: self.bitmap,
            pos: self.pos,
            slots,
        }
    }

    /// A copy with `slot` added for the (unset) `bit`.
    fn with_inserted(&self, bit: u32, slot: Slot<V>) -> Self {
        let idx = self.position(bit);
        let mut slots = Vec::with_capacity(self.slots.len() + 1);
        slots.extend_from_slice(&self.slots[..idx]);
        slots.push(slot);
        slots.extend_from_slice(&self.slots[idx..]);
        Self::new(self.bitmap | bit, slots.into_boxed_slice())
    }

    /// A copy without the (set) `bit`'s slot.
    fn with_removed(&self, bit: u32) -> Self {
        let idx = self.position(bit);
        let mut slots = Vec::with_capacity(self.slots.len() - 1);
        slots.extend_from_slice(&self.slots[..idx]);
        slots.extend_from_slice(&self.slots[idx + 1..]);
        Self::new(self.bitmap & !bit, slots.into_boxed_slice())
    }

    /// The branch at level `shift / 5` holding `entries` (distinct keys that agree on all
    /// bits below `shift`), in canonical shape.
    fn build(mut entries: Vec<(u64, V)>, shift: u32) -> Self {
        debug_assert!(shift < 64 && entries.len() >= 2);
        let index = |key: u64| (key >> shift) & LEVEL_MASK;
        entries.sort_unstable_by_key(|&(key, _)| index(key));
        let mut bitmap = 0;
        let mut slots = Vec::with_capacity(entries.len());
        let mut rest = entries.into_iter().peekable();
        while let Some((key, value)) = rest.next() {
            let i = index(key);
            bitmap |= 1 << i;
            if rest.peek().is_some_and(|&(k, _)| index(k) == i) {
                let mut group = vec![(key, value)];
                while let Some(entry) = rest.next_if(|&(k, _)| index(k) == i) {
                    group.push(entry);
                }
                slots.push(Slot::Child(Arc::new(Self::build(group, shift + BITS))));
            } else {
                slots.push(Slot::Entry(key, value));
            }
        }
        Self::new(bitmap, slots.into_boxed_slice())
    }

    /// The branch at level `shift / 5` holding two distinct keys that agree below `shift`.
    fn pair(a: (u64, V), b: (u64, V), shift: u32) -> Self {
        debug_assert!(shift < 64 && a.0 != b.0);
        let (bit_a, bit_b) = (level_bit(a.0, shift), level_bit(b.0, shift));
        let slots: Box<[Slot<V>]> = if bit_a == bit_b {
            Box::new([Slot::Child(Arc::new(Self::pair(a, b, shift + BITS)))])
        } else if bit_a < bit_b {
            Box::new([Slot::Entry(a.0, a.1), Slot::Entry(b.0, b.1)])
        } else {
            Box::new([Slot::Entry(b.0, b.1), Slot::Entry(a.0, a.1)])
        };
        Self::new(bit_a | bit_b, slots)
    }

    /// A copy of this level-`shift / 5` branch with `key` set to `value`, and whether
    /// the key is new.
    fn insert(&self, key: u64, value: V, shift: u32) -> (Self, bool) {
        let bit = level_bit(key, shift);
        if self.bitmap & bit == 0 {
            return (self.with_inserted(bit, Slot::Entry(key, value)), true);
        }
        let idx = self.position(bit);
        let (slot, added) = match &self.slots[idx] {
            Slot::Entry(k, _) if *k == key => (Slot::Entry(key, value), false),
            Slot::Entry(k, v) => {
                let child = Self::pair((*k, v.clone()), (key, value), shift + BITS);
                (Slot::Child(Arc::new(child)), true)
            }
            Slot::Child(child) => {
                let (child, added) = child.insert(key, value, shift + BITS);
                (Slot::Child(Arc::new(child)), added)
            }
        };
        (self.with_replaced(idx, slot), added)
    }

    /// What is left of this level-`shift / 5` branch without `key`, or `None` if absent.
    fn remove(&self, key: u64, shift: u32) -> Option<Shrunk<V>> {
        let bit = level_bit(key, shift);
        if self.bitmap & bit == 0 {
            return None;
        }
        let idx = self.position(bit);
        let branch = match &self.slots[idx] {
            Slot::Entry(k, _) if *k != key => return None,
            Slot::Entry(..) => self.with_removed(bit),
            Slot::Child(child) => match child.remove(key, shift + BITS)? {
                Shrunk::Empty => self.with_removed(bit),
                Shrunk::Single(k, v) => self.with_replaced(idx, Slot::Entry(k, v)),
                Shrunk::Branch(child) => self.with_replaced(idx, Slot::Child(Arc::new(child))),
            },
        };
        Some(branch.shrunk())
    }

    /// Classifies a freshly built branch for installation in its parent.
    fn shrunk(self) -> Shrunk<V> {
        match &*self.slots {
            [] => Shrunk::Empty,
            [Slot::Entry(..)] => match self.slots.into_vec().pop() {
                Some(Slot::Entry(key, value)) => Shrunk::Single(key, value),
                _ => unreachable!("matched a single entry above"),
            },
            _ => Shrunk::Branch(self),
        }
    }
}

impl<V> Clone for Map<V> {
    /// O(1): one `Arc` increment.
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
        }
    }
}

impl<V> Default for Map<V> {
    /// The empty map.
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for Map<V> {
    /// Formats as `{key: value, ...}` in iteration order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, V> IntoIterator for &'a Map<V> {
    type Item = (u64, &'a V);
    type IntoIter = Iter<'a, V>;

    /// Same as [`Map::iter`].
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

/// Iterator over a [`Map`]'s `(key, &value)` pairs in [`Map::iter`]'s order;
/// allocation-free.
pub(crate) struct Iter<'a, V> {
    /// The small-form keys and values still to yield (empty for a trie).
    small_keys: std::slice::Iter<'a, u64>,
    small_values: std::slice::Iter<'a, Option<V>>,
    /// For each trie level on the current path, the slots not visited yet.
    stack: [&'a [Slot<V>]; MAX_DEPTH],
    /// Number of live levels in `stack`.
    depth: usize,
    /// Entries not yielded yet.
    remaining: usize,
}

impl<'a, V> Iter<'a, V> {
    /// Next entry of the trie part, depth-first in slot order.
    fn next_in_trie(&mut self) -> Option<(u64, &'a V)> {
        while self.depth > 0 {
            let top = &mut self.stack[self.depth - 1];
            let Some((slot, rest)) = top.split_first() else {
                self.depth -= 1;
                continue;
            };
            *top = rest;
            match slot {
                Slot::Entry(key, value) => return Some((*key, value)),
                Slot::Child(child) => {
                    self.stack[self.depth] = &child.slots;
                    self.depth += 1;
                }
            }
        }
        None
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (u64, &'a V);

    /// The next `(key, &value)`.
    fn next(&mut self) -> Option<Self::Item> {
        let item = match (self.small_keys.next(), self.small_values.next()) {
            (Some(key), Some(Some(value))) => Some((*key, value)),
            _ => self.next_in_trie(),
        };
        if item.is_some() {
            self.remaining -= 1;
        }
        item
    }

    /// Exact: the remaining entry count.
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<V> FusedIterator for Iter<'_, V> {}

/// Iterator over the entries under one branch (used when shrinking to the small form).
struct BranchIter<'a, V>(Iter<'a, V>);

impl<'a, V> BranchIter<'a, V> {
    /// Starts at `branch` as a root.
    fn new(branch: &'a Branch<V>) -> Self {
        let mut stack: [&'a [Slot<V>]; MAX_DEPTH] = [&[]; MAX_DEPTH];
        stack[0] = &branch.slots;
        Self(Iter {
            small_keys: [].iter(),
            small_values: [].iter(),
            stack,
            depth: 1,
            remaining: 0,
        })
    }
}

impl<'a, V> Iterator for BranchIter<'a, V> {
    type Item = (u64, &'a V);

    /// The next entry under the branch.
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_in_trie()
    }
}
