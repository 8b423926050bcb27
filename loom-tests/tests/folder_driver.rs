//! The rayon folder path of `in_copied_context()` under loom, driven by hand.
//!
//! rayon's plumbing traits are public, so any safe code can decide where a folder made by
//! `in_copied_context()` is made, fed and completed. Before issue 11 the folder held a
//! guard that switched the thread's frame until it was dropped; a folder made inside
//! `a.run` and completed outside it left the thread running in `a` after `a`'s entered
//! flag was released, so another thread could enter `a` at the same time and, at thread
//! exit, free the snapshot the other was reading.
//!
//! * `folder_outside_run`: a hand-written `ParallelIterator` (no pool is started, so
//!   loom sees every thread) makes the folder inside `a.try_run`, sets a variable in
//!   `a`, then feeds and completes the folder outside any run, while the model's main
//!   thread races to run `a`. Every item sees the outer capture (never `a`'s values, never
//!   an earlier item's set), the worker's own value is untouched afterwards, and `a` is
//!   entered by at most one thread at a time (its runner sees `a`'s initial value or the
//!   worker's set in it, never a torn state); loom's leak and access checks cover the
//!   snapshots.

#[cfg(loom)]
mod tests {
    use std::cell::Cell;

    use contextvars::rayon::ParallelIteratorExt;
    use contextvars::{Context, ContextVar};
    use loom::sync::Arc;
    use loom::thread;
    use loom_tests::model;
    use rayon::iter::ParallelIterator;
    use rayon::iter::plumbing::{Folder, UnindexedConsumer};

    static X: ContextVar<u32> = contextvars::context_var!(u32, "x");

    /// The hostile driver: makes the folder inside `a.try_run` (or outside, if the main
    /// thread holds `a`), then feeds and completes it outside any run.
    struct Driver(Arc<Context>);

    impl ParallelIterator for Driver {
        type Item = u32;

        fn drive_unindexed<C: UnindexedConsumer<u32>>(self, consumer: C) -> C::Result {
            let slot = Cell::new(Some(consumer));
            let made_in_a = self.0.try_run(|| {
                let folder = slot.take().expect("consumer").into_folder();
                drop(X.set(5)); // `a`'s own set, made after the folder
                folder
            });
            let folder = match made_in_a {
                Ok(folder) => folder,
                Err(_) => slot.take().expect("consumer").into_folder(),
            };
            folder.consume(1).consume_iter(vec![2, 3]).complete()
        }
    }

    #[test]
    fn folder_outside_run() {
        model("folder_outside_run", || {
            let a = Arc::new(Context::new().with_value(&X, 1));
            let worker = {
                let a = a.clone();
                thread::spawn(move || {
                    let _own = X.set(100);
                    let seen = std::sync::Mutex::new(Vec::new());
                    Driver(a).in_copied_context().for_each(|item| {
                        let value = X.get();
                        drop(X.set(value + item)); // stays in the item
                        seen.lock().unwrap().push(value);
                    });
                    assert_eq!(X.get(), 100, "the worker's own value changed");
                    seen.into_inner().unwrap()
                })
            };
            if let Ok(value) = a.try_run(|| {
                let value = X.get();
                drop(X.set(7));
                value
            }) {
                assert!(value == 1 || value == 5, "a's runner saw {value}");
            }
            let seen = worker.join().unwrap();
            assert_eq!(seen, [100, 100, 100], "items saw another capture or item");
        });
    }
}
