//! Compiling uploads in a child process, bounded in CPU time and memory.
//!
//! Compiling is the one step where an anonymous artifact makes the server do work in proportion
//! to whatever the artifact asks: deeply nested blocks or millions of functions can keep Cranelift
//! busy for minutes and take gigabytes. So an upload is compiled by a worker process (the `amphi`
//! binary's hidden `compile-worker` command) that limits itself (`RLIMIT_CPU`, `RLIMIT_AS`) before
//! it reads a byte, and is killed when the uploader goes away (the waiting future is dropped),
//! when its wall-clock time runs out, or when the server shuts down. The parent gets the
//! serialized code back and deserializes it with its own engine, whose compatibility hash must
//! match (same configuration, same wasmtime).
//!
//! Without a worker binary (a server embedded in a test or a benchmark), uploads are compiled in
//! process, unbounded; `amphi serve` always has one.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use amphi_contract::ArtifactKind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::engine::WasmSettings;
use crate::prepare::PrepareError;

/// The worker's command name, as the first argument to the worker binary.
pub const WORKER_COMMAND: &str = "compile-worker";

/// How uploads are compiled.
#[derive(Debug, Clone)]
pub struct CompileSettings {
    /// The binary that runs [`worker_main`] when given [`WORKER_COMMAND`]; `None` compiles in
    /// process, without limits.
    pub worker: Option<PathBuf>,
    /// CPU time one compilation may take.
    pub timeout: Duration,
    /// Memory one compilation may use (its private writable memory, `RLIMIT_DATA`).
    pub memory_bytes: u64,
}

impl Default for CompileSettings {
    fn default() -> Self {
        Self { worker: None, timeout: Duration::from_secs(60), memory_bytes: 2 << 30 }
    }
}

/// Compiles `bytes` of `kind` in a worker process; returns the serialized code.
pub async fn compile_in_worker(
    worker: &std::path::Path,
    settings: &WasmSettings,
    kind: ArtifactKind,
    bytes: &[u8],
) -> Result<Vec<u8>, PrepareError> {
    let limits = &settings.compile;
    let cpu_seconds = limits.timeout.as_secs().max(1);
    let mut command = tokio::process::Command::new(worker);
    command
        .arg(WORKER_COMMAND)
        .arg(kind.as_str())
        .arg(cpu_seconds.to_string())
        .arg(limits.memory_bytes.to_string())
        .arg(settings.max_memory_bytes.to_string())
        .arg(if settings.guard_pages { "guard-pages" } else { "bounds-checks" })
        // mimalloc (the amphi binary's allocator) would otherwise commit a 1 GiB arena up front,
        // which the data limit counts as used.
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let failed = |e: std::io::Error| PrepareError::Invalid(format!("cannot run the compile worker: {e}"));
    let mut child = command.spawn().map_err(failed)?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(PrepareError::Invalid("the compile worker's pipes are missing".into()));
    };
    let input = bytes.to_vec();
    let writing = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let (mut code, mut error) = (Vec::new(), Vec::new());
    // The CPU limit ends a busy worker. The wall-clock bound ends one that is stopped or never
    // scheduled; it is wide, since a worker on a loaded machine gets a fraction of a CPU. Either
    // way the worker is killed when this future ends (kill_on_drop).
    let wall = limits.timeout * 5 + Duration::from_secs(30);
    let ran = tokio::time::timeout(wall, async {
        let (read_code, read_error) =
            tokio::join!(stdout.read_to_end(&mut code), stderr.read_to_end(&mut error));
        read_code.and(read_error)?;
        child.wait().await
    })
    .await;
    writing.abort();
    let said = String::from_utf8_lossy(&error).trim().to_string();
    let too_slow = || {
        PrepareError::Refused(format!(
            "compiling took more than the limit of {}s of CPU time (serve --compile-timeout)",
            cpu_seconds
        ))
    };
    let too_big = || {
        PrepareError::Refused(format!(
            "compiling needed more than the limit of {} of memory (serve --compile-memory)",
            amphi_contract::size::format_bytes(limits.memory_bytes)
        ))
    };
    let status = match ran {
        Err(_elapsed) => return Err(too_slow()),
        Ok(Err(e)) => return Err(failed(e)),
        Ok(Ok(status)) => status,
    };
    use std::os::unix::process::ExitStatusExt as _;
    const SIGKILL: i32 = 9;
    const SIGXCPU: i32 = 24;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(code),
        (Some(EXIT_INVALID), _) => Err(PrepareError::Invalid(said)),
        (_, Some(SIGXCPU | SIGKILL)) => Err(too_slow()),
        // The allocator aborts when the data limit refuses it memory.
        _ if said.contains("memory allocation") || status.signal() == Some(6) => Err(too_big()),
        _ => Err(PrepareError::Invalid(format!("the compile worker failed ({status}): {said}"))),
    }
}

/// The worker's exit code for wasm that does not compile (the reason is on stderr).
const EXIT_INVALID: i32 = 3;

/// The worker: `compile-worker KIND CPU_SECONDS MEMORY_BYTES MAX_MEMORY GUARDS`; wasm on stdin,
/// the serialized code on stdout. Limits itself before it reads anything.
pub fn worker_main(args: &[String]) -> ExitCode {
    let usage = || {
        eprintln!("usage: compile-worker KIND CPU_SECONDS MEMORY_BYTES MAX_MEMORY guard-pages|bounds-checks");
        ExitCode::from(2)
    };
    let [kind, cpu, memory, max_memory, guards] = args else { return usage() };
    let (Some(kind), Ok(cpu), Ok(memory), Ok(max_memory)) =
        (ArtifactKind::parse(kind), cpu.parse::<u64>(), memory.parse::<u64>(), max_memory.parse::<u64>())
    else {
        return usage();
    };
    use rustix::process::{Resource, Rlimit, setrlimit};
    let cpu = Rlimit { current: Some(cpu), maximum: Some(cpu + 1) };
    let memory = Rlimit { current: Some(memory), maximum: Some(memory) };
    if let Err(e) = setrlimit(Resource::Cpu, cpu).and_then(|()| setrlimit(Resource::Data, memory)) {
        eprintln!("cannot limit the compile worker: {e}");
        return ExitCode::from(2);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the wasm: {e}");
        return ExitCode::from(2);
    }
    let settings = WasmSettings {
        max_memory_bytes: max_memory,
        guard_pages: guards == "guard-pages",
        ..Default::default()
    };
    let engine = match wasmtime::Engine::new(&crate::engine::base_config(&settings)) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot build the engine: {e:#}");
            return ExitCode::from(2);
        }
    };
    if kind == ArtifactKind::ContainerImage {
        return usage();
    }
    match crate::prepare::compile_serialized(&engine, kind, &bytes) {
        Ok(code) => match std::io::stdout().lock().write_all(&code) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the compiled code: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprint!("{}", e.to_string().trim_start_matches("invalid WebAssembly: "));
            ExitCode::from(EXIT_INVALID as u8)
        }
    }
}
