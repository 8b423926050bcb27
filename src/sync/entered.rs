//! `EnteredCell`: a value that belongs to whoever holds a flag (a context object's
//! entered state and the runner's own copy of its snapshot).

use super::{AtomicBool, Ordering};

/// A value that belongs to whoever holds a flag: a try-lock with no waiting.
///
/// This is a context object's "entered" state together with the runner's own copy of its
/// snapshot. [`try_enter`](Self::try_enter) takes the flag (`Acquire` CAS, pairing with
/// the `Release` of the previous holder's [`leave_with`](Self::leave_with) or
/// [`leave`](Self::leave)); until the holder leaves, it alone may read or replace the
/// value, on whichever thread it runs by then. So entering costs one compare-and-swap and
/// reading the value costs nothing: no reference count, no load from the published cell.
///
/// The flag is a `crate::sync::AtomicBool` (loom's in loom builds, so the models check
/// the hand-over); the value is a std `UnsafeCell` in every build, as loom's cannot lend a
/// reference beyond a closure.
pub struct EnteredCell<T> {
    entered: AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only accessed by the flag's holder (the unsafe methods' contract),
// with the flag's Acquire/Release ordering at each hand-over, so the value moves between
// threads (`Send`); the holder may lend `&T` to several threads at once (rayon jobs
// reading the runner's snapshot), hence `Sync` too.
unsafe impl<T: Send + Sync> Sync for EnteredCell<T> {}

impl<T> EnteredCell<T> {
    /// A cell holding `value`, already entered if `entered`.
    pub fn new(value: T, entered: bool) -> Self {
        Self {
            entered: AtomicBool::new(entered),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    /// Takes the flag; `false` if someone holds it.
    #[inline]
    pub fn try_enter(&self) -> bool {
        // Acquire pairs with the Release in `leave`/`leave_with` by the previous holder,
        // so its writes to the value (and everything before) are visible to us.
        self.entered
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The value.
    ///
    /// # Safety
    ///
    /// The caller holds the flag, and the reference is not used after the caller
    /// leaves (or replaces the value).
    #[inline]
    pub unsafe fn get(&self) -> &T {
        // SAFETY: by the contract, only the holder accesses the value, and it does not
        // write it while this reference is in use.
        unsafe { &*self.value.get() }
    }

    /// Replaces the value and releases the flag; returns the old value.
    ///
    /// # Safety
    ///
    /// The caller holds the flag, and no reference from [`get`](Self::get) is in use.
    #[inline]
    pub unsafe fn leave_with(&self, value: T) -> T {
        // SAFETY: by the contract, the holder has exclusive access until the store below.
        let old = unsafe { std::mem::replace(&mut *self.value.get(), value) };
        // Release pairs with the Acquire CAS in `try_enter` by the next holder.
        self.entered.store(false, Ordering::Release);
        old
    }

    /// Releases the flag, leaving the value as it is.
    ///
    /// # Safety
    ///
    /// The caller holds the flag.
    #[inline]
    pub unsafe fn leave(&self) {
        // Release pairs with the Acquire CAS in `try_enter` by the next holder.
        self.entered.store(false, Ordering::Release);
    }
}
