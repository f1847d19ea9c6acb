//! Amphi's WebAssembly backend: a fresh instance for every request, in microseconds.
//!
//! One shared [`Engine`](wasmtime::Engine) ([`engine`]) compiles each artifact once
//! ([`prepare`]); every call gets a new `Store` and instance from a pre-instantiated form, so
//! nothing leaks from one call to the next. For functions called recently, that instance is made
//! before the request arrives ([`ready`]). Two bindings of the one contract:
//! - [`http`]: components exporting `wasi:http/incoming-handler` (WASI 0.2), streaming bodies;
//! - [`service`]: components exporting `wasi:http/handler@0.3` (WASI 0.3), async, with opt-in
//!   instance reuse;
//! - [`cgi`]: WASI preview1 command modules speaking CGI 1.1 over stdio.
//!
//! Guests get no filesystem, no environment and no network unless their config grants them
//! (env vars, outbound hosts). Deadlines are enforced by epoch interruption (a spinning guest is
//! stopped) with a timer as backstop (a guest blocked in a host call is dropped); memory by a
//! per-store limiter.

pub mod cgi;
pub mod compile;
pub mod engine;
mod failure;
pub mod http;
pub mod limits;
pub mod offload;
pub mod output;
pub mod preinit;
pub mod prepare;
pub mod ready;
pub mod service;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use amphi_contract::backend::InvokeFuture;
use amphi_contract::record::{BackendKind, LogStream, StartKind};
use amphi_contract::{
    ArtifactKind, Backend, BackendError, BoxFuture, Call, FunctionConfig, InitSnapshot, InvalidConfig,
    ProblemKind, UploadError,
};
use amphi_store::artifacts::Artifacts;
use bytes::Bytes;

pub use compile::CompileSettings;
pub use engine::WasmSettings;
pub use prepare::PrepareError;
use prepare::{Prepared, Preparer};
use ready::ReadyInstances;
pub use ready::ReadySettings;

/// Errors starting the backend.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime: {0}")]
    Engine(String),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(#[from] std::io::Error),
}

/// Counters of the backend, for `/v1/stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WasmStats {
    /// Whether the pooling allocator is in use.
    pub pooling_allocator: bool,
    /// Artifacts compiled from wasm since start.
    pub compiled: u64,
    /// Artifacts loaded from compiled code on disk since start.
    pub loaded_from_disk: u64,
    /// `wasi:http` instances made since start, ready ones and ones made on the request path.
    pub instances_made: u64,
    /// Mean time to make one of them (store, context, instantiation), in nanoseconds.
    pub instance_mean_ns: u64,
    /// Calls that found a ready instance.
    pub ready_hits: u64,
    /// Calls that made their instance on the request path.
    pub ready_misses: u64,
    /// The server's wasm memory budget, in bytes.
    pub memory_budget_bytes: u64,
    /// Linear memory charged to it now, in bytes.
    pub memory_in_use_bytes: u64,
    /// Initializers run at deploy since start (a snapshot made before is reused, not counted).
    pub initializer_runs: u64,
}

/// The wasm backend.
pub struct WasmBackend {
    preparer: Arc<Preparer>,
    ready: Arc<ReadyInstances>,
    settings: WasmSettings,
    pooling: bool,
    /// Compilations that may run at once.
    compiling: tokio::sync::Semaphore,
    /// Where long-running guests move, off the serving threads.
    guests: Arc<offload::GuestPool>,
    /// Initializers run since start.
    initializer_runs: std::sync::atomic::AtomicU64,
    /// The dispatchers of WASI 0.3 functions.
    services: Arc<service::Services>,
}

impl WasmBackend {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(settings: WasmSettings, artifacts: Arc<Artifacts>) -> Result<Self, WasmError> {
        let (engine, pooling) = engine::build(&settings).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        engine::start_epoch_ticker(&engine)?;
        let preparer = Preparer::new(engine, artifacts, settings.cache_entries)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let budget = Arc::new(limits::MemoryBudget::new(settings.memory_budget_bytes));
        let ready = Arc::new(ReadyInstances::new(settings.ready, budget));
        let services = Arc::new(service::Services::new(settings.ready.functions.max(1)));
        let compiling =
            tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from));
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let guests = Arc::new(
            offload::GuestPool::new(threads)
                .map_err(|e| WasmError::Engine(format!("cannot start the guest threads: {e}")))?,
        );
        Ok(Self {
            preparer: Arc::new(preparer),
            ready,
            settings,
            pooling,
            compiling,
            guests,
            initializer_runs: Default::default(),
            services,
        })
    }

    /// Validates and compiles an upload to be stored under `digest`, and stores its compiled
    /// code; returns its kind. Compiling runs in a worker process within the limits of
    /// [`CompileSettings`]: dropping the future kills it. At most one compilation per CPU runs
    /// at once; the others wait.
    pub async fn prepare_upload(
        &self,
        digest: &str,
        bytes: bytes::Bytes,
    ) -> Result<ArtifactKind, PrepareError> {
        let kind = Preparer::detect_kind(&bytes)?;
        let preparer = self.preparer.clone();
        let key = digest.to_string();
        if run_blocking(move || preparer.has_compiled(&key)).await? {
            return Ok(kind);
        }
        let _slot = self.compiling.acquire().await.map_err(|e| PrepareError::Invalid(e.to_string()))?;
        let code = match &self.settings.compile.worker {
            Some(worker) => compile::compile_in_worker(worker, &self.settings, kind, &bytes).await?,
            None => {
                let preparer = self.preparer.clone();
                run_blocking(move || preparer.compile_here(kind, &bytes)).await?
            }
        };
        let (preparer, digest) = (self.preparer.clone(), digest.to_string());
        run_blocking(move || preparer.accept_compiled(&digest, kind, &code)).await?;
        Ok(kind)
    }

    /// Pre-initializes `digest` as `config.init` says (see [`preinit`]), or finds the snapshot
    /// made from the same inputs before; compiles and stores the snapshot.
    pub async fn pre_initialize(
        &self,
        digest: &str,
        kind: ArtifactKind,
        config: &FunctionConfig,
        output: &(dyn Fn(LogStream, &str) + Send + Sync),
    ) -> Result<InitSnapshot, BackendError> {
        let refused = |e: String| BackendError::new(ProblemKind::UnprocessableEntity, e);
        let internal = |e: PrepareError| match e {
            PrepareError::Store(e) => BackendError::new(ProblemKind::Internal, e.to_string()),
            refused => BackendError::new(
                ProblemKind::UnprocessableEntity,
                format!("the pre-initialized snapshot cannot be used: {refused}"),
            ),
        };
        let Some(export) = config.init.clone() else {
            return Err(refused("the config names no initializer (init)".into()));
        };
        let key = preinit::snapshot_digest(digest, &export, config, self.preparer.engine_key());
        let artifacts = self.preparer.artifacts().clone();
        let (lookup, source) = (key.clone(), digest.to_string());
        let found = run_blocking(move || {
            if artifacts.has(&lookup)? {
                Ok((artifacts.get(&lookup)?, true))
            } else {
                Ok((artifacts.get(&source)?, false))
            }
        })
        .await
        .map_err(internal)?;
        let (snapshot, reused) = match found {
            (snapshot, true) => (snapshot, true),
            (source, false) => {
                let slot = self.compiling.acquire().await.map_err(|e| refused(e.to_string()))?;
                let (http_linker, cgi_linker) = self.preparer.linkers();
                let held = output::OutputTarget::pending();
                let job = preinit::InitJob {
                    engine: self.preparer.engine().clone(),
                    kind,
                    bytes: source,
                    export: export.clone(),
                    config: config.clone(),
                    budget: self.ready.budget.clone(),
                    output: held.clone(),
                    http_linker,
                    cgi_linker,
                };
                self.initializer_runs.fetch_add(1, Ordering::Relaxed);
                let ran = job.run().await;
                drop(slot);
                for (stream, line) in preinit::lines_of(&held.take_held()) {
                    output(stream, &line);
                }
                let run = ran.map_err(|e| {
                    output(LogStream::Platform, &format!("the deploy failed: {e}"));
                    match e {
                        preinit::InitError::Platform(e) => BackendError::new(ProblemKind::Internal, e),
                        refusal => refused(refusal.to_string()),
                    }
                })?;
                output(
                    LogStream::Platform,
                    &format!("initializer `{export}` ran in {} ms", run.took.as_millis()),
                );
                (run.snapshot, false)
            }
        };
        let size = snapshot.len() as u64;
        let init_ms = preinit::recorded_init_ms(&snapshot).unwrap_or(0);
        let snapshot = Bytes::from(snapshot);
        self.prepare_upload(&key, snapshot.clone()).await.map_err(internal)?;
        if !reused {
            let (artifacts, key) = (self.preparer.artifacts().clone(), key.clone());
            run_blocking(move || Ok(artifacts.put_derived(&key, &snapshot)?)).await.map_err(internal)?;
        }
        Ok(InitSnapshot { export, digest: key, init_ms, size, reused })
    }

    /// Checks what of a function's config depends on this backend.
    fn check_memory_ceiling(&self, config: &FunctionConfig) -> Result<(), InvalidConfig> {
        if config.memory_bytes > self.settings.max_memory_bytes {
            return Err(InvalidConfig(format!(
                "memory {} is above this server's ceiling of {} (serve --wasm-max-memory)",
                amphi_contract::size::format_bytes(config.memory_bytes),
                amphi_contract::size::format_bytes(self.settings.max_memory_bytes)
            )));
        }
        Ok(())
    }

    /// The backend's counters.
    pub fn stats(&self) -> WasmStats {
        let instances = &self.ready.stats;
        let made = instances.made.load(Ordering::Relaxed);
        WasmStats {
            instances_made: made,
            instance_mean_ns: instances.making_ns.load(Ordering::Relaxed).checked_div(made).unwrap_or(0),
            ready_hits: instances.ready_hits.load(Ordering::Relaxed),
            ready_misses: instances.ready_misses.load(Ordering::Relaxed),
            pooling_allocator: self.pooling,
            memory_budget_bytes: self.ready.budget.limit(),
            memory_in_use_bytes: self.ready.budget.used(),
            initializer_runs: self.initializer_runs.load(Ordering::Relaxed),
            compiled: self.preparer.stats.compiled.load(Ordering::Relaxed),
            loaded_from_disk: self.preparer.stats.loaded_from_disk.load(Ordering::Relaxed),
        }
    }
}

impl Backend for WasmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wasm
    }

    fn serves(&self, kind: ArtifactKind) -> bool {
        matches!(
            kind,
            ArtifactKind::WasiHttpComponent | ArtifactKind::WasiHttp3Component | ArtifactKind::CgiModule
        )
    }

    fn prepare_upload(
        &self,
        digest: &str,
        bytes: Bytes,
    ) -> Option<BoxFuture<'_, Result<ArtifactKind, UploadError>>> {
        let digest = digest.to_string();
        Some(Box::pin(async move {
            WasmBackend::prepare_upload(self, &digest, bytes).await.map_err(|e| match e {
                PrepareError::Store(e) => UploadError::Internal(Box::new(e)),
                refused => UploadError::Refused(refused.to_string()),
            })
        }))
    }

    fn pre_initialize<'a>(
        &'a self,
        digest: &'a str,
        kind: ArtifactKind,
        config: &'a FunctionConfig,
        output: amphi_contract::backend::LineSink,
    ) -> Option<BoxFuture<'a, Result<InitSnapshot, BackendError>>> {
        Some(Box::pin(async move { WasmBackend::pre_initialize(self, digest, kind, config, &*output).await }))
    }

    fn check_config(&self, config: &FunctionConfig) -> Result<(), InvalidConfig> {
        self.check_memory_ceiling(config)
    }

    fn stats(&self) -> Option<serde_json::Value> {
        serde_json::to_value(WasmBackend::stats(self)).ok()
    }

    fn invoke(&self, call: Call, request: ::http::Request<Bytes>) -> InvokeFuture {
        let preparer = self.preparer.clone();
        let ready = self.ready.clone();
        let max_cgi_response = self.settings.max_cgi_response_bytes;
        let budget = self.ready.budget.clone();
        let guests = self.guests.clone();
        let services = self.services.clone();
        Box::pin(async move {
            // A pre-initialized function's instances start from its snapshot.
            let code = call.function.init.as_ref().map_or(&call.function.digest, |init| &init.digest);
            let (prepared, code_load) = match preparer.cached(code) {
                Some(prepared) => (prepared, None),
                None => {
                    // A cold start: the code is loaded from disk (or compiled) off the async threads.
                    let started = Instant::now();
                    let (digest, kind) = (code.clone(), call.function.kind);
                    let loader = preparer.clone();
                    let loaded = tokio::task::spawn_blocking(move || loader.get(&digest, kind)).await;
                    call.started(StartKind::Cold, Some(started.elapsed()));
                    match loaded {
                        Ok(Ok(prepared)) => (prepared, Some(started.elapsed())),
                        Ok(Err(error)) => {
                            return Err(BackendError::new(
                                ProblemKind::BackendUnavailable,
                                format!("the function's code cannot be loaded: {error}"),
                            ));
                        }
                        Err(join) => {
                            return Err(BackendError::new(
                                ProblemKind::Internal,
                                format!("loading failed: {join}"),
                            ));
                        }
                    }
                }
            };
            match &*prepared {
                Prepared::Http(pre) => {
                    http::invoke(pre.clone(), ready, guests, call, request, code_load).await
                }
                Prepared::Service(pre) => {
                    service::invoke(&services, pre.clone(), ready, call, request, code_load).await
                }
                Prepared::Cgi(pre) => {
                    cgi::invoke(pre.clone(), call, request, code_load, max_cgi_response, budget, guests).await
                }
            }
        })
    }

    fn retire(&self, function: &str) {
        // Compiled forms are cached by artifact digest, which other functions may share; an
        // unused one ages out of the bounded cache. Ready instances belong to the version.
        self.ready.retire(function);
        self.services.retire(function);
    }
}

/// Runs blocking preparation work off the async threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PrepareError> + Send + 'static,
) -> Result<T, PrepareError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(PrepareError::Invalid(format!("the preparation task failed: {e}"))))
}
