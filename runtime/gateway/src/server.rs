//! Listening, serving connections (HTTP/1.1 with keep-alive, and h2c), and shutting down
//! gracefully: stop accepting, end follow streams, let in-flight calls finish (up to the drain
//! timeout), stop the backends, flush the log store.
//!
//! Thread per core: each worker thread runs its own single-threaded tokio runtime and accepts
//! on its own listener, all bound to the same port with `SO_REUSEPORT`, so the kernel spreads
//! connections over them and a connection, with every call on it, stays on one CPU. Measured
//! on this project's machines against one multi-threaded runtime, this serves more wasm calls
//! per second (no work stealing, no cross-CPU wake-ups; see `bench/README.md`). All workers
//! share one [`Platform`]: one route table, one registry, one log store. Work a call starts that
//! outlives it (a container instance's event stream, say) stays on that call's worker, which
//! keeps running until the backends have shut down.
//!
//! A port already in use fails to bind as usual; only the workers' own listeners share it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amphi_contract::{ConnectionInfo, ProblemKind, ResponseBody};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::config::ServeConfig;
use crate::platform::{Platform, TokenSource};
use crate::{GatewayError, admin, jobs, respond, trigger};

/// Connections waiting to be accepted, per listener.
const BACKLOG: u32 = 1024;

/// A bound, ready server.
pub struct Server {
    platform: Arc<Platform>,
    /// One per worker, all on the same address.
    listeners: Vec<std::net::TcpListener>,
    token_source: TokenSource,
}

impl Server {
    /// Opens the platform (data directory, backends, routes) and binds the listeners.
    pub async fn bind(config: ServeConfig) -> Result<Self, GatewayError> {
        let listen = config.listen;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (platform, token_source) = tokio::task::spawn_blocking(move || Platform::open(config)).await??;
        let listeners =
            bind_listeners(listen, workers).map_err(|source| GatewayError::Bind { addr: listen, source })?;
        platform.start_backends();
        let platform = Arc::new(platform);
        platform.start_collecting();
        let address =
            listeners[0].local_addr().map_err(|source| GatewayError::Bind { addr: listen, source })?;
        crate::cluster::join(&platform, address).await?;
        Ok(Self { platform, listeners, token_source })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, GatewayError> {
        self.listeners[0]
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: self.platform.config.listen, source })
    }

    /// The admin token and where it came from.
    pub fn token(&self) -> (&str, TokenSource) {
        (self.platform.token(), self.token_source)
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let local = self.local_addr()?;
        let Self { platform, listeners, .. } = self;
        let runtimes = (0..listeners.len())
            .map(|_| tokio::runtime::Builder::new_current_thread().enable_all().build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| GatewayError::Startup { what: "the workers".into(), source })?;
        // Attempts of async jobs run on the serving threads, in turn.
        let handles = runtimes.iter().map(|runtime| runtime.handle().clone()).collect();
        crate::jobs::Jobs::start(&platform, handles);
        let (stop, stopped) = watch::channel(false);
        let (finish, finished) = watch::channel(false);
        let mut workers = Vec::new();
        for (index, (listener, runtime)) in listeners.into_iter().zip(runtimes).enumerate() {
            let (drained_tx, drained) = oneshot::channel();
            let worker = Worker { platform: platform.clone(), local, stop: stopped.clone() };
            let mut finished = finished.clone();
            let thread = std::thread::Builder::new()
                .name(format!("amphi-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        worker.serve(listener).await;
                        let _ = drained_tx.send(());
                        let _ = finished.wait_for(|finish| *finish).await;
                    });
                })
                // The workers already running stop with the sender's drop; nothing was served.
                .map_err(|source| GatewayError::Startup { what: format!("worker {index}"), source })?;
            workers.push((thread, drained));
        }

        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        stop.send_replace(true);
        platform.begin_shutdown();
        for (_, drained) in &mut workers {
            let _ = drained.await;
        }
        // Attempts running now finish (their jobs would otherwise run again after a restart).
        platform.jobs.drain(platform.config.drain_timeout).await;
        platform.shutdown_backends().await;
        finish.send_replace(true);
        let logs = platform.logs.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (thread, _) in workers {
                let _ = thread.join();
            }
            logs.flush()
        })
        .await;
        Ok(())
    }
}

/// Binds `count` listeners to `addr`; with port 0, all to the same free port.
fn bind_listeners(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // A plain bind first, so that a port held by another program, another Amphi included,
    // fails as usual: with `SO_REUSEPORT` alone, a second server of the same user would
    // silently share the port.
    let probe = std::net::TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        if count > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        listeners.push(socket.listen(BACKLOG)?.into_std()?);
    }
    Ok(listeners)
}

/// One worker thread's share of the serving.
struct Worker {
    platform: Arc<Platform>,
    local: SocketAddr,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Accepts and serves connections until told to stop, then drains them.
    async fn serve(mut self, listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "a worker cannot listen");
                return;
            }
        };
        let platform = &self.platform;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(platform.config.header_read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = self.stop.wait_for(|stop| *stop) => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = ConnectionInfo { remote, local: self.local };
            let platform = platform.clone();
            let service = service_fn(move |request| {
                let platform = platform.clone();
                async move { Ok::<_, Infallible>(dispatch(&platform, request, connection).await) }
            });
            let serving =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                if let Err(error) = serving.await {
                    tracing::debug!(%error, %remote, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(platform.config.drain_timeout, graceful.shutdown()).await.is_err() {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

async fn dispatch(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    connection: ConnectionInfo,
) -> Response<ResponseBody> {
    if let Some(refused) = refuse_oversized(&platform.config, &request) {
        return refused;
    }
    let path = request.uri().path().to_string();
    if let Some((name, rest)) = trigger::split_trigger_path(&path) {
        return trigger::invoke(platform, request, name, rest, connection).await;
    }
    if let Some((name, rest)) = jobs::accept::split_async_path(&path) {
        return jobs::accept::accept(platform, request, name, rest).await;
    }
    if let Some(admin_path) = path.strip_prefix("/v1").filter(|p| p.is_empty() || p.starts_with('/')) {
        return admin::handle(platform, request, admin_path).await;
    }
    if path == "/healthz" {
        return Response::new(respond::full("ok\n"));
    }
    if path == "/metrics" {
        return admin::metrics(platform, &request);
    }
    respond::problem_of(
        ProblemKind::NotFound,
        format!(
            "no route {path}: functions are called at /fn/NAME (or queued at /async/fn/NAME), the admin API \
             is at /v1"
        ),
    )
}

/// A request whose target or header fields are over this server's limits gets 414 or 431 as
/// problem+json. (Past HTTP/1.1's own parsing limits, 100 header fields or about 400 KB of
/// request head, the connection is answered with a bare 431 or 414 and closed before any of
/// this runs.)
fn refuse_oversized(config: &ServeConfig, request: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > config.max_uri_bytes {
        return Some(respond::problem_of(
            ProblemKind::UriTooLong,
            format!(
                "the request target is {target} bytes; this server takes at most {} (serve --max-uri-length)",
                config.max_uri_bytes
            ),
        ));
    }
    let header_bytes: usize = request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > config.max_header_bytes {
        return Some(respond::problem_of(
            ProblemKind::HeadersTooLarge,
            format!(
                "the header fields are {header_bytes} bytes; this server takes at most {} (serve --max-header-size)",
                config.max_header_bytes
            ),
        ));
    }
    None
}
