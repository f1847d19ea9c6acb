//! The admin API under `/v1`: deploy, list, describe, update, delete; logs and invocation
//! records, with a live follow mode. JSON in and out, errors as problem+json, bearer token.
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /v1/artifacts` | upload a `.wasm` (validated and compiled), a build context (built into an image; `dockerfile`, `function`; NDJSON progress with `Accept: application/x-ndjson`) or `{"image": ref}` → `{digest, kind, size}` |
//! | `GET /v1/functions` | the current version of every function |
//! | `PUT /v1/functions/{name}` | `{digest, config}` → a new version, current at once |
//! | `GET /v1/functions/{name}` | the current version, every version, calls in flight, instances |
//! | `PATCH /v1/functions/{name}` | change config fields → a new version of the same artifact |
//! | `DELETE /v1/functions/{name}` | delete the function and its versions |
//! | `GET /v1/logs` | log lines: `function`, `invocation`, `since`, `after`, `limit`, `follow` |
//! | `GET /v1/invocations` | invocation records: `function`, `since`, `after`, `limit` |
//! | `GET /v1/invocations/{id}` | one record with its log lines |
//! | `GET /v1/stats` | calls in flight, counters of the backends and the log store |
//! | `GET /v1/nodes` | the gateways sharing this one's store: id, address, version, last seen, `up` or `gone` |
//! | `/v1/jobs…`, `/v1/schedules…` | async jobs and schedules: see [`crate::jobs::api`] |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amphi_contract::function::{FunctionConfig, FunctionVersion};
use amphi_contract::now_unix_us;
use amphi_contract::{Problem, ProblemKind, ResponseBody};
use amphi_store::logs::{InvocationQuery, LogQuery};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::platform::{Platform, blocking, internal, stored};
use crate::respond::{self, json, problem, problem_of};
use crate::{follow, source_build};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
const MAX_JSON_BODY: usize = 1 << 20;

/// Serves one admin request; `path` is what follows `/v1`.
pub async fn handle(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    path: &str,
) -> Response<ResponseBody> {
    if !authorized(platform, &request) {
        return problem_of(
            ProblemKind::Unauthorized,
            "send `Authorization: Bearer <token>` with the admin token",
        );
    }
    match route(platform, request, path).await {
        Ok(response) => response,
        Err(p) => problem(p),
    }
}

/// `GET /metrics`: the admin token is required unless the server runs with `--metrics-public`.
pub fn metrics(platform: &Platform, request: &Request<Incoming>) -> Response<ResponseBody> {
    if !platform.config.metrics_public && !authorized(platform, request) {
        return problem_of(
            ProblemKind::Unauthorized,
            "/metrics needs the admin token (Authorization: Bearer TOKEN) unless the server runs with \
             --metrics-public",
        );
    }
    match platform.metrics.encode(platform) {
        Ok(text) => {
            let mut response = Response::new(crate::respond::full(text));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        Err(e) => problem_of(ProblemKind::Internal, format!("cannot encode the metrics: {e}")),
    }
}

fn authorized(platform: &Platform, request: &Request<Incoming>) -> bool {
    let Some(given) = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), platform.token().as_bytes())
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    path: &str,
) -> Result<Response<ResponseBody>, Problem> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let query = query_params(request.uri().query());
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["artifacts"]) => upload(platform, request, &query).await,
        (&Method::GET, ["functions"]) => Ok(json(StatusCode::OK, &platform.functions())),
        (&Method::GET, ["functions", name]) => {
            let credentials = request.headers().get(http::header::AUTHORIZATION).cloned();
            describe(platform, name, query.get("scope").is_some_and(|s| s == "node"), credentials).await
        }
        (&Method::PUT, ["functions", name]) => deploy(platform, name, request).await,
        (&Method::PATCH, ["functions", name]) => update(platform, name, request).await,
        (&Method::DELETE, ["functions", name]) => match platform.delete(name.to_string()).await? {
            true => Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(respond::empty())
                .map_err(internal)?),
            false => Err(not_found(name)),
        },
        (&Method::GET, ["logs"]) => logs(platform, &query).await,
        (&Method::GET, ["invocations"]) => invocations(platform, &query).await,
        (&Method::GET, ["invocations", id]) => invocation(platform, id).await,
        (&Method::GET, ["stats"]) => Ok(stats(platform)),
        (&Method::GET, ["nodes"]) => Ok(json(StatusCode::OK, &crate::cluster::nodes(platform).await?)),
        (_, ["jobs", ..] | ["schedules", ..]) => {
            match crate::jobs::api::route(platform, request, &segments, &query).await {
                Some(answer) => answer,
                None => Err(Problem::new(ProblemKind::NotFound, format!("no admin route /v1{path}"))),
            }
        }
        (
            _,
            ["artifacts"]
            | ["functions"]
            | ["functions", _]
            | ["logs"]
            | ["invocations"]
            | ["invocations", _]
            | ["stats"]
            | ["nodes"],
        ) => Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("{method} is not allowed on /v1/{}", segments.join("/")),
        )),
        _ => Err(Problem::new(ProblemKind::NotFound, format!("no admin route /v1{path}"))),
    }
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Problem> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Problem::new(
            ProblemKind::PayloadTooLarge,
            format!("the body is larger than {}", amphi_contract::size::format_bytes(limit as u64)),
        )),
        Err(e) => Err(Problem::new(ProblemKind::BadRequest, format!("cannot read the body: {e}"))),
    }
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Problem> {
    let body = read_body(request, MAX_JSON_BODY).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Problem::new(ProblemKind::BadRequest, format!("invalid JSON: {e}")))
}

/// An upload is one of: a `.wasm` file; a build context (tar or tar.gz, see [`source_build`]); or
/// `{"image": "name:tag"}` (JSON) naming an image already on the Docker engine.
async fn upload(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    query: &HashMap<String, String>,
) -> Result<Response<ResponseBody>, Problem> {
    let is_json = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let streaming = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if is_json {
        return source_build::import_image(platform, read_json(request).await?).await;
    }
    let body = read_body(request, platform.config.max_upload_bytes as usize).await?;
    if body.is_empty() {
        return Err(Problem::new(ProblemKind::BadRequest, "the upload is empty"));
    }
    if let Some(builder) = platform.builder_for(&body) {
        let build = source_build::BuildRequest {
            builder,
            context: body,
            dockerfile: query.get("dockerfile").cloned().unwrap_or_else(|| "Dockerfile".into()),
            function: query.get("function").cloned(),
        };
        return source_build::build(platform, build, streaming).await;
    }
    let (artifact, created) = platform.upload(body).await?;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &artifact))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    digest: String,
    #[serde(default)]
    config: FunctionConfig,
}

async fn deploy(
    platform: &Arc<Platform>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Problem> {
    let DeployRequest { digest, config } = read_json(request).await?;
    let deployed = platform.deploy(name.to_string(), digest, config).await?;
    Ok(deployed_response(deployed))
}

async fn update(
    platform: &Arc<Platform>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Problem> {
    let patch: serde_json::Value = read_json(request).await?;
    let deployed = platform.update(name.to_string(), patch).await?;
    Ok(deployed_response(deployed))
}

/// The new version; a warning (reserved instances that did not start) rides along.
fn deployed_response((function, warning): (FunctionVersion, Option<String>)) -> Response<ResponseBody> {
    let mut body = serde_json::to_value(&function).unwrap_or_default();
    if let (Some(warning), Some(fields)) = (warning, body.as_object_mut()) {
        fields.insert("warning".into(), warning.into());
    }
    json(StatusCode::CREATED, &body)
}

/// A function as `GET /v1/functions/{name}` shows it: its versions, and this gateway's calls in
/// flight and instances; in a cluster, also every node's instances (`nodes`), asked of each node
/// with the caller's credentials, unless `this_node_only` (`?scope=node`, what nodes ask each
/// other).
async fn describe(
    platform: &Arc<Platform>,
    name: &str,
    this_node_only: bool,
    credentials: Option<http::HeaderValue>,
) -> Result<Response<ResponseBody>, Problem> {
    let route = crate::cluster::route(platform, name).await.ok_or_else(|| not_found(name))?;
    let versions = platform.versions(name.to_string()).await?;
    let in_flight = route.capacity.in_flight();
    let mut body = json!({ "function": route.function, "versions": versions, "in_flight": in_flight });
    if let Some(instances) = route.backend.instances(name) {
        body["instances"] = json!(instances);
        if !this_node_only && platform.cluster.is_some() {
            body["nodes"] =
                json!(crate::cluster::instances_by_node(platform, name, &body, credentials).await?);
        }
    }
    Ok(json(StatusCode::OK, &body))
}

async fn logs(
    platform: &Arc<Platform>,
    query: &HashMap<String, String>,
) -> Result<Response<ResponseBody>, Problem> {
    let log_query = LogQuery {
        function: query.get("function").cloned(),
        invocation_id: query.get("invocation").cloned(),
        since_us: query.get("since").map(|s| parse_since(s)).transpose()?,
        after_seq: parse_after(query)?,
        limit: parse_limit(query)?,
    };
    if query.get("follow").is_some_and(|v| v == "true" || v == "1") {
        return Ok(follow::stream(platform.clone(), log_query));
    }
    let store = platform.log_reader.clone();
    let lines = blocking(move || store.logs(&log_query).map_err(stored)).await?;
    Ok(json(StatusCode::OK, &lines))
}

async fn invocations(
    platform: &Arc<Platform>,
    query: &HashMap<String, String>,
) -> Result<Response<ResponseBody>, Problem> {
    let record_query = InvocationQuery {
        function: query.get("function").cloned(),
        id: query.get("id").cloned(),
        since_us: query.get("since").map(|s| parse_since(s)).transpose()?,
        after_seq: parse_after(query)?,
        limit: parse_limit(query)?,
    };
    let store = platform.log_reader.clone();
    let records = blocking(move || store.invocations(&record_query).map_err(stored)).await?;
    Ok(json(StatusCode::OK, &records))
}

async fn invocation(platform: &Arc<Platform>, id: &str) -> Result<Response<ResponseBody>, Problem> {
    let store = platform.log_reader.clone();
    let key = id.to_string();
    let (record, lines) = blocking(move || {
        let record = store
            .invocations(&InvocationQuery { id: Some(key.clone()), limit: 1, ..Default::default() })
            .map_err(stored)?;
        let lines = store
            .logs(&LogQuery { invocation_id: Some(key), limit: MAX_LIMIT, ..Default::default() })
            .map_err(stored)?;
        Ok((record.into_iter().next(), lines))
    })
    .await?;
    let record =
        record.ok_or_else(|| Problem::new(ProblemKind::NotFound, format!("no invocation `{id}`")))?;
    Ok(json(StatusCode::OK, &json!({ "invocation": record, "logs": lines })))
}

fn stats(platform: &Platform) -> Response<ResponseBody> {
    let mut body = json!({
        "functions": platform.functions().len(),
        "in_flight": platform.in_flight(),
        "data_directory_bytes": platform.data_bytes(),
        "logs": platform.logs.stats(),
        "jobs": platform.jobs.queue.counts(),
        "log_follower_catch_ups": platform.follower_catch_ups.load(std::sync::atomic::Ordering::Relaxed),
    });
    for (backend, stats) in platform.backend_stats() {
        body[backend] = stats;
    }
    json(StatusCode::OK, &body)
}

pub(crate) fn parse_limit(query: &HashMap<String, String>) -> Result<usize, Problem> {
    match query.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Problem::new(
                ProblemKind::BadRequest,
                format!("limit must be 1 to {MAX_LIMIT}, got `{text}`"),
            )),
        },
    }
}

/// `after` is the `seq` of the last item of the previous page: the next page starts past it.
fn parse_after(query: &HashMap<String, String>) -> Result<Option<u64>, Problem> {
    query
        .get("after")
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                Problem::new(
                    ProblemKind::BadRequest,
                    format!("after must be the `seq` of an item of a previous page, got `{text}`"),
                )
            })
        })
        .transpose()
}

/// `since` is a duration back from now (`10m`), an RFC 3339 time, or microseconds since the epoch.
fn parse_since(text: &str) -> Result<u64, Problem> {
    if let Ok(us) = text.parse::<u64>() {
        return Ok(us);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_unix_us().saturating_sub(ago.as_micros() as u64));
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        return Ok(since.as_micros() as u64);
    }
    Err(Problem::new(
        ProblemKind::BadRequest,
        format!(
            "since must be a duration (10m), an RFC 3339 time or microseconds since the epoch, got `{text}`"
        ),
    ))
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

/// Decodes a query component (`+` is a space in form encoding).
fn decode_component(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

fn not_found(name: &str) -> Problem {
    Problem::new(ProblemKind::NotFound, format!("no function named `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let params = query_params(Some("function=a-b&since=2026-11-25T02%3A00%3A00Z&x&q=a+b"));
        assert_eq!(params["function"], "a-b");
        assert_eq!(params["since"], "2026-11-25T02:00:00Z");
        assert_eq!(params["x"], "");
        assert_eq!(params["q"], "a b");
    }

    #[test]
    fn since_accepts_durations_times_and_numbers() {
        assert_eq!(parse_since("12345").ok(), Some(12345));
        let ten_minutes_ago = parse_since("10m").expect("duration");
        assert!(now_unix_us() - ten_minutes_ago >= 600_000_000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z").ok(), Some(1_000_000));
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
