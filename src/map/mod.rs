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
//! [`SMALL_MAX`] (4) entries whose keys have pairwise distinct low 6 bits is one node with
//! no children: a 64-bit bitmap over `key & 63` and up to 4 entries stored inline, in
//! bitmap order, in the same allocation as the `Arc` counts. Why 4 and not more: every
//! root node, of either form, is as large as the small form (the two share one type), and
//! a request's context lives as long as the request. At 16 entries a node was 488 bytes
//! however few it held; at 4 it is 200. A one-level trie (up to 32 sequential ids) reads
//! as fast as the small form, within the noise of `benches/ops.rs`' `get` rows.
//!
//! The popcount that gives an entry's slot is precomputed into a 64-byte position table
//! (`pos[key & 63]`), because baseline x86-64 has no `popcnt` instruction and the software
//! fallback costs about a nanosecond. A lookup is then one byte load, one entry load and
//! one key compare; it does not even test the bitmap, because the entry at that position
//! holds the wanted key exactly when the key is present.
//!
//! **Large form.** Otherwise the map is a 32-way hash array mapped trie (HAMT) over the raw
//! key: level `L` is indexed by bits `5L .. 5L + 5`, low bits first, so sequential ids fill
//! the root before anything goes deeper. A [`Branch`] has a `u32` bitmap, one compact
//! slot per set bit, each slot either an entry or a child branch, and a 32-byte position
//! table like the small form's (the popcount of each bit's prefix, precomputed). Two keys
//! meet in a slot only while they share all the bits consumed so far, and distinct keys
//! differ somewhere in 64 bits, so the depth is at most [`MAX_DEPTH`] (13) levels; lookups
//! are a loop of at most 13 steps of position load and key compare, with no bitmap test
//! (as in the small form: an absent key ends at a key that differs; about two levels for a
//! thousand sequential ids), and iterators walk the trie with
//! a fixed `[_; 13]` stack. The shape is canonical: an entry sits at the shallowest level
//! where no other key shares its bits, child branches always hold at least two keys (a
//! removal that leaves one entry pulls it up, an empty child disappears), and a trie that
//! shrinks back to small-form conditions becomes a small node again. Equal key sets
//! therefore have equal shapes and iterate in the same order.
//!
//! **Cost model.** `get` is wait-free: bounded steps, no allocation, no atomic operation.
//! `clone` is one `Arc` increment. `insert` and `remove` copy the nodes on the path from
//! the root to the key and nothing else: one allocation for a small-form node (by far the
//! common case), two for a branch (its `Arc` and its compact slot array: loom's `Arc`
//! cannot hold an unsized `[Slot]`, and a fixed 32-slot array would waste most of each
//! sparse deep node), plus one clone per slot of each copied node (a `V::clone` for an
//! entry, an `Arc` increment for a child). A `remove` of an absent key allocates nothing.
//! Form changes (a fifth entry, low-bit collision, shrinking back) rebuild at most
//! `SMALL_MAX + 1` entries.
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
// The position masks (`& (SMALL_MAX - 1)`) need a power of two, and `pos` a `u8` index
// into 64 groups.
const _: () = assert!(SMALL_MAX.is_power_of_two() && SMALL_MAX <= 64);

/// Bits of the key consumed per trie level.
const BITS: u32 = 5;

/// Mask selecting one trie level's index from the shifted key.
const LEVEL_MASK: u64 = (1 << BITS) - 1;

/// Deepest possible trie (levels `0..=12` consume bits `0..64`), the iterator stack size.
pub(crate) const MAX_DEPTH: usize = 64_usize.div_ceil(BITS as usize);

/// One inline entry of a small-form node; `None` only past the node's length.
type SmallEntry<V> = Option<(u64, V)>;

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
    /// At most [`SMALL_MAX`] entries with pairwise distinct `key & 63`.
    Small(Small<V>),
    /// The root branch of a HAMT (level 0).
    Trie(Branch<V>),
}

/// The small form: entries inline, in the order of their bit in `bitmap`.
struct Small<V> {
    /// Bit `key & 63` is set for each key present.
    bitmap: u64,
    /// `pos[key & 63]` is the entry index of each present key: a precomputed popcount,
    /// as baseline x86-64 has no `popcnt` instruction. Values for absent groups are
    /// unspecified (at most [`SMALL_MAX`]); lookups never trust them, they compare the key.
    pos: [u8; 64],
    /// Entries `0 .. bitmap.count_ones()` are `Some`, the rest `None`.
    entries: [SmallEntry<V>; SMALL_MAX],
}

/// A HAMT node: one slot per set bit of `bitmap`, in bit order.
struct Branch<V> {
    /// Bit `(key >> shift) & 31` is set for each occupied slot at this node's level.
    bitmap: u32,
    /// `pos[i]` is the slot index of bit `i` if it is set (a precomputed popcount, as in
    /// the small form); unspecified otherwise.
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

    /// Iterates over `(key, &value)` in trie order, which depends only on the key set.
    pub(crate) fn iter(&self) -> Iter<'_, V> {
        let mut iter = Iter {
            small: [].iter(),
            stack: [&[]; MAX_DEPTH],
            depth: 0,
            remaining: self.len(),
        };
        if let Some(root) = &self.root {
            match &root.repr {
                Repr::Small(small) => iter.small = small.entries[..self.len()].iter(),
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
            Repr::Small(small) => match small.insert(key, value) {
                Ok((small, added)) => {
                    Self::from_node(Repr::Small(small), self.len() + usize::from(added))
                }
                Err(value) => {
                    // One key too many, or a key sharing `key & 63` with a present one.
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
                let small = small.remove(key)?;
                Some(if len == 0 {
                    Self::new()
                } else {
                    Self::from_node(Repr::Small(small), len)
                })
            }
            Repr::Trie(branch) => {
                if len <= SMALL_MAX {
                    branch.get(key)?;
                    if let Some(small) = Small::shrink(branch, key) {
                        return Some(Self::from_node(Repr::Small(small), len));
                    }
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
    /// from replacing it. Small form: any key whose low-6-bit group is free or its own,
    /// up to [`SMALL_MAX`] keys. Trie form: replacing the value of a present key, through
    /// branches that are also owned only by this map.
    #[inline(always)]
    pub(crate) fn insert_in_place(&mut self, key: u64, value: V) -> Result<Option<V>, V> {
        let Some(node) = self.root.as_mut().and_then(unique_mut) else {
            return Err(value);
        };
        match &mut node.repr {
            Repr::Small(small) => {
                let old = small.insert_in_place(key, value)?;
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
        let old = small.remove_in_place(key);
        node.len -= 1;
        if node.len == 0 {
            // The node holds no entries now; dropping it drops no value.
            self.root = None;
        }
        Ok(old)
    }
}

impl<V> Small<V> {
    /// In-place twin of [`Small::insert`]: `Ok(previous value)`, or `Err(value)` when the
    /// key does not fit (one key too many, or its group taken by another key).
    #[inline(always)]
    fn insert_in_place(&mut self, key: u64, value: V) -> Result<Option<V>, V> {
        // A present key is where `get` finds it (no popcount needed).
        let at = usize::from(self.pos[(key & 63) as usize]) & (SMALL_MAX - 1);
        if let Some((k, slot)) = &mut self.entries[at]
            && *k == key
        {
            return Ok(Some(std::mem::replace(slot, value)));
        }
        let bit = 1u64 << (key & 63);
        if self.bitmap & bit != 0 {
            return Err(value); // the group belongs to another key
        }
        let idx = self.index(key);
        let len = self.bitmap.count_ones() as usize;
        if len == SMALL_MAX {
            return Err(value);
        }
        // The slot at `len` is `None` (the node is not full): rotate it down to `idx`.
        self.entries[idx..=len].rotate_right(1);
        self.entries[idx] = Some((key, value));
        for p in &mut self.pos {
            *p += u8::from(*p >= idx as u8);
        }
        self.pos[(key & 63) as usize] = idx as u8;
        self.bitmap |= bit;
        Ok(None)
    }

    /// In-place twin of [`Small::remove`] for a key the caller found present.
    #[inline]
    fn remove_in_place(&mut self, key: u64) -> Option<V> {
        let idx = self.index(key);
        let (k, old) = self.entries[idx].take()?;
        debug_assert_eq!(k, key, "the caller checked that the key is present");
        self.entries[idx..].rotate_left(1);
        let idx = idx as u8;
        for p in &mut self.pos {
            *p -= u8::from(*p > idx);
        }
        self.bitmap &= !(1u64 << (key & 63));
        Some(old)
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
    /// Position `key` has (or would have) among the entries.
    #[inline]
    fn index(&self, key: u64) -> usize {
        let bit = 1u64 << (key & 63);
        (self.bitmap & (bit - 1)).count_ones() as usize
    }

    /// Small-form lookup: two dependent loads and one key compare. The bitmap is not
    /// tested: if `key` is present it is at `pos[key & 63]`, and if it is absent whatever
    /// sits there has another key (or is `None`). A present key's position is below
    /// `SMALL_MAX`, an absent group's at most `SMALL_MAX`; the mask keeps the index in
    /// bounds either way and lets the compiler drop the bounds check.
    #[inline]
    fn get(&self, key: u64) -> Option<&V> {
        let idx = usize::from(self.pos[(key & 63) as usize]) & (SMALL_MAX - 1);
        match &self.entries[idx] {
            Some((k, v)) if *k == key => Some(v),
            _ => None,
        }
    }

    /// A node from its bitmap and matching entries, filling in the position table.
    #[inline]
    fn from_parts(bitmap: u64, entries: [SmallEntry<V>; SMALL_MAX]) -> Self {
        Self {
            bitmap,
            pos: position_table(bitmap),
            entries,
        }
    }

    /// A one-entry node.
    fn single(key: u64, value: V) -> Self {
        let mut value = Some((key, value));
        Self::from_parts(
            1 << (key & 63),
            std::array::from_fn(|i| if i == 0 { value.take() } else { None }),
        )
    }
}

impl<V: Clone> Small<V> {
    /// The entries as owned pairs, in order, with room for one more.
    fn to_vec(&self) -> Vec<(u64, V)> {
        let mut entries = Vec::with_capacity(SMALL_MAX + 1);
        entries.extend(self.entries.iter().map_while(Clone::clone));
        entries
    }

    /// A copy with `key` set to `value`, and whether the key is new; `Err(value)` when the
    /// result would not be small (one key too many, or `key & 63` taken by another key).
    fn insert(&self, key: u64, value: V) -> Result<(Self, bool), V> {
        let bit = 1u64 << (key & 63);
        let idx = self.index(key);
        if self.bitmap & bit != 0 {
            if !matches!(&self.entries[idx], Some((k, _)) if *k == key) {
                return Err(value);
            }
            let mut entries = self.entries.clone();
            entries[idx] = Some((key, value));
            // Same key set: the position table is unchanged.
            return Ok((
                Self {
                    bitmap: self.bitmap,
                    pos: self.pos,
                    entries,
                },
                false,
            ));
        }
        if self.bitmap.count_ones() as usize == SMALL_MAX {
            return Err(value);
        }
        // Clone (a plain copy for `Copy` values), then move the tail up by one; the last
        // slot is `None` as the node is not full.
        let len = self.bitmap.count_ones() as usize;
        let mut entries = self.entries.clone();
        entries[idx..=len].rotate_right(1);
        entries[idx] = Some((key, value));
        // Entries from `idx` on moved up by one (a whole-array loop, so it vectorises).
        let mut pos = self.pos;
        for p in &mut pos {
            *p += u8::from(*p >= idx as u8);
        }
        pos[(key & 63) as usize] = idx as u8;
        Ok((
            Self {
                bitmap: self.bitmap | bit,
                pos,
                entries,
            },
            true,
        ))
    }

    /// A copy without `key`, or `None` if it is absent.
    fn remove(&self, key: u64) -> Option<Self> {
        let bit = 1u64 << (key & 63);
        let idx = self.index(key);
        match &self.entries[idx & (SMALL_MAX - 1)] {
            Some((k, _)) if *k == key => {}
            _ => return None,
        }
        let mut entries = self.entries.clone();
        entries[idx] = None;
        entries[idx..].rotate_left(1);
        // Entries after `idx` moved down by one (vectorised, as in `insert`).
        let idx = idx as u8;
        let mut pos = self.pos;
        for p in &mut pos {
            *p -= u8::from(*p > idx);
        }
        Some(Self {
            bitmap: self.bitmap & !bit,
            pos,
            entries,
        })
    }

    /// The small form of `branch` minus its (present) `key`, if the other keys number at
    /// most [`SMALL_MAX`] and have pairwise distinct `key & 63`.
    fn shrink(branch: &Branch<V>, key: u64) -> Option<Self> {
        let mut bitmap = 0u64;
        for (k, _) in BranchIter::new(branch) {
            if k != key {
                let bit = 1u64 << (k & 63);
                if bitmap & bit != 0 {
                    return None;
                }
                bitmap |= bit;
            }
        }
        if bitmap.count_ones() as usize > SMALL_MAX {
            return None;
        }
        let mut entries: [SmallEntry<V>; SMALL_MAX] = std::array::from_fn(|_| None);
        for (k, v) in BranchIter::new(branch) {
            if k != key {
                let bit = 1u64 << (k & 63);
                let idx = (bitmap & (bit - 1)).count_ones() as usize;
                entries[idx] = Some((k, v.clone()));
            }
        }
        Some(Self::from_parts(bitmap, entries))
    }
}

/// The position table of a node with `bitmap`: entry `b` is the index of the slot for
/// bit `b` (the number of set bits below it), for every set bit; the rest stay 0.
#[inline]
fn position_table<const BITS: usize>(bitmap: u64) -> [u8; BITS] {
    let mut pos = [0u8; BITS];
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
            pos: position_table(u64::from(bitmap)),
            slots,
        }
    }

    /// Trie lookup from this branch (level 0): at most [`MAX_DEPTH`] iterations.
    ///
    /// As in the small form, the bitmap is not tested: a present key is in the slot
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

/// Iterator over a [`Map`]'s `(key, &value)` pairs in trie order; allocation-free.
pub(crate) struct Iter<'a, V> {
    /// The small-form entries still to yield (empty for a trie).
    small: std::slice::Iter<'a, SmallEntry<V>>,
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
        let item = match self.small.next() {
            Some(Some((key, value))) => Some((*key, value)),
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
            small: [].iter(),
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
