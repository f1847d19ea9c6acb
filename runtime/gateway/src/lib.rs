//! Amphi's HTTP gateway: one front door for every function, whatever backend runs it.
//!
//! - [`server`]: a worker thread per CPU, each with its own listener; connections (HTTP/1.1
//!   keep-alive, h2c); graceful shutdown;
//! - [`trigger`]: `/fn/{name}[/{rest}]` → body → admission → backend, with the contract's headers;
//! - [`capacity`]: a function's concurrency slots, one set per name, resized on redeploy;
//! - [`invocation`]: a call's invocation record, written in this one place however the call ends;
//! - [`admin`]: the `/v1` admin API (deploy, describe, delete, logs, invocations);
//! - [`follow`]: live log streaming;
//! - [`jobs`]: async invocations: `/async/fn`, the executors, retries, callbacks, schedules and
//!   the `/v1/jobs` and `/v1/schedules` API, over the durable queue of `amphi-queue`;
//! - [`platform`]: registry, artifacts, log store, backends and the live route table.

pub mod admin;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod follow;
pub mod invocation;
pub mod jobs;
pub mod metrics;
pub mod platform;
pub mod respond;
pub mod server;
pub mod source_build;
pub mod trigger;

pub use config::ServeConfig;
pub use platform::TokenSource;
pub use server::Server;

/// Errors starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The data directory or its databases failed.
    #[error(transparent)]
    Store(#[from] amphi_store::StoreError),
    /// The wasm backend could not start.
    #[error(transparent)]
    Wasm(#[from] amphi_wasm::WasmError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The job queue could not be opened.
    #[error(transparent)]
    Queue(#[from] amphi_queue::QueueError),
    /// The container backend could not be set up.
    #[error(transparent)]
    Container(#[from] amphi_container::ContainerError),
    /// A stored function has a kind no backend serves.
    #[error("no backend serves artifacts of kind {0}")]
    NoBackend(String),
    /// A thread or runtime of the server could not start.
    #[error("cannot start {what}: {source}")]
    Startup {
        /// What was starting.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Opening the platform stopped half-way (its task panicked or was cancelled).
    #[error("opening the platform failed: {0}")]
    Open(#[from] tokio::task::JoinError),
}
