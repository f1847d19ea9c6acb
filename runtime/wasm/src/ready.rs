//! Instances made before their request arrives.
//!
//! Instantiating is a large share of what a call costs the server, and on the request path it
//! adds straight to latency. For each `wasi:http` function called recently the backend keeps a
//! few fresh, never-used instances ready and, when a call takes one, makes the next off the
//! request's path. Each instance still serves exactly one request: nothing carries over from one
//! call to the next, as if it had been made when the request came in.
//!
//! An instance is made for one function version (its code, environment and memory limit); a new
//! deploy or a delete throws its ready instances away. Instances are held for at most
//! [`ReadySettings::functions`] functions, the least recently called dropped first, and a
//! function not called for [`ReadySettings::idle`] loses them, so an idle server holds no pool
//! slots: a sweeper thread has the cache drop expired entries, since the cache itself only does
//! so while it is being used.
//!
//! CGI modules get none: their environment and stdin are the request itself. WASI 0.2 and 0.3
//! components both do ([`InstancePre`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use amphi_contract::FunctionVersion;
use wasmtime::Store;
use wasmtime_wasi_http::handler::Proxy;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::output::OutputTarget;
use crate::state::{HttpState, new_http_store};

/// How many instances are kept ready.
#[derive(Debug, Clone, Copy)]
pub struct ReadySettings {
    /// Ready instances per function; 0 turns pre-instantiation off.
    pub per_function: usize,
    /// Functions that have ready instances at once.
    pub functions: u64,
    /// A function not called for this long loses its ready instances.
    pub idle: Duration,
}

impl Default for ReadySettings {
    fn default() -> Self {
        Self { per_function: 2, functions: 64, idle: Duration::from_secs(60) }
    }
}

/// What a `wasi:http` instance is made from: a WASI 0.2 or a WASI 0.3 component.
#[derive(Clone)]
pub enum InstancePre {
    /// `wasi:http/incoming-handler@0.2`.
    P2(ProxyPre<HttpState>),
    /// `wasi:http/handler@0.3`.
    P3(ServicePre<HttpState>),
}

impl InstancePre {
    /// The engine it was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::P2(pre) => pre.engine(),
            Self::P3(pre) => pre.engine(),
        }
    }

    /// A new instance in `store`.
    pub async fn instantiate(&self, store: &mut Store<HttpState>) -> wasmtime::Result<Proxy> {
        match self {
            Self::P2(pre) => pre.instantiate_async(store).await.map(Proxy::P2),
            Self::P3(pre) => pre.instantiate_async(store).await.map(Proxy::P3),
        }
    }
}

/// A fresh instance with its store, not yet given a request.
pub struct ReadyInstance {
    /// The store, its limits set for the function; the deadline is set when a call takes it.
    pub store: Store<HttpState>,
    /// The instance (of the kind its function's [`InstancePre`] makes).
    pub proxy: Proxy,
    /// Where its output goes once a call takes it.
    pub output: OutputTarget,
}

/// How instances were made, for `/v1/stats`.
#[derive(Debug, Default)]
pub struct InstanceStats {
    /// Instances made (ready or on the request path).
    pub made: AtomicU64,
    /// Nanoseconds spent making them: store, context and instantiation.
    pub making_ns: AtomicU64,
    /// Calls that took a ready instance.
    pub ready_hits: AtomicU64,
    /// Calls that had to make their instance on the request path.
    pub ready_misses: AtomicU64,
}

impl InstanceStats {
    /// Counts one instance made since `started`.
    pub fn made_since(&self, started: Instant) {
        self.made.fetch_add(1, Ordering::Relaxed);
        self.making_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Ready instances of one function version.
struct FunctionReady {
    version: u64,
    instances: Mutex<Vec<ReadyInstance>>,
    refilling: AtomicBool,
    /// Making an instance failed (a trap while instantiating, say): the version gets no more;
    /// its calls make their own and report why.
    failed: AtomicBool,
}

/// The ready instances of every recently called `wasi:http` function.
pub struct ReadyInstances {
    settings: ReadySettings,
    functions: moka::sync::Cache<String, Arc<FunctionReady>>,
    /// How instances were made.
    pub stats: Arc<InstanceStats>,
    /// The server's wasm memory budget, which every instance (ready or not) is charged to.
    pub budget: Arc<crate::limits::MemoryBudget>,
    /// Tells the sweeper thread to end.
    stop: Arc<AtomicBool>,
}

impl ReadyInstances {
    /// An empty set, and its sweeper thread.
    pub fn new(settings: ReadySettings, budget: Arc<crate::limits::MemoryBudget>) -> Self {
        let functions =
            moka::sync::Cache::builder().max_capacity(settings.functions).time_to_idle(settings.idle).build();
        let stop = Arc::new(AtomicBool::new(false));
        if settings.per_function > 0 {
            spawn_sweeper(functions.clone(), settings.idle, stop.clone());
        }
        Self { settings, functions, stats: Arc::default(), budget, stop }
    }

    /// Functions holding ready instances (after the last sweep).
    pub fn functions_held(&self) -> u64 {
        self.functions.entry_count()
    }

    /// Takes a ready instance of `function`, if one is there.
    pub fn take(&self, function: &FunctionVersion) -> Option<ReadyInstance> {
        if self.settings.per_function == 0 {
            return None;
        }
        let taken = self
            .entry(function)
            .and_then(|entry| entry.instances.lock().unwrap_or_else(PoisonError::into_inner).pop());
        let counter = if taken.is_some() { &self.stats.ready_hits } else { &self.stats.ready_misses };
        counter.fetch_add(1, Ordering::Relaxed);
        taken
    }

    /// Has `function`'s ready instances made up to [`ReadySettings::per_function`], in a task of
    /// its own, unless that is under way. Call it when a call is done: a task spawned while the
    /// call runs would run before the call's own next steps on a single-threaded worker.
    pub fn replenish(&self, function: &Arc<FunctionVersion>, pre: &InstancePre) {
        if self.settings.per_function == 0 {
            return;
        }
        let Some(entry) = self.entry(function) else { return };
        if entry.failed.load(Ordering::Relaxed) || entry.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let per_function = self.settings.per_function;
        let (stats, function, pre) = (self.stats.clone(), function.clone(), pre.clone());
        let budget = self.budget.clone();
        tokio::spawn(async move {
            while entry.instances.lock().unwrap_or_else(PoisonError::into_inner).len() < per_function {
                let started = Instant::now();
                let output = OutputTarget::pending();
                let deadline = Instant::now() + function.config.timeout();
                let mut store = new_http_store(pre.engine(), &function.config, &output, deadline, &budget);
                match pre.instantiate(&mut store).await {
                    Ok(proxy) => {
                        stats.made_since(started);
                        let ready = ReadyInstance { store, proxy, output };
                        entry.instances.lock().unwrap_or_else(PoisonError::into_inner).push(ready);
                    }
                    Err(error) => {
                        tracing::debug!(function = %function.name, %error, "cannot make a ready instance");
                        entry.failed.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            entry.refilling.store(false, Ordering::Release);
        });
    }

    /// Throws away the ready instances of `name` (a new version, or deleted).
    pub fn retire(&self, name: &str) {
        self.functions.invalidate(name);
    }

    /// The entry of `function`'s version; `None` for a version older than the one it holds
    /// (a call still running the old version after a deploy gets nothing ready, and makes none).
    fn entry(&self, function: &FunctionVersion) -> Option<Arc<FunctionReady>> {
        let fresh = || {
            Arc::new(FunctionReady {
                version: function.version,
                instances: Mutex::default(),
                refilling: AtomicBool::new(false),
                failed: AtomicBool::new(false),
            })
        };
        let entry = self.functions.get_with_by_ref(function.name.as_str(), fresh);
        if entry.version == function.version {
            return Some(entry);
        }
        (entry.version < function.version).then(|| {
            let replacement = fresh();
            self.functions.insert(function.name.clone(), replacement.clone());
            replacement
        })
    }
}

impl Drop for ReadyInstances {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Has `functions` drop its expired entries (and with them their instances' pool slots) every
/// so often, until `stop`.
fn spawn_sweeper(
    functions: moka::sync::Cache<String, Arc<FunctionReady>>,
    idle: Duration,
    stop: Arc<AtomicBool>,
) {
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
    let spawned = std::thread::Builder::new().name("amphi-ready-sweeper".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            functions.run_pending_tasks();
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the ready-instance sweeper: idle functions keep their instances");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_contract::function::{ArtifactKind, FunctionConfig};

    #[test]
    fn an_uncalled_function_loses_its_ready_instances_without_any_other_call() {
        let settings = ReadySettings { idle: Duration::from_millis(100), ..Default::default() };
        let ready = ReadyInstances::new(settings, Arc::new(crate::limits::MemoryBudget::new(u64::MAX)));
        let function = FunctionVersion {
            name: "f".into(),
            version: 1,
            digest: "sha256:00".into(),
            kind: ArtifactKind::WasiHttpComponent,
            config: FunctionConfig::default(),
            created_at_ms: 0,
            init: None,
        };
        assert!(ready.entry(&function).is_some());
        ready.functions.run_pending_tasks();
        assert_eq!(ready.functions_held(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ready.functions_held() > 0 {
            assert!(Instant::now() < deadline, "the idle entry was never dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
