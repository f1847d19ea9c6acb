//! Runs the cases against a live server: deploys each binding's function, makes the calls, reads
//! back the invocation records and logs, and compares.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::SuiteError;
use crate::binding::{Binding, Source};
use crate::case::{Call, Case, Expect, Trigger};

/// How long to wait for an invocation's record and log lines to be written (they go through the
/// log store's writer in batches).
const RECORD_WAIT: Duration = Duration::from_secs(15);
/// The longest any one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A server to test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its base URL, `http://127.0.0.1:8080`.
    pub url: String,
    /// The admin token.
    pub token: String,
}

/// The result of one case on one binding.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub case: String,
    /// The binding's name.
    pub binding: &'static str,
    /// What went wrong; empty when the case passed.
    pub failures: Vec<String>,
    /// The case passed under an expectation CONTRACT.md allows to differ for this binding.
    pub allowed_difference: bool,
}

/// A deployed function version.
#[derive(Debug, Clone)]
struct Deployed {
    name: String,
    version: u64,
}

/// What a template may name.
struct Vars<'a> {
    function: &'a str,
    version: u64,
    backend: &'a str,
    invocation_id: &'a str,
    repeat: usize,
}

impl Vars<'_> {
    fn fill(&self, template: &str) -> String {
        template
            .replace("{function}", self.function)
            .replace("{version}", &self.version.to_string())
            .replace("{backend}", self.backend)
            .replace("{invocation_id}", self.invocation_id)
            .replace("{i}", &self.repeat.to_string())
            .replace("{n}", &(self.repeat + 1).to_string())
    }
}

/// Runs `cases` against `binding` on `target`; the functions it deploys are deleted afterwards.
pub async fn run_binding(
    target: &Target,
    binding: &Binding,
    cases: &[Case],
) -> Result<Vec<CaseResult>, SuiteError> {
    let runner = Runner {
        target: target.clone(),
        http: reqwest::Client::builder().timeout(CALL_TIMEOUT).build().map_err(SuiteError::Client)?,
    };
    let digest = runner.upload(binding).await?;
    let mut functions: HashMap<String, Deployed> = HashMap::new();
    let mut results = Vec::new();
    for case in cases {
        let mut config = case.config.clone();
        if binding.backend == "wasm"
            && let Some(fields) = config.as_object_mut()
        {
            fields.remove("container");
        }
        let key = config.to_string();
        let deployed = match functions.get(&key) {
            Some(deployed) => deployed.clone(),
            None => {
                let name = format!("conformance-{}-{}", binding.name, functions.len() + 1);
                let deployed = runner.deploy(&name, &digest, &config).await?;
                functions.insert(key, deployed.clone());
                deployed
            }
        };
        let failures = runner.run_case(binding, &deployed, case).await;
        let tags = binding.tags();
        let allowed_difference = case.calls.iter().any(|call| {
            format!("{:?}", call.expect.for_tags(&tags)) != format!("{:?}", call.expect.for_tags(&[]))
        });
        results.push(CaseResult {
            case: case.name.clone(),
            binding: binding.name,
            failures,
            allowed_difference,
        });
    }
    for deployed in functions.values() {
        let _ =
            runner.admin(reqwest::Method::DELETE, &format!("/v1/functions/{}", deployed.name)).send().await;
    }
    Ok(results)
}

struct Runner {
    target: Target,
    http: reqwest::Client,
}

impl Runner {
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.target.url)).bearer_auth(&self.target.token)
    }

    /// Uploads the binding's code (building the image, for a context); returns the digest.
    async fn upload(&self, binding: &Binding) -> Result<String, SuiteError> {
        let request = match &binding.source {
            Source::Wasm(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    SuiteError::Server(format!("{}: {e} (built by amphi-guest-artifacts)", path.display()))
                })?;
                self.admin(reqwest::Method::POST, "/v1/artifacts").body(bytes)
            }
            Source::Context(dir) => {
                let packed = amphi_toolchain::pack::pack(dir, "Dockerfile")
                    .map_err(|e| SuiteError::Server(format!("packing {}: {e}", dir.display())))?;
                let path = format!("/v1/artifacts?function=conformance-{}", binding.name);
                self.admin(reqwest::Method::POST, &path).timeout(Duration::from_secs(1200)).body(packed)
            }
        };
        let answer = request.send().await.map_err(SuiteError::Client)?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        match body["digest"].as_str() {
            Some(digest) if status.is_success() => Ok(digest.to_string()),
            _ => Err(SuiteError::Server(format!("uploading {}: {status} {body}", binding.name))),
        }
    }

    async fn deploy(&self, name: &str, digest: &str, config: &Value) -> Result<Deployed, SuiteError> {
        let config = if config.is_null() { json!({}) } else { config.clone() };
        let answer = self
            .admin(reqwest::Method::PUT, &format!("/v1/functions/{name}"))
            .json(&json!({ "digest": digest, "config": config }))
            .send()
            .await
            .map_err(SuiteError::Client)?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        match body["version"].as_u64() {
            Some(version) if status.is_success() => Ok(Deployed { name: name.to_string(), version }),
            _ => Err(SuiteError::Server(format!("deploying {name}: {status} {body}"))),
        }
    }

    async fn run_case(&self, binding: &Binding, function: &Deployed, case: &Case) -> Vec<String> {
        let calls: Vec<(String, &Call, usize)> = case
            .calls
            .iter()
            .enumerate()
            .flat_map(|(n, call)| {
                (0..call.repeat).map(move |i| {
                    let label = if call.repeat > 1 {
                        format!("call {}#{i}", n + 1)
                    } else {
                        format!("call {}", n + 1)
                    };
                    (label, call, i)
                })
            })
            .collect();
        let mut failures = Vec::new();
        if case.concurrent {
            let runs = calls.iter().map(|(label, call, i)| async move {
                if let Err(why) = self.wait_in_flight(function, call.after_in_flight).await {
                    return vec![format!("{label}: {why}")];
                }
                let found = self.run_call(binding, function, call, *i).await;
                found.into_iter().map(|f| format!("{label}: {f}")).collect::<Vec<_>>()
            });
            failures.extend(futures::future::join_all(runs).await.into_iter().flatten());
        } else {
            for (label, call, i) in &calls {
                failures.extend(
                    self.run_call(binding, function, call, *i)
                        .await
                        .into_iter()
                        .map(|f| format!("{label}: {f}")),
                );
            }
        }
        failures
    }

    /// Waits until `function` has at least `calls` calls in flight (at most 10 s).
    async fn wait_in_flight(&self, function: &Deployed, calls: u64) -> Result<(), String> {
        if calls == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let described =
                self.admin(reqwest::Method::GET, &format!("/v1/functions/{}", function.name)).send();
            let in_flight = match described.await {
                Ok(answer) => answer.json::<Value>().await.ok().and_then(|v| v["in_flight"].as_u64()),
                Err(_) => None,
            };
            if in_flight.is_some_and(|n| n >= calls) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the function never had {calls} calls in flight (last seen: {in_flight:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Makes one call and checks it; returns what did not match.
    async fn run_call(
        &self,
        binding: &Binding,
        function: &Deployed,
        call: &Call,
        repeat: usize,
    ) -> Vec<String> {
        let name =
            if call.unknown_function { format!("{}-unknown", function.name) } else { function.name.clone() };
        let prefix = match call.trigger {
            Trigger::Sync => "fn",
            Trigger::Async => "async/fn",
        };
        let path = call.path.replace("{i}", &repeat.to_string());
        let url = format!("{}/{prefix}/{name}{path}", self.target.url);
        let Ok(method) = reqwest::Method::from_bytes(call.method.as_bytes()) else {
            return vec![format!("`{}` is not a method", call.method)];
        };
        let sent = call.body_bytes().unwrap_or_default();
        let mut request = self.http.request(method, url);
        for (header, value) in &call.headers {
            request = request.header(header, value);
        }
        let response = match request.body(sent.clone()).send().await {
            Ok(response) => response,
            Err(e) => return vec![format!("no response: {e}")],
        };
        let mut job = None;
        let Answer { status, headers, body, first_chunk, last_chunk } =
            if call.trigger == Trigger::Async && response.status() == reqwest::StatusCode::ACCEPTED {
                let id = header_text(response.headers(), "amphi-invocation-id");
                match self.job_result(&id).await {
                    Ok((found, answer)) => {
                        job = Some(found);
                        answer
                    }
                    Err(why) => return vec![format!("job {id}: {why}")],
                }
            } else {
                match read_answer(response).await {
                    Ok(answer) => answer,
                    Err(why) => return vec![why],
                }
            };
        // An async call's record is its last attempt's.
        let invocation_id = match &job {
            Some(job) => job["attempts"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|a| a["invocation_id"].as_str())
                .unwrap_or("")
                .to_string(),
            None => header_text(&headers, "amphi-invocation-id"),
        };
        let vars = Vars {
            function: &name,
            version: function.version,
            backend: binding.backend,
            invocation_id: &invocation_id,
            repeat,
        };
        let expect = call.expect.for_tags(&binding.tags());
        let mut failures = check_response(&expect, &vars, status, &headers, &body, &sent);
        failures.extend(check_job(&expect, job.as_ref(), call.trigger));
        if let Some(over) = expect.streamed_over_ms.filter(|ms| *ms > 0) {
            let spread = match (first_chunk, last_chunk) {
                (Some(first), Some(last)) => last - first,
                _ => Duration::ZERO,
            };
            if spread < Duration::from_millis(over) {
                failures.push(format!("the body arrived within {spread:?}, not streamed over {over} ms"));
            }
        }
        if expect.outcome.is_some() || expect.record_status.is_some() || !expect.logs.is_empty() {
            failures.extend(self.check_record(&expect, &vars).await);
        }
        failures
    }

    /// Waits for job `id` to end; returns the job and its result as the function gave it.
    async fn job_result(&self, id: &str) -> Result<(Value, Answer), String> {
        let started = Instant::now();
        let job = loop {
            let answer = self.admin(reqwest::Method::GET, &format!("/v1/jobs/{id}")).send().await;
            let job: Value = match answer {
                Ok(answer) => answer.json().await.unwrap_or(Value::Null),
                Err(e) => return Err(format!("cannot read the job: {e}")),
            };
            if ["succeeded", "failed", "dead", "canceled"].contains(&job["state"].as_str().unwrap_or("")) {
                break job;
            }
            if started.elapsed() > CALL_TIMEOUT {
                return Err(format!("not ended within {CALL_TIMEOUT:?}: {job}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let result = self.admin(reqwest::Method::GET, &format!("/v1/jobs/{id}/result?raw=1")).send();
        let result = result.await.map_err(|e| format!("cannot read the result: {e}"))?;
        if !result.status().is_success() {
            return Err(format!("no result: {}", result.status()));
        }
        let mut answer = read_answer(result).await?;
        answer.status = header_text(&answer.headers, "amphi-status").parse().unwrap_or(0);
        Ok((job, answer))
    }

    async fn check_record(&self, expect: &Expect, vars: &Vars<'_>) -> Vec<String> {
        if vars.invocation_id.is_empty() {
            return vec!["no amphi-invocation-id header, so no record to check".into()];
        }
        let started = Instant::now();
        let found = loop {
            let answer = self
                .admin(reqwest::Method::GET, &format!("/v1/invocations/{}", vars.invocation_id))
                .send()
                .await;
            if let Ok(answer) = answer
                && answer.status().is_success()
                && let Ok(found) = answer.json::<Value>().await
            {
                let expected_lines = found["invocation"]["log_lines"].as_u64().unwrap_or(0) as usize;
                if found["logs"].as_array().map_or(0, Vec::len) >= expected_lines {
                    break found;
                }
            }
            if started.elapsed() > RECORD_WAIT {
                return vec![format!(
                    "no invocation record for {} within {RECORD_WAIT:?}",
                    vars.invocation_id
                )];
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let record = &found["invocation"];
        let mut failures = Vec::new();
        if let Some(outcome) = &expect.outcome
            && record["outcome"] != outcome.as_str()
        {
            failures.push(format!(
                "record outcome: expected {outcome}, got {} ({})",
                record["outcome"], record["error"]
            ));
        }
        if let Some(status) = expect.record_status
            && record["status"] != status
        {
            failures.push(format!("record status: expected {status}, got {}", record["status"]));
        }
        if !expect.logs.is_empty() {
            let expected: BTreeSet<String> = expect.logs.iter().map(|line| vars.fill(line)).collect();
            let logged: BTreeSet<String> = found["logs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|line| line["stream"] == "stdout" || line["stream"] == "stderr")
                .filter_map(|line| line["line"].as_str().map(str::to_string))
                .collect();
            if expected != logged {
                failures.push(format!("log lines of the invocation: expected {expected:?}, got {logged:?}"));
            }
        }
        failures
    }
}

/// A response read whole, with when its first and last pieces came.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    first_chunk: Option<Instant>,
    last_chunk: Option<Instant>,
}

async fn read_answer(mut response: reqwest::Response) -> Result<Answer, String> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let (mut body, mut first_chunk, mut last_chunk) = (Vec::new(), None, None);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let now = Instant::now();
                first_chunk.get_or_insert(now);
                last_chunk = Some(now);
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("the body broke off after {} bytes: {e}", body.len())),
        }
    }
    Ok(Answer { status, headers, body, first_chunk, last_chunk })
}

fn check_job(expect: &Expect, job: Option<&Value>, trigger: Trigger) -> Vec<String> {
    let mut failures = Vec::new();
    let Some(job) = job else {
        if trigger == Trigger::Async && (expect.job_state.is_some() || expect.attempts.is_some()) {
            failures.push("no job was made (the call was not accepted)".to_string());
        }
        return failures;
    };
    if let Some(state) = &expect.job_state
        && job["state"] != state.as_str()
    {
        failures.push(format!("job state: expected {state}, got {}", job["state"]));
    }
    let attempts = job["attempts"].as_array().map_or(0, Vec::len);
    if let Some(expected) = expect.attempts
        && attempts != expected
    {
        failures.push(format!("job attempts: expected {expected}, got {attempts}"));
    }
    failures
}

fn check_response(
    expect: &Expect,
    vars: &Vars<'_>,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    sent: &[u8],
) -> Vec<String> {
    let mut failures = Vec::new();
    let shown = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if body.len() > 300 { format!("{text}…") } else { text }
    };
    if let Some(expected) = expect.status
        && status != expected
    {
        failures.push(format!("status: expected {expected}, got {status} (body: {})", shown()));
    }
    for (name, expected) in &expect.headers {
        let expected: Vec<String> = expected.values().iter().map(|v| vars.fill(v)).collect();
        let got: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if got != expected {
            failures.push(format!("header {name}: expected {expected:?}, got {got:?}"));
        }
    }
    for name in &expect.headers_present {
        if !headers.contains_key(name.as_str()) {
            failures.push(format!("header {name}: missing"));
        }
    }
    for name in &expect.headers_absent {
        if let Some(value) = headers.get(name.as_str()) {
            failures.push(format!("header {name}: expected none, got {value:?}"));
        }
    }
    if let Some(expected) = &expect.body {
        let expected = vars.fill(expected);
        if body != expected.as_bytes() {
            failures.push(format!("body: expected {expected:?}, got {:?}", shown()));
        }
    }
    if expect.body_is_request == Some(true) && body != sent {
        let differs_at =
            body.iter().zip(sent).position(|(a, b)| a != b).unwrap_or(body.len().min(sent.len()));
        failures.push(format!(
            "body: not the request's ({} bytes sent, {} received, first difference at byte {differs_at})",
            sent.len(),
            body.len()
        ));
    }
    if let Some(expected) = expect.body_len
        && body.len() != expected
    {
        failures.push(format!("body length: expected {expected}, got {}", body.len()));
    }
    if let Some(kind) = &expect.problem {
        let content_type = header_text(headers, "content-type");
        let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let expected = format!("urn:amphi:problem:{kind}");
        if content_type != "application/problem+json" || problem["type"] != expected.as_str() {
            failures
                .push(format!("expected a problem+json of type {expected}, got {content_type}: {}", shown()));
        }
    }
    failures
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}
