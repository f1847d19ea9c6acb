//! Deploy-time pre-initialization: a function's initializer runs once, and every instance starts
//! from the memory it left.
//!
//! `wasmtime-wizer` instruments the artifact, Amphi instantiates it with the function's own env
//! and memory limit (no network: the outbound allow-list is emptied; no files: none are ever
//! granted), calls the initializer export under a deadline (the reported init time is this call
//! alone, not instrumenting or compiling), and wizer writes the instance's memories and globals
//! back into a new artifact: the snapshot. The snapshot is stored under a
//! digest of what made it (artifact, export, env, engine), so a restart or a redeploy with the
//! same inputs reuses it and the initializer does not run again. It carries how long the
//! initializer took in a custom section, so a reused snapshot still reports it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_contract::record::LogStream;
use amphi_contract::{ArtifactKind, FunctionConfig};
use wasm_encoder::Section as _;
use wasmparser::{Parser, Payload};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, Linker, Module};
use wasmtime_wasi::WasiCtx;
use wasmtime_wizer::{WasmtimeWizer, WasmtimeWizerComponent, Wizer};

use crate::limits::{CallLimits, MemoryBudget};
use crate::output::OutputTarget;
use crate::state::{CgiState, HttpState, new_http_store, new_store};

/// The custom section of a snapshot holding how long its initializer ran, in milliseconds.
const INIT_SECTION: &str = "amphi-init-ms";

/// Why pre-initializing failed; each names its cause for the deploy's 422.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The artifact has no such export.
    #[error("the function has no export `{export}` to run as its initializer (its exports: {exports})")]
    MissingExport {
        /// The export asked for.
        export: String,
        /// What it does export.
        exports: String,
    },
    /// The initializer trapped or failed.
    #[error("the initializer `{export}` failed: {detail}")]
    Failed {
        /// The export that ran.
        export: String,
        /// The trap or error.
        detail: String,
    },
    /// The initializer ran past `init_timeout_ms`.
    #[error("the initializer `{export}` ran past its timeout of {timeout_ms} ms (init_timeout_ms)")]
    Timeout {
        /// The export that ran.
        export: String,
        /// The limit.
        timeout_ms: u64,
    },
    /// The initializer grew memory past the function's limit.
    #[error("the initializer `{export}` grew past the function's memory limit of {limit}")]
    Memory {
        /// The export that ran.
        export: String,
        /// The limit, formatted.
        limit: String,
    },
    /// The server could not run it (a thread, the runtime).
    #[error("cannot run the initializer: {0}")]
    Platform(String),
}

/// What one run of an initializer gave.
pub struct InitRun {
    /// The snapshot, its init time already in it.
    pub snapshot: Vec<u8>,
    /// How long the initializer ran.
    pub took: Duration,
}

/// The digest a snapshot is stored under: of the artifact, the export, the env, the memory limit
/// the initializer ran under and the engine.
pub fn snapshot_digest(artifact: &str, export: &str, config: &FunctionConfig, engine_key: &str) -> String {
    let mut inputs = Vec::new();
    let memory = config.memory_bytes.to_le_bytes();
    let fixed = [
        b"amphi-preinit-1".as_slice(),
        artifact.as_bytes(),
        export.as_bytes(),
        engine_key.as_bytes(),
        &memory,
    ];
    for part in fixed {
        inputs.extend_from_slice(&(part.len() as u64).to_le_bytes());
        inputs.extend_from_slice(part);
    }
    for (name, value) in &config.env {
        for part in [name, value] {
            inputs.extend_from_slice(&(part.len() as u64).to_le_bytes());
            inputs.extend_from_slice(part.as_bytes());
        }
    }
    amphi_store::artifacts::digest_of(&inputs)
}

/// How long the initializer that made `snapshot` ran, from its custom section.
pub fn recorded_init_ms(snapshot: &[u8]) -> Option<u64> {
    Parser::new(0).parse_all(snapshot).find_map(|payload| match payload {
        Ok(Payload::CustomSection(section)) if section.name() == INIT_SECTION => {
            std::str::from_utf8(section.data()).ok()?.parse().ok()
        }
        _ => None,
    })
}

/// Checks that `bytes` export `export` at their top level, before anything is instantiated.
pub fn check_export(kind: ArtifactKind, bytes: &[u8], export: &str) -> Result<(), InitError> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ExportSection(exports) if depth == 0 && kind == ArtifactKind::CgiModule => {
                names.extend(exports.into_iter().flatten().map(|e| e.name.to_string()));
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                names.extend(exports.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            _ => {}
        }
    }
    if names.iter().any(|name| name == export) {
        Ok(())
    } else {
        Err(InitError::MissingExport { export: export.to_string(), exports: names.join(", ") })
    }
}

/// What running an initializer needs; moved onto the thread that runs it.
pub(crate) struct InitJob {
    pub(crate) engine: Engine,
    pub(crate) kind: ArtifactKind,
    /// The artifact's wasm.
    pub(crate) bytes: Vec<u8>,
    pub(crate) export: String,
    /// The function's config: env and memory limit, `init_timeout_ms`.
    pub(crate) config: FunctionConfig,
    pub(crate) budget: Arc<MemoryBudget>,
    /// Where the initializer's stdout and stderr are held, for the caller to log whatever the
    /// outcome (a failing initializer's output says why).
    pub(crate) output: OutputTarget,
    pub(crate) http_linker: ComponentLinker<HttpState>,
    pub(crate) cgi_linker: Linker<CgiState>,
}

impl InitJob {
    /// Runs the initializer on a thread of its own (it is deploy work, and may take seconds),
    /// and resolves with the snapshot.
    pub(crate) async fn run(self) -> Result<InitRun, InitError> {
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("amphi-init".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let outcome = match runtime {
                    Ok(runtime) => runtime.block_on(self.run_here()),
                    Err(e) => Err(InitError::Platform(e.to_string())),
                };
                let _ = done.send(outcome);
            })
            .map_err(|e| InitError::Platform(e.to_string()))?;
        result
            .await
            .map_err(|_| InitError::Platform("the initializer's thread ended without an answer".into()))?
    }

    async fn run_here(self) -> Result<InitRun, InitError> {
        check_export(self.kind, &self.bytes, &self.export)?;
        let timeout = Duration::from_millis(self.config.init_timeout_ms);
        let deadline = Instant::now() + timeout;
        // No network while initializing, whatever the function may reach when called.
        let config = FunctionConfig { allowed_outbound_hosts: Vec::new(), ..self.config.clone() };
        let output = &self.output;
        let mut wizer = Wizer::new();
        // Kept: the component's own export of it stays valid; Amphi never calls it again.
        wizer.init_func(self.export.clone()).keep_init_func(true);

        let mut took = Duration::ZERO;
        let (ran, limits) = match self.kind {
            ArtifactKind::CgiModule => {
                let (stdout, stderr) = output.streams();
                let mut wasi = WasiCtx::builder();
                wasi.envs(&config.env.iter().collect::<Vec<_>>()).stdout(stdout).stderr(stderr);
                let state = CgiState {
                    wasi: wasi.build_p1(),
                    limits: CallLimits::new(config.memory_bytes, deadline, self.budget.clone()),
                };
                let mut store = new_store(&self.engine, state, |s| &mut s.limits);
                let run = async {
                    let (cx, instrumented) = wizer.instrument(&self.bytes)?;
                    let module = Module::new(&self.engine, &instrumented)?;
                    let instance = self.cgi_linker.instantiate_async(&mut store, &module).await?;
                    let called = Instant::now();
                    if let Ok(reactor) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
                        reactor.call_async(&mut store, ()).await?;
                    }
                    let init = instance.get_typed_func::<(), ()>(&mut store, &self.export)?;
                    init.call_async(&mut store, ()).await?;
                    took = called.elapsed();
                    wizer.snapshot(&cx, &mut WasmtimeWizer { store: &mut store, instance }).await
                };
                let ran = tokio::time::timeout(timeout, run).await;
                (ran, take_limits(store.into_data().limits))
            }
            _ => {
                let mut store = new_http_store(&self.engine, &config, output, deadline, &self.budget);
                let run = async {
                    let (cx, instrumented) = wizer.instrument_component(&self.bytes)?;
                    let component = Component::new(&self.engine, &instrumented)?;
                    let instance = self.http_linker.instantiate_async(&mut store, &component).await?;
                    let init = instance.get_typed_func::<(), ()>(&mut store, self.export.as_str())?;
                    let called = Instant::now();
                    init.call_async(&mut store, ()).await?;
                    took = called.elapsed();
                    wizer
                        .snapshot_component(&cx, &mut WasmtimeWizerComponent { store: &mut store, instance })
                        .await
                };
                let ran = tokio::time::timeout(timeout, run).await;
                (ran, take_limits(store.into_data().limits))
            }
        };
        let export = self.export;
        let mut snapshot = match ran {
            Err(_elapsed) => return Err(InitError::Timeout { export, timeout_ms: config.init_timeout_ms }),
            Ok(Err(_)) if limits.deadline => {
                return Err(InitError::Timeout { export, timeout_ms: config.init_timeout_ms });
            }
            Ok(Err(_)) if limits.memory => {
                let limit = amphi_contract::size::format_bytes(config.memory_bytes);
                return Err(InitError::Memory { export, limit });
            }
            Ok(Err(error)) => return Err(InitError::Failed { export, detail: format!("{error:#}") }),
            Ok(Ok(snapshot)) => snapshot,
        };
        append_custom_section(&mut snapshot, INIT_SECTION, took.as_millis().to_string().as_bytes());
        Ok(InitRun { snapshot, took })
    }
}

/// Which limits the initializer ran into.
struct LimitsHit {
    deadline: bool,
    memory: bool,
}

fn take_limits(limits: CallLimits) -> LimitsHit {
    LimitsHit { deadline: limits.deadline_exceeded, memory: limits.memory_exceeded || limits.budget_exceeded }
}

/// Appends a custom section to a module or component: valid at the end of either.
fn append_custom_section(wasm: &mut Vec<u8>, name: &str, data: &[u8]) {
    wasm_encoder::CustomSection { name: name.into(), data: data.into() }.append_to(wasm);
}

/// Splits what an initializer wrote into lines, by stream.
pub fn lines_of(output: &[(LogStream, Vec<u8>)]) -> Vec<(LogStream, String)> {
    let mut lines = Vec::new();
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let bytes: Vec<u8> =
            output.iter().filter(|(s, _)| *s == stream).flat_map(|(_, b)| b.iter().copied()).collect();
        for line in String::from_utf8_lossy(&bytes).lines() {
            lines.push((stream, line.to_string()));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_time_is_read_back_from_the_snapshot() {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        append_custom_section(&mut module, INIT_SECTION, b"840");
        wasmparser::validate(&module).expect("still valid wasm");
        assert_eq!(recorded_init_ms(&module), Some(840));
    }

    #[test]
    fn the_snapshot_digest_depends_on_every_input() {
        let config = FunctionConfig::default();
        let other_env =
            FunctionConfig { env: [("A".to_string(), "1".to_string())].into(), ..Default::default() };
        let base = snapshot_digest("sha256:a", "init", &config, "e");
        assert_eq!(base, snapshot_digest("sha256:a", "init", &config, "e"));
        assert_ne!(base, snapshot_digest("sha256:b", "init", &config, "e"));
        assert_ne!(base, snapshot_digest("sha256:a", "setup", &config, "e"));
        assert_ne!(base, snapshot_digest("sha256:a", "init", &other_env, "e"));
        assert_ne!(base, snapshot_digest("sha256:a", "init", &config, "f"));
        let smaller = FunctionConfig { memory_bytes: 1 << 20, ..Default::default() };
        assert_ne!(base, snapshot_digest("sha256:a", "init", &smaller, "e"));
        // A call's timeout is not the initializer's business.
        let longer = FunctionConfig { timeout_ms: 1, ..Default::default() };
        assert_eq!(base, snapshot_digest("sha256:a", "init", &longer, "e"));
    }
}
