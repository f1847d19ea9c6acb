//! Platform errors as `application/problem+json` (RFC 9457), each kind with one fixed status.

use serde::{Deserialize, Serialize};

/// The media type of every platform error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// What went wrong, from the caller's side. The status of each kind never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The request itself is malformed (admin API).
    BadRequest,
    /// No or a wrong admin token.
    Unauthorized,
    /// No function (or route) by that name.
    NotFound,
    /// The method is not allowed on that admin route.
    MethodNotAllowed,
    /// The request body did not arrive within the body timeout.
    RequestTimeout,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request target (path and query) is longer than allowed.
    UriTooLong,
    /// The request's header fields are larger than allowed.
    HeadersTooLarge,
    /// An upload is not acceptable: invalid wasm, unsupported kind, bad config.
    UnprocessableEntity,
    /// The resource is not in a state that allows the request (cancel a running job).
    Conflict,
    /// The function is at its concurrency limit.
    OverCapacity,
    /// The platform failed (a bug or an I/O error of the host).
    Internal,
    /// The function failed: it trapped, crashed, ran out of memory or answered garbage.
    FunctionFailed,
    /// The backend that runs the function is not available.
    BackendUnavailable,
    /// The function did not finish within its timeout.
    DeadlineExceeded,
    /// The job queue holds `--queue-max` unfinished jobs; try again later (`Retry-After`).
    QueueFull,
}

impl ProblemKind {
    /// The HTTP status of this kind.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::UnprocessableEntity => 422,
            Self::Conflict => 409,
            Self::OverCapacity => 429,
            Self::Internal => 500,
            Self::FunctionFailed => 502,
            Self::BackendUnavailable => 503,
            Self::DeadlineExceeded => 504,
            Self::QueueFull => 503,
        }
    }

    /// A stable identifier: the problem's `type` is `urn:amphi:problem:<slug>`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RequestTimeout => "request-timeout",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UriTooLong => "uri-too-long",
            Self::HeadersTooLarge => "headers-too-large",
            Self::UnprocessableEntity => "unprocessable-entity",
            Self::Conflict => "conflict",
            Self::OverCapacity => "over-capacity",
            Self::Internal => "internal",
            Self::FunctionFailed => "function-failed",
            Self::BackendUnavailable => "backend-unavailable",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::QueueFull => "queue-full",
        }
    }

    /// A short human title.
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthorized => "Missing or wrong admin token",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::RequestTimeout => "Request body too slow",
            Self::PayloadTooLarge => "Request body too large",
            Self::UriTooLong => "Request target too long",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::UnprocessableEntity => "Upload or config not acceptable",
            Self::Conflict => "Not possible in the current state",
            Self::OverCapacity => "Function over capacity",
            Self::Internal => "Internal platform error",
            Self::FunctionFailed => "Function failed",
            Self::BackendUnavailable => "Backend unavailable",
            Self::DeadlineExceeded => "Function timed out",
            Self::QueueFull => "Job queue full",
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:amphi:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short human title of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
    /// The invocation id, when the problem happened during a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Problem {
    /// A problem of `kind` with a case-specific `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:amphi:problem:{}", kind.slug()),
            title: kind.title().to_string(),
            status: kind.status(),
            detail: detail.into(),
            instance: None,
        }
    }

    /// Names the invocation this problem belongs to.
    pub fn with_instance(mut self, invocation_id: impl Into<String>) -> Self {
        self.instance = Some(invocation_id.into());
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}
