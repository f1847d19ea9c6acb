//! Issue 13's log store, against the real server: no record is lost under load or a crash, and a
//! call that floods its log loses only its own lines, and says so.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::TestServer;

/// Lines each call of the logging load writes to stdout (plus one to stderr).
const LINES: u32 = 100;

/// Every record of `function` from `since_us` on, paged through `GET /v1/invocations` with
/// `after` (the `seq` of the last record of the previous page) as a client would.
async fn all_records(server: &TestServer, function: &str, since_us: u64, page: usize) -> Vec<Value> {
    let mut records: Vec<Value> = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let cursor = after.map(|seq| format!("&after={seq}")).unwrap_or_default();
        let path = format!("/invocations?function={function}&since={since_us}&limit={page}{cursor}");
        let answer = server.admin(Method::GET, &path).send().await.expect("records");
        assert_eq!(answer.status(), 200, "{path}");
        let batch: Vec<Value> = answer.json().await.expect("json");
        let full = batch.len() == page;
        after = batch.last().and_then(|r| r["seq"].as_u64()).or(after);
        records.extend(batch);
        if !full {
            return records;
        }
    }
}

/// Waits until the log store has written everything queued.
async fn settled(server: &TestServer) -> Value {
    server
        .wait_for("/stats", |stats| {
            stats["logs"]["queued_records"] == 0 && stats["logs"]["queued_line_bytes"] == 0
        })
        .await
}

/// Every log line of `invocation`, in order.
async fn lines_of(server: &TestServer, invocation: &str) -> Vec<Value> {
    let answer = server.admin(Method::GET, &format!("/invocations/{invocation}")).send().await.expect("get");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    body["logs"].as_array().cloned().unwrap_or_default()
}

/// Ingest under load: 16 clients call a function that writes 101 lines per call for 5 s; every
/// call answered has its record (read back page by page), and every record's lines are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_call_has_its_record_and_its_lines() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("logger", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let since = amphi_contract::now_unix_us();
    let url = server.fn_url("logger", &format!("/log?lines={LINES}"));
    let stop = Instant::now() + Duration::from_secs(5);
    let clients = (0..16).map(|_| {
        let (http, url) = (server.http.clone(), url.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            // Bounded in time and in count.
            for _ in 0..2000 {
                if Instant::now() > stop {
                    break;
                }
                let response = http.get(&url).send().await.expect("call");
                assert_eq!(response.status(), 200);
                let id = response.headers()["amphi-invocation-id"].to_str().expect("id").to_string();
                response.bytes().await.expect("body");
                answered.push(id);
            }
            answered
        })
    });
    let mut answered = BTreeSet::new();
    for client in clients {
        answered.extend(client.await.expect("client"));
    }
    let stats = settled(&server).await;
    assert_eq!(stats["logs"]["records_dropped"], 0, "{stats}");

    let records = all_records(&server, "logger", since, 500).await;
    let stored: BTreeSet<String> =
        records.iter().map(|r| r["id"].as_str().expect("id").to_string()).collect();
    assert_eq!(records.len(), stored.len(), "a record came twice in the pages");
    let missing: Vec<_> = answered.difference(&stored).collect();
    assert!(missing.is_empty(), "{} of {} answered calls have no record", missing.len(), answered.len());
    assert_eq!(stored.len(), answered.len(), "records of calls nobody answered");
    println!("{} calls answered, {} records stored", answered.len(), stored.len());

    // No line is lost silently: each record counts its lines, and a sample of calls has them all.
    for record in &records {
        let kept = record["log_lines"].as_u64().expect("log_lines");
        let dropped = record["log_lines_dropped"].as_u64().expect("log_lines_dropped");
        // The lines kept (with the store's note when some were dropped) and the dropped ones
        // make the call's 101.
        assert_eq!(kept + dropped, u64::from(LINES) + 1 + u64::from(dropped > 0), "{record}");
    }
    for record in records.iter().step_by(records.len() / 20 + 1) {
        let id = record["id"].as_str().expect("id");
        let lines = lines_of(&server, id).await;
        assert_eq!(Some(lines.len() as u64), record["log_lines"].as_u64(), "lines of {id}");
    }
}

/// A flood while the disk is stalled: the log store's writer is held up (another connection holds
/// the database's write lock), two calls write more than their 64 KiB each, then twenty quiet calls write four
/// lines each. The floods lose lines, count them on their own records and end their logs with a
/// line saying how many; the quiet calls lose nothing; every call has its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_loses_only_its_own_lines_and_says_so() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--log-queue-size", "256KiB"]);
    server.deploy("flood", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    server.deploy("quiet", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    settled(&server).await;

    // Held well under the writer's 5 s busy timeout, so it waits rather than fails.
    let stall = rusqlite::Connection::open(temp.path().join("logs.db")).expect("open logs.db");
    stall.execute_batch("BEGIN EXCLUSIVE").expect("take the write lock");
    let stalled = Instant::now();
    let floods = (0..2).map(|_| {
        let (http, url) = (server.http.clone(), server.fn_url("flood", "/log?lines=5000"));
        tokio::spawn(async move {
            let response = http.get(url).send().await.expect("flood call");
            assert_eq!(response.status(), 200);
            response.headers()["amphi-invocation-id"].to_str().expect("id").to_string()
        })
    });
    let mut flood_ids = Vec::new();
    for flood in floods {
        flood_ids.push(flood.await.expect("flood"));
    }
    let mut quiet_ids = Vec::new();
    for _ in 0..20 {
        let response = server.get("quiet", "/log?lines=3").await;
        assert_eq!(response.status(), 200);
        quiet_ids.push(response.headers()["amphi-invocation-id"].to_str().expect("id").to_string());
    }
    let held = stalled.elapsed();
    assert!(held < Duration::from_secs(4), "the calls took {held:?}: the writer may have given up waiting");
    println!("the writer was held up for {held:?}");
    let queued = server.admin(Method::GET, "/stats").send().await.expect("stats").json::<Value>().await;
    stall.execute_batch("ROLLBACK").expect("release the write lock");
    drop(stall);
    let stats = settled(&server).await;
    println!("while stalled: {:?}; after: {}", queued.map(|v| v["logs"].clone()), stats["logs"]);
    assert_eq!(stats["logs"]["records_dropped"], 0);

    for id in &flood_ids {
        let record = server.record(id).await["invocation"].clone();
        let dropped = record["log_lines_dropped"].as_u64().expect("log_lines_dropped");
        assert!(dropped > 0, "a flood during a stall dropped nothing: {record}");
        assert_eq!(record["log_truncated"], true, "the 64 KiB cap applies as before");
        let lines = lines_of(&server, id).await;
        assert_eq!(
            Some(lines.len() as u64),
            record["log_lines"].as_u64(),
            "the record counts what is stored"
        );
        let last = lines.last().expect("lines");
        assert_eq!(last["stream"], "platform");
        assert_eq!(
            last["line"],
            format!("{dropped} log lines of this call were dropped: the log store could not keep up")
        );
    }
    let mut quiet: BTreeMap<String, u64> = BTreeMap::new();
    for id in &quiet_ids {
        let record = server.record(id).await["invocation"].clone();
        assert_eq!((record["log_lines"].as_u64(), record["log_lines_dropped"].as_u64()), (Some(4), Some(0)));
        quiet.insert(id.clone(), lines_of(&server, id).await.len() as u64);
    }
    assert!(quiet.values().all(|&n| n == 4), "quiet calls lost lines: {quiet:?}");
}

/// A crash: the server is killed with SIGKILL while 8 clients call the logging function. After a
/// restart the log store passes SQLite's integrity check, and every call answered more than a
/// second before the kill has its record (the test prints how many later ones are missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_log_load_loses_no_record_answered_a_second_before() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    server.deploy("logger", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let url = server.fn_url("logger", &format!("/log?lines={LINES}"));
    let started = Instant::now();
    let clients = (0..8).map(|_| {
        let (http, url) = (server.http.clone(), url.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            // Bounded: the kill ends it after a few seconds.
            for _ in 0..5000 {
                let Ok(response) = http.get(&url).send().await else { break };
                let Some(id) = response.headers().get("amphi-invocation-id").cloned() else { break };
                if response.bytes().await.is_err() {
                    break;
                }
                answered.push((Instant::now(), id.to_str().expect("id").to_string()));
            }
            answered
        })
    });
    let clients: Vec<_> = clients.collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed = Instant::now();
    server.kill();
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.expect("client"));
    }
    assert!(answered.len() > 100, "only {} calls answered in {:?}", answered.len(), killed - started);

    let verdict: String = rusqlite::Connection::open(temp.path().join("logs.db"))
        .expect("open logs.db")
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(verdict, "ok");
    let server = TestServer::start(temp.path());
    let stored: BTreeSet<String> = all_records(&server, "logger", 0, 1000)
        .await
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    let missing: Vec<Duration> =
        answered.iter().filter(|(_, id)| !stored.contains(id)).map(|(at, _)| killed - *at).collect();
    let window = missing.iter().max().copied().unwrap_or_default();
    println!(
        "{} calls answered before the kill, {} records missing; the oldest missing was answered {:?} before it",
        answered.len(),
        missing.len(),
        window
    );
    assert!(
        missing.iter().all(|&before| before <= Duration::from_secs(1)),
        "records of calls answered more than 1 s before the kill are missing: {missing:?}"
    );
}

/// Takes the complete chunks of an HTTP/1.1 chunked body off the front of `raw` into `body`.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) {
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else { return };
        let size_text = String::from_utf8_lossy(&raw[..end]).to_string();
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a chunk size");
        if raw.len() < end + 2 + size + 2 {
            return;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw.drain(..end + 2 + size + 2);
    }
}

/// `--follow` never misses: a follower with a tiny receive window stops reading while calls log
/// (far more than the live feed buffers), so it falls behind; when it reads again it is sent
/// every line and record it missed, each once, and `/v1/stats` counts the catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_is_sent_everything_it_missed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("logger", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let address = server.url.trim_start_matches("http://").parse().expect("address");
    let mut follower = socket.connect(address).await.expect("connect");
    let request = format!(
        "GET /v1/logs?function=logger&follow=true&limit=1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        support::TOKEN
    );
    follower.write_all(request.as_bytes()).await.expect("send");
    // The response head comes once the follower is subscribed.
    let mut raw = Vec::new();
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buffer = [0u8; 4096];
        let n = follower.read(&mut buffer).await.expect("read the head");
        assert!(n > 0, "the follow stream closed");
        raw.extend_from_slice(&buffer[..n]);
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    raw.drain(..head_end);

    // 800 calls of 101 lines: far more than the live feed (16,384 events) and the socket
    // buffers between it and a reader that does not read (a few MB) hold.
    let url = server.fn_url("logger", &format!("/log?lines={LINES}"));
    let clients = (0..16).map(|_| {
        let (http, url) = (server.http.clone(), url.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                let response = http.get(&url).send().await.expect("call");
                assert_eq!(response.status(), 200);
                ids.push(response.headers()["amphi-invocation-id"].to_str().expect("id").to_string());
                response.bytes().await.expect("body");
            }
            ids
        })
    });
    let mut answered = BTreeSet::new();
    for client in clients.collect::<Vec<_>>() {
        answered.extend(client.await.expect("client"));
    }
    settled(&server).await;

    // Read until every call's record has come (bounded in time).
    let (mut body, mut events) = (Vec::new(), Vec::new());
    let mut records: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let all_lines = answered.len() * (LINES as usize + 1);
    let mut line_events = 0;
    while records.len() < answered.len() || line_events < all_lines {
        let mut buffer = vec![0u8; 64 << 10];
        let read = tokio::time::timeout_at(deadline.into(), follower.read(&mut buffer)).await;
        let n = read.expect("the follower got every line and record in time").expect("read");
        assert!(n > 0, "the follow stream closed");
        raw.extend_from_slice(&buffer[..n]);
        dechunk(&mut raw, &mut body);
        while let Some(end) = body.iter().position(|&b| b == b'\n') {
            let event: Value = serde_json::from_slice(&body[..end]).expect("an NDJSON event");
            body.drain(..=end);
            if event["type"] == "invocation" {
                records.insert(event["id"].as_str().expect("id").to_string());
            } else {
                line_events += 1;
            }
            events.push(event);
        }
    }
    assert_eq!(records, answered, "the records followed are the calls answered");
    let mut lines_per_call: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events.iter().filter(|e| e["type"] == "log") {
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seen.insert(seq), "line {seq} was sent twice");
        *lines_per_call.entry(event["invocation_id"].as_str().expect("id").to_string()).or_default() += 1;
    }
    let short: Vec<_> = lines_per_call.iter().filter(|(_, n)| **n != u64::from(LINES) + 1).collect();
    assert!(short.is_empty(), "calls whose lines did not all come: {short:?}");
    assert_eq!(lines_per_call.len(), answered.len());
    let stats = server.admin(Method::GET, "/stats").send().await.expect("stats");
    let catch_ups = stats.json::<Value>().await.expect("json")["log_follower_catch_ups"].as_u64();
    println!("{} calls followed; {} events; {catch_ups:?} catch-ups", answered.len(), events.len());
    assert!(catch_ups > Some(0), "the follower never fell behind: the test did not test the catch-up");
}
