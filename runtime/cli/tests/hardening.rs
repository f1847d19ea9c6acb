//! Issue 11's hardening, played against the real server: what a hostile container, guest or
//! client tries, and that it fails. Each test names the point of the issue it covers.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{Value, json};
use support::docker::{containers_of, deploy, start, stop_and_check_clean, wait_instances};
use support::{TestServer, header};
use tokio::io::AsyncWriteExt as _;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A Unix socket on the host that counts who reaches it and answers like a server would.
fn canary(dir: &Path) -> (PathBuf, Arc<AtomicUsize>) {
    let path = dir.join("canary.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the canary");
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncanary").await;
        }
    });
    (path, reached)
}

/// Point 1: a function that swaps the shim's socket for a link to a host socket (the engine's,
/// in a real attack) must not get the gateway to connect there, even running as root.
#[tokio::test]
async fn a_container_cannot_point_the_gateway_at_a_host_socket() {
    let (docker, temp, server) = start().await;
    let canary_dir = tempfile::tempdir().expect("tempdir");
    let (canary, reached) = canary(canary_dir.path());
    let env = format!("CANARY={}", canary.display());
    deploy(&server, "swap", &fixture("socket-swap"), &["--user", "0", "--env", &env]);

    for _ in 0..3 {
        let response = server.get("swap", "/version").await;
        let status = response.status().as_u16();
        let id = header(&response, "amphi-invocation-id").to_string();
        let body = response.text().await.expect("body");
        assert!(status == 502 || status == 503, "the call got {status}: {body}");
        assert!(body.contains("refusing the instance's socket"), "{body}");
        let record = server.record(&id).await;
        assert_eq!(record["invocation"]["outcome"], "function_error", "{record}");
        assert!(
            record["invocation"]["error"].as_str().is_some_and(|e| e.contains("symbolic link")),
            "{record}"
        );
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the gateway connected to the host's socket");

    // An image that would run as root runs as nobody unless root is asked for.
    deploy(&server, "rootless", &fixture("socket-swap"), &["--min-instances", "1"]);
    let running = wait_instances(&server, "rootless", |i| i.len() == 1).await;
    assert_eq!(running[0]["state"], "running");
    let listing = server.get("rootless", "/").await;
    assert_eq!(listing.status(), 200);
    let containers = containers_of(&docker, temp.path()).await;
    let id = containers
        .iter()
        .find(|c| c.labels.as_ref().and_then(|l| l.get("amphi.function")).is_some_and(|f| f == "rootless"))
        .and_then(|c| c.id.clone())
        .expect("the rootless instance");
    let inspected = docker.inspect_container(&id, None).await.expect("inspect");
    let user = inspected.config.and_then(|c| c.user).unwrap_or_default();
    assert_eq!(user, "65534:65534");
    stop_and_check_clean(server, &docker).await;
}

/// Point 7: PATCH is a JSON merge patch (RFC 7396) applied under the deploy lock: what it does not
/// name keeps its value, `null` removes, and concurrent PATCHes lose nothing.
#[tokio::test]
async fn patch_changes_only_what_it_names_and_concurrent_patches_lose_nothing() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let config = json!({
        "timeout_ms": 5000,
        "concurrency": 7,
        "env": { "A": "1", "B": "2" },
        "container": { "pids_limit": 100, "cpu_millis": 500, "max_instances": 3 },
    });
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, config).await;

    let patched =
        patch(&server, "f", json!({ "env": { "B": null, "C": "3" }, "container": { "port": 9090 } })).await;
    let config = &patched["config"];
    assert_eq!(config["env"], json!({ "A": "1", "C": "3" }), "{patched}");
    assert_eq!(config["timeout_ms"], 5000);
    assert_eq!(config["concurrency"], 7);
    assert_eq!(config["container"]["pids_limit"], 100, "{patched}");
    assert_eq!(config["container"]["cpu_millis"], 500);
    assert_eq!(config["container"]["max_instances"], 3);
    assert_eq!(config["container"]["port"], 9090);
    let reset = patch(&server, "f", json!({ "timeout_ms": null })).await;
    assert_eq!(reset["config"]["timeout_ms"], 30_000, "null resets to the default");

    let patches = (0..10).map(|i| patch(&server, "f", json!({ "env": { format!("K{i}"): "x" } })));
    futures::future::join_all(patches).await;
    let described: Value =
        server.admin(Method::GET, "/functions/f").send().await.expect("get").json().await.expect("json");
    let env = described["function"]["config"]["env"].as_object().expect("env").clone();
    for i in 0..10 {
        assert!(env.contains_key(&format!("K{i}")), "K{i} was lost: {env:?}");
    }

    let refused =
        server.admin(Method::PATCH, "/functions/f").json(&json!([1, 2])).send().await.expect("patch");
    assert_eq!(refused.status(), 400);
    let refused = server
        .admin(Method::PATCH, "/functions/f")
        .json(&json!({ "container": { "pids_limit": "many" } }))
        .send()
        .await
        .expect("patch");
    assert_eq!(refused.status(), 400);
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
}

async fn patch(server: &TestServer, name: &str, body: Value) -> Value {
    let response =
        server.admin(Method::PATCH, &format!("/functions/{name}")).json(&body).send().await.expect("patch");
    assert_eq!(response.status(), 201, "PATCH {body}");
    response.json().await.expect("json")
}

/// Point 13: a name deployed again after a delete goes on counting its versions, so the old
/// function's records are never taken for the new one's.
#[tokio::test]
async fn versions_keep_counting_after_a_delete() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let wasm = amphi_guest_artifacts::RUST_HTTP_COMPONENT;
    assert_eq!(server.deploy("f", wasm, json!({})).await["version"], 1);
    let old = server.get("f", "/").await;
    let old_id = header(&old, "amphi-invocation-id").to_string();
    let deleted = server.admin(Method::DELETE, "/functions/f").send().await.expect("delete");
    assert!(deleted.status().is_success());
    assert_eq!(server.deploy("f", wasm, json!({})).await["version"], 2);
    let new = server.get("f", "/").await;
    let new_id = header(&new, "amphi-invocation-id").to_string();
    assert_eq!(server.record(&old_id).await["invocation"]["version"], 1);
    assert_eq!(server.record(&new_id).await["invocation"]["version"], 2);
}
