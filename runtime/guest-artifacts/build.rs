//! Builds the guests in `guest-examples/` from source for the tests and the benchmarks.
//!
//! Rust guests are compiled for `wasm32-wasip1` with the best toolchain this machine has:
//! 1. a rustup toolchain with the `wasm32-wasip1` target installed (a developer's laptop); else
//! 2. Debian's `rustc-web` with its library sources, building `std` for wasm32 itself
//!    (`-Zbuild-std`), linked with `wasm-ld` against Debian's `wasi-libc`.
//!
//! The `wasi:http` guest is then wrapped into a component with the preview1 *reactor* adapter: it
//! exports `wasi:http/incoming-handler` and may import the WASI CLI interfaces (environment,
//! clocks, random, stdio). The stricter *proxy* adapter would drop `wasi:cli/environment`, and
//! with it the env vars a function's config grants.
//! C guests are compiled with clang against wasi-libc (wasi-sdk when `WASI_SDK_PATH` is set).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_PACKAGES: &str =
    "rustc-web cargo-web rust-web-src wasi-libc lld-19 clang-19 libclang-rt-19-dev-wasm32";
const DEBIAN_WASI_LIBDIR: &str = "/usr/lib/wasm32-wasi";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-19/bin/wasm-ld";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let guests = workspace_root.join("guest-examples");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("wasm-guests");

    for watched in ["Cargo.toml", "Cargo.lock", "rust-http", "rust-cgi", "c-cgi"] {
        println!("cargo:rerun-if-changed={}", guests.join(watched).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WASI_SDK_PATH");

    let toolchain = RustToolchain::detect();
    let wasm_dir = target_dir.join("wasm32-wasip1/release");

    toolchain.build(&guests, &target_dir, "rust-http", None);
    let core = std::fs::read(wasm_dir.join("rust_http.wasm")).expect("rust-http was built");
    let component = componentize(&core);
    // Beside the other guests, at a stable path the README's tour can name.
    let component_path = target_dir.join("rust-http.component.wasm");
    std::fs::write(&component_path, component).expect("write component");
    export("RUST_HTTP_COMPONENT", &component_path);

    toolchain.build(&guests, &target_dir, "rust-cgi", Some("rust-cgi"));
    export("RUST_CGI_MODULE", &wasm_dir.join("rust-cgi.wasm"));

    let c_cgi = target_dir.join("c-cgi.wasm");
    build_c(&guests.join("c-cgi/echo.c"), &c_cgi);
    export("C_CGI_MODULE", &c_cgi);
}

fn export(name: &str, path: &Path) {
    println!("cargo:rustc-env=AMPHI_GUEST_{name}={}", path.display());
}

enum RustToolchain {
    /// rustup's cargo with the `wasm32-wasip1` target installed.
    Rustup { cargo: String },
    /// Debian's rustc-web, building std from source.
    DebianBuildStd,
}

impl RustToolchain {
    fn detect() -> Self {
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|t| t == "wasm32-wasip1"))
            .unwrap_or(false);
        if installed {
            return Self::Rustup { cargo };
        }
        let debian_ready = Path::new("/usr/bin/rustc").exists()
            && Path::new("/usr/lib/rustlib/src/rust/library").exists()
            && Path::new(DEBIAN_WASM_LD).exists()
            && Path::new(DEBIAN_WASI_LIBDIR).join("crt1-command.o").exists();
        if debian_ready {
            return Self::DebianBuildStd;
        }
        panic!(
            "no toolchain can build the wasm32-wasip1 guests.\n\
             Install one of:\n  rustup target add wasm32-wasip1\n  \
             apt-get install -y {DEBIAN_PACKAGES}\n"
        );
    }

    /// Builds one package of the guest workspace. `command_bin` names a binary that must be linked
    /// as a WASI command (it needs wasi-libc's `crt1-command.o` when std is built by hand).
    fn build(&self, guests: &Path, target_dir: &Path, package: &str, command_bin: Option<&str>) {
        let mut cmd = match self {
            Self::Rustup { cargo } => Command::new(cargo),
            Self::DebianBuildStd => Command::new("/usr/bin/cargo"),
        };
        // Nothing of the outer build (its flags, its target, its jobserver) applies to the guests.
        for (key, _) in env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO") || key.starts_with("RUST") {
                cmd.env_remove(key.as_ref());
            }
        }
        if let Some(home) = env::var_os("CARGO_HOME") {
            cmd.env("CARGO_HOME", home);
        }
        cmd.current_dir(guests)
            .arg(if command_bin.is_some() { "rustc" } else { "build" })
            .args(["--release", "--locked", "--target", "wasm32-wasip1", "-p", package])
            .arg("--target-dir")
            .arg(target_dir);
        if let Some(bin) = command_bin {
            cmd.args(["--bin", bin]);
        }
        if let Self::DebianBuildStd = self {
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(
                    "RUSTFLAGS",
                    format!("-C linker={DEBIAN_WASM_LD} -C link-self-contained=no -L {DEBIAN_WASI_LIBDIR}"),
                )
                .args(["-Zbuild-std=std,panic_abort"]);
            if command_bin.is_some() {
                // Only the final binary gets the command entry point; std stays shared with the
                // reactor guests because RUSTFLAGS are the same for both.
                cmd.args(["--", "-C"]).arg(format!("link-arg={DEBIAN_WASI_LIBDIR}/crt1-command.o"));
            }
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for {package}: {e}"));
        assert!(status.success(), "building the guest {package} failed ({status})");
    }
}

fn componentize(core_module: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(core_module)
        .expect("the guest is a valid core module")
        .validate(true)
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .expect("the reactor adapter applies")
        .encode()
        .expect("the guest encodes as a component")
}

fn build_c(source: &Path, output: &Path) {
    let (clang, sysroot) = match env::var("WASI_SDK_PATH") {
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
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} ({e}); install clang-19 lld-19 wasi-libc, or set WASI_SDK_PATH")
        });
    assert!(status.success(), "compiling {} failed ({status})", source.display());
}
