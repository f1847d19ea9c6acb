//! Several gateways sharing one real PostgreSQL (issue 16): a deploy through one is served by
//! the others, a delete likewise; the artifact one gateway received is loaded by the others from
//! the store; every gateway lists the cluster's nodes.

mod support;

use std::time::{Duration, Instant};

use amphi_test_services::{DockerEngine, Haproxy, NetNamespace, Postgres, Registry};
use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

fn gateway(postgres: &Postgres, data: &std::path::Path) -> TestServer {
    TestServer::start_with(data, &["--store", &postgres.url()])
}

/// Calls `/fn/{name}{path}` on `server` until `done` accepts the status and body.
async fn wait_call(server: &TestServer, name: &str, path: &str, done: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.get(name, path).await;
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{} never answered as expected: last {status} {body}", server.url);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON answer of `GET /v1{path}` on `server`.
async fn get_json(server: &TestServer, path: &str) -> Value {
    server.admin(Method::GET, path).send().await.expect("an admin GET").json().await.expect("json")
}

/// Waits (up to `within`) until job `id` is over, and returns it.
async fn wait_job(server: &TestServer, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job: Value = get_json(server, &format!("/jobs/{id}")).await;
        if !matches!(job["state"].as_str(), Some("queued" | "running")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node id of `server`, as the cluster lists it.
async fn node_id(server: &TestServer) -> String {
    let nodes: Value = get_json(server, "/nodes").await;
    let address = server.url.trim_start_matches("http://");
    let node = nodes.as_array().into_iter().flatten().find(|n| n["address"] == address);
    node.and_then(|n| n["id"].as_str()).expect("the server is a node").to_string()
}

#[tokio::test]
async fn gateways_sharing_postgres_serve_each_others_deploys() {
    let postgres = Postgres::start();
    let (a_dir, b_dir, c_dir) =
        (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("c"));
    let a = gateway(&postgres, a_dir.path());
    let b = gateway(&postgres, b_dir.path());
    let c = gateway(&postgres, c_dir.path());

    // Deployed through A (which alone received the upload), served by B and C.
    let deployed = a
        .deploy(
            "hello",
            amphi_guest_artifacts::RUST_HTTP_COMPONENT,
            json!({ "env": { "VERSION_TAG": "one" } }),
        )
        .await;
    assert_eq!(deployed["version"], 1);
    // The deploy is acknowledged: B serves it at once, notice or not (it asks the store).
    assert_eq!(b.get("hello", "/").await.status(), 200);
    for other in [&b, &c] {
        let body = wait_call(other, "hello", "/sleep?ms=0", |status, _| status == 200).await;
        assert_eq!(body, "one");
    }

    // Updated through B: A and C serve the new version.
    let patched = b
        .admin(Method::PATCH, "/functions/hello")
        .json(&json!({ "env": { "VERSION_TAG": "two" } }))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 201, "{}", patched.text().await.unwrap_or_default());
    for other in [&a, &c] {
        wait_call(other, "hello", "/sleep?ms=0", |status, body| status == 200 && body == "two").await;
    }
    let served = c.get("hello", "/").await;
    let record = c.record(header(&served, "amphi-invocation-id")).await;
    assert_eq!(record["invocation"]["version"], 2, "{record}");

    // Every gateway describes the same versions.
    let described = c.describe("hello").await;
    assert_eq!(described["versions"].as_array().map(Vec::len), Some(2), "{described}");

    // Deleted through C: A and B stop serving it.
    let deleted = c.admin(Method::DELETE, "/functions/hello").send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    for other in [&a, &b] {
        wait_call(other, "hello", "/", |status, _| status == 404).await;
    }

    // The cluster's nodes, from any gateway and from the CLI.
    let nodes: Value = get_json(&b, "/nodes").await;
    let nodes = nodes.as_array().expect("a list");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n["state"] == "up"), "{nodes:?}");
    for server in [&a, &b, &c] {
        let address = server.url.trim_start_matches("http://");
        assert!(nodes.iter().any(|n| n["address"] == address), "{address} missing from {nodes:?}");
    }
    let listed = support::stdout(&a.cli(&["nodes"]));
    assert_eq!(listed.lines().filter(|l| l.contains(" up ")).count(), 3, "{listed}");
}

/// A gateway started after the deploys routes them from the store at once, and one restarted
/// keeps them; a deploy made while a gateway was down is routed when it is back.
#[tokio::test]
async fn a_gateway_joining_late_routes_what_the_store_holds() {
    let postgres = Postgres::start();
    let (a_dir, b_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let a = gateway(&postgres, a_dir.path());
    a.deploy("early", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let mut b = gateway(&postgres, b_dir.path());
    assert_eq!(b.get("early", "/").await.status(), 200);

    b.stop();
    a.deploy("while-away", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;
    let b = gateway(&postgres, b_dir.path());
    assert_eq!(b.get("early", "/").await.status(), 200);
    assert_eq!(b.get("while-away", "/").await.status(), 200);
}

/// An embedded gateway is a cluster of one.
#[tokio::test]
async fn an_embedded_gateway_lists_itself_as_its_only_node() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let nodes: Value = get_json(&server, "/nodes").await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(nodes[0]["address"], server.url.trim_start_matches("http://"));
    assert_eq!(nodes[0]["state"], "up");
}

/// PostgreSQL going away: calls of functions already routed go on; admin calls that need the
/// store answer 503 problem+json; once it is back, everything works again and nothing
/// acknowledged is lost.
#[tokio::test]
async fn calls_go_on_and_admin_answers_503_while_postgres_is_down() {
    let mut postgres = Postgres::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let a = gateway(&postgres, temp.path());
    let deployed = a.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let digest = deployed["digest"].clone();

    postgres.stop();
    for _ in 0..20 {
        assert_eq!(a.get("hello", "/").await.status(), 200, "a routed function is served without the store");
    }
    let refused = a
        .admin(Method::PUT, "/functions/other")
        .json(&json!({ "digest": digest, "config": {} }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(refused.status(), 503);
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let problem: Value = refused.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("store is unavailable"), "{problem}");
    let described = a.admin(Method::GET, "/functions/hello").send().await.expect("describe");
    assert_eq!(described.status(), 503);

    postgres.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let answer = a
            .admin(Method::PUT, "/functions/other")
            .json(&json!({ "digest": digest, "config": {} }))
            .send()
            .await
            .expect("deploy");
        if answer.status() != 503 || Instant::now() > deadline {
            break answer.status();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 201, "deploys work again once PostgreSQL is back");
    assert_eq!(a.describe("hello").await["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(a.get("other", "/").await.status(), 200);
}

/// Three gateways behind a real HAProxy: one killed with SIGKILL under mixed load (sync wasm and
/// container calls, async jobs) loses only the calls it had in flight; every job acknowledged
/// with a 202 ends; a deploy acknowledged through the load balancer after it is served by the
/// others.
#[tokio::test]
async fn a_gateway_killed_under_load_loses_only_its_calls_in_flight() {
    const CLIENTS: usize = 8;
    let postgres = Postgres::start();
    let dirs =
        [tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("c")];
    let a = gateway(&postgres, dirs[0].path());
    let b = gateway(&postgres, dirs[1].path());
    let mut c = gateway(&postgres, dirs[2].path());
    let addr = |server: &TestServer| server.url.trim_start_matches("http://").parse().expect("an address");
    let balancer = Haproxy::start(&[addr(&a), addr(&b), addr(&c)]);
    let docker = support::docker::engine().await;
    a.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    // A container function too (the gateways share this machine's engine); each node's first
    // instance is started before the load.
    support::docker::deploy(&a, "py", &support::docker::example("python-http"), &["--max-instances", "2"]);
    for other in [&a, &b, &c] {
        wait_call(other, "hello", "/", |status, _| status == 200).await;
        wait_call(other, "py", "/sleep?ms=0", |status, _| status == 200).await;
    }

    // Half the clients call the wasm function, half the container function.
    let urls = [
        format!("http://{}/fn/hello/sleep?ms=20", balancer.addr),
        format!("http://{}/fn/py/sleep?ms=20", balancer.addr),
    ];
    let started = Instant::now();
    let load = (0..CLIENTS).map(|client| {
        let (url, http) = (urls[client % 2].clone(), reqwest::Client::new());
        tokio::spawn(async move {
            // (seconds since the start, whether it succeeded) of every call; bounded in count and time.
            let mut calls = Vec::new();
            while calls.len() < 1000 && started.elapsed() < Duration::from_secs(4) {
                let ok = match http.get(&url).send().await {
                    Ok(response) => response.status() == 200 && response.text().await.is_ok(),
                    Err(_) => false,
                };
                calls.push((started.elapsed(), ok));
            }
            calls
        })
    });
    let load: Vec<_> = load.collect();
    // Async jobs through the balancer at the same time: every one acknowledged must end.
    let jobs = {
        let (url, http) =
            (format!("http://{}/async/fn/hello/sleep?ms=50", balancer.addr), reqwest::Client::new());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            while accepted.len() < 300 && started.elapsed() < Duration::from_secs(4) {
                if let Ok(response) = http.post(&url).send().await
                    && response.status() == 202
                {
                    accepted.push(header(&response, "amphi-invocation-id").to_string());
                }
            }
            accepted
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = started.elapsed();
    c.kill();

    // A deploy acknowledged through the balancer while one node is gone is served by the others.
    let lb = TestServer::attach(&format!("http://{}", balancer.addr));
    lb.deploy("after", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;
    for other in [&a, &b] {
        wait_call(other, "after", "/", |status, _| status == 200).await;
    }

    let mut calls = Vec::new();
    for client in load {
        calls.extend(client.await.expect("a load client"));
    }
    let failed: Vec<_> = calls.iter().filter(|(_, ok)| !ok).map(|(at, _)| *at).collect();
    eprintln!(
        "{} calls through the balancer, {} failed, node killed at {killed_at:?}",
        calls.len(),
        failed.len()
    );
    assert!(calls.len() > 100, "the load ran: {} calls", calls.len());
    assert!(
        failed.len() <= CLIENTS,
        "{} of {} calls failed; at most the {CLIENTS} in flight on the killed node may",
        failed.len(),
        calls.len()
    );
    assert!(
        failed.iter().all(|at| *at >= killed_at && *at < killed_at + Duration::from_secs(1)),
        "calls failed away from the kill at {killed_at:?}: {failed:?}"
    );

    // Every job acknowledged with a 202 ends, those the killed node held included.
    let accepted = jobs.await.expect("the job client");
    assert!(accepted.len() > 20, "jobs were queued: {}", accepted.len());
    for id in &accepted {
        let job = wait_job(&a, id, Duration::from_secs(40)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    eprintln!("{} jobs acknowledged during the kill, all succeeded", accepted.len());

    // The killed gateway could not remove its containers: the test does.
    for container in support::docker::containers_of(&docker, dirs[2].path()).await {
        if let Some(id) = container.id {
            let options =
                bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }

    // The killed node is listed as gone once it has not been seen for 10 s.
    let killed = c.url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: Value = get_json(&a, "/nodes").await;
        let state = |address: &str| {
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["address"] == address)
                .map(|n| n["state"].clone())
        };
        if state(&killed) == Some(json!("gone")) {
            assert_eq!(state(a.url.trim_start_matches("http://")), Some(json!("up")), "{nodes}");
            break;
        }
        assert!(Instant::now() < deadline, "the killed node is never listed as gone: {nodes}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Started without a token, the first gateway of a cluster makes one and keeps it in the store;
/// every other gateway answers to it.
#[tokio::test]
async fn gateways_of_a_cluster_share_the_admin_token_the_first_one_made() {
    use std::io::{BufRead as _, BufReader};
    let postgres = Postgres::start();
    let start = |data: &std::path::Path| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_amphi"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &postgres.url(), "--data"])
            .arg(data)
            .env_remove("AMPHI_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("amphi serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut token, mut url) = (None, None);
        while url.is_none() {
            let line = lines.next().expect("a line before exiting").expect("utf-8");
            if let Some(t) = line.trim().strip_prefix("export AMPHI_TOKEN=") {
                token = Some(t.to_string());
            }
            url = line.strip_prefix("Amphi listening on ").map(|u| u.trim().to_string());
        }
        std::thread::spawn(move || lines.for_each(drop));
        (child, token, url.expect("an address"))
    };
    let (a_dir, b_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (mut a, made, _) = start(a_dir.path());
    let token = made.expect("the first gateway prints the token it made");
    let (mut b, again, b_url) = start(b_dir.path());
    assert_eq!(again, None, "the second gateway makes no token of its own");

    let http = reqwest::Client::new();
    let listed = http.get(format!("{b_url}/v1/functions")).bearer_auth(&token).send().await.expect("list");
    assert_eq!(listed.status(), 200);
    let refused =
        http.get(format!("{b_url}/v1/functions")).bearer_auth("not-the-token").send().await.expect("list");
    assert_eq!(refused.status(), 401);
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A gateway started while its PostgreSQL is not up yet (a cluster started all at once) waits for
/// it instead of exiting.
#[tokio::test]
async fn a_gateway_started_before_postgres_waits_for_it() {
    let mut postgres = Postgres::start();
    postgres.stop();
    let (url, temp) = (postgres.url(), tempfile::tempdir().expect("tempdir"));
    let data = temp.path().to_path_buf();
    let starting = std::thread::spawn(move || TestServer::start_with(&data, &["--store", &url]));
    // The scenario, not a wait for an event: the gateway is started first.
    std::thread::sleep(Duration::from_millis(500));
    postgres.restart();
    let gateway = starting.join().expect("the gateway started once PostgreSQL was up");
    gateway.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    assert_eq!(gateway.get("hello", "/").await.status(), 200);
}

/// Async jobs in a cluster: queued through one gateway, run by the executors of all; a node
/// killed while it runs jobs loses none of them (once it has been gone for 10 s another node
/// runs their next attempt); a schedule's tick runs once across the cluster.
#[tokio::test]
async fn the_cluster_shares_its_jobs_and_a_lost_nodes_jobs_run_elsewhere() {
    let postgres = Postgres::start();
    let dirs =
        [tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("c")];
    let a = gateway(&postgres, dirs[0].path());
    let b = gateway(&postgres, dirs[1].path());
    let mut c = gateway(&postgres, dirs[2].path());
    let c_id = node_id(&c).await;
    // Two jobs at a time per node.
    a.deploy("work", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "concurrency": 4 })).await;

    // Queued through A alone, run by every node.
    let mut ids = Vec::new();
    for n in 0..60 {
        let response = a
            .http
            .post(format!("{}/async/fn/work/sleep?ms=100", a.url))
            .body(n.to_string())
            .send()
            .await
            .expect("queue");
        assert_eq!(response.status(), 202);
        ids.push(header(&response, "amphi-invocation-id").to_string());
    }
    let mut ran_on = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let job = wait_job(&b, id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let node = job["attempts"][0]["node"].as_str().expect("the attempt names its node").to_string();
        *ran_on.entry(node).or_default() += 1;
    }
    eprintln!("60 jobs queued through one gateway ran on: {ran_on:?}");
    assert!(ran_on.len() >= 2, "the executors of several nodes share the jobs: {ran_on:?}");

    // Long jobs; C is killed while it runs some of them.
    let mut long = Vec::new();
    for _ in 0..6 {
        let response =
            a.http.post(format!("{}/async/fn/work/sleep?ms=4000", a.url)).send().await.expect("queue");
        assert_eq!(response.status(), 202);
        long.push(header(&response, "amphi-invocation-id").to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: Value = get_json(&a, "/jobs?function=work&state=running").await;
        let on_c = running.as_array().into_iter().flatten().any(|job| {
            job["attempts"].as_array().and_then(|a| a.last()).is_some_and(|a| a["node"] == c_id.as_str())
        });
        if on_c {
            break;
        }
        assert!(Instant::now() < deadline, "C never ran one of the long jobs: {running}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill();
    let mut released = 0;
    for id in &long {
        let job = wait_job(&a, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let attempts = job["attempts"].as_array().expect("attempts");
        if attempts.len() > 1 {
            released += 1;
            let lost = &attempts[0];
            assert_eq!(lost["node"], c_id.as_str(), "{job}");
            assert_eq!(lost["outcome"], "platform_error", "{job}");
            assert!(lost["error"].as_str().unwrap_or("").contains("gone"), "{job}");
            assert_ne!(attempts[1]["node"], c_id.as_str(), "{job}");
        }
    }
    assert!(released >= 1, "the jobs C held ran again elsewhere");

    // Every second, on the two nodes left: one job per tick, not one per node.
    let schedule = a
        .admin(Method::PUT, "/schedules/tick")
        .json(&json!({ "function": "work", "cron": "* * * * * *", "path": "/sleep?ms=0" }))
        .send()
        .await
        .expect("put a schedule");
    assert!(schedule.status().is_success(), "{}", schedule.text().await.unwrap_or_default());
    let since = Instant::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let deleted = b.admin(Method::DELETE, "/schedules/tick").send().await.expect("delete the schedule");
    assert_eq!(deleted.status(), 204);
    let seconds = since.elapsed().as_secs_f64();
    let jobs: Value = get_json(&b, "/jobs?function=work&limit=1000").await;
    let ticks = jobs.as_array().into_iter().flatten().filter(|job| job["schedule"] == "tick").count();
    eprintln!("{ticks} scheduled jobs in {seconds:.1} s on two nodes");
    assert!(ticks >= 2 && ticks as f64 <= seconds + 1.0, "{ticks} jobs in {seconds:.1} s: one per tick");
}

/// Records and log lines of every gateway, read through any: a call served by B is found with
/// its lines through A; `logs --follow` through A streams calls served by B and C; calls made
/// while PostgreSQL is down are logged where they ran and shipped once it is back, none lost.
#[tokio::test]
async fn records_and_logs_of_every_gateway_are_read_through_any() {
    let mut postgres = Postgres::start();
    let dirs =
        [tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("c")];
    let a = gateway(&postgres, dirs[0].path());
    let b = gateway(&postgres, dirs[1].path());
    let c = gateway(&postgres, dirs[2].path());
    a.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;

    let served = b.get("hello", "/log?lines=2").await;
    assert_eq!(served.status(), 200);
    let id = header(&served, "amphi-invocation-id").to_string();
    let found = a
        .wait_for(&format!("/invocations/{id}"), |found| {
            found["invocation"]["id"] == id.as_str() && found["logs"].as_array().is_some_and(|l| l.len() == 3)
        })
        .await;
    assert_eq!(found["logs"][0]["line"], "line 0 to stdout", "{found}");
    let listed = support::stdout(&a.cli(&["logs", "hello"]));
    assert!(listed.contains("line 1 to stdout"), "{listed}");

    // Following through A: calls served by B and C stream in.
    let mut follow =
        a.admin(Method::GET, "/logs?follow=true&function=hello&limit=1").send().await.expect("follow");
    let mut wanted: std::collections::HashSet<String> = std::collections::HashSet::new();
    for other in [&b, &c] {
        let response = other.get("hello", "/log?lines=1").await;
        wanted.insert(header(&response, "amphi-invocation-id").to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut streamed = String::new();
    while !wanted.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, follow.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("follow never showed {wanted:?}: {streamed}"));
        streamed.push_str(&String::from_utf8_lossy(&chunk.expect("stream").expect("open")));
        for line in streamed.lines() {
            if let Ok(event) = serde_json::from_str::<Value>(line)
                && event["type"] == "invocation"
                && let Some(id) = event["id"].as_str()
            {
                wanted.remove(id);
            }
        }
    }
    drop(follow);

    // PostgreSQL away: the calls are logged on B, and shipped once it is back.
    postgres.stop();
    let mut while_down = Vec::new();
    for _ in 0..20 {
        let response = b.get("hello", "/log?lines=1").await;
        assert_eq!(response.status(), 200);
        while_down.push(header(&response, "amphi-invocation-id").to_string());
    }
    postgres.restart();
    let records = a
        .wait_for("/invocations?function=hello&limit=1000", |records| {
            let ids: Vec<&str> =
                records.as_array().into_iter().flatten().filter_map(|r| r["id"].as_str()).collect();
            while_down.iter().all(|id| ids.contains(&id.as_str()))
        })
        .await;
    let all = records.as_array().map_or(0, Vec::len);
    assert_eq!(all, 23, "every call once: 1 + 2 followed + 20 while PostgreSQL was down: {records}");
}

/// A Dockerfile function built on A answers on B, which runs containers on a Docker engine of its
/// own: A pushes the image to the cluster's registry before the deploy is acknowledged, and B
/// pulls it on its first cold start (counted in that call's `init` time).
#[tokio::test]
async fn a_container_function_built_on_one_node_runs_on_another() {
    support::docker::engine().await;
    let postgres = Postgres::start();
    let registry = Registry::start();
    let engine_b = DockerEngine::start();
    let (a_dir, b_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let flags = ["--store", &postgres.url(), "--image-registry", &registry.host()];
    let a = TestServer::start_with(a_dir.path(), &flags);
    let b = TestServer::start_with_env(b_dir.path(), &flags, &[("DOCKER_HOST", &engine_b.docker_host())]);

    let deployed = support::docker::deploy(&a, "py", &support::docker::example("python-http"), &[]);
    let image = deployed["digest"].as_str().expect("the image id").to_string();
    let b_engine = bollard::Docker::connect_with_unix(
        engine_b.socket.to_str().expect("a UTF-8 path"),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("B's engine");
    assert!(
        b_engine.inspect_image(&image).await.is_err(),
        "B's engine does not have the image before a call"
    );

    let first = b.get("py", "/").await;
    let timing = header(&first, "server-timing").to_string();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap_or_default());
    assert!(timing.contains("desc=\"cold\""), "the first call on B is a cold start: {timing}");
    let init_ms: f64 = timing
        .split(',')
        .find(|metric| metric.trim_start().starts_with("init"))
        .and_then(|init| init.split("dur=").nth(1))
        .and_then(|dur| dur.split(';').next())
        .and_then(|dur| dur.parse().ok())
        .expect("an init duration");
    eprintln!("first call on B, image pulled from the registry: init {init_ms:.0} ms ({timing})");
    assert!(b_engine.inspect_image(&image).await.is_ok(), "B's engine pulled the image");
    let second = b.get("py", "/").await;
    assert_eq!(second.status(), 200);
    assert!(header(&second, "server-timing").contains("desc=\"warm\""), "then warm");

    // Instances are per node: described through A, B's instance is listed under B.
    let described = a.describe("py").await;
    let nodes = described["nodes"].as_array().expect("instances by node");
    let count = |server: &TestServer| {
        let address = server.url.trim_start_matches("http://");
        let node = nodes.iter().find(|n| n["address"] == address).expect("the node is listed");
        node["instances"].as_array().map_or(usize::MAX, Vec::len)
    };
    assert_eq!((count(&a), count(&b)), (0, 1), "{described}");
    let shown = support::stdout(&a.cli(&["describe", "py"]));
    assert!(shown.contains(": 1 instance(s)") && shown.contains(": 0 instance(s)"), "{shown}");

    // A registry that is not there: the deploy fails with a clear problem, nothing deployed.
    let c_dir = tempfile::tempdir().expect("c");
    let nowhere = TestServer::start_with(
        c_dir.path(),
        &["--store", &postgres.url(), "--image-registry", "127.0.0.1:9"],
    );
    let refused = nowhere.cli(&[
        "deploy",
        "nowhere",
        support::docker::example("python-http").to_str().expect("utf-8"),
        "--dockerfile",
    ]);
    assert!(!refused.status.success());
    assert!(support::stderr(&refused).contains("could not get it"), "{}", support::stderr(&refused));
    assert_eq!(b.get("nowhere", "/").await.status(), 404);
}

/// The state `server` lists the node at `address` in (`up` or `gone`), if listed.
async fn node_state(server: &TestServer, address: &str) -> Option<String> {
    let nodes: Value = get_json(server, "/nodes").await;
    let node = nodes.as_array().into_iter().flatten().find(|n| n["address"] == address)?;
    node["state"].as_str().map(str::to_string)
}

/// A node whose network fails (the link of its network namespace cut) and comes back: while cut
/// it misses an update made through another gateway and is listed as gone; once back it rejoins
/// (listed up again) and serves the current version.
#[tokio::test]
async fn a_node_cut_off_and_back_rejoins_and_serves_current_versions() {
    let namespace = NetNamespace::create();
    let postgres = Postgres::start_also_on(&[namespace.host_ip]);
    let (a_dir, n_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("n"));
    let a = gateway(&postgres, a_dir.path());
    let n =
        TestServer::start_in(&namespace, n_dir.path(), &["--store", &postgres.url_via(namespace.host_ip)]);
    let n_address = n.url.trim_start_matches("http://").to_string();
    a.deploy(
        "hello",
        amphi_guest_artifacts::RUST_HTTP_COMPONENT,
        json!({ "env": { "VERSION_TAG": "before" } }),
    )
    .await;
    wait_call(&n, "hello", "/sleep?ms=0", |status, body| status == 200 && body == "before").await;

    namespace.cut();
    let patched = a
        .admin(Method::PATCH, "/functions/hello")
        .json(&json!({ "env": { "VERSION_TAG": "after" } }))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node_state(&a, &n_address).await.as_deref() != Some("gone") {
        assert!(Instant::now() < deadline, "the cut-off node is never listed as gone");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    namespace.restore();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(60);
    loop {
        // A connection kept from before the cut may fail once: an error is "not yet".
        let call = n.http.get(n.fn_url("hello", "/sleep?ms=0")).send();
        let current = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(response)) => response.text().await.unwrap_or_default() == "after",
            _ => false,
        };
        if current && node_state(&a, &n_address).await.as_deref() == Some("up") {
            break;
        }
        assert!(Instant::now() < deadline, "the node never came back with the current version");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the node rejoined and served the current version {:?} after its link came back",
        back.elapsed()
    );
}
