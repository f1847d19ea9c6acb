//! Building responses: JSON, problems, and the one body type the gateway sends.

use amphi_contract::problem::{self, Problem, ProblemKind};
use amphi_contract::{BoxError, ResponseBody};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| -> BoxError { match never {} }).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| -> BoxError { match never {} }).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(body) => with_content_type(status, "application/json", body),
        Err(e) => problem(Problem::new(ProblemKind::Internal, format!("cannot encode the response: {e}"))),
    }
}

/// A problem+json response.
pub fn problem(problem: Problem) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = with_content_type(status, problem::CONTENT_TYPE, problem.to_json());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// A problem of `kind` with `detail`.
pub fn problem_of(kind: ProblemKind, detail: impl Into<String>) -> Response<ResponseBody> {
    problem(Problem::new(kind, detail))
}

fn with_content_type(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
