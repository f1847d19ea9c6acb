//! `amphi build`: an SDK function crate, built for either backend.

use std::path::PathBuf;
use std::process::ExitCode;

use amphi_toolchain::{ArtifactTarget, FunctionCrate, RustToolchain};
use anyhow::{Context as _, Result};

/// Which backend to build for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BuildTarget {
    /// A wasi:http component: `amphi deploy NAME file.wasm`.
    Wasm,
    /// A build context (static binary + Dockerfile): `amphi deploy NAME DIR --dockerfile`.
    Container,
}

/// Build an SDK function (a binary crate calling `amphi_sdk::main!`).
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The function crate's directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The backend to build for.
    #[arg(long, value_enum, default_value = "wasm")]
    pub target: BuildTarget,
}

/// Builds the crate with cargo (output streams to the terminal) and says how to deploy it.
pub async fn run(args: BuildArgs) -> Result<ExitCode> {
    let built = tokio::task::spawn_blocking(move || -> Result<(String, PathBuf, BuildTarget)> {
        let function = FunctionCrate::locate(&args.dir)?;
        let toolchain = RustToolchain::detect();
        let backend = match args.target {
            BuildTarget::Wasm => {
                eprintln!("Building {} for wasm32-wasip1 with {}", function.package, toolchain.describe());
                ArtifactTarget::Wasm
            }
            BuildTarget::Container => {
                eprintln!("Building {} as a static binary for a container image", function.package);
                ArtifactTarget::Container
            }
        };
        let path = function.build(&toolchain, backend)?;
        Ok((function.bin, path, args.target))
    })
    .await
    .context("the build task failed")??;
    let (name, path, target) = built;
    println!("{}", path.display());
    let flag = match target {
        BuildTarget::Wasm => "",
        BuildTarget::Container => " --dockerfile",
    };
    eprintln!("Deploy it with: amphi deploy {name} {}{flag}", path.display());
    Ok(ExitCode::SUCCESS)
}
