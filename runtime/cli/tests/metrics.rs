//! Issue 13's metrics: `GET /metrics` as a real Prometheus scrapes it.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TOKEN, TestServer};

/// A Prometheus server (Debian's `prometheus`) on a loopback port, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    /// Starts one that scrapes `target` (`host:port`) every second with the admin token.
    fn start(dir: &std::path::Path, target: &str) -> Self {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus is not installed: apt-get install prometheus (.ci/test-all does)");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: amphi\n    \
                 authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// The value of the instant query `query`, when it has one.
    async fn value(&self, http: &reqwest::Client, query: &str) -> Option<f64> {
        let answer =
            http.get(format!("{}/api/v1/query", self.url)).query(&[("query", query)]).send().await.ok()?;
        let body: Value = answer.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_calls_made() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path().join("data").as_path());
    server.deploy("counted", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    for _ in 0..7 {
        assert_eq!(server.get("counted", "/").await.status(), 200);
    }
    assert_eq!(server.get("counted", "/status/404").await.status(), 404);
    // A call is counted as its record is written, which comes after the client has its answer.
    server.wait_for("/invocations?function=counted", |v| v.as_array().is_some_and(|a| a.len() == 8)).await;

    // The exposition itself: behind the token, in the OpenMetrics format, with the log store's
    // loss counters present at 0.
    let anonymous = server.http.get(format!("{}/metrics", server.url)).send().await.expect("metrics");
    assert_eq!(anonymous.status(), 401);
    let scraped =
        server.http.get(format!("{}/metrics", server.url)).bearer_auth(TOKEN).send().await.expect("metrics");
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped.headers()["content-type"].to_str().expect("type").starts_with("application/openmetrics-text")
    );
    let text = scraped.text().await.expect("text");
    for wanted in [
        "amphi_calls_total{function=\"counted\",backend=\"wasm\",outcome=\"success\",status_class=\"2xx\"} 7",
        "amphi_calls_total{function=\"counted\",backend=\"wasm\",outcome=\"success\",status_class=\"4xx\"} 1",
        "amphi_call_duration_seconds_count{function=\"counted\",backend=\"wasm\",phase=\"exec\"} 8",
        "amphi_log_lines_dropped_total 0",
        "amphi_log_records_dropped_total 0",
        "amphi_calls_in_flight{function=\"counted\",backend=\"wasm\"} 0",
    ] {
        assert!(text.contains(wanted), "no `{wanted}` in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));

    let target = server.url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(temp.path(), &target);
    let query = "sum(amphi_calls_total{function=\"counted\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let value = prometheus.value(&server.http, query).await;
        if value == Some(8.0) || Instant::now() > deadline {
            break value;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(value, Some(8.0), "Prometheus' answer to {query}");
    let success =
        prometheus.value(&server.http, "amphi_calls_total{function=\"counted\",status_class=\"2xx\"}").await;
    assert_eq!(success, Some(7.0));
}

/// `amphi top` under a real pseudo-terminal (tmux): the screen shows the function called, with
/// calls a second; piped, it prints plain text with no terminal escapes.
#[tokio::test]
async fn amphi_top_shows_the_functions_live() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("watched", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    assert!(
        Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()),
        "tmux is not installed: apt-get install tmux (.ci/test-all does)"
    );
    let session = format!("amphi-top-{}", std::process::id());
    let command = format!(
        "AMPHI_URL={} AMPHI_TOKEN={TOKEN} {} top --interval 0.5",
        server.url,
        env!("CARGO_BIN_EXE_amphi")
    );
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-x", "160", "-y", "40", "-s", &session, &command])
        .status()
        .expect("tmux");
    assert!(started.success());
    let screen = || {
        let output =
            Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().expect("capture");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Calls keep coming until the screen shows them (bounded in count and time).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shown = String::new();
    for _ in 0..3000 {
        assert_eq!(server.get("watched", "/").await.status(), 200);
        shown = screen();
        let row = shown.lines().find(|l| l.starts_with("watched"));
        let rate = row.and_then(|r| r.split_whitespace().nth(2)).and_then(|v| v.parse::<f64>().ok());
        if rate.is_some_and(|r| r > 0.0) || Instant::now() > deadline {
            break;
        }
    }
    let _ = Command::new("tmux").args(["kill-session", "-t", &session]).status();
    assert!(shown.contains("FUNCTION") && shown.contains("CALLS/S"), "no table on screen:\n{shown}");
    let row = shown.lines().find(|l| l.starts_with("watched")).unwrap_or_default();
    let rate: f64 = row.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(rate > 0.0, "the screen shows no calls for `watched`:\n{shown}");
    assert!(row.contains("wasm"), "{row}");

    let piped = server.cli(&["top", "--interval", "0.2", "--iterations", "2"]);
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let text = String::from_utf8(piped.stdout).expect("utf-8");
    assert_eq!(text.matches("FUNCTION").count(), 2, "two refreshes:\n{text}");
    assert!(text.contains("watched"), "{text}");
    assert!(!text.contains('\x1b'), "terminal escapes in piped output:\n{text}");
}
