//! Compiling C functions for `wasm32-wasi` against wasi-libc.

use std::path::Path;
use std::process::Command;

use crate::ToolchainError;

/// Compiles one C file into a WASI preview1 command module, with wasi-sdk when `WASI_SDK_PATH` is
/// set, else Debian's clang-19 and wasi-libc.
pub fn compile_c_to_wasm(source: &Path, output: &Path) -> Result<(), ToolchainError> {
    let (clang, sysroot) = match std::env::var("WASI_SDK_PATH") {
        Ok(sdk) => (format!("{sdk}/bin/clang"), format!("{sdk}/share/wasi-sysroot")),
        Err(_) => ("clang-19".to_string(), "/usr".to_string()),
    };
    let status = Command::new(&clang)
        .args(["--target=wasm32-wasi", "-O2", "-Wall", "-Werror"])
        .arg(format!("--sysroot={sysroot}"))
        .arg(source)
        .arg("-o")
        .arg(output)
        .status()
        .map_err(|error| ToolchainError::Spawn {
            program: clang.clone(),
            error,
            hint: "; install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32, or set WASI_SDK_PATH"
                .into(),
        })?;
    if !status.success() {
        return Err(ToolchainError::Failed { what: format!("compiling {}", source.display()), status });
    }
    Ok(())
}
