//! A lock-free list whose entries are added and removed by their owners while any thread
//! iterates it: the registry of `observe`'s per-thread slots.
//!
//! **Shape.** A singly linked list of heap nodes, newest first, in the style of
//! crossbeam-epoch's own internal list (Harris–Michael): [`AtomicList::insert`] pushes a
//! node at the head with a CAS; dropping the returned [`ListEntry`] *marks* the node's
//! `next` pointer (tag bit 1: logically deleted, and `next` never changes again), then
//! unlinks marked nodes; iteration skips marked nodes and unlinks them on the way. A node
//! is unlinked by a successful CAS of its predecessor's `next` (or the head) from the node
//! to its successor, which can succeed only once, so exactly one thread hands each node to
//! [`defer_destroy`](crossbeam_epoch::Guard::defer_destroy).
//!
//! **Reclamation.** The list owns a `crossbeam_epoch::Collector`, so the nodes (and the
//! values in them) are destroyed only inside this list's operations or when the list is
//! dropped, never by unrelated code that happens to pin the global collector. Every
//! operation registers a fresh handle with it: operations are rare (a thread's first
//! publication, its exit, a reader's pass), and a fresh handle needs no thread-local,
//! which matters during thread teardown. A destroyed node is one that was unlinked while
//! every reader pinned at the time has since unpinned, so no reader ever sees freed memory.
//!
//! **Orderings.** The head CAS that inserts a node is `Release` and every traversal load
//! is `Acquire`: a reader that reaches a node sees it fully initialised. Every later CAS of
//! the head is a read-modify-write, so it continues the release sequence and a reader
//! that loads the head synchronises with every earlier insertion (older nodes, reached
//! through `next` pointers written `Relaxed` before their node was published, included).
//! The mark is a `Release` RMW read by the unlinker's `Acquire` load, so the owner's last
//! use of its node happens before the node is handed to the collector. An unlinking CAS is
//! `Release`: a reader that loads the new `next` synchronises with the unlinker, who had
//! itself acquired the successor.
//!
//! Under `--cfg loom --cfg crossbeam_loom` the same code runs on crossbeam-epoch's loom
//! build (the crate's loom stage sets both), so the models in
//! `loom-tests/tests/observe.rs` check this protocol and crossbeam's reclamation together.
//! Under `--cfg loom` alone (a user's models) crossbeam-epoch is its normal build: the
//! list works inside a model, but loom sees neither its `Release`/`Acquire` pairs
//! (crossbeam's `Atomic` is std's there) nor crossbeam's reclamation; only the loom `Arc`s
//! in its values.

use std::marker::PhantomData;

use super::Arc;
use super::Ordering::{Acquire, Relaxed, Release};
use crossbeam_epoch::{self as epoch, Atomic, Collector, Guard, Owned, Shared};

/// The deletion mark, in the low bit of a node's `next` pointer.
const MARK: usize = 1;

struct Node<T> {
    value: T,
    next: Atomic<Node<T>>,
}

/// See the [module docs](self).
pub struct AtomicList<T: Send + Sync> {
    head: Atomic<Node<T>>,
    collector: Collector,
    /// The ordering of the publishing CAS in `insert`, `Release`; a loom canary
    /// weakens it to check that the models notice.
    #[cfg(loom)]
    publish: super::Ordering,
}

impl<T: Send + Sync> Default for AtomicList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync> AtomicList<T> {
    /// An empty list with a collector of its own.
    pub fn new() -> Self {
        Self {
            head: Atomic::null(),
            collector: Collector::new(),
            #[cfg(loom)]
            publish: Release,
        }
    }

    /// A list whose `insert` publishes with `publish` instead of `Release`: only for
    /// the loom canary that shows a too-weak ordering is caught.
    #[cfg(loom)]
    pub fn with_publish_ordering(publish: super::Ordering) -> Self {
        let mut list = Self::new();
        list.publish = publish;
        list
    }

    fn publish_ordering(&self) -> super::Ordering {
        #[cfg(loom)]
        return self.publish;
        #[cfg(not(loom))]
        Release
    }

    fn pin(&self) -> Guard {
        self.collector.register().pin()
    }

    /// Adds `value` at the head. Lock-free: retries only when another insertion or
    /// an unlinking of the first node won the race for the head.
    ///
    /// The entry keeps the list alive (a thread's entry is dropped among its
    /// thread-locals, whose order relative to anything else is not ours to choose).
    pub fn insert(list: &Arc<Self>, value: T) -> ListEntry<T> {
        let this = &**list;
        let guard = this.pin();
        let mut node = Owned::new(Node {
            value,
            next: Atomic::null(),
        });
        // Relaxed: the head is only compared and stored into `next`, never followed.
        let mut head = this.head.load(Relaxed, &guard);
        loop {
            // Relaxed: published by the CAS below.
            node.next.store(head, Relaxed);
            // The publishing CAS (see the module docs). Failure: Relaxed, as above.
            match this.head.compare_exchange_weak(
                head,
                node,
                this.publish_ordering(),
                Relaxed,
                &guard,
            ) {
                Ok(shared) => {
                    return ListEntry {
                        list: list.clone(),
                        node: shared.as_raw(),
                        _not_send: PhantomData,
                    };
                }
                Err(error) => {
                    head = error.current;
                    node = error.new;
                }
            }
        }
    }

    /// Calls `f` with every value whose entry has not been dropped, newest first, and
    /// unlinks the nodes of dropped entries it passes. Lock-free; `f` runs while this
    /// thread is pinned (it should be short, and must not block on other threads).
    ///
    /// A value whose entry is dropped during the pass may or may not be seen; one
    /// inserted during the pass is seen only if it was inserted before the pass read
    /// the head.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        let guard = self.pin();
        let mut pred = &self.head;
        let mut curr = pred.load(Acquire, &guard);
        // SAFETY: `curr` is null or was loaded while pinned from the head or from a
        // node reached the same way; a node is destroyed only after it was unlinked
        // and every thread pinned at that time (this one included) has unpinned.
        while let Some(node) = unsafe { curr.as_ref() } {
            // Acquire: pairs with the owner's Release mark (and the inserter's
            // publication, through the head's release sequence).
            let succ = node.next.load(Acquire, &guard);
            if succ.tag() == MARK {
                let succ = succ.with_tag(0);
                // One try, and `pred` stays either way: on success it now points to
                // `succ`; on failure (`pred` was marked, or `curr` was unlinked
                // already) the node is left to a later pass and the walk goes on
                // through it (a marked node's `next` is frozen, and this thread is
                // pinned, so `succ` is still allocated).
                self.unlink(pred, curr, succ, &guard);
                curr = succ;
                continue;
            }
            f(&node.value);
            pred = &node.next;
            curr = succ;
        }
    }

    /// Unlinks every marked node, restarting from the head whenever a CAS fails.
    fn unlink_marked(&self, guard: &Guard) {
        'restart: loop {
            let mut pred = &self.head;
            let mut curr = pred.load(Acquire, guard);
            // SAFETY: as in `for_each`.
            while let Some(node) = unsafe { curr.as_ref() } {
                let succ = node.next.load(Acquire, guard);
                if succ.tag() == MARK {
                    let succ = succ.with_tag(0);
                    if !self.unlink(pred, curr, succ, guard) {
                        continue 'restart;
                    }
                    curr = succ;
                    continue;
                }
                pred = &node.next;
                curr = succ;
            }
            return;
        }
    }

    /// Swings `pred` from `curr` (a marked node) to `succ` (its successor), and if
    /// that succeeds hands `curr` to the collector. Fails if `pred` no longer points to
    /// `curr` unmarked: `pred` was marked itself, `curr` was unlinked already, or a
    /// node was inserted before it.
    fn unlink<'g>(
        &self,
        pred: &Atomic<Node<T>>,
        curr: Shared<'g, Node<T>>,
        succ: Shared<'g, Node<T>>,
        guard: &'g Guard,
    ) -> bool {
        // Release: a reader that loads `succ` from `pred` synchronises with this
        // thread, which acquired `succ` (see the module docs). Failure: Relaxed, the
        // value is not used.
        match pred.compare_exchange(curr, succ, Release, Relaxed, guard) {
            Ok(_) => {
                // SAFETY: `curr` was reachable and is unreachable now: only the CAS
                // from `curr` to `succ` on its one predecessor unlinks it, and a
                // marked node's `next` never changes, so it cannot be linked again
                // (insertion only links a node in front of the current head). This
                // CAS succeeded, so this is the only `defer_destroy` of `curr`, and
                // threads that may still hold it are pinned.
                unsafe { guard.defer_destroy(curr) };
                true
            }
            Err(_) => false,
        }
    }
}

impl<T: Send + Sync> std::fmt::Debug for AtomicList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicList").finish_non_exhaustive()
    }
}

impl<T: Send + Sync> Drop for AtomicList<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread uses the list (entries hold it, so
        // none is left), so no node is reachable by anyone else and the unprotected
        // guard is enough. Every node still linked is destroyed exactly once here;
        // unlinked ones belong to the collector, which runs them when it is dropped
        // (after this).
        unsafe {
            let guard = epoch::unprotected();
            let mut curr = self.head.load(Relaxed, guard);
            while !curr.is_null() {
                let node = curr.with_tag(0).into_owned();
                curr = node.next.load(Relaxed, guard);
                drop(node);
            }
        }
    }
}

/// A value's membership of an [`AtomicList`]: reads the value without pinning, and
/// removes it from the list when dropped. `!Send`: it stays with the thread that
/// inserted the value (the registry keeps it in a thread-local).
pub struct ListEntry<T: Send + Sync> {
    list: Arc<AtomicList<T>>,
    node: *const Node<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Send + Sync> ListEntry<T> {
    /// The value this entry inserted.
    pub fn get(&self) -> &T {
        // SAFETY: only this entry's `drop` marks the node, a node is unlinked only
        // once marked, and destroyed only after it is unlinked (or with the list,
        // which this entry keeps alive): while the entry lives the node is allocated.
        unsafe { &(*self.node).value }
    }
}

impl<T: Send + Sync> std::fmt::Debug for ListEntry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListEntry").finish_non_exhaustive()
    }
}

impl<T: Send + Sync> Drop for ListEntry<T> {
    fn drop(&mut self) {
        let guard = self.list.pin();
        // SAFETY: as in `get`: the node is not marked yet, so it is allocated.
        let node = unsafe { &*self.node };
        // Release: pairs with the Acquire load of the unlinker (module docs).
        let before = node.next.fetch_or(MARK, Release, &guard);
        debug_assert_eq!(before.tag(), 0, "a node is marked only by its entry");
        self.list.unlink_marked(&guard);
    }
}
