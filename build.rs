//! Tells the crate whether it is built for ThreadSanitizer, which does not model memory
//! fences (`cfg(sanitize = "thread")` is not stable; crossbeam's build scripts do the
//! same). Under it, `sync::unique_mut` uses `Arc::get_mut` instead of a fence.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(contextvars_sanitize_thread)");
    let sanitize = std::env::var("CARGO_CFG_SANITIZE").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if sanitize.split(',').any(|s| s == "thread") || target == "x86_64-unknown-linux-gnutsan" {
        println!("cargo:rustc-cfg=contextvars_sanitize_thread");
    }
}
