//! `/v1/jobs` and `/v1/schedules` of the admin API.
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /v1/jobs` | jobs, newest first: `function`, `state`, `before` (a job id, for paging), `limit` |
//! | `GET /v1/jobs/{id}` | one job: state, attempts with their invocation ids, times, final status, callback |
//! | `GET /v1/jobs/{id}/result` | the last response: `{status, headers, body | body_base64, body_bytes, truncated}`; with `?raw=1` the body itself with the function's headers, its status in `amphi-status` |
//! | `POST /v1/jobs/{id}/retry` | a dead, failed or canceled job back on the queue (409 otherwise) |
//! | `DELETE /v1/jobs/{id}` | cancel a queued job (409 once it runs) |
//! | `PUT /v1/schedules/{name}` | `{function, cron, method, path, headers, body, timezone}` → the schedule |
//! | `GET /v1/schedules` | every schedule with its last and next tick |
//! | `GET /v1/schedules/{name}` | one schedule |
//! | `DELETE /v1/schedules/{name}` | delete a schedule |

use std::collections::HashMap;
use std::sync::Arc;

use amphi_contract::function::validate_name;
use amphi_contract::{Problem, ProblemKind, ResponseBody, now_unix_us};
use amphi_queue::{JobFilter, JobState, QueueError};
use base64::Engine as _;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::schedule::{ScheduleSpec, ScheduleView};
use crate::admin::{parse_limit, read_json};
use crate::platform::Platform;
use crate::respond::{self, json};

/// Serves `/v1/jobs…` and `/v1/schedules…`; `None` for any other path.
pub async fn route(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    segments: &[&str],
    query: &HashMap<String, String>,
) -> Option<Result<Response<ResponseBody>, Problem>> {
    let method = request.method().clone();
    Some(match (&method, segments) {
        (&Method::GET, ["jobs"]) => list(platform, query).await,
        (&Method::GET, ["jobs", id]) => job(platform, id).await,
        (&Method::GET, ["jobs", id, "result"]) => result(platform, id, query).await,
        (&Method::POST, ["jobs", id, "retry"]) => {
            let requeued = platform.jobs.queue.requeue(id, now_unix_us()).await;
            if let Ok(Some(job)) = &requeued {
                platform.jobs.wake(platform, &job.function);
            }
            changed(requeued, id)
        }
        (&Method::DELETE, ["jobs", id]) => changed(platform.jobs.queue.cancel(id, now_unix_us()).await, id),
        (&Method::GET, ["schedules"]) => schedules(platform).await,
        (&Method::GET, ["schedules", name]) => schedule(platform, name).await,
        (&Method::PUT, ["schedules", name]) => put_schedule(platform, name, request).await,
        (&Method::DELETE, ["schedules", name]) => delete_schedule(platform, name).await,
        (_, ["jobs"] | ["jobs", _] | ["jobs", _, "result" | "retry"] | ["schedules"] | ["schedules", _]) => {
            Err(Problem::new(
                ProblemKind::MethodNotAllowed,
                format!("{method} is not allowed on /v1/{}", segments.join("/")),
            ))
        }
        _ => return None,
    })
}

/// A queue failure as the API answers it: 409 for a job in the wrong state, 503 while the shared
/// store is away, 500 otherwise.
pub fn queue_problem(error: QueueError) -> Problem {
    match error {
        QueueError::WrongState { .. } => Problem::new(ProblemKind::Conflict, error.to_string()),
        QueueError::Store(store) if store.is_transient() => crate::platform::stored(store),
        other => Problem::new(ProblemKind::Internal, other.to_string()),
    }
}

fn no_job(id: &str) -> Problem {
    Problem::new(ProblemKind::NotFound, format!("no job {id} (finished jobs are kept for --job-retention)"))
}

async fn list(
    platform: &Platform,
    query: &HashMap<String, String>,
) -> Result<Response<ResponseBody>, Problem> {
    let state = match query.get("state") {
        None => None,
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            Problem::new(
                ProblemKind::BadRequest,
                format!("state must be one of {}, got `{text}`", states.join(", ")),
            )
        })?),
    };
    let filter = JobFilter {
        function: query.get("function").cloned(),
        state,
        before: query.get("before").cloned(),
        limit: parse_limit(query)?,
    };
    let jobs = platform.jobs.queue.list(filter).await.map_err(queue_problem)?;
    Ok(json(StatusCode::OK, &jobs))
}

async fn job(platform: &Platform, id: &str) -> Result<Response<ResponseBody>, Problem> {
    match platform.jobs.queue.get(id).await.map_err(queue_problem)? {
        Some(job) => Ok(json(StatusCode::OK, &job)),
        None => Err(no_job(id)),
    }
}

async fn result(
    platform: &Platform,
    id: &str,
    query: &HashMap<String, String>,
) -> Result<Response<ResponseBody>, Problem> {
    let Some(result) = platform.jobs.queue.result(id).await.map_err(queue_problem)? else {
        return match platform.jobs.queue.get(id).await.map_err(queue_problem)? {
            Some(job) => Err(Problem::new(
                ProblemKind::NotFound,
                format!("job {id} is {} and has no result yet", job.state),
            )),
            None => Err(no_job(id)),
        };
    };
    if query.get("raw").is_some_and(|v| v == "1" || v == "true") {
        let mut response = Response::new(respond::full(result.body.clone()));
        let headers = response.headers_mut();
        // The function's headers as it gave them (repeats and order kept), but those that
        // describe this response's framing, which is not the function's.
        for (name, value) in &result.headers {
            let framing = ["content-length", "transfer-encoding", "connection"].contains(&name.as_str());
            if !framing
                && let (Ok(name), Ok(value)) =
                    (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                headers.append(name, value);
            }
        }
        headers.insert("amphi-status", HeaderValue::from(result.status));
        headers.insert(
            "amphi-result-truncated",
            HeaderValue::from_static(if result.truncated { "true" } else { "false" }),
        );
        return Ok(response);
    }
    let mut body = json!({
        "status": result.status,
        "headers": result.headers,
        "body_bytes": result.body_bytes,
        "truncated": result.truncated,
    });
    match std::str::from_utf8(&result.body) {
        Ok(text) => body["body"] = json!(text),
        Err(_) => body["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&result.body)),
    }
    Ok(json(StatusCode::OK, &body))
}

fn changed(
    outcome: Result<Option<amphi_queue::Job>, QueueError>,
    id: &str,
) -> Result<Response<ResponseBody>, Problem> {
    match outcome.map_err(queue_problem)? {
        Some(job) => Ok(json(StatusCode::OK, &job)),
        None => Err(no_job(id)),
    }
}

async fn schedules(platform: &Platform) -> Result<Response<ResponseBody>, Problem> {
    let stored = platform.jobs.queue.schedules().await.map_err(queue_problem)?;
    let views: Vec<ScheduleView> = stored.into_iter().filter_map(ScheduleView::of).collect();
    Ok(json(StatusCode::OK, &views))
}

async fn schedule(platform: &Platform, name: &str) -> Result<Response<ResponseBody>, Problem> {
    let stored = platform.jobs.queue.schedules().await.map_err(queue_problem)?;
    match stored.into_iter().find(|s| s.name == name).and_then(ScheduleView::of) {
        Some(view) => Ok(json(StatusCode::OK, &view)),
        None => Err(Problem::new(ProblemKind::NotFound, format!("no schedule named `{name}`"))),
    }
}

async fn put_schedule(
    platform: &Arc<Platform>,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Problem> {
    validate_name(name).map_err(|e| {
        Problem::new(
            ProblemKind::BadRequest,
            format!("schedule name: {}", e.0.replace("function name", "name")),
        )
    })?;
    let spec: ScheduleSpec = read_json(request).await?;
    spec.check().map_err(|why| Problem::new(ProblemKind::BadRequest, why))?;
    if platform.route(&spec.function).is_none() {
        return Err(Problem::new(
            ProblemKind::NotFound,
            format!("function: no function named `{}`", spec.function),
        ));
    }
    let existed =
        platform.jobs.queue.schedules().await.map_err(queue_problem)?.iter().any(|s| s.name == name);
    let text =
        serde_json::to_string(&spec).map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    platform.jobs.queue.put_schedule(name, &text, now_unix_us()).await.map_err(queue_problem)?;
    platform.jobs.schedules_changed();
    let stored = platform.jobs.queue.schedules().await.map_err(queue_problem)?;
    let view = stored.into_iter().find(|s| s.name == name).and_then(ScheduleView::of);
    Ok(json(if existed { StatusCode::OK } else { StatusCode::CREATED }, &view))
}

async fn delete_schedule(platform: &Platform, name: &str) -> Result<Response<ResponseBody>, Problem> {
    if !platform.jobs.queue.delete_schedule(name).await.map_err(queue_problem)? {
        return Err(Problem::new(ProblemKind::NotFound, format!("no schedule named `{name}`")));
    }
    platform.jobs.schedules_changed();
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(respond::empty())
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))
}
