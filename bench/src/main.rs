//! Amphi's benchmark harness: every figure next to its anchor, measured in the same run.
//!
//! `cargo run --release -p amphi-bench -- all` runs every section and writes a report (markdown,
//! JSON and an SVG chart); `--quick` is a smoke run of the same sections in under three minutes.
//! Each section also runs alone (`wasm`, `choices`, `startup`, `containers`, `mixed`, `density`,
//! `logs`, `jobs`, `preinit`).
//! The servers measured run as child processes: the bare hyper floor (`floor`), the Amphi
//! gateway (`gateway`, the code of `amphi serve`) and `wasmtime serve`. See `bench/README.md`.

mod cluster;
mod containers;
mod density;
mod jobs;
mod load;
mod logstore;
mod mixed;
mod p3;
mod preinit;
mod report;
mod servers;
mod spinning;
mod wasm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;

use crate::report::{Chart, Report, Section};

/// The allocator `amphi serve` uses, so the gateway child measures what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Amphi's benchmarks, each figure next to its anchor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every section, then the report (markdown, JSON, SVG chart) written to `--out`.
    All(RunArgs),
    /// §1: wasm hello vs the bare hyper floor and `wasmtime serve`; the CGI binding.
    Wasm(RunArgs),
    /// §1b: the gateway's serving choices (ready instances, workers), each turned off in turn.
    Choices(RunArgs),
    /// §2: instantiation per request, deploy to first response, restart.
    Startup(RunArgs),
    /// §3: containers: cold start vs `docker run`, unpause, warm overhead.
    Containers {
        #[command(flatten)]
        run: RunArgs,
        /// The example under guest-examples/containers to build and run.
        #[arg(long, default_value = DEFAULT_EXAMPLE)]
        example: String,
    },
    /// §4: wasm calls while slow container calls are in flight.
    Mixed(RunArgs),
    /// §4b: the wasm hello while wasm guests spin in endless loops.
    Spinning(RunArgs),
    /// §5: thousands of wasm functions on one gateway.
    Density(RunArgs),
    /// §6: log ingestion while serving, and the last-100-lines query on a full store.
    Logs(RunArgs),
    /// §7: async jobs: enqueue rate against sync calls and the disk's fsyncs, backlog drain.
    Jobs(RunArgs),
    /// §8: pre-initialization: calls with the initializer run at deploy vs lazily per call.
    Preinit(RunArgs),
    /// §9: WASI 0.3 components: the p3 hello, fresh and with reuse, against `wasmtime serve`.
    P3(RunArgs),
    /// §10: gateways sharing PostgreSQL: deploy-to-served-everywhere latency, per-call cost.
    Cluster(RunArgs),
    /// (child process) A bare hyper HTTP/1.1 hello-world server.
    #[command(hide = true)]
    Floor { listen: SocketAddr },
    /// (child process) The Amphi gateway on a data directory.
    #[command(hide = true)]
    Gateway {
        listen: SocketAddr,
        data: PathBuf,
        #[arg(long)]
        ready_instances: usize,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        log_max_lines: u64,
        /// A PostgreSQL store shared with other gateways.
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A smoke run: shorter runs, fewer rounds, smaller sizes (goals at scale are not checked).
    #[arg(long)]
    quick: bool,
    /// Where the report is written (report.md, report.json, chart.svg).
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
}

/// How much each section measures.
pub struct Plan {
    /// Seconds per `wrk` run.
    pub seconds: u32,
    /// Rounds of alternated runs (wasm, mixed) and of deploys and restarts.
    pub rounds: usize,
    /// Cold starts and unpauses measured.
    pub rounds_containers: usize,
    /// Sequential calls where latency is sampled call by call.
    pub sequential_calls: usize,
    /// Functions deployed, step by step, in the density section.
    pub density_steps: Vec<usize>,
    /// Log lines stored before the query is timed.
    pub stored_lines: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                seconds: 2,
                rounds: 1,
                rounds_containers: 3,
                sequential_calls: 500,
                density_steps: vec![1000],
                stored_lines: 1_000_000,
            }
        } else {
            Self {
                seconds: 5,
                rounds: 3,
                rounds_containers: 10,
                sequential_calls: 2000,
                density_steps: vec![1000, 10_000],
                stored_lines: 10_000_000,
            }
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Floor { listen } => current_thread()?.block_on(floor(listen)),
        Command::Gateway { listen, data, ready_instances, workers, log_max_lines, store } => {
            gateway(listen, data, ready_instances, workers, log_max_lines, store)
        }
        Command::All(args) => multi_thread()?.block_on(run(args, &SECTIONS, DEFAULT_EXAMPLE)),
        Command::Wasm(args) => multi_thread()?.block_on(run(args, &["wasm"], DEFAULT_EXAMPLE)),
        Command::Choices(args) => multi_thread()?.block_on(run(args, &["choices"], DEFAULT_EXAMPLE)),
        Command::Startup(args) => multi_thread()?.block_on(run(args, &["startup"], DEFAULT_EXAMPLE)),
        Command::Containers { run: args, example } => {
            multi_thread()?.block_on(run(args, &["containers"], &example))
        }
        Command::Mixed(args) => multi_thread()?.block_on(run(args, &["mixed"], DEFAULT_EXAMPLE)),
        Command::Spinning(args) => multi_thread()?.block_on(run(args, &["spinning"], DEFAULT_EXAMPLE)),
        Command::Density(args) => multi_thread()?.block_on(run(args, &["density"], DEFAULT_EXAMPLE)),
        Command::Logs(args) => multi_thread()?.block_on(run(args, &["logs"], DEFAULT_EXAMPLE)),
        Command::Jobs(args) => multi_thread()?.block_on(run(args, &["jobs"], DEFAULT_EXAMPLE)),
        Command::Preinit(args) => multi_thread()?.block_on(run(args, &["preinit"], DEFAULT_EXAMPLE)),
        Command::P3(args) => multi_thread()?.block_on(run(args, &["p3"], DEFAULT_EXAMPLE)),
        Command::Cluster(args) => multi_thread()?.block_on(run(args, &["cluster"], DEFAULT_EXAMPLE)),
    }
}

/// The container example measured unless told otherwise.
const DEFAULT_EXAMPLE: &str = "python-http";

/// Every section, in the order `all` runs them.
const SECTIONS: [&str; 12] = [
    "wasm",
    "choices",
    "startup",
    "containers",
    "mixed",
    "spinning",
    "density",
    "logs",
    "jobs",
    "preinit",
    "p3",
    "cluster",
];

async fn run(args: RunArgs, sections: &[&str], example: &str) -> Result<()> {
    load::require_wrk()?;
    let plan = Plan::new(args.quick);
    let began = Instant::now();
    let mut chart =
        Chart { title: "Amphi wasm hello: a fresh instance per request".into(), ..Chart::default() };
    let mut done = Vec::new();
    for &name in sections {
        eprintln!("==> {name} ({:.0} s so far)", began.elapsed().as_secs_f64());
        let section = match name {
            "wasm" => wasm::hello(&plan, &mut chart).await,
            "choices" => wasm::choices(&plan).await,
            "startup" => wasm::startup(&plan).await,
            "containers" => containers::run(&plan, example).await,
            "mixed" => mixed::run(&plan).await,
            "spinning" => spinning::run(&plan).await,
            "density" => density::run(&plan).await,
            "logs" => logstore::run(&plan).await,
            "jobs" => jobs::run(&plan).await,
            "preinit" => preinit::run(&plan).await,
            "p3" => p3::run(&plan).await,
            _ => cluster::run(&plan).await,
        }
        .with_context(|| format!("the {name} section failed"))?;
        done.push(section);
    }
    finish(args, done, chart, began)
}

fn finish(args: RunArgs, sections: Vec<Section>, chart: Chart, began: Instant) -> Result<()> {
    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        machine: machine(),
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        sections,
    };
    print!("{}", report.markdown());
    report.save(&args.out, &chart)?;
    eprintln!(
        "==> done in {:.0} s; report in {}",
        began.elapsed().as_secs_f64(),
        args.out.join("report.md").display()
    );
    Ok(())
}

/// The machine the run is on, and the date.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let memory_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpus} vCPUs ({model}), {:.0} GiB, kernel {}, {date}",
        memory_kib as f64 / (1 << 20) as f64,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

/// A fresh data directory under the system's temporary directory.
pub fn temp_data(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("amphi-bench-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn multi_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The floor: what any Rust HTTP server costs here.
async fn floor(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
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

/// The gateway, configured as `amphi serve` is by default but for the options measured.
fn gateway(
    listen: SocketAddr,
    data: PathBuf,
    ready_instances: usize,
    workers: usize,
    log_max_lines: u64,
    store: Option<String>,
) -> Result<()> {
    // Like `amphi serve`: the runtime that starts the server coordinates; the workers serve.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let mut config = amphi_gateway::ServeConfig::new(listen, data);
        config.token = Some(servers::TOKEN.into());
        config.wasm.ready.per_function = ready_instances;
        config.workers = workers;
        config.logs.max_lines = log_max_lines;
        config.store = store;
        let server = amphi_gateway::Server::bind(config).await?;
        server.run(async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await?;
        Ok(())
    })
}
