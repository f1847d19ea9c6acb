//! `amphi serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use amphi_contract::size::{parse_bytes, parse_duration};
use amphi_gateway::{ServeConfig, Server, TokenSource};
use anyhow::{Context as _, Result};
use clap::Args;

/// The data directory when none is given.
pub const DEFAULT_DATA: &str = "amphi-data";

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "AMPHI_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory (artifacts, compiled code, registry, logs). With --store it holds this
    /// node's cache, build scratch and its own log store (shipped to the shared one).
    #[arg(long, env = "AMPHI_DATA", default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// A PostgreSQL store shared with other gateways (`postgres://USER@HOST/DB`): the registry,
    /// the artifacts, records and logs, async jobs and schedules, the admin token and the list of
    /// nodes live there. Unset: everything is in --data.
    #[arg(long, env = "AMPHI_STORE", value_name = "URL")]
    store: Option<String>,
    /// An OCI registry (`HOST:PORT`, plain HTTP on loopback or a trusted network) the cluster's
    /// nodes share the images they build from Dockerfiles through: pushed after the build,
    /// pulled by a node on its first cold start of the function.
    #[arg(long, env = "AMPHI_IMAGE_REGISTRY", value_name = "HOST:PORT", value_parser = parse_registry)]
    image_registry: Option<String>,
    /// Largest request body of a function call.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    max_body: u64,
    /// Largest .wasm upload.
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    max_upload: u64,
    /// Log bytes one invocation may write before the rest is dropped.
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
    log_limit: u64,
    /// Remove log lines and invocation records older than this.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    log_retention: Duration,
    /// Keep at most this many log lines (oldest removed first).
    #[arg(long, default_value_t = 10_000_000)]
    log_max_lines: u64,
    /// Most bytes the log store's database may take on disk; past it the oldest lines and
    /// records are removed (its write-ahead log adds up to 4MiB and one write batch).
    #[arg(long, default_value = "10GiB", value_parser = parse_bytes)]
    log_max_size: u64,
    /// Log lines waiting for the disk, in bytes; past half of it only the first 4KiB of each
    /// call's output is taken, past all of it none (each call's record counts what it lost).
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    log_queue_size: u64,
    /// Serve `GET /metrics` without the admin token (for a Prometheus that has none).
    #[arg(long)]
    metrics_public: bool,
    /// Time a client has to send a request's headers before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Time a client has to send a call's body (408 after it); the function's timeout starts
    /// only once the body is in.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Longest request target (path and query), in bytes; longer ones get 414.
    #[arg(long = "max-uri-length", default_value = "8KiB", value_parser = parse_bytes)]
    max_uri: u64,
    /// Most bytes of header fields a request may carry; more get 431.
    #[arg(long = "max-header-size", default_value = "64KiB", value_parser = parse_bytes)]
    max_header: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// The largest memory limit a wasm function may ask for.
    #[arg(long, default_value = "512MiB", value_parser = parse_bytes)]
    wasm_max_memory: u64,
    /// Linear memory all wasm calls may hold together (a grow past it gets the call 503);
    /// default: half of this machine's memory.
    #[arg(long, value_parser = parse_bytes)]
    wasm_memory_budget: Option<u64>,
    /// Wasm instances alive at once (pooling allocator slots).
    #[arg(long, default_value_t = 1000)]
    wasm_pool_instances: u32,
    /// Use guard pages and signal-based traps instead of explicit bounds checks (keeps the
    /// Spectre heap mitigation; costs two mprotect calls per request that grows memory).
    #[arg(long)]
    wasm_guard_pages: bool,
    /// Fresh instances kept ready per recently called wasm function (0: make each one when its
    /// request arrives).
    #[arg(long, default_value_t = 2)]
    wasm_ready_instances: usize,
    /// How often unused artifacts, compiled code and built images are collected.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    gc_every: Duration,
    /// How long an artifact no recent version uses is kept before it is collected.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gc_grace: Duration,
    /// CPU time one upload may take to compile; past it the upload is refused (422).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    compile_timeout: Duration,
    /// Memory one upload may take to compile; past it the upload is refused (422).
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    compile_memory: u64,
    /// Most async jobs queued or running at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 1_000_000)]
    queue_max: u64,
    /// Most bytes of a job's response body kept as its result; the rest is cut and marked.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    async_result_max: u64,
    /// Remove finished jobs and their results after this long.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    job_retention: Duration,
    /// A host (`host` or `host:port`) a job's callback may be sent to (repeatable; none by
    /// default, so callers cannot make the server reach addresses of their choosing).
    #[arg(long = "callback-allow-host", value_name = "HOST")]
    callback_allow_hosts: Vec<String>,
    /// Threads serving connections, each on its own listener (0: one per CPU).
    #[arg(long, env = "AMPHI_WORKERS", default_value_t = 0)]
    workers: usize,
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_open_files_limit();
    let mut config = ServeConfig::new(args.listen, args.data.clone());
    config.token = std::env::var("AMPHI_TOKEN").ok().filter(|t| !t.is_empty());
    config.store = args.store.clone().filter(|url| !url.is_empty());
    config.image_registry = args.image_registry.clone();
    config.max_body_bytes = args.max_body;
    config.max_upload_bytes = args.max_upload;
    config.log_bytes_per_invocation = usize::try_from(args.log_limit).unwrap_or(usize::MAX);
    config.logs.retention = args.log_retention;
    config.logs.max_lines = args.log_max_lines;
    config.logs.max_bytes = args.log_max_size;
    config.logs.queued_line_bytes = usize::try_from(args.log_queue_size).unwrap_or(usize::MAX);
    config.metrics_public = args.metrics_public;
    config.queue_max = args.queue_max;
    config.async_result_max = usize::try_from(args.async_result_max).unwrap_or(usize::MAX);
    config.job_retention = args.job_retention;
    config.callback_allow_hosts = args.callback_allow_hosts;
    config.drain_timeout = args.drain_timeout;
    config.header_read_timeout = args.header_read_timeout;
    config.body_timeout = args.body_timeout;
    config.max_uri_bytes = usize::try_from(args.max_uri).unwrap_or(usize::MAX);
    config.max_header_bytes = usize::try_from(args.max_header).unwrap_or(usize::MAX);
    config.wasm.max_memory_bytes = args.wasm_max_memory;
    config.wasm.pool_instances = args.wasm_pool_instances;
    config.wasm.guard_pages = args.wasm_guard_pages;
    config.wasm.ready.per_function = args.wasm_ready_instances;
    config.wasm.memory_budget_bytes = match args.wasm_memory_budget {
        Some(bytes) => bytes,
        None => half_of_the_machine()
            .context("cannot read this machine's memory size; give --wasm-memory-budget")?,
    };
    config.wasm.compile.timeout = args.compile_timeout;
    config.wasm.compile.memory_bytes = args.compile_memory;
    // Uploads are compiled by this very binary, as a worker process with those limits.
    config.wasm.compile.worker =
        Some(std::env::current_exe().context("cannot find the amphi binary to run compile workers")?);
    config.workers = args.workers;
    config.gc_every = args.gc_every;
    config.gc_grace = args.gc_grace;

    let server = Server::bind(config).await.context("cannot start the server")?;
    let addr = server.local_addr()?;
    let (token, source) = server.token();
    match source {
        TokenSource::Generated => {
            println!("admin token (generated; kept in {}/admin-token):", args.data.display());
            println!("  export AMPHI_TOKEN={token}");
        }
        TokenSource::GeneratedShared => {
            println!("admin token (generated; kept in the store, the same for every gateway sharing it):");
            println!("  export AMPHI_TOKEN={token}");
        }
        TokenSource::Configured | TokenSource::Stored | TokenSource::Shared => {}
    }
    println!("Amphi listening on http://{addr}");
    println!("  functions: http://{addr}/fn/NAME    admin API: http://{addr}/v1");
    server.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Every connection, container socket and log database takes a file descriptor; the usual soft
/// limit of 1024 would refuse connections long before the machine is busy. Raises the soft limit
/// to the hard one, and says so when even that is low.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else { return };
    let target = hard.unwrap_or(1 << 20);
    if soft < target {
        match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(target), maximum: hard }) {
            Ok(()) => tracing::info!(from = soft, to = target, "raised the open-files limit"),
            Err(error) => tracing::warn!(%error, soft, "cannot raise the open-files limit"),
        }
    }
    if target < 4096 {
        tracing::warn!(
            limit = target,
            "the open-files limit is low: connections beyond it will be refused (raise the hard limit, ulimit -Hn)"
        );
    }
}

/// Half of the machine's physical memory (`MemTotal` in /proc/meminfo).
fn half_of_the_machine() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib * 1024 / 2)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// `HOST:PORT` of an image registry: no scheme, no path (Docker names images `HOST:PORT/repo`).
fn parse_registry(text: &str) -> Result<String, String> {
    let valid = !text.contains("://")
        && !text.contains('/')
        && text.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not HOST:PORT of a registry (such as 127.0.0.1:5000, without http:// or a path)"
        ))
    }
}
