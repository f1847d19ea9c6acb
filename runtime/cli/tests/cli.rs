//! The `amphi` commands as a user types them, against a real server: deploy, invoke, logs
//! (also `--follow`), invocations, ls, describe, rm, and their failures.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Store, TOKEN, TestServer, on_both_stores, stderr, stdout};

// What a user sees is the same on one machine and on a cluster's PostgreSQL.
on_both_stores!(
    the_five_minute_tour,
    failures_exit_non_zero_with_the_reason,
    logs_follow_streams_new_lines_and_records,
);

async fn the_five_minute_tour(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &[]);

    let deployed = server.cli(&[
        "deploy",
        "hello",
        amphi_guest_artifacts::RUST_HTTP_COMPONENT,
        "--timeout",
        "5s",
        "--memory",
        "64MiB",
        "--env",
        "VERSION_TAG=tour",
        "--concurrency",
        "8",
    ]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    assert!(
        stdout(&deployed).starts_with("deployed hello version 1 (wasi-http-component"),
        "{}",
        stdout(&deployed)
    );
    let cgi = server.cli(&["deploy", "cgi", amphi_guest_artifacts::C_CGI_MODULE, "--json"]);
    let cgi: Value = serde_json::from_str(&stdout(&cgi)).expect("--json prints JSON");
    assert_eq!(cgi["kind"], "cgi-module");

    let invoked = server.cli(&["invoke", "hello", "/sleep?ms=1"]);
    assert_eq!(stdout(&invoked), "tour");
    let data = temp.path().join("payload.bin");
    std::fs::write(&data, [0u8, 159, 146, 150]).expect("write");
    let echoed = server.cli(&["invoke", "hello", "/echo", "--data", &format!("@{}", data.display())]);
    assert_eq!(echoed.stdout, [0u8, 159, 146, 150]);
    let logged = server.cli(&["invoke", "hello", "log?lines=2"]);
    assert!(logged.status.success());

    let logs = wait_for_output(&server, &["logs", "hello"], |out| out.contains("a line to stderr"));
    assert!(logs.contains("stdout    line 0 to stdout"), "{logs}");
    let json_logs = server.cli(&["logs", "hello", "--json"]);
    let first: Value =
        serde_json::from_str(stdout(&json_logs).lines().next().expect("a line")).expect("json line");
    assert_eq!(first["function"], "hello");

    let invocations = wait_for_output(&server, &["invocations", "hello"], |out| out.lines().count() >= 4);
    let header = invocations.lines().next().expect("header");
    assert!(header.contains("STATUS") && header.contains("COLD"), "{header}");
    assert!(invocations.contains("GET /echo") || invocations.contains("POST /echo"), "{invocations}");
    assert!(invocations.lines().skip(1).all(|l| l.contains(" 200 ")), "{invocations}");
    let records: Value =
        serde_json::from_str(&stdout(&server.cli(&["invocations", "hello", "--json"]))).expect("json");
    assert!(
        records.as_array().expect("records").iter().all(|r| r["status"] == 200 && r["backend"] == "wasm")
    );

    let listed = stdout(&server.cli(&["ls"]));
    assert!(listed.lines().any(|l| l.starts_with("hello") && l.contains("wasi-http-component")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("cgi") && l.contains("cgi-module")), "{listed}");
    let described = stdout(&server.cli(&["describe", "hello"]));
    assert!(described.contains("timeout:      5000ms"), "{described}");
    assert!(described.contains("memory:       64MiB"), "{described}");
    assert!(described.contains("env:          VERSION_TAG=tour"), "{described}");

    let removed = server.cli(&["rm", "cgi"]);
    assert_eq!(stdout(&removed), "deleted cgi\n");
    let listed = stdout(&server.cli(&["ls", "--json"]));
    assert_eq!(serde_json::from_str::<Value>(&listed).expect("json").as_array().expect("list").len(), 1);
}

async fn failures_exit_non_zero_with_the_reason(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &[]);
    server.cli(&["deploy", "hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, "--timeout", "300ms"]);

    let cases: [(&[&str], &str); 7] = [
        (&["invoke", "nobody"], "404 Not found: no function named `nobody`"),
        (&["invoke", "hello", "/trap"], "502 Function failed: the function trapped"),
        (&["invoke", "hello", "/loop"], "504 Function timed out"),
        (&["deploy", "x", "/etc/hostname"], "422"),
        (&["deploy", "x", "/no/such/file.wasm"], "cannot read /no/such/file.wasm"),
        (&["describe", "nobody"], "404"),
        (&["deploy", "x", amphi_guest_artifacts::C_CGI_MODULE, "--memory", "lots"], "not a size"),
    ];
    for (args, expected) in cases {
        let output = server.cli(args);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
    let wrong_token = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["--url", &server.url, "--token", "wrong", "ls"])
        .output()
        .expect("runs");
    assert!(stderr(&wrong_token).contains("401"), "{}", stderr(&wrong_token));
    let unreachable = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["--url", "http://127.0.0.1:9", "--token", TOKEN, "ls"])
        .output()
        .expect("runs");
    assert!(stderr(&unreachable).contains("cannot reach Amphi"), "{}", stderr(&unreachable));
}

async fn logs_follow_streams_new_lines_and_records(store: Store) {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = store.serve(temp.path(), &[]);
    server.cli(&["deploy", "hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT]);

    let mut follower = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["logs", "hello", "--follow"])
        .env("AMPHI_URL", &server.url)
        .env("AMPHI_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow starts");
    let lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if seen_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Calls keep coming until the follower has shown a fresh line and its invocation record.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut saw_line, mut saw_record) = (false, false);
    while !(saw_line && saw_record) {
        assert!(Instant::now() < deadline, "follow showed line={saw_line} record={saw_record}");
        server.http.get(server.fn_url("hello", "/log?lines=1")).send().await.expect("call");
        while let Ok(line) = seen_rx.recv_timeout(Duration::from_millis(100)) {
            saw_line |= line.contains("line 0 to stdout");
            saw_record |= line.contains("── GET /log?lines=1 → 200 success");
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
}

fn wait_for_output(server: &TestServer, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = stdout(&server.cli(args));
        if done(&output) {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "`amphi {}` never showed what was expected: {output}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_the_output_quietly() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    for name in ["a", "b", "c"] {
        assert!(server.cli(&["deploy", name, amphi_guest_artifacts::RUST_HTTP_COMPONENT]).status.success());
    }
    for command in [&["ls"][..], &["logs", "a"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_amphi"))
            .args(command)
            .env("AMPHI_URL", &server.url)
            .env("AMPHI_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI runs");
        // As `amphi ls | head -0` does: the reader is gone before the first line.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("the CLI ends");
        assert!(output.status.success(), "{command:?}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"), "{command:?}: {}", stderr(&output));
    }
}

/// `amphi build` makes a deployable component of an SDK crate, with the toolchain it finds.
#[tokio::test]
async fn build_makes_an_sdk_crate_deployable() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The guests' own target directory, so this reuses what amphi-guest-artifacts compiled.
    let guests_target = std::path::Path::new(amphi_guest_artifacts::SDK_HELLO_COMPONENT)
        .parent()
        .and_then(|amphi| amphi.parent())
        .expect("target/wasm-guests");
    let built = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["build", "--target", "wasm"])
        .arg(repo.join("guest-examples/sdk-hello"))
        .env("CARGO_TARGET_DIR", guests_target)
        .output()
        .expect("amphi build runs");
    assert!(built.status.success(), "{}", stderr(&built));
    let component = stdout(&built).trim().to_string();
    assert!(component.ends_with("amphi/sdk-hello.wasm"), "{component}");
    assert!(stderr(&built).contains("Deploy it with: amphi deploy sdk-hello"), "{}", stderr(&built));

    let deployed = server.cli(&["deploy", "hello", &component]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    let greeted = server.cli(&["invoke", "hello", "/greet?name=Ada"]);
    assert_eq!(stdout(&greeted), "Hello, Ada!\n", "{}", stderr(&greeted));
    let logs = server.wait_for("/logs?function=hello", |v| v.as_array().is_some_and(|l| !l.is_empty())).await;
    assert_eq!(logs[0]["line"], "greeting Ada", "the SDK logger's prefix is removed: {logs}");

    let not_a_crate = Command::new(env!("CARGO_BIN_EXE_amphi"))
        .args(["build", temp.path().to_str().expect("utf-8 path")])
        .output()
        .expect("amphi build runs");
    assert!(!not_a_crate.status.success());
    assert!(stderr(&not_a_crate).contains("Cargo.toml"), "{}", stderr(&not_a_crate));
}
