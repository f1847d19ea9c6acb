//! The platform's state: registry, artifacts, log store, backends, and the live route table.
//!
//! The registry (SQLite in the data directory, or a cluster's PostgreSQL) is the source of truth;
//! the route table is its in-memory mirror for the hot path, updated only after a write has
//! committed: by this gateway's own deploys, and in a cluster by the changes other gateways
//! announce ([`crate::cluster`]). Deploys are serialised, so the table never goes back to an
//! older version.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use amphi_container::ContainerBackend;
use amphi_contract::function::{ArtifactKind, FunctionConfig, FunctionVersion, validate_name};
use amphi_contract::record::{LogLine, LogStream};
use amphi_contract::{
    Backend, BoxFuture, BuildFailure, BuiltArtifact, Problem, ProblemKind, TelemetrySink, UploadError,
    now_unix_us,
};
use amphi_queue::JobQueue;
use amphi_queue::embedded::EmbeddedQueue;
use amphi_queue::postgres::PgQueue;
use amphi_store::artifacts::Artifacts;
use amphi_store::logs::{LogReader, LogStore};
use amphi_store::postgres::PgStore;
use amphi_store::postgres::registry::PgRegistry;
use amphi_store::registry::{ArtifactInfo, EmbeddedRegistry, Registry};
use amphi_store::{DataDir, StoreError};
use amphi_wasm::WasmBackend;
use bytes::Bytes;

use crate::GatewayError;
use crate::capacity::Capacity;
use crate::config::ServeConfig;

/// Where calls of one function go.
#[derive(Clone)]
pub struct Route {
    /// The current version.
    pub function: Arc<FunctionVersion>,
    /// The backend that runs it.
    pub backend: Arc<dyn Backend>,
    /// The function's concurrency slots, shared by all its versions.
    pub capacity: Arc<Capacity>,
}

/// How the admin token was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// Given by flag or environment.
    Configured,
    /// Read from the data directory.
    Stored,
    /// Made now and stored in the data directory.
    Generated,
    /// Read from the cluster's store, where another gateway made it.
    Shared,
    /// Made now and stored in the cluster's store, for every gateway sharing it.
    GeneratedShared,
}

/// The platform.
pub struct Platform {
    data: DataDir,
    registry: Box<dyn Registry>,
    /// The cluster this gateway belongs to, when its store is shared.
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// Where this gateway serves and when it started serving (ms since the epoch), once it does.
    pub(crate) serving: std::sync::OnceLock<(std::net::SocketAddr, u64)>,
    artifacts: Arc<Artifacts>,
    /// The log store.
    pub logs: Arc<LogStore>,
    /// Where records and lines are read from: `logs`, or in a cluster the store every gateway
    /// ships its own to.
    pub log_reader: Arc<dyn LogReader>,
    backends: Vec<Arc<dyn Backend>>,
    routes: RwLock<HashMap<String, Route>>,
    deploys: tokio::sync::Mutex<()>,
    /// The configuration it was opened with.
    pub config: ServeConfig,
    token: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The data directory's size in bytes, as of the last garbage collection.
    data_bytes: std::sync::atomic::AtomicU64,
    /// Times a log follower fell behind the live feed and was caught up from the store.
    pub follower_catch_ups: std::sync::atomic::AtomicU64,
    /// Calls counted and timed, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Async invocations: the job queue and its executors.
    pub jobs: crate::jobs::Jobs,
}

/// Versions of a function whose artifacts garbage collection keeps: the current one and the
/// ones just before it, to go back to. Older versions stay in the history; their artifacts, once
/// nothing else uses them, are removed (deploying one again needs a new upload).
pub const KEPT_VERSIONS: u64 = 5;

/// What one garbage collection removed.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Collected {
    /// Artifacts removed (with their compiled code or their image).
    pub artifacts: u64,
    /// Bytes freed in the data directory.
    pub bytes: u64,
}

impl Platform {
    /// Opens the data directory, starts the backends and loads the route table.
    pub fn open(config: ServeConfig) -> Result<(Self, TokenSource), GatewayError> {
        let data = DataDir::open(&config.data_dir)?;
        let shared = config.store.as_deref().map(PgStore::connect).transpose()?;
        let (token, source) = match (&config.token, &shared) {
            (Some(token), _) => (token.clone(), TokenSource::Configured),
            // Every gateway of a cluster answers to the one token the first of them made.
            (None, Some(store)) => {
                let settings = amphi_store::postgres::settings::PgSettings::new(store.clone());
                match settings.get_or_set(amphi_store::postgres::settings::ADMIN_TOKEN, &new_token())? {
                    (token, true) => (token, TokenSource::GeneratedShared),
                    (token, false) => (token, TokenSource::Shared),
                }
            }
            (None, None) => match data.stored_token()? {
                Some(stored) => (stored, TokenSource::Stored),
                None => {
                    let token = new_token();
                    data.store_token(&token)?;
                    (token, TokenSource::Generated)
                }
            },
        };
        let now_us = amphi_contract::now_unix_us();
        let (artifacts, registry, queue, cluster) = match shared {
            None => {
                let registry: Box<dyn Registry> = Box::new(EmbeddedRegistry::open(&data)?);
                let queue: Arc<dyn JobQueue> = Arc::new(EmbeddedQueue::open(&data, now_us)?);
                (Artifacts::open(&data)?, registry, queue, None)
            }
            Some(store) => {
                let registry: Box<dyn Registry> = Box::new(PgRegistry::new(store.clone()));
                let node = data.installation_id()?;
                let queue: Arc<dyn JobQueue> = Arc::new(PgQueue::open(store.clone(), node.clone(), now_us)?);
                let cluster = crate::cluster::Cluster::new(store.clone(), node);
                (Artifacts::shared(&data, store)?, registry, queue, Some(cluster))
            }
        };
        let artifacts = Arc::new(artifacts);
        let logs = Arc::new(LogStore::open(&data, config.logs.clone())?);
        let log_reader: Arc<dyn LogReader> = match &cluster {
            None => logs.clone(),
            Some(cluster) => cluster.ship_logs(&logs),
        };
        let wasm = Arc::new(WasmBackend::new(config.wasm.clone(), artifacts.clone())?);
        let images = config.image_registry.clone().map(amphi_container::ImageRegistry::new);
        let container = ContainerBackend::new(data.path(), data.installation_id()?, logs.clone(), images)?;
        let backends: Vec<Arc<dyn Backend>> = vec![wasm.clone(), container.clone()];
        let platform = Self {
            data,
            registry,
            cluster,
            serving: std::sync::OnceLock::new(),
            artifacts,
            logs,
            log_reader,
            backends,
            routes: RwLock::default(),
            deploys: tokio::sync::Mutex::new(()),
            config,
            token,
            shutdown: tokio::sync::watch::Sender::new(false),
            data_bytes: std::sync::atomic::AtomicU64::new(0),
            follower_catch_ups: std::sync::atomic::AtomicU64::new(0),
            metrics: Arc::default(),
            jobs: crate::jobs::Jobs::new(queue),
        };
        for function in platform.registry.all_current()? {
            platform.install_route(function)?;
        }
        Ok((platform, source))
    }

    /// Starts the backends' background work (the container backend's clean-up and reserved
    /// instances). Call once, on the runtime.
    pub fn start_backends(&self) {
        let functions = self.functions();
        for backend in &self.backends {
            let served = functions.iter().filter(|f| backend.serves(f.kind)).cloned().collect();
            backend.clone().start(served);
        }
    }

    /// Stops every backend: calls end, containers are removed.
    pub async fn shutdown_backends(&self) {
        for backend in &self.backends {
            backend.shutdown().await;
        }
    }

    /// The backend that runs artifacts of `kind`.
    fn backend_for(&self, kind: ArtifactKind) -> Result<&Arc<dyn Backend>, GatewayError> {
        self.backends
            .iter()
            .find(|b| b.serves(kind))
            .ok_or_else(|| GatewayError::NoBackend(kind.as_str().to_string()))
    }

    /// Every backend's counters, by backend name.
    pub fn backend_stats(&self) -> Vec<(&'static str, serde_json::Value)> {
        self.backends.iter().filter_map(|b| Some((b.kind().as_str(), b.stats()?))).collect()
    }

    /// Collects garbage now and every `config.gc_every` after, until shutdown.
    pub fn start_collecting(self: &Arc<Self>) {
        let platform = self.clone();
        tokio::spawn(async move {
            let mut shutdown = platform.shutdown_signal();
            loop {
                match platform.collect_garbage().await {
                    Ok(collected) if collected.artifacts > 0 => {
                        tracing::info!(
                            artifacts = collected.artifacts,
                            bytes = collected.bytes,
                            "garbage collected"
                        );
                    }
                    Ok(_) => {}
                    Err(problem) => tracing::warn!(detail = %problem.detail, "garbage collection failed"),
                }
                tokio::select! {
                    () = tokio::time::sleep(platform.config.gc_every) => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                }
            }
        });
    }

    /// Removes artifacts (source, compiled code, built image) that no function's recent versions
    /// use ([`KEPT_VERSIONS`]) and that are older than the grace period, so an upload not yet
    /// deployed is kept. Runs under the deploy lock: no deploy can take up an artifact while it
    /// goes. Calls in flight keep running: wasm code is in memory, and an image a container still
    /// uses is not removed (it goes in a later collection).
    pub async fn collect_garbage(self: &Arc<Self>) -> Result<Collected, Problem> {
        let _serialised = self.deploys.lock().await;
        let grace = u64::try_from(self.config.gc_grace.as_millis()).unwrap_or(u64::MAX);
        let before = (amphi_contract::now_unix_us() / 1000).saturating_sub(grace);
        let platform = self.clone();
        let candidates = blocking(move || {
            platform.registry.unreferenced_artifacts(before, KEPT_VERSIONS).map_err(internal)
        })
        .await?;
        let mut collected = Collected::default();
        for artifact in candidates {
            let backend = self.backend_for(artifact.kind).map_err(internal)?;
            if let Err(error) = backend.remove_artifact(&artifact.digest).await {
                tracing::debug!(digest = %artifact.digest, %error, "an artifact stays for now");
                continue;
            }
            let platform = self.clone();
            let freed = blocking(move || {
                if !platform
                    .registry
                    .remove_artifact_if_unused(&artifact.digest, KEPT_VERSIONS)
                    .map_err(internal)?
                {
                    return Ok(None);
                }
                match artifact.kind {
                    ArtifactKind::ContainerImage => Ok(Some(artifact.size)),
                    _ => platform.artifacts.remove(&artifact.digest).map(Some).map_err(internal),
                }
            })
            .await?;
            if let Some(freed) = freed {
                collected.artifacts += 1;
                collected.bytes += freed;
            }
        }
        let platform = self.clone();
        let size = blocking(move || Ok(platform.data.size())).await?;
        self.data_bytes.store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(collected)
    }

    /// This gateway's id: its data directory's installation id. Blocking (a file read).
    pub fn installation_id(&self) -> Result<String, StoreError> {
        self.data.installation_id()
    }

    /// The data directory's size in bytes, as of the last garbage collection.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Changes to `true` when the server begins shutting down; long-lived streams end then.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells long-lived streams that the server is shutting down.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Where calls of `name` go, if it exists.
    pub fn route(&self, name: &str) -> Option<Route> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Calls in flight now, over every function.
    pub fn in_flight(&self) -> usize {
        let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.values().map(|r| r.capacity.in_flight()).sum()
    }

    /// Calls in flight per function, with the backend that runs it.
    pub fn in_flight_by_function(&self) -> Vec<(String, amphi_contract::BackendKind, usize)> {
        let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.iter().map(|(name, r)| (name.clone(), r.backend.kind(), r.capacity.in_flight())).collect()
    }

    /// The instances of every function whose backend keeps instances (containers).
    pub fn instances_by_function(&self) -> Vec<(String, Vec<amphi_contract::InstanceView>)> {
        let routes: Vec<(String, Arc<dyn Backend>)> = {
            let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            routes.iter().map(|(name, r)| (name.clone(), r.backend.clone())).collect()
        };
        routes
            .into_iter()
            .filter_map(|(name, backend)| Some((name.clone(), backend.instances(&name)?)))
            .collect()
    }

    /// The current version of every function, by name.
    pub fn functions(&self) -> Vec<Arc<FunctionVersion>> {
        let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = routes.values().map(|r| r.function.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(self: &Arc<Self>, name: String) -> Result<Vec<FunctionVersion>, Problem> {
        let platform = self.clone();
        blocking(move || platform.registry.versions(&name).map_err(stored)).await
    }

    /// Validates, compiles and stores an upload. Returns the artifact and whether it is new.
    /// Compiling runs in a bounded worker process; it is abandoned (and the worker killed) when
    /// the uploader goes away or the server shuts down, so neither ever waits on a compile.
    pub async fn upload(self: &Arc<Self>, bytes: Bytes) -> Result<(ArtifactInfo, bool), Problem> {
        let digest = amphi_store::artifacts::digest_of(&bytes);
        let platform = self.clone();
        let key = digest.clone();
        let known = blocking(move || platform.registry.artifact_uploaded_again(&key).map_err(stored)).await?;
        if let Some(known) = known {
            return Ok((known, false));
        }
        // Validate before anything is stored: a refused upload leaves nothing behind.
        let refused = |e: UploadError| match e {
            UploadError::Internal(e) => internal(e),
            refused => Problem::new(ProblemKind::UnprocessableEntity, refused.to_string()),
        };
        let preparing = self.backends.iter().find_map(|b| b.prepare_upload(&digest, bytes.clone()));
        let Some(preparing) = preparing else {
            return Err(Problem::new(
                ProblemKind::UnprocessableEntity,
                "no backend takes uploaded artifacts",
            ));
        };
        let mut shutdown = self.shutdown_signal();
        let kind = tokio::select! {
            prepared = preparing => prepared.map_err(refused)?,
            _ = shutdown.wait_for(|stopping| *stopping) => {
                return Err(Problem::new(ProblemKind::BackendUnavailable, "the server is shutting down"));
            }
        };
        let platform = self.clone();
        blocking(move || {
            platform.artifacts.put(&bytes).map_err(stored)?;
            let info = ArtifactInfo { digest, kind, size: bytes.len() as u64 };
            platform.registry.add_artifact(&info).map_err(stored)?;
            Ok((info, true))
        })
        .await
    }

    /// The backend that builds `bytes` into an artifact, if they are source one builds from.
    pub fn builder_for(&self, bytes: &[u8]) -> Option<Arc<dyn Backend>> {
        self.backends.iter().find(|b| b.builds_from(bytes)).cloned()
    }

    /// Looks `reference` up on the engine of the first backend that imports artifacts.
    pub fn import(&self, reference: &str) -> Option<BoxFuture<'_, Result<BuiltArtifact, BuildFailure>>> {
        self.backends.iter().find_map(|b| b.import(reference))
    }

    /// Registers an artifact a backend built or found (its digest is the artifact's).
    pub async fn register_built(
        self: &Arc<Self>,
        built: BuiltArtifact,
    ) -> Result<(ArtifactInfo, bool), Problem> {
        let platform = self.clone();
        blocking(move || {
            if let Some(known) = platform.registry.artifact(&built.digest).map_err(stored)? {
                return Ok((known, false));
            }
            let info = ArtifactInfo { digest: built.digest, kind: built.kind, size: built.size };
            platform.registry.add_artifact(&info).map_err(stored)?;
            Ok((info, true))
        })
        .await
    }

    /// Makes `digest` with `config` the new current version of `name`. Durable when it returns;
    /// a container function's `min_instances` are started before it returns, and a failure to
    /// start them comes back as the warning.
    pub async fn deploy(
        self: &Arc<Self>,
        name: String,
        digest: String,
        config: FunctionConfig,
    ) -> Result<(FunctionVersion, Option<String>), Problem> {
        validate_name(&name).map_err(|e| Problem::new(ProblemKind::BadRequest, e.to_string()))?;
        let serialised = self.deploys.lock().await;
        self.deploy_serialised(serialised, name, digest, config).await
    }

    /// Applies `patch` (a JSON merge patch, RFC 7396) to the current config of `name` and deploys
    /// the result as a new version of the same artifact. Read, merge and write happen under the
    /// deploy lock, so two PATCHes never lose each other's changes; fields the patch does not name
    /// keep their current values, and `null` resets a field to its default.
    pub async fn update(
        self: &Arc<Self>,
        name: String,
        patch: serde_json::Value,
    ) -> Result<(FunctionVersion, Option<String>), Problem> {
        let serialised = self.deploys.lock().await;
        let current = self
            .route(&name)
            .ok_or_else(|| Problem::new(ProblemKind::NotFound, format!("no function named `{name}`")))?
            .function;
        let config = current
            .config
            .with_patch(&patch)
            .map_err(|e| Problem::new(ProblemKind::BadRequest, e.to_string()))?;
        self.deploy_serialised(serialised, name, current.digest.clone(), config).await
    }

    async fn deploy_serialised(
        self: &Arc<Self>,
        serialised: tokio::sync::MutexGuard<'_, ()>,
        name: String,
        digest: String,
        config: FunctionConfig,
    ) -> Result<(FunctionVersion, Option<String>), Problem> {
        config.validate().map_err(|e| Problem::new(ProblemKind::UnprocessableEntity, e.to_string()))?;
        let unknown = |digest: &str| {
            Problem::new(
                ProblemKind::UnprocessableEntity,
                format!("no artifact {digest} was uploaded (POST /v1/artifacts first)"),
            )
        };
        let platform = self.clone();
        let key = digest.clone();
        let artifact = blocking(move || platform.registry.artifact(&key).map_err(stored))
            .await?
            .ok_or_else(|| unknown(&digest))?;
        let backend = self.backend_for(artifact.kind).map_err(internal)?;
        config
            .check_kind(artifact.kind)
            .and_then(|()| backend.check_config(&config))
            .map_err(|e| Problem::new(ProblemKind::UnprocessableEntity, e.to_string()))?;
        let init = match &config.init {
            Some(_) => Some(self.pre_initialize(backend, &name, &artifact, &config).await?),
            None => None,
        };
        let platform = self.clone();
        let function = blocking(move || {
            platform.registry.deploy(&name, &digest, &config, init.as_ref()).map_err(|e| match e {
                StoreError::UnknownArtifact(digest) => unknown(&digest),
                other => stored(other),
            })
        })
        .await?;
        let current = self.install_route(function.clone()).map_err(internal)?;
        // Other deploys need not wait for this one's instances to start.
        drop(serialised);
        let backend = self.backend_for(function.kind).map_err(internal)?;
        let warning = backend.deployed(current).await.err().map(|e| {
            format!("version {} is deployed, but its reserved instances did not start: {e}", function.version)
        });
        Ok((function, warning))
    }

    /// Runs the initializer `config.init` names once (the backend snapshots what it leaves); its
    /// output goes to the function's log, stream `init`. A failure fails the deploy with 422.
    async fn pre_initialize(
        &self,
        backend: &Arc<dyn Backend>,
        name: &str,
        artifact: &ArtifactInfo,
        config: &FunctionConfig,
    ) -> Result<amphi_contract::InitSnapshot, Problem> {
        let logs = self.logs.clone();
        let function = name.to_string();
        let output = Box::new(move |stream: LogStream, text: &str| {
            let line = LogLine {
                seq: 0,
                ts_us: now_unix_us(),
                function: function.clone(),
                invocation_id: String::new(),
                // The guest's own lines are the initializer's; the platform's say how it went.
                stream: if stream == LogStream::Platform { LogStream::Platform } else { LogStream::Init },
                line: text.to_string(),
            };
            // A line the store cannot take is counted in its stats; there is no call to note it on.
            let _ = logs.log_line(line, 0);
        });
        let Some(running) = backend.pre_initialize(&artifact.digest, artifact.kind, config, output) else {
            return Err(Problem::new(
                ProblemKind::UnprocessableEntity,
                "init (pre-initialization) is for wasm functions; a container function initializes \
                 in its process before it reports ready",
            ));
        };
        let mut shutdown = self.shutdown_signal();
        tokio::select! {
            done = running => done.map_err(|e| Problem::new(e.kind, e.detail)),
            _ = shutdown.wait_for(|stopping| *stopping) => {
                Err(Problem::new(ProblemKind::BackendUnavailable, "the server is shutting down"))
            }
        }
    }

    /// Deletes `name`. Calls in flight finish on the version they started with.
    pub async fn delete(self: &Arc<Self>, name: String) -> Result<bool, Problem> {
        let _serialised = self.deploys.lock().await;
        let platform = self.clone();
        let key = name.clone();
        let existed = blocking(move || platform.registry.delete(&key).map_err(stored)).await?;
        if let Some(route) =
            self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name)
        {
            route.backend.retire(&name);
        }
        Ok(existed)
    }

    /// Makes the route of `name` match `current`, its current version in the registry (`None`:
    /// deleted), as another gateway left it. Versions only go forward.
    pub(crate) fn follow_registry(&self, name: &str, current: Option<FunctionVersion>) {
        let routed = self.route(name).map(|route| route.function.version);
        match current {
            Some(function) if routed.is_none_or(|version| version < function.version) => {
                let version = function.version;
                if let Err(error) = self.install_route(function) {
                    tracing::warn!(%error, function = name, version, "cannot route a version deployed elsewhere");
                }
            }
            Some(_) => {}
            None => {
                let removed =
                    self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
                if let Some(route) = removed {
                    route.backend.retire(name);
                }
            }
        }
    }

    /// Names of the functions routed now.
    pub(crate) fn routed_names(&self) -> Vec<String> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect()
    }

    /// The registry.
    pub(crate) fn registry(&self) -> &dyn Registry {
        &*self.registry
    }

    fn install_route(&self, function: FunctionVersion) -> Result<Arc<FunctionVersion>, GatewayError> {
        let backend = self.backend_for(function.kind)?.clone();
        let name = function.name.clone();
        let limit = function.config.concurrency;
        let function = Arc::new(function);
        let previous = {
            let mut routes = self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let capacity = match routes.get(&name) {
                Some(previous) => {
                    previous.capacity.resize(limit);
                    previous.capacity.clone()
                }
                None => Arc::new(Capacity::new(limit)),
            };
            routes.insert(name.clone(), Route { function: function.clone(), backend, capacity })
        };
        if let Some(previous) = previous {
            previous.backend.retire(&name);
        }
        let current = function;
        Ok(current)
    }
}

/// Runs blocking storage work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(internal(e)))
}

/// A storage failure as a problem: 503 while the cluster's store cannot be reached (try again),
/// else 500.
pub fn stored(error: StoreError) -> Problem {
    match error {
        StoreError::Unavailable(why) => {
            tracing::warn!(%why, "the store is unavailable");
            Problem::new(ProblemKind::BackendUnavailable, format!("the store is unavailable: {why}"))
        }
        other => internal(other),
    }
}

/// A platform failure (storage, a task that died) as a 500 problem, logged.
pub fn internal(error: impl std::fmt::Display) -> Problem {
    tracing::error!(%error, "internal error");
    Problem::new(ProblemKind::Internal, error.to_string())
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
