//! Turning a function's source into what Amphi deploys.
//!
//! Used by `amphi build` and `amphi deploy` (the user's functions) and by the build script of
//! `amphi-guest-artifacts` (Amphi's own test guests), so both go through the same steps:
//! - [`RustToolchain`] finds a way to compile Rust for `wasm32-wasip1` on this machine (rustup's
//!   target where installed, else Debian's `rustc-web` building std itself)
//!   and builds packages for wasm or as static native binaries;
//! - [`componentize`] makes a core module a component with a WASI preview1 adapter;
//! - [`compile_c_to_wasm`] compiles C against wasi-libc;
//! - [`FunctionCrate`] is an SDK function crate, built for either backend;
//! - [`pack`] packs a build context, honouring `.dockerignore`.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

mod c;
mod component;
mod function;
pub mod pack;
mod rust;

pub use c::compile_c_to_wasm;
pub use component::{Adapter, componentize};
pub use function::{ArtifactTarget, FunctionCrate};
pub use rust::{DEBIAN_PACKAGES, RustToolchain};

/// Why a build did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// Nothing on this machine compiles Rust for `wasm32-wasip1`.
    #[error(
        "no toolchain can build for wasm32-wasip1; install one of:\n  rustup target add wasm32-wasip1\n  apt-get install -y {DEBIAN_PACKAGES}"
    )]
    NoWasmToolchain,
    /// A tool could not be started.
    #[error("cannot run {program}: {error}{hint}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
        /// What to install, when known.
        hint: String,
    },
    /// A tool ran and failed; its own output says why.
    #[error("{what} failed ({status})")]
    Failed {
        /// What was being built.
        what: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The input is not what the step needs.
    #[error("{0}")]
    Invalid(String),
}

impl ToolchainError {
    pub(crate) fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().to_path_buf(), error }
    }
}
