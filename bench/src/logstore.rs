//! §6, the log store: lines ingested per second while the gateway serves calls that log, and
//! the latency of "the last 100 lines of function F" with millions of lines stored.

use std::path::Path;
use std::time::{Duration, Instant};

use amphi_contract::TelemetrySink as _;
use amphi_contract::now_unix_us;
use amphi_contract::record::{LogLine, LogStream};
use amphi_store::DataDir;
use amphi_store::logs::{LogStore, LogStoreConfig};
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::load::{Percentiles, WrkRun, paced, wrk};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions};
use crate::{Plan, temp_data};

/// Lines each call of the fill is made of.
const LINES_PER_CALL: u32 = 100;
/// Lines each call of the logging function writes one by one (plus one to stderr).
const ONE_BY_ONE: u32 = 100;
/// Lines each call of the logging function writes in one write (plus one to stderr).
const TOGETHER: u32 = 1000;
/// Lines per second offered in the run that checks the goal of no drops up to a million.
const GOAL_LINES_PER_SECOND: f64 = 1_000_000.0;
/// Functions the stored lines are spread over.
const FUNCTIONS: u64 = 100;
/// Lines handed to the writer between two waits for it (below its queue's capacity).
const FILL_CHUNK: u64 = 100_000;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let stored = [plan.stored_lines, plan.stored_lines * 10];
    let mut section = Section::new(
        "6. Log store",
        format!(
            "Ingest: `wrk -t1 -c16 -d{}s` on a wasm function that writes N lines to stdout and one \
             to stderr per call, twice: {ONE_BY_ONE} lines written one by one (a `println!` each) \
             and {TOGETHER} lines written together (one write, as a function that buffers its \
             output does); then calls of {TOGETHER} lines sent at a fixed rate that offers \
             1,000,000 lines/s (the goal), from 256 connections at most. Lines committed to the store during the run (the gateway's \
             `lines_stored` counter, read before and after) per second, lines dropped because the \
             writer fell behind, the records stored against the responses wrk counted, and the CPU \
             time of the store's writer thread per line committed. Query: the store filled with {} \
             and then {} lines (calls of {LINES_PER_CALL} lines over {FUNCTIONS} functions) \
             through the store's own writer (timed, with its thread's CPU), then a gateway started \
             on it and `GET /v1/logs?function=F&limit=100` (the last 100 lines of a function) and \
             `GET /v1/logs?invocation=ID` (one call's lines) each sent {} times in a row.",
            plan.seconds,
            stored[0],
            stored[1],
            plan.sequential_calls / 10
        ),
    );
    section.columns(&["what", "figure", "note"]);

    let one_by_one = ingest(plan, &format!("lines={ONE_BY_ONE}"), None).await?;
    let together = ingest(plan, &format!("lines={TOGETHER}&together=1"), None).await?;
    let at_goal = ingest(plan, &format!("lines={TOGETHER}&together=1"), Some(GOAL_LINES_PER_SECOND)).await?;
    for (how, run) in [
        ("written one by one", &one_by_one),
        ("written together, as fast as the gateway serves", &together),
        ("written together, calls paced to offer 1,000,000 lines/s", &at_goal),
    ] {
        section.row(vec![
            format!("lines committed per second while serving, {how}"),
            format!("{:.0}/s", run.committed_per_second),
            format!(
                "{:.0} calls/s, {:.0} lines/s offered; {} lines dropped; {} lines still queued when \
                 the load stopped; writer thread {:.2} µs CPU per line",
                run.calls.rps, run.offered_per_second, run.dropped, run.lag, run.writer_cpu_us_per_line
            ),
        ]);
        section.row(vec![
            format!("records stored for the calls answered, {how}"),
            format!("{} of {}", run.records, run.calls.requests),
            format!("{} records dropped", run.records_dropped),
        ]);
    }
    let settled_rate = at_goal.settled_per_second;
    section.goals.push(Goal::new(
        "log store commits ≥ 1,000,000 lines/s while serving, none dropped",
        format!(
            "{:.0} lines/s offered for {} s, {:.0}/s committed (all of them, {} still queued when the load \
             stopped), {} dropped; as fast as the gateway serves, lines written together: {:.0} lines/s \
             offered, {:.0}/s committed, {} dropped and counted on their calls; one by one: {:.0} of {:.0}, \
             {} dropped",
            at_goal.offered_per_second,
            plan.seconds,
            settled_rate,
            at_goal.lag,
            at_goal.dropped,
            together.offered_per_second,
            together.committed_per_second,
            together.dropped,
            one_by_one.committed_per_second,
            one_by_one.offered_per_second,
            one_by_one.dropped
        ),
        at_goal.dropped == 0 && settled_rate >= 0.97 * GOAL_LINES_PER_SECOND,
    ));
    let runs = [&one_by_one, &together, &at_goal];
    let records: u64 = runs.iter().map(|r| r.records).sum();
    let responses: u64 = runs.iter().map(|r| r.calls.requests).sum();
    section.goals.push(Goal::new(
        "every call answered has its record",
        format!("{records} records for {responses} responses (the client's count; warm-up calls excluded)"),
        runs.iter().all(|r| r.records >= r.calls.requests && r.records_dropped == 0),
    ));

    // Queries with many lines stored: first `stored[0]`, then ten times that.
    let data = temp_data("logs-query")?;
    let mut filled = 0;
    let mut queries = Vec::new();
    let mut largest = None;
    for lines in stored {
        let fill = fill(&data, filled, lines, stored[1])?;
        filled = lines;
        section.row(vec![
            format!("filling the store through its writer (to {lines} lines)"),
            format!("{:.0} lines/s", fill.lines as f64 / fill.seconds),
            format!(
                "{:.0} s; writer thread {:.2} µs CPU per line; no HTTP, no calls",
                fill.seconds,
                fill.writer_cpu_seconds * 1e6 / fill.lines as f64
            ),
        ]);
        let query = query(plan, &data, lines, stored[1]).await?;
        section.row(vec![
            format!("last 100 lines of one function, {lines} lines stored"),
            format!("p50 {:.2} ms, p99 {:.2} ms", query.last_100.p50, query.last_100.p99),
            format!("through the admin API; logs.db {:.0} MiB", query.size as f64 / (1 << 20) as f64),
        ]);
        section.row(vec![
            format!("one invocation's {LINES_PER_CALL} lines, {lines} lines stored"),
            format!("p50 {:.2} ms, p99 {:.2} ms", query.by_invocation.p50, query.by_invocation.p99),
            "through the admin API; the invocations asked for are spread over the whole store".into(),
        ]);
        queries.push(json!({ "lines": lines, "fill": fill, "query": query }));
        largest = Some(query);
    }
    let _ = std::fs::remove_dir_all(&data);
    for (wanted, limit, pick) in [
        ("last-100-lines query ≤ 5 ms p50 with 100 million lines stored", 5.0, 0),
        ("one invocation's lines ≤ 2 ms p50 with 100 million lines stored", 2.0, 1),
    ] {
        match &largest {
            Some(q) if stored[1] >= 100_000_000 => {
                let p50 = if pick == 0 { q.last_100.p50 } else { q.by_invocation.p50 };
                section.goals.push(Goal::new(wanted, format!("{p50:.2} ms"), p50 <= limit));
            }
            _ => {
                section.goals.push(Goal::unchecked(wanted, format!("quick run: {} lines stored", stored[1])))
            }
        }
    }
    section.figures = json!({
        "ingest": { "one_by_one": one_by_one, "together": together, "paced_at_goal": at_goal },
        "queries": queries,
    });
    Ok(section)
}

/// What one ingest run measured.
#[derive(Debug, Serialize)]
struct IngestFigures {
    committed_per_second: f64,
    /// Lines committed by the time the queue was empty, per second of load.
    settled_per_second: f64,
    offered_per_second: f64,
    dropped: u64,
    lag: u64,
    records: u64,
    records_dropped: u64,
    writer_cpu_us_per_line: f64,
    calls: WrkRun,
}

/// Serves `/log?{query}` under load on a fresh gateway and counts what the store committed: as
/// fast as `wrk -c16` gets answers, or, with `paced_lines`, calls sent at the rate that offers
/// that many lines per second.
async fn ingest(plan: &Plan, query: &str, paced_lines: Option<f64>) -> Result<IngestFigures> {
    let lines_per_call: f64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("lines="))
        .and_then(|n| n.parse().ok())
        .context("the query names no lines=")?;
    let data = temp_data("logs-ingest")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    admin.deploy_wasm("logger", Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT)).await?;
    let url = format!("http://{}/fn/logger/log?{query}", gateway.addr);
    wrk(&url, 4, 1)?;
    let counter = |v: &serde_json::Value, key: &str| v["logs"][key].as_u64().unwrap_or(0);
    let settled =
        |v: &serde_json::Value| counter(v, "queued_records") == 0 && counter(v, "queued_line_bytes") == 0;
    // The warm-up's lines are written before the measured run starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !settled(&admin.stats().await?) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = admin.stats().await?;
    let cpu_before = thread_cpu_seconds(gateway.pid(), WRITER_THREAD)?;
    let began = Instant::now();
    let calls = match paced_lines {
        None => wrk(&url, 16, plan.seconds)?,
        Some(lines) => paced(&url, lines / (lines_per_call + 1.0), plan.seconds).await?,
    };
    let after = admin.stats().await?;
    let seconds = began.elapsed().as_secs_f64();
    // What was still queued when wrk stopped is written within moments: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut settled_stats = admin.stats().await?;
    while !settled(&settled_stats) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        settled_stats = admin.stats().await?;
    }
    let cpu = thread_cpu_seconds(gateway.pid(), WRITER_THREAD)? - cpu_before;
    let delta = |key: &str| counter(&after, key) - counter(&before, key);
    let stored = delta("lines_stored");
    let stored_settled = counter(&settled_stats, "lines_stored") - counter(&before, "lines_stored");
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
    Ok(IngestFigures {
        committed_per_second: stored as f64 / seconds,
        settled_per_second: stored_settled as f64 / seconds,
        offered_per_second: calls.rps * (lines_per_call + 1.0),
        dropped: delta("lines_dropped"),
        lag: stored_settled - stored,
        records: counter(&settled_stats, "records_stored") - counter(&before, "records_stored"),
        records_dropped: counter(&settled_stats, "records_dropped"),
        writer_cpu_us_per_line: cpu * 1e6 / stored_settled.max(1) as f64,
        calls,
    })
}

/// Latencies of the two queries on a filled store.
#[derive(Debug, Serialize)]
struct QueryFigures {
    last_100: Percentiles,
    by_invocation: Percentiles,
    size: u64,
}

/// Starts a gateway on `data` (holding `lines` lines, keeping up to `keep`) and times the queries.
async fn query(plan: &Plan, data: &Path, lines: u64, keep: u64) -> Result<QueryFigures> {
    let options = GatewayOptions { log_max_lines: keep, ..GatewayOptions::default() };
    let gateway = ChildServer::gateway(data, &options)?;
    let admin = Admin::new(gateway.addr);
    let function = format!("f{:02}", FUNCTIONS / 2);
    let calls = lines / u64::from(LINES_PER_CALL);
    let rounds = plan.sequential_calls / 10;
    let (mut last_100, mut by_invocation) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let began = Instant::now();
        let found = admin
            .request("GET", &format!("/logs?function={function}&limit=100"), Bytes::new(), "application/json")
            .await?;
        last_100.push(began.elapsed().as_secs_f64() * 1e3);
        let count = found.as_array().map_or(0, Vec::len);
        if count != 100 {
            bail!("the last-100 query returned {count} lines, not 100: {found}");
        }
        // Calls spread evenly over the store, oldest to newest.
        let call = (round as u64 * calls) / rounds as u64;
        let began = Instant::now();
        let found = admin
            .request("GET", &format!("/logs?invocation=fill-{call}"), Bytes::new(), "application/json")
            .await?;
        by_invocation.push(began.elapsed().as_secs_f64() * 1e3);
        let count = found.as_array().map_or(0, Vec::len);
        if count != LINES_PER_CALL as usize {
            bail!("invocation fill-{call} has {count} lines, not {LINES_PER_CALL}");
        }
    }
    drop(gateway);
    let size = std::fs::metadata(data.join("logs.db")).map(|m| m.len()).unwrap_or(0);
    Ok(QueryFigures {
        last_100: Percentiles::of(last_100),
        by_invocation: Percentiles::of(by_invocation),
        size,
    })
}

/// What one fill measured.
#[derive(Debug, Serialize)]
struct FillFigures {
    lines: u64,
    seconds: f64,
    writer_cpu_seconds: f64,
}

/// Stores lines `from..to` in `data` through the store's writer (keeping up to `keep`), waiting
/// for it every [`FILL_CHUNK`] lines so none is dropped.
fn fill(data: &Path, from: u64, to: u64, keep: u64) -> Result<FillFigures> {
    let dir = DataDir::open(data).context("opening the data directory")?;
    let store = LogStore::open(&dir, LogStoreConfig { max_lines: keep, ..LogStoreConfig::default() })?;
    let cpu_before = thread_cpu_seconds(std::process::id(), WRITER_THREAD)?;
    let began = Instant::now();
    let start_us = now_unix_us();
    for index in from..to {
        // Calls of LINES_PER_CALL lines, each of one function, the functions taking turns.
        let call = index / u64::from(LINES_PER_CALL);
        let line = LogLine {
            seq: 0,
            ts_us: start_us + index,
            function: format!("f{:02}", call % FUNCTIONS),
            invocation_id: format!("fill-{call}"),
            stream: LogStream::Stdout,
            line: format!("line {index} of the fill"),
        };
        let _ = store.log_line(line, 0);
        if (index + 1) % FILL_CHUNK == 0 {
            store.flush()?;
        }
    }
    store.flush()?;
    let seconds = began.elapsed().as_secs_f64();
    let writer_cpu_seconds = thread_cpu_seconds(std::process::id(), WRITER_THREAD)? - cpu_before;
    let dropped = store.stats().lines_dropped;
    if dropped > 0 {
        bail!("{dropped} lines were dropped while filling");
    }
    Ok(FillFigures { lines: to - from, seconds, writer_cpu_seconds })
}

/// The log store's writer thread, as `/proc` names it (15 bytes at most).
const WRITER_THREAD: &str = "amphi-log-write";

/// CPU time used so far by the thread named `name` of process `pid` (its `schedstat`: nanoseconds
/// on a CPU). A thread names itself once it runs, so a thread just spawned may still carry the
/// process' name: it is looked for again for up to a second.
fn thread_cpu_seconds(pid: u32, name: &str) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let schedstat = std::fs::read_to_string(task.join("schedstat"))?;
            let nanos: f64 = schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .context("a malformed schedstat")?;
            return Ok(nanos / 1e9);
        }
        if Instant::now() > deadline {
            bail!("process {pid} has no thread named {name}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
