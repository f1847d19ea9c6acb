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
        if record["invocation"]["error"].as_str().is_some_and(|e| e.contains("did not start")) {
            assert_eq!(record["invocation"]["start"], "cold", "a failed start is a cold one: {record}");
        }
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
    let described = server.describe("f").await;
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

/// Sends `head` on a new connection and returns the stream, for clients a library would not be.
async fn raw(server: &TestServer, head: &str) -> tokio::net::TcpStream {
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

/// Reads until the connection closes or `limit` passes.
async fn read_all(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&seen).contains("\"status\":408") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// Point 3: a client trickling its body holds no concurrency slot and eats no part of the
/// function's timeout; it gets 408 after the body timeout. Memory is not reserved on the word of
/// a Content-Length.
#[tokio::test]
async fn a_slow_body_holds_no_slot_and_gets_408() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--body-timeout", "1s"]);
    // A call holds its slot until the guest has returned, which may be a moment after the client
    // has read the response: a short queue wait absorbs that, and is still half the time a slow
    // body would hold the slot if it took one (the body timeout, 1 s).
    let config = json!({ "concurrency": 1, "queue_timeout_ms": 500 });
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, config).await;

    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(
            raw(&server, "POST /fn/f/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 16000000\r\n\r\nx").await,
        );
    }
    // Meanwhile the function's one slot is free for a caller that sends its request whole.
    for _ in 0..5 {
        let response = server.get("f", "/").await;
        assert_eq!(response.status(), 200, "a slow body held the slot");
        response.bytes().await.expect("the whole response");
    }
    for mut stream in slow {
        let answer = read_all(&mut stream, std::time::Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("--body-timeout"), "{answer}");
    }
    // Each is recorded, and the time spent waiting for the body is not the function's.
    server
        .wait_for("/invocations?function=f", |v| {
            v.as_array().is_some_and(|r| r.iter().filter(|i| i["status"] == 408).count() == 3)
        })
        .await;
}

/// Point 2: a long request target is refused with 414 past 8 KiB, and what a record keeps of a
/// path is cut at 2 KiB and marked; header fields past 64 KiB get 431. Both as problem+json.
#[tokio::test]
async fn long_targets_and_headers_are_refused_and_records_keep_a_bounded_path() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;

    let too_long = server.get("f", &format!("/{}", "a".repeat(9000))).await;
    assert_eq!(too_long.status(), 414);
    assert_eq!(header(&too_long, "content-type"), "application/problem+json");

    let long = server.get("f", &format!("/{}", "b".repeat(7000))).await;
    assert_eq!(long.status(), 404, "the guest has no such route, but it was called");
    let id = header(&long, "amphi-invocation-id").to_string();
    let record = server.record(&id).await;
    let path = record["invocation"]["path"].as_str().expect("path");
    assert!(path.len() < 2100, "the record kept {} bytes of the path", path.len());
    assert!(path.ends_with("[cut: 7001 bytes in all]"), "{path}");

    let mut request = server.http.get(server.fn_url("f", "/"));
    for i in 0..7 {
        request = request.header(format!("x-big-{i}"), "c".repeat(10_000));
    }
    let too_big = request.send().await.expect("send");
    assert_eq!(too_big.status(), 431);
    assert_eq!(header(&too_big, "content-type"), "application/problem+json");
}

/// Point 12: a burst beyond a function's concurrency waits for a slot (`queue_timeout_ms`, 10 s
/// by default) instead of being refused; with no patience it is refused at once.
#[tokio::test]
async fn a_burst_beyond_concurrency_is_queued_and_served() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "concurrency": 2 })).await;
    let statuses = concurrent_statuses(&server, "f", "/sleep?ms=20", 64).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    server
        .deploy(
            "g",
            amphi_guest_artifacts::RUST_HTTP_COMPONENT,
            json!({ "concurrency": 1, "queue_timeout_ms": 0 }),
        )
        .await;
    let statuses = concurrent_statuses(&server, "g", "/sleep?ms=300", 4).await;
    assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
}

/// The statuses of `count` calls of `GET /fn/{name}{path}` sent at once.
async fn concurrent_statuses(server: &TestServer, name: &str, path: &str, count: usize) -> Vec<u16> {
    let calls = (0..count).map(|_| server.http.get(server.fn_url(name, path)).send());
    futures::future::join_all(calls).await.into_iter().map(|r| r.expect("call").status().as_u16()).collect()
}

/// Point 14: the small ones, each seen on the running server.
#[tokio::test]
async fn small_holes_are_closed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("cgi", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;

    // httpoxy: a `Proxy:` header never becomes HTTP_PROXY.
    let inspected: Value = server
        .http
        .get(server.fn_url("cgi", "/inspect"))
        .header("proxy", "http://evil.example:3128")
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert!(inspected["env"].get("HTTP_PROXY").is_none(), "{inspected}");

    // A CR LF hidden in the path is refused before any function sees it.
    let crlf = server.get("cgi", "/a%0d%0aSet-Cookie:%20x").await;
    assert_eq!(crlf.status(), 400);
    assert_eq!(header(&crlf, "content-type"), "application/problem+json");

    // Every response carries an invocation id, the unknown function's 404 included.
    let unknown = server.get("nope", "/").await;
    assert_eq!(unknown.status(), 404);
    assert!(!header(&unknown, "amphi-invocation-id").is_empty());

    // The scheme of a credential is case-insensitive.
    let lower = server
        .http
        .get(format!("{}/v1/functions", server.url))
        .header("authorization", format!("bearer {}", support::TOKEN))
        .send()
        .await
        .expect("admin");
    assert_eq!(lower.status(), 200);

    // The data directory is private: the token, the registry (functions' env) and the logs.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(temp.path()), 0o700);
    for file in ["registry.db", "logs.db"] {
        assert_eq!(mode(&temp.path().join(file)), 0o600, "{file}");
    }
}

/// Point 10: a component still streaming when its timeout comes has its body cut off as an
/// error the client sees, never ended as if complete; the record says why.
#[tokio::test]
async fn a_body_cut_by_the_timeout_is_aborted_not_ended() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let config = json!({ "timeout_ms": 500 });
    server.deploy("s", amphi_guest_artifacts::CONFORMANCE_SDK_COMPONENT, config).await;
    let response = server.get("s", "/stream?chunks=20&delay_ms=100").await;
    assert_eq!(response.status(), 200, "the head went out before the timeout");
    let id = header(&response, "amphi-invocation-id").to_string();
    let body = response.bytes().await;
    assert!(body.is_err(), "the cut body looked complete: {body:?}");
    let record = server.record(&id).await;
    assert_eq!(record["invocation"]["outcome"], "timeout", "{record}");
    assert!(record["invocation"]["error"].as_str().is_some_and(|e| e.contains("after the response started")));
}

/// A core module with one exported function whose body nests `depth` loops, and `functions`
/// more empty functions: the two shapes of compile bomb (point 5).
fn compile_bomb(depth: u32, functions: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, TypeSection,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut declared = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    for _ in 0..depth {
        body.instruction(&Instruction::Loop(wasm_encoder::BlockType::Empty));
    }
    for _ in 0..depth {
        body.instruction(&Instruction::End);
    }
    body.instruction(&Instruction::End);
    declared.function(0);
    code.function(&body);
    for _ in 0..functions {
        let mut empty = Function::new([]);
        empty.instruction(&Instruction::End);
        declared.function(0);
        code.function(&empty);
    }
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    let mut module = wasm_encoder::Module::new();
    module.section(&types).section(&declared).section(&exports).section(&code);
    module.finish()
}

/// Point 5: an upload that takes too long or too much memory to compile is refused with 422
/// naming the limit; compiling happens in a worker process, so other uploads and calls go on,
/// a disconnect kills the worker, and shutdown does not wait for it.
#[tokio::test]
async fn compile_bombs_are_refused_by_their_limits_and_never_hold_the_server() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server =
        TestServer::start_with(temp.path(), &["--compile-timeout", "5s", "--compile-memory", "1GiB"]);
    // A function whose code compiles well within the limit, even in a debug build.
    server.deploy("hello", amphi_guest_artifacts::C_CGI_MODULE, json!({})).await;

    let upload = |bytes: Vec<u8>| server.admin(Method::POST, "/artifacts").body(bytes).send();
    let nested = upload(compile_bomb(100_000, 0));
    let meanwhile = async {
        // While the bomb compiles, calls are served and a small upload compiles.
        let call = server.get("hello", "/").await;
        assert_eq!(call.status(), 200);
        let small = upload(compile_bomb(1, 0)).await.expect("upload");
        assert!(small.status().is_success(), "{}", small.text().await.unwrap_or_default());
    };
    let (refused, ()) = tokio::join!(nested, meanwhile);
    let refused = refused.expect("upload");
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.expect("problem");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("--compile-timeout")), "{problem}");

    let many = upload(compile_bomb(1, 900_000)).await.expect("upload");
    assert_eq!(many.status(), 422);
    let problem: Value = many.json().await.expect("problem");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("--compile-")), "{problem}");

    // An uploader that leaves takes its worker with it.
    let leaving =
        tokio::time::timeout(std::time::Duration::from_millis(500), upload(compile_bomb(100_000, 0))).await;
    assert!(leaving.is_err(), "the bomb compiled within 500 ms");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let pid = server.pid().expect("running");
    while workers_running(pid) > 0 {
        assert!(std::time::Instant::now() < deadline, "the compile worker outlived its uploader");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Shutdown does not wait for a compile in progress.
    let pending = tokio::spawn(upload(compile_bomb(100_000, 0)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while workers_running(pid) == 0 {
        assert!(std::time::Instant::now() < deadline, "no compile worker started for the upload");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    server.stop();
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited {:?}",
        stopping.elapsed()
    );
    let _ = pending.await;
    assert_eq!(workers_running(pid), 0, "a compile worker outlived the server");
}

/// Compile workers of the server with process id `server` that are alive (not yet reaped).
fn workers_running(server: u32) -> usize {
    let Ok(processes) = std::fs::read_dir("/proc") else { return 0 };
    processes
        .filter_map(Result::ok)
        .filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            // `pid (comm) state ppid …`: the fields after the command's closing parenthesis.
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split(' ').collect();
            fields.first() != Some(&"Z") && fields.get(1) == Some(&server.to_string().as_str())
        })
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.split(|&b| b == 0).nth(1) == Some(&b"compile-worker"[..]))
        .count()
}

/// Point 9: wasm calls draw on one server-wide memory budget; a call that would take it past
/// the budget gets 503, and what calls held is given back when they end.
#[tokio::test]
async fn wasm_memory_is_bounded_server_wide() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--wasm-memory-budget", "64MiB"]);
    let config = json!({ "memory_bytes": 256u64 << 20 });
    server.deploy("hog", amphi_guest_artifacts::RUST_HTTP_COMPONENT, config).await;
    let hog = server.get("hog", "/grow?mib=100").await;
    assert_eq!(hog.status(), 503, "a call past the server's budget");
    let problem: Value = hog.json().await.expect("problem");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("--wasm-memory-budget")), "{problem}");
    let small = server.get("hog", "/grow?mib=8").await;
    assert_eq!(small.status(), 200, "a call within the budget");
    let stats = server
        .wait_for("/stats", |s| {
            // Ready instances hold their initial memory; no call holds more once it ended.
            s["wasm"]["memory_in_use_bytes"].as_u64().is_some_and(|used| used < 16 << 20)
        })
        .await;
    assert_eq!(stats["wasm"]["memory_budget_bytes"], 64u64 << 20);
}

/// The reliability suite: 1,000 concurrent connections on a default-configured wasm function are
/// all served (queued for a slot, not refused), with no error and no non-2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_on_a_default_function_are_all_served() {
    // This test's own client needs a descriptor per connection too.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    );
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let address = server.url.trim_start_matches("http://").to_string();
    let calls = (0..1000).map(|_| {
        let address = address.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut stream = tokio::net::TcpStream::connect(&address).await.map_err(|e| e.to_string())?;
            let request = format!("GET /fn/hello/ HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
            let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
            Ok::<String, String>(head)
        })
    });
    let answers = futures::future::join_all(calls).await;
    let mut failures: Vec<String> = Vec::new();
    for answer in answers {
        match answer.expect("task") {
            Ok(head) if head.starts_with("HTTP/1.1 2") => {}
            Ok(head) => failures.push(head),
            Err(error) => failures.push(error),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 failed, such as {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// The reliability suite, crash: deploys and PATCHes run in a loop while the server is killed
/// with SIGKILL at random moments, 10 times. After every restart each deploy that was answered
/// 2xx is there (at least at that version) and callable, and both stores pass SQLite's
/// integrity check.
#[tokio::test]
async fn acknowledged_deploys_survive_kill_9_at_random_moments() {
    use rand::Rng as _;
    let temp = tempfile::tempdir().expect("tempdir");
    let wasm = std::fs::read(amphi_guest_artifacts::C_CGI_MODULE).expect("guest built");
    // name → the highest version acknowledged for it.
    let mut acknowledged: std::collections::BTreeMap<String, u64> = Default::default();
    for round in 0..10 {
        let mut server = TestServer::start(temp.path());
        let upload =
            server.admin(Method::POST, "/artifacts").body(wasm.clone()).send().await.expect("upload");
        assert!(upload.status().is_success());
        let digest = upload.json::<Value>().await.expect("json")["digest"].clone();
        let killer = {
            let pid = server.pid().expect("running");
            let after = std::time::Duration::from_millis(rand::rng().random_range(50..400));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            })
        };
        // Bounded: 200 writes at most; the kill ends it much sooner.
        for i in 0..200 {
            let name = format!("f{}", i % 5);
            let request = if i % 2 == 0 {
                server
                    .admin(Method::PUT, &format!("/functions/{name}"))
                    .json(&json!({ "digest": digest, "config": { "env": { "ROUND": round.to_string() } } }))
            } else {
                server
                    .admin(Method::PATCH, &format!("/functions/{name}"))
                    .json(&json!({ "env": { "I": i.to_string() } }))
            };
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let version = response.json::<Value>().await.ok().and_then(|v| v["version"].as_u64());
                    if let Some(version) = version {
                        let best = acknowledged.entry(name).or_default();
                        *best = (*best).max(version);
                    }
                }
                Ok(_) => {}
                Err(_) => break, // the server is gone
            }
        }
        killer.await.expect("killer");
        server.kill();

        let server = TestServer::start(temp.path());
        for (name, version) in &acknowledged {
            let now = server.describe(name).await["function"]["version"].as_u64().unwrap_or(0);
            assert!(now >= *version, "round {round}: {name} acknowledged at v{version}, now v{now}");
            let call = server.get(name, "/request").await;
            assert_eq!(call.status(), 200, "round {round}: {name} is not callable");
        }
        drop(server);
        for database in ["registry.db", "logs.db"] {
            let connection = rusqlite::Connection::open(temp.path().join(database)).expect("open");
            let verdict: String = connection
                .query_row("PRAGMA integrity_check", [], |row| row.get(0))
                .expect("integrity check");
            assert_eq!(verdict, "ok", "round {round}: {database}");
        }
    }
    assert!(!acknowledged.is_empty(), "no deploy was ever acknowledged");
}

/// Sends `bytes` on a new connection and reads what comes back until the server closes (each
/// use ends with `connection: close` or a refusal, which closes) or 10 s pass.
async fn exchange(server: &TestServer, bytes: &[u8]) -> String {
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt as _;
        let _ = stream.read_to_end(&mut seen).await;
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// The reliability suite, hostile clients: each request is answered or refused as documented,
/// never smuggled, and a probe call keeps answering.
#[tokio::test]
async fn hostile_clients_are_answered_or_refused_and_the_server_keeps_serving() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("f", amphi_guest_artifacts::C_CGI_MODULE, json!({})).await;
    let probe = || async { assert_eq!(server.get("f", "/").await.status(), 200, "the probe call failed") };

    // Two different Content-Lengths: refused, and nothing after the body is read as a request.
    let answer = exchange(
        &server,
        b"POST /fn/f/ HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 40\r\n\r\nhelloGET /fn/smuggled/ HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "a second request was read: {answer}");
    probe().await;

    // Content-Length with Transfer-Encoding: the chunked framing wins or the request is refused;
    // the bytes the Content-Length would have left over are never a second request.
    let answer = exchange(
        &server,
        b"POST /fn/f/ HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /fn/smuggled/ HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(!answer.contains("smuggled"), "{answer}");
    assert!(!answer.contains("no function named"), "the smuggled request reached the router: {answer}");
    probe().await;

    // 100 pipelined requests on one connection: 100 answers, in order.
    let mut pipelined = Vec::new();
    for i in 0..100 {
        let close = if i == 99 { "connection: close\r\n" } else { "" };
        pipelined.extend_from_slice(format!("GET /fn/f/{i} HTTP/1.1\r\nhost: x\r\n{close}\r\n").as_bytes());
    }
    let answer = exchange(&server, &pipelined).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 100, "{}", &answer[..answer.len().min(500)]);
    probe().await;

    // Header fields far past the limits: refused, by us or by the HTTP layer.
    let mut many = b"GET /fn/f/ HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = exchange(&server, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(300)]);
    let mut big = b"GET /fn/f/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 << 10));
    big.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(&server, &big).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("application/problem+json"), "{}", &answer[..answer.len().min(300)]);
    probe().await;

    // h2c with many concurrent streams on one connection: every one answered.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let streams = (0..300).map(|i| h2.get(server.fn_url("f", &format!("/{i}"))).send());
    let statuses: Vec<u16> = futures::future::join_all(streams)
        .await
        .into_iter()
        .map(|r| r.expect("stream").status().as_u16())
        .collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    probe().await;
}

/// Point 18: artifacts and their compiled code that no function's recent versions use are
/// collected after the grace period; `/v1/stats` shows the data directory's size.
#[tokio::test]
async fn unused_artifacts_and_compiled_code_are_collected() {
    let temp = tempfile::tempdir().expect("tempdir");
    // The grace period covers the moment between an upload and its deploy.
    let server = TestServer::start_with(temp.path(), &["--gc-every", "100ms", "--gc-grace", "2s"]);
    let files = |folder: &str| std::fs::read_dir(temp.path().join(folder)).map(|d| d.count()).unwrap_or(0);
    server.deploy("kept", amphi_guest_artifacts::C_CGI_MODULE, json!({})).await;
    server.deploy("gone", amphi_guest_artifacts::RUST_CGI_MODULE, json!({})).await;
    assert_eq!((files("artifacts"), files("compiled")), (2, 2));

    let deleted = server.admin(Method::DELETE, "/functions/gone").send().await.expect("delete");
    assert!(deleted.status().is_success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (files("artifacts"), files("compiled")) != (1, 1) {
        assert!(std::time::Instant::now() < deadline, "the deleted function's artifact was never collected");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(server.get("kept", "/").await.status(), 200, "what is in use stays");
    let stats =
        server.wait_for("/stats", |s| s["data_directory_bytes"].as_u64().is_some_and(|b| b > 0)).await;
    assert!(stats["data_directory_bytes"].as_u64().is_some());
}

/// The reliability suite, hostile containers: a fork bomb meets the pids limit and a `/tmp` fill
/// meets the tmpfs size; the calls are answered, another function keeps answering meanwhile, the
/// instance serves again afterwards, and no container is left behind.
#[tokio::test]
async fn fork_bombs_and_tmp_fills_stay_inside_their_container() {
    let (docker, _temp, server) = start().await;
    deploy(&server, "hostile", &fixture("hostile-cgi"), &["--pids-limit", "64", "--timeout", "20s"]);
    server.deploy("probe", amphi_guest_artifacts::C_CGI_MODULE, json!({})).await;

    let fork = server.get("hostile", "/fork");
    let probing = async {
        for _ in 0..20 {
            assert_eq!(server.get("probe", "/").await.status(), 200, "the probe failed during the fork bomb");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let (forked, ()) = tokio::join!(fork, probing);
    // The bomb's own call is answered: by the script, or with 502 when the exhausted pids broke
    // the call's own processes. Either way the limit held it inside the container.
    let status = forked.status().as_u16();
    let body = forked.text().await.expect("body");
    assert!(status == 200 && body.trim() == "forked" || status == 502, "{status}: {body}");

    let filled = server.get("hostile", "/fill").await;
    assert_eq!(filled.status(), 200);
    assert_eq!(filled.text().await.expect("body").trim(), "the disk filled up");
    let again = server.get("hostile", "/").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.expect("body").trim(), "ok");
    stop_and_check_clean(server, &docker).await;
}

/// The reliability suite, disk: point 2's load (a long path on every call to a function that
/// logs nothing, from 8 kept-alive connections) for 30 s stays within the log store's byte
/// budget (`serve --log-max-size`), while the records it writes add up to many times that budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_path_load_stays_within_the_log_stores_byte_budget() {
    // Small, so that the load of a debug build sharing the machine with the other tests (a
    // hundred calls a second or more) outgrows it several times over in 30 s.
    const BUDGET: u64 = 1 << 20;
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(temp.path(), &["--log-max-size", "1MiB"]);
    server.deploy("f", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    // Just under the 8 KiB request-target limit; a record keeps 2 KiB of it.
    let url = server.fn_url("f", &format!("/{}", "p".repeat(8000)));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answered = Arc::new(AtomicUsize::new(0));
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, answered) = (reqwest::Client::new(), url.clone(), answered.clone());
            tokio::spawn(async move {
                while std::time::Instant::now() < until {
                    let response = http.get(&url).send().await.expect("a call");
                    assert!(response.headers().contains_key("amphi-invocation-id"), "{}", response.status());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let size = |name: &str| std::fs::metadata(temp.path().join(name)).map_or(0, |m| m.len());
    let (mut largest_db, mut largest_wal) = (0, 0);
    while std::time::Instant::now() < until {
        largest_db = largest_db.max(size("logs.db"));
        largest_wal = largest_wal.max(size("logs.db-wal"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for load in loads {
        load.await.expect("load task");
    }
    let answered = answered.load(Ordering::Relaxed) as u64;
    println!(
        "{answered} calls in 30 s; largest logs.db {largest_db} bytes, logs.db-wal {largest_wal} bytes \
         (budget {BUDGET})"
    );
    assert!(answered * 2048 > 3 * BUDGET, "too light a load to test the budget: {answered} calls");
    // The database outgrows its budget by at most one write batch (well under 1 MiB at this
    // load) before the oldest items go; the write-ahead log is cut back to 4 MiB at checkpoints.
    assert!(largest_db <= 2 * BUDGET, "logs.db reached {largest_db} bytes");
    assert!(largest_wal <= 8 << 20, "logs.db-wal reached {largest_wal} bytes");
}
