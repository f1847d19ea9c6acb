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
use serde_json::json;

use crate::load::{Percentiles, wrk};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions};
use crate::{Plan, temp_data};

/// Lines each call of the logging function writes (plus one to stderr).
const LINES_PER_CALL: u32 = 100;
/// Functions the stored lines are spread over.
const FUNCTIONS: u64 = 100;
/// Lines handed to the writer between two waits for it (below its queue's capacity).
const FILL_CHUNK: u64 = 100_000;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let mut section = Section::new(
        "6. Log store",
        format!(
            "Ingest: `wrk -t1 -c16 -d{}s` on a wasm function that writes {LINES_PER_CALL} lines to \
             stdout and one to stderr per call; lines committed to the store during the run (the \
             gateway's `lines_stored` counter, read before and after) per second, lines dropped \
             because the writer fell behind, and the records stored against the responses wrk \
             counted. Query: the store filled with {} lines (calls of {LINES_PER_CALL} lines over \
             {FUNCTIONS} functions) through the store's own writer (timed too), then a gateway \
             started on it and `GET /v1/logs?function=F&limit=100` sent {} times in a row.",
            plan.seconds,
            plan.stored_lines,
            plan.sequential_calls / 10
        ),
    );
    section.columns(&["what", "figure", "note"]);

    // Ingest while serving.
    let data = temp_data("logs-ingest")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    admin.deploy_wasm("logger", Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT)).await?;
    let url = format!("http://{}/fn/logger/log?lines={LINES_PER_CALL}", gateway.addr);
    wrk(&url, 4, 1)?;
    let counter = |v: &serde_json::Value, key: &str| v["logs"][key].as_u64().unwrap_or(0);
    let settled =
        |v: &serde_json::Value| counter(v, "queued_records") == 0 && counter(v, "queued_line_bytes") == 0;
    let before = admin.stats().await?;
    let began = Instant::now();
    let run = wrk(&url, 16, plan.seconds)?;
    let after = admin.stats().await?;
    let seconds = began.elapsed().as_secs_f64();
    // What was still queued when wrk stopped is written within moments: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut settled_stats = admin.stats().await?;
    while !settled(&settled_stats) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        settled_stats = admin.stats().await?;
    }
    let delta = |key: &str| counter(&after, key) - counter(&before, key);
    let (stored, dropped) = (delta("lines_stored"), delta("lines_dropped"));
    let records = counter(&settled_stats, "records_stored") - counter(&before, "records_stored");
    let records_dropped = counter(&settled_stats, "records_dropped");
    let lag = counter(&settled_stats, "lines_stored") - counter(&after, "lines_stored");
    let ingest = stored as f64 / seconds;
    let offered = run.rps * f64::from(LINES_PER_CALL + 1);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
    section.row(vec![
        "lines committed per second while serving".into(),
        format!("{ingest:.0}/s"),
        format!(
            "{:.0} calls/s, {offered:.0} lines/s offered; {dropped} lines dropped; {lag} lines were still \
             queued when the load stopped",
            run.rps
        ),
    ]);
    section.row(vec![
        "records stored for the calls answered".into(),
        format!("{records} of {}", run.requests),
        format!("{records_dropped} records dropped"),
    ]);
    section.goals.push(Goal::new(
        "log store commits ≥ 1,000,000 lines/s while serving, none dropped",
        format!("{ingest:.0} lines/s committed of {offered:.0} offered, {dropped} dropped"),
        ingest >= 1_000_000.0 && dropped == 0,
    ));
    section.goals.push(Goal::new(
        "every call answered has its record",
        format!("{records} records for {} responses (wrk's count; its warm-up calls excluded)", run.requests),
        records >= run.requests && records_dropped == 0,
    ));

    // The last 100 lines of one function, with many lines stored.
    let data = temp_data("logs-query")?;
    let fill = fill(&data, plan.stored_lines)?;
    section.row(vec![
        format!("filling the store through its writer ({} lines)", plan.stored_lines),
        format!("{:.0} lines/s", plan.stored_lines as f64 / fill.as_secs_f64()),
        format!("{:.0} s; no HTTP, no calls", fill.as_secs_f64()),
    ]);
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let function = format!("f{:02}", FUNCTIONS / 2);
    let mut latencies = Vec::new();
    for _ in 0..plan.sequential_calls / 10 {
        let began = Instant::now();
        let lines = admin
            .request("GET", &format!("/logs?function={function}&limit=100"), Bytes::new(), "application/json")
            .await?;
        latencies.push(began.elapsed().as_secs_f64() * 1e3);
        let count = lines.as_array().map_or(0, Vec::len);
        if count != 100 {
            bail!("the query returned {count} lines, not 100: {lines}");
        }
    }
    drop(gateway);
    let size = std::fs::metadata(data.join("logs.db")).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&data);
    let query = Percentiles::of(latencies);
    section.row(vec![
        format!("last 100 lines of one function, {} lines stored", plan.stored_lines),
        format!("p50 {:.2} ms, p99 {:.2} ms", query.p50, query.p99),
        format!("through the admin API; logs.db {:.0} MiB", size as f64 / (1 << 20) as f64),
    ]);
    let wanted = "last-100-lines query ≤ 5 ms p50 with 10 million lines stored";
    if plan.stored_lines >= 10_000_000 {
        section.goals.push(Goal::new(wanted, format!("{:.2} ms", query.p50), query.p50 <= 5.0));
    } else {
        section.goals.push(Goal::unchecked(wanted, format!("quick run: {} lines stored", plan.stored_lines)));
    }
    section.figures = json!({
        "ingest": {
            "lines_per_second": ingest, "lines_offered_per_second": offered, "lines_dropped": dropped,
            "records": records, "records_dropped": records_dropped, "calls": run,
        },
        "fill": { "lines": plan.stored_lines, "seconds": fill.as_secs_f64() },
        "query_ms": query, "logs_db_bytes": size,
    });
    Ok(section)
}

/// Stores `lines` log lines in `data` through the store's writer, waiting for it every
/// [`FILL_CHUNK`] lines so none is dropped. Returns how long it took.
fn fill(data: &Path, lines: u64) -> Result<Duration> {
    let dir = DataDir::open(data).context("opening the data directory")?;
    let store = LogStore::open(&dir, LogStoreConfig::default())?;
    let began = Instant::now();
    let start_us = now_unix_us();
    for index in 0..lines {
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
    let dropped = store.stats().lines_dropped;
    if dropped > 0 {
        bail!("{dropped} lines were dropped while filling");
    }
    Ok(began.elapsed())
}
