//! User code that runs inside the crate's operations: a value's `Drop` that reads and sets
//! context variables (the same one, too), a `Clone` that sets a variable during
//! `ContextVar::get`, and a `with` closure that sets variables while it holds `&T`.
//!
//! None of it may panic with a borrow error, see a half-updated state, or free a value
//! that is still borrowed (checked through [`crate::was_dropped`], which never touches the
//! memory in question).

use std::sync::Mutex;
use std::thread;

use contextvars::{Context, ContextVar, copy_context};

use crate::{addr, isolated, iterations, mark_alive, record_drop, was_dropped};

/// What a [`Reentrant`] value saw when it was dropped.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Seen {
    dropped: u32,
    /// The `id` of the variable's current value then, if any.
    var_then: Option<u32>,
    /// `SEEN`'s value then, if any.
    seen_then: Option<u32>,
    /// Whether setting a variable from the destructor worked.
    set_ok: bool,
}

/// A value whose `Drop` reads its own variable and another one, sets the other one to
/// its id, and, if `replace_with` is given, sets its *own* variable to a new value.
struct Reentrant {
    id: u32,
    var: &'static ContextVar<Reentrant>,
    seen: &'static ContextVar<u32>,
    log: &'static Mutex<Vec<Seen>>,
    replace_with: Option<u32>,
}

impl Reentrant {
    fn new(
        id: u32,
        replace_with: Option<u32>,
        var: &'static ContextVar<Reentrant>,
        seen: &'static ContextVar<u32>,
        log: &'static Mutex<Vec<Seen>>,
    ) -> Self {
        Self {
            id,
            var,
            seen,
            log,
            replace_with,
        }
    }
}

impl Drop for Reentrant {
    fn drop(&mut self) {
        let var_then = self.var.try_with(|value| value.id).ok();
        let seen_then = self.seen.try_get().ok();
        let set_ok = match self.seen.try_set(self.id) {
            Ok(token) => {
                drop(token);
                true
            }
            Err(_) => false,
        };
        // Logged before the replacing set below, which may drop (and log) more values.
        self.log.lock().unwrap().push(Seen {
            dropped: self.id,
            var_then,
            seen_then,
            set_ok,
        });
        if let Some(next) = self.replace_with {
            let value = Reentrant::new(next, None, self.var, self.seen, self.log);
            if let Ok(token) = self.var.try_set(value) {
                drop(token);
            }
        }
    }
}

/// Declares the statics one test needs and a constructor for its values.
macro_rules! reentrant_setup {
    ($var:ident, $seen:ident, $log:ident, $make:ident) => {
        static $var: ContextVar<Reentrant> = contextvars::context_var!(Reentrant, "var");
        static $seen: ContextVar<u32> = contextvars::context_var!(u32, "seen");
        static $log: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
        let $make = |id: u32, replace_with: Option<u32>| {
            Reentrant::new(id, replace_with, &$var, &$seen, &$log)
        };
    };
}

fn var_id(var: &'static ContextVar<Reentrant>) -> Option<u32> {
    var.try_with(|value| value.id).ok()
}

#[test]
fn drop_on_reset_sees_the_restored_state() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        let _outer = VAR.set(make(1, None));
        let token = VAR.set(make(2, None));
        VAR.reset(token).unwrap();
        // `2` was dropped by the reset, after the reset was complete.
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![Seen {
                dropped: 2,
                var_then: Some(1),
                seen_then: None,
                set_ok: true
            }]
        );
        assert_eq!(SEEN.get(), 2);
        assert_eq!(var_id(&VAR), Some(1));
    });
}

#[test]
fn drop_on_reset_to_missing() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        let token = VAR.set(make(1, Some(2)));
        VAR.reset(token).unwrap();
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![Seen {
                dropped: 1,
                var_then: None,
                seen_then: None,
                set_ok: true
            }]
        );
        assert_eq!(var_id(&VAR), Some(2));
        assert_eq!(SEEN.get(), 1);
    });
}

#[test]
fn drop_on_overwrite() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        drop(VAR.set(make(1, Some(10))));
        // The overwritten value lives in the token's "before" snapshot: dropping the
        // token drops it, in a consistent state.
        let token = VAR.set(make(2, None));
        assert!(LOG.lock().unwrap().is_empty());
        drop(token);
        // 1's destructor sees 2, then replaces 2 by 10, which drops 2, whose destructor
        // sees 10 and the `seen` that 1 set.
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![
                Seen {
                    dropped: 1,
                    var_then: Some(2),
                    seen_then: None,
                    set_ok: true
                },
                Seen {
                    dropped: 2,
                    var_then: Some(10),
                    seen_then: Some(1),
                    set_ok: true
                },
            ]
        );
        assert_eq!(var_id(&VAR), Some(10));
        assert_eq!(SEEN.get(), 2);
    });
}

#[test]
fn drop_on_overwrite_in_thread_base_context() {
    // The same on a fresh thread's own context (no `Context` object involved).
    reentrant_setup!(VAR, SEEN, LOG, make);
    thread::spawn(move || {
        drop(VAR.set(make(1, Some(10))));
        drop(VAR.set(make(2, None)));
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![
                Seen {
                    dropped: 1,
                    var_then: Some(2),
                    seen_then: None,
                    set_ok: true
                },
                Seen {
                    dropped: 2,
                    var_then: Some(10),
                    seen_then: Some(1),
                    set_ok: true
                },
            ]
        );
        assert_eq!(var_id(&VAR), Some(10));
        assert_eq!(SEEN.get(), 2);
    })
    .join()
    .unwrap();
}

#[test]
fn drop_on_context_drop() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        let _keep = VAR.set(make(1, None));
        let ctx = Context::new().with_value(&VAR, make(2, Some(20)));
        assert!(LOG.lock().unwrap().is_empty());
        drop(ctx);
        // 2's destructor ran in the caller's context: it saw 1, and its set of 20 there
        // dropped 1 (whose destructor saw 20).
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![
                Seen {
                    dropped: 2,
                    var_then: Some(1),
                    seen_then: None,
                    set_ok: true
                },
                Seen {
                    dropped: 1,
                    var_then: Some(20),
                    seen_then: Some(2),
                    set_ok: true
                },
            ]
        );
        assert_eq!(var_id(&VAR), Some(20));
        assert_eq!(SEEN.get(), 1);
    });
}

#[test]
fn drop_after_leaving_run() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        let _keep = VAR.set(make(1, None));
        Context::new().run(|| drop(VAR.set(make(2, Some(20)))));
        assert_eq!(
            *LOG.lock().unwrap(),
            vec![
                Seen {
                    dropped: 2,
                    var_then: Some(1),
                    seen_then: None,
                    set_ok: true
                },
                Seen {
                    dropped: 1,
                    var_then: Some(20),
                    seen_then: Some(2),
                    set_ok: true
                },
            ]
        );
        assert_eq!(var_id(&VAR), Some(20));
        assert_eq!(SEEN.get(), 1);
    });
}

#[test]
fn drop_while_leaving_a_copy_run_many_times() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    isolated(|| {
        let n = iterations(200) as u32;
        for i in 0..n {
            copy_context().run(|| {
                drop(VAR.set(make(i, Some(i + 1_000_000))));
                drop(VAR.set(make(i + 2_000_000, None)));
            });
        }
        // Each round: i (by overwrite), then the 1_000_000s replacement, then the
        // 2_000_000s one, and nothing leaks out.
        assert!(!VAR.is_set());
        let log = LOG.lock().unwrap();
        assert_eq!(log.len(), 3 * n as usize);
        assert!(log.iter().all(|seen| seen.set_ok));
    });
}

#[test]
fn drop_at_thread_exit() {
    reentrant_setup!(VAR, SEEN, LOG, make);
    thread::spawn(move || {
        let _keep = SEEN.set(99);
        drop(VAR.set(make(1, Some(2))));
    })
    .join()
    .unwrap();
    let log = LOG.lock().unwrap().clone();
    // At thread exit the storage is gone: reads see no binding, sets fail (no panic).
    // The replacement (2) could not be set, so it was dropped at once, also in teardown.
    assert_eq!(
        log,
        vec![
            Seen {
                dropped: 1,
                var_then: None,
                seen_then: None,
                set_ok: false
            },
            Seen {
                dropped: 2,
                var_then: None,
                seen_then: None,
                set_ok: false
            },
        ]
    );
}

// ----- Clone during get ---------------------------------------------------------------

/// A value whose `Clone` sets a variable (the one it is read from, or another) while the
/// crate holds `&self` inside the current snapshot.
struct CloneSets {
    id: u32,
    target: &'static ContextVar<CloneSets>,
    other: &'static ContextVar<u32>,
    same_var: bool,
}

impl Clone for CloneSets {
    fn clone(&self) -> Self {
        mark_alive(addr(self));
        if self.same_var {
            let replacement = CloneSets {
                id: self.id + 1,
                ..*self
            };
            drop(self.target.set(replacement));
        } else {
            drop(self.other.set(self.id));
        }
        // `self` lives in the snapshot that was current when `get` started; the set above
        // replaced it (and dropped its token). It must still be alive.
        assert!(
            !was_dropped(addr(self)),
            "ContextVar::get: value freed during its Clone"
        );
        CloneSets {
            id: self.id,
            ..*self
        }
    }
}

impl Drop for CloneSets {
    fn drop(&mut self) {
        record_drop(addr(self));
    }
}

fn clone_sets_scenario(
    target: &'static ContextVar<CloneSets>,
    other: &'static ContextVar<u32>,
    same_var: bool,
) {
    drop(target.set(CloneSets {
        id: 1,
        target,
        other,
        same_var,
    }));
    let got = target.get();
    assert_eq!(got.id, 1);
    if same_var {
        assert_eq!(target.with(|value| value.id), 2);
    } else {
        assert_eq!(other.get(), 1);
        assert_eq!(target.with(|value| value.id), 1);
    }
}

#[test]
fn clone_sets_other_var_during_get_in_context() {
    static TARGET: ContextVar<CloneSets> = contextvars::context_var!(CloneSets, "target");
    static OTHER: ContextVar<u32> = contextvars::context_var!(u32, "other");
    isolated(|| clone_sets_scenario(&TARGET, &OTHER, false));
}

#[test]
fn clone_sets_same_var_during_get_in_context() {
    static TARGET: ContextVar<CloneSets> = contextvars::context_var!(CloneSets, "target");
    static OTHER: ContextVar<u32> = contextvars::context_var!(u32, "other");
    isolated(|| clone_sets_scenario(&TARGET, &OTHER, true));
}

#[test]
fn clone_sets_other_var_during_get_in_thread_base_context() {
    static TARGET: ContextVar<CloneSets> = contextvars::context_var!(CloneSets, "target");
    static OTHER: ContextVar<u32> = contextvars::context_var!(u32, "other");
    thread::spawn(|| clone_sets_scenario(&TARGET, &OTHER, false))
        .join()
        .unwrap();
}

#[test]
fn clone_sets_same_var_during_get_in_thread_base_context() {
    static TARGET: ContextVar<CloneSets> = contextvars::context_var!(CloneSets, "target");
    static OTHER: ContextVar<u32> = contextvars::context_var!(u32, "other");
    thread::spawn(|| clone_sets_scenario(&TARGET, &OTHER, true))
        .join()
        .unwrap();
}

// ----- `with` closures that change the context ----------------------------------------

/// A plain tracked value.
struct Tracked(u32);

impl Drop for Tracked {
    fn drop(&mut self) {
        record_drop(addr(self));
    }
}

/// Runs `change` inside `VAR.with(|v| ..)` and checks that `v` stays alive and readable.
fn with_survives(var: &'static ContextVar<Tracked>, change: impl FnOnce()) {
    drop(var.set(Tracked(7)));
    let read_after = var.with(|value| {
        mark_alive(addr(value));
        change();
        assert!(
            !was_dropped(addr(value)),
            "ContextVar::with: value freed inside the closure"
        );
        value.0
    });
    assert_eq!(read_after, 7);
}

#[test]
fn with_closure_sets_and_drops_token_in_context() {
    static VAR: ContextVar<Tracked> = contextvars::context_var!(Tracked, "var");
    isolated(|| {
        with_survives(&VAR, || {
            drop(VAR.set(Tracked(8)));
            assert_eq!(VAR.with(|v| v.0), 8);
        });
        assert_eq!(VAR.with(|v| v.0), 8);
    });
}

#[test]
fn with_closure_sets_and_drops_token_in_thread_base_context() {
    static VAR: ContextVar<Tracked> = contextvars::context_var!(Tracked, "var");
    thread::spawn(|| {
        with_survives(&VAR, || {
            drop(VAR.set(Tracked(8)));
            assert_eq!(VAR.with(|v| v.0), 8);
        });
        assert_eq!(VAR.with(|v| v.0), 8);
    })
    .join()
    .unwrap();
}

#[test]
fn with_closure_sets_and_resets() {
    static VAR: ContextVar<Tracked> = contextvars::context_var!(Tracked, "var");
    thread::spawn(|| {
        with_survives(&VAR, || {
            let token = VAR.set(Tracked(8));
            VAR.reset(token).unwrap();
            let token = VAR.set(Tracked(9));
            drop(VAR.set(Tracked(10)));
            VAR.reset(token).unwrap();
            assert_eq!(VAR.with(|v| v.0), 7);
        });
    })
    .join()
    .unwrap();
}

#[test]
fn with_closure_runs_other_contexts_and_scopes() {
    static VAR: ContextVar<Tracked> = contextvars::context_var!(Tracked, "var");
    isolated(|| {
        with_survives(&VAR, || {
            Context::new().run(|| drop(VAR.set(Tracked(1))));
            VAR.scope(Tracked(2), || assert_eq!(VAR.with(|v| v.0), 2));
            let ctx = copy_context();
            drop(VAR.set(Tracked(3)));
            drop(ctx);
            // Nested `with` that sets too.
            VAR.with(|inner| {
                mark_alive(addr(inner));
                drop(VAR.set(Tracked(4)));
                assert!(!was_dropped(addr(inner)));
                assert_eq!(inner.0, 3);
            });
        });
        assert_eq!(VAR.with(|v| v.0), 4);
    });
}

#[test]
fn with_or_closure_sets_and_drops_token() {
    static VAR: ContextVar<Tracked> = contextvars::context_var!(Tracked, "var");
    thread::spawn(|| {
        drop(VAR.set(Tracked(7)));
        let fallback = Tracked(0);
        let read = VAR.with_or(&fallback, |value| {
            mark_alive(addr(value));
            drop(VAR.set(Tracked(8)));
            assert!(
                !was_dropped(addr(value)),
                "with_or: value freed inside the closure"
            );
            value.0
        });
        assert_eq!(read, 7);
    })
    .join()
    .unwrap();
}
