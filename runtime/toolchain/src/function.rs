//! An SDK function crate, built for either backend (`amphi build`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Adapter, RustToolchain, ToolchainError, componentize};

/// The image a container build context gets when the crate has no `Dockerfile` of its own.
const DEFAULT_DOCKERFILE: &str = "\
# Written by `amphi build --target container`: the function's static binary, alone.
FROM scratch
COPY function /function
USER 65534:65534
ENTRYPOINT [\"/function\"]
";

/// What to build a function crate into: the artifact one backend or the other deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactTarget {
    /// A `wasi:http/incoming-handler` component (`.wasm`).
    Wasm,
    /// A build context: the static binary and a Dockerfile.
    Container,
}

/// A binary crate whose `main` is `amphi_sdk::main!`.
#[derive(Debug, Clone)]
pub struct FunctionCrate {
    /// The crate's directory (where cargo runs).
    pub dir: PathBuf,
    /// The package name.
    pub package: String,
    /// The binary target's name.
    pub bin: String,
    /// Cargo's target directory; built functions go to its `amphi/` folder.
    pub target_dir: PathBuf,
}

impl FunctionCrate {
    /// Reads the crate in `dir` with `cargo metadata`.
    pub fn locate(dir: &Path) -> Result<Self, ToolchainError> {
        let manifest = dir.join("Cargo.toml");
        let manifest = manifest.canonicalize().map_err(|e| ToolchainError::io(&manifest, e))?;
        let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
            .arg(&manifest)
            .output()
            .map_err(|error| ToolchainError::Spawn { program: "cargo".into(), error, hint: String::new() })?;
        if !output.status.success() {
            return Err(ToolchainError::Invalid(format!(
                "cargo cannot read {}: {}",
                manifest.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| ToolchainError::Invalid(format!("cargo metadata printed no JSON: {e}")))?;
        let package = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
            .ok_or_else(|| ToolchainError::Invalid(format!("no package in {}", manifest.display())))?;
        let name = package["name"].as_str().unwrap_or_default().to_string();
        let bin = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "bin")))
            .and_then(|t| t["name"].as_str())
            .ok_or_else(|| {
                ToolchainError::Invalid(format!(
                    "{name} has no binary target: an Amphi function is a binary crate whose src/main.rs calls amphi_sdk::main!"
                ))
            })?
            .to_string();
        let target_dir =
            metadata["target_directory"].as_str().map(PathBuf::from).unwrap_or(dir.join("target"));
        let dir = manifest.parent().unwrap_or(dir).to_path_buf();
        Ok(Self { dir, package: name, bin, target_dir })
    }

    /// Builds the function for `backend`. Returns the component (wasm) or the build context
    /// directory (container), under `target_dir/amphi/`.
    pub fn build(
        &self,
        toolchain: &RustToolchain,
        target: ArtifactTarget,
    ) -> Result<PathBuf, ToolchainError> {
        let out = self.target_dir.join("amphi");
        std::fs::create_dir_all(&out).map_err(|e| ToolchainError::io(&out, e))?;
        match target {
            ArtifactTarget::Wasm => {
                let module =
                    toolchain.build_wasm(&self.dir, &self.target_dir, &self.package, Some(&self.bin))?;
                let core = std::fs::read(&module).map_err(|e| ToolchainError::io(&module, e))?;
                let component = componentize(&core, Adapter::Proxy)?;
                let path = out.join(format!("{}.wasm", self.bin));
                std::fs::write(&path, component).map_err(|e| ToolchainError::io(&path, e))?;
                Ok(path)
            }
            ArtifactTarget::Container => {
                let binary =
                    toolchain.build_native_static(&self.dir, &self.target_dir, &self.package, &self.bin)?;
                let context = out.join(format!("{}-container", self.bin));
                let _ = std::fs::remove_dir_all(&context);
                std::fs::create_dir_all(&context).map_err(|e| ToolchainError::io(&context, e))?;
                std::fs::copy(&binary, context.join("function"))
                    .map_err(|e| ToolchainError::io(&binary, e))?;
                let own = self.dir.join("Dockerfile");
                let dockerfile = match std::fs::read_to_string(&own) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT_DOCKERFILE.to_string(),
                    Err(e) => return Err(ToolchainError::io(&own, e)),
                };
                let path = context.join("Dockerfile");
                std::fs::write(&path, dockerfile).map_err(|e| ToolchainError::io(&path, e))?;
                Ok(context)
            }
        }
    }
}
