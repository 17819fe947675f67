//! Builds the default guest component (`guest-sdk/rhai-guest`) for
//! wasm32-wasip2 and hands its path to the host as `PEERHOST_GUEST_WASM`, so
//! the binary embeds it. Installs the wasm32-wasip2 target with rustup when
//! it is missing. The guest has its own target directory (`target/guest`):
//! a nested cargo must never wait on the lock of the build that runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    for watched in [
        "wit",
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "guest-sdk/rhai-guest/src",
        "guest-sdk/rhai-guest/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_target();
    let target_dir = root.join("target").join("guest");
    let mut build = Command::new(&cargo);
    build
        .current_dir(&root)
        .args([
            "rustc",
            "--package",
            "peerhost-rhai-guest",
            "--lib",
            "--crate-type",
            "cdylib",
        ])
        .args(["--target", TARGET, "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_PATH",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("could not run {cargo}: {e}"));
    if !status.success() {
        panic!(
            "building the guest component failed (see the cargo output above); try `make guest`"
        );
    }
    let wasm = target_dir
        .join(TARGET)
        .join("guest")
        .join("peerhost_rhai_guest.wasm");
    if !Path::new(&wasm).exists() {
        panic!(
            "the guest build succeeded but {} is missing",
            wasm.display()
        );
    }
    println!("cargo:rustc-env=PEERHOST_GUEST_WASM={}", wasm.display());
}

/// Installs the wasm32-wasip2 standard library with rustup if it is missing.
fn ensure_target() {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    if let Some(sysroot) = sysroot
        && sysroot.join("lib/rustlib").join(TARGET).exists()
    {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (once)");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and rebuild"
        ),
    }
}
