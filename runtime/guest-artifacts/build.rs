//! Builds the guests in `guest-examples/` from source for the tests, the conformance suite and the
//! benchmarks, with the same steps `amphi build` takes for a user (`amphi-toolchain`).
//!
//! Rust guests are compiled for `wasm32-wasip1` with the best toolchain this machine has
//! (rustup's target, else Debian's `rustc-web` building `std` itself); C guests with clang against
//! wasi-libc (wasi-sdk when `WASI_SDK_PATH` is set).
//!
//! `rust-http` is made a component with the preview1 *reactor* adapter, so it may import the
//! WASI CLI interfaces; SDK functions get the *proxy* adapter, as `amphi build` gives them.

use std::env;
use std::path::{Path, PathBuf};

use amphi_toolchain::{Adapter, ArtifactTarget, FunctionCrate, RustToolchain, ToolchainError};

fn main() {
    if let Err(e) = build() {
        panic!("building the guests failed: {e}");
    }
}

fn build() -> Result<(), ToolchainError> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let guests = workspace_root.join("guest-examples");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("wasm-guests");

    for watched in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-http",
        "rust-p3",
        "rust-cgi",
        "c-cgi",
        "sdk-hello",
        "sdk-init",
        "conformance",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", workspace_root.join("sdk").display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WASI_SDK_PATH");

    let toolchain = RustToolchain::detect().isolated();

    let core = toolchain.build_wasm(&guests, &target_dir, "rust-http", None)?;
    let component = amphi_toolchain::componentize(&read(&core)?, Adapter::Reactor)?;
    // Beside the other guests, at a stable path the README's tour can name.
    let component_path = target_dir.join("rust-http.component.wasm");
    write(&component_path, &component)?;
    export("RUST_HTTP_COMPONENT", &component_path);

    // WASI 0.3: async exports lifted with the component-model-async ABI; std's preview1 calls
    // (stdout, environment) still go through the reactor adapter to WASI 0.2.
    let p3_core = toolchain.build_wasm(&guests, &target_dir, "rust-p3", None)?;
    let p3_path = target_dir.join("rust-p3.component.wasm");
    write(&p3_path, &amphi_toolchain::componentize(&read(&p3_core)?, Adapter::Reactor)?)?;
    export("RUST_P3_COMPONENT", &p3_path);

    export("RUST_CGI_MODULE", &toolchain.build_wasm(&guests, &target_dir, "rust-cgi", Some("rust-cgi"))?);

    let c_cgi = target_dir.join("c-cgi.wasm");
    amphi_toolchain::compile_c_to_wasm(&guests.join("c-cgi/echo.c"), &c_cgi)?;
    export("C_CGI_MODULE", &c_cgi);

    let sdk_function = |dir: &str, package: &str| FunctionCrate {
        dir: guests.join(dir),
        package: package.to_string(),
        bin: package.to_string(),
        target_dir: target_dir.clone(),
    };
    export(
        "SDK_HELLO_COMPONENT",
        &sdk_function("sdk-hello", "sdk-hello").build(&toolchain, ArtifactTarget::Wasm)?,
    );

    export(
        "SDK_INIT_COMPONENT",
        &sdk_function("sdk-init", "sdk-init").build(&toolchain, ArtifactTarget::Wasm)?,
    );

    let conformance = sdk_function("conformance/rust-sdk", "conformance-rust-sdk");
    export("CONFORMANCE_SDK_COMPONENT", &conformance.build(&toolchain, ArtifactTarget::Wasm)?);
    export("CONFORMANCE_SDK_CONTEXT", &conformance.build(&toolchain, ArtifactTarget::Container)?);
    let cgi = target_dir.join("conformance-c-cgi.wasm");
    amphi_toolchain::compile_c_to_wasm(&guests.join("conformance/c-cgi/cgi.c"), &cgi)?;
    export("CONFORMANCE_CGI_MODULE", &cgi);
    export("CONFORMANCE_CGI_CONTEXT", &guests.join("conformance/c-cgi"));
    export("CONFORMANCE_PYTHON_CONTEXT", &guests.join("conformance/python-http"));
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, ToolchainError> {
    std::fs::read(path).map_err(|error| ToolchainError::Io { path: path.to_path_buf(), error })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ToolchainError> {
    std::fs::write(path, bytes).map_err(|error| ToolchainError::Io { path: path.to_path_buf(), error })
}

fn export(name: &str, path: &Path) {
    println!("cargo:rustc-env=AMPHI_GUEST_{name}={}", path.display());
}
