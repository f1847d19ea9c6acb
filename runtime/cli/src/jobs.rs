//! `amphi job`, `amphi jobs` and `amphi schedule`: async jobs and their schedules.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use amphi_contract::size::parse_duration;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::commands::{encode, out, timestamp};

#[derive(Args)]
pub struct JobArgs {
    /// The job's id (printed by `amphi invoke --async`, or the 202's amphi-invocation-id).
    id: String,
    /// Wait until the job has ended, then print its result's body.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Put a dead, failed or canceled job back on the queue.
    #[arg(long, conflicts_with_all = ["wait", "cancel"])]
    retry: bool,
    /// Cancel a queued job.
    #[arg(long, conflicts_with = "wait")]
    cancel: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn job(client: &Client, args: JobArgs) -> Result<ExitCode> {
    let path = format!("/v1/jobs/{}", encode(&args.id));
    let job = if args.retry {
        client.send_json(Method::POST, &format!("{path}/retry"), &json!({})).await?
    } else if args.cancel {
        let reply = client.admin(Method::DELETE, &path, bytes::Bytes::new(), None).await?;
        serde_json::from_slice(&reply.body).context("the server sent invalid JSON")?
    } else if args.wait {
        wait(client, &path, args.timeout).await?
    } else {
        client.get_json(&path).await?
    };
    if args.json {
        out!("{job}");
        return Ok(ExitCode::SUCCESS);
    }
    print_job(&job);
    let state = job["state"].as_str().unwrap_or("");
    if args.wait && job["has_result"] == true {
        let reply =
            client.admin(Method::GET, &format!("{path}/result?raw=1"), bytes::Bytes::new(), None).await?;
        out!();
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&reply.body)?;
        stdout.flush()?;
    }
    Ok(if args.wait && state != "succeeded" { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Polls the job until it has ended (or `timeout` passes).
async fn wait(client: &Client, path: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let job = client.get_json(path).await?;
        if !matches!(job["state"].as_str(), Some("queued" | "running")) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!(
                "job {} is still {} after {}",
                job["id"],
                job["state"],
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn print_job(job: &Value) {
    out!("job       {}", job["id"].as_str().unwrap_or("?"));
    out!(
        "function  {}  ({} {})",
        job["function"].as_str().unwrap_or("?"),
        job["method"].as_str().unwrap_or(""),
        job["path"].as_str().unwrap_or("")
    );
    out!("state     {}", job["state"].as_str().unwrap_or("?"));
    if let Some(status) = job["status"].as_u64() {
        out!("status    {status}");
    }
    if let Some(error) = job["error"].as_str() {
        out!("error     {error}");
    }
    out!("created   {}", timestamp(job["created_us"].as_u64()));
    if let Some(schedule) = job["schedule"].as_str() {
        out!("schedule  {schedule}");
    }
    if let Some(callback) = job["callback"].as_object() {
        out!(
            "callback  {} {} ({} deliveries)",
            callback["url"].as_str().unwrap_or("?"),
            callback["state"].as_str().unwrap_or("?"),
            callback["attempts"]
        );
    }
    for attempt in job["attempts"].as_array().into_iter().flatten() {
        out!(
            "attempt {:>2} {}  {}  {}  {}{}",
            attempt["number"],
            timestamp(attempt["started_us"].as_u64()),
            attempt["invocation_id"].as_str().unwrap_or("?"),
            attempt["status"].as_u64().map_or("-".to_string(), |s| s.to_string()),
            attempt["outcome"].as_str().unwrap_or("running"),
            attempt["error"].as_str().map(|e| format!("  {e}")).unwrap_or_default(),
        );
    }
}

#[derive(Args)]
pub struct JobsArgs {
    /// Only this function's jobs.
    function: Option<String>,
    /// Only jobs in this state: queued, running, succeeded, failed, dead, canceled.
    #[arg(long)]
    state: Option<String>,
    /// How many (the newest first).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn jobs(client: &Client, args: JobsArgs) -> Result<ExitCode> {
    let mut path = format!("/v1/jobs?limit={}", args.limit);
    if let Some(function) = &args.function {
        path.push_str(&format!("&function={}", encode(function)));
    }
    if let Some(state) = &args.state {
        path.push_str(&format!("&state={}", encode(state)));
    }
    let jobs = client.get_json(&path).await?;
    if args.json {
        out!("{jobs}");
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<36}  {:<16}  {:<9}  {:>6}  {:>8}  {:<24}  PATH",
        "ID",
        "FUNCTION",
        "STATE",
        "STATUS",
        "ATTEMPTS",
        "CREATED"
    );
    for job in jobs.as_array().into_iter().flatten() {
        out!(
            "{:<36}  {:<16}  {:<9}  {:>6}  {:>8}  {:<24}  {} {}",
            job["id"].as_str().unwrap_or("?"),
            job["function"].as_str().unwrap_or("?"),
            job["state"].as_str().unwrap_or("?"),
            job["status"].as_u64().map_or("-".to_string(), |s| s.to_string()),
            job["attempts"].as_array().map_or(0, Vec::len),
            timestamp(job["created_us"].as_u64()),
            job["method"].as_str().unwrap_or(""),
            job["path"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Make (or replace) a schedule: each tick of CRON queues one job of FUNCTION.
    Add(ScheduleAddArgs),
    /// List the schedules with their last and next ticks.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a schedule.
    Rm {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Args)]
pub struct ScheduleAddArgs {
    /// The schedule's name.
    name: String,
    /// The function each tick calls.
    #[arg(long)]
    function: String,
    /// When: 5 fields (`0 3 * * *`, minutes) or 6 (`*/10 * * * * *`, seconds first).
    #[arg(long)]
    cron: String,
    /// The path the function sees.
    #[arg(long, default_value = "/")]
    path: String,
    /// The method.
    #[arg(long, short = 'X', default_value = "POST")]
    method: String,
    /// The request body: text, or @FILE.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// A request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
}

pub async fn schedule(client: &Client, command: ScheduleCommand) -> Result<ExitCode> {
    match command {
        ScheduleCommand::Add(args) => {
            let body = match &args.data {
                Some(data) => match data.strip_prefix('@') {
                    Some(file) => {
                        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
                    }
                    None => data.clone(),
                },
                None => String::new(),
            };
            let mut headers = serde_json::Map::new();
            for h in &args.headers {
                let (name, value) =
                    h.split_once(':').with_context(|| format!("header `{h}` is not `Name: value`"))?;
                headers.insert(name.trim().to_string(), json!(value.trim()));
            }
            let spec = json!({
                "function": args.function,
                "cron": args.cron,
                "method": args.method.to_uppercase(),
                "path": if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) },
                "headers": headers,
                "body": body,
                "timezone": args.timezone,
            });
            let view = client
                .send_json(Method::PUT, &format!("/v1/schedules/{}", encode(&args.name)), &spec)
                .await?;
            out!(
                "schedule {} calls {} on `{}`; next tick {}",
                args.name,
                args.function,
                args.cron,
                view["next_tick_us"].as_u64().map_or("none".into(), |us| timestamp(Some(us)))
            );
        }
        ScheduleCommand::Ls { json } => {
            let schedules = client.get_json("/v1/schedules").await?;
            if json {
                out!("{schedules}");
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<20}  {:<16}  {:<18}  {:<24}  {:<24}  PATH",
                "NAME",
                "FUNCTION",
                "CRON",
                "LAST TICK",
                "NEXT TICK"
            );
            for s in schedules.as_array().into_iter().flatten() {
                out!(
                    "{:<20}  {:<16}  {:<18}  {:<24}  {:<24}  {} {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["function"].as_str().unwrap_or("?"),
                    s["cron"].as_str().unwrap_or("?"),
                    s["last_tick_us"].as_u64().map_or("-".into(), |us| timestamp(Some(us))),
                    s["next_tick_us"].as_u64().map_or("-".into(), |us| timestamp(Some(us))),
                    s["method"].as_str().unwrap_or(""),
                    s["path"].as_str().unwrap_or(""),
                );
            }
        }
        ScheduleCommand::Rm { name } => {
            client
                .admin(Method::DELETE, &format!("/v1/schedules/{}", encode(&name)), bytes::Bytes::new(), None)
                .await?;
            out!("schedule {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
