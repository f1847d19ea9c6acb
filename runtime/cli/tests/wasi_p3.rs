//! WASI 0.3 components (issue 15): `guest-examples/rust-p3` served through the same trigger,
//! limits, logs and records as WASI 0.2 ones, a fresh instance per request unless the function
//! opts into instance reuse.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

const P3: &str = amphi_guest_artifacts::RUST_P3_COMPONENT;

async fn text(server: &TestServer, name: &str, path: &str) -> (u16, String) {
    let response = server.get(name, path).await;
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// The record of the call that answered `response`.
async fn record_of(server: &TestServer, response: &reqwest::Response) -> Value {
    let id = header(response, "amphi-invocation-id").to_string();
    assert!(!id.is_empty(), "no invocation id on the response");
    server.record(&id).await
}

#[tokio::test]
async fn a_wasi_03_component_is_served_like_any_other_function() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let deployed = server
        .deploy(
            "api",
            P3,
            json!({ "env": { "GREETING": "hej" }, "timeout_ms": 2000, "memory_bytes": 64 << 20 }),
        )
        .await;
    assert_eq!(deployed["kind"], "wasi-http-0.3-component", "{deployed}");

    let hello = server.get("api", "/").await;
    assert_eq!(hello.status(), 200);
    assert!(header(&hello, "server-timing").contains("init;dur="), "{:?}", hello.headers());
    assert_eq!(hello.text().await.expect("body"), "Hello from Amphi over WASI 0.3!\n");

    // Echo reads the request body as a stream and writes each chunk back as it reads it.
    let body: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let chunks = body.chunks(64 << 10).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>();
    let echoed = server
        .http
        .post(server.fn_url("api", "/echo"))
        .header("content-type", "application/x-test")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("echo");
    assert_eq!(echoed.status(), 200);
    assert_eq!(header(&echoed, "x-echo-content-type"), "application/x-test");
    assert!(echoed.bytes().await.expect("body") == body, "the echo differs");

    // A streamed response arrives chunk by chunk, as the guest writes it between async waits.
    let started = Instant::now();
    let mut streamed = server.get("api", "/stream?chunks=4&delay_ms=150").await;
    let first = streamed.chunk().await.expect("chunk").expect("a first chunk");
    let first_at = started.elapsed();
    let mut rest = first.to_vec();
    while let Some(chunk) = streamed.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(started.elapsed() >= Duration::from_millis(600), "not paced: {:?}", started.elapsed());
    assert!(first_at < Duration::from_millis(450), "the first chunk waited for the rest: {first_at:?}");

    assert_eq!(text(&server, "api", "/sleep?ms=100").await, (200, "slept".into()));
    assert_eq!(text(&server, "api", "/env?name=GREETING").await, (200, "hej".into()));
    assert_eq!(
        text(&server, "api", "/request?a=1").await.1,
        "method=GET\npath=/request\nquery=a=1\nbody_len=0\n"
    );

    // The guest's output is the call's log.
    let logged = server.get("api", "/log?text=from-p3").await;
    assert_eq!(logged.status(), 200);
    let record = record_of(&server, &logged).await;
    let lines = record["logs"].as_array().expect("logs");
    assert!(lines.iter().any(|l| l["stream"] == "stdout" && l["line"] == "from-p3"), "{record}");
    assert_eq!(record["invocation"]["backend"], "wasm");

    // A fresh instance per request: nothing a call leaves is seen by the next.
    for _ in 0..3 {
        assert_eq!(text(&server, "api", "/state").await, (200, "1".into()));
    }
    // … and, as for WASI 0.2, instances are made ahead of the calls that take them.
    server.wait_for("/stats", |stats| stats["wasm"]["ready_hits"].as_u64().unwrap_or(0) >= 1).await;

    // Failures are named: a trap, the timeout, the memory limit.
    let trapped = server.get("api", "/trap").await;
    assert_eq!(trapped.status(), 502);
    let record = record_of(&server, &trapped).await;
    assert_eq!(record["invocation"]["outcome"], "function_error", "{record}");
    let log = record["logs"].to_string();
    assert!(log.contains("asked to crash"), "the panic message is in the log: {log}");

    let looped = server.get("api", "/loop").await;
    assert_eq!(looped.status(), 504);
    assert_eq!(record_of(&server, &looped).await["invocation"]["outcome"], "timeout");

    let grown = server.get("api", "/alloc?mib=100").await;
    assert_eq!(grown.status(), 502);
    let problem: Value = grown.json().await.expect("problem+json");
    assert!(problem["detail"].as_str().unwrap_or("").contains("memory limit of 64MiB"), "{problem}");

    // The instance after a failure is a fresh one again.
    assert_eq!(text(&server, "api", "/").await.0, 200);
}

#[tokio::test]
async fn reuse_lets_an_instance_serve_up_to_max_requests() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let reuse = json!({ "max_requests": 3, "max_concurrent": 1, "idle_timeout_ms": 30000 });
    server.deploy("counter", P3, json!({ "reuse": reuse })).await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (status, body) = text(&server, "counter", "/state").await;
        assert_eq!(status, 200);
        seen.push(body.parse::<u32>().expect("a count"));
    }
    assert_eq!(seen, [1, 2, 3, 1, 2, 3, 1], "one instance, retired after 3 requests");

    // Concurrent calls: instances may serve them side by side, never more than max_requests.
    let calls = (0..12).map(|_| text(&server, "counter", "/state"));
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, 200);
        let count: u32 = body.parse().expect("a count");
        assert!((1..=3).contains(&count), "an instance served {count} requests");
    }

    // A new version retires the instances of the old one.
    let described = server.describe("counter").await;
    let digest = described["versions"][0]["digest"].clone();
    let updated = server
        .admin(Method::PUT, "/functions/counter")
        .json(&json!({ "digest": digest, "config": { "reuse": reuse, "env": { "V": "2" } } }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(updated.status(), 201);
    assert_eq!(text(&server, "counter", "/state").await, (200, "1".into()));

    // Reuse is for WASI 0.3 components only, and its knobs are checked.
    let bad = server
        .admin(Method::PUT, "/functions/counter")
        .json(&json!({ "digest": digest, "config": { "reuse": { "max_requests": 2, "max_concurrent": 0 } } }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("reuse.max_concurrent"), "{problem}");

    let p2 = std::fs::read(amphi_guest_artifacts::RUST_HTTP_COMPONENT).expect("guest");
    let upload: Value = server
        .admin(Method::POST, "/artifacts")
        .body(p2)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let refused = server
        .admin(Method::PUT, "/functions/p2")
        .json(&json!({ "digest": upload["digest"], "config": { "reuse": reuse } }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("WASI 0.3"), "{problem}");
}

/// `amphi deploy --reuse=…` sets the knobs and `amphi describe` shows them; a bad setting is
/// named.
#[tokio::test]
async fn the_cli_deploys_with_reuse_and_describes_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let deployed = server.cli(&["deploy", "api", P3, "--reuse=requests=5,idle=2s"]);
    assert!(deployed.status.success(), "{}", support::stderr(&deployed));
    let described = support::stdout(&server.cli(&["describe", "api"]));
    assert!(described.contains("kind:         wasi-http-0.3-component"), "{described}");
    assert!(
        described
            .contains("reuse:        up to 5 requests per instance, 16 at once, dropped after 2000ms idle"),
        "{described}"
    );
    let states: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(text(&server, "api", "/state").await.1);
        }
        seen
    };
    assert_eq!(states, ["1", "2", "3", "4", "5", "1"]);

    let plain = server.cli(&["deploy", "api", P3]);
    assert!(plain.status.success(), "{}", support::stderr(&plain));
    assert!(support::stdout(&server.cli(&["describe", "api"])).contains("reuse:        off"));

    let bad = server.cli(&["deploy", "api", P3, "--reuse=requests=many"]);
    assert!(!bad.status.success());
    assert!(support::stderr(&bad).contains("`many` is not a whole number"), "{}", support::stderr(&bad));
}

/// Pre-initialization works for WASI 0.3 components too: the table `wizer-initialize` builds
/// is in every instance, and the instance still writes its log and streams its body.
#[tokio::test]
async fn a_wasi_03_component_is_pre_initialized() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("plain", P3, json!({})).await;
    assert_eq!(text(&server, "plain", "/table").await, (200, "entries=0 sum=0".into()));

    let deployed = server.deploy("table", P3, json!({ "init": "wizer-initialize" })).await;
    assert_eq!(deployed["init"]["export"], "wizer-initialize", "{deployed}");
    let (status, table) = text(&server, "table", "/table").await;
    assert_eq!(status, 200);
    assert!(table.starts_with("entries=65536 sum="), "{table}");
    assert_eq!(text(&server, "table", "/state").await, (200, "1".into()));
    assert_eq!(text(&server, "table", "/stream?chunks=2").await, (200, "chunk 0\nchunk 1\n".into()));
    let logged = server.get("table", "/log?text=after-snapshot").await;
    assert_eq!(logged.status(), 200);
    let record = record_of(&server, &logged).await;
    assert!(record["logs"].to_string().contains("after-snapshot"), "{record}");
}
