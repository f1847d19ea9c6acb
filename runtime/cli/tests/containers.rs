//! Container functions against the real Docker engine: the examples in `guest-examples/containers`
//! built from their Dockerfiles, called over HTTP, their logs and records read through the same
//! API as wasm functions; the pool (reserved, scale-out, queue, pause, removal), failures (crash,
//! memory, timeout), clean-up across restarts, and the engine going away.
//!
//! Needs a Docker engine and the base image `debian:bookworm-slim` (`.ci/test-all` provides both;
//! by hand: `guest-examples/containers/base-images.sh`).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::docker::{
    containers_of, deploy, engine, example, instances, start, stop_and_check_clean, wait_containers,
    wait_instances,
};
use support::{TestServer, header, stderr, stdout};

fn start_kind(response: &reqwest::Response) -> String {
    let timing = header(response, "server-timing");
    timing.split("desc=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("").to_string()
}

#[tokio::test]
async fn python_function_from_its_dockerfile_serves_the_contract_warm_from_a_reserved_instance() {
    let (docker, temp, server) = start().await;
    let deployed =
        deploy(&server, "py", &example("python-http"), &["--min-instances", "1", "--env", "GREETING=hi"]);
    assert_eq!(deployed["kind"], "container-image");

    // The reserved instance is ready before the first call.
    let ready = instances(&server, "py").await;
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0]["state"], "running");

    let response = server.get("py", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "amphi-backend"), "container");
    assert_eq!(header(&response, "amphi-cold-start"), "false");
    assert_eq!(start_kind(&response), "warm");
    let id = header(&response, "amphi-invocation-id").to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["invocation"], id.as_str(), "the function received the contract's headers");

    // The sandbox: no network but loopback, a read-only root with a writable /tmp, no
    // capabilities, no new privileges, the pids and memory limits.
    let sandbox: Value = server.get_json("py", "/sandbox").await;
    assert_eq!(sandbox["interfaces"], json!(["lo"]), "{sandbox}");
    assert_eq!(sandbox["root_writable"], false, "{sandbox}");
    assert_eq!(sandbox["tmp_writable"], true, "{sandbox}");
    assert_eq!(sandbox["capabilities"], "0000000000000000", "{sandbox}");
    assert_eq!(sandbox["no_new_privs"], "1", "{sandbox}");
    assert_eq!(sandbox["pids_max"], "256", "the default pids limit: {sandbox}");
    assert_eq!(sandbox["memory_max"], (128u64 << 20).to_string(), "the default memory limit: {sandbox}");
    deploy(&server, "py-net", &example("python-http"), &["--network"]);
    let granted: Value = server.get_json("py-net", "/sandbox").await;
    assert_eq!(granted["interfaces"], json!(["eth0", "lo"]), "--network grants one: {granted}");

    let env: Value = server.get_json("py", "/env").await;
    assert_eq!(env["GREETING"], "hi");
    let echoed =
        server.http.post(server.fn_url("py", "/echo")).body("round trip").send().await.expect("call");
    assert_eq!(echoed.text().await.expect("body"), "round trip");

    // Log lines are attributed to the call that wrote them, in the same store and shape as wasm.
    let logged = server.get("py", "/log?lines=2").await;
    let log_id = header(&logged, "amphi-invocation-id").to_string();
    let record = server.record(&log_id).await;
    assert_eq!(record["invocation"]["backend"], "container");
    assert_eq!(record["invocation"]["start"], "warm");
    assert_eq!(record["invocation"]["outcome"], "success");
    let lines: Vec<(String, String)> = record["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| {
            (l["stream"].as_str().unwrap_or("").to_string(), l["line"].as_str().unwrap_or("").to_string())
        })
        .collect();
    for expected in [("stdout", "line 0"), ("stdout", "line 1"), ("stderr", "to stderr")] {
        assert!(
            lines.iter().any(|(s, l)| s == expected.0 && l == expected.1),
            "{expected:?} missing from {lines:?}"
        );
    }
    // The build's output and the instance's start-up line are in the function's log too.
    let all = server.cli(&["logs", "py", "--limit", "1000"]);
    assert!(stdout(&all).contains("build"), "{}", stdout(&all));
    assert!(stdout(&all).contains("python function starting"), "{}", stdout(&all));

    // Redeploying drains the old version's instance and starts the new one's.
    let old = ready[0]["id"].as_str().expect("id").to_string();
    deploy(&server, "py", &example("python-http"), &["--min-instances", "1"]);
    let now = wait_instances(&server, "py", |i| i.len() == 1 && i[0]["id"] != old.as_str()).await;
    assert_eq!(now[0]["state"], "running");
    // The old instance is removed once its pool has drained.
    let of_py = |containers: &[bollard::models::ContainerSummary]| {
        containers
            .iter()
            .filter(|c| c.labels.as_ref().and_then(|l| l.get("amphi.function")).is_some_and(|f| f == "py"))
            .count()
    };
    wait_containers(&docker, temp.path(), |c| of_py(c) == 1).await;
    stop_and_check_clean(server, &docker).await;
}

/// A 64×48 picture as binary PPM, which ImageMagick reads.
fn ppm(width: usize, height: usize) -> Vec<u8> {
    let mut image = format!("P6\n{width} {height}\n255\n").into_bytes();
    for i in 0..width * height {
        image.extend_from_slice(&[(i % width * 4) as u8, (i / width * 5) as u8, 128]);
    }
    image
}

#[tokio::test]
async fn thumbnail_runs_imagemagick_as_cgi_cold_then_warm() {
    let (docker, _temp, server) = start().await;
    deploy(&server, "thumbnail", &example("thumbnail"), &[]);
    assert!(instances(&server, "thumbnail").await.is_empty(), "min_instances 0: nothing runs before a call");

    let response = server
        .http
        .post(server.fn_url("thumbnail", "/?width=32&format=png"))
        .body(ppm(64, 48))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "image/png");
    assert_eq!(start_kind(&response), "cold");
    let id = header(&response, "amphi-invocation-id").to_string();
    let png = response.bytes().await.expect("body");
    assert_eq!(&png[1..4], b"PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().expect("width")),
        u32::from_be_bytes(png[20..24].try_into().expect("height")),
    );
    assert_eq!((width, height), (32, 24), "scaled down, aspect kept");
    let record = server.record(&id).await;
    assert_eq!(record["invocation"]["start"], "cold");
    assert_eq!(record["invocation"]["cold_start"], true);
    assert!(record["invocation"]["init_us"].as_u64().expect("init") > 0);
    assert_eq!(record["logs"][0]["line"], "thumbnail: 32x24 png", "{record}");

    let second =
        server.http.post(server.fn_url("thumbnail", "/")).body("not an image").send().await.expect("call");
    assert_eq!(second.status(), 422, "the function's own status passes through");
    assert_eq!(start_kind(&second), "warm");
    stop_and_check_clean(server, &docker).await;
}

#[tokio::test]
async fn static_binary_in_a_scratch_image() {
    let (docker, _temp, server) = start().await;
    deploy(&server, "hello", &example("static-hello"), &[]);
    let response = server.http.post(server.fn_url("hello", "/a/b?c=d")).body("x").send().await.expect("call");
    assert_eq!(response.status(), 200);
    let id = header(&response, "amphi-invocation-id").to_string();
    let body = response.text().await.expect("body");
    assert_eq!(body, format!("hello from a static binary in a scratch image: POST /a/b?c=d ({id})\n"));
    // A container's output reaches the store on its own stream, possibly just after the record.
    let record = server
        .wait_for(&format!("/invocations/{id}"), |v| v["logs"].as_array().is_some_and(|l| !l.is_empty()))
        .await;
    assert_eq!(record["logs"][0]["line"], "static-hello: served POST /a/b?c=d");

    // The same image under a name of its own, deployed by reference: nothing is uploaded.
    let built = server.describe("hello").await;
    let image = built["function"]["digest"].as_str().expect("digest").to_string();
    let tag = bollard::query_parameters::TagImageOptions {
        repo: Some("amphi-test/prebuilt".into()),
        tag: Some("1.2".into()),
    };
    docker.tag_image(&image, Some(tag)).await.expect("tag the image");
    let output = server.cli(&["deploy", "legacy", "--image", "amphi-test/prebuilt:1.2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let legacy = server.get("legacy", "/").await;
    assert_eq!(legacy.status(), 200);
    assert!(legacy.text().await.expect("body").starts_with("hello from a static binary"));
    // Pre-initialization is for wasm; a container initializes in its own process.
    let init = server.cli(&["deploy", "legacy", "--image", "amphi-test/prebuilt:1.2", "--init"]);
    assert!(!init.status.success());
    assert!(stderr(&init).contains("init (pre-initialization) is for wasm functions"), "{}", stderr(&init));
    assert_eq!(
        server.describe("legacy").await["function"]["version"],
        1,
        "the refused deploy changed nothing"
    );
    let missing = server.cli(&["deploy", "ghost", "--image", "amphi-test/no-such-image:0"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no image `amphi-test/no-such-image:0` on the Docker engine"),
        "{}",
        stderr(&missing)
    );
    stop_and_check_clean(server, &docker).await;
}

#[tokio::test]
async fn a_broken_dockerfile_names_its_failing_step_and_escaping_contexts_are_refused() {
    let (_docker, _temp, server) = start().await;

    let context = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\nRUN echo about to fail && exit 7\nCMD [\"true\"]\n",
    )
    .expect("write");
    let output = server.cli(&["deploy", "broken", context.path().to_str().expect("path"), "--dockerfile"]);
    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(said.contains("422"), "{said}");
    assert!(said.contains("Step 2/"), "the failing step is named: {said}");
    assert!(said.contains("about to fail"), "the step's output is shown: {said}");
    let listed: Value =
        server.admin(Method::GET, "/functions").send().await.expect("list").json().await.expect("json");
    assert_eq!(listed, json!([]), "nothing was deployed");
    // Without a streaming Accept header, the API answers once: the problem names the step.
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", context.path()).expect("pack");
    let answer = server
        .admin(Method::POST, "/artifacts?function=broken")
        .body(archive.into_inner().expect("tar"))
        .send()
        .await
        .expect("upload");
    assert_eq!(answer.status(), 422);
    let problem: Value = answer.json().await.expect("problem");
    let detail = problem["detail"].as_str().unwrap_or("");
    assert!(detail.contains("Step 2/") && detail.contains("about to fail"), "{problem}");
    let build_log = server.cli(&["logs", "broken"]);
    assert!(stdout(&build_log).contains("the build failed at Step 2/"), "{}", stdout(&build_log));

    // Contexts are checked before the engine sees them.
    let cases: [(&str, tar::EntryType, &str, &str); 3] = [
        ("../escape", tar::EntryType::Regular, "", "`..`"),
        ("link", tar::EntryType::Symlink, "/etc/shadow", "outside the build context"),
        ("sub/link", tar::EntryType::Symlink, "../../etc", "outside the build context"),
    ];
    for (path, kind, target, expected) in cases {
        let mut archive = tar::Builder::new(Vec::new());
        let mut dockerfile = tar::Header::new_gnu();
        dockerfile.set_size(11);
        dockerfile.set_mode(0o644);
        archive.append_data(&mut dockerfile, "Dockerfile", &b"FROM scratch"[..11]).expect("append");
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(0);
        if !target.is_empty() {
            header.set_link_name(target).expect("link target");
        }
        header.set_cksum();
        archive.append(&header, std::io::empty()).expect("append");
        let bytes = archive.into_inner().expect("tar");
        let refused =
            server.admin(Method::POST, "/artifacts?function=evil").body(bytes).send().await.expect("upload");
        assert_eq!(refused.status(), 422, "{path}");
        assert_eq!(header_of(&refused, "content-type"), "application/problem+json");
        let problem: Value = refused.json().await.expect("problem");
        assert!(problem["detail"].as_str().unwrap_or("").contains(expected), "{path}: {problem}");
    }
}

fn header_of(response: &reqwest::Response, name: &str) -> String {
    header(response, name).to_string()
}

#[tokio::test]
async fn calls_scale_out_to_max_instances_then_queue_then_get_429() {
    let (docker, _temp, server) = start().await;
    deploy(
        &server,
        "busy",
        &example("python-http"),
        &[
            "--max-instances",
            "2",
            "--instance-concurrency",
            "1",
            "--concurrency",
            "4",
            "--queue-timeout",
            "3s",
        ],
    );
    // No wait for one of the function's concurrency slots: past them a call is refused at once.
    let patched = server
        .admin(Method::PATCH, "/functions/busy")
        .json(&json!({ "queue_timeout_ms": 0 }))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 201);
    let call = |path: &'static str| {
        let (http, url) = (server.http.clone(), server.fn_url("busy", path));
        tokio::spawn(async move {
            let response = http.get(url).send().await.expect("call");
            let kind = start_kind(&response);
            let timing = header(&response, "server-timing").to_string();
            (response.status().as_u16(), kind, timing)
        })
    };
    // Two slow calls start two instances; the third waits in the queue for one of them.
    let first = call("/sleep?ms=1500");
    let second = call("/sleep?ms=1500");
    server.wait_for("/functions/busy", |f| f["in_flight"] == 2).await;
    let queued = call("/sleep?ms=10");
    let fourth = call("/sleep?ms=10");
    server.wait_for("/functions/busy", |f| f["in_flight"] == 4).await;
    // Beyond the function's concurrency (4 in flight or queued), a call is refused at once.
    let refused = server.get("busy", "/").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let busy = wait_instances(&server, "busy", |i| i.len() == 2).await;
    assert_eq!(busy.len(), 2, "never more than max_instances");

    let (a, b) = (first.await.expect("task"), second.await.expect("task"));
    assert_eq!((a.0, a.1.as_str()), (200, "cold"));
    assert_eq!((b.0, b.1.as_str()), (200, "cold"));
    for waited in [queued.await.expect("task"), fourth.await.expect("task")] {
        assert_eq!((waited.0, waited.1.as_str()), (200, "warm"), "served after waiting: {waited:?}");
        let queue_ms: f64 = waited
            .2
            .split("queue;dur=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.parse().ok())
            .expect("queue time");
        assert!(queue_ms > 100.0, "it waited in the queue: {waited:?}");
    }
    assert_eq!(instances(&server, "busy").await.len(), 2);

    // With a short queue timeout, a caller that cannot get an instance in time gets 429.
    let output = server.cli(&[
        "deploy",
        "busy",
        example("python-http").to_str().expect("path"),
        "--dockerfile",
        "--max-instances",
        "1",
        "--queue-timeout",
        "300ms",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let slow = call("/sleep?ms=3000");
    wait_instances(&server, "busy", |i| i.len() == 1 && i[0]["in_flight"] == 1).await;
    let started = Instant::now();
    let late = server.get("busy", "/").await;
    assert_eq!(late.status(), 429);
    assert!(started.elapsed() >= Duration::from_millis(280), "it waited for its queue timeout");
    let problem: Value = late.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("busy"), "{problem}");
    assert_eq!(slow.await.expect("task").0, 200);
    stop_and_check_clean(server, &docker).await;
}

#[tokio::test]
async fn idle_instances_are_paused_resumed_on_demand_and_removed() {
    let (docker, temp, server) = start().await;
    deploy(&server, "idle", &example("python-http"), &["--pause-after", "300ms", "--idle-timeout", "2s"]);
    let first = server.get("idle", "/").await;
    assert_eq!(start_kind(&first), "cold");

    let paused = wait_instances(&server, "idle", |i| i.len() == 1 && i[0]["state"] == "paused").await;
    let id = paused[0]["id"].as_str().expect("id").to_string();
    let containers = containers_of(&docker, temp.path()).await;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].state.as_ref().map(|s| format!("{s:?}").to_lowercase()), Some("paused".into()));

    let resumed = server.get("idle", "/").await;
    assert_eq!(resumed.status(), 200);
    assert_eq!(start_kind(&resumed), "unpause");
    let record = server.record(header(&resumed, "amphi-invocation-id")).await;
    assert_eq!(record["invocation"]["start"], "unpause");
    assert_eq!(instances(&server, "idle").await[0]["id"], id.as_str(), "the same instance, resumed");

    // Paused again, then removed after the idle timeout: scale to zero.
    wait_instances(&server, "idle", |i| i.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !containers_of(&docker, temp.path()).await.is_empty() {
        assert!(Instant::now() < deadline, "the idle container was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cold_again = server.get("idle", "/").await;
    assert_eq!(start_kind(&cold_again), "cold");
    stop_and_check_clean(server, &docker).await;
}

#[tokio::test]
async fn crash_memory_limit_and_timeout_give_their_statuses_and_records_and_a_replacement() {
    let (docker, temp, server) = start().await;
    // The timeout also covers the replacement's cold start, which takes longer while the other
    // tests of this file start containers too.
    deploy(&server, "fragile", &example("python-http"), &["--memory", "48MiB", "--timeout", "3s"]);

    let cases = [
        ("/crash", 502, "function_error", "exited with code 3"),
        ("/alloc?mb=200", 502, "function_error", "out of memory"),
        ("/sleep?ms=8000", 504, "timeout", "timeout of 3000ms"),
    ];
    for (path, status, outcome, says) in cases {
        let failed = server.get("fragile", path).await;
        assert_eq!(failed.status(), status, "{path}");
        assert_eq!(header(&failed, "content-type"), "application/problem+json", "{path}");
        let id = header(&failed, "amphi-invocation-id").to_string();
        let problem: Value = failed.json().await.expect("problem");
        assert!(problem["detail"].as_str().unwrap_or("").contains(says), "{path}: {problem}");
        let record = server.record(&id).await;
        assert_eq!(record["invocation"]["outcome"], outcome, "{path}");
        assert!(record["invocation"]["error"].as_str().unwrap_or("").contains(says), "{path}: {record}");
        if path == "/crash" {
            assert!(
                record["invocation"]["error"].as_str().unwrap_or("").contains("crashing on purpose"),
                "the last log lines are in the record: {record}"
            );
        }
        // A new instance replaces the broken one.
        let next = server.get("fragile", "/").await;
        assert_eq!(next.status(), 200, "after {path}");
        assert_eq!(start_kind(&next), "cold", "after {path}");
    }
    // Broken instances are removed.
    wait_containers(&docker, temp.path(), |c| c.len() == 1).await;
    stop_and_check_clean(server, &docker).await;
}

#[tokio::test]
async fn a_restart_after_a_crash_of_amphi_leaves_no_orphan_containers() {
    let docker = engine().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    deploy(&server, "kept", &example("python-http"), &["--min-instances", "1"]);
    let before = containers_of(&docker, temp.path()).await;
    assert_eq!(before.len(), 1);
    server.kill();
    assert_eq!(containers_of(&docker, temp.path()).await.len(), 1, "SIGKILL leaves the container running");

    let server = TestServer::start(temp.path());
    let now = wait_instances(&server, "kept", |i| i.len() == 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let containers = containers_of(&docker, temp.path()).await;
        let ids: Vec<_> = containers.iter().filter_map(|c| c.id.clone()).collect();
        if ids.len() == 1 && !ids.contains(before[0].id.as_ref().expect("id")) {
            break;
        }
        assert!(Instant::now() < deadline, "the orphan was not removed: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now[0]["state"], "running");
    let response = server.get("kept", "/").await;
    assert_eq!(response.status(), 200);
    stop_and_check_clean(server, &docker).await;
}

/// A Unix socket that forwards to the real engine's, and can be cut and restored.
struct EngineProxy {
    socket: PathBuf,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

impl EngineProxy {
    fn start(socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the proxy socket");
        let tasks = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                connections.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Self { socket: socket.to_path_buf(), tasks: Some(tasks) }
    }

    /// Cuts every connection and stops answering, as a stopped engine does.
    fn cut(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

// Multi-threaded: the engine proxy must keep forwarding while the test waits on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_engine_container_functions_get_503_wasm_keeps_working_and_amphi_reconnects() {
    let docker = engine().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let socket = temp.path().join("engine.sock");
    let mut proxy = EngineProxy::start(&socket);
    let host = format!("unix://{}", socket.display());
    let data = temp.path().join("data");
    let server = TestServer::start_with_env(&data, &[], &[("DOCKER_HOST", &host)]);
    deploy(&server, "py", &example("python-http"), &["--idle-timeout", "1s", "--pause-after", "1s"]);
    server.deploy("wasm", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    assert_eq!(server.get("py", "/").await.status(), 200);
    wait_instances(&server, "py", |i| i.is_empty()).await;

    proxy.cut();
    let down = server.get("py", "/").await;
    assert_eq!(down.status(), 503);
    assert_eq!(header(&down, "content-type"), "application/problem+json");
    let problem: Value = down.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("Docker engine"), "{problem}");
    assert_eq!(server.get("wasm", "/").await.status(), 200);
    let output =
        server.cli(&["deploy", "py2", example("python-http").to_str().expect("path"), "--dockerfile"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("503"), "{}", stderr(&output));

    let _proxy = EngineProxy::start(&socket);
    let back = server.get("py", "/").await;
    assert_eq!(back.status(), 200, "reconnected once the engine is back");
    stop_and_check_clean(server, &docker).await;
}
