//! The container backend: functions that need native libraries or their own runtime, run in
//! Docker containers driven through the Engine API (bollard), kept warm in a pool per function.
//!
//! - [`context`] checks an uploaded build context; [`image`] builds it (or looks up an existing
//!   image); the image id is the function's artifact digest.
//! - [`pool`] holds each function version's instances: warm, paused, cold-started on demand,
//!   queued beyond `max_instances`, paused and removed when idle; it drives them through the
//!   [`driver`], which runs them as containers.
//! - [`instance`] is one container running `amphi-shim` (built by this crate's build script and
//!   embedded here) in front of the function; calls and log lines go through the shim's Unix
//!   socket, so containers run with no network by default.
//! - [`engine`] connects lazily and reconnects: while no engine answers, container functions get
//!   503 and everything else keeps working.
//!
//! Every container carries the labels `amphi.managed` and `amphi.installation=<id of the data
//! directory>`; at start the backend removes what an earlier run of the same data directory left,
//! and at shutdown it removes its containers.

pub mod context;
pub mod driver;
pub mod engine;
pub mod image;
pub mod instance;
pub mod pool;
pub mod socket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use amphi_contract::function::{ArtifactKind, FunctionConfig, FunctionVersion, InvalidConfig};
use amphi_contract::{
    Backend, BackendError, BackendKind, BackendResponse, BoxError, BoxFuture, BuildFailure, BuildProgress,
    BuiltArtifact, Call, CheckedSource, Completer, Completion, Ending, InstanceView, InvokeFuture, Outcome,
    ProblemKind, SourceUpload, TelemetrySink,
};
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

pub use crate::context::{CheckedContext, ContextError};
use crate::driver::ContainerDriver;
pub use crate::engine::EngineError;
pub use crate::image::{BuildError, BuildEvent, ImageInfo, ImageRegistry};
use crate::instance::{CallError, InstanceHost, LABEL_INSTALLATION};

/// The pool of one function version's containers.
type ContainerPool = pool::Pool<ContainerDriver>;
type Lease = pool::Lease<ContainerDriver>;

/// The shim, built for this machine by the build script.
const SHIM_BINARY: &[u8] = include_bytes!(env!("AMPHI_SHIM_BINARY"));
/// Longest path a Unix socket may have (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often idle instances are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A file of the backend could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The data directory's path is too long for the instances' Unix sockets.
    #[error("the data directory path {0} is too long for Unix sockets; use a shorter --data path")]
    PathTooLong(PathBuf),
}

/// The container backend.
pub struct ContainerBackend {
    host: Arc<InstanceHost>,
    pools: Mutex<HashMap<String, Arc<ContainerPool>>>,
    retired: Mutex<Vec<Arc<ContainerPool>>>,
}

impl ContainerBackend {
    /// Sets the backend up in `data` (a host path: Docker binds the shim and the run directories
    /// by path). Does not contact the engine; [`ContainerBackend::start`] does.
    pub fn new(
        data: &Path,
        installation: String,
        sink: Arc<dyn TelemetrySink>,
        registry: Option<ImageRegistry>,
    ) -> Result<Arc<Self>, ContainerError> {
        let io = |what: String| move |source| ContainerError::Io { what, source };
        let run_root = data.join("run");
        if run_root.join("0123456789ab/shim.sock").as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ContainerError::PathTooLong(data.to_path_buf()));
        }
        // Run directories of an earlier run belong to containers that are removed at start.
        let _ = std::fs::remove_dir_all(&run_root);
        std::fs::create_dir_all(&run_root).map_err(io(format!("creating {}", run_root.display())))?;
        // Each instance's directory is open to the function's user (it makes the socket there);
        // their parent keeps other local users from finding, or reaching, the sockets.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&run_root, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("restricting {}", run_root.display())))?;
        }
        let shim = install_shim(data).map_err(io("installing the container shim".into()))?;
        let host = Arc::new(InstanceHost {
            engine: engine::Engine::default(),
            sink,
            installation,
            run_root,
            shim,
            registry,
        });
        Ok(Arc::new(Self { host, pools: Mutex::default(), retired: Mutex::default() }))
    }

    /// Starts the background work: removes what an earlier run left (retrying until an engine
    /// answers), starts the reserved instances (`min_instances`) of `functions`, and sweeps idle
    /// instances from then on.
    fn start_background(self: Arc<Self>, functions: Vec<Arc<FunctionVersion>>) {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match backend.reconcile().await {
                    Ok(0) => break,
                    Ok(removed) => {
                        tracing::info!(removed, "removing containers an earlier run left behind");
                        break;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "no Docker engine: container functions answer 503 until one does");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            for function in functions {
                if let Err(e) = backend.start_reserved(function.clone()).await {
                    tracing::warn!(function = %function.name, error = %e, "cannot start reserved instances");
                }
            }
        });
        let backend = Arc::downgrade(&self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_EVERY);
            loop {
                ticks.tick().await;
                let Some(backend) = backend.upgrade() else { return };
                backend.sweep();
            }
        });
    }

    fn sweep(&self) {
        let pools: Vec<Arc<ContainerPool>> =
            self.pools.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for pool in pools {
            pool.sweep();
        }
        self.retired.lock().unwrap_or_else(PoisonError::into_inner).retain(|pool| !pool.sweep());
    }

    /// Removes every container of this installation; returns how many the engine listed.
    async fn reconcile(&self) -> Result<usize, EngineError> {
        let label = format!("{LABEL_INSTALLATION}={}", self.host.installation);
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![label])])),
            ..Default::default()
        };
        let containers =
            self.host.engine.run(|docker| async move { docker.list_containers(Some(options)).await }).await?;
        let listed = containers.len();
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match self
                .host
                .engine
                .run(|docker| async move { docker.remove_container(&id, Some(options)).await })
                .await
            {
                // Removed, gone already, or a pool is removing it right now.
                Ok(()) | Err(EngineError::Status { status: 404 | 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(listed)
    }

    /// Stops taking calls and removes every container of this installation, waiting until the
    /// engine lists none.
    async fn remove_all(&self) {
        let pools: Vec<Arc<ContainerPool>> =
            self.pools.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.retire();
        }
        let removing = async {
            loop {
                match self.reconcile().await {
                    Ok(0) => return Ok(()),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), removing).await {
            Ok(Ok(())) => tracing::info!("removed the container instances"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the container instances"),
            Err(_) => tracing::warn!("removing the container instances took more than 20s"),
        }
    }

    /// Checks what the container backend needs of a config.
    fn check_function_config(config: &FunctionConfig) -> Result<(), InvalidConfig> {
        if !config.allowed_outbound_hosts.is_empty() {
            return Err(InvalidConfig::new(
                "container functions are granted the network as a whole with `container.network`; \
                 allowed_outbound_hosts applies to wasm functions only",
            ));
        }
        if config.memory_bytes < 8 << 20 {
            return Err(InvalidConfig::new("a container function needs at least 8MiB of memory"));
        }
        Ok(())
    }

    /// Builds a checked context into an image, reporting progress as it goes.
    async fn build_image(
        &self,
        source: SourceUpload,
        context: CheckedContext,
        mut progress: impl FnMut(BuildProgress),
    ) -> Result<BuiltArtifact, BuildFailure> {
        let built = image::build(&self.host.engine, source.bytes, &context, |event| {
            progress(match event {
                BuildEvent::Step(text) => BuildProgress::Step(text),
                BuildEvent::Output(text) => BuildProgress::Output(text),
            })
        })
        .await;
        match built {
            Ok(image) => {
                if let Some(registry) = &self.host.registry {
                    progress(BuildProgress::Output(format!("pushing the image to {registry}")));
                    image::publish(&self.host.engine, registry, &image.id).await.map_err(|e| {
                        BuildFailure::new(
                            ProblemKind::BackendUnavailable,
                            format!("the image was built, but the other nodes could not get it: {e}"),
                        )
                    })?;
                }
                Ok(image_artifact(image))
            }
            Err(BuildError::Engine(e)) => Err(engine_failure(e)),
            Err(failed) => {
                let detail = failed.to_string();
                let output_tail = match failed {
                    BuildError::Failed { output_tail, .. } => output_tail,
                    BuildError::Engine(_) => Vec::new(),
                };
                Err(BuildFailure { kind: ProblemKind::UnprocessableEntity, detail, output_tail })
            }
        }
    }

    /// Looks up an image already on the engine.
    async fn find_image(&self, reference: String) -> Result<BuiltArtifact, BuildFailure> {
        match image::inspect(&self.host.engine, &reference).await {
            Ok(image) => Ok(image_artifact(image)),
            Err(e) if e.is_not_found() => Err(BuildFailure::new(
                ProblemKind::UnprocessableEntity,
                format!("no image `{reference}` on the Docker engine (build, pull or load it there first)"),
            )),
            Err(e) => Err(engine_failure(e)),
        }
    }

    /// Removes an image Amphi built (labelled `amphi.managed`), for garbage collection. An image
    /// Amphi did not build (registered with `{"image": …}`) is the user's and stays. Fails while
    /// a container still uses the image (the next collection tries again).
    async fn remove_built_image(&self, id: &str) -> Result<(), EngineError> {
        let image = match image::inspect(&self.host.engine, id).await {
            Ok(image) => image,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if image.labels.get(instance::LABEL_MANAGED).map(String::as_str) != Some("true") {
            return Ok(());
        }
        let id = id.to_string();
        let removed = self
            .host
            .engine
            .run(|docker| async move {
                docker.remove_image(&id, None::<bollard::query_parameters::RemoveImageOptions>, None).await
            })
            .await;
        match removed {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts `function`'s `min_instances` and waits until they are ready.
    async fn start_reserved(&self, function: Arc<FunctionVersion>) -> Result<(), BackendError> {
        self.pool_for(&function).start_reserved().await
    }

    fn new_pool(&self, function: &Arc<FunctionVersion>) -> Arc<ContainerPool> {
        let driver = ContainerDriver::new(self.host.clone(), function.clone());
        ContainerPool::new(function.clone(), Arc::new(driver))
    }

    fn pool_for(&self, function: &Arc<FunctionVersion>) -> Arc<ContainerPool> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        match pools.get(&function.name) {
            Some(pool) if pool.function.version == function.version => return pool.clone(),
            Some(pool) if pool.function.version > function.version => {
                // A call routed to the previous version just before a deploy: it gets a pool of
                // its own that goes away with its instance, and the current pool stays.
                let stale = self.new_pool(function);
                stale.retire();
                self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(stale.clone());
                return stale;
            }
            _ => {}
        }
        let pool = self.new_pool(function);
        if let Some(old) = pools.insert(function.name.clone(), pool.clone()) {
            old.retire();
            self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(old);
        }
        pool
    }
}

impl Backend for ContainerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    fn serves(&self, kind: ArtifactKind) -> bool {
        kind == ArtifactKind::ContainerImage
    }

    fn builds_from(&self, bytes: &[u8]) -> bool {
        context::looks_like_context(bytes)
    }

    fn check_source(&self, source: &SourceUpload) -> Result<CheckedSource, BuildFailure> {
        match context::check(&source.bytes, &source.entry, source.max_unpacked) {
            Ok(checked) => Ok(CheckedSource(Box::new(checked))),
            Err(e @ ContextError::TooLarge { .. }) => {
                Err(BuildFailure::new(ProblemKind::PayloadTooLarge, e.to_string()))
            }
            Err(ContextError::Invalid(why)) => Err(BuildFailure::new(
                ProblemKind::UnprocessableEntity,
                format!("the build context is refused: {why}"),
            )),
        }
    }

    fn build<'a>(
        &'a self,
        source: SourceUpload,
        checked: CheckedSource,
        progress: Box<dyn FnMut(BuildProgress) + Send + 'a>,
    ) -> BoxFuture<'a, Result<BuiltArtifact, BuildFailure>> {
        Box::pin(async move {
            let context = checked.0.downcast::<CheckedContext>().map_err(|_| {
                BuildFailure::new(ProblemKind::Internal, "the source was checked by another backend")
            })?;
            self.build_image(source, *context, progress).await
        })
    }

    fn import(&self, reference: &str) -> Option<BoxFuture<'_, Result<BuiltArtifact, BuildFailure>>> {
        Some(Box::pin(self.find_image(reference.to_string())))
    }

    fn check_config(&self, config: &FunctionConfig) -> Result<(), InvalidConfig> {
        Self::check_function_config(config)
    }

    fn start(self: Arc<Self>, functions: Vec<Arc<FunctionVersion>>) {
        self.start_background(functions);
    }

    fn deployed(&self, function: Arc<FunctionVersion>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.start_reserved(function))
    }

    fn invoke(&self, call: Call, request: http::Request<Bytes>) -> InvokeFuture {
        let pool = self.pool_for(&call.function);
        let host = self.host.clone();
        Box::pin(run_call(host, pool, call, request))
    }

    fn remove_artifact(&self, digest: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        let digest = digest.to_string();
        Box::pin(async move { Ok(self.remove_built_image(&digest).await?) })
    }

    fn instances(&self, function: &str) -> Option<Vec<InstanceView>> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        Some(pools.get(function).map(|p| p.view()).unwrap_or_default())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.remove_all())
    }

    fn retire(&self, function: &str) {
        if let Some(pool) = self.pools.lock().unwrap_or_else(PoisonError::into_inner).remove(function) {
            pool.retire();
            self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(pool);
        }
    }
}

async fn run_call(
    host: Arc<InstanceHost>,
    pool: Arc<ContainerPool>,
    call: Call,
    request: http::Request<Bytes>,
) -> Result<BackendResponse, BackendError> {
    let mut lease = pool.acquire(&call).await?;
    let deadline = tokio::time::Instant::from_std(call.deadline);
    let instance = lease.instance.clone();
    let sent = tokio::time::timeout_at(deadline, instance.call(request, &call.id, call.log.clone())).await;
    match sent {
        Ok(Ok((response, ended))) => {
            let (parts, body) = response.into_parts();
            let (completer, completion) = Completion::pending();
            let body = CallBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                end: Some(CallEnd { id: call.id.clone(), lease, ended, completer }),
                timeout_ms: pool.function.config.timeout_ms,
            };
            Ok(BackendResponse {
                response: http::Response::from_parts(parts, body.boxed_unsync()),
                completion,
            })
        }
        Ok(Err(failure)) => {
            instance.forget_call(&call.id);
            let (why, wait) = match failure {
                CallError::Broken(why) => (why, Duration::from_secs(2)),
                CallError::Function(why) => (why, Duration::from_millis(300)),
            };
            let detail = if instance.wait_gone(wait).await {
                lease.discard();
                format!("{}{}", instance.describe_exit(&host, "during the call").await, instance.last_lines())
            } else {
                why
            };
            Err(BackendError::new(ProblemKind::FunctionFailed, detail))
        }
        Err(_elapsed) => {
            instance.forget_call(&call.id);
            lease.discard();
            let detail = format!(
                "the function did not respond within its timeout of {}ms; its instance was replaced",
                pool.function.config.timeout_ms
            );
            Err(BackendError::new(ProblemKind::DeadlineExceeded, detail))
        }
    }
}

/// What ends with the response body: the call's completion, and the hold on the instance.
struct CallEnd {
    id: Arc<str>,
    lease: Lease,
    ended: oneshot::Receiver<()>,
    completer: Completer,
}

impl CallEnd {
    /// Completes the call once the shim has sent its last log line (briefly waited for), so the
    /// record comes after the call's lines.
    fn finish(self, ending: Ending, discard: bool) {
        let Self { id, mut lease, ended, completer } = self;
        if discard {
            lease.discard();
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(500), ended).await;
            lease.instance.forget_call(&id);
            completer.complete(ending);
            drop(lease);
        });
    }
}

/// The function's response body, which completes the call when it ends, breaks off, or runs
/// past the deadline. Dropped early (the caller left), the call is given up without an ending.
struct CallBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    end: Option<CallEnd>,
    timeout_ms: u64,
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.end.is_some() && self.deadline.as_mut().poll(cx).is_ready() {
            let why = format!("the response did not finish within the timeout of {}ms", self.timeout_ms);
            if let Some(end) = self.end.take() {
                end.finish(Ending::cut(Outcome::Timeout, why.clone()), true);
            }
            return Poll::Ready(Some(Err(why.into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.finish(Ending::success(), false);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("the response broke off: {e}");
                if let Some(end) = self.end.take() {
                    end.finish(Ending::cut(Outcome::FunctionError, why.clone()), true);
                }
                Poll::Ready(Some(Err(why.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling a body whose length is reached; the call ends here then.
                if self.inner.is_end_stream()
                    && let Some(end) = self.end.take()
                {
                    end.finish(Ending::success(), false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CallBody {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            if self.inner.is_end_stream() {
                end.finish(Ending::success(), false);
                return;
            }
            // Given up without an ending: the gateway records the call as abandoned.
            end.lease.instance.forget_call(&end.id);
        }
    }
}

fn image_artifact(image: ImageInfo) -> BuiltArtifact {
    BuiltArtifact { digest: image.id, kind: ArtifactKind::ContainerImage, size: image.size }
}

/// An engine error as an uploader sees it: 503 while no engine answers, else 422.
fn engine_failure(error: EngineError) -> BuildFailure {
    match error {
        EngineError::Unavailable(_) => BuildFailure::new(ProblemKind::BackendUnavailable, error.to_string()),
        other => BuildFailure::new(ProblemKind::UnprocessableEntity, other.to_string()),
    }
}

/// Writes the embedded shim to `DATA/shim/amphi-shim-<digest>` (once per shim build).
fn install_shim(data: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let digest = hex::encode(sha2::Sha256::digest(SHIM_BINARY));
    let dir = data.join("shim");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("amphi-shim-{}", &digest[..16]));
    if !path.exists() {
        let temp = dir.join(format!(".amphi-shim-{}.tmp", std::process::id()));
        std::fs::write(&temp, SHIM_BINARY)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&temp, &path)?;
    }
    Ok(path)
}
