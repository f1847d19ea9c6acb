//! Starts the real `amphi serve` on an ephemeral loopback port, and drives it over real HTTP and
//! through the real CLI.

#![allow(dead_code)]

pub mod docker;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const TOKEN: &str = "test-token-0123456789";

/// Where a test's server keeps its state: the embedded default (the data directory), or a real
/// PostgreSQL of the test's own (`serve --store`).
pub enum Store {
    Embedded,
    Postgres(amphi_test_services::Postgres),
}

impl Store {
    /// A fresh PostgreSQL.
    pub fn postgres() -> Self {
        Self::Postgres(amphi_test_services::Postgres::start())
    }

    /// Starts a server on this store with extra `serve` flags.
    pub fn serve(&self, data: &Path, extra: &[&str]) -> TestServer {
        match self {
            Self::Embedded => TestServer::start_with(data, extra),
            Self::Postgres(postgres) => {
                let url = postgres.url();
                let mut args = vec!["--store", url.as_str()];
                args.extend_from_slice(extra);
                TestServer::start_with(data, &args)
            }
        }
    }
}

/// Runs each named test body (an `async fn(Store)`) once per store, as the tests
/// `NAME::embedded` and `NAME::postgres`.
#[allow(unused_macros)] // Not every test file runs on both stores.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(super::support::Store::Embedded).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::support::Store::postgres()).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_stores;

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub http: reqwest::Client,
}

impl TestServer {
    /// Starts a server on a fresh data directory.
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// Starts a server with extra `serve` flags.
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    /// Starts a server with extra `serve` flags and environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(Command::new(env!("CARGO_BIN_EXE_amphi")), "127.0.0.1:0", data, extra, env)
    }

    /// Starts a server inside `namespace`, listening on its address there, with extra flags.
    pub fn start_in(namespace: &amphi_test_services::NetNamespace, data: &Path, extra: &[&str]) -> Self {
        let listen = format!("{}:0", namespace.inside_ip);
        Self::launch(namespace.command(env!("CARGO_BIN_EXE_amphi")), &listen, data, extra, &[])
    }

    /// Runs `command` (the `amphi` binary, perhaps behind a wrapper that execs it) as `serve`.
    fn launch(mut command: Command, listen: &str, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .env("AMPHI_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("amphi serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("serve printed its address before exiting").expect("utf-8 line");
            if let Some(url) = line.strip_prefix("Amphi listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child: Some(child), url, data: data.to_path_buf(), http: reqwest::Client::new() }
    }

    /// A handle on a server this test did not start (a load balancer in front of several): the
    /// same helpers, nothing to stop.
    pub fn attach(url: &str) -> Self {
        Self { child: None, url: url.to_string(), data: PathBuf::new(), http: reqwest::Client::new() }
    }

    /// Kills the server with SIGKILL: no clean-up of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it (graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server did not stop within 20s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn fn_url(&self, name: &str, path: &str) -> String {
        format!("{}/fn/{name}{path}", self.url)
    }

    /// `GET /fn/{name}{path}`.
    pub async fn get(&self, name: &str, path: &str) -> reqwest::Response {
        self.http.get(self.fn_url(name, path)).send().await.expect("call")
    }

    /// `GET /fn/{name}{path}`, its body as JSON.
    pub async fn get_json(&self, name: &str, path: &str) -> Value {
        self.get(name, path).await.json().await.expect("a JSON body")
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}/v1{path}", self.url)).bearer_auth(TOKEN)
    }

    /// Uploads `wasm` and deploys it as `name` with `config`; returns the new version.
    pub async fn deploy(&self, name: &str, wasm: &str, config: Value) -> Value {
        let bytes = std::fs::read(wasm).expect("guest built");
        let upload =
            self.admin(reqwest::Method::POST, "/artifacts").body(bytes).send().await.expect("upload");
        assert!(upload.status().is_success(), "upload: {}", upload.text().await.unwrap_or_default());
        let artifact: Value = upload.json().await.expect("json");
        let deployed = self
            .admin(reqwest::Method::PUT, &format!("/functions/{name}"))
            .json(&json!({ "digest": artifact["digest"], "config": config }))
            .send()
            .await
            .expect("deploy");
        assert_eq!(deployed.status(), 201, "deploy");
        deployed.json().await.expect("json")
    }

    /// Polls `GET /v1{path}` until `done` accepts the JSON answer (records are written in batches).
    pub async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value: Value = self
                .admin(reqwest::Method::GET, path)
                .send()
                .await
                .expect("admin GET")
                .json()
                .await
                .expect("json");
            if done(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting on {path}: last answer {value}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /v1/functions/{name}`: the function, its versions and (containers) its instances.
    pub async fn describe(&self, name: &str) -> Value {
        let response =
            self.admin(reqwest::Method::GET, &format!("/functions/{name}")).send().await.expect("describe");
        response.json().await.expect("json")
    }

    /// The invocation record with `id`, once written.
    pub async fn record(&self, id: &str) -> Value {
        self.wait_for(&format!("/invocations/{id}"), |v| v.get("invocation").is_some()).await
    }

    /// Runs the `amphi` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_amphi"))
            .args(args)
            .env("AMPHI_URL", &self.url)
            .env("AMPHI_TOKEN", TOKEN)
            .env_remove("AMPHI_DATA")
            .output()
            .expect("the CLI runs")
    }
}

impl Drop for TestServer {
    /// A test that failed half-way still shuts its server down gracefully, so the server removes
    /// its containers; SIGKILL only if it does not stop.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}
