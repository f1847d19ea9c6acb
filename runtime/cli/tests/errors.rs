//! Every documented platform error, as a caller and an admin see it: problem+json with its fixed
//! status, the invocation's record, and the reason in its log.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(header(&response, "content-type"), "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("urn:amphi:problem:")));
    body
}

#[tokio::test]
async fn admin_errors() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());

    let missing = server.http.get(format!("{}/v1/functions", server.url)).send().await.expect("call");
    assert_eq!(header(&missing, "www-authenticate"), "Bearer");
    problem(missing, 401).await;
    let wrong = server
        .http
        .get(format!("{}/v1/functions", server.url))
        .bearer_auth("nope")
        .send()
        .await
        .expect("call");
    problem(wrong, 401).await;

    let not_wasm = server.admin(Method::POST, "/artifacts").body("hello").send().await.expect("call");
    let body = problem(not_wasm, 422).await;
    assert!(body["detail"].as_str().expect("detail").contains("not a WebAssembly binary"));
    let truncated = server
        .admin(Method::POST, "/artifacts")
        .body(&b"\0asm\x01\0\0\0\x01"[..])
        .send()
        .await
        .expect("call");
    problem(truncated, 422).await;
    let empty = server.admin(Method::POST, "/artifacts").send().await.expect("call");
    problem(empty, 400).await;

    let unknown_digest = server
        .admin(Method::PUT, "/functions/x")
        .json(&json!({ "digest": format!("sha256:{}", "0".repeat(64)) }))
        .send()
        .await
        .expect("call");
    problem(unknown_digest, 422).await;
    let bad_name =
        server.admin(Method::PUT, "/functions/Bad.Name").json(&json!({ "digest": "x" })).send().await;
    problem(bad_name.expect("call"), 400).await;
    let typo = server
        .admin(Method::PUT, "/functions/x")
        .json(&json!({ "digest": "x", "config": { "timout_ms": 5 } }))
        .send()
        .await
        .expect("call");
    problem(typo, 400).await;

    server.deploy("f", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;
    let too_much_memory =
        server.admin(Method::PATCH, "/functions/f").json(&json!({ "memory_bytes": 1u64 << 40 })).send().await;
    problem(too_much_memory.expect("call"), 422).await;
    let zero_timeout =
        server.admin(Method::PATCH, "/functions/f").json(&json!({ "timeout_ms": 0 })).send().await;
    problem(zero_timeout.expect("call"), 422).await;
    let wrong_method = server.admin(Method::POST, "/functions/f").send().await.expect("call");
    problem(wrong_method, 405).await;
    let no_route = server.admin(Method::GET, "/nothing").send().await.expect("call");
    problem(no_route, 404).await;
    let bad_limit = server.admin(Method::GET, "/logs?limit=0").send().await.expect("call");
    problem(bad_limit, 400).await;

    // A refused request changed nothing.
    let described: Value =
        server.admin(Method::GET, "/functions/f").send().await.expect("call").json().await.expect("json");
    assert_eq!(described["function"]["version"], 1);
}

#[tokio::test]
async fn call_errors_have_their_status_and_record() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--max-body", "2MiB"]);
    let config = json!({ "timeout_ms": 500, "memory_bytes": 16 << 20 });
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, config.clone()).await;
    server.deploy("cgi", amphi_guest_artifacts::RUST_CGI_MODULE, config).await;

    let unknown = server.http.get(server.fn_url("nobody", "/")).send().await.expect("call");
    let body = problem(unknown, 404).await;
    assert!(body["detail"].as_str().expect("detail").contains("nobody"));

    for function in ["f", "cgi"] {
        let trap = server.http.get(server.fn_url(function, "/trap")).send().await.expect("call");
        let id = header(&trap, "amphi-invocation-id").to_string();
        let body = problem(trap, 502).await;
        assert_eq!(body["instance"], id.as_str());
        let record = server.record(&id).await;
        assert_eq!(record["invocation"]["outcome"], "function_error");
        assert_eq!(record["invocation"]["status"], 502);
        assert!(
            record["logs"]
                .as_array()
                .expect("lines")
                .iter()
                .any(|l| l["line"] == "the guest was asked to trap")
        );

        let started = Instant::now();
        let spin = server.http.get(server.fn_url(function, "/loop")).send().await.expect("call");
        let elapsed = started.elapsed();
        let id = header(&spin, "amphi-invocation-id").to_string();
        problem(spin, 504).await;
        assert!(elapsed >= Duration::from_millis(500), "not before the deadline: {elapsed:?}");
        assert!(elapsed < Duration::from_millis(500 + 1500), "stopped near the deadline: {elapsed:?}");
        let record = server.record(&id).await;
        assert_eq!(record["invocation"]["outcome"], "timeout");
        assert_eq!(record["invocation"]["status"], 504);
    }

    let grow = server.http.get(server.fn_url("f", "/grow?mib=64")).send().await.expect("call");
    let id = header(&grow, "amphi-invocation-id").to_string();
    let body = problem(grow, 502).await;
    assert!(body["detail"].as_str().expect("detail").contains("memory limit of 16MiB"), "{body}");
    let record = server.record(&id).await;
    assert!(record["invocation"]["error"].as_str().expect("error").contains("memory limit"));
    let within = server.http.get(server.fn_url("f", "/grow?mib=4")).send().await.expect("call");
    assert_eq!(within.status(), 200);

    // Too large, declared up front or only found while reading a chunked body.
    let declared =
        server.http.post(server.fn_url("f", "/echo")).body(vec![0u8; 3 << 20]).send().await.expect("call");
    let id = header(&declared, "amphi-invocation-id").to_string();
    problem(declared, 413).await;
    assert_eq!(server.record(&id).await["invocation"]["outcome"], "platform_error");
    let chunks = tokio_stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![1u8; 1 << 20])));
    let chunked =
        server.http.post(server.fn_url("f", "/echo")).body(reqwest::Body::wrap_stream(chunks)).send().await;
    problem(chunked.expect("call"), 413).await;
    let fits =
        server.http.post(server.fn_url("f", "/echo")).body(vec![0u8; 1 << 20]).send().await.expect("call");
    assert_eq!(fits.status(), 200);
}

#[tokio::test]
async fn over_capacity_gets_429() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let config = json!({ "concurrency": 1, "queue_timeout_ms": 0 });
    server.deploy("one", amphi_guest_artifacts::RUST_HTTP_COMPONENT, config).await;
    // Three calls that each hold the only slot for 1.5 s, sent together: they overlap, so the
    // slot admits one of them at a time and, with no patience asked for, refuses the others at
    // once.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let http = server.http.clone();
            let url = server.fn_url("one", "/sleep?ms=1500");
            tokio::spawn(async move { http.get(url).send().await.expect("call") })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = Vec::new();
    for call in calls {
        let response = call.await.expect("task");
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => refused.push(response),
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(admitted >= 1, "one call had the slot");
    let refusal = refused.pop().expect("at least one call was refused");
    let id = header(&refusal, "amphi-invocation-id").to_string();
    let body = problem(refusal, 429).await;
    assert!(body["detail"].as_str().expect("detail").contains("concurrency limit of 1"));
    assert_eq!(server.record(&id).await["invocation"]["status"], 429);
    let after = server.http.get(server.fn_url("one", "/")).send().await.expect("call");
    assert_eq!(after.status(), 200, "the slot is free again");
}

#[tokio::test]
async fn a_port_in_use_is_refused_even_by_a_second_amphi() {
    let first_data = tempfile::tempdir().expect("tempdir");
    let first = TestServer::start_with(first_data.path(), &["--workers", "2"]);
    let addr = first.url.trim_start_matches("http://").to_string();
    let second_data = tempfile::tempdir().expect("tempdir");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["serve", "--workers", "2", "--listen", &addr, "--data"])
        .arg(second_data.path())
        .env("AMPHI_TOKEN", "t")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("amphi serve runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server started on {addr}, sharing the port");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(stderr.contains(&addr) && stderr.contains("in use"), "readable reason: {stderr}");
    let still = first.http.get(format!("{}/healthz", first.url)).send().await.expect("first answers");
    assert_eq!(still.status(), 200);
}
