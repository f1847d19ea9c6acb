//! The native side: `fn main` of a container image, an HTTP/1.1 server on `$PORT` (CONTRACT.md §8,
//! container images speaking `http`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::{Body, Request, Response};

/// The port Amphi's containers listen on unless the function's config says otherwise.
const DEFAULT_PORT: u16 = 8080;

/// Serves a sync handler; each call runs on tokio's blocking pool, so the handler may block.
pub fn serve_sync<H>(init: Option<fn()>, handler: H)
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    initialize(init);
    let handler = Arc::new(handler);
    serve(move |request| {
        let handler = handler.clone();
        async move {
            match tokio::task::spawn_blocking(move || handler(request)).await {
                Ok(response) => response,
                // Unreachable while the panic hook ends the process; kept so a changed hook
                // cannot turn a panic into a hung call.
                Err(_) => Response::new(http::StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    })
}

/// Serves an async handler on the multi-threaded runtime.
pub fn serve_async<H, F>(init: Option<fn()>, handler: H)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    initialize(init);
    serve(handler)
}

/// Runs the function's initializer once, before the server listens: the platform counts the
/// instance ready only once it answers, so no call ever finds the initializer unfinished.
fn initialize(init: Option<fn()>) {
    if let Some(init) = init {
        init();
    }
}

fn serve<H, F>(handler: H)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    crash_on_panic();
    let port = match std::env::var("PORT") {
        Err(_) => DEFAULT_PORT,
        Ok(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("amphi-sdk: PORT must be a port number, got `{text}`");
            std::process::exit(2)
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| {
        eprintln!("amphi-sdk: cannot start the async runtime: {e}");
        std::process::exit(1)
    });
    runtime.block_on(accept_loop(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), Arc::new(handler)));
}

/// A panic in a handler ends the process, as a trap ends a wasm instance: the platform answers
/// 502 for the call and replaces the instance, instead of serving on from a state the panic
/// may have left half-changed.
fn crash_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::exit(101);
    }));
}

async fn accept_loop<H, F>(address: SocketAddr, handler: Arc<H>)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let listener = TcpListener::bind(address).await.unwrap_or_else(|e| {
        eprintln!("amphi-sdk: cannot listen on {address}: {e}");
        std::process::exit(1)
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for calls to finish instead of spinning.
                eprintln!("amphi-sdk: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(call(request, handler.as_ref()).await) }
            });
            // A connection the peer breaks off is no error of the function's.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn call<H, F>(request: hyper::Request<Incoming>, handler: &H) -> hyper::Response<ResponseBody>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            let mut response =
                hyper::Response::new(ResponseBody::whole(format!("cannot read the body: {e}")));
            *response.status_mut() = http::StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let path_with_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    let request = Request::from_parts(parts.method, path_with_query, parts.headers, body);
    let (status, headers, body) = handler(request).await.into_parts();
    let mut response = hyper::Response::new(match body {
        Body::Bytes(bytes) => ResponseBody::whole(bytes),
        Body::Stream(chunks) => ResponseBody::stream(chunks),
    });
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A response body: whole, or chunks produced on the blocking pool as the caller reads them.
enum ResponseBody {
    Whole(Option<Bytes>),
    Chunks(mpsc::Receiver<Bytes>),
}

impl ResponseBody {
    fn whole(bytes: impl Into<Bytes>) -> Self {
        Self::Whole(Some(bytes.into()))
    }

    fn stream(chunks: Box<dyn Iterator<Item = Vec<u8>> + Send>) -> Self {
        // A small buffer: the producer runs at most two chunks ahead of the caller.
        let (sender, receiver) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            for chunk in chunks.filter(|chunk| !chunk.is_empty()) {
                if sender.blocking_send(Bytes::from(chunk)).is_err() {
                    break; // the caller went away
                }
            }
        });
        Self::Chunks(receiver)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Whole(bytes) => {
                Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))))
            }
            Self::Chunks(receiver) => receiver.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Whole(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Whole(Some(bytes)) => http_body::SizeHint::with_exact(bytes.len() as u64),
            Self::Whole(None) => http_body::SizeHint::with_exact(0),
            Self::Chunks(_) => http_body::SizeHint::default(),
        }
    }
}
