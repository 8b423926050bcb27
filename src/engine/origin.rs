//! Origins: the frames of the task that called a request layer (`origin_frames`), and
//! giving them back the bindings they started with when the request ends
//! (`restore_origins`), now or, for a frame that is not current, when it is again.

use std::ptr;

use super::announce;
use super::frame::{Frame, Origin};
use super::light::{Displaced, Light, RESTORE_OUTSIDE, materialize};
use super::run::isolated;
use super::scope::flush_scopes;
use super::thread::{Hot, retire, retire_published, with_hot, with_state};

/// The frames a request's end may give back their starting bindings ([`restore_origin`]):
/// the current frame's id if it remembers the bindings it started with
/// ([`Frame::with_origin`]: a future's frame, which may be a connection task), and the
/// id of the nearest such frame outside it (the connection task's frame, when a
/// middleware calls the layer inside a scoped future or a wrapper of its own); 0 where
/// there is none (a request's, job's, thread's or `Context::run`'s frame). The walk
/// outward follows the light frames' records on this thread's stack: the unmaterialized
/// ones through `outer`, the materialized ones through `HOT.materialized` and what each
/// displaced. A frame that has no id yet gets one now.
pub(crate) fn origin_frames() -> [u64; 2] {
    with_hot(|hot| {
        flush_scopes(hot);
        let mut found = [0; 2];
        let mut first = true;
        // Whether `id` ends the walk: the first frame looked at is the current one, and
        // the walk ends at the first frame outside it that remembers its start.
        let mut take = |id: u64| {
            if std::mem::take(&mut first) {
                found[0] = id;
                false
            } else {
                found[1] = id;
                id != 0
            }
        };
        // Outward, level by level: the unmaterialized light frames (a chain through
        // `outer`), then the frame below them (HOT's own, then the frame each
        // materialized light frame displaced), then that frame's own light frame's outer
        // chain, and so on.
        let mut light = hot.light.get();
        let mut below: *const Light = ptr::null(); // null: the frame below is HOT's own
        let mut materialized = hot.materialized.get();
        loop {
            while !light.is_null() {
                // SAFETY: the current light frame, and each one's `outer`, is an
                // unmaterialized light frame alive for its `enter_light` call on this
                // thread, which encloses the current one (see `Light`).
                let current = unsafe { &*light };
                if take(light_origin(hot, current, true)) {
                    return found;
                }
                light = current.outer.get();
            }
            let id = if below.is_null() {
                own_origin(hot, true)
            } else {
                // SAFETY: `below` is a materialized light frame that is still running
                // (see `Hot::materialized`).
                unsafe { displaced_origin(hot, &*below) }
            };
            if take(id) || materialized.is_null() {
                return found;
            }
            // SAFETY: as `below`: `HOT.materialized`, and each materialized light frame's
            // displaced `materialized`, is a running materialized light frame.
            let copy_of = unsafe { &*materialized };
            light = copy_of.outer.get();
            below = materialized;
            // SAFETY: `copy_of` materialized, so its `displaced` is initialized.
            materialized = unsafe { displaced_of(copy_of).materialized };
        }
    })
}

/// The frame a materialized light frame displaced, in place.
///
/// # Safety
///
/// `light` must have materialized and still be running (its `displaced` is initialized
/// and taken out only when it exits), and no other reference into its `displaced` may be
/// live: only `materialize_slow` and `leave_materialized` touch it otherwise.
#[allow(clippy::mut_from_ref)] // the contract: nothing else refers into `displaced`
unsafe fn displaced_of(light: &Light) -> &mut Displaced {
    // SAFETY: see the function's contract.
    unsafe { (*light.displaced.as_ptr()).assume_init_mut() }
}

/// The id of the frame the materialized light frame `light` displaced, if that frame
/// remembers its starting bindings, else 0; one without an id gets one now.
///
/// # Safety
///
/// As [`displaced_of`].
unsafe fn displaced_origin(hot: &Hot, light: &Light) -> u64 {
    // SAFETY: forwarded; the reference made here is the only one into `displaced`.
    unsafe { stored_origin(hot, &mut displaced_of(light).frame, true) }
}

/// The current frame's id if it remembers its starting bindings and has an id already,
/// else 0 (never assigns one: a frame without an id is not one [`origin_frames`]
/// recorded).
fn current_origin(hot: &Hot) -> u64 {
    let light = hot.light.get();
    if light.is_null() {
        return own_origin(hot, false);
    }
    // SAFETY: a non-null `HOT.light` is the current, unmaterialized light frame, alive
    // for its `enter_light` call (see `Light`).
    light_origin(hot, unsafe { &*light }, false)
}

/// The id of the thread's own frame (`HOT`'s, below any light frame) if it remembers its
/// starting bindings, else 0; with `assign`, one without an id gets one now.
fn own_origin(hot: &Hot, assign: bool) -> u64 {
    match hot.origin.get() {
        Origin::None => 0,
        Origin::Unchanged | Origin::Kept if assign => hot.frame_id(),
        Origin::Unchanged | Origin::Kept => hot.id.get(),
    }
}

/// The id of the unmaterialized light frame `light` (current, or one the current light
/// frame runs inside) if its storage remembers its starting bindings, else 0; with
/// `assign`, one without an id gets one now.
fn light_origin(hot: &Hot, light: &Light, assign: bool) -> u64 {
    if !light.borrowed.is_null() || light.frame.is_null() {
        return 0; // a job's or a context object's frame
    }
    // SAFETY: the storage is the `&mut Frame` that `enter_light`'s caller holds for the
    // whole call, reached only through this pointer while the light frame runs. Only
    // its snapshot is ever lent out meanwhile (`with_captured`), and no reference to
    // its other fields outlives the statement that makes it (`materialize_slow`); so
    // reading `origin` and `id` and writing `id` through the pointer conflicts with no
    // live reference.
    unsafe { stored_origin(hot, light.frame, assign) }
}

/// The id of `frame` if it remembers its starting bindings, else 0; with `assign`, one
/// without an id gets one now.
///
/// # Safety
///
/// `frame` points to a live frame that no reference in use points into (a light frame's
/// storage, or what a materialized light frame displaced: see the callers).
unsafe fn stored_origin(hot: &Hot, frame: *mut Frame, assign: bool) -> u64 {
    // SAFETY: see the function's contract.
    unsafe {
        if (*frame).origin == Origin::None {
            return 0;
        }
        if assign && (*frame).id == 0 {
            (*frame).id = hot.next_id();
        }
        (*frame).id
    }
}

/// Gives the current frame back the bindings it started with, if it is the frame `id`
/// names ([`origin_frames`]): what the tower layer does to a connection task when a
/// request it served ends, so that nothing code outside the layer set while serving one
/// request reaches the next request on the connection. A binding change, not a frame
/// switch: tokens made in the frame stay valid, and reset by path copying. `true` if the
/// bindings had changed since the frame started (or was last restored); `false` if they
/// had not, or if the current frame is another one (a frame entered inside it is
/// running, or the request ended on another task or thread).
pub(crate) fn restore_origin(id: u64) -> bool {
    if id == 0 {
        return false;
    }
    let restored = with_state(|hot| {
        if current_origin(hot) != id || unchanged_light(hot) {
            return None;
        }
        materialize(hot);
        if hot.origin.get() != Origin::Kept {
            return None;
        }
        hot.origin.set(Origin::Unchanged);
        let origin = hot.origin_vars.take();
        if hot.root() == origin.root_ptr() {
            // Changed and changed back: the same snapshot, which `HOT.vars` also holds,
            // so dropping this clone runs no destructor.
            drop(origin);
            return None;
        }
        let old = hot.install(origin);
        hot.last_change.set(hot.next_id());
        Some((old, hot.publish()))
    });
    let Ok(Some((old, published))) = restored else {
        return false;
    };
    announce();
    // Retired only now, with the state consistent, and in a frame of their own: they may
    // hold the last reference to a value of the request that just ended, whose `Drop`
    // may use context variables (a set there must not reach the next request).
    isolated(move || {
        retire(old);
        if let Some(published) = published {
            retire_published(published);
        }
    });
    true
}

/// Gives back their starting bindings ([`restore_origin`]) to the frames `frames` names
/// ([`origin_frames`]), when a request the layer served ends: now, to the one that is
/// current; later, to one that is not (the request ended inside a frame it runs inside
/// of, such as a middleware's scoped future), as soon as it is current again on this
/// thread, when the light frames inside it exit. `true` if a restore changed the
/// bindings now.
///
/// One frame waits at a time, per thread, and only until the thread gets back to its
/// own frame or leaves a hooked task's: a request that ends inside a frame that does not
/// run inside the waiting one, before it is current again, replaces it.
pub(crate) fn restore_origins(frames: [u64; 2]) -> bool {
    let [calling, outside] = frames;
    let restored = restore_origin(calling) | restore_origin(outside);
    let current = with_hot(|hot| {
        flush_scopes(hot);
        current_origin(hot)
    });
    // The request ended inside the frames that are not current (they wait), unless it
    // ended in the outer one: then the calling frame, inside it, has ended (or is
    // another task's).
    if outside != 0 && outside == current {
        return restored;
    }
    let waiting = [calling, outside].map(|id| if id == current { 0 } else { id });
    if waiting != [0, 0] {
        with_hot(|hot| wait_for_restore(hot, waiting));
    }
    restored
}

/// Makes the frames `ids` wait for their restore until the current light frame exits
/// (then [`restore_pending`] looks again), materialized or not; forgotten if the current
/// frame is the thread's base frame or a detached one.
fn wait_for_restore(hot: &Hot, ids: [u64; 2]) {
    let mut light = hot.light.get();
    if light.is_null() {
        light = hot.materialized.get();
    }
    if light.is_null() {
        hot.pending_restore.set([0, 0]);
        return;
    }
    hot.pending_restore.set(ids);
    // SAFETY: a non-null `HOT.light` or `HOT.materialized` points to the live `Light` of
    // an active `enter_light` on this thread (see `Light`, `Hot::materialized`); only its
    // `Cell`s are written.
    let light = unsafe { &*light };
    light.exit_work.set(light.exit_work.get() | RESTORE_OUTSIDE);
}

/// After a light frame exits with restores waiting ([`restore_origins`]): does the one
/// whose frame is now current, and passes the others' wait on to the frame that is
/// current now. Not while unwinding: the restore releases values, whose destructors must
/// not run then.
pub(super) fn restore_pending(hot: &Hot) {
    let mut waiting = hot.pending_restore.get();
    if waiting == [0, 0] {
        return; // done, or replaced by a later request's and done
    }
    let current = current_origin(hot);
    let now = current != 0 && waiting.contains(&current);
    if now {
        waiting = waiting.map(|id| if id == current { 0 } else { id });
    }
    if waiting == [0, 0] {
        hot.pending_restore.set(waiting);
    } else {
        wait_for_restore(hot, waiting);
    }
    if now && !std::thread::panicking() {
        restore_origin(current);
    }
}

/// Whether the current frame is a light one whose storage has its starting bindings
/// (nothing to restore, and no need to materialize).
fn unchanged_light(hot: &Hot) -> bool {
    let light = hot.light.get();
    if light.is_null() {
        return false;
    }
    // SAFETY: as in `light_origin`, which found the storage.
    match unsafe { (*light).frame.as_ref() } {
        Some(storage) => {
            storage.origin == Origin::Unchanged
                || storage.origin_vars.root_ptr() == storage.vars.root_ptr()
        }
        None => true,
    }
}
