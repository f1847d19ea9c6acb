//! Issue 11's hardening, played against the real server: what a hostile container, guest or
//! client tries, and that it fails. Each test names the point of the issue it covers.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::docker::{containers_of, deploy, start, stop_and_check_clean, wait_instances};
use support::header;
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
