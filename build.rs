//! Links the binary with packed relative relocations (DT_RELR) where the C library can
//! load them: glibc 2.36 or later on the machine that builds it, as in the image's build
//! stage (Debian 12, like its distroless base). The dynamic loader then reads about
//! 10 KiB of relocations at start instead of several hundred, which an idle sidecar
//! would keep resident (BENCHMARKS.md). An older glibc refuses such a binary, so there
//! (and when cross-compiling, where the target's glibc is unknown) the flag is left out.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |key: &str| std::env::var(key).unwrap_or_default();
    let native = var("TARGET") == var("HOST");
    let gnu_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if native && gnu_linux && glibc_at_least((2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc is at least `wanted` (`getconf GNU_LIBC_VERSION` prints
/// "glibc 2.36"); false when that cannot be told.
fn glibc_at_least(wanted: (u32, u32)) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= wanted,
        _ => false,
    }
}
