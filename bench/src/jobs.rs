//! §7, async jobs: how fast `/async/fn` accepts (each 202 after an fsync'd group commit), against
//! the same function called synchronously and against the disk's own fsync rate; how fast a
//! backlog of jobs drains, against the function's synchronous throughput; the queue's disk use.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

use crate::load::{WrkRun, wrk, wrk_with};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions};
use crate::{Plan, temp_data};

/// Connections of the enqueue run (the figure).
const CONNECTIONS: u32 = 16;
/// Accepted jobs per second wanted, and the p99 of a 202.
const GOAL_ACCEPTED: f64 = 20_000.0;
const GOAL_P99_MS: f64 = 5.0;
/// Share of the synchronous throughput a backlog should drain at.
const GOAL_DRAIN_SHARE: f64 = 0.5;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let backlog: u64 = if plan.rounds > 1 { 100_000 } else { 10_000 };
    let mut section = Section::new(
        "7. Async jobs",
        format!(
            "The wasm hello (rust-http `/`) on a fresh gateway. Sync: `wrk -t1 -c{CONNECTIONS} -d{s}s` on \
             `/fn/hello/`. Enqueue: the same on `/async/fn/hello/` with `amphi-delay: 1h` (so the \
             jobs stay queued and the figure is the bus alone: each 202 follows the fsync of the \
             group commit holding its job). The disk: one thread writing 4 KiB and calling \
             `fdatasync` in a loop for 2 s in the data directory. Drain: {backlog} jobs enqueued \
             by {CONNECTIONS} client tasks with `amphi-not-before` set past the end of the enqueue, \
             then timed from that instant until the last one succeeded (`/v1/stats` `jobs`), \
             against the sync run's requests/s. Disk use: `jobs.db` and its WAL after the drain.",
            s = plan.seconds
        ),
    );
    section.columns(&["what", "figure", "note"]);

    let data = temp_data("jobs")?;
    let fsyncs = fsyncs_per_second(&data, Duration::from_secs(2))?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    admin.deploy_wasm("hello", Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT)).await?;
    let sync_url = format!("http://{}/fn/hello/", gateway.addr);
    let async_url = format!("http://{}/async/fn/hello/", gateway.addr);
    wrk(&sync_url, 4, 1)?;
    wrk_with(&async_url, 4, 1, &[("amphi-delay", "1h")])?;
    let (mut sync_runs, mut enqueue_runs) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        sync_runs.push(wrk(&sync_url, CONNECTIONS, plan.seconds)?);
        enqueue_runs.push(wrk_with(&async_url, CONNECTIONS, plan.seconds, &[("amphi-delay", "1h")])?);
    }
    let sync = WrkRun::median_of(&sync_runs);
    let enqueue = WrkRun::median_of(&enqueue_runs);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);

    section.row(vec![
        "sync calls of the hello, /fn".into(),
        format!("{:.0}/s", sync.rps),
        format!("p50 {:.2} ms, p99 {:.2} ms", sync.p50_us / 1e3, sync.p99_us / 1e3),
    ]);
    section.row(vec![
        "jobs accepted (202), /async/fn".into(),
        format!("{:.0}/s", enqueue.rps),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms; {:.2}× the sync calls; {:.1} jobs per fsync the disk can do",
            enqueue.p50_us / 1e3,
            enqueue.p99_us / 1e3,
            enqueue.rps / sync.rps,
            enqueue.rps / fsyncs
        ),
    ]);
    section.row(vec![
        "the disk's fsyncs per second (one thread, 4 KiB + fdatasync)".into(),
        format!("{fsyncs:.0}/s"),
        "each 202 waits for one of these; group commit shares it among the jobs of a batch".into(),
    ]);
    section.goals.push(Goal::new(
        format!("≥ {GOAL_ACCEPTED:.0} accepted jobs/s at {CONNECTIONS} connections, p99 ≤ {GOAL_P99_MS} ms"),
        format!("{:.0}/s, p99 {:.2} ms", enqueue.rps, enqueue.p99_us / 1e3),
        enqueue.rps >= GOAL_ACCEPTED && enqueue.p99_us / 1e3 <= GOAL_P99_MS,
    ));

    let drain = drain(backlog).await?;
    let share = drain.jobs_per_second / sync.rps;
    section.row(vec![
        format!("backlog of {backlog} jobs drained"),
        format!("{:.0} jobs/s", drain.jobs_per_second),
        format!(
            "{share:.2}× the sync throughput; enqueued at {:.0}/s ({:.1} s){}",
            drain.enqueued_per_second,
            drain.enqueue_seconds,
            if drain.overlapped {
                "; the enqueue ran past the start, so the drain overlapped it"
            } else {
                ""
            }
        ),
    ]);
    section.row(vec![
        format!("queue on disk per 100,000 finished jobs"),
        format!("{:.1} MiB", drain.bytes as f64 * 100_000.0 / backlog as f64 / (1 << 20) as f64),
        format!(
            "jobs.db + WAL after {backlog} jobs succeeded, results kept (retention 7 days): {:.0} bytes per job",
            drain.bytes as f64 / backlog as f64
        ),
    ]);
    section.goals.push(Goal::new(
        "a backlog drains at ≥ 50% of the synchronous throughput",
        format!("{:.0} jobs/s = {share:.2}× {:.0} calls/s", drain.jobs_per_second, sync.rps),
        share >= GOAL_DRAIN_SHARE,
    ));
    section.figures =
        json!({ "sync": sync, "enqueue": enqueue, "fsyncs_per_second": fsyncs, "drain": drain });
    Ok(section)
}

/// What the drain run measured.
#[derive(Debug, Serialize)]
struct Drain {
    enqueued_per_second: f64,
    enqueue_seconds: f64,
    overlapped: bool,
    jobs_per_second: f64,
    bytes: u64,
}

/// Enqueues `backlog` jobs due at one instant past the enqueue, then times their drain.
async fn drain(backlog: u64) -> Result<Drain> {
    let data = temp_data("jobs-drain")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    admin.deploy_wasm("hello", Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT)).await?;
    let url = format!("http://{}/async/fn/hello/", gateway.addr);
    // Due far enough ahead for the enqueue at a pessimistic 5,000/s, plus a second.
    let lead = Duration::from_secs_f64(backlog as f64 / 5_000.0 + 1.0);
    let due = std::time::SystemTime::now() + lead;
    let not_before = chrono::DateTime::<chrono::Utc>::from(due).to_rfc3339();
    let began = Instant::now();
    enqueue_backlog(&url, backlog, &not_before).await?;
    let enqueue_seconds = began.elapsed().as_secs_f64();
    let overlapped = began.elapsed() > lead;
    let start = began + lead.max(began.elapsed());
    tokio::time::sleep_until(start.into()).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = admin.stats().await?;
        if stats["jobs"]["succeeded"].as_u64().unwrap_or(0) >= backlog {
            break;
        }
        if Instant::now() > deadline {
            bail!("the backlog did not drain within 10 minutes: {}", stats["jobs"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = Instant::now().duration_since(began + lead).as_secs_f64();
    let bytes = ["jobs.db", "jobs.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(data.join(f)).map_or(0, |m| m.len()))
        .sum();
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
    Ok(Drain {
        enqueued_per_second: backlog as f64 / enqueue_seconds,
        enqueue_seconds,
        overlapped,
        jobs_per_second: backlog as f64 / drained,
        bytes,
    })
}

/// POSTs `backlog` empty jobs to `url` (`…/async/fn/NAME/`) from [`CONNECTIONS`] clients, each
/// due at `not_before` (RFC 3339); fails unless every one is answered 202.
pub async fn enqueue_backlog(url: &str, backlog: u64, not_before: &str) -> Result<()> {
    let http = crate::servers::http();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..u64::from(CONNECTIONS) {
        let (http, url, not_before) = (http.clone(), url.to_string(), not_before.to_string());
        let count = backlog / u64::from(CONNECTIONS) + u64::from(client < backlog % u64::from(CONNECTIONS));
        clients.spawn(async move {
            for _ in 0..count {
                let request = hyper::Request::post(&url)
                    .header("amphi-not-before", &not_before)
                    .body(Full::new(Bytes::new()))?;
                let status = http.request(request).await?.status();
                if status != 202 {
                    bail!("enqueue answered {status}");
                }
            }
            Ok(())
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    Ok(())
}

/// fdatasyncs per second of 4 KiB writes in `dir`, for `length`.
fn fsyncs_per_second(dir: &Path, length: Duration) -> Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file =
        OpenOptions::new().create(true).write(true).truncate(true).open(&path).context("fsync probe")?;
    let block = [0u8; 4096];
    let began = Instant::now();
    let mut count = 0u64;
    while began.elapsed() < length {
        file.write_all(&block)?;
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / began.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
