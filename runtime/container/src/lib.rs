//! The container backend: functions that need native libraries or their own runtime, run in
//! Docker containers driven through the Engine API (bollard), kept warm in a pool per function.
//!
//! - [`context`] checks an uploaded build context; [`image`] builds it (or looks up an existing
//!   image); the image id is the function's artifact digest.
//! - [`pool`] holds each function version's instances: warm, paused, cold-started on demand,
//!   queued beyond `max_instances`, paused and removed when idle.
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

use amphi_contract::function::{ArtifactKind, FunctionConfig, FunctionVersion};
use amphi_contract::{
    Backend, BackendError, BackendKind, BackendResponse, BoxError, Finish, Invocation, InvokeFuture, Outcome,
    ProblemKind, StartKind, TelemetrySink,
};
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

pub use crate::context::{CheckedContext, ContextError};
pub use crate::engine::EngineError;
pub use crate::image::{BuildError, BuildEvent, ImageInfo};
use crate::instance::{CallError, LABEL_INSTALLATION, Shared};
pub use crate::pool::InstanceView;
use crate::pool::{Lease, Pool};

/// The shim, built for this machine by the build script.
const SHIM_BINARY: &[u8] = include_bytes!(env!("AMPHI_SHIM_BINARY"));
/// Longest path a Unix socket may have (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often idle instances are looked at.
const TIDY_EVERY: Duration = Duration::from_millis(200);

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
    shared: Arc<Shared>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    retired: Mutex<Vec<Arc<Pool>>>,
}

impl ContainerBackend {
    /// Sets the backend up in `data` (a host path: Docker binds the shim and the run directories
    /// by path). Does not contact the engine; [`ContainerBackend::start`] does.
    pub fn new(
        data: &Path,
        installation: String,
        sink: Arc<dyn TelemetrySink>,
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
        let shared =
            Arc::new(Shared { engine: engine::Engine::default(), sink, installation, run_root, shim });
        Ok(Arc::new(Self { shared, pools: Mutex::default(), retired: Mutex::default() }))
    }

    /// Starts the background work: removes what an earlier run left (retrying until an engine
    /// answers), warms the `min_instances` of `functions`, and tidies idle instances from then on.
    pub fn start(self: &Arc<Self>, functions: Vec<Arc<FunctionVersion>>) {
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
                if let Err(e) = backend.warm(function.clone()).await {
                    tracing::warn!(function = %function.name, error = %e, "cannot start reserved instances");
                }
            }
        });
        let backend = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TIDY_EVERY);
            loop {
                ticks.tick().await;
                let Some(backend) = backend.upgrade() else { return };
                backend.tidy();
            }
        });
    }

    fn tidy(&self) {
        let pools: Vec<Arc<Pool>> =
            self.pools.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for pool in pools {
            pool.tidy();
        }
        self.retired.lock().unwrap_or_else(PoisonError::into_inner).retain(|pool| !pool.tidy());
    }

    /// Removes every container of this installation; returns how many the engine listed.
    async fn reconcile(&self) -> Result<usize, EngineError> {
        let label = format!("{LABEL_INSTALLATION}={}", self.shared.installation);
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![label])])),
            ..Default::default()
        };
        let containers = self
            .shared
            .engine
            .run(|docker| async move { docker.list_containers(Some(options)).await })
            .await?;
        let listed = containers.len();
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match self
                .shared
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
    pub async fn shutdown(&self) {
        let pools: Vec<Arc<Pool>> =
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
    pub fn check_config(&self, config: &FunctionConfig) -> Result<(), String> {
        if !config.allowed_outbound_hosts.is_empty() {
            return Err("container functions are granted the network as a whole with `container.network`; \
                        allowed_outbound_hosts applies to wasm functions only"
                .into());
        }
        if config.memory_bytes < 8 << 20 {
            return Err("a container function needs at least 8MiB of memory".into());
        }
        Ok(())
    }

    /// Builds a checked context into an image, reporting progress as it goes.
    pub async fn build(
        &self,
        bytes: Bytes,
        context: &CheckedContext,
        progress: impl FnMut(BuildEvent),
    ) -> Result<ImageInfo, BuildError> {
        image::build(&self.shared.engine, bytes, context, progress).await
    }

    /// Looks up an image already on the engine.
    pub async fn find_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        image::inspect(&self.shared.engine, reference).await
    }

    /// Removes an image Amphi built (labelled `amphi.managed`), for garbage collection. An image
    /// Amphi did not build (registered with `{"image": …}`) is the user's and stays. Fails while
    /// a container still uses the image (the next collection tries again).
    pub async fn remove_built_image(&self, id: &str) -> Result<(), EngineError> {
        let image = match image::inspect(&self.shared.engine, id).await {
            Ok(image) => image,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if image.labels.get(instance::LABEL_MANAGED).map(String::as_str) != Some("true") {
            return Ok(());
        }
        let id = id.to_string();
        let removed = self
            .shared
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
    pub async fn warm(&self, function: Arc<FunctionVersion>) -> Result<(), BackendError> {
        self.pool_for(&function).warm().await
    }

    /// The instances of `name`'s current pool.
    pub fn instances(&self, name: &str) -> Vec<InstanceView> {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|p| p.view())
            .unwrap_or_default()
    }

    fn pool_for(&self, function: &Arc<FunctionVersion>) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        match pools.get(&function.name) {
            Some(pool) if pool.function.version == function.version => return pool.clone(),
            Some(pool) if pool.function.version > function.version => {
                // A call routed to the previous version just before a deploy: it gets a pool of
                // its own that goes away with its instance, and the current pool stays.
                let stale = Pool::new(function.clone(), self.shared.clone());
                stale.retire();
                self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(stale.clone());
                return stale;
            }
            _ => {}
        }
        let pool = Pool::new(function.clone(), self.shared.clone());
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

    fn invoke(&self, invocation: Invocation, request: http::Request<Bytes>) -> InvokeFuture {
        let pool = self.pool_for(&invocation.function);
        let shared = self.shared.clone();
        Box::pin(call(shared, pool, invocation, request))
    }

    fn retire(&self, function: &str) {
        if let Some(pool) = self.pools.lock().unwrap_or_else(PoisonError::into_inner).remove(function) {
            pool.retire();
            self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(pool);
        }
    }
}

async fn call(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    invocation: Invocation,
    request: http::Request<Bytes>,
) -> Result<BackendResponse, BackendError> {
    let (mut lease, queued) = match pool.acquire(invocation.deadline).await {
        Ok(acquired) => acquired,
        Err(error) => {
            error.finish(invocation);
            return Err(error);
        }
    };
    let (start, init) = (lease.start, lease.init);
    let fail = |mut error: BackendError, invocation: Invocation| {
        error.start = start;
        error.init = (start != StartKind::Warm).then_some(init);
        error.finish(invocation);
        Err(error)
    };
    let deadline = tokio::time::Instant::from_std(invocation.deadline);
    let instance = lease.instance.clone();
    let sent =
        tokio::time::timeout_at(deadline, instance.call(request, &invocation.id, invocation.log.clone()))
            .await;
    match sent {
        Ok(Ok((response, ended))) => {
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = CallBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                end: Some(CallEnd { invocation, lease, ended, status, start, init }),
                timeout_ms: pool.function.config.timeout_ms,
            };
            Ok(BackendResponse {
                response: http::Response::from_parts(parts, body.boxed_unsync()),
                start,
                init,
                queued,
            })
        }
        Ok(Err(failure)) => {
            instance.forget_call(&invocation.id);
            let (why, wait) = match failure {
                CallError::Broken(why) => (why, Duration::from_secs(2)),
                CallError::Function(why) => (why, Duration::from_millis(300)),
            };
            let detail = if instance.wait_gone(wait).await {
                lease.discard();
                format!(
                    "{}{}",
                    instance.describe_exit(&shared, "during the call").await,
                    instance.last_lines()
                )
            } else {
                why
            };
            fail(BackendError::new(ProblemKind::FunctionFailed, detail), invocation)
        }
        Err(_elapsed) => {
            instance.forget_call(&invocation.id);
            lease.discard();
            let detail = format!(
                "the function did not respond within its timeout of {}ms; its instance was replaced",
                pool.function.config.timeout_ms
            );
            fail(BackendError::new(ProblemKind::DeadlineExceeded, detail), invocation)
        }
    }
}

/// What ends with the response body: the record, and the hold on the instance.
struct CallEnd {
    invocation: Invocation,
    lease: Lease,
    ended: oneshot::Receiver<()>,
    status: u16,
    start: StartKind,
    init: Duration,
}

impl CallEnd {
    /// Writes the record once the shim has sent the call's last log line (briefly waited for).
    fn finish(self, outcome: Outcome, error: Option<String>, discard: bool) {
        let Self { invocation, mut lease, ended, status, start, init } = self;
        if discard {
            lease.discard();
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(500), ended).await;
            lease.instance.forget_call(&invocation.id);
            invocation.finish(Finish {
                status,
                outcome,
                error,
                start,
                init: (start != StartKind::Warm).then_some(init),
            });
            drop(lease);
        });
    }
}

/// The function's response body, which finishes the call when it ends, breaks off, or runs past
/// the deadline. Dropped early (the caller left), the call is recorded as abandoned.
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
                end.finish(Outcome::Timeout, Some(why.clone()), true);
            }
            return Poll::Ready(Some(Err(why.into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.finish(Outcome::Success, None, false);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("the response broke off: {e}");
                if let Some(end) = self.end.take() {
                    end.finish(Outcome::FunctionError, Some(why.clone()), true);
                }
                Poll::Ready(Some(Err(why.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling a body whose length is reached; the call ends here then.
                if self.inner.is_end_stream()
                    && let Some(end) = self.end.take()
                {
                    end.finish(Outcome::Success, None, false);
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
                end.finish(Outcome::Success, None, false);
                return;
            }
            let CallEnd { invocation, lease, .. } = end;
            lease.instance.forget_call(&invocation.id);
            // The invocation records itself as abandoned when dropped unfinished.
            drop(invocation);
            drop(lease);
        }
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
