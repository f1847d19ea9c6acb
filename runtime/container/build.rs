//! Builds `amphi-shim` as a static Linux binary and hands its path to the crate, which embeds it.
//!
//! The shim runs inside images Amphi did not make (`FROM scratch` ones included), so it links
//! statically (`+crt-static`) and never depends on the image's libc. It is built with its own
//! target directory, so this nested cargo does not wait on the outer one's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let shim_dir = workspace_root.join("runtime/container-shim");
    for watched in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", shim_dir.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", workspace_root.join("runtime/contract/src").display());
    println!("cargo:rerun-if-changed={}", workspace_root.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed=build.rs");

    let target = env::var("TARGET").expect("set by cargo");
    if !target.contains("linux") {
        panic!("the container backend runs on Linux only (target {target})");
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("shim");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace_root)
        .args(["build", "--release", "--locked", "-p", "amphi-shim", "--target", &target, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Embedded in every `amphi` binary: keep it small.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        // The outer build's settings are for the outer build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("run cargo to build amphi-shim");
    assert!(status.success(), "building amphi-shim failed");
    let binary = target_dir.join(&target).join("release/amphi-shim");
    println!("cargo:rustc-env=AMPHI_SHIM_BINARY={}", binary.display());
}
