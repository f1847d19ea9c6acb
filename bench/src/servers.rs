//! The servers a run measures, each in its own process: the bare hyper floor, the Amphi gateway,
//! `wasmtime serve`; and a client for the gateway's admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The admin token of every gateway the harness starts.
pub const TOKEN: &str = "bench-token";

/// The `wasmtime` CLI the anchors are measured with.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// An HTTP/1.1 client with kept-alive connections.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A loopback address with a port free right now.
pub fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A server process, killed on drop.
pub struct ChildServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Runs `command` and waits until something accepts connections on `addr`.
    pub fn start(mut command: Command, addr: SocketAddr) -> Result<Self> {
        let child = command.stdout(Stdio::null()).spawn().context("starting a server")?;
        let mut server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited before it listened on {addr}: {status}");
            }
            if Instant::now() > deadline {
                bail!("the server did not listen on {addr} within a minute");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(server)
    }

    /// The bare hyper hello-world server (a child process of this binary).
    pub fn floor() -> Result<Self> {
        let addr = free_port()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["floor", &addr.to_string()]);
        Self::start(command, addr)
    }

    /// The Amphi gateway on `data` (a child process of this binary, the code of `amphi serve`).
    pub fn gateway(data: &Path, options: &GatewayOptions) -> Result<Self> {
        let addr = free_port()?;
        Self::gateway_on(addr, data, options)
    }

    /// The gateway on a given address.
    pub fn gateway_on(addr: SocketAddr, data: &Path, options: &GatewayOptions) -> Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("gateway").arg(addr.to_string()).arg(data);
        command.args(["--ready-instances", &options.ready_instances.to_string()]);
        command.args(["--workers", &options.workers.to_string()]);
        command.args(["--log-max-lines", &options.log_max_lines.to_string()]);
        Self::start(command, addr)
    }

    /// The gateway on `data`, its registry and artifacts in the PostgreSQL at `store`.
    pub fn gateway_with_store(data: &Path, store: &str) -> Result<Self> {
        let addr = free_port()?;
        let options = GatewayOptions::default();
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("gateway").arg(addr.to_string()).arg(data);
        command.args(["--ready-instances", &options.ready_instances.to_string()]);
        command.args(["--workers", &options.workers.to_string()]);
        command.args(["--log-max-lines", &options.log_max_lines.to_string()]);
        command.args(["--store", store]);
        Self::start(command, addr)
    }

    /// `wasmtime serve` of `component`, pooling allocator on.
    pub fn wasmtime_serve(component: &Path) -> Result<Self> {
        let addr = free_port()?;
        let mut command = Command::new(wasmtime_cli()?);
        command.args(["serve", "-Scli", "-Opooling-allocator=y", "--addr", &addr.to_string()]).arg(component);
        // It reports every connection wrk closes mid-request; that is noise here.
        command.stderr(Stdio::null());
        Self::start(command, addr)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory (VmRSS), in bytes.
    pub fn resident_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the gateway child is configured.
#[derive(Debug, Clone, Copy)]
pub struct GatewayOptions {
    /// Ready instances per wasm function (`amphi serve --wasm-ready-instances`).
    pub ready_instances: usize,
    /// Serving threads (`amphi serve --workers`; 0 = one per CPU).
    pub workers: usize,
    /// Log lines the store keeps (`amphi serve --log-max-lines`).
    pub log_max_lines: u64,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            ready_instances: amphi_wasm::ReadySettings::default().per_function,
            workers: 0,
            log_max_lines: amphi_store::logs::LogStoreConfig::default().max_lines,
        }
    }
}

/// The `wasmtime` CLI at the pinned version: on `PATH`, in `~/.cargo/bin`, or installed now with
/// `cargo install --locked wasmtime-cli@48.0.8` (several minutes, once).
pub fn wasmtime_cli() -> Result<PathBuf> {
    if let Some(installed) = installed_wasmtime_cli() {
        return Ok(installed);
    }
    eprintln!(
        "==> installing wasmtime-cli {WASMTIME_VERSION} (cargo install --locked; several minutes, once)"
    );
    let status = Command::new("cargo")
        .args(["install", "--locked", &format!("wasmtime-cli@{WASMTIME_VERSION}")])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install --locked wasmtime-cli@{WASMTIME_VERSION} failed");
    }
    installed_wasmtime_cli().context("cargo install succeeded, yet no wasmtime of that version is found")
}

/// The wasmtime CLI of [`WASMTIME_VERSION`], if it is installed (on `PATH` or in `~/.cargo/bin`).
pub fn installed_wasmtime_cli() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("wasmtime"),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/wasmtime")).unwrap_or_default(),
    ];
    candidates.into_iter().find(|candidate| {
        Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(WASMTIME_VERSION))
    })
}

/// The gateway's admin API.
#[derive(Clone)]
pub struct Admin {
    http: Http,
    /// The gateway.
    pub addr: SocketAddr,
}

impl Admin {
    /// A client of the gateway at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { http: http(), addr }
    }

    /// A request to `/v1{path}`; fails on a status other than 2xx.
    pub async fn request(&self, method: &str, path: &str, body: Bytes, content_type: &str) -> Result<Value> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}/v1{path}", self.addr))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Full::new(body))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{method} /v1{path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Uploads an artifact; returns its digest.
    pub async fn upload(&self, bytes: impl Into<Bytes>, content_type: &str) -> Result<String> {
        let artifact = self.request("POST", "/artifacts", bytes.into(), content_type).await?;
        Ok(artifact["digest"].as_str().context("no digest in the upload's answer")?.to_string())
    }

    /// Deploys `digest` as `name` with `config`.
    pub async fn deploy(&self, name: &str, digest: &str, config: Value) -> Result<()> {
        let body = serde_json::to_vec(&json!({ "digest": digest, "config": config }))?;
        self.request("PUT", &format!("/functions/{name}"), body.into(), "application/json").await?;
        Ok(())
    }

    /// Uploads a wasm file and deploys it as `name`.
    pub async fn deploy_wasm(&self, name: &str, wasm: &Path) -> Result<()> {
        let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let digest = self.upload(bytes, "application/wasm").await?;
        self.deploy(name, &digest, json!({})).await
    }

    /// `/v1/stats`.
    pub async fn stats(&self) -> Result<Value> {
        self.request("GET", "/stats", Bytes::new(), "application/json").await
    }
}
