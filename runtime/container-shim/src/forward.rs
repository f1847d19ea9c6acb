//! Serving the gateway: the events stream, and calls forwarded to the function.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amphi_contract::ConnectionInfo;
use amphi_contract::cgi::{meta_variables, parse_response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener};
use tokio::process::Command;

use crate::events::Events;
use crate::output::{LineSink, PipeProbes, read_lines};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ShimBody = BoxBody<Bytes, BoxError>;

/// Set on responses the shim made itself because the function could not answer: `KEY REASON`.
const SHIM_ERROR: &str = "amphi-shim-error";
/// The gateway's key for this instance, sent on the events request; it proves a shim error is the
/// shim's. Kept in memory only: the function never sees it.
const SHIM_KEY: &str = "amphi-shim-key";
static KEY: OnceLock<String> = OnceLock::new();
/// The caller's and the gateway's addresses (`ip:port`), for CGI's `REMOTE_ADDR` and `SERVER_PORT`.
const SHIM_REMOTE: &str = "amphi-shim-remote";
const SHIM_LOCAL: &str = "amphi-shim-local";
/// Settings of the shim itself, kept from the function's environment.
const SHIM_ENV: [&str; 2] = ["AMPHI_SHIM_SOCKET", "AMPHI_SHIM_PROTOCOL"];
/// Largest response a CGI program may write: the contract's CGI response limit (CONTRACT.md §5).
const MAX_CGI_OUTPUT: u64 = 32 << 20;

/// The function behind the shim.
pub enum Function {
    /// A long-running server on `$PORT`.
    Http(Arc<Server>),
    /// A program run once per call.
    Cgi(Arc<CgiProgram>),
}

/// Accepts the gateway's connections until the listener fails.
pub async fn serve(listener: UnixListener, function: Arc<Function>, events: Arc<Events>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (function, events) = (function.clone(), events.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (function, events) = (function.clone(), events.clone());
                async move { Ok::<_, Infallible>(handle(&function, &events, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    function: &Function,
    events: &Arc<Events>,
    mut request: Request<Incoming>,
) -> Response<ShimBody> {
    if request.uri().path() == "/.amphi/events" {
        return match events.subscribe() {
            Some(receiver) => {
                if let Some(key) = request.headers().get(SHIM_KEY).and_then(|v| v.to_str().ok()) {
                    let _ = KEY.set(key.to_string());
                }
                Response::new(EventBody(receiver).boxed())
            }
            None => shim_error(StatusCode::CONFLICT, "the events stream is already taken"),
        };
    }
    let invocation = request
        .headers()
        .get(amphi_contract::headers::INVOCATION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let connection = take_connection_info(request.headers_mut());
    match function {
        Function::Http(server) => server.call(request, invocation).await,
        Function::Cgi(program) => program.call(request, connection, invocation, events).await,
    }
}

fn take_connection_info(headers: &mut HeaderMap) -> Option<ConnectionInfo> {
    let mut address = |name| headers.remove(name)?.to_str().ok()?.parse::<SocketAddr>().ok();
    let remote = address(SHIM_REMOTE);
    let local = address(SHIM_LOCAL);
    Some(ConnectionInfo { remote: remote?, local: local? })
}

fn shim_error(status: StatusCode, why: &str) -> Response<ShimBody> {
    let mut response = Response::new(Full::new(Bytes::from(why.to_string())).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    let key = KEY.get().map_or("", String::as_str);
    if let Ok(value) = HeaderValue::from_str(&format!("{key} {why}")) {
        response.headers_mut().insert(SHIM_ERROR, value);
    }
    response
}

/// The function's own server, started once.
pub struct Server {
    address: OnceLock<SocketAddr>,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
    probes: Arc<PipeProbes>,
    events: Arc<Events>,
}

impl Server {
    /// Starts `command` with `$PORT`, reads its output, and reports it listening once it answers.
    pub fn start(command: &[String], port: u16, events: Arc<Events>) -> Result<Arc<Self>, String> {
        let started = Instant::now();
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .env("PORT", port.to_string())
            .env_remove(SHIM_ENV[0])
            .env_remove(SHIM_ENV[1])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", command[0]))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("the function's output pipes are missing".into());
        };
        let probes = Arc::new(PipeProbes::new(&[&stdout, &stderr]));
        let sink: LineSink = {
            let events = events.clone();
            Arc::new(move |stream, line| events.log(stream, line))
        };
        let readers = [read_lines(stdout, "stdout", sink.clone()), read_lines(stderr, "stderr", sink)];
        let server = Arc::new(Self {
            address: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            probes,
            events: events.clone(),
        });
        tokio::spawn(server.clone().wait_until_listening(port, started));
        tokio::spawn(async move {
            let code = supervise(child).await;
            // Its last lines go out before the exit event (a grandchild holding the pipes open
            // does not hold the exit up for long).
            for reader in readers {
                let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
            }
            events.exited(code);
        });
        Ok(server)
    }

    async fn wait_until_listening(self: Arc<Self>, port: u16, started: Instant) {
        let candidates = [SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([0u16; 8], port))];
        loop {
            for address in candidates {
                if TcpStream::connect(address).await.is_ok() {
                    let _ = self.address.set(address);
                    self.events.listening(started.elapsed());
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn call(&self, mut request: Request<Incoming>, invocation: String) -> Response<ShimBody> {
        let Some(&address) = self.address.get() else {
            return shim_error(StatusCode::SERVICE_UNAVAILABLE, "the function is not answering on $PORT yet");
        };
        request.headers_mut().remove(SHIM_ERROR);
        self.events.begin(&invocation);
        let response = match self.connection(address).await {
            Ok(mut sender) => {
                let response = sender.send_request(request).await;
                self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
                response.map_err(|e| format!("the function's server failed the request: {e}"))
            }
            Err(e) => Err(e),
        };
        match response {
            Ok(response) => {
                let events = self.events.clone();
                let probes = self.probes.clone();
                response.map(|body| {
                    EndOfCall {
                        inner: body,
                        on_end: Some(Box::new(move || {
                            tokio::spawn(async move {
                                probes.drain().await;
                                events.end(&invocation);
                            });
                        })),
                    }
                    .boxed()
                })
            }
            Err(why) => {
                self.probes.drain().await;
                self.events.end(&invocation);
                shim_error(StatusCode::BAD_GATEWAY, &why)
            }
        }
    }

    /// An idle keep-alive connection to the function, or a new one.
    async fn connection(&self, address: SocketAddr) -> Result<SendRequest<Incoming>, String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            match idle {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to the function on {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk HTTP to the function on {address}: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// Waits for the function's process to end, passing SIGTERM on; returns its exit code
/// (128 + the signal's number when a signal ended it, as shells report it).
async fn supervise(mut child: tokio::process::Child) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).ok();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(()) = async { terminate.as_mut()?.recv().await } => {
                let pid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
    };
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code.clamp(0, 255) as u8,
            (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
            (None, None) => 1,
        },
        Err(_) => 1,
    }
}

/// A program run once per call, CGI 1.1 over stdio.
pub struct CgiProgram {
    command: Vec<String>,
}

impl CgiProgram {
    /// The program and its arguments.
    pub fn new(command: Vec<String>) -> Self {
        Self { command }
    }

    async fn call(
        &self,
        request: Request<Incoming>,
        connection: Option<ConnectionInfo>,
        invocation: String,
        events: &Arc<Events>,
    ) -> Response<ShimBody> {
        let response = self.run(request, connection, &invocation, events).await;
        events.end(&invocation);
        match response {
            Ok(response) => response.map(|body| Full::new(body).map_err(|n| match n {}).boxed()),
            Err(why) => shim_error(StatusCode::BAD_GATEWAY, &why),
        }
    }

    async fn run(
        &self,
        request: Request<Incoming>,
        connection: Option<ConnectionInfo>,
        invocation: &str,
        events: &Arc<Events>,
    ) -> Result<Response<Bytes>, String> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|e| format!("cannot read the request: {e}"))?.to_bytes();
        let function = parts
            .headers
            .get(amphi_contract::headers::FUNCTION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(meta_variables(&parts, connection.as_ref(), body.len(), &function))
            .env_remove(SHIM_ENV[0])
            .env_remove(SHIM_ENV[1])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.command[0]))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the program's pipes are missing".into());
        };
        // A program that never reads its input must not block the call.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        let sink: LineSink = {
            let (events, invocation) = (events.clone(), invocation.to_string());
            Arc::new(move |stream, line| events.log_for(&invocation, stream, line))
        };
        let log_reader = read_lines(stderr, "stderr", sink);
        let mut output = Vec::new();
        let read = stdout.take(MAX_CGI_OUTPUT + 1).read_to_end(&mut output).await;
        let status = child.wait().await;
        let _ = log_reader.await;
        read.map_err(|e| format!("cannot read the program's output: {e}"))?;
        if output.len() as u64 > MAX_CGI_OUTPUT {
            return Err(format!("the program wrote more than {} MiB", MAX_CGI_OUTPUT >> 20));
        }
        let status = status.map_err(|e| format!("cannot wait for the program: {e}"))?;
        match parse_response(Bytes::from(output)) {
            Ok(response) => Ok(response),
            Err(why) if status.success() => Err(format!("malformed CGI response: {why}")),
            Err(_) => Err(format!("the CGI program failed ({status}) without writing a response")),
        }
    }
}

/// A forwarded response body that reports the end of its call when it ends or is dropped.
struct EndOfCall {
    inner: Incoming,
    on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl EndOfCall {
    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
    }
}

impl Body for EndOfCall {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.end();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for EndOfCall {
    fn drop(&mut self) {
        self.end();
    }
}

/// The events stream, one NDJSON line per frame.
struct EventBody(crate::events::Receiver);

impl Body for EventBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_line(cx).map(|event| event.map(|line| Ok(Frame::data(line))))
    }
}
