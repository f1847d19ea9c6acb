//! What `amphi serve` can be told.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use amphi_store::logs::LogStoreConfig;
use amphi_wasm::WasmSettings;

/// Configuration of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// A PostgreSQL store shared with other gateways (`postgres://…`); `None`: everything is in
    /// the data directory.
    pub store: Option<String>,
    /// The image registry (`HOST:PORT`) the cluster's nodes share built images through.
    pub image_registry: Option<String>,
    /// The admin token; when `None`, the one stored in the data directory, or a new one.
    pub token: Option<String>,
    /// Largest request body a function call may carry.
    pub max_body_bytes: u64,
    /// Largest artifact upload.
    pub max_upload_bytes: u64,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a client has to send a call's body (408 after it).
    pub body_timeout: Duration,
    /// Longest request target (path and query) accepted (414 beyond it).
    pub max_uri_bytes: usize,
    /// Most bytes of header fields (names and values) a request may carry (431 beyond them).
    pub max_header_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// Log bytes one invocation may write; more is dropped and the truncation recorded.
    pub log_bytes_per_invocation: usize,
    /// The log store's retention and queue.
    pub logs: LogStoreConfig,
    /// The wasm backend's settings.
    pub wasm: WasmSettings,
    /// How often garbage collection runs.
    pub gc_every: Duration,
    /// How old an unused artifact must be before garbage collection removes it.
    pub gc_grace: Duration,
    /// Whether `GET /metrics` answers without the admin token.
    pub metrics_public: bool,
    /// Most jobs queued or running at once; more get 503 with `Retry-After`.
    pub queue_max: u64,
    /// Most bytes of a job's response body kept as its result; the rest is cut and marked.
    pub async_result_max: usize,
    /// How long finished jobs and their results are kept.
    pub job_retention: Duration,
    /// Hosts (`host` or `host:port`) a job's callback may be sent to; none by default.
    pub callback_allow_hosts: Vec<String>,
    /// Threads that accept and serve connections, each with its own listener on the same port;
    /// 0 means one per CPU.
    pub workers: usize,
}

impl ServeConfig {
    /// The defaults, serving `data_dir` on `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            store: None,
            image_registry: None,
            token: None,
            max_body_bytes: 16 << 20,
            max_upload_bytes: 128 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_uri_bytes: 8 << 10,
            max_header_bytes: 64 << 10,
            drain_timeout: Duration::from_secs(30),
            log_bytes_per_invocation: 64 << 10,
            logs: LogStoreConfig::default(),
            wasm: WasmSettings::default(),
            workers: 0,
            metrics_public: false,
            queue_max: 1_000_000,
            async_result_max: 1 << 20,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            callback_allow_hosts: Vec::new(),
            gc_every: Duration::from_secs(600),
            gc_grace: Duration::from_secs(3600),
        }
    }
}
