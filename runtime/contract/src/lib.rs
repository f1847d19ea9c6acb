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
//! - [`invocation`]: one call in flight: metadata, log capture, and the record it leaves;
//! - [`backend`]: the trait the gateway dispatches to.

pub mod backend;
pub mod cgi;
pub mod function;
pub mod headers;
pub mod invocation;
pub mod problem;
pub mod record;
pub mod size;

pub use backend::{
    Backend, BackendError, BackendResponse, BoxError, ConnectionInfo, InvokeFuture, ResponseBody,
};
pub use function::{ArtifactKind, FunctionConfig, FunctionVersion};
pub use invocation::{Finish, Invocation, LogCapture, TelemetrySink};
pub use problem::{Problem, ProblemKind};
pub use record::{BackendKind, InvocationRecord, LogLine, LogStream, Outcome, StartKind};

/// The version of the contract this crate implements (`amphi-contract: 1` in CONTRACT.md).
pub const CONTRACT_VERSION: u32 = 1;
