//! Deploy-time pre-initialization (issue 15): a function's initializer runs once at deploy, and
//! every instance starts from the snapshot it left.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

/// Uploads `wasm`; returns its digest.
async fn upload(server: &TestServer, wasm: &str) -> String {
    let bytes = std::fs::read(wasm).expect("guest built");
    let upload = server.admin(Method::POST, "/artifacts").body(bytes).send().await.expect("upload");
    assert!(upload.status().is_success());
    let artifact: Value = upload.json().await.expect("json");
    artifact["digest"].as_str().expect("digest").to_string()
}

/// `PUT /v1/functions/{name}`: the status and the answer.
async fn put(server: &TestServer, name: &str, digest: &str, config: Value) -> (u16, Value) {
    let response = server
        .admin(Method::PUT, &format!("/functions/{name}"))
        .json(&json!({ "digest": digest, "config": config }))
        .send()
        .await
        .expect("deploy");
    (response.status().as_u16(), response.json().await.expect("json"))
}

fn initializer_runs(stats: &Value) -> u64 {
    stats["wasm"]["initializer_runs"].as_u64().unwrap_or_else(|| panic!("no initializer_runs in {stats}"))
}

async fn stats(server: &TestServer) -> Value {
    server.admin(Method::GET, "/stats").send().await.expect("stats").json().await.expect("json")
}

/// The initializer's ~0.5 s is paid at deploy, not by the first call; state it set is in every
/// instance, state a call sets is in none after it; a restart reuses the snapshot.
#[tokio::test]
async fn the_initializer_runs_once_at_deploy() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(temp.path());
    let digest = upload(&server, amphi_guest_artifacts::SDK_INIT_COMPONENT).await;
    let (status, deployed) =
        put(&server, "search", &digest, json!({ "init": "wizer-initialize", "env": { "GREETING": "hej" } }))
            .await;
    assert_eq!(status, 201, "{deployed}");
    let init = &deployed["init"];
    assert_eq!(init["export"], "wizer-initialize");
    assert_eq!(init["reused"], false);
    assert!(init["init_ms"].as_u64().expect("init_ms") >= 100, "the table takes a while: {init}");
    assert!(init["size"].as_u64().expect("size") > 0);
    assert_eq!(initializer_runs(&stats(&server).await), 1);

    let first = server.get("search", "/").await;
    assert_eq!(first.status(), 200);
    let timing = header(&first, "server-timing").to_string();
    let body = first.text().await.expect("body");
    assert!(body.starts_with("table ready: 65536 entries"), "{body}");
    assert!(body.ends_with("initializer runs seen: 1\n"), "{body}");
    // The first call after deploy pays no initializer: its init phase is well under a millisecond
    // of the ~0.5 s the table takes (Server-Timing is in milliseconds).
    let exec_ms: f64 = timing
        .split(',')
        .find_map(|part| part.trim().strip_prefix("exec;dur="))
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no exec in {timing}"));
    assert!(exec_ms < 100.0, "the call rebuilt the table: {timing}");
    assert_eq!(server.get("search", "/env").await.text().await.expect("body"), "hej\n");
    for _ in 0..3 {
        assert_eq!(server.get("search", "/state").await.text().await.expect("body"), "1\n");
    }

    // The initializer's output is in the function's log, stream `init`.
    let logs = server
        .wait_for("/logs?function=search", |v| {
            v.as_array().is_some_and(|lines| lines.iter().any(|l| l["stream"] == "init"))
        })
        .await;
    let init_line =
        logs.as_array().expect("lines").iter().find(|l| l["stream"] == "init").expect("init line");
    assert_eq!(init_line["line"], "table built: 65536 entries");

    // A restart neither runs the initializer nor makes the first call pay it.
    server.stop();
    let server = TestServer::start(temp.path());
    let body = server.get("search", "/").await.text().await.expect("body");
    assert!(body.ends_with("initializer runs seen: 1\n"), "{body}");
    assert_eq!(initializer_runs(&stats(&server).await), 0);

    // The same inputs again reuse the snapshot; other env makes its own.
    let (status, again) =
        put(&server, "search", &digest, json!({ "init": "wizer-initialize", "env": { "GREETING": "hej" } }))
            .await;
    assert_eq!(status, 201);
    assert_eq!(again["init"]["reused"], true);
    assert_eq!(again["init"]["digest"], deployed["init"]["digest"]);
    let (status, other) = put(
        &server,
        "search",
        &digest,
        json!({ "init": "wizer-initialize", "env": { "GREETING": "hallo" } }),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(other["init"]["reused"], false);
    assert_ne!(other["init"]["digest"], deployed["init"]["digest"]);
    assert_eq!(server.get("search", "/env").await.text().await.expect("body"), "hallo\n");
    assert_eq!(initializer_runs(&stats(&server).await), 1);
}

/// An initializer that traps, loops, grows past the memory limit or is not exported fails the
/// deploy with 422 naming the cause, and the version before stays current.
#[tokio::test]
async fn a_failing_initializer_fails_the_deploy_and_changes_nothing() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let digest = upload(&server, amphi_guest_artifacts::SDK_INIT_COMPONENT).await;
    let (status, _) = put(&server, "f", &digest, json!({ "init": "wizer-initialize" })).await;
    assert_eq!(status, 201);

    let cases = [
        (json!({ "init": "wizer-initialize", "env": { "INIT_FAIL": "trap" } }), "failed"),
        (
            json!({ "init": "wizer-initialize", "init_timeout_ms": 500, "env": { "INIT_FAIL": "loop" } }),
            "ran past its timeout of 500 ms",
        ),
        (
            json!({ "init": "wizer-initialize", "memory_bytes": 64 << 20, "env": { "INIT_FAIL": "grow" } }),
            "grew past the function's memory limit of 64MiB",
        ),
        (json!({ "init": "setup" }), "has no export `setup`"),
    ];
    for (config, cause) in cases {
        let (status, problem) = put(&server, "f", &digest, config.clone()).await;
        assert_eq!(status, 422, "{config}: {problem}");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(detail.contains(cause), "{config}: `{detail}` does not say `{cause}`");
        let current = server.describe("f").await;
        assert_eq!(current["function"]["version"], 1, "{config} changed the current version");
    }
    let body = server.get("f", "/").await.text().await.expect("body");
    assert!(body.starts_with("table ready"), "{body}");
    // What a failing initializer wrote is in the log: the panic message says why.
    server
        .wait_for("/logs?function=f", |v| {
            v.as_array().is_some_and(|lines| {
                lines.iter().any(|l| {
                    l["stream"] == "init"
                        && l["line"].as_str().is_some_and(|t| t.contains("the initializer gave up"))
                })
            })
        })
        .await;

    // An empty export name is refused before anything runs.
    let (status, problem) = put(&server, "f", &digest, json!({ "init": "" })).await;
    assert_eq!(status, 422, "{problem}");
}

/// `amphi deploy --init` and `amphi describe` as a user sees them.
#[tokio::test]
async fn the_cli_deploys_with_init_and_describes_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let deployed = server.cli(&["deploy", "search", amphi_guest_artifacts::SDK_INIT_COMPONENT, "--init"]);
    assert!(deployed.status.success(), "{}", support::stderr(&deployed));
    assert!(support::stdout(&deployed).contains("pre-initialized by `wizer-initialize`, init took "));
    let described = server.cli(&["describe", "search"]);
    let text = support::stdout(&described);
    assert!(text.contains("init:         pre-initialized by `wizer-initialize`, init took "), "{text}");
    assert!(text.contains("snapshot "), "{text}");

    let wrong = server.cli(&["deploy", "search", amphi_guest_artifacts::SDK_INIT_COMPONENT, "--init=setup"]);
    assert!(!wrong.status.success());
    assert!(support::stderr(&wrong).contains("has no export `setup`"), "{}", support::stderr(&wrong));
}

/// A preview1 CGI module is pre-initialized too: the initializer's state is there, and the
/// request's CGI variables are still read fresh in each call.
#[tokio::test]
async fn a_cgi_module_is_pre_initialized() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let digest = upload(&server, amphi_guest_artifacts::RUST_CGI_MODULE).await;
    let (status, _) = put(&server, "plain", &digest, json!({})).await;
    assert_eq!(status, 201);
    assert_eq!(server.get("plain", "/init").await.text().await.expect("body"), "not initialized\n");

    let (status, deployed) = put(&server, "cgi", &digest, json!({ "init": "wizer-initialize" })).await;
    assert_eq!(status, 201, "{deployed}");
    assert_eq!(deployed["init"]["export"], "wizer-initialize");
    assert_eq!(server.get("cgi", "/init").await.text().await.expect("body"), "initialized to 42\n");
    let echoed =
        server.http.post(server.fn_url("cgi", "/echo?q=1")).body("payload").send().await.expect("call");
    assert_eq!(echoed.status(), 200);
    assert_eq!(header(&echoed, "x-echo-query"), "q=1");
    assert_eq!(echoed.text().await.expect("body"), "payload");
}
