//! More inline variables than the read cache has inline slots (63): the ones past the
//! 63rd take ids from 2^40 and read through slot 0, which never hits, so every read of
//! theirs is a lookup. Each must still read its own value, in and out of scopes, after
//! switches, and next to the cached ones. (A test binary of its own: ids are assigned
//! per process, in order of first use.)

use contextvars::{Context, context_var, copy_context};

context_var! {
    static V0: u64;
    static V1: u64;
    static V2: u64;
    static V3: u64;
    static V4: u64;
    static V5: u64;
    static V6: u64;
    static V7: u64;
    static V8: u64;
    static V9: u64;
    static V10: u64;
    static V11: u64;
    static V12: u64;
    static V13: u64;
    static V14: u64;
    static V15: u64;
    static V16: u64;
    static V17: u64;
    static V18: u64;
    static V19: u64;
    static V20: u64;
    static V21: u64;
    static V22: u64;
    static V23: u64;
    static V24: u64;
    static V25: u64;
    static V26: u64;
    static V27: u64;
    static V28: u64;
    static V29: u64;
    static V30: u64;
    static V31: u64;
    static V32: u64;
    static V33: u64;
    static V34: u64;
    static V35: u64;
    static V36: u64;
    static V37: u64;
    static V38: u64;
    static V39: u64;
    static V40: u64;
    static V41: u64;
    static V42: u64;
    static V43: u64;
    static V44: u64;
    static V45: u64;
    static V46: u64;
    static V47: u64;
    static V48: u64;
    static V49: u64;
    static V50: u64;
    static V51: u64;
    static V52: u64;
    static V53: u64;
    static V54: u64;
    static V55: u64;
    static V56: u64;
    static V57: u64;
    static V58: u64;
    static V59: u64;
    static V60: u64;
    static V61: u64;
    static V62: u64;
    static V63: u64;
    static V64: u64;
    static V65: u64;
    static V66: u64;
    static V67: u64;
    static V68: u64;
    static V69: u64;
}

/// Every variable, in declaration order.
static ALL: [&contextvars::ContextVar<u64>; 70] = [
    &V0, &V1, &V2, &V3, &V4, &V5, &V6, &V7, &V8, &V9, &V10, &V11, &V12, &V13, &V14, &V15, &V16,
    &V17, &V18, &V19, &V20, &V21, &V22, &V23, &V24, &V25, &V26, &V27, &V28, &V29, &V30, &V31, &V32,
    &V33, &V34, &V35, &V36, &V37, &V38, &V39, &V40, &V41, &V42, &V43, &V44, &V45, &V46, &V47, &V48,
    &V49, &V50, &V51, &V52, &V53, &V54, &V55, &V56, &V57, &V58, &V59, &V60, &V61, &V62, &V63, &V64,
    &V65, &V66, &V67, &V68, &V69,
];

fn expect_all(offset: u64) {
    for (i, var) in ALL.iter().enumerate() {
        assert_eq!(var.get(), i as u64 + offset, "variable {i}");
    }
}

#[test]
fn variables_past_the_cache_read_their_own_values() {
    std::thread::spawn(|| {
        // First use in declaration order: V0 to V62 take the cache's inline ids.
        let tokens: Vec<_> = ALL
            .iter()
            .enumerate()
            .map(|(i, var)| var.set(i as u64))
            .collect();
        assert!(V0.id().as_u64() < 64);
        assert!(V69.id().as_u64() >= 1 << 40, "past the cache");
        expect_all(0);
        expect_all(0); // the second round reads the cached ones from their slots
        // A scope of a variable past the cache, and of one in it, over reads of all.
        V69.scope(1000, || {
            assert_eq!(V69.get(), 1000);
            assert_eq!(V68.get(), 68);
            V5.scope(2000, || {
                assert_eq!(V5.get(), 2000);
                assert_eq!(V69.get(), 1000);
                assert_eq!(V66.get(), 66);
            });
            assert_eq!(V5.get(), 5);
        });
        expect_all(0);
        // Switches: a copy (same snapshot), a fresh context, and back.
        let copy = copy_context();
        copy.run(|| expect_all(0));
        Context::new().run(|| {
            assert_eq!(V69.try_get().ok(), None);
            assert_eq!(V0.try_get().ok(), None);
            drop(V69.set(7));
            drop(V0.set(8));
            assert_eq!((V69.get(), V0.get()), (7, 8));
        });
        expect_all(0);
        // Sets past the cache and in it, then resets in reverse order.
        let more: Vec<_> = ALL
            .iter()
            .enumerate()
            .map(|(i, var)| var.set(i as u64 + 100))
            .collect();
        expect_all(100);
        for (var, token) in ALL.iter().zip(more).rev() {
            var.reset(token).unwrap();
        }
        expect_all(0);
        for (var, token) in ALL.iter().zip(tokens).rev() {
            var.reset(token).unwrap();
        }
        assert!(ALL.iter().all(|var| var.try_get().is_err()));
    })
    .join()
    .unwrap();
}
