//! §3, containers: the container backend's three paths, each next to its anchor, measured in the
//! same run with the same image (built by Amphi from `guest-examples/containers`):
//!
//! - cold start (no instance: a new container, until the function answered the call) vs
//!   `docker run -d --rm -p 127.0.0.1:PORT:8080 IMAGE` until the same function answers there;
//! - a call that resumes a paused instance (`Server-Timing: init;desc="unpause"`);
//! - warm calls through the gateway vs the same calls sent straight to the function's server in a
//!   container published on a loopback port (keep-alive, sequential).
//!
//! The gateway is a child process on a fresh data directory; Docker is reached through the
//! engine's socket by Amphi and through the `docker` CLI for the anchor.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::load::{Percentiles, call, call_ok};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, Http, http};
use crate::{Plan, temp_data};

/// Builds `example` (a folder of `guest-examples/containers`) through the gateway; returns the
/// image's digest.
pub async fn build_example(admin: &Admin, example: &str) -> Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-examples/containers").join(example);
    admin.upload(pack(&dir)?, "application/x-tar").await
}

/// Measures the three paths with `example`'s image.
pub async fn run(plan: &Plan, example: &str) -> Result<Section> {
    let data = temp_data("containers")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let result = measure(plan, &admin, example).await;
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn measure(plan: &Plan, admin: &Admin, example: &str) -> Result<Section> {
    let http = http();
    let gateway = admin.addr;
    let image = build_example(admin, example).await?;
    let rounds = plan.rounds_containers;

    // Cold: a new version each round, so its pool is empty; the first call starts an instance.
    let mut cold = Vec::new();
    let mut cold_init = Vec::new();
    let mut docker_run = Vec::new();
    for round in 0..rounds {
        let config = json!({ "env": { "ROUND": round.to_string() }, "container": { "idle_timeout_ms": 600000, "pause_after_ms": 600000 } });
        admin.deploy("cold", &image, config).await?;
        let called = call_ok(&http, &format!("http://{gateway}/fn/cold/")).await?;
        if called.init_desc() != "cold" {
            bail!("the cold call was not cold ({})", called.timing);
        }
        cold.push(called.ms());
        cold_init.push(called.init_ms());
        docker_run.push(docker_run_until_answered(&http, &image).await?);
    }

    // Unpause: the instance pauses 200 ms after a call; the next call resumes it.
    let config = json!({ "container": { "pause_after_ms": 200, "idle_timeout_ms": 600000 } });
    admin.deploy("paused", &image, config).await?;
    call_ok(&http, &format!("http://{gateway}/fn/paused/")).await?;
    let mut unpause = Vec::new();
    let mut unpause_init = Vec::new();
    for _ in 0..rounds {
        wait_paused(admin, "paused").await?;
        let called = call_ok(&http, &format!("http://{gateway}/fn/paused/")).await?;
        if called.init_desc() != "unpause" {
            bail!("the call did not resume a paused instance ({})", called.timing);
        }
        unpause.push(called.ms());
        unpause_init.push(called.init_ms());
    }

    // Warm: sequential calls on a kept-alive connection, alternating blocks with direct calls.
    admin.deploy("warm", &image, json!({ "container": { "min_instances": 1 } })).await?;
    let direct = DirectContainer::start(&image)?;
    direct.wait_answering(&http).await?;
    let calls = plan.sequential_calls;
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    let block = (calls / 10).max(1);
    while through.len() < calls {
        for _ in 0..block {
            through.push(call_ok(&http, &format!("http://{gateway}/fn/warm/")).await?.ms());
        }
        for _ in 0..block {
            straight.push(call_ok(&http, &format!("http://{}/", direct.address)).await?.ms());
        }
    }
    drop(direct);

    let (cold, cold_init, docker_run) =
        (Percentiles::of(cold), Percentiles::of(cold_init), Percentiles::of(docker_run));
    let (unpause, unpause_init) = (Percentiles::of(unpause), Percentiles::of(unpause_init));
    let (through, straight) = (Percentiles::of(through), Percentiles::of(straight));
    let mut section = Section::new(
        &format!("3. Containers (`{example}` image)"),
        format!(
            "Latency seen by the client on loopback, p50 / p99 over {rounds} round(s) ({calls} calls \
             each way for warm), each row next to its anchor from the same run. Cold start: each \
             round deploys a new version (empty pool) and times its first call; the anchor in the \
             same round is `docker run -d --rm -p 127.0.0.1:PORT:8080` of the same image, timed \
             until the function answers there (polled every 1 ms). Unpause: an instance paused \
             200 ms after a call. Warm: a reserved instance, calls alternating in blocks with the same \
             calls sent to the function's own server in a `docker run` container (through Docker's \
             loopback port proxy)."
        ),
    );
    section.columns(&["path", "Amphi p50", "Amphi p99", "anchor", "anchor p50", "anchor p99", "ratio (p50)"]);
    let cold_ratio = cold.p50 / docker_run.p50;
    let overhead = through.p50 - straight.p50;
    section.row(vec![
        "cold start: new instance, whole call".into(),
        format!("{:.1} ms", cold.p50),
        format!("{:.1} ms", cold.p99),
        "`docker run --rm` until it answers".into(),
        format!("{:.1} ms", docker_run.p50),
        format!("{:.1} ms", docker_run.p99),
        format!("{cold_ratio:.2}×"),
    ]);
    section.row(vec![
        "cold start: gateway's `init` (create + start + ready)".into(),
        format!("{:.1} ms", cold_init.p50),
        format!("{:.1} ms", cold_init.p99),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    section.row(vec![
        "resume a paused instance, whole call".into(),
        format!("{:.2} ms", unpause.p50),
        format!("{:.2} ms", unpause.p99),
        "gateway's `init` (unpause)".into(),
        format!("{:.2} ms", unpause_init.p50),
        format!("{:.2} ms", unpause_init.p99),
        String::new(),
    ]);
    section.row(vec![
        "warm call through the gateway".into(),
        format!("{:.3} ms", through.p50),
        format!("{:.3} ms", through.p99),
        "the function's server called directly".into(),
        format!("{:.3} ms", straight.p50),
        format!("{:.3} ms", straight.p99),
        format!("{:.2}× (+{overhead:.3} ms)", through.p50 / straight.p50),
    ]);
    section.goals = vec![
        Goal::new(
            "container call from a paused instance ≤ 25 ms p50",
            format!("{:.2} ms", unpause.p50),
            unpause.p50 <= 25.0,
        ),
        Goal::new(
            "container true cold start ≤ 1.1× `docker run --rm` (p50)",
            format!("{:.1} vs {:.1} ms: {cold_ratio:.2}×", cold.p50, docker_run.p50),
            cold_ratio <= 1.1,
        ),
        Goal::new(
            "container warm overhead ≤ 0.2 ms p50 over calling the server directly",
            format!("{:.3} vs {:.3} ms: +{overhead:.3} ms", through.p50, straight.p50),
            overhead <= 0.2,
        ),
    ];
    section.figures = json!({
        "cold_ms": cold, "cold_init_ms": cold_init, "docker_run_ms": docker_run,
        "unpause_ms": unpause, "unpause_init_ms": unpause_init,
        "warm_ms": through, "direct_ms": straight,
    });
    Ok(section)
}

/// A plain tar of `dir` (the examples have no links and no `.dockerignore`).
fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", dir).with_context(|| format!("packing {}", dir.display()))?;
    Ok(archive.into_inner()?)
}

async fn wait_paused(admin: &Admin, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let described: Value =
            admin.request("GET", &format!("/functions/{name}"), Bytes::new(), "application/json").await?;
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
            if call(http, &url).await.is_ok_and(|called| called.status == 200) {
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
