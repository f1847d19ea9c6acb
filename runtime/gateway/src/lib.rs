//! Amphi's HTTP gateway: one front door for every function, whatever backend runs it.
//!
//! - [`server`]: a worker thread per CPU, each with its own listener; connections (HTTP/1.1
//!   keep-alive, h2c); graceful shutdown;
//! - [`trigger`]: `/fn/{name}[/{rest}]` → body → admission → backend, with the contract's headers;
//! - [`capacity`]: a function's concurrency slots, one set per name, resized on redeploy;
//! - [`admin`]: the `/v1` admin API (deploy, describe, delete, logs, invocations);
//! - [`follow`]: live log streaming;
//! - [`platform`]: registry, artifacts, log store, backends and the live route table.

pub mod admin;
pub mod build;
pub mod capacity;
pub mod config;
pub mod follow;
pub mod platform;
pub mod respond;
pub mod server;
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
    /// A stored function has a kind no backend serves.
    #[error("no backend serves artifacts of kind {0}")]
    NoBackend(String),
    /// Start-up failed otherwise.
    #[error("start-up failed: {0}")]
    Startup(String),
}
