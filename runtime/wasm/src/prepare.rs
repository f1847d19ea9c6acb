//! From uploaded bytes to something prepared to instantiate, once per artifact digest.
//!
//! An upload is validated and compiled at deploy time; the compiled code is written to the data
//! directory (`compiled/<digest>-<engine key>`), so a restarted server deserializes it instead
//! of compiling again. Ready-to-instantiate forms (`ProxyPre`, `InstancePre`) are kept in a
//! bounded `moka` cache; an entry evicted or lost to a restart is rebuilt from the compiled code.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amphi_contract::ArtifactKind;
use amphi_store::StoreError;
use amphi_store::artifacts::Artifacts;
use wasmparser::Parser;
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::state::{CgiState, HttpState};

/// A function prepared for instantiation (its `InstancePre`, `ProxyPre` or `ServicePre`).
pub enum Prepared {
    /// A `wasi:http@0.2` component.
    Http(ProxyPre<HttpState>),
    /// A `wasi:http@0.3` component.
    Service(ServicePre<HttpState>),
    /// A preview1 CGI command module.
    Cgi(InstancePre<CgiState>),
}

/// Why an artifact cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly binary (expected a component or a core module)")]
    NotWasm,
    /// Invalid wasm, or wasm this engine cannot compile.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// Valid wasm that does not speak the contract (missing export, unknown imports).
    #[error("{0}")]
    Unsupported(String),
    /// Compiling it went past a limit of this server (CPU time, memory).
    #[error("{0}")]
    Refused(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often code was compiled or loaded; shows that a restart does not recompile.
#[derive(Debug, Default)]
pub struct CompileStats {
    /// Artifacts compiled from wasm.
    pub compiled: AtomicU64,
    /// Artifacts deserialized from compiled code on disk.
    pub loaded_from_disk: AtomicU64,
}

/// Compiles, stores and caches artifacts.
pub struct Preparer {
    engine: Engine,
    engine_key: String,
    artifacts: Arc<Artifacts>,
    http_linker: ComponentLinker<HttpState>,
    cgi_linker: Linker<CgiState>,
    prepared: moka::sync::Cache<String, Arc<Prepared>>,
    /// Compile and load counters.
    pub stats: CompileStats,
}

impl Preparer {
    /// A preparer for `engine`, storing compiled code in `artifacts`.
    pub fn new(engine: Engine, artifacts: Arc<Artifacts>, cache_entries: u64) -> wasmtime::Result<Self> {
        let mut http_linker = ComponentLinker::new(&engine);
        // The full WASI 0.2 and 0.3 surfaces, so components built for wasm32-wasip2 link too,
        // and WASI 0.3 components that still reach WASI 0.2 for std's stdio; nothing is granted
        // by them (no preopened dirs, no sockets) unless the function's config says so.
        wasmtime_wasi::p2::add_to_linker_async(&mut http_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut http_linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut http_linker)?;
        let mut cgi_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut cgi_linker, |state: &mut CgiState| &mut state.wasi)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        Ok(Self {
            engine,
            engine_key,
            artifacts,
            http_linker,
            cgi_linker,
            prepared: moka::sync::Cache::new(cache_entries),
            stats: CompileStats::default(),
        })
    }

    /// The engine's compatibility key, part of every compiled-code key.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    /// The engine code is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &Arc<Artifacts> {
        &self.artifacts
    }

    /// The linkers instances are made with: `wasi:http` components, CGI modules.
    pub(crate) fn linkers(&self) -> (ComponentLinker<HttpState>, Linker<CgiState>) {
        (self.http_linker.clone(), self.cgi_linker.clone())
    }

    /// Detects how `bytes` speak the contract, without compiling: a component exporting
    /// `wasi:http/handler@0.3.x` is a WASI 0.3 one, any other component is taken for WASI 0.2
    /// (linking it says what is missing).
    pub fn detect_kind(bytes: &[u8]) -> Result<ArtifactKind, PrepareError> {
        if Parser::is_component(bytes) {
            if exports_p3_handler(bytes) {
                Ok(ArtifactKind::WasiHttp3Component)
            } else {
                Ok(ArtifactKind::WasiHttpComponent)
            }
        } else if Parser::is_core_wasm(bytes) {
            Ok(ArtifactKind::CgiModule)
        } else {
            Err(PrepareError::NotWasm)
        }
    }

    /// Whether compiled code for `digest` is stored already (a re-upload). Blocking (a stat).
    pub fn has_compiled(&self, digest: &str) -> Result<bool, PrepareError> {
        Ok(self.artifacts.has_compiled(&self.compiled_key(digest)?)?)
    }

    /// Compiles `bytes` in this process, without limits; returns the serialized code. Blocking.
    pub fn compile_here(&self, kind: ArtifactKind, bytes: &[u8]) -> Result<Vec<u8>, PrepareError> {
        compile_serialized(&self.engine, kind, bytes)
    }

    /// Checks compiled `code` of an upload under `digest` (it loads and links: the contract's
    /// exports and only imports Amphi provides) and stores it. Blocking.
    pub fn accept_compiled(&self, digest: &str, kind: ArtifactKind, code: &[u8]) -> Result<(), PrepareError> {
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        let prepared = self.deserialize(kind, code)?;
        self.artifacts.put_compiled(&self.compiled_key(digest)?, code)?;
        self.prepared.insert(digest.to_string(), Arc::new(prepared));
        Ok(())
    }

    /// The prepared form of an artifact: from the cache, else from compiled code on disk, else
    /// compiled from its source. Blocking on a cache miss.
    pub fn get(&self, digest: &str, kind: ArtifactKind) -> Result<Arc<Prepared>, Arc<PrepareError>> {
        self.prepared.try_get_with(digest.to_string(), || self.load(digest, kind).map(Arc::new))
    }

    /// The prepared form if it is cached (no blocking work).
    pub fn cached(&self, digest: &str) -> Option<Arc<Prepared>> {
        self.prepared.get(digest)
    }

    fn compiled_key(&self, digest: &str) -> Result<String, PrepareError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        Ok(format!("{hex}-{}", self.engine_key))
    }

    fn load(&self, digest: &str, kind: ArtifactKind) -> Result<Prepared, PrepareError> {
        let key = self.compiled_key(digest)?;
        if let Some(code) = self.artifacts.get_compiled(&key)? {
            match self.deserialize(kind, &code) {
                Ok(prepared) => {
                    self.stats.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
                    return Ok(prepared);
                }
                Err(error) => tracing::warn!(%digest, %error, "compiled code unusable; compiling again"),
            }
        }
        let source = self.artifacts.get(digest)?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        let code = self.compile_here(kind, &source)?;
        let prepared = self.deserialize(kind, &code)?;
        self.artifacts.put_compiled(&key, &code)?;
        Ok(prepared)
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, kind: ArtifactKind, code: &[u8]) -> Result<Prepared, PrepareError> {
        let invalid = |e: wasmtime::Error| PrepareError::Invalid(format!("{e:#}"));
        // SAFETY: `code` was produced by `serialize` of an engine with this configuration, by
        // Amphi itself: in this process, or in its own compile worker (`crate::compile`), and
        // read from Amphi's own data directory, which only Amphi writes. wasmtime additionally
        // checks the header and the engine's compatibility hash.
        match kind {
            ArtifactKind::WasiHttpComponent => {
                let component = unsafe { Component::deserialize(&self.engine, code) }.map_err(invalid)?;
                self.link_component(&component)
            }
            ArtifactKind::WasiHttp3Component => {
                let component = unsafe { Component::deserialize(&self.engine, code) }.map_err(invalid)?;
                self.link_service(&component)
            }
            ArtifactKind::CgiModule => {
                let module = unsafe { Module::deserialize(&self.engine, code) }.map_err(invalid)?;
                self.link_module(&module)
            }
            ArtifactKind::ContainerImage => Err(not_wasm()),
        }
    }

    fn link_component(&self, component: &Component) -> Result<Prepared, PrepareError> {
        let pre = self.http_linker.instantiate_pre(component).map_err(|e| {
            PrepareError::Unsupported(format!(
                "the component imports something Amphi does not provide: {e:#}"
            ))
        })?;
        let proxy = ProxyPre::new(pre).map_err(|e| {
            PrepareError::Unsupported(format!(
                "the component does not export wasi:http/incoming-handler: {e:#}"
            ))
        })?;
        Ok(Prepared::Http(proxy))
    }

    fn link_service(&self, component: &Component) -> Result<Prepared, PrepareError> {
        let pre = self.http_linker.instantiate_pre(component).map_err(|e| {
            PrepareError::Unsupported(format!(
                "the component imports something Amphi does not provide: {e:#}"
            ))
        })?;
        let service = ServicePre::new(pre).map_err(|e| {
            PrepareError::Unsupported(format!("the component does not export wasi:http/handler@0.3: {e:#}"))
        })?;
        Ok(Prepared::Service(service))
    }

    fn link_module(&self, module: &Module) -> Result<Prepared, PrepareError> {
        if module.get_export("_start").and_then(|e| e.func().cloned()).is_none() {
            return Err(PrepareError::Unsupported(
                "the module has no `_start` export: a CGI function must be a WASI preview1 command".into(),
            ));
        }
        let pre = self.cgi_linker.instantiate_pre(module).map_err(|e| {
            PrepareError::Unsupported(format!(
                "the module imports something Amphi does not provide (only wasi_snapshot_preview1): {e:#}"
            ))
        })?;
        Ok(Prepared::Cgi(pre))
    }
}

/// Compiles `bytes` of `kind` with `engine` and serializes the code: what the compile worker
/// ([`crate::compile`]) and an in-process compile both do.
pub fn compile_serialized(
    engine: &Engine,
    kind: ArtifactKind,
    bytes: &[u8],
) -> Result<Vec<u8>, PrepareError> {
    let invalid = |e: wasmtime::Error| PrepareError::Invalid(format!("{e:#}"));
    match kind {
        ArtifactKind::WasiHttpComponent | ArtifactKind::WasiHttp3Component => {
            Component::new(engine, bytes).and_then(|c| c.serialize()).map_err(invalid)
        }
        ArtifactKind::CgiModule => Module::new(engine, bytes).and_then(|m| m.serialize()).map_err(invalid),
        ArtifactKind::ContainerImage => Err(not_wasm()),
    }
}

/// Whether the component `bytes` exports `wasi:http/handler@0.3.x` at its top level.
fn exports_p3_handler(bytes: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return false };
        match payload {
            wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => {
                depth += 1
            }
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(exports)
                if depth == 0
                    && exports
                        .clone()
                        .into_iter()
                        .flatten()
                        .any(|e| e.name.name.starts_with("wasi:http/handler@0.3.")) =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

fn not_wasm() -> PrepareError {
    PrepareError::Unsupported("a container image is not a wasm artifact".into())
}
