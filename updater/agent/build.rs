//! The static musl release builds of the agent (the aarch64 device binary,
//! the x86_64 one the service benchmark runs) are linked with the
//! toolchain's own lld, for two things GNU ld cannot do:
//!
//! - **Function order** (`link/<target>.order`, made by `scripts/link-order`):
//!   the functions the sleeping daemon runs come first in `.text`, then a
//!   poll's, then an install's. The kernel maps a binary's pages 64 KiB at a
//!   time around each fault (fault-around), so code spread over the whole
//!   2 MiB text made an idle daemon hold most of it resident; packed, it
//!   holds a few hundred KiB (measured in `bench/service.sh`). Functions the
//!   file does not name (new code, a new toolchain's symbol hashes) keep the
//!   default place: a stale file costs memory, never correctness.
//! - **No unwind tables** on the device (`discard-unwind-tables.ld`, about
//!   320 KiB): the release profile builds with `panic = "abort"`, nothing
//!   ever unwinds, so the tables std and the C code (liblzma, ring) bring
//!   along are dead weight. A panic still prints its message and aborts;
//!   only a `RUST_BACKTRACE` trace comes out empty. (`-C
//!   force-unwind-tables=no` reaches neither the precompiled std nor the C
//!   objects.) Only for aarch64: the x86_64 build keeps them, so the
//!   benchmark's binary is the same code with a larger read-only segment.
//!
//! The linker also writes its map (where each function went) to
//! `OUT_DIR/atomup.map`: `scripts/link-order` makes the order from it, and
//! `scripts/build-device.sh` says how much of the order file the build
//! still found. The other targets and profiles (host tools, tests) link as
//! rustc does by default.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=discard-unwind-tables.ld");
    println!("cargo:rerun-if-changed=link");
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    if !target.ends_with("-unknown-linux-musl") || profile != "release" {
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let arg = |a: &str| println!("cargo:rustc-link-arg-bins={a}");
    match lld_dir() {
        Ok(dir) => {
            arg(&format!("-B{}", dir.display()));
            arg("-fuse-ld=lld");
            let order = here.join("link").join(format!("{target}.order"));
            println!("cargo:rerun-if-changed={}", order.display());
            if order.is_file() {
                arg(&format!("-Wl,--symbol-ordering-file={}", order.display()));
                arg("-Wl,--no-warn-symbol-ordering");
            }
            if let Some(out) = std::env::var_os("OUT_DIR") {
                let map = Path::new(&out).join("atomup.map");
                arg(&format!("-Wl,-Map={}", map.display()));
                arg("-Wl,--no-demangle");
            }
        }
        // Still a working binary, only with the default function order.
        Err(why) => println!("cargo:warning=linking with the default linker, unordered: {why}"),
    }
    if target == "aarch64-unknown-linux-musl" {
        let script = here.join("discard-unwind-tables.ld");
        arg(&format!("-Wl,-T,{}", script.display()));
    }
}

/// The directory of the toolchain's `ld.lld` driver for gcc (`-B` of it and
/// `-fuse-ld=lld` make the C compiler that links run rust-lld).
fn lld_dir() -> Result<PathBuf, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = std::env::var("HOST").map_err(|e| format!("HOST: {e}"))?;
    let out = std::process::Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("{rustc} --print sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    if dir.join("ld.lld").is_file() {
        Ok(dir)
    } else {
        Err(format!("no {}", dir.join("ld.lld").display()))
    }
}
