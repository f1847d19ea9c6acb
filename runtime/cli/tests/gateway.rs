//! The gateway's own behaviour: HTTP/2 without TLS, the header-read timeout, outbound network
//! denied unless granted, per-call log truncation.

mod support;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let response = h2.post(server.fn_url("hello", "/echo?v=2")).body("over h2").send().await.expect("call");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(header(&response, "x-echo-path-with-query"), "/echo?v=2");
    assert_eq!(response.text().await.expect("body"), "over h2");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--header-read-timeout", "1s"]);
    let address = server.url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("partial headers");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).is_ok()
    })
    .await
    .expect("task");
    assert!(closed, "the server closed the connection");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn outbound_http_is_denied_unless_the_host_is_allowed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("net", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let host = server.url.trim_start_matches("http://").to_string();
    let target = format!("/fetch?url=http://{host}/healthz");

    let denied = server.http.get(server.fn_url("net", &target)).send().await.expect("call");
    assert_eq!(denied.status(), 502);
    assert!(denied.text().await.expect("body").contains("HttpRequestDenied"));

    let granted = server
        .admin(Method::PATCH, "/functions/net")
        .json(&json!({ "allowed_outbound_hosts": [host] }))
        .send()
        .await
        .expect("patch");
    assert_eq!(granted.status(), 201);
    let allowed = server.http.get(server.fn_url("net", &target)).send().await.expect("call");
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.expect("body"), "ok\n");
}

#[tokio::test]
async fn log_output_past_the_limit_is_dropped_and_recorded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--log-limit", "1KiB"]);
    server.deploy("chatty", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let response = server.http.get(server.fn_url("chatty", "/log?lines=500")).send().await.expect("call");
    assert_eq!(response.status(), 200, "the call itself succeeds");
    let id = header(&response, "amphi-invocation-id").to_string();
    let record = server.record(&id).await;
    assert_eq!(record["invocation"]["log_truncated"], true);
    let lines = record["logs"].as_array().expect("lines");
    let kept: usize = lines
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["line"].as_str().map_or(0, str::len))
        .sum();
    assert!(kept <= 1024, "kept {kept} bytes");
    assert!(
        lines.iter().any(|l: &Value| l["stream"] == "platform"
            && l["line"].as_str().is_some_and(|t| t.contains("truncated")))
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_stops_the_function() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("spin", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "timeout_ms": 20000 })).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client");
    let started = Instant::now();
    assert!(impatient.get(server.fn_url("spin", "/loop")).send().await.is_err(), "the client gave up");
    // The record is written when the guest stops: long before its 20 s timeout.
    let records =
        server.wait_for("/invocations?function=spin", |v| v.as_array().is_some_and(|a| !a.is_empty())).await;
    assert!(started.elapsed() < Duration::from_secs(10), "stopped after {:?}", started.elapsed());
    assert_eq!(records[0]["status"], 499);
    assert_eq!(records[0]["outcome"], "platform_error");
}
