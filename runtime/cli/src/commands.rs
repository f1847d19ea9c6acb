//! The client commands: human output by default, `--json` for scripts.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use amphi_contract::size::{format_bytes, parse_bytes, parse_duration};
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Args;
use http::Method;
use serde_json::{Value, json};

use crate::client::{Client, describe_failure};

/// `println!` that ends the command quietly when stdout is closed (`amphi logs f | head`) instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub(crate) use out;

#[derive(Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NameArgs {
    /// The function's name.
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The function's name (its trigger is /fn/NAME).
    name: String,
    /// A .wasm file (a wasi:http component or a preview1 CGI command module), or a directory
    /// with a Dockerfile to build into a container image.
    #[arg(required_unless_present = "image")]
    source: Option<PathBuf>,
    /// Build SOURCE (a directory) with this Dockerfile, relative to it [default: Dockerfile].
    #[arg(long, num_args = 0..=1, default_missing_value = "Dockerfile", value_name = "FILE")]
    dockerfile: Option<String>,
    /// Run an image already on the Docker engine instead of uploading anything.
    #[arg(long, conflicts_with_all = ["source", "dockerfile"], value_name = "REFERENCE")]
    image: Option<String>,
    #[command(flatten)]
    container: ContainerArgs,
    /// Most time one call may take.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Most memory the function may use.
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// An environment variable for the function (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Most calls in flight at once; more get 429.
    #[arg(long)]
    concurrency: Option<u32>,
    /// A host the function may send HTTP requests to (repeatable).
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Attempts an async job of this function gets in all (default 3).
    #[arg(long)]
    retry_attempts: Option<u32>,
    /// The backoff between a job's attempts, `FIRST..MAX` (default 1s..60s; exponential, full
    /// jitter).
    #[arg(long, value_name = "FIRST..MAX", value_parser = parse_backoff)]
    retry_backoff: Option<(Duration, Duration)>,
    /// Which failures of a job are retried, comma-separated: 5xx, timeout, platform, 429.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    retry_on: Option<Vec<String>>,
    /// Most async jobs of this function running at once (default: half of --concurrency).
    #[arg(long)]
    async_concurrency: Option<u32>,
    /// Pre-initialize (wasm): run this export once at deploy and start every instance from the
    /// memory it leaves [default export: wizer-initialize].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "wizer-initialize", value_name = "EXPORT")]
    init: Option<String>,
    /// Longest the initializer may run at deploy (default 60s).
    #[arg(long, value_parser = parse_duration)]
    init_timeout: Option<Duration>,
    /// Reuse instances (WASI 0.3 components only): `requests=N,concurrent=N,idle=DURATION`, each
    /// part optional [defaults: requests=128,concurrent=16,idle=10s]. Off without this flag: a
    /// fresh instance per request.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "SETTINGS", value_parser = parse_reuse)]
    reuse: Option<serde_json::Map<String, Value>>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `requests=128,concurrent=16,idle=10s` (any part may be left out) as a `reuse` config.
fn parse_reuse(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    let mut reuse = serde_json::Map::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
        let number = || value.parse::<u32>().map_err(|_| format!("`{value}` is not a whole number"));
        match key {
            "requests" => reuse.insert("max_requests".into(), json!(number()?)),
            "concurrent" => reuse.insert("max_concurrent".into(), json!(number()?)),
            "idle" => {
                reuse.insert("idle_timeout_ms".into(), json!(parse_duration(value)?.as_millis() as u64))
            }
            other => return Err(format!("unknown reuse setting `{other}` (requests, concurrent, idle)")),
        };
    }
    Ok(reuse)
}

/// `1s..60s`: the first and the largest backoff.
fn parse_backoff(text: &str) -> Result<(Duration, Duration), String> {
    let (first, max) =
        text.split_once("..").ok_or_else(|| format!("`{text}` is not FIRST..MAX, such as 1s..60s"))?;
    Ok((parse_duration(first)?, parse_duration(max)?))
}

/// Settings of container functions (ignored for wasm).
#[derive(Args)]
pub struct ContainerArgs {
    /// Instances started at deploy and kept warm (container).
    #[arg(long)]
    min_instances: Option<u32>,
    /// Most instances at once (container).
    #[arg(long)]
    max_instances: Option<u32>,
    /// Calls one instance serves at once (container; default 1).
    #[arg(long)]
    instance_concurrency: Option<u32>,
    /// How long a call may wait for a free instance before it gets 429 (container).
    #[arg(long, value_parser = parse_duration)]
    queue_timeout: Option<Duration>,
    /// Pause an idle instance after this long (container).
    #[arg(long, value_parser = parse_duration)]
    pause_after: Option<Duration>,
    /// Remove an idle instance after this long (container).
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// CPU share in cores, such as 0.5 (container).
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes in one instance (container).
    #[arg(long)]
    pids_limit: Option<u32>,
    /// Give the instances a network (container; none by default).
    #[arg(long)]
    network: bool,
    /// Let the function write to its image's file system (container; read-only by default).
    #[arg(long)]
    writable_root: bool,
    /// Run the command once per call, CGI over stdio, instead of as a server on $PORT (container).
    #[arg(long)]
    cgi: bool,
    /// The port the function's server listens on (container; default 8080).
    #[arg(long)]
    port: Option<u16>,
    /// The user the function runs as, `uid[:gid]` or a name (container; default the image's
    /// USER, or 65534:65534 where the image would run as root).
    #[arg(long)]
    user: Option<String>,
}

impl ContainerArgs {
    fn config(&self) -> Result<serde_json::Map<String, Value>> {
        let mut config = serde_json::Map::new();
        let mut set = |key: &str, value: Value| {
            config.insert(key.to_string(), value);
        };
        if let Some(n) = self.min_instances {
            set("min_instances", json!(n));
        }
        if let Some(n) = self.max_instances {
            set("max_instances", json!(n));
        }
        if let Some(n) = self.instance_concurrency {
            set("concurrency", json!(n));
        }
        for (key, duration) in [
            ("queue_timeout_ms", self.queue_timeout),
            ("pause_after_ms", self.pause_after),
            ("idle_timeout_ms", self.idle_timeout),
        ] {
            if let Some(duration) = duration {
                set(key, json!(duration.as_millis() as u64));
            }
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                bail!("--cpus must be a positive number of cores, got {cpus}");
            }
            set("cpu_millis", json!((cpus * 1000.0).round() as u64));
        }
        if let Some(n) = self.pids_limit {
            set("pids_limit", json!(n));
        }
        if self.network {
            set("network", json!(true));
        }
        if self.writable_root {
            set("writable_root", json!(true));
        }
        if self.cgi {
            set("protocol", json!("cgi"));
        }
        if let Some(port) = self.port {
            set("port", json!(port));
        }
        if let Some(user) = &self.user {
            set("user", json!(user));
        }
        Ok(config)
    }
}

pub async fn deploy(client: &Client, args: DeployArgs) -> Result<ExitCode> {
    let mut config = serde_json::Map::new();
    let container = args.container.config()?;
    if !container.is_empty() {
        config.insert("container".into(), Value::Object(container));
    }
    if let Some(timeout) = args.timeout {
        config.insert("timeout_ms".into(), json!(timeout.as_millis() as u64));
    }
    if let Some(memory) = args.memory {
        config.insert("memory_bytes".into(), json!(memory));
    }
    if let Some(concurrency) = args.concurrency {
        config.insert("concurrency".into(), json!(concurrency));
    }
    if !args.env.is_empty() {
        let mut env = serde_json::Map::new();
        for pair in &args.env {
            let (key, value) =
                pair.split_once('=').with_context(|| format!("--env `{pair}` is not KEY=VALUE"))?;
            env.insert(key.to_string(), json!(value));
        }
        config.insert("env".into(), Value::Object(env));
    }
    if !args.allow_hosts.is_empty() {
        config.insert("allowed_outbound_hosts".into(), json!(args.allow_hosts));
    }
    if let Some(cap) = args.async_concurrency {
        config.insert("async_concurrency".into(), json!(cap));
    }
    if let Some(export) = &args.init {
        config.insert("init".into(), json!(export));
    }
    if let Some(timeout) = args.init_timeout {
        config.insert("init_timeout_ms".into(), json!(timeout.as_millis() as u64));
    }
    if let Some(reuse) = &args.reuse {
        config.insert("reuse".into(), Value::Object(reuse.clone()));
    }
    let mut retry = serde_json::Map::new();
    if let Some(attempts) = args.retry_attempts {
        retry.insert("attempts".into(), json!(attempts));
    }
    if let Some((first, max)) = args.retry_backoff {
        retry.insert("backoff_initial_ms".into(), json!(first.as_millis() as u64));
        retry.insert("backoff_max_ms".into(), json!(max.as_millis() as u64));
    }
    if let Some(on) = &args.retry_on {
        retry.insert("on".into(), json!(on));
    }
    if !retry.is_empty() {
        config.insert("retry".into(), Value::Object(retry));
    }

    let artifact = match (&args.image, &args.source) {
        (Some(image), _) => {
            client.send_json(Method::POST, "/v1/artifacts", &json!({ "image": image })).await?
        }
        (None, Some(source)) if source.is_dir() || args.dockerfile.is_some() => {
            let dockerfile = args.dockerfile.as_deref().unwrap_or("Dockerfile");
            build(client, &args.name, source, dockerfile, args.json).await?
        }
        (None, Some(file)) => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let reply = client
                .admin(Method::POST, "/v1/artifacts", Bytes::from(bytes), Some("application/wasm"))
                .await?;
            serde_json::from_slice(&reply.body).context("the server sent invalid JSON")?
        }
        (None, None) => bail!("give a .wasm file, a directory with a Dockerfile, or --image"),
    };
    let digest = artifact["digest"].as_str().context("the upload answer has no digest")?;
    let function = client
        .send_json(
            Method::PUT,
            &format!("/v1/functions/{}", args.name),
            &json!({ "digest": digest, "config": config }),
        )
        .await?;
    if args.json {
        out!("{function}");
    } else {
        out!(
            "deployed {} version {} ({}, {})",
            args.name,
            function["version"],
            function["kind"].as_str().unwrap_or("?"),
            short(digest.trim_start_matches("sha256:"), 12)
        );
        out!("  {}/fn/{}", client.base(), args.name);
        if function["init"].is_object() {
            out!("  {}", describe_init(&function["init"]));
        }
        if let Some(warning) = function["warning"].as_str() {
            eprintln!("warning: {warning}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Packs and uploads a build context, showing the build as it runs; returns the artifact.
async fn build(
    client: &Client,
    name: &str,
    dir: &std::path::Path,
    dockerfile: &str,
    quiet: bool,
) -> Result<Value> {
    use std::io::IsTerminal as _;
    let context = amphi_toolchain::pack::pack(dir, dockerfile)?;
    let path = format!("/v1/artifacts?function={}&dockerfile={}", encode(name), encode(dockerfile));
    if !quiet {
        eprintln!("building {} ({} context)", dir.display(), format_bytes(context.len() as u64));
    }
    let live = !quiet && std::io::stderr().is_terminal();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut ticks = 0usize;
    let mut result = None;
    client
        .upload_streaming(&path, Bytes::from(context), "application/gzip", |line| {
            let event: Value =
                serde_json::from_slice(line).context("the server sent an invalid build event")?;
            let text = event["text"].as_str().unwrap_or("");
            match event["type"].as_str() {
                Some("step") if !quiet => {
                    if live {
                        eprint!("\r\x1b[K");
                    }
                    eprintln!("{text}");
                }
                Some("output") if live => {
                    ticks += 1;
                    let width = 100;
                    eprint!("\r\x1b[K  {} {}", spinner[ticks % spinner.len()], short(text, width));
                }
                Some("output") if !quiet => eprintln!("  {text}"),
                Some("artifact") => result = Some(Ok(event["artifact"].clone())),
                Some("error") => {
                    let problem = &event["problem"];
                    result = Some(Err(anyhow::anyhow!(
                        "{} {}: {}",
                        problem["status"],
                        problem["title"].as_str().unwrap_or(""),
                        problem["detail"].as_str().unwrap_or("")
                    )));
                }
                _ => {}
            }
            Ok(())
        })
        .await?;
    if live {
        eprint!("\r\x1b[K");
    }
    result.unwrap_or_else(|| bail!("the build stream ended without a result"))
}

#[derive(Args)]
pub struct InvokeArgs {
    /// The function's name.
    name: String,
    /// The path (and query) the function sees.
    #[arg(default_value = "/")]
    path: String,
    /// The request body: text, or @FILE to send a file's bytes.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// The method (default: POST with --data, else GET).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// A request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Print the status line and the response headers first (to stderr).
    #[arg(long, short = 'i')]
    include: bool,
    /// Queue the call as a job (`/async/fn/NAME`) and print its id instead of waiting for it.
    #[arg(long = "async")]
    queue: bool,
    /// With --async: run it no earlier than this from now (30s, 5m).
    #[arg(long, requires = "queue")]
    delay: Option<String>,
    /// With --async: the job's idempotency key (the same key within 24h returns the first job).
    #[arg(long, requires = "queue")]
    idempotency_key: Option<String>,
    /// With --async: POST the result to this URL when the job ends (the server must allow its host).
    #[arg(long, requires = "queue")]
    callback: Option<String>,
}

pub async fn invoke(client: &Client, args: InvokeArgs) -> Result<ExitCode> {
    let body = match &args.data {
        Some(data) => match data.strip_prefix('@') {
            Some(file) => Bytes::from(std::fs::read(file).with_context(|| format!("cannot read {file}"))?),
            None => Bytes::from(data.clone()),
        },
        None => Bytes::new(),
    };
    let method = match &args.method {
        Some(m) => {
            Method::from_bytes(m.to_uppercase().as_bytes()).with_context(|| format!("bad method `{m}`"))?
        }
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = args
        .headers
        .iter()
        .map(|h| {
            let (name, value) =
                h.split_once(':').with_context(|| format!("header `{h}` is not `Name: value`"))?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    if args.queue {
        for (name, value) in [
            ("amphi-delay", &args.delay),
            ("idempotency-key", &args.idempotency_key),
            ("amphi-callback-url", &args.callback),
        ] {
            if let Some(value) = value {
                headers.push((name.to_string(), value.clone()));
            }
        }
        let reply = client.invoke(method, &format!("/async/fn/{}{path}", args.name), &headers, body).await?;
        if !reply.status.is_success() {
            bail!("{}", describe_failure(&reply));
        }
        let id = reply.headers.get(amphi_contract::headers::INVOCATION_ID).and_then(|v| v.to_str().ok());
        out!("{}", id.context("the server's answer names no job")?);
        return Ok(ExitCode::SUCCESS);
    }
    let reply = client.invoke(method, &format!("/fn/{}{path}", args.name), &headers, body).await?;
    if args.include {
        eprintln!("{:?} {}", http::Version::HTTP_11, reply.status);
        for (name, value) in &reply.headers {
            eprintln!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        eprintln!();
    }
    let is_problem = reply
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == amphi_contract::problem::CONTENT_TYPE.as_bytes());
    if is_problem {
        bail!("{}", describe_failure(&reply));
    }
    std::io::stdout().write_all(&reply.body)?;
    Ok(if reply.status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[derive(Args)]
pub struct LogsArgs {
    /// The function's name.
    name: String,
    /// Keep printing new lines and invocation records as they happen.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the lines of this invocation.
    #[arg(long)]
    invocation: Option<String>,
    /// Only lines since then: a duration back (10m) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// How many lines (the newest, unless --since).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON (one object per line).
    #[arg(long)]
    json: bool,
}

pub async fn logs(client: &Client, args: LogsArgs) -> Result<ExitCode> {
    let mut path = format!("/v1/logs?function={}&limit={}", args.name, args.limit);
    if let Some(invocation) = &args.invocation {
        path.push_str(&format!("&invocation={invocation}"));
    }
    if let Some(since) = &args.since {
        path.push_str(&format!("&since={}", encode(since)));
    }
    if args.follow {
        path.push_str("&follow=true");
        client
            .stream_lines(&path, |line| {
                let event: Value = serde_json::from_slice(line).context("the server sent invalid JSON")?;
                let mut out = std::io::stdout().lock();
                if args.json {
                    writeln!(out, "{event}")?;
                } else if event["type"] == "invocation" {
                    writeln!(out, "{}", record_line(&event))?;
                } else {
                    writeln!(out, "{}", log_line(&event))?;
                }
                out.flush()?;
                Ok(())
            })
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines = client.get_json(&path).await?;
    let mut out = std::io::stdout().lock();
    for line in lines.as_array().into_iter().flatten() {
        if args.json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", log_line(line))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct InvocationsArgs {
    /// The function's name.
    name: String,
    /// How many (the newest first).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn invocations(client: &Client, args: InvocationsArgs) -> Result<ExitCode> {
    let records =
        client.get_json(&format!("/v1/invocations?function={}&limit={}", args.name, args.limit)).await?;
    if args.json {
        out!("{records}");
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<36}  {:<24}  {:>6}  {:<14}  {:>10}  {:<5}  {:<7}  PATH",
        "ID",
        "STARTED",
        "STATUS",
        "OUTCOME",
        "DURATION",
        "COLD",
        "BACKEND"
    );
    for record in records.as_array().into_iter().flatten() {
        out!(
            "{:<36}  {:<24}  {:>6}  {:<14}  {:>10}  {:<5}  {:<7}  {} {}",
            record["id"].as_str().unwrap_or("?"),
            timestamp(record["start_us"].as_u64()),
            record["status"].to_string(),
            record["outcome"].as_str().unwrap_or("?"),
            micros(record["duration_us"].as_u64()),
            record["cold_start"].to_string(),
            record["backend"].as_str().unwrap_or("?"),
            record["method"].as_str().unwrap_or(""),
            record["path"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(client: &Client, args: JsonFlag) -> Result<ExitCode> {
    let functions = client.get_json("/v1/functions").await?;
    if args.json {
        out!("{functions}");
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<24}  {:>7}  {:<20}  {:>8}  {:>8}  {:>11}",
        "NAME",
        "VERSION",
        "KIND",
        "TIMEOUT",
        "MEMORY",
        "CONCURRENCY"
    );
    for f in functions.as_array().into_iter().flatten() {
        let config = &f["config"];
        out!(
            "{:<24}  {:>7}  {:<20}  {:>8}  {:>8}  {:>11}",
            f["name"].as_str().unwrap_or("?"),
            f["version"].to_string(),
            f["kind"].as_str().unwrap_or("?"),
            format!("{}ms", config["timeout_ms"]),
            format_bytes(config["memory_bytes"].as_u64().unwrap_or(0)),
            config["concurrency"].to_string(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn nodes(client: &Client, args: JsonFlag) -> Result<ExitCode> {
    let nodes = client.get_json("/v1/nodes").await?;
    if args.json {
        out!("{nodes}");
        return Ok(ExitCode::SUCCESS);
    }
    out!("{:<36}  {:<21}  {:<8}  {:<5}  {:>13}", "ID", "ADDRESS", "VERSION", "STATE", "LAST SEEN");
    let now_ms = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    for node in nodes.as_array().into_iter().flatten() {
        let ago = now_ms.saturating_sub(node["last_seen_ms"].as_u64().unwrap_or(0));
        out!(
            "{:<36}  {:<21}  {:<8}  {:<5}  {:>13}",
            node["id"].as_str().unwrap_or("?"),
            node["address"].as_str().unwrap_or("?"),
            node["version"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
            format!("{:.1}s ago", ago as f64 / 1000.0),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(client: &Client, args: NameArgs) -> Result<ExitCode> {
    let described = client.get_json(&format!("/v1/functions/{}", args.name)).await?;
    if args.json {
        out!("{described}");
        return Ok(ExitCode::SUCCESS);
    }
    let f = &described["function"];
    let config = &f["config"];
    out!("name:         {}", f["name"].as_str().unwrap_or("?"));
    out!("version:      {}", f["version"]);
    out!("kind:         {}", f["kind"].as_str().unwrap_or("?"));
    out!("digest:       {}", f["digest"].as_str().unwrap_or("?"));
    out!("trigger:      {}/fn/{}", client.base(), args.name);
    out!("timeout:      {}ms", config["timeout_ms"]);
    out!("memory:       {}", format_bytes(config["memory_bytes"].as_u64().unwrap_or(0)));
    out!("concurrency:  {}", config["concurrency"]);
    let env: Vec<String> = config["env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    out!("env:          {}", if env.is_empty() { "(none)".into() } else { env.join(" ") });
    let hosts: Vec<&str> = config["allowed_outbound_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str())
        .collect();
    if f["kind"] == "container-image" {
        let c = &config["container"];
        out!(
            "instances:    min {} max {}, {} call(s) each; pause after {}ms, remove after {}ms",
            c["min_instances"],
            c["max_instances"],
            c["concurrency"],
            c["pause_after_ms"],
            c["idle_timeout_ms"]
        );
        out!(
            "sandbox:      {} CPU, {} pids, network {}, root {}",
            c["cpu_millis"].as_u64().map_or("?".into(), |m| format!("{:.2}", m as f64 / 1000.0)),
            c["pids_limit"],
            if c["network"] == true { "bridge" } else { "none" },
            if c["writable_root"] == true { "writable" } else { "read-only" }
        );
        let instance_line = |instance: &Value| {
            format!(
                "{}  {:<9}  {} in flight, idle {}ms",
                instance["id"].as_str().unwrap_or("?"),
                instance["state"].as_str().unwrap_or("?"),
                instance["in_flight"],
                instance["idle_ms"]
            )
        };
        match described["nodes"].as_array() {
            // A cluster: each node keeps its own instances (min_instances is per node).
            Some(nodes) => {
                for node in nodes {
                    let id = node["id"].as_str().unwrap_or("?");
                    let address = node["address"].as_str().unwrap_or("?");
                    match node["error"].as_str() {
                        Some(why) => out!("  node {id} ({address}): not answering: {why}"),
                        None => {
                            let instances = node["instances"].as_array().map_or(&[][..], Vec::as_slice);
                            out!("  node {id} ({address}): {} instance(s)", instances.len());
                            for instance in instances {
                                out!("    {}", instance_line(instance));
                            }
                        }
                    }
                }
            }
            None => {
                for instance in described["instances"].as_array().into_iter().flatten() {
                    out!("  {}", instance_line(instance));
                }
            }
        }
    } else {
        out!("outbound:     {}", if hosts.is_empty() { "(denied)".into() } else { hosts.join(" ") });
        out!("init:         {}", describe_init(&f["init"]));
        if f["kind"] == "wasi-http-0.3-component" {
            out!("reuse:        {}", describe_reuse(&config["reuse"]));
        }
    }
    out!("versions:");
    for v in described["versions"].as_array().into_iter().flatten() {
        out!(
            "  {:>4}  {}  {}",
            v["version"].to_string(),
            timestamp(v["created_at_ms"].as_u64().map(|ms| ms * 1000)),
            short(v["digest"].as_str().unwrap_or("?").trim_start_matches("sha256:"), 12)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pre-initialized by `wizer-initialize`, init took 840 ms, snapshot 12.0 MiB` or `(none)`.
fn describe_init(init: &Value) -> String {
    let Some(export) = init["export"].as_str() else { return "(none)".into() };
    format!(
        "pre-initialized by `{export}`, init took {} ms, snapshot {}{}",
        init["init_ms"],
        approximate_size(init["size"].as_u64().unwrap_or(0)),
        if init["reused"] == true { " (reused: the initializer did not run for this version)" } else { "" }
    )
}

/// `up to 128 requests per instance, 16 at once, dropped after 10000ms idle` or `off`.
fn describe_reuse(reuse: &Value) -> String {
    if reuse.is_null() {
        return "off (a fresh instance per request)".into();
    }
    format!(
        "up to {} requests per instance, {} at once, dropped after {}ms idle",
        reuse["max_requests"], reuse["max_concurrent"], reuse["idle_timeout_ms"]
    )
}

/// `12.0 MiB`, `676 KiB`: a size read at a glance (exact sizes are in `--json`).
fn approximate_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} KiB", b as f64 / (1 << 10) as f64),
        b => format!("{b} B"),
    }
}

pub async fn remove(client: &Client, args: NameArgs) -> Result<ExitCode> {
    client.admin(Method::DELETE, &format!("/v1/functions/{}", args.name), Bytes::new(), None).await?;
    if args.json {
        out!("{}", json!({ "deleted": args.name }));
    } else {
        out!("deleted {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

fn log_line(line: &Value) -> String {
    format!(
        "{}  {:<36}  {:<8}  {}",
        timestamp(line["ts_us"].as_u64()),
        match line["invocation_id"].as_str().unwrap_or("?") {
            "" => "-",
            id => short(id, 36),
        },
        line["stream"].as_str().unwrap_or("?"),
        line["line"].as_str().unwrap_or("")
    )
}

fn record_line(record: &Value) -> String {
    let error = record["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
    format!(
        "{}  {}  ── {} {} → {} {} in {}{}{}",
        timestamp(record["start_us"].as_u64()),
        record["id"].as_str().unwrap_or("?"),
        record["method"].as_str().unwrap_or(""),
        record["path"].as_str().unwrap_or(""),
        record["status"],
        record["outcome"].as_str().unwrap_or("?"),
        micros(record["duration_us"].as_u64()),
        if record["cold_start"] == true { " (cold)" } else { "" },
        error
    )
}

pub(crate) fn timestamp(us: Option<u64>) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(us.unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

fn micros(us: Option<u64>) -> String {
    let us = us.unwrap_or(0);
    if us >= 1_000_000 { format!("{:.2}s", us as f64 / 1e6) } else { format!("{:.2}ms", us as f64 / 1e3) }
}

fn short(text: &str, len: usize) -> &str {
    text.get(..len).unwrap_or(text)
}

pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
