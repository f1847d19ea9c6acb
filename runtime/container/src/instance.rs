//! One instance of a container function: its container, the shim's socket, the events it sends,
//! and calls over that socket.
//!
//! The container runs `amphi-shim` (bind-mounted read-only at `/amphi/shim`) in front of the
//! image's command, with the instance's run directory bind-mounted at `/amphi/run`. The gateway
//! reaches it only through `/amphi/run/shim.sock`, so the container needs no network; that socket
//! is opened as [`crate::socket`] says, never by following what the container put there.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use amphi_contract::function::{ContainerProtocol, FunctionVersion};
use amphi_contract::now_unix_us;
use amphi_contract::record::{LogLine, LogStream};
use amphi_contract::{ConnectionInfo, LogCapture, TelemetrySink};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};

use crate::engine::{Engine, EngineError};
use crate::image::ImageRegistry;
use crate::socket::{ShimSocket, SocketError};

/// Label on everything Amphi creates.
pub const LABEL_MANAGED: &str = "amphi.managed";
/// Label naming the data directory (installation) that created a container.
pub const LABEL_INSTALLATION: &str = "amphi.installation";
const LABEL_FUNCTION: &str = "amphi.function";
const LABEL_VERSION: &str = "amphi.version";

/// Where the shim and the run directory appear inside the container.
const SHIM_IN_CONTAINER: &str = "/amphi/shim";
const RUN_IN_CONTAINER: &str = "/amphi/run";
const SOCKET_NAME: &str = "shim.sock";
/// Set by the shim on a response it made because the function could not answer, as
/// `KEY REASON`: the instance's key proves the shim made it (a function's own `amphi-*` headers
/// are removed, and it never learns the key).
const SHIM_ERROR: &str = "amphi-shim-error";
/// Hands the shim its key, on the events request (never in the container's environment).
const SHIM_KEY: &str = "amphi-shim-key";
/// Lines kept per instance for the record of a crash.
const TAIL_LINES: usize = 10;
/// Longest a new instance may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the host side gives every instance of the backend: the engine, the run directories, the
/// shim binary, and where lines outside any call go.
pub struct InstanceHost {
    /// The engine.
    pub engine: Engine,
    /// Where log lines outside any call go.
    pub sink: Arc<dyn TelemetrySink>,
    /// The label value that marks this server's containers.
    pub installation: String,
    /// The host directory holding one run directory per instance.
    pub run_root: PathBuf,
    /// The host path of the shim binary.
    pub shim: PathBuf,
    /// Where the cluster's nodes share the images they build, if they do.
    pub registry: Option<ImageRegistry>,
}

/// What an instance runs, from the function's config and its image.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The command behind the shim.
    pub command: Vec<String>,
    /// How the command speaks the contract.
    pub protocol: ContainerProtocol,
    /// The user (`uid[:gid]` or a name in the image) the command runs as.
    pub user: String,
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The function's exit code, when the shim reported one.
    pub code: Option<u8>,
    /// Whether the kernel killed it for memory, as the shim saw it.
    pub oom: bool,
}

/// Why an instance did not become ready.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The engine is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// The engine refused, or the function exited or never answered.
    #[error("{0}")]
    Failed(String),
}

impl From<EngineError> for StartError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Unavailable(_) => Self::Unavailable(error.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Why a call over the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket or the connection broke: the instance is probably gone.
    #[error("{0}")]
    Broken(String),
    /// The shim answered that the function could not (its reason).
    #[error("{0}")]
    Function(String),
}

struct CallLog {
    capture: LogCapture,
    ended: Option<oneshot::Sender<()>>,
}

/// One running (or paused) container.
pub struct Instance {
    /// A short random id, also in the container's name.
    pub id: String,
    /// The container's id.
    pub container: String,
    function: String,
    /// Known to the gateway and the shim alone; marks the shim's own error responses.
    key: String,
    socket: ShimSocket,
    run_dir: PathBuf,
    calls: Mutex<HashMap<String, CallLog>>,
    tail: Mutex<VecDeque<String>>,
    exit: watch::Sender<Option<Exit>>,
    connections: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Log {
        invocation: String,
        stream: String,
        line: String,
    },
    Listening {},
    End {
        invocation: String,
    },
    Exit {
        code: u8,
        #[serde(default)]
        oom: bool,
    },
}

impl Instance {
    /// Creates and starts a container for `function` running `command`, and waits until the
    /// function is ready.
    pub async fn start(
        host: &Arc<InstanceHost>,
        function: &FunctionVersion,
        launch: &Launch,
    ) -> Result<Arc<Self>, StartError> {
        let id = hex::encode(rand::random::<[u8; 6]>());
        let run_dir = host.run_root.join(&id);
        let socket = {
            let run_dir = run_dir.clone();
            tokio::task::spawn_blocking(move || make_run_dir(&run_dir))
                .await
                .map_err(|e| StartError::Failed(e.to_string()))
                .and_then(|made| made.map_err(StartError::Failed))?
        };
        let body = container_spec(host, function, launch, &run_dir);
        let name = format!("amphi-{}-{id}", function.name);
        let created = host
            .engine
            .run(|docker| async move {
                docker
                    .create_container(
                        Some(CreateContainerOptions { name: Some(name), ..Default::default() }),
                        body,
                    )
                    .await
            })
            .await;
        let container = match created {
            Ok(created) => created.id,
            Err(e) => {
                remove_run_dir(run_dir).await;
                return Err(e.into());
            }
        };
        let instance = Arc::new(Self {
            id,
            container,
            function: function.name.clone(),
            key: hex::encode(rand::random::<[u8; 16]>()),
            socket,
            run_dir,
            calls: Mutex::default(),
            tail: Mutex::default(),
            exit: watch::Sender::new(None),
            connections: Mutex::default(),
        });
        match instance.clone().boot(host).await {
            Ok(()) => Ok(instance),
            Err(e) => {
                let why = match e {
                    StartError::Failed(why) => StartError::Failed(format!("{why}{}", instance.last_lines())),
                    unavailable => unavailable,
                };
                instance.remove(host).await;
                Err(why)
            }
        }
    }

    async fn boot(self: Arc<Self>, host: &Arc<InstanceHost>) -> Result<(), StartError> {
        let container = self.container.clone();
        host.engine.run(|docker| async move { docker.start_container(&container, None).await }).await?;
        // Only processes in the container's PID namespace may answer on its socket.
        let container = self.container.clone();
        let inspected =
            host.engine.run(|docker| async move { docker.inspect_container(&container, None).await }).await?;
        match inspected.state.and_then(|s| s.pid).filter(|&pid| pid > 0) {
            Some(pid) => self.socket.pin_namespace(pid).map_err(|e| StartError::Failed(e.to_string()))?,
            None => return Err(StartError::Failed(self.describe_exit(host, "as it started").await)),
        }
        let (listening_tx, listening_rx) = oneshot::channel();
        tokio::spawn(self.clone().follow_events(host.sink.clone(), listening_tx));
        let container = self.container.clone();
        let docker = host.engine.client().await?;
        let exited = async move {
            let options = WaitContainerOptions { condition: "not-running".into() };
            match docker.wait_container(&container, Some(options)).next().await {
                Some(Ok(done)) => Some(done.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
                _ => None,
            }
        };
        tokio::select! {
            listening = listening_rx => match listening {
                Ok(Ok(())) => Ok(()),
                Ok(Err(refused)) => Err(StartError::Failed(refused)),
                Err(_) => Err(StartError::Failed(self.describe_exit(host, "before it was ready").await)),
            },
            Some(_) = exited => Err(StartError::Failed(self.describe_exit(host, "before it was ready").await)),
            () = tokio::time::sleep(START_TIMEOUT) => Err(StartError::Failed(format!(
                "the function did not answer within {}s of starting", START_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Reads the shim's events until the instance is gone.
    async fn follow_events(
        self: Arc<Self>,
        sink: Arc<dyn TelemetrySink>,
        listening: oneshot::Sender<Result<(), String>>,
    ) {
        let mut listening = Some(listening);
        let opened = self.open_events().await;
        if let Err(why) = &opened {
            tracing::warn!(instance = %self.id, function = %self.function, error = %why, "instance refused");
            if let Some(listening) = listening.take() {
                let _ = listening.send(Err(why.clone()));
            }
        }
        if let Ok(mut body) = opened {
            let mut buffer = BytesMut::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line = buffer.split_to(end + 1);
                    match serde_json::from_slice::<Event>(&line[..end]) {
                        Ok(Event::Listening {}) => {
                            if let Some(listening) = listening.take() {
                                let _ = listening.send(Ok(()));
                            }
                        }
                        Ok(event) => self.handle_event(event, &sink),
                        Err(e) => tracing::warn!(instance = %self.id, error = %e, "unreadable shim event"),
                    }
                }
            }
        }
        // The stream ended: the shim, and with it the container, is gone.
        self.exit.send_if_modified(|exit| {
            if exit.is_none() {
                *exit = Some(Exit { code: None, oom: false });
                true
            } else {
                false
            }
        });
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        for call in calls.values_mut() {
            if let Some(ended) = call.ended.take() {
                let _ = ended.send(());
            }
        }
    }

    async fn open_events(&self) -> Result<Incoming, String> {
        let started = Instant::now();
        let stream = loop {
            match self.socket.connect().await {
                Ok(stream) => break stream,
                // Not bound yet, or bound but not listening yet.
                Err(SocketError::Missing | SocketError::Unreachable(_))
                    if started.elapsed() < START_TIMEOUT && self.exit.borrow().is_none() =>
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::get("/.amphi/events")
            .header(http::header::HOST, "shim")
            .header(SHIM_KEY, &self.key)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        Ok(response.into_body())
    }

    fn handle_event(&self, event: Event, sink: &Arc<dyn TelemetrySink>) {
        match event {
            Event::Log { invocation, stream, line } => {
                let stream = if stream == "stderr" { LogStream::Stderr } else { LogStream::Stdout };
                {
                    let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
                match calls.get(&invocation) {
                    Some(call) => {
                        call.capture.write(stream, line.as_bytes());
                        call.capture.write(stream, b"\n");
                    }
                    // A line outside any call the store cannot take is counted in its stats.
                    None => {
                        let line = LogLine {
                            seq: 0,
                            ts_us: now_unix_us(),
                            function: self.function.clone(),
                            invocation_id: invocation,
                            stream,
                            line,
                        };
                        let _ = sink.log_line(line, 0);
                    }
                }
            }
            Event::End { invocation } => {
                let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(ended) = calls.get_mut(&invocation).and_then(|c| c.ended.take()) {
                    let _ = ended.send(());
                }
            }
            Event::Exit { code, oom } => {
                self.exit.send_replace(Some(Exit { code: Some(code), oom }));
            }
            Event::Listening {} => {}
        }
    }

    /// Whether the instance is known to be gone.
    pub fn is_gone(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits up to `limit` for the instance to be gone; returns whether it is.
    pub async fn wait_gone(&self, limit: Duration) -> bool {
        let mut exit = self.exit.subscribe();
        tokio::time::timeout(limit, exit.wait_for(Option::is_some)).await.is_ok_and(|r| r.is_ok())
    }

    /// Sends one call. Its log lines go to `capture`; the returned receiver fires once the shim
    /// has sent every line of the call (or the instance is gone).
    pub async fn call(
        &self,
        mut request: Request<Bytes>,
        invocation: &str,
        capture: LogCapture,
    ) -> Result<(Response<Incoming>, oneshot::Receiver<()>), CallError> {
        let (ended_tx, ended_rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(invocation.to_string(), CallLog { capture, ended: Some(ended_tx) });
        if let Some(connection) = request.extensions().get::<ConnectionInfo>().copied() {
            let headers = request.headers_mut();
            for (name, address) in
                [("amphi-shim-remote", connection.remote), ("amphi-shim-local", connection.local)]
            {
                if let Ok(value) = HeaderValue::from_str(&address.to_string()) {
                    headers.insert(name, value);
                }
            }
        }
        let mut sender = self.connection().await.map_err(CallError::Broken)?;
        let response = sender.send_request(request.map(Full::new)).await;
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
        let response = response.map_err(|e| CallError::Broken(e.to_string()))?;
        let shim_error = response.headers().get(SHIM_ERROR).and_then(|value| {
            let (key, why) = value.to_str().ok()?.split_once(' ')?;
            (key == self.key).then(|| why.to_string())
        });
        if let Some(why) = shim_error {
            return Err(CallError::Function(why));
        }
        Ok((response, ended_rx))
    }

    /// Forgets a call's log capture once its record is written.
    pub fn forget_call(&self, invocation: &str) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).remove(invocation);
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let idle = self.connections.lock().unwrap_or_else(PoisonError::into_inner).pop();
            match idle {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = self.socket.connect().await.map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk to the instance's shim: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Says how the instance ended, `when` (such as "during the call"): exit code, whether the
    /// kernel killed it for memory, and its last lines. Waits briefly for the exit to be known.
    pub async fn describe_exit(&self, host: &InstanceHost, when: &str) -> String {
        let mut exit = self.exit.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await;
        let reported = exit.borrow().and_then(|e| e.code);
        let reported_oom = exit.borrow().is_some_and(|e| e.oom);
        let container = self.container.clone();
        let state = tokio::time::timeout(
            Duration::from_secs(2),
            host.engine.run(|docker| async move { docker.inspect_container(&container, None).await }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|c| c.state);
        let oom = reported_oom || state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        let code = reported.map(i64::from).or_else(|| state.as_ref().and_then(|s| s.exit_code));
        let mut text = match code {
            Some(code) => format!("the instance exited with code {code} {when}"),
            None => format!("the instance went away {when}"),
        };
        if oom {
            text.push_str(" (killed by the kernel: out of memory)");
        } else if code == Some(137) {
            text.push_str(" (killed: SIGKILL)");
        }
        text
    }

    /// The instance's last lines, as a suffix for an error message.
    pub fn last_lines(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = tail.iter().rev().take(5).rev().map(String::as_str).collect();
        format!("; its last lines: {}", lines.join(" | "))
    }

    /// Pauses the container (cgroup freezer).
    pub async fn pause(&self, engine: &Engine) -> Result<(), EngineError> {
        let container = self.container.clone();
        engine.run(|docker| async move { docker.pause_container(&container).await }).await
    }

    /// Resumes a paused container.
    pub async fn unpause(&self, engine: &Engine) -> Result<(), EngineError> {
        let container = self.container.clone();
        engine.run(|docker| async move { docker.unpause_container(&container).await }).await
    }

    /// Removes the container (killing it) and its run directory.
    pub async fn remove(&self, host: &InstanceHost) {
        let container = self.container.clone();
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        let removed = host
            .engine
            .run(|docker| async move { docker.remove_container(&container, Some(options)).await })
            .await;
        match removed {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(container = %self.container, error = %e, "cannot remove a container"),
        }
        remove_run_dir(self.run_dir.clone()).await;
    }
}

/// Makes an instance's run directory and opens it for [`ShimSocket`]. Blocking.
fn make_run_dir(run_dir: &std::path::Path) -> Result<ShimSocket, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let failed = |e: std::io::Error| format!("cannot make the run directory {}: {e}", run_dir.display());
    std::fs::create_dir(run_dir).map_err(failed)?;
    // The function's image may run as any user; it must be able to make the socket.
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o777)).map_err(failed)?;
    ShimSocket::open(run_dir, SOCKET_NAME).map_err(failed)
}

/// Removes an instance's run directory, off the async threads.
async fn remove_run_dir(run_dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(run_dir)).await;
}

/// The container's configuration: the shim in front of `command`, the function's limits, and the
/// sandbox (no capabilities, no new privileges, no network unless granted, read-only root unless
/// granted, never the engine's socket).
fn container_spec(
    host: &InstanceHost,
    function: &FunctionVersion,
    launch: &Launch,
    run_dir: &std::path::Path,
) -> ContainerCreateBody {
    let config = &function.config;
    let container = &config.container;
    let mut env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={}", container.port));
    env.push(format!("AMPHI_SHIM_SOCKET={RUN_IN_CONTAINER}/{SOCKET_NAME}"));
    env.push(format!("AMPHI_SHIM_PROTOCOL={}", launch.protocol.as_str()));
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTALLATION.to_string(), host.installation.clone()),
        (LABEL_FUNCTION.to_string(), function.name.clone()),
        (LABEL_VERSION.to_string(), function.version.to_string()),
    ]);
    let memory = i64::try_from(config.memory_bytes).unwrap_or(i64::MAX);
    ContainerCreateBody {
        image: Some(function.digest.clone()),
        entrypoint: Some(vec![SHIM_IN_CONTAINER.to_string()]),
        cmd: Some(launch.command.clone()),
        user: Some(launch.user.clone()),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{}:{SHIM_IN_CONTAINER}:ro", host.shim.display()),
                format!("{}:{RUN_IN_CONTAINER}:rw", run_dir.display()),
            ]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(i64::from(container.cpu_millis) * 1_000_000),
            pids_limit: Some(i64::from(container.pids_limit)),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            readonly_rootfs: Some(!container.writable_root),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,size=64m".to_string())])),
            network_mode: Some(if container.network { "bridge" } else { "none" }.to_string()),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}
