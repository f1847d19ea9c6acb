//! The wasm backend on its own, running the real guests of `guest-examples/`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amphi_contract::function::{ArtifactKind, FunctionConfig, FunctionVersion};
use amphi_contract::record::{InvocationRecord, LogLine, LogStream, Outcome};
use amphi_contract::{Backend, BackendError, Call, LogCapture, TelemetrySink};
use amphi_store::DataDir;
use amphi_store::artifacts::Artifacts;
use amphi_wasm::{WasmBackend, WasmSettings};
use bytes::Bytes;
use http_body_util::BodyExt as _;

#[derive(Default)]
struct Collected {
    lines: Mutex<Vec<LogLine>>,
}

impl TelemetrySink for Collected {
    fn log_line(&self, line: LogLine, _: usize) -> bool {
        self.lines.lock().expect("lock").push(line);
        true
    }
    fn invocation(&self, _: InvocationRecord) {
        unreachable!("a backend never writes an invocation record");
    }
}

/// What the backend said about a call once it was done: what the gateway records.
struct Finished {
    id: String,
    status: u16,
    outcome: Outcome,
    log_lines: u64,
}

struct Harness {
    _temp: tempfile::TempDir,
    artifacts: Arc<Artifacts>,
    backend: WasmBackend,
    sink: Arc<Collected>,
    finished: Mutex<Vec<(String, Finished)>>,
}

impl Harness {
    fn new() -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(temp.path()).expect("data dir");
        let artifacts = Arc::new(Artifacts::open(&data).expect("artifacts"));
        let settings = WasmSettings { pool_instances: 64, ..Default::default() };
        let backend = WasmBackend::new(settings, artifacts.clone()).expect("backend");
        Self { _temp: temp, artifacts, backend, sink: Arc::default(), finished: Mutex::default() }
    }

    async fn deploy(&self, path: &str, config: FunctionConfig) -> Arc<FunctionVersion> {
        let bytes = std::fs::read(path).expect("guest built");
        let digest = self.artifacts.put(&bytes).expect("put");
        let kind = self.backend.prepare_upload(&digest, bytes.into()).await.expect("prepare");
        Arc::new(FunctionVersion {
            name: "f".into(),
            version: 1,
            digest,
            kind,
            config,
            created_at_ms: 0,
            init: None,
        })
    }

    /// Waits until the backend has made `count` instances in all: ready instances are made after
    /// a call ends, off its path, so the next call finds one only once this has happened.
    async fn wait_instances_made(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.backend.stats().instances_made < count {
            assert!(
                Instant::now() < deadline,
                "only {:?} instances made, waiting for {count}",
                self.backend.stats()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn call(
        &self,
        function: &Arc<FunctionVersion>,
        method: &str,
        path: &str,
        body: &'static [u8],
    ) -> Result<(u16, http::HeaderMap, Bytes), BackendError> {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id: Arc<str> =
            format!("call-{}", CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).into();
        let log = LogCapture::new(self.sink.clone(), function.name.clone(), id.to_string(), 64 * 1024);
        let call =
            Call::new(id.clone(), function.clone(), Instant::now() + function.config.timeout(), log.clone());
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Bytes::from_static(body))
            .expect("request");
        let answer = self.backend.invoke(call, request).await?;
        let response = answer.response;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let ending = answer.completion.wait().await.expect("the backend says how the call ended");
        let log_lines = log.close().kept;
        let finished = Finished { id: id.to_string(), status, outcome: ending.outcome, log_lines };
        self.finished.lock().expect("lock").push((path.to_string(), finished));
        Ok((status, headers, body))
    }

    /// How the call of `path` ended.
    fn finished(&self, path: &str) -> Finished {
        let mut finished = self.finished.lock().expect("lock");
        let at = finished.iter().position(|(p, _)| p == path).expect("the call of this path finished");
        finished.remove(at).1
    }
}

#[tokio::test]
async fn component_says_hello_echoes_and_logs() {
    let harness = Harness::new();
    let function =
        harness.deploy(amphi_guest_artifacts::RUST_HTTP_COMPONENT, FunctionConfig::default()).await;
    assert_eq!(function.kind, ArtifactKind::WasiHttpComponent);

    let (status, _, body) = harness.call(&function, "GET", "/", b"").await.expect("hello");
    assert_eq!((status, body.as_ref()), (200, &b"Hello from Amphi!\n"[..]));

    let (status, headers, body) =
        harness.call(&function, "PUT", "/echo?x=1", b"\x00\xffbinary").await.expect("echo");
    assert_eq!(status, 200);
    assert_eq!(headers["x-echo-method"], "PUT");
    assert_eq!(headers["x-echo-path-with-query"], "/echo?x=1");
    assert_eq!(body.as_ref(), b"\x00\xffbinary");

    harness.call(&function, "GET", "/log?lines=2", b"").await.expect("log");
    let record = harness.finished("/log?lines=2");
    assert_eq!((record.outcome, record.status, record.log_lines), (Outcome::Success, 200, 3));
    let lines = harness.sink.lines.lock().expect("lock");
    let of_call: Vec<_> = lines.iter().filter(|l| l.invocation_id == record.id).collect();
    assert_eq!(of_call.len(), 3);
    assert!(of_call.iter().any(|l| l.stream == LogStream::Stderr && l.line == "a line to stderr"));
}

#[tokio::test]
async fn ready_instances_serve_one_call_each_and_follow_a_new_version() {
    let harness = Harness::new();
    let env = |tag: &str| FunctionConfig {
        env: [("VERSION_TAG".to_string(), tag.to_string())].into(),
        ..FunctionConfig::default()
    };
    let v1 = harness.deploy(amphi_guest_artifacts::RUST_HTTP_COMPONENT, env("one")).await;
    // The first call makes its instance on the request path, then two are made ready; every later
    // call takes one and one more is made.
    for call in 0..20 {
        let (status, _, body) = harness.call(&v1, "GET", "/state", b"").await.expect("call");
        assert_eq!((status, &body[..]), (200, &b"1"[..]), "every call sees a fresh instance");
        harness.wait_instances_made(call + 3).await;
    }
    let stats = harness.backend.stats();
    assert_eq!((stats.ready_hits, stats.ready_misses), (19, 1), "{stats:?}");

    // A new version (new env) is served by instances made for it, never by the old ones.
    let v2 = Arc::new(FunctionVersion { version: 2, config: env("two"), ..(*v1).clone() });
    harness.backend.retire("f");
    let made = harness.backend.stats().instances_made;
    for call in 0..3 {
        let (_, _, body) = harness.call(&v2, "GET", "/sleep?ms=1", b"").await.expect("call");
        assert_eq!(&body[..], b"two");
        harness.wait_instances_made(made + call + 3).await;
    }
    // A call still on the old version gets an instance of its own version.
    let (_, _, body) = harness.call(&v1, "GET", "/sleep?ms=1", b"").await.expect("call");
    assert_eq!(&body[..], b"one");
}

#[tokio::test]
async fn component_failures_are_classified() {
    let harness = Harness::new();
    let config = FunctionConfig { timeout_ms: 300, memory_bytes: 16 << 20, ..Default::default() };
    let function = harness.deploy(amphi_guest_artifacts::RUST_HTTP_COMPONENT, config).await;

    let trap = harness.call(&function, "GET", "/trap", b"").await.expect_err("traps");
    assert_eq!(trap.kind.status(), 502, "{trap}");
    assert!(trap.detail.contains("trapped"), "{trap}");

    let started = Instant::now();
    let spin = harness.call(&function, "GET", "/loop", b"").await.expect_err("loops");
    assert_eq!(spin.kind.status(), 504, "{spin}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopped near its deadline");

    let memory = harness.call(&function, "GET", "/grow?mib=64", b"").await.expect_err("grows");
    assert_eq!(memory.kind.status(), 502, "{memory}");
    assert!(memory.detail.contains("memory limit"), "{memory}");
    let (status, _, _) = harness.call(&function, "GET", "/grow?mib=4", b"").await.expect("within limit");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn cgi_modules_in_rust_and_c() {
    let harness = Harness::new();
    let rust = harness.deploy(amphi_guest_artifacts::RUST_CGI_MODULE, FunctionConfig::default()).await;
    assert_eq!(rust.kind, ArtifactKind::CgiModule);
    let (status, headers, body) =
        harness.call(&rust, "POST", "/echo?q=%20a", b"payload").await.expect("echo");
    assert_eq!((status, body.as_ref()), (200, &b"payload"[..]));
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-query"], "q=%20a");
    let (status, _, _) = harness.call(&rust, "GET", "/status/418", b"").await.expect("status");
    assert_eq!(status, 418);
    let trap = harness.call(&rust, "GET", "/trap", b"").await.expect_err("traps");
    assert_eq!(trap.kind.status(), 502);

    let c = harness.deploy(amphi_guest_artifacts::C_CGI_MODULE, FunctionConfig::default()).await;
    let (status, headers, body) = harness.call(&c, "POST", "/x?y=1", b"tail").await.expect("c echo");
    assert_eq!(status, 200);
    assert_eq!(headers["x-powered-by"], "wasi-libc");
    assert_eq!(body.as_ref(), b"Hello from C! method=POST path=/x query=y=1\ntail");
}

#[tokio::test]
async fn uploads_that_are_not_functions_are_refused() {
    let harness = Harness::new();
    for (bytes, expected) in [
        (&b"not wasm"[..], "not a WebAssembly binary"),
        (&b"\0asm\x01\0\0\0\x05"[..], "invalid WebAssembly"),
        // A valid module without `_start`.
        (&b"\0asm\x01\0\0\0"[..], "no `_start`"),
    ] {
        let digest = harness.artifacts.put(bytes).expect("put");
        let error = harness
            .backend
            .prepare_upload(&digest, bytes::Bytes::from_static(bytes))
            .await
            .expect_err("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
}
