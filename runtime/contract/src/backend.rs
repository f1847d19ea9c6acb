//! The trait every backend implements, so the gateway never asks which one it is talking to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::call::{Call, Completion};
use crate::function::{ArtifactKind, FunctionConfig, FunctionVersion, InitSnapshot, InvalidConfig};
use crate::problem::ProblemKind;
use crate::record::{BackendKind, LogStream, Outcome};

/// Where a backend sends lines written outside any call (an initializer's output at deploy).
pub type LineSink = Box<dyn Fn(LogStream, &str) + Send + Sync>;

/// Any error a body stream can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body streamed from a function.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A boxed future, as the backend trait's asynchronous methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future a backend returns for one call.
pub type InvokeFuture = BoxFuture<'static, Result<BackendResponse, BackendError>>;

/// A function's response, and how to learn when the function is done with the call.
pub struct BackendResponse {
    /// The response; its body may still be streaming from the function.
    pub response: http::Response<ResponseBody>,
    /// Resolves once the function is done (for a streamed body, after its last byte).
    pub completion: Completion,
}

/// Why a call produced no response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct BackendError {
    /// The kind of problem (and so the status) the caller gets.
    pub kind: ProblemKind,
    /// What happened, for the caller and the record.
    pub detail: String,
}

impl BackendError {
    /// An error of `kind`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    /// The outcome recorded for this error.
    pub fn outcome(&self) -> Outcome {
        match self.kind {
            ProblemKind::FunctionFailed => Outcome::FunctionError,
            ProblemKind::DeadlineExceeded => Outcome::Timeout,
            _ => Outcome::PlatformError,
        }
    }
}

/// A place where functions run, and everything the gateway asks of it over a function's life:
/// uploads, config checks, deploys, calls, retirement, introspection, shutdown.
///
/// A backend never writes an invocation record: it feeds the function's output into the
/// [`Call`]'s log capture, reports how it got an instance on the call, and says how the call ended
/// through its response's [`Completion`] (or by returning an error). The gateway writes the record.
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is (the `amphi-backend` header).
    fn kind(&self) -> BackendKind;

    /// Whether this backend runs artifacts of `kind`.
    fn serves(&self, kind: ArtifactKind) -> bool;

    /// Validates and prepares an uploaded artifact (stored under `digest` once accepted) and
    /// says its kind; `None` when this backend takes no artifacts uploaded as plain bytes.
    fn prepare_upload(
        &self,
        _digest: &str,
        _bytes: Bytes,
    ) -> Option<BoxFuture<'_, Result<ArtifactKind, UploadError>>> {
        None
    }

    /// Whether `bytes` are source this backend builds into an artifact (a build context), rather
    /// than an artifact as it is.
    fn builds_from(&self, _bytes: &[u8]) -> bool {
        false
    }

    /// Checks a source upload before its build starts. Blocking: it may read the whole upload.
    fn check_source(&self, _source: &SourceUpload) -> Result<CheckedSource, BuildFailure> {
        Err(BuildFailure::new(ProblemKind::UnprocessableEntity, "this backend builds nothing from source"))
    }

    /// Builds checked source into an artifact, reporting progress as it goes. The platform
    /// registers the artifact; the backend keeps what it built (an image) until
    /// [`Backend::remove_artifact`].
    fn build<'a>(
        &'a self,
        _source: SourceUpload,
        _checked: CheckedSource,
        _progress: Box<dyn FnMut(BuildProgress) + Send + 'a>,
    ) -> BoxFuture<'a, Result<BuiltArtifact, BuildFailure>> {
        Box::pin(async {
            Err(BuildFailure::new(
                ProblemKind::UnprocessableEntity,
                "this backend builds nothing from source",
            ))
        })
    }

    /// Finds an artifact its engine already has by `reference` (an image name); `None` when the
    /// backend has no such engine.
    fn import(&self, _reference: &str) -> Option<BoxFuture<'_, Result<BuiltArtifact, BuildFailure>>> {
        None
    }

    /// Pre-initializes the artifact `digest` for `config` (which names `init`): runs the
    /// initializer once, with the function's env and limits, and keeps the snapshot its instances
    /// will start from. The initializer's output goes to `output`, line by line. `None` when the
    /// backend has no such thing; an `Err` fails the deploy, which then changes nothing.
    fn pre_initialize<'a>(
        &'a self,
        _digest: &'a str,
        _kind: ArtifactKind,
        _config: &'a FunctionConfig,
        _output: LineSink,
    ) -> Option<BoxFuture<'a, Result<InitSnapshot, BackendError>>> {
        None
    }

    /// Checks what of a function's config depends on this backend (ceilings, grants it has).
    fn check_config(&self, config: &FunctionConfig) -> Result<(), InvalidConfig>;

    /// Starts the backend's background work, given the current versions of the functions it
    /// serves. Called once, on the runtime.
    fn start(self: Arc<Self>, _functions: Vec<Arc<FunctionVersion>>) {}

    /// `function` is now the current version of its name: resolves once what it keeps ready
    /// (a container function's reserved instances) is ready, or with why it is not.
    fn deployed(&self, _function: Arc<FunctionVersion>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Runs one call. `request` has the path the function sees and the contract's headers.
    fn invoke(&self, call: Call, request: http::Request<Bytes>) -> InvokeFuture;

    /// Forgets everything cached for `function` (deleted or redeployed); calls in flight finish.
    fn retire(&self, function: &str);

    /// Removes what the backend keeps for an artifact that garbage collection is removing (an
    /// image it built); an error means "not now" (in use), and the next collection tries again.
    fn remove_artifact(&self, _digest: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    /// The instances of `function`, for `describe`; `None` when the backend keeps none in view.
    fn instances(&self, _function: &str) -> Option<Vec<InstanceView>> {
        None
    }

    /// The backend's counters, for `/v1/stats` under its name.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }

    /// Stops taking calls and releases what the backend runs (containers); resolves when done.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Source uploaded to be built into an artifact: a build context and its Dockerfile's path.
#[derive(Debug, Clone)]
pub struct SourceUpload {
    /// The uploaded bytes.
    pub bytes: Bytes,
    /// Where in them the build starts (the Dockerfile's path).
    pub entry: String,
    /// Most bytes the source may unpack to.
    pub max_unpacked: u64,
}

/// What a backend learned checking a [`SourceUpload`], handed back to [`Backend::build`].
pub struct CheckedSource(pub Box<dyn std::any::Any + Send>);

/// One line of a build's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// A step began (`Step 2/5 : RUN make`).
    Step(String),
    /// A line of output.
    Output(String),
}

/// An artifact a backend built or found on its engine, for the platform to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltArtifact {
    /// `sha256:<hex>` (an image id).
    pub digest: String,
    /// Its kind.
    pub kind: ArtifactKind,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a build or an import gave no artifact: the problem the uploader gets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct BuildFailure {
    /// The kind of problem (and so the status).
    pub kind: ProblemKind,
    /// What went wrong.
    pub detail: String,
    /// The last lines the build printed before it failed.
    pub output_tail: Vec<String>,
}

impl BuildFailure {
    /// A failure of `kind`, with no build output.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into(), output_tail: Vec::new() }
    }
}

/// Why an upload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The upload is not a function this backend can run (422); the message says why.
    #[error("{0}")]
    Refused(String),
    /// The server failed while preparing it (500).
    #[error("preparing the upload failed: {0}")]
    Internal(#[source] BoxError),
}

/// One instance of a function, as `describe` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceView {
    /// The instance's id.
    pub id: String,
    /// `running`, `paused`, `pausing` or `unpausing`.
    pub state: &'static str,
    /// Calls it is serving.
    pub in_flight: u32,
    /// How long it has been idle, in milliseconds (0 while busy).
    pub idle_ms: u64,
}

/// The connection a request arrived on, put in the request's extensions by the gateway
/// (CGI's `REMOTE_ADDR` and `SERVER_PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: std::net::SocketAddr,
    /// The gateway's address the client connected to.
    pub local: std::net::SocketAddr,
}
