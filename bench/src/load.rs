//! Load and latency: `wrk` runs (bounded in time) and sequential timed calls, with the
//! percentiles the report quotes.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde::Serialize;

use crate::servers::Http;

/// Medians and 99th percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Of `samples` (any order; not empty).
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples.get(((samples.len().max(1) - 1) as f64 * q).round() as usize).copied();
        Self { p50: at(0.5).unwrap_or(f64::NAN), p99: at(0.99).unwrap_or(f64::NAN) }
    }
}

/// The median of `values`.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    Percentiles::of(values.into_iter().collect()).p50
}

/// What one `wrk` run reported.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WrkRun {
    /// Requests per second.
    pub rps: f64,
    /// Latency median, µs.
    pub p50_us: f64,
    /// Latency 99th percentile, µs.
    pub p99_us: f64,
    /// Responses received in the run.
    pub requests: u64,
}

impl WrkRun {
    /// The median of each figure over `runs` (alternated with other servers' runs).
    pub fn median_of(runs: &[WrkRun]) -> WrkRun {
        WrkRun {
            rps: median(runs.iter().map(|r| r.rps)),
            p50_us: median(runs.iter().map(|r| r.p50_us)),
            p99_us: median(runs.iter().map(|r| r.p99_us)),
            requests: median(runs.iter().map(|r| r.requests as f64)) as u64,
        }
    }
}

/// One call that must answer 200 and a 1 s `wrk` run at `connections` on each of `urls`, not
/// counted: code loaded, instances made, connections open before anything is measured.
pub async fn warm_up(urls: &[String], connections: u32) -> Result<()> {
    let client = crate::servers::http();
    for url in urls {
        call_ok(&client, url).await?;
        wrk(url, connections, 1)?;
    }
    Ok(())
}

/// `wrk` at `connections` on each of `urls` for `seconds`, the servers alternated in `rounds`
/// rounds (so noise on a shared machine falls on all of them); the median run of each, in order.
pub fn alternated(urls: &[String], connections: u32, seconds: u32, rounds: usize) -> Result<Vec<WrkRun>> {
    let mut runs = vec![Vec::new(); urls.len()];
    for _ in 0..rounds {
        for (index, url) in urls.iter().enumerate() {
            runs[index].push(wrk(url, connections, seconds)?);
        }
    }
    Ok(runs.iter().map(|r| WrkRun::median_of(r)).collect())
}

/// Fails unless `wrk` is installed.
pub fn require_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install -y wrk");
    }
    Ok(())
}

/// `wrk -t1 -cN -dS --latency URL`. Fails if any response was not 2xx or a socket failed.
pub fn wrk(url: &str, connections: u32, seconds: u32) -> Result<WrkRun> {
    wrk_with(url, connections, seconds, &[])
}

/// [`wrk`] with request headers (`-H 'name: value'`).
pub fn wrk_with(url: &str, connections: u32, seconds: u32, headers: &[(&str, &str)]) -> Result<WrkRun> {
    let mut command = Command::new("wrk");
    command.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency"]);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let output = command.arg(url).output().context("running wrk (apt-get install -y wrk)")?;
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
        .context("no Requests/sec in wrk's output")?
        .trim()
        .parse()?;
    // `  123456 requests in 10.00s, 12.34MB read`
    let requests = text
        .lines()
        .find_map(|l| l.trim_start().split_once(" requests in "))
        .context("no request count in wrk's output")?
        .0
        .trim()
        .parse()?;
    Ok(WrkRun { rps, p50_us: percentile("50%")?, p99_us: percentile("99%")?, requests })
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

/// What one call returned.
pub struct Called {
    /// Its status.
    pub status: u16,
    /// Its `Server-Timing` header.
    pub timing: String,
    /// Seconds from sending to the end of the body.
    pub seconds: f64,
}

impl Called {
    /// Milliseconds the whole call took.
    pub fn ms(&self) -> f64 {
        self.seconds * 1e3
    }

    /// The gateway's `init` for the call, in ms (0 when absent).
    pub fn init_ms(&self) -> f64 {
        self.timing
            .split(", ")
            .find_map(|p| p.strip_prefix("init;dur="))
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The `desc` of the gateway's `init` (cold, unpause, …).
    pub fn init_desc(&self) -> &str {
        self.timing.split("desc=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("")
    }
}

/// A GET of `url`, timed to the end of the body.
pub async fn call(http: &Http, url: &str) -> Result<Called> {
    let began = Instant::now();
    let response = http.request(hyper::Request::get(url).body(Full::new(Bytes::new()))?).await?;
    let status = response.status().as_u16();
    let timing =
        response.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    response.into_body().collect().await?;
    Ok(Called { status, timing, seconds: began.elapsed().as_secs_f64() })
}

/// A GET that must answer 200.
pub async fn call_ok(http: &Http, url: &str) -> Result<Called> {
    let called = call(http, url).await?;
    if called.status != 200 {
        bail!("GET {url} answered {} ({})", called.status, called.timing);
    }
    Ok(called)
}

/// GETs of `url` sent at `per_second` for `seconds` (an open loop, as traffic from many clients
/// arrives: each call leaves at its time, whether earlier ones have been answered or not, up to
/// `MAX_IN_FLIGHT` at once). Reported like a `wrk` run; fails on any answer but 200.
pub async fn paced(url: &str, per_second: f64, seconds: u32) -> Result<WrkRun> {
    const MAX_IN_FLIGHT: usize = 256;
    let http = crate::servers::http();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let total = (per_second * f64::from(seconds)) as u64;
    let period = Duration::from_secs_f64(1.0 / per_second);
    let began = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..total {
        tokio::time::sleep_until(began + period.mul_f64(index as f64)).await;
        let slot = slots.clone().acquire_owned().await?;
        let (http, url) = (http.clone(), url.to_string());
        calls.spawn(async move {
            let called = call_ok(&http, &url).await;
            drop(slot);
            called.map(|c| c.seconds)
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    while let Some(called) = calls.join_next().await {
        latencies.push(called?? * 1e6);
    }
    let elapsed = began.elapsed().as_secs_f64();
    let requests = latencies.len() as u64;
    let spread = Percentiles::of(latencies);
    Ok(WrkRun { rps: requests as f64 / elapsed, p50_us: spread.p50, p99_us: spread.p99, requests })
}
