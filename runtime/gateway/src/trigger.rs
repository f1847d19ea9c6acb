//! The HTTP trigger: `/fn/{name}[/{rest}]`, any method.
//!
//! Route → request body (bounded in size and time) → admission (a bounded wait for one of the
//! function's concurrency slots) → dispatch to the function's backend → the contract's response
//! headers. The function sees `/{rest}` (or `/`)
//! with the raw query, the caller's headers minus any `amphi-*` ones, and the metadata headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_contract::headers;
use amphi_contract::{
    BackendError, BackendResponse, ConnectionInfo, Problem, ProblemKind, ResponseBody, StartFacts, StartKind,
};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::invocation::{Invocation, Origin};
use crate::platform::{Platform, Route};
use crate::respond;

/// Splits `/fn/{name}[/{rest}]` into the name and the path the function sees.
pub fn split_trigger_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix("/fn/")?;
    let (name, rest) = match after.find('/') {
        Some(slash) => (&after[..slash], &after[slash..]),
        None => (after, "/"),
    };
    (!name.is_empty()).then_some((name, rest))
}

/// Most of the path (with its query) an invocation record keeps; a longer one is cut and marked,
/// so the store's growth does not depend on what an anonymous caller puts in a URL.
pub const RECORD_PATH_BYTES: usize = 2048;

/// Serves one call of the function `name`.
///
/// The body is read first, bounded in size and time, and only then does the call wait for one of
/// the function's concurrency slots: a slow client holds no slot and eats no part of the timeout.
pub async fn invoke(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    name: &str,
    rest: &str,
    connection: ConnectionInfo,
) -> Response<ResponseBody> {
    let received = Instant::now();
    let Some(route) = crate::cluster::route(platform, name).await else {
        return no_such_function(name);
    };
    let backend = route.backend.kind();
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    // Calls start no faster than the log store writes their records: none is ever dropped.
    platform.logs.room_for_record().await;
    let invocation = Invocation::new(
        Origin::http(parts.method.to_string(), record_path(&path)),
        route.function.clone(),
        backend,
        platform.logs.clone(),
        platform.metrics.clone(),
        platform.config.log_bytes_per_invocation,
    );
    if let Some(bad) = control_character(rest) {
        let detail = format!("the path holds a control character ({bad:?}) once percent-decoded");
        return refuse(invocation, ProblemKind::BadRequest, detail, received);
    }
    let max_body = platform.config.max_body_bytes;
    let body = match read_bounded_body(&parts.headers, body, max_body, platform.config.body_timeout).await {
        Ok(body) => body,
        Err((kind, detail)) => return refuse(invocation, kind, detail, received),
    };
    parts.extensions.insert(connection);
    let patience = route.function.config.queue_timeout();
    let call = Dispatch { route, invocation, parts, body, path, patience, received };
    dispatch(platform, call).await.response
}

/// The 404 of a call to a function that does not exist (with an invocation id, like every
/// answer of `/fn`).
fn no_such_function(name: &str) -> Response<ResponseBody> {
    let mut response = respond::problem_of(ProblemKind::NotFound, format!("no function named `{name}`"));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()) {
        response.headers_mut().insert(headers::INVOCATION_ID, id);
    }
    response
}

/// Ends `invocation` refused with `kind` before it reached its function.
fn refuse(
    invocation: Invocation,
    kind: ProblemKind,
    detail: String,
    received: Instant,
) -> Response<ResponseBody> {
    let error = BackendError::new(kind, detail);
    let facts = invocation.facts();
    let (id, backend) = (invocation.id().to_string(), invocation.backend().as_str());
    invocation.fail(&error);
    failure_response(&id, backend, &error, received.elapsed(), facts)
}

/// Reads a call's body, bounded in size (`max`) and time; the error is the problem to answer.
pub async fn read_bounded_body(
    headers: &HeaderMap,
    body: Incoming,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, (ProblemKind, String)> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        discard_in_background(body);
        return Err((ProblemKind::PayloadTooLarge, too_large(max)));
    }
    match tokio::time::timeout(timeout, read_body(body, max)).await {
        Ok(BodyRead::Complete(bytes)) => Ok(bytes),
        Ok(BodyRead::TooLarge(rest)) => {
            discard_in_background(rest);
            Err((ProblemKind::PayloadTooLarge, too_large(max)))
        }
        Ok(BodyRead::Failed(e)) => {
            Err((ProblemKind::BadRequest, format!("cannot read the request body: {e}")))
        }
        Err(_) => Err((
            ProblemKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} (serve --body-timeout)",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// A call whose request is complete, ready for admission and its backend.
pub struct Dispatch {
    /// Where it goes.
    pub route: Route,
    /// Its record in the making.
    pub invocation: Invocation,
    /// The request's head, as the caller sent it (`amphi-*` fields are removed here).
    pub parts: http::request::Parts,
    /// The request's body.
    pub body: Bytes,
    /// The path the function sees, with the query.
    pub path: String,
    /// Longest wait for one of the function's concurrency slots.
    pub patience: Duration,
    /// When the request arrived (for the queue time of a refusal).
    pub received: Instant,
}

/// What a dispatched call answered.
pub struct Dispatched {
    /// The response to send on (its body writes the record when it ends).
    pub response: Response<ResponseBody>,
    /// Why the call failed without a response of the function, if it did.
    pub failure: Option<ProblemKind>,
}

/// Admission (a slot within `patience`), the metadata headers, the backend, and the contract's
/// response headers: the path every call takes, sync or async.
pub async fn dispatch(platform: &Platform, call: Dispatch) -> Dispatched {
    let Dispatch { route, mut invocation, mut parts, body, path, patience, received } = call;
    let backend = route.backend.kind();
    let name = route.function.name.as_str();
    let id = invocation.id().to_string();
    let failed = |response, kind| Dispatched { response, failure: Some(kind) };
    let waiting = Instant::now();
    let Some(permit) = route.capacity.acquire(patience).await else {
        let detail = format!(
            "function `{name}` is at its concurrency limit of {} (waited {} for a slot)",
            route.function.config.concurrency,
            humantime::format_duration(patience)
        );
        return failed(
            refuse(invocation, ProblemKind::OverCapacity, detail, received),
            ProblemKind::OverCapacity,
        );
    };
    let queue = waiting.elapsed();
    invocation.admit();

    prepare_headers(&mut parts.headers, &invocation);
    if !parts.headers.contains_key(http::header::HOST) {
        let host = parts.uri.authority().map_or("localhost", |a| a.as_str()).to_string();
        if let Ok(host) = HeaderValue::from_str(&host) {
            parts.headers.insert(http::header::HOST, host);
        }
    }
    parts.uri = match Uri::try_from(path) {
        Ok(uri) => uri,
        Err(e) => {
            let response =
                refuse(invocation, ProblemKind::BadRequest, format!("invalid path: {e}"), received);
            return failed(response, ProblemKind::BadRequest);
        }
    };
    let request = Request::from_parts(parts, body);

    let dispatched = Instant::now();
    match route.backend.invoke(invocation.call(), request).await {
        Ok(BackendResponse { response, completion }) => {
            let facts = invocation.facts();
            let init = facts.init.unwrap_or_default();
            let exec = dispatched.elapsed().saturating_sub(init + facts.queued);
            platform.metrics.call_answered(name, backend, queue + facts.queued, (facts.start, init), exec);
            let (mut parts, body) = response.into_parts();
            // Only the platform speaks `amphi-*`: a function cannot pass for it.
            headers::remove_reserved(&mut parts.headers);
            insert_contract_headers(
                &mut parts.headers,
                &id,
                backend.as_str(),
                (queue + facts.queued, (facts.start, init), exec),
            );
            let body = invocation.into_body(parts.status.as_u16(), body, completion, permit);
            Dispatched { response: Response::from_parts(parts, body), failure: None }
        }
        Err(error) => {
            drop(permit);
            let facts = invocation.facts();
            invocation.fail(&error);
            failed(failure_response(&id, backend.as_str(), &error, queue, facts), error.kind)
        }
    }
}

/// `path` as a record keeps it: whole up to [`RECORD_PATH_BYTES`], else cut and marked.
pub fn record_path(path: &str) -> String {
    if path.len() <= RECORD_PATH_BYTES {
        return path.to_string();
    }
    let mut end = RECORD_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut: {} bytes in all]", &path[..end], path.len())
}

/// The first control character of the percent-decoded `path`, if any: a CR or LF there would
/// reach a CGI program's `PATH_INFO`, or a function's own logs, as a line break.
pub fn control_character(path: &str) -> Option<char> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.chars().find(|c| c.is_control())
}

enum BodyRead {
    Complete(Bytes),
    TooLarge(Incoming),
    Failed(hyper::Error),
}

/// Reads the whole body, stopping as soon as it grows past `max`. Memory grows as bytes arrive,
/// never ahead of them on the word of a `Content-Length`.
async fn read_body(mut body: Incoming, max: u64) -> BodyRead {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if (buffer.len() + data.len()) as u64 > max {
                        return BodyRead::TooLarge(body);
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            Err(e) => return BodyRead::Failed(e),
        }
    }
    BodyRead::Complete(buffer.freeze())
}

/// Most bytes of a refused body read and thrown away, and for how long.
const DISCARD_BYTES: u64 = 64 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and drops the rest of a refused body while the error response goes out, so a client
/// still sending gets the response instead of a reset connection (nginx's "lingering close").
fn discard_in_background(mut body: Incoming) {
    tokio::spawn(tokio::time::timeout(DISCARD_TIME, async move {
        let mut discarded = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
            if discarded > DISCARD_BYTES {
                break;
            }
        }
    }));
}

fn too_large(max: u64) -> String {
    format!("the request body is larger than {}", amphi_contract::size::format_bytes(max))
}

/// Removes the caller's `amphi-*` headers (only the platform sets those) and adds the metadata.
fn prepare_headers(headers: &mut HeaderMap, invocation: &Invocation) {
    headers::remove_reserved(headers);
    let function = invocation.function();
    let pairs = [
        (headers::INVOCATION_ID, invocation.id().to_string()),
        (headers::FUNCTION, function.name.clone()),
        (headers::FUNCTION_VERSION, function.version.to_string()),
        (headers::DEADLINE, invocation.deadline_unix_ms().to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

fn insert_contract_headers(
    headers: &mut HeaderMap,
    id: &str,
    backend: &'static str,
    (queue, (start, init), exec): (Duration, (StartKind, Duration), Duration),
) {
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert(headers::INVOCATION_ID, id);
    }
    headers.insert(headers::BACKEND, HeaderValue::from_static(backend));
    headers.insert(
        headers::COLD_START,
        HeaderValue::from_static(if start == StartKind::Cold { "true" } else { "false" }),
    );
    if let Ok(timing) = HeaderValue::from_str(&headers::server_timing(queue, (start, init), exec)) {
        headers.insert(headers::SERVER_TIMING, timing);
    }
}

fn failure_response(
    id: &str,
    backend: &'static str,
    error: &BackendError,
    queue: Duration,
    facts: StartFacts,
) -> Response<ResponseBody> {
    let mut response = respond::problem(Problem::new(error.kind, error.detail.clone()).with_instance(id));
    let init = facts.init.unwrap_or_default();
    insert_contract_headers(
        response.headers_mut(),
        id,
        backend,
        (queue, (facts.start, init), Duration::ZERO),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::split_trigger_path;

    #[test]
    fn records_keep_a_bounded_path_and_control_characters_are_found() {
        assert_eq!(super::record_path("/a?b=c"), "/a?b=c");
        let long = format!("/{}", "é".repeat(3000));
        let kept = super::record_path(&long);
        assert!(kept.len() < super::RECORD_PATH_BYTES + 40, "{}", kept.len());
        assert!(kept.ends_with(&format!("…[cut: {} bytes in all]", long.len())), "{kept}");
        assert_eq!(super::control_character("/a%0d%0aSet-Cookie:x"), Some('\r'));
        assert_eq!(super::control_character("/a%7f"), Some('\u{7f}'));
        assert_eq!(super::control_character("/caf%C3%A9/%20ok"), None);
    }

    #[test]
    fn trigger_paths() {
        assert_eq!(split_trigger_path("/fn/hello"), Some(("hello", "/")));
        assert_eq!(split_trigger_path("/fn/hello/"), Some(("hello", "/")));
        assert_eq!(split_trigger_path("/fn/hello/a/b%20c"), Some(("hello", "/a/b%20c")));
        assert_eq!(split_trigger_path("/fn/"), None);
        assert_eq!(split_trigger_path("/v1/functions"), None);
    }
}
