//! Async invocations end to end: the real server, real guests (wasm and a container), real HTTP,
//! the real CLI, a real callback receiver on loopback, and a `kill -9` in the middle of 2,000
//! jobs. The queue's contract runs on both queues (embedded and PostgreSQL); the cluster's own
//! cases (executors on several nodes, a node lost with jobs running) are in `cluster.rs`.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use amphi_guest_artifacts::RUST_HTTP_COMPONENT;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Store, TestServer, header, on_both_stores, stderr, stdout};

// The queue's contract, on the embedded queue and on the cluster's PostgreSQL alike.
on_both_stores!(
    a_job_is_stored_run_through_the_sync_path_and_its_result_kept,
    idempotency_delay_cancel_and_bad_input,
    failed_attempts_back_off_then_the_job_is_dead_and_can_be_queued_again,
    a_callback_reaches_an_allowed_host_and_is_recorded,
);

/// POSTs `body` to `/async/fn/{name}{path}` with `headers`.
async fn enqueue(
    server: &TestServer,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request =
        server.http.post(format!("{}/async/fn/{name}{path}", server.url)).body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("enqueue")
}

/// Enqueues and returns the job id from a 202.
async fn accepted(server: &TestServer, name: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let response = enqueue(server, name, path, headers, "").await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    header(&response, "amphi-invocation-id").to_string()
}

/// The JSON answer of an admin request.
async fn admin_json(server: &TestServer, method: Method, path: &str) -> Value {
    let response = server.admin(method, path).send().await.expect("admin request");
    response.json().await.expect("json")
}

/// Waits (up to `within`) until job `id` is in one of `states`.
async fn wait_state(server: &TestServer, id: &str, states: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job: Value = admin_json(server, Method::GET, &format!("/jobs/{id}")).await;
        if states.contains(&job["state"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {states:?}: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attempt_times(job: &Value) -> Vec<(u64, u64)> {
    job["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["started_us"].as_u64().expect("started"), a["ended_us"].as_u64().expect("ended")))
        .collect()
}

async fn a_job_is_stored_run_through_the_sync_path_and_its_result_kept(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &[]);
    server.deploy("echo", RUST_HTTP_COMPONENT, json!({})).await;

    let response = enqueue(
        &server,
        "echo",
        "/echo?x=1",
        &[("content-type", "text/plain"), ("x-mine", "kept")],
        "order 42",
    )
    .await;
    assert_eq!(response.status(), 202);
    let id = header(&response, "amphi-invocation-id").to_string();
    assert_eq!(header(&response, "location"), format!("/v1/jobs/{id}"));
    let job = wait_state(&server, &id, &["succeeded"], Duration::from_secs(10)).await;
    assert_eq!((job["status"].as_u64(), job["attempts"].as_array().map(Vec::len)), (Some(200), Some(1)));
    assert_eq!((job["method"].as_str(), job["path"].as_str()), (Some("POST"), Some("/echo?x=1")));

    let result: Value = admin_json(&server, Method::GET, &format!("/jobs/{id}/result")).await;
    assert_eq!(result["body"], "order 42", "{result}");
    assert_eq!(result["status"], 200);
    let result_header = |name: &str| {
        let headers = result["headers"].as_array().expect("headers");
        headers.iter().find(|pair| pair[0] == name).and_then(|pair| pair[1].as_str()).map(str::to_string)
    };
    assert_eq!(result_header("x-echo-method").as_deref(), Some("POST"));
    assert_eq!(result_header("x-echo-path-with-query").as_deref(), Some("/echo?x=1"));

    // The attempt's record: the same path as a sync call, with trigger async, the job and the attempt.
    let invocation = job["attempts"][0]["invocation_id"].as_str().expect("invocation id");
    let record = server.record(invocation).await;
    let record = &record["invocation"];
    assert_eq!(
        (record["trigger"].as_str(), record["job"]["id"].as_str(), record["job"]["attempt"].as_u64()),
        (Some("async"), Some(id.as_str()), Some(1)),
        "{record}"
    );

    // The CLI: --async prints the id, `job --wait` the state and the result's body.
    let queued = server.cli(&["invoke", "echo", "/echo", "--data", "from the cli", "--async"]);
    assert!(queued.status.success(), "{}", stderr(&queued));
    let cli_id = stdout(&queued).trim().to_string();
    let waited = server.cli(&["job", &cli_id, "--wait"]);
    assert!(waited.status.success(), "{}", stderr(&waited));
    let text = stdout(&waited);
    assert!(text.contains("succeeded") && text.ends_with("from the cli"), "{text}");
    let listed = server.cli(&["jobs", "echo"]);
    assert!(stdout(&listed).contains(&cli_id) && stdout(&listed).contains(&id), "{}", stdout(&listed));

    let metrics = server
        .http
        .get(format!("{}/metrics", server.url))
        .bearer_auth(support::TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("amphi_jobs{state=\"succeeded\"} 2"), "{metrics}");
}

async fn idempotency_delay_cancel_and_bad_input(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &["--max-body", "1KiB", "--queue-max", "3"]);
    server.deploy("hello", RUST_HTTP_COMPONENT, json!({})).await;

    // The same key returns the first job with 200 and stores nothing.
    let first = accepted(&server, "hello", "/", &[("idempotency-key", "order-7")]).await;
    let again = enqueue(&server, "hello", "/", &[("idempotency-key", "order-7")], "").await;
    assert_eq!((again.status().as_u16(), header(&again, "amphi-invocation-id")), (200, first.as_str()));

    // A delayed job does not start before its time.
    let delayed = accepted(&server, "hello", "/", &[("amphi-delay", "1500ms")]).await;
    let job = wait_state(&server, &delayed, &["succeeded"], Duration::from_secs(10)).await;
    let waited = job["attempts"][0]["started_us"].as_u64().expect("started")
        - job["created_us"].as_u64().expect("created");
    assert!(waited >= 1_500_000, "started {waited} µs after it was accepted");

    // A queued job can be canceled, once.
    let later = accepted(&server, "hello", "/", &[("amphi-delay", "1h")]).await;
    let canceled: Value = admin_json(&server, Method::DELETE, &format!("/jobs/{later}")).await;
    assert_eq!(canceled["state"], "canceled");
    let twice = server.admin(Method::DELETE, &format!("/jobs/{later}")).send().await.expect("cancel");
    assert_eq!(twice.status(), 409);

    // Bad input: refused before anything is stored, the field named.
    let before = server.wait_for("/jobs?limit=100", |_| true).await.as_array().map_or(0, Vec::len);
    for (headers, status, field) in [
        (vec![("idempotency-key", "two words")], 400, "Idempotency-Key"),
        (vec![("amphi-delay", "soon")], 400, "amphi-delay"),
        (vec![("amphi-not-before", "tomorrow")], 400, "amphi-not-before"),
        (vec![("x-callback-url", "http://127.0.0.1:1/x")], 400, "X-Callback-Url"),
    ] {
        let response = enqueue(&server, "hello", "/", &headers, "").await;
        assert_eq!(response.status(), status, "{headers:?}");
        let problem: Value = response.json().await.expect("problem");
        assert!(problem["detail"].as_str().unwrap_or("").starts_with(field), "{problem}");
    }
    let big = enqueue(&server, "hello", "/", &[], &"x".repeat(2048)).await;
    assert_eq!(big.status(), 413);
    let unknown = enqueue(&server, "nobody", "/", &[], "").await;
    assert_eq!(unknown.status(), 404);
    let after = server.wait_for("/jobs?limit=100", |_| true).await.as_array().map_or(0, Vec::len);
    assert_eq!(before, after, "nothing stored for refused requests");

    // A full queue: 503 with Retry-After.
    for _ in 0..4 {
        let response = enqueue(&server, "hello", "/", &[("amphi-delay", "1h")], "").await;
        if response.status() == 503 {
            assert_eq!(header(&response, "retry-after"), "1");
            return;
        }
        assert_eq!(response.status(), 202);
    }
    panic!("a queue of at most 3 unfinished jobs took 4");
}

async fn failed_attempts_back_off_then_the_job_is_dead_and_can_be_queued_again(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &[]);
    let retry = json!({ "retry": { "attempts": 3, "backoff_initial_ms": 300, "backoff_max_ms": 500 } });
    server.deploy("flaky", RUST_HTTP_COMPONENT, retry).await;

    let id = accepted(&server, "flaky", "/status/503", &[]).await;
    let job = wait_state(&server, &id, &["dead"], Duration::from_secs(10)).await;
    let times = attempt_times(&job);
    assert_eq!(times.len(), 3, "{job}");
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].1;
        let ceiling = [300_000, 500_000][n];
        println!("backoff after attempt {}: {gap} µs (ceiling {ceiling})", n + 1);
        assert!(
            gap <= ceiling + 250_000,
            "the gap after attempt {} is {gap} µs, past its ceiling {ceiling}",
            n + 1
        );
    }
    // Dead jobs are listed, and go back on the queue with a fresh count of attempts.
    let dead = server.cli(&["jobs", "flaky", "--state", "dead"]);
    assert!(stdout(&dead).contains(&id), "{}", stdout(&dead));
    let retried = server.cli(&["job", &id, "--retry"]);
    assert!(retried.status.success(), "{}", stderr(&retried));
    let job = wait_state(&server, &id, &["dead"], Duration::from_secs(10)).await;
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(6), "three more attempts: {job}");

    // A 4xx is not retried: the job fails at once.
    let missing = accepted(&server, "flaky", "/nowhere", &[]).await;
    let job = wait_state(&server, &missing, &["failed"], Duration::from_secs(10)).await;
    assert_eq!((job["status"].as_u64(), job["attempts"].as_array().map(Vec::len)), (Some(404), Some(1)));

    // A 429 with Retry-After: the next attempt waits as long as the function asked.
    let busy = accepted(&server, "flaky", "/status/429?retry-after=1", &[]).await;
    let job = wait_state(&server, &busy, &["dead"], Duration::from_secs(15)).await;
    for pair in attempt_times(&job).windows(2) {
        assert!(pair[1].0 - pair[0].1 >= 1_000_000, "Retry-After honoured: {job}");
    }
}

/// A loopback HTTP receiver: every request's head and body, as text, on a channel.
async fn receiver() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (sender, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = sender.send(text);
                            let _ = socket
                                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                                .await;
                            break;
                        }
                    }
                }
            });
        }
    });
    (port, received)
}

async fn a_callback_reaches_an_allowed_host_and_is_recorded(store: Store) {
    let (port, mut received) = receiver().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let allowed = format!("127.0.0.1:{port}");
    let server = store.serve(temp.path(), &["--callback-allow-host", &allowed]);
    server.deploy("echo", RUST_HTTP_COMPONENT, json!({})).await;

    let url = format!("http://127.0.0.1:{port}/done");
    let response = enqueue(&server, "echo", "/echo", &[("x-callback-url", &url)], "the result").await;
    assert_eq!(response.status(), 202);
    let id = header(&response, "amphi-invocation-id").to_string();
    let delivered = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("delivered in time")
        .expect("a request");
    let lower = delivered.to_ascii_lowercase();
    assert!(delivered.starts_with("POST /done"), "{delivered}");
    assert!(lower.contains(&format!("amphi-invocation-id: {id}")), "{delivered}");
    assert!(
        lower.contains("amphi-job-state: succeeded")
            && lower.contains("amphi-attempts: 1")
            && lower.contains("amphi-status: 200"),
        "{delivered}"
    );
    assert!(delivered.ends_with("the result"), "{delivered}");
    let job = server.wait_for(&format!("/jobs/{id}"), |job| job["callback"]["state"] == "delivered").await;
    assert_eq!(job["callback"]["status"], 204);

    // Another port of the same host is not allowed: refused before anything is stored.
    let elsewhere =
        enqueue(&server, "echo", "/echo", &[("amphi-callback-url", "http://127.0.0.1:9/x")], "").await;
    assert_eq!(elsewhere.status(), 400);
    let problem: Value = elsewhere.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("not allowed"), "{problem}");
}

#[tokio::test]
async fn a_schedule_queues_one_job_per_tick_also_across_a_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    server.deploy("report", RUST_HTTP_COMPONENT, json!({})).await;

    let added = server.cli(&[
        "schedule",
        "add",
        "every-second",
        "--function",
        "report",
        "--cron",
        "* * * * * *",
        "--path",
        "/echo",
        "--data",
        "tick",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    let bad = server.cli(&["schedule", "add", "broken", "--function", "report", "--cron", "every day"]);
    assert!(!bad.status.success() && stderr(&bad).contains("cron"), "{}", stderr(&bad));

    let jobs =
        server.wait_for("/jobs?function=report", |jobs| jobs.as_array().is_some_and(|j| j.len() >= 3)).await;
    let ticks: Vec<&Value> = jobs.as_array().expect("jobs").iter().collect();
    assert!(ticks.iter().all(|j| j["schedule"] == "every-second"), "{jobs}");
    let first = ticks.last().expect("a job")["id"].as_str().expect("id").to_string();
    let job = wait_state(&server, &first, &["succeeded"], Duration::from_secs(10)).await;
    let record = server.record(job["attempts"][0]["invocation_id"].as_str().expect("invocation")).await;
    assert_eq!(record["invocation"]["job"]["schedule"], "every-second");
    let listed = server.cli(&["schedule", "ls"]);
    assert!(stdout(&listed).contains("every-second"), "{}", stdout(&listed));

    // Down for 3 s: the ticks missed run once at start, not once each.
    server.stop();
    let stopped_us = amphi_contract::now_unix_us();
    let count_before: usize = {
        let queue = rusqlite::Connection::open(temp.path().join("jobs.db")).expect("jobs.db");
        queue.query_row("SELECT COUNT(*) FROM jobs", [], |row| row.get(0)).expect("count")
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Taken before the start: the catch-up tick fires while the server is still coming up.
    let restarted_us = amphi_contract::now_unix_us();
    let server = TestServer::start(temp.path());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let removed = server.cli(&["schedule", "rm", "every-second"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let ended_us = amphi_contract::now_unix_us();
    let jobs = server.wait_for("/jobs?function=report&limit=1000", |_| true).await;
    let after: Vec<u64> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["created_us"].as_u64().expect("created"))
        .filter(|&c| c > stopped_us)
        .collect();
    let seconds_up = (ended_us - restarted_us) as f64 / 1e6;
    println!(
        "{count_before} jobs before the stop; {} after the restart in {seconds_up:.1} s up",
        after.len()
    );
    assert!(after.iter().all(|&c| c >= restarted_us), "no job was made while the server was down");
    assert!(
        after.len() as f64 <= seconds_up + 2.0,
        "one catch-up job, then one per tick: {} jobs in {seconds_up:.1} s",
        after.len()
    );
    assert!(!after.is_empty());
}

#[tokio::test]
async fn kill_9_while_jobs_run_every_accepted_job_still_ends() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    server.deploy("work", RUST_HTTP_COMPONENT, json!({ "concurrency": 16 })).await;

    // 2,000 jobs from 8 clients; the server is killed while they run.
    let accepted_ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (url, http, ids) =
            (format!("{}/async/fn/work/sleep?ms=5", server.url), server.http.clone(), accepted_ids.clone());
        clients.push(tokio::spawn(async move {
            for n in 0..250 {
                let response = http.post(&url).body(format!("{client}-{n}")).send().await.expect("enqueue");
                assert_eq!(response.status(), 202);
                let id = header(&response, "amphi-invocation-id").to_string();
                ids.lock().expect("lock").push(id);
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let ids: Vec<String> = accepted_ids.lock().expect("lock").clone();
    assert_eq!(ids.len(), 2000);
    // Kill once some have run and some are running.
    server
        .wait_for("/jobs?function=work&state=succeeded&limit=50", |jobs| {
            jobs.as_array().is_some_and(|j| j.len() >= 50)
        })
        .await;
    server.kill();

    let server = TestServer::start(temp.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let queue_path = temp.path().join("jobs.db");
    loop {
        let db = rusqlite::Connection::open(&queue_path).expect("jobs.db");
        let open: i64 = db
            .query_row("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')", [], |r| r.get(0))
            .expect("count");
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} jobs still unfinished two minutes after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = rusqlite::Connection::open(&queue_path).expect("jobs.db");
    let mut states = HashMap::new();
    let mut statement = db.prepare("SELECT id, state, attempts FROM jobs").expect("query");
    let rows = statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?)))
        .expect("rows");
    for row in rows {
        let (id, state, attempts) = row.expect("row");
        states.insert(id, (state, attempts));
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !states.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} accepted jobs are not in the queue: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let unique: HashSet<&String> = ids.iter().collect();
    let succeeded = ids.iter().filter(|id| states[*id].0 == "succeeded").count();
    let duplicates = ids.iter().filter(|id| states[*id].1 > 1).count();
    println!(
        "2000 accepted, {} distinct, {succeeded} succeeded; {duplicates} ran more than once (at-least-once: running at the kill)",
        unique.len()
    );
    assert_eq!(succeeded, 2000, "every accepted job ended succeeded");
    drop(server);
}

#[tokio::test]
async fn a_container_function_runs_jobs_retries_them_and_keeps_the_result() {
    let (_docker, _temp, server) = support::docker::start().await;
    let dir = support::docker::example("python-http");
    support::docker::deploy(
        &server,
        "py",
        &dir,
        &["--retry-attempts", "2", "--retry-backoff", "100ms..200ms"],
    );

    let ok = enqueue(&server, "py", "/echo", &[("content-type", "text/plain")], "to python").await;
    assert_eq!(ok.status(), 202);
    let id = header(&ok, "amphi-invocation-id").to_string();
    let job = wait_state(&server, &id, &["succeeded"], Duration::from_secs(60)).await;
    let result: Value = admin_json(&server, Method::GET, &format!("/jobs/{id}/result")).await;
    assert_eq!(result["body"], "to python");
    let record = server.record(job["attempts"][0]["invocation_id"].as_str().expect("invocation")).await;
    assert_eq!(
        (record["invocation"]["backend"].as_str(), record["invocation"]["trigger"].as_str()),
        (Some("container"), Some("async"))
    );

    let failing = accepted(&server, "py", "/status/500", &[]).await;
    let job = wait_state(&server, &failing, &["dead"], Duration::from_secs(60)).await;
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(2), "{job}");
    let lines = server
        .wait_for(
            &format!("/logs?invocation={}", job["attempts"][1]["invocation_id"].as_str().expect("id")),
            |l| l.as_array().is_some_and(|l| !l.is_empty()),
        )
        .await;
    assert!(lines.to_string().contains("answering 500"), "the attempt's own log: {lines}");
}
