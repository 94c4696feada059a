//! Build script: the release server's running code laid out side by side, and a rebuild
//! whenever a migration is added.
//!
//! `src/link/ferry.order` (written by `bench/order`) lists the functions a serving ferry runs.
//! The kernel maps a program's code in 64 KiB windows around each page it touches, so packing
//! those functions together keeps about 2 MB less of the binary resident. Only for the release
//! profile on x86_64 Linux with Rust's default linker (rust-lld), which takes the list; names
//! missing from the binary (after a dependency update) are skipped without a word.

fn main() {
    println!("cargo:rerun-if-changed=src/link/ferry.order");
    // `sqlx::migrate!` embeds migrations/ at compile time: a new file there must rebuild ferry.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let default_linker = var("TARGET") == "x86_64-unknown-linux-gnu"
        && !["linker", "fuse-ld"]
            .iter()
            .any(|k| var("CARGO_ENCODED_RUSTFLAGS").contains(k))
        && std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_none();
    if release && default_linker {
        let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("src/link/ferry.order");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
