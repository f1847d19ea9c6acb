//! Helpers for tests against the real Docker engine: the engine (checked to answer, with the base
//! image), deploying example directories through the CLI, and the containers a server left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use serde_json::Value;

use super::{TestServer, stderr, stdout};

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-examples/containers").join(name)
}

/// The engine, checked to answer and to have the base image; a missing prerequisite fails loudly.
pub async fn engine() -> Docker {
    let docker = Docker::connect_with_local_defaults()
        .expect("a Docker engine socket (install and start one: apt-get install docker.io; dockerd; or run .ci/test-all)");
    let docker = docker.negotiate_version().await.expect("the Docker engine answers (is dockerd running?)");
    docker.inspect_image("debian:bookworm-slim").await.expect(
        "the base image debian:bookworm-slim is on the engine (run guest-examples/containers/base-images.sh)",
    );
    docker
}

/// The engine, a fresh data directory, and a server on it.
pub async fn start() -> (Docker, tempfile::TempDir, TestServer) {
    let docker = engine().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    (docker, temp, server)
}

/// Containers the server with data directory `data` has on the engine.
pub async fn containers_of(docker: &Docker, data: &Path) -> Vec<bollard::models::ContainerSummary> {
    let installation = std::fs::read_to_string(data.join("installation-id")).expect("installation id");
    let filters =
        HashMap::from([("label".to_string(), vec![format!("amphi.installation={}", installation.trim())])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
}

/// Waits (up to 20 s) until the containers of the server with data directory `data` satisfy
/// `done`, and returns them.
pub async fn wait_containers(
    docker: &Docker,
    data: &Path,
    done: impl Fn(&[bollard::models::ContainerSummary]) -> bool,
) -> Vec<bollard::models::ContainerSummary> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let containers = containers_of(docker, data).await;
        if done(&containers) {
            return containers;
        }
        let ids: Vec<_> = containers.iter().filter_map(|c| c.id.as_deref()).collect();
        assert!(std::time::Instant::now() < deadline, "timed out waiting on the containers; now {ids:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Deploys `dir` through the CLI (packing, building, progress) with extra flags.
pub fn deploy(server: &TestServer, name: &str, dir: &Path, flags: &[&str]) -> Value {
    let mut args = vec!["deploy", name, dir.to_str().expect("utf-8 path"), "--dockerfile", "--json"];
    args.extend_from_slice(flags);
    let output = server.cli(&args);
    assert!(output.status.success(), "deploy {name} failed: {}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("deploy prints JSON")
}

pub async fn instances(server: &TestServer, name: &str) -> Vec<Value> {
    server.describe(name).await["instances"].as_array().cloned().unwrap_or_default()
}

pub async fn wait_instances(server: &TestServer, name: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = instances(server, name).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "instances of {name} never got there: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the server and checks it left no container behind.
pub async fn stop_and_check_clean(mut server: TestServer, docker: &Docker) {
    server.stop();
    let left = containers_of(docker, &server.data).await;
    assert!(left.is_empty(), "containers left after shutdown: {left:?}");
}
