//! Listening, serving connections (HTTP/1.1 with keep-alive, and h2c), and shutting down
//! gracefully: stop accepting, end follow streams, let in-flight calls finish (up to the drain
//! timeout), flush the log store.

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
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::platform::{Platform, TokenSource};
use crate::{GatewayError, admin, respond, trigger};

/// A bound, ready server.
pub struct Server {
    platform: Arc<Platform>,
    listener: TcpListener,
    token_source: TokenSource,
}

impl Server {
    /// Opens the platform (data directory, backends, routes) and binds the listener.
    pub async fn bind(config: ServeConfig) -> Result<Self, GatewayError> {
        let listen = config.listen;
        let (platform, token_source) = tokio::task::spawn_blocking(move || Platform::open(config))
            .await
            .map_err(|e| GatewayError::Startup(e.to_string()))??;
        let listener =
            TcpListener::bind(listen).await.map_err(|source| GatewayError::Bind { addr: listen, source })?;
        platform.start_backends();
        Ok(Self { platform: Arc::new(platform), listener, token_source })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, GatewayError> {
        self.listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: self.platform.config.listen, source })
    }

    /// The admin token and where it came from.
    pub fn token(&self) -> (&str, TokenSource) {
        (self.platform.token(), self.token_source)
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Self { platform, listener, .. } = self;
        let local = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: platform.config.listen, source })?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(platform.config.header_read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
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
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = ConnectionInfo { remote, local };
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
        tracing::info!("shutting down: draining in-flight requests");
        platform.begin_shutdown();
        if tokio::time::timeout(platform.config.drain_timeout, graceful.shutdown()).await.is_err() {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        platform.container.shutdown().await;
        let logs = platform.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.flush()).await;
        Ok(())
    }
}

async fn dispatch(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    connection: ConnectionInfo,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    if let Some((name, rest)) = trigger::split_trigger_path(&path) {
        return trigger::invoke(platform, request, name, rest, connection).await;
    }
    if let Some(admin_path) = path.strip_prefix("/v1").filter(|p| p.is_empty() || p.starts_with('/')) {
        return admin::handle(platform, request, admin_path).await;
    }
    if path == "/healthz" {
        return Response::new(respond::full("ok\n"));
    }
    respond::problem_of(
        ProblemKind::NotFound,
        format!("no route {path}: functions are called at /fn/NAME, the admin API is at /v1"),
    )
}
