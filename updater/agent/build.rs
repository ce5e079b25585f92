//! Drops the unwind tables (`.eh_frame`, about 320 KiB) from the device
//! binary. The release profile builds with `panic = "abort"`: nothing ever
//! unwinds, so the tables std and the C code (liblzma, ring) bring along are
//! dead weight. A panic still prints its message and aborts; only a
//! `RUST_BACKTRACE` trace comes out empty. (`-C force-unwind-tables=no` does
//! not reach the precompiled std nor the C objects.) Only for the static
//! aarch64 release build: the other profiles unwind (tests, `bench-host`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=discard-unwind-tables.ld");
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    if target == "aarch64-unknown-linux-musl" && profile == "release" {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("discard-unwind-tables.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
