//! The trait every backend implements, so the gateway never asks which one it is talking to.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::function::ArtifactKind;
use crate::invocation::{Finish, Invocation};
use crate::problem::ProblemKind;
use crate::record::{BackendKind, Outcome, StartKind};

/// Any error a body stream can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body streamed from a function.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The future a backend returns for one call.
pub type InvokeFuture = Pin<Box<dyn Future<Output = Result<BackendResponse, BackendError>> + Send>>;

/// A function's response, with what the platform reports about how it was made.
pub struct BackendResponse {
    /// The response; its body may still be streaming from the function.
    pub response: http::Response<ResponseBody>,
    /// How the instance that served the call was obtained.
    pub start: StartKind,
    /// Time spent making the instance ready.
    pub init: Duration,
    /// Time spent waiting inside the backend for a free instance.
    pub queued: Duration,
}

/// Why a call produced no response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct BackendError {
    /// The kind of problem (and so the status) the caller gets.
    pub kind: ProblemKind,
    /// What happened, for the caller and the record.
    pub detail: String,
    /// How the instance for the call was obtained (warm when none was).
    pub start: StartKind,
    /// Time spent making the instance ready.
    pub init: Option<Duration>,
}

impl BackendError {
    /// An error of `kind`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into(), start: StartKind::Warm, init: None }
    }

    /// The outcome recorded for this error.
    pub fn outcome(&self) -> Outcome {
        match self.kind {
            ProblemKind::FunctionFailed => Outcome::FunctionError,
            ProblemKind::DeadlineExceeded => Outcome::Timeout,
            _ => Outcome::PlatformError,
        }
    }

    /// Ends `invocation` with this error in its record.
    pub fn finish(&self, invocation: Invocation) {
        invocation.finish(Finish {
            status: self.kind.status(),
            outcome: self.outcome(),
            error: Some(self.detail.clone()),
            start: self.start,
            init: self.init,
        });
    }
}

/// A place where functions run.
///
/// `invoke` owns the [`Invocation`]: the backend feeds the function's output into its log
/// capture and finishes its record (with [`Invocation::finish`] or [`BackendError::finish`]) when
/// the function is done, which for a streamed body is after the last byte.
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is (the `amphi-backend` header).
    fn kind(&self) -> BackendKind;

    /// Whether this backend runs artifacts of `kind`.
    fn serves(&self, kind: ArtifactKind) -> bool;

    /// Runs one call. `request` has the path the function sees and the contract's headers.
    fn invoke(&self, invocation: Invocation, request: http::Request<Bytes>) -> InvokeFuture;

    /// Forgets everything cached for `function` (deleted or redeployed); calls in flight finish.
    fn retire(&self, function: &str);
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
