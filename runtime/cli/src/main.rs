//! `amphi`: `amphi serve` runs the platform; every other command talks to a running server over
//! its admin API (`AMPHI_URL`, `AMPHI_TOKEN`), exits non-zero on failure and says why on stderr.

mod client;
mod commands;
mod crate_build;
mod jobs;
mod serve;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a call allocates and frees many small objects on
/// every worker thread (store, WASI context, headers); measured in bench/README.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "amphi",
    version,
    about = "Serverless functions: WebAssembly and containers behind one gateway"
)]
struct Cli {
    /// The server's URL.
    #[arg(long, global = true, env = "AMPHI_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token (default: the one in the local data directory, if readable).
    #[arg(long, global = true, env = "AMPHI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: the gateway, the admin API and the backends.
    Serve(serve::ServeArgs),
    /// Build an SDK function crate: a component for the wasm backend (--target wasm) or a build
    /// context for the container backend (--target container). Prints the path to deploy.
    Build(crate_build::BuildArgs),
    /// Make a new version of NAME from a .wasm file, a directory with a Dockerfile (built into a
    /// container image, with progress), or an --image already on the Docker engine.
    Deploy(commands::DeployArgs),
    /// Call a function through its HTTP trigger and print the response body (with --async: queue
    /// the call as a job and print its id).
    Invoke(commands::InvokeArgs),
    /// Show an async job: state, attempts, status; --wait for its result, --retry, --cancel.
    Job(jobs::JobArgs),
    /// List async jobs, newest first.
    Jobs(jobs::JobsArgs),
    /// Cron schedules that queue a job of a function at each tick.
    #[command(subcommand)]
    Schedule(jobs::ScheduleCommand),
    /// Show a function's log lines (and, with --follow, its invocation records as they happen).
    Logs(commands::LogsArgs),
    /// List a function's recent invocations.
    Invocations(commands::InvocationsArgs),
    /// List the functions.
    Ls(commands::JsonFlag),
    /// Show a function's current config and its versions.
    Describe(commands::NameArgs),
    /// Delete a function and its versions.
    Rm(commands::NameArgs),
    /// A live view of every function: calls a second, p50/p99, errors, cold starts, instances.
    Top(top::TopArgs),
    /// The gateways sharing this one's store: id, address, version, last seen, up or gone.
    Nodes(commands::JsonFlag),
}

fn main() -> ExitCode {
    // `amphi serve` compiles uploads by running this binary as its compile worker.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(amphi_wasm::compile::WORKER_COMMAND) {
        return amphi_wasm::compile::worker_main(&args[2..]);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Build(args) => crate_build::run(args).await,
            command => {
                let token = cli.token.or_else(local_token);
                let client = client::Client::new(&cli.url, token);
                match command {
                    Command::Deploy(args) => commands::deploy(&client, args).await,
                    Command::Invoke(args) => commands::invoke(&client, args).await,
                    Command::Job(args) => jobs::job(&client, args).await,
                    Command::Jobs(args) => jobs::jobs(&client, args).await,
                    Command::Schedule(command) => jobs::schedule(&client, command).await,
                    Command::Logs(args) => commands::logs(&client, args).await,
                    Command::Invocations(args) => commands::invocations(&client, args).await,
                    Command::Ls(args) => commands::list(&client, args).await,
                    Command::Describe(args) => commands::describe(&client, args).await,
                    Command::Rm(args) => commands::remove(&client, args).await,
                    Command::Top(args) => top::run(&client, args).await,
                    Command::Nodes(args) => commands::nodes(&client, args).await,
                    Command::Serve(_) | Command::Build(_) => unreachable!("handled above"),
                }
            }
        }
    });
    match result {
        Ok(code) => code,
        // The reader went away (`amphi logs f | head`): nothing more to say.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The token a local `amphi serve` stored in its data directory (`AMPHI_DATA`, else `./amphi-data`).
fn local_token() -> Option<String> {
    let data = std::env::var_os("AMPHI_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(serve::DEFAULT_DATA));
    let token = std::fs::read_to_string(data.join("admin-token")).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}
