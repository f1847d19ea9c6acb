//! `/async/fn/NAME[/REST]`: the whole request is stored as a job before the gateway answers
//! `202 Accepted` (`amphi-invocation-id` and `Location: /v1/jobs/{id}`).
//!
//! Everything that can be refused is refused before anything is stored: an unknown function
//! (404), a body over `--max-body` (413), a malformed `Idempotency-Key`, `amphi-delay`,
//! `amphi-not-before` or callback URL (400 naming the field), a full queue (503, `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use amphi_contract::{Problem, ProblemKind, ResponseBody, headers, now_unix_us};
use amphi_queue::{Enqueued, JobRequest, NewJob, QueueError};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::platform::Platform;
use crate::respond;
use crate::trigger::{self, control_character};

/// The header asking for a delay before the first attempt (`30s`, `5m`).
pub const DELAY: &str = "amphi-delay";
/// The header asking that the first attempt run no earlier than a time (RFC 3339).
pub const NOT_BEFORE: &str = "amphi-not-before";
/// The header naming where the result goes when the job ends (Amphi's name).
pub const CALLBACK_URL: &str = "amphi-callback-url";
/// The same, as OpenFaaS users already send it.
pub const X_CALLBACK_URL: &str = "x-callback-url";
/// The header that makes a retried enqueue return the first job.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest delay a job may ask for.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest idempotency key.
const MAX_KEY: usize = 255;
/// What a full queue asks callers to wait, in seconds.
const FULL_RETRY_AFTER: &str = "1";

/// Splits `/async/fn/{name}[/{rest}]` into the name and the path the function sees.
pub fn split_async_path(path: &str) -> Option<(&str, &str)> {
    trigger::split_trigger_path(path.strip_prefix("/async")?)
}

/// Accepts one job for the function `name`.
pub async fn accept(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    name: &str,
    rest: &str,
) -> Response<ResponseBody> {
    match accept_job(platform, request, name, rest).await {
        Ok(response) => response,
        Err(problem) => {
            let full = problem.status == ProblemKind::QueueFull.status();
            let mut response = respond::problem(problem);
            if full {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static(FULL_RETRY_AFTER));
            }
            response
        }
    }
}

async fn accept_job(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    name: &str,
    rest: &str,
) -> Result<Response<ResponseBody>, Problem> {
    if !matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::GET)
    {
        return Err(Problem::new(
            ProblemKind::MethodNotAllowed,
            format!("{} cannot be queued: use POST, PUT, PATCH, DELETE or GET", request.method()),
        ));
    }
    if platform.route(name).is_none() {
        return Err(Problem::new(ProblemKind::NotFound, format!("no function named `{name}`")));
    }
    if let Some(bad) = control_character(rest) {
        return Err(Problem::new(
            ProblemKind::BadRequest,
            format!("the path holds a control character ({bad:?}) once percent-decoded"),
        ));
    }
    let (parts, body) = request.into_parts();
    let now = now_unix_us();
    let options = JobOptions::from_headers(&parts.headers, now, &platform.config.callback_allow_hosts)?;
    let body = trigger::read_bounded_body(
        &parts.headers,
        body,
        platform.config.max_body_bytes,
        platform.config.body_timeout,
    )
    .await
    .map_err(|(kind, detail)| Problem::new(kind, detail))?;
    let path = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let job = NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        function: name.to_string(),
        request: JobRequest {
            method: parts.method.to_string(),
            path,
            headers: kept_headers(&parts.headers),
            body,
        },
        created_us: now,
        not_before_us: options.not_before_us.unwrap_or(now),
        idempotency_key: options.idempotency_key,
        callback_url: options.callback_url,
        schedule: None,
    };
    let (status, id) = match platform.jobs.queue.enqueue(job, platform.config.queue_max).await {
        Ok(Enqueued::New(id)) => (StatusCode::ACCEPTED, id),
        Ok(Enqueued::Existing(id)) => (StatusCode::OK, id),
        Err(QueueError::Full(waiting)) => {
            return Err(Problem::new(
                ProblemKind::QueueFull,
                format!(
                    "the job queue holds {waiting} unfinished jobs, its limit (serve --queue-max); \
                     try again later"
                ),
            ));
        }
        Err(e) if e.is_unavailable() => return Err(super::api::queue_problem(e)),
        Err(e) => {
            return Err(Problem::new(ProblemKind::Internal, format!("the job could not be stored: {e}")));
        }
    };
    if status == StatusCode::ACCEPTED {
        platform.jobs.wake(platform, name);
    }
    let location = format!("/v1/jobs/{id}");
    let mut response = respond::json(
        status,
        &json!({ "id": id, "location": location, "created": status == StatusCode::ACCEPTED }),
    );
    for (header, value) in
        [(headers::INVOCATION_ID, id.as_str()), (http::header::LOCATION, location.as_str())]
    {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(header, value);
        }
    }
    Ok(response)
}

/// What a caller asked of a job in its header fields.
#[derive(Debug, Default, PartialEq, Eq)]
struct JobOptions {
    not_before_us: Option<u64>,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
}

impl JobOptions {
    fn from_headers(headers: &HeaderMap, now_us: u64, allowed_hosts: &[String]) -> Result<Self, Problem> {
        let bad = |field: &str, why: String| Problem::new(ProblemKind::BadRequest, format!("{field}: {why}"));
        let text = |name: &str| -> Result<Option<&str>, Problem> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim()))
                    .map_err(|_| bad(name, "the value is not visible ASCII".into())),
            }
        };
        let mut options = Self::default();
        if let Some(key) = text(IDEMPOTENCY_KEY)? {
            if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_KEY} visible ASCII characters without spaces"),
                ));
            }
            options.idempotency_key = Some(key.to_string());
        }
        match (text(DELAY)?, text(NOT_BEFORE)?) {
            (Some(_), Some(_)) => {
                return Err(bad(DELAY, format!("give either {DELAY} or {NOT_BEFORE}, not both")));
            }
            (Some(delay), None) => {
                let delay = humantime::parse_duration(delay).map_err(|e| {
                    bad(DELAY, format!("`{delay}` is not a duration such as 30s or 5m ({e})"))
                })?;
                if delay > MAX_DELAY {
                    return Err(bad(DELAY, "must be at most 365 days".into()));
                }
                options.not_before_us = Some(now_us.saturating_add(delay.as_micros() as u64));
            }
            (None, Some(at)) => {
                let time = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
                    bad(
                        NOT_BEFORE,
                        format!("`{at}` is not an RFC 3339 time such as 2026-12-04T03:00:00Z ({e})"),
                    )
                })?;
                let at_us = u64::try_from(time.timestamp_micros()).unwrap_or(0);
                if at_us > now_us.saturating_add(MAX_DELAY.as_micros() as u64) {
                    return Err(bad(NOT_BEFORE, "must be at most 365 days ahead".into()));
                }
                options.not_before_us = Some(at_us.max(now_us));
            }
            (None, None) => {}
        }
        let callback = match (text(CALLBACK_URL)?, text(X_CALLBACK_URL)?) {
            (Some(url), _) => Some((CALLBACK_URL, url)),
            (None, Some(url)) => Some(("X-Callback-Url", url)),
            (None, None) => None,
        };
        if let Some((field, url)) = callback {
            super::callback::check_url(url, allowed_hosts).map_err(|why| bad(field, why))?;
            options.callback_url = Some(url.to_string());
        }
        Ok(options)
    }
}

/// The caller's header fields the job keeps: all but the platform's own (`amphi-*`), the
/// callback's, and those about the connection the request came on.
fn kept_headers(fields: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    const DROPPED: [&str; 6] =
        ["connection", "keep-alive", "transfer-encoding", "te", "upgrade", X_CALLBACK_URL];
    fields
        .iter()
        .filter(|(name, _)| {
            !name.as_str().starts_with(headers::RESERVED_PREFIX) && !DROPPED.contains(&name.as_str())
        })
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&'static str, &str)]) -> Result<JobOptions, Problem> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        JobOptions::from_headers(&headers, 1_000_000, &["127.0.0.1:9000".to_string()])
    }

    #[test]
    fn header_options_are_checked_and_name_their_field() {
        assert_eq!(options(&[]).expect("none"), JobOptions::default());
        assert_eq!(options(&[(DELAY, "2s")]).expect("delay").not_before_us, Some(3_000_000));
        assert_eq!(
            options(&[(NOT_BEFORE, "1970-01-01T00:00:05Z")]).expect("time").not_before_us,
            Some(5_000_000)
        );
        for (pairs, field) in [
            (vec![(DELAY, "soon")], DELAY),
            (vec![(NOT_BEFORE, "tomorrow")], NOT_BEFORE),
            (vec![(DELAY, "1s"), (NOT_BEFORE, "1970-01-01T00:00:05Z")], DELAY),
            (vec![(IDEMPOTENCY_KEY, "two words")], "Idempotency-Key"),
            (vec![(X_CALLBACK_URL, "not a url")], "X-Callback-Url"),
            (vec![(CALLBACK_URL, "http://10.0.0.1:9000/hook")], CALLBACK_URL),
        ] {
            let problem = options(&pairs).expect_err("refused");
            assert!(problem.detail.starts_with(field), "{pairs:?}: {}", problem.detail);
        }
        let allowed = options(&[(X_CALLBACK_URL, "http://127.0.0.1:9000/hook")]).expect("allowed");
        assert_eq!(allowed.callback_url.as_deref(), Some("http://127.0.0.1:9000/hook"));
    }

    #[test]
    fn async_paths() {
        assert_eq!(split_async_path("/async/fn/bill/orders"), Some(("bill", "/orders")));
        assert_eq!(split_async_path("/async/fn/bill"), Some(("bill", "/")));
        assert_eq!(split_async_path("/fn/bill"), None);
    }
}
