//! `amphi-bench containers`: the container backend's three paths, each next to its anchor,
//! measured in the same run with the same image (built by Amphi from `guest-examples/containers`):
//!
//! - cold start (no instance: a new container, until the function answered the call) vs
//!   `docker run -d -p 127.0.0.1::PORT IMAGE` until the same function answers a request there;
//! - a call that resumes a paused instance (`Server-Timing: init;desc="unpause"`);
//! - warm calls through the gateway vs the same calls sent straight to the function's server in a
//!   container published on a loopback port (keep-alive, sequential).
//!
//! The gateway runs in this process on a fresh data directory; Docker is reached through the
//! engine's socket by Amphi and through the `docker` CLI for the anchor.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type Http = Client<HttpConnector, Full<Bytes>>;

const TOKEN: &str = "bench-token";

struct Stats {
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats { p50_ms: at(0.5), p99_ms: at(0.99) }
}

/// Runs the container benchmarks on `example` (a folder of `guest-examples/containers`).
pub async fn run(example: &str, rounds: usize, calls: usize, save: Option<std::path::PathBuf>) -> Result<()> {
    let data = std::env::temp_dir().join(format!("amphi-bench-containers-{}", std::process::id()));
    let mut config = amphi_gateway::ServeConfig::new("127.0.0.1:0".parse()?, data.clone());
    config.token = Some(TOKEN.into());
    let server = amphi_gateway::Server::bind(config).await?;
    let gateway = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let http: Http = Client::builder(TokioExecutor::new()).build_http();

    let result = measure(&http, gateway, example, rounds, calls).await;
    let _ = stop.send(());
    let _ = serving.await;
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    println!("{report}");
    if let Some(path) = save {
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn measure(
    http: &Http,
    gateway: SocketAddr,
    example: &str,
    rounds: usize,
    calls: usize,
) -> Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-examples/containers").join(example);
    let context = pack(&dir)?;
    let artifact =
        admin(http, gateway, "POST", "/artifacts", Bytes::from(context), "application/x-tar").await?;
    let image = artifact["digest"].as_str().context("no digest")?.to_string();

    // Cold: a new version each round, so its pool is empty; the first call starts an instance.
    let mut cold = Vec::new();
    let mut cold_init = Vec::new();
    let mut docker_run = Vec::new();
    for round in 0..rounds {
        let config = json!({ "env": { "ROUND": round.to_string() }, "container": { "idle_timeout_ms": 600000, "pause_after_ms": 600000 } });
        deploy(http, gateway, "cold", &image, config).await?;
        let began = Instant::now();
        let (status, timing) = call(http, &format!("http://{gateway}/fn/cold/")).await?;
        cold.push(began.elapsed().as_secs_f64() * 1000.0);
        if status != 200 || desc(&timing) != "cold" {
            bail!("the cold call answered {status} ({timing})");
        }
        cold_init.push(init_ms(&timing));
        docker_run.push(docker_run_until_answered(http, &image).await?);
    }

    // Unpause: the instance pauses 200 ms after a call; the next call resumes it.
    let config = json!({ "container": { "pause_after_ms": 200, "idle_timeout_ms": 600000 } });
    deploy(http, gateway, "paused", &image, config).await?;
    call(http, &format!("http://{gateway}/fn/paused/")).await?;
    let mut unpause = Vec::new();
    let mut unpause_init = Vec::new();
    for _ in 0..rounds {
        wait_paused(http, gateway, "paused").await?;
        let began = Instant::now();
        let (status, timing) = call(http, &format!("http://{gateway}/fn/paused/")).await?;
        unpause.push(began.elapsed().as_secs_f64() * 1000.0);
        if status != 200 || desc(&timing) != "unpause" {
            bail!("the unpause call answered {status} ({timing})");
        }
        unpause_init.push(init_ms(&timing));
    }

    // Warm: sequential calls on a kept-alive connection, alternating blocks with direct calls.
    deploy(http, gateway, "warm", &image, json!({ "container": { "min_instances": 1 } })).await?;
    let direct = DirectContainer::start(&image)?;
    direct.wait_answering(http).await?;
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    let block = (calls / 10).max(1);
    while through.len() < calls {
        for _ in 0..block {
            let began = Instant::now();
            call(http, &format!("http://{gateway}/fn/warm/")).await?;
            through.push(began.elapsed().as_secs_f64() * 1000.0);
        }
        for _ in 0..block {
            let began = Instant::now();
            call(http, &format!("http://{}/", direct.address)).await?;
            straight.push(began.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(direct);

    let (cold, cold_init, docker_run) = (stats(cold), stats(cold_init), stats(docker_run));
    let (unpause, unpause_init) = (stats(unpause), stats(unpause_init));
    let (through, straight) = (stats(through), stats(straight));
    let ratio = |a: f64, b: f64| a / b;
    Ok(format!(
        "# Container paths, `{example}` image\n\n\
         Latency seen by the client (loopback), p50 / p99 over {rounds} round(s) ({calls} calls for warm), \
         each row next to its anchor from the same run.\n\n\
         | path | Amphi p50 | Amphi p99 | anchor | anchor p50 | anchor p99 | ratio (p50) |\n|---|---|---|---|---|---|---|\n\
         | cold start: new instance, whole call | {:.1} ms | {:.1} ms | `docker run -d -p` until it answers | {:.1} ms | {:.1} ms | {:.2}× |\n\
         | cold start: `init` (start + ready) | {:.1} ms | {:.1} ms | | | | |\n\
         | resume a paused instance, whole call | {:.2} ms | {:.2} ms | | | | |\n\
         | resume: `init` (unpause) | {:.2} ms | {:.2} ms | | | | |\n\
         | warm call through the gateway | {:.3} ms | {:.3} ms | the function's server called directly | {:.3} ms | {:.3} ms | {:.2}× (+{:.3} ms) |\n",
        cold.p50_ms,
        cold.p99_ms,
        docker_run.p50_ms,
        docker_run.p99_ms,
        ratio(cold.p50_ms, docker_run.p50_ms),
        cold_init.p50_ms,
        cold_init.p99_ms,
        unpause.p50_ms,
        unpause.p99_ms,
        unpause_init.p50_ms,
        unpause_init.p99_ms,
        through.p50_ms,
        through.p99_ms,
        straight.p50_ms,
        straight.p99_ms,
        ratio(through.p50_ms, straight.p50_ms),
        through.p50_ms - straight.p50_ms,
    ))
}

/// A plain tar of `dir` (the examples have no links and no `.dockerignore`).
fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", dir).with_context(|| format!("packing {}", dir.display()))?;
    Ok(archive.into_inner()?)
}

async fn admin(
    http: &Http,
    gateway: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
) -> Result<Value> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{gateway}/v1{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Full::new(body))?;
    let response = http.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn deploy(http: &Http, gateway: SocketAddr, name: &str, image: &str, config: Value) -> Result<()> {
    let body = serde_json::to_vec(&json!({ "digest": image, "config": config }))?;
    admin(http, gateway, "PUT", &format!("/functions/{name}"), Bytes::from(body), "application/json").await?;
    Ok(())
}

async fn call(http: &Http, url: &str) -> Result<(u16, String)> {
    let response = http.request(hyper::Request::get(url).body(Full::new(Bytes::new()))?).await?;
    let status = response.status().as_u16();
    let timing =
        response.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    response.into_body().collect().await?;
    Ok((status, timing))
}

fn desc(timing: &str) -> &str {
    timing.split("desc=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("")
}

fn init_ms(timing: &str) -> f64 {
    timing
        .split(", ")
        .find_map(|p| p.strip_prefix("init;dur="))
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_paused(http: &Http, gateway: SocketAddr, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let described =
            admin(http, gateway, "GET", &format!("/functions/{name}"), Bytes::new(), "application/json")
                .await?;
        if described["instances"].as_array().is_some_and(|i| i.iter().any(|i| i["state"] == "paused")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the instance of {name} was not paused: {described}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `docker run -d` of the image with its port published on loopback, timed until the function
/// answers a request there; the container is removed afterwards (not timed).
async fn docker_run_until_answered(http: &Http, image: &str) -> Result<f64> {
    let began = Instant::now();
    let container = DirectContainer::start(image)?;
    container.wait_answering(http).await?;
    Ok(began.elapsed().as_secs_f64() * 1000.0)
}

/// The function's image run by `docker run`, its server published on a loopback port.
struct DirectContainer {
    id: String,
    address: SocketAddr,
}

impl DirectContainer {
    fn start(image: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let output = Command::new("docker")
            .args(["run", "-d", "--rm", "-e", "PORT=8080", "-p", &format!("127.0.0.1:{port}:8080"), image])
            .output()
            .context("running docker")?;
        if !output.status.success() {
            bail!("docker run: {}", String::from_utf8_lossy(&output.stderr));
        }
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(Self { id, address: SocketAddr::from(([127, 0, 0, 1], port)) })
    }

    async fn wait_answering(&self, http: &Http) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/", self.address);
        loop {
            if let Ok((200, _)) = call(http, &url).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the container run by docker never answered on {url}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for DirectContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}
