//! The HTTP trigger: `/fn/{name}[/{rest}]`, any method.
//!
//! Route → admission (per-function concurrency) → request body (bounded) → dispatch to the
//! function's backend → the contract's response headers. The function sees `/{rest}` (or `/`)
//! with the raw query, the caller's headers minus any `amphi-*` ones, and the metadata headers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amphi_contract::headers;
use amphi_contract::{
    BackendError, BackendResponse, ConnectionInfo, Invocation, Problem, ProblemKind, ResponseBody, StartKind,
};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::platform::Platform;
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

/// Serves one call of the function `name`.
pub async fn invoke(
    platform: &Arc<Platform>,
    request: Request<Incoming>,
    name: &str,
    rest: &str,
    connection: ConnectionInfo,
) -> Response<ResponseBody> {
    let received = Instant::now();
    let Some(route) = platform.route(name) else {
        return respond::problem_of(ProblemKind::NotFound, format!("no function named `{name}`"));
    };
    let backend = route.backend.kind();
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let invocation = Invocation::new(
        route.function.clone(),
        backend,
        parts.method.to_string(),
        path.clone(),
        platform.logs.clone(),
        platform.config.log_bytes_per_invocation,
    );
    let id = invocation.id.clone();
    let refuse = |invocation: Invocation, kind: ProblemKind, detail: String| {
        let error = BackendError::new(kind, detail);
        error.finish(invocation);
        failure_response(&id, backend.as_str(), &error, received.elapsed())
    };

    let Ok(permit) = route.capacity.clone().try_acquire_owned() else {
        let detail =
            format!("function `{name}` is at its concurrency limit of {}", route.function.config.concurrency);
        return refuse(invocation, ProblemKind::OverCapacity, detail);
    };
    let queue = received.elapsed();

    let max_body = platform.config.max_body_bytes;
    let declared =
        parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        discard_in_background(body);
        return refuse(invocation, ProblemKind::PayloadTooLarge, too_large(max_body));
    }
    let body = match read_body(body, max_body, declared).await {
        BodyRead::Complete(bytes) => bytes,
        BodyRead::TooLarge(rest) => {
            discard_in_background(rest);
            return refuse(invocation, ProblemKind::PayloadTooLarge, too_large(max_body));
        }
        BodyRead::Failed(e) => {
            return refuse(invocation, ProblemKind::BadRequest, format!("cannot read the request body: {e}"));
        }
    };

    prepare_headers(&mut parts.headers, &invocation);
    if !parts.headers.contains_key(http::header::HOST) {
        let host = parts.uri.authority().map_or("localhost", |a| a.as_str()).to_string();
        if let Ok(host) = HeaderValue::from_str(&host) {
            parts.headers.insert(http::header::HOST, host);
        }
    }
    parts.uri = match Uri::try_from(path) {
        Ok(uri) => uri,
        Err(e) => return refuse(invocation, ProblemKind::BadRequest, format!("invalid path: {e}")),
    };
    parts.extensions.insert(connection);
    let request = Request::from_parts(parts, body);

    let dispatched = Instant::now();
    match route.backend.invoke(invocation, request).await {
        Ok(BackendResponse { response, start, init, queued }) => {
            let exec = dispatched.elapsed().saturating_sub(init + queued);
            let (mut parts, body) = response.into_parts();
            // Only the platform speaks `amphi-*`: a function cannot pass for it.
            headers::remove_reserved(&mut parts.headers);
            insert_contract_headers(
                &mut parts.headers,
                &id,
                backend.as_str(),
                (queue + queued, (start, init), exec),
            );
            let body = PermitBody { inner: body, _permit: permit }.boxed_unsync();
            Response::from_parts(parts, body)
        }
        Err(error) => {
            drop(permit);
            failure_response(&id, backend.as_str(), &error, queue)
        }
    }
}

enum BodyRead {
    Complete(Bytes),
    TooLarge(Incoming),
    Failed(hyper::Error),
}

/// Reads the whole body, stopping as soon as it grows past `max`.
async fn read_body(mut body: Incoming, max: u64, declared: Option<u64>) -> BodyRead {
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
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
    let function = &invocation.function;
    let pairs = [
        (headers::INVOCATION_ID, invocation.id.clone()),
        (headers::FUNCTION, function.name.clone()),
        (headers::FUNCTION_VERSION, function.version.to_string()),
        (headers::DEADLINE, invocation.deadline_unix_ms.to_string()),
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
) -> Response<ResponseBody> {
    let mut response = respond::problem(Problem::new(error.kind, error.detail.clone()).with_instance(id));
    let init = error.init.unwrap_or_default();
    insert_contract_headers(
        response.headers_mut(),
        id,
        backend,
        (queue, (error.start, init), Duration::ZERO),
    );
    response
}

/// A response body that holds the call's concurrency permit until it is sent or dropped.
struct PermitBody {
    inner: ResponseBody,
    _permit: OwnedSemaphorePermit,
}

impl Body for PermitBody {
    type Data = Bytes;
    type Error = amphi_contract::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::split_trigger_path;

    #[test]
    fn trigger_paths() {
        assert_eq!(split_trigger_path("/fn/hello"), Some(("hello", "/")));
        assert_eq!(split_trigger_path("/fn/hello/"), Some(("hello", "/")));
        assert_eq!(split_trigger_path("/fn/hello/a/b%20c"), Some(("hello", "/a/b%20c")));
        assert_eq!(split_trigger_path("/fn/"), None);
        assert_eq!(split_trigger_path("/v1/functions"), None);
    }
}
