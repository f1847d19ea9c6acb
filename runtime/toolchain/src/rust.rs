//! Compiling Rust functions: for `wasm32-wasip1` with whatever this machine has, or as static
//! native binaries for container images.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ToolchainError;

/// The Debian packages that build Rust (and C) for wasm32 without rustup's target.
pub const DEBIAN_PACKAGES: &str =
    "rustc-web cargo-web rust-web-src wasi-libc lld-19 clang-19 libclang-rt-19-dev-wasm32";
const DEBIAN_WASI_LIBDIR: &str = "/usr/lib/wasm32-wasi";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-19/bin/wasm-ld";
const WASM_TARGET: &str = "wasm32-wasip1";

/// The cargo that builds for `wasm32-wasip1`, and the one that builds natively.
#[derive(Debug, Clone)]
pub struct RustToolchain {
    wasm: Option<WasmRust>,
    native_cargo: String,
    isolated: bool,
}

#[derive(Debug, Clone)]
enum WasmRust {
    /// rustup's cargo with the `wasm32-wasip1` target installed (a developer's laptop).
    Rustup,
    /// Debian's `rustc-web` with its library sources, building `std` for wasm32 itself
    /// (`-Zbuild-std`), linked with `wasm-ld` against Debian's `wasi-libc`.
    DebianBuildStd,
}

impl RustToolchain {
    /// Finds the best way this machine has to build for `wasm32-wasip1`: rustup's target if it is
    /// installed, else Debian's packages. Without either, wasm builds fail with
    /// [`ToolchainError::NoWasmToolchain`] (which says what to install); native builds still work.
    pub fn detect() -> Self {
        let native_cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let rustup_target = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|t| t == WASM_TARGET))
            .unwrap_or(false);
        let wasm = if rustup_target {
            Some(WasmRust::Rustup)
        } else if Path::new("/usr/bin/rustc").exists()
            && Path::new("/usr/lib/rustlib/src/rust/library").exists()
            && Path::new(DEBIAN_WASM_LD).exists()
            && Path::new(DEBIAN_WASI_LIBDIR).join("crt1-command.o").exists()
        {
            Some(WasmRust::DebianBuildStd)
        } else {
            None
        };
        Self { wasm, native_cargo, isolated: false }
    }

    /// Keeps the calling cargo's settings (its `CARGO_*` and `RUST*` variables) out of the builds:
    /// for build scripts, whose environment describes the outer build.
    pub fn isolated(mut self) -> Self {
        self.isolated = true;
        self
    }

    /// Which toolchain builds wasm, for messages.
    pub fn describe(&self) -> &'static str {
        match self.wasm {
            Some(WasmRust::Rustup) => "rustup's wasm32-wasip1 target",
            Some(WasmRust::DebianBuildStd) => "Debian's rustc-web with -Zbuild-std",
            None => "none",
        }
    }

    /// Builds `package` of the workspace in `workspace` for `wasm32-wasip1` in release mode:
    /// its binary `bin` as a WASI command module, or without one its `cdylib`. Returns the module.
    pub fn build_wasm(
        &self,
        workspace: &Path,
        target_dir: &Path,
        package: &str,
        bin: Option<&str>,
    ) -> Result<PathBuf, ToolchainError> {
        let wasm = self.wasm.as_ref().ok_or(ToolchainError::NoWasmToolchain)?;
        let mut cmd = self.cargo(match wasm {
            WasmRust::Rustup => &self.native_cargo,
            WasmRust::DebianBuildStd => "/usr/bin/cargo",
        });
        cmd.current_dir(workspace)
            .arg(if bin.is_some() { "rustc" } else { "build" })
            .args(["--release", "--locked", "--target", WASM_TARGET, "-p", package])
            .arg("--target-dir")
            .arg(target_dir);
        if let Some(bin) = bin {
            cmd.args(["--bin", bin]);
        }
        if let WasmRust::DebianBuildStd = wasm {
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(
                    "RUSTFLAGS",
                    format!("-C linker={DEBIAN_WASM_LD} -C link-self-contained=no -L {DEBIAN_WASI_LIBDIR}"),
                )
                .args(["-Zbuild-std=std,panic_abort"]);
            if bin.is_some() {
                // Only the final binary gets the command entry point; std stays shared with
                // library guests because RUSTFLAGS are the same for both.
                cmd.args(["--", "-C"]).arg(format!("link-arg={DEBIAN_WASI_LIBDIR}/crt1-command.o"));
            }
        }
        run(cmd, &format!("building {package} for {WASM_TARGET}"))?;
        let file = match bin {
            Some(bin) => format!("{bin}.wasm"),
            None => format!("{}.wasm", package.replace('-', "_")),
        };
        Ok(target_dir.join(WASM_TARGET).join("release").join(file))
    }

    /// Builds the binary `bin` of `package` for this machine, statically linked (`+crt-static`), so
    /// it runs in any Linux image, `FROM scratch` included. Returns the binary.
    pub fn build_native_static(
        &self,
        workspace: &Path,
        target_dir: &Path,
        package: &str,
        bin: &str,
    ) -> Result<PathBuf, ToolchainError> {
        let host = host_triple()?;
        let mut cmd = self.cargo(&self.native_cargo);
        cmd.current_dir(workspace)
            .args(["build", "--release", "--locked", "-p", package, "--bin", bin, "--target", &host])
            .arg("--target-dir")
            .arg(target_dir)
            // With an explicit --target, these flags reach the binary, not build scripts.
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
        run(cmd, &format!("building {package} for {host}"))?;
        Ok(target_dir.join(host).join("release").join(bin))
    }

    fn cargo(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if self.isolated {
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if (key.starts_with("CARGO") || key.starts_with("RUST")) && key != "CARGO_HOME" {
                    cmd.env_remove(key.as_ref());
                }
            }
        }
        cmd
    }
}

/// The triple of the machine's default Rust toolchain.
fn host_triple() -> Result<String, ToolchainError> {
    let output = Command::new("rustc").arg("-vV").output().map_err(|error| ToolchainError::Spawn {
        program: "rustc".into(),
        error,
        hint: "; install Rust with rustup (https://rustup.rs)".into(),
    })?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| ToolchainError::Invalid("`rustc -vV` did not name the host triple".into()))
}

fn run(mut cmd: Command, what: &str) -> Result<(), ToolchainError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status =
        cmd.status().map_err(|error| ToolchainError::Spawn { program, error, hint: String::new() })?;
    if !status.success() {
        return Err(ToolchainError::Failed { what: what.to_string(), status });
    }
    Ok(())
}
