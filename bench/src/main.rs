//! Amphi's benchmark harness. Every figure is printed next to its anchor, measured in the same
//! run, alternating A B A B so drift on a shared machine hits both sides alike.
//!
//! `cargo run --release -p amphi-bench -- hello` measures the wasm hello call through the gateway
//! against a bare hyper hello-world server (the floor): latency at 1 connection and throughput at
//! 16, with `wrk` on loopback, plus the per-request instantiation time reported by the gateway's
//! `Server-Timing` header. Both servers run as child processes of this binary.
//!
//! `cargo run --release -p amphi-bench -- containers` measures the container backend's cold,
//! unpause and warm paths against `docker run` and a direct call (see `containers.rs`).

mod containers;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Parser)]
#[command(about = "Amphi's benchmarks, each figure next to its anchor")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Wasm hello through the gateway vs a bare hyper hello server.
    Hello {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Rounds of A B alternation.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// One short round (for a smoke check).
        #[arg(long)]
        quick: bool,
        /// Also write the report to this markdown file (and a .json beside it).
        #[arg(long)]
        save: Option<std::path::PathBuf>,
    },
    /// Container functions: cold start vs `docker run`, unpause, warm call vs a direct call.
    Containers {
        /// The example under guest-examples/containers to build and run.
        #[arg(long, default_value = "python-http")]
        example: String,
        /// Cold starts and unpauses measured.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Warm calls measured (and as many direct ones).
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Also write the report to this markdown file.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
    },
    /// (child process) A bare hyper HTTP/1.1 hello-world server.
    #[command(hide = true)]
    Floor { listen: SocketAddr },
    /// (child process) The Amphi gateway on a fresh data directory.
    #[command(hide = true)]
    Gateway { listen: SocketAddr, data: std::path::PathBuf },
}

const TOKEN: &str = "bench-token";

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Bench::Floor { listen } => current_thread()?.block_on(floor(listen)),
        Bench::Gateway { listen, data } => multi_thread()?.block_on(gateway(listen, data)),
        Bench::Hello { seconds, rounds, quick, save } => {
            let (seconds, rounds) = if quick { (2, 1) } else { (seconds, rounds) };
            multi_thread()?.block_on(hello(seconds, rounds, save))
        }
        Bench::Containers { example, rounds, calls, save } => {
            multi_thread()?.block_on(containers::run(&example, rounds, calls, save))
        }
    }
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn multi_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn floor(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ready");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"Hello from Amphi!\n",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn gateway(listen: SocketAddr, data: std::path::PathBuf) -> Result<()> {
    let mut config = amphi_gateway::ServeConfig::new(listen, data);
    config.token = Some(TOKEN.into());
    let server = amphi_gateway::Server::bind(config).await?;
    println!("ready");
    server.run(async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await?;
    Ok(())
}

/// A child server process, killed on drop.
struct ChildServer(Child);

impl ChildServer {
    fn spawn(args: &[String]) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a child server")?;
        let mut stdout = child.stdout.take().context("child stdout")?;
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut stdout, &mut ready).context("the child server did not start")?;
        Ok(Self(child))
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What wrk reported for one run.
#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn wrk(url: &str, connections: u32, seconds: u32) -> Result<WrkRun> {
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    if let Some(errors) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        bail!("wrk saw errors against {url}: {errors}");
    }
    let percentile = |p: &str| -> Result<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(p)).context("no latency distribution")?;
        parse_wrk_time(line.split_whitespace().nth(1).context("no value")?)
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("no Requests/sec")?
        .trim()
        .parse()?;
    Ok(WrkRun { requests_per_second: rps, p50_us: percentile("50%")?, p99_us: percentile("99%")? })
}

fn parse_wrk_time(text: &str) -> Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).context("no unit")?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        other => bail!("unknown wrk unit {other}"),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn hello(seconds: u32, rounds: u32, save: Option<std::path::PathBuf>) -> Result<()> {
    let data = std::env::temp_dir().join(format!("amphi-bench-{}", std::process::id()));
    let floor_addr = free_port()?;
    let gateway_addr = free_port()?;
    let _floor = ChildServer::spawn(&["floor".into(), floor_addr.to_string()])?;
    let _gateway =
        ChildServer::spawn(&["gateway".into(), gateway_addr.to_string(), data.display().to_string()])?;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let admin = |method: &str, path: &str, body: Vec<u8>| {
        hyper::Request::builder()
            .method(method)
            .uri(format!("http://{gateway_addr}/v1{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(body)))
    };
    let wasm = std::fs::read(amphi_guest_artifacts::RUST_HTTP_COMPONENT)?;
    let uploaded = client.request(admin("POST", "/artifacts", wasm)?).await?.into_body().collect().await?;
    let artifact: serde_json::Value = serde_json::from_slice(&uploaded.to_bytes())?;
    let deploy = serde_json::to_vec(&serde_json::json!({ "digest": artifact["digest"] }))?;
    let deployed = client.request(admin("PUT", "/functions/hello", deploy)?).await?;
    if deployed.status() != 201 {
        bail!("deploy failed: {}", deployed.status());
    }

    // Instantiation per request, as the gateway reports it (`Server-Timing: init`), sequentially.
    let mut init_us = Vec::new();
    for _ in 0..2000 {
        let request =
            hyper::Request::get(format!("http://{gateway_addr}/fn/hello")).body(Full::new(Bytes::new()))?;
        let response = client.request(request).await?;
        let timing =
            response.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        response.into_body().collect().await?;
        if let Some(init) = timing.split(", ").find_map(|p| p.strip_prefix("init;dur=")) {
            init_us.push(init.parse::<f64>()? * 1000.0);
        }
    }
    init_us.sort_by(f64::total_cmp);
    let init_p50 = init_us[init_us.len() / 2];
    let init_p99 = init_us[init_us.len() * 99 / 100];

    let floor_url = format!("http://{floor_addr}/");
    let amphi_url = format!("http://{gateway_addr}/fn/hello");
    wrk(&floor_url, 1, 1)?;
    wrk(&amphi_url, 1, 1)?;
    let mut rows = Vec::new();
    for connections in [1u32, 16] {
        let (mut floor_runs, mut amphi_runs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            floor_runs.push(wrk(&floor_url, connections, seconds)?);
            amphi_runs.push(wrk(&amphi_url, connections, seconds)?);
        }
        let pick =
            |runs: &[WrkRun], f: fn(&WrkRun) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        rows.push((
            connections,
            [
                pick(&floor_runs, |r| r.requests_per_second),
                pick(&floor_runs, |r| r.p50_us),
                pick(&floor_runs, |r| r.p99_us),
            ],
            [
                pick(&amphi_runs, |r| r.requests_per_second),
                pick(&amphi_runs, |r| r.p50_us),
                pick(&amphi_runs, |r| r.p99_us),
            ],
        ));
    }
    let _ = std::fs::remove_dir_all(&data);

    let mut report = format!(
        "# Wasm hello vs the bare hyper floor\n\n\
         wrk -t1, {seconds}s per run, medians of {rounds} alternating round(s), loopback, release build.\n\n\
         | connections | server | req/s | p50 | p99 |\n|---|---|---|---|---|\n"
    );
    let mut json_rows = Vec::new();
    for (connections, floor, amphi) in &rows {
        report.push_str(&format!(
            "| {connections} | bare hyper (floor) | {:.0} | {:.0} µs | {:.0} µs |\n\
             | {connections} | Amphi wasm hello | {:.0} | {:.0} µs | {:.0} µs |\n\
             | {connections} | Amphi / floor | {:.2}× | {:.2}× | {:.2}× |\n",
            floor[0],
            floor[1],
            floor[2],
            amphi[0],
            amphi[1],
            amphi[2],
            amphi[0] / floor[0],
            amphi[1] / floor[1],
            amphi[2] / floor[2],
        ));
        json_rows.push(serde_json::json!({
            "connections": connections,
            "floor": { "rps": floor[0], "p50_us": floor[1], "p99_us": floor[2] },
            "amphi": { "rps": amphi[0], "p50_us": amphi[1], "p99_us": amphi[2] },
        }));
    }
    report.push_str(&format!(
        "\nInstantiation per request (store + instance, from `Server-Timing: init`, 2000 sequential calls): \
         p50 {init_p50:.1} µs, p99 {init_p99:.1} µs.\n"
    ));
    print!("{report}");
    if let Some(path) = save {
        std::fs::write(&path, &report)?;
        let json = serde_json::json!({ "seconds": seconds, "rounds": rounds, "rows": json_rows,
            "instantiation_us": { "p50": init_p50, "p99": init_p99 } });
        std::fs::write(path.with_extension("json"), serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}
