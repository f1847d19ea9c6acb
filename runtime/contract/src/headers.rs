//! The metadata headers of the contract.
//!
//! In: the function receives these on every request. Any `amphi-*` header sent by the caller is
//! removed first, so a function can trust them.
//! Out: the caller receives these on every response, from a function or from the platform.

use http::HeaderName;

/// In: the invocation id (a UUIDv7), also in the record and every log line.
pub const INVOCATION_ID: HeaderName = HeaderName::from_static("amphi-invocation-id");
/// In: the function's name.
pub const FUNCTION: HeaderName = HeaderName::from_static("amphi-function");
/// In: the version being run.
pub const FUNCTION_VERSION: HeaderName = HeaderName::from_static("amphi-function-version");
/// In: when the call will be cut off, in milliseconds since the Unix epoch.
pub const DEADLINE: HeaderName = HeaderName::from_static("amphi-deadline-ms");
/// In: W3C trace context, passed through unchanged when the caller sent it.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// In: W3C trace state, passed through unchanged when the caller sent it.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Out: which backend served the call: `wasm` or `container`.
pub const BACKEND: HeaderName = HeaderName::from_static("amphi-backend");
/// Out: `true` when this call paid for a new instance's initialisation, else `false`.
pub const COLD_START: HeaderName = HeaderName::from_static("amphi-cold-start");
/// Out: the standard `Server-Timing` header with the phases `queue`, `init` and `exec`; `init`
/// says how the instance was obtained (`desc="warm"`, `"unpause"` or `"cold"`).
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The prefix reserved for the platform's headers.
pub const RESERVED_PREFIX: &str = "amphi-";

/// Removes every `amphi-*` header: from a caller's request before the platform adds its own, and
/// from a function's response, so neither can pass for the platform.
pub fn remove_reserved(headers: &mut http::HeaderMap) {
    let reserved: Vec<HeaderName> =
        headers.keys().filter(|n| n.as_str().starts_with(RESERVED_PREFIX)).cloned().collect();
    for name in reserved {
        headers.remove(name);
    }
}

/// Formats `Server-Timing` from the phase durations.
pub fn server_timing(
    queue: std::time::Duration,
    (start, init): (crate::StartKind, std::time::Duration),
    exec: std::time::Duration,
) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    format!(
        "queue;dur={:.3}, init;dur={:.3};desc=\"{}\", exec;dur={:.3}",
        ms(queue),
        ms(init),
        start.as_str(),
        ms(exec)
    )
}
