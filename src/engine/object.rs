//! The cell of a context object (`Context`): the part that other threads and other
//! handles share. It lives below the frames because a frame that runs a context object
//! holds its entered flag and publishes into its snapshot cell; the public `Context`
//! (`crate::context`) is a handle over it.

#![deny(unsafe_code)]

use super::Vars;
use crate::map::{Map, Node};
use crate::sync::{EnteredCell, PublishCell, Replaced};
use crate::value::Entry;

/// What a publication gives back for its caller to retire (`thread::retire_published`):
/// the snapshot it replaced and, rarely, snapshots that earlier publications replaced
/// while another thread was loading the object's snapshot.
pub(crate) type Published = Replaced<Node<Entry>>;

/// The shared part of a context object: its identity, its current snapshot, and whether
/// it is entered.
pub(crate) struct Shared {
    pub(crate) id: u64,
    /// The snapshot as other threads see it: replaced by the runner on every set (while
    /// anyone else can look) and at the end of each run. Only the holder of `owner`'s
    /// flag replaces it, which is what lets a replacement cost O(1) (`PublishCell`).
    vars: PublishCell<Node<Entry>>,
    /// Whether some frame runs this context, and the snapshot that frame starts from:
    /// the runner's own copy, which it reads without a reference count or a load from
    /// `vars`. Taken with an `Acquire` CAS on entry, handed back with a `Release` store
    /// (together with the final snapshot, by the frame) when the frame ends: the pair
    /// orders everything the previous runner did before everything the next one does.
    owner: EnteredCell<Vars>,
}

impl Shared {
    /// A context object holding `vars`, already entered if `entered`.
    pub(crate) fn new(id: u64, vars: Vars, entered: bool) -> Self {
        Self {
            id,
            vars: PublishCell::new(vars.clone().into_arc()),
            owner: EnteredCell::new(vars, entered),
        }
    }

    /// The entered flag and the runner's snapshot (used by the frames, which hold the
    /// flag while they run the object).
    pub(crate) fn owner(&self) -> &EnteredCell<Vars> {
        &self.owner
    }

    /// The snapshot as published (what other threads and handles read).
    pub(crate) fn load_vars(&self) -> Vars {
        Map::from_arc(self.vars.load())
    }

    /// The cell other threads load the snapshot from. Only the holder of `owner`'s
    /// flag may replace its value (`thread::publish_to`): that serialises the
    /// replacements, as `PublishCell::replace` requires.
    pub(crate) fn published(&self) -> &PublishCell<Node<Entry>> {
        &self.vars
    }
}
