//! Redeploy, config update, delete, graceful shutdown, and a restart that keeps everything and
//! compiles nothing again.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

#[tokio::test]
async fn redeploy_makes_a_version_and_in_flight_calls_finish_on_the_old_one() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let wasm = amphi_guest_artifacts::RUST_HTTP_COMPONENT;
    server.deploy("f", wasm, json!({ "env": { "VERSION_TAG": "one" } })).await;

    let in_flight = tokio::spawn({
        let http = server.http.clone();
        let url = server.fn_url("f", "/sleep?ms=800");
        async move { http.get(url).send().await.expect("call").text().await.expect("body") }
    });
    server.wait_for("/functions/f", |f| f["in_flight"] == 1).await;
    let v2 = server.deploy("f", wasm, json!({ "env": { "VERSION_TAG": "two" } })).await;
    assert_eq!(v2["version"], 2);
    let now = server.http.get(server.fn_url("f", "/sleep?ms=1")).send().await.expect("call");
    assert_eq!(now.text().await.expect("body"), "two");
    assert_eq!(in_flight.await.expect("task"), "one", "the call that started on v1 finished on v1");

    // PATCH changes config fields only, as a new version of the same artifact.
    let patched: Value = server
        .admin(Method::PATCH, "/functions/f")
        .json(&json!({ "timeout_ms": 1234 }))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(patched["version"], 3);
    assert_eq!(patched["config"]["timeout_ms"], 1234);
    assert_eq!(patched["config"]["env"]["VERSION_TAG"], "two");
    assert_eq!(patched["digest"], v2["digest"]);

    let described: Value =
        server.admin(Method::GET, "/functions/f").send().await.expect("call").json().await.expect("json");
    assert_eq!(described["versions"].as_array().expect("versions").len(), 3);
    let call = server.http.get(server.fn_url("f", "/inspect")).send().await.expect("call");
    let seen: Value = call.json().await.expect("json");
    assert!(seen["headers"].to_string().contains("\"amphi-function-version\",\"3\""));

    let deleted = server.admin(Method::DELETE, "/functions/f").send().await.expect("call");
    assert_eq!(deleted.status(), 204);
    let gone = server.http.get(server.fn_url("f", "/")).send().await.expect("call");
    assert_eq!(gone.status(), 404);
    let again = server.admin(Method::DELETE, "/functions/f").send().await.expect("call");
    assert_eq!(again.status(), 404);
    let listed: Value =
        server.admin(Method::GET, "/functions").send().await.expect("call").json().await.expect("json");
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn restart_keeps_functions_and_logs_without_recompiling() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    server.deploy("http", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "timeout_ms": 4000 })).await;
    server.deploy("cgi", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;
    let logged = server.http.get(server.fn_url("http", "/log?lines=3")).send().await.expect("call");
    let logged_id = header(&logged, "amphi-invocation-id").to_string();
    let stats: Value =
        server.admin(Method::GET, "/stats").send().await.expect("call").json().await.expect("json");
    assert_eq!(stats["wasm"]["compiled"], 2, "each artifact compiled once, at deploy");
    server.stop();

    let server = TestServer::start(temp.path());
    let listed: Value =
        server.admin(Method::GET, "/functions").send().await.expect("call").json().await.expect("json");
    let names: Vec<&str> =
        listed.as_array().expect("list").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["cgi", "http"]);
    assert_eq!(listed[1]["config"]["timeout_ms"], 4000);

    let first = server.http.get(server.fn_url("http", "/")).send().await.expect("call");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "amphi-cold-start"), "true", "the first call after a restart loads the code");
    let second = server.http.get(server.fn_url("http", "/")).send().await.expect("call");
    assert_eq!(header(&second, "amphi-cold-start"), "false");
    let cgi = server.http.get(server.fn_url("cgi", "/")).send().await.expect("call");
    assert_eq!(cgi.status(), 200);
    let stats: Value =
        server.admin(Method::GET, "/stats").send().await.expect("call").json().await.expect("json");
    assert_eq!(stats["wasm"]["compiled"], 0, "nothing compiled after the restart");
    assert_eq!(stats["wasm"]["loaded_from_disk"], 2);

    let record = server.record(&logged_id).await;
    assert_eq!(record["invocation"]["status"], 200);
    let lines: Vec<&str> =
        record["logs"].as_array().expect("lines").iter().filter_map(|l| l["line"].as_str()).collect();
    assert_eq!(lines, ["line 0 to stdout", "line 1 to stdout", "line 2 to stdout", "a line to stderr"]);
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    server
        .deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "env": { "VERSION_TAG": "done" } }))
        .await;
    let in_flight = tokio::spawn({
        let http = server.http.clone();
        let url = server.fn_url("f", "/sleep?ms=700");
        async move { http.get(url).send().await.expect("call").text().await.expect("body") }
    });
    server.wait_for("/functions/f", |f| f["in_flight"] == 1).await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || server.stop()).await.expect("stopped");
    assert_eq!(in_flight.await.expect("task"), "done", "the call in flight at SIGTERM completed");
    assert!(reqwest::get(format!("{url}/healthz")).await.is_err(), "no longer listening");
}
