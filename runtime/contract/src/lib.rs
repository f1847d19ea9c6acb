//! The one invocation contract of Amphi, as types.
//!
//! Both backends (wasm and containers) and the gateway speak only in these terms, so a caller
//! cannot tell which backend served it except from the documented `amphi-backend` header.
//! `CONTRACT.md` at the repository root is the prose version of this crate.
//!
//! - [`function`]: what a deployed function is (artifact kind, config, version);
//! - [`headers`]: the metadata headers in and out;
//! - [`problem`]: platform errors as `application/problem+json`, with their fixed statuses;
//! - [`record`]: the invocation record and log lines, one shape for every backend;
//! - [`capture`]: a call's output split into log lines, within a budget;
//! - [`call`]: one call as a backend sees it, and how the backend reports its start and its end;
//! - [`backend`]: the trait the gateway dispatches to.

pub mod backend;
pub mod call;
pub mod capture;
pub mod cgi;
pub mod function;
pub mod headers;
pub mod problem;
pub mod record;
pub mod size;

pub use backend::{
    Backend, BackendError, BackendResponse, BoxError, BoxFuture, BuildFailure, BuildProgress, BuiltArtifact,
    CheckedSource, ConnectionInfo, InstanceView, InvokeFuture, ResponseBody, SourceUpload, UploadError,
};
pub use call::{Call, Completer, Completion, Ending, StartFacts};
pub use capture::{CaptureCounts, LogCapture, TelemetrySink, now_unix_us};
pub use function::{
    ArtifactKind, FunctionConfig, FunctionVersion, InitSnapshot, InvalidConfig, RetryConfig, RetryOn,
    ReuseConfig,
};
pub use problem::{Problem, ProblemKind};
pub use record::{BackendKind, InvocationRecord, JobRef, LogLine, LogStream, Outcome, StartKind};

/// The version of the contract this crate implements (`amphi-contract: 1` in CONTRACT.md).
pub const CONTRACT_VERSION: u32 = 1;
