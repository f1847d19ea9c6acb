//! The CGI 1.1 binding (RFC 3875) for WASI preview1 command modules, as WAGI does it.
//!
//! The request's meta-variables go in the environment (with the function's own env), the body on
//! stdin; the module's stdout is the response: header lines (`Status:`, `Content-Type:`,
//! `Location:`, any other), a blank line, then the body. Its stderr is its log. The module runs to
//! completion before the response is sent (CGI has no streaming here).

use std::time::{Duration, Instant};

use amphi_contract::record::LogStream;
use amphi_contract::{
    BackendError, BackendResponse, BoxError, ConnectionInfo, Finish, Invocation, Outcome, ProblemKind,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::InstancePre;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtx};

use crate::limits::CallLimits;
use crate::output::LogOutput;
use crate::{classify_failure, deadline_exceeded, new_store};

/// The store data of a CGI call.
pub struct CgiState {
    /// The preview1 context.
    pub wasi: WasiP1Ctx,
    /// The call's limits and which one was hit.
    pub limits: CallLimits,
}

/// Runs one request through a fresh instance of `pre`.
pub async fn invoke(
    pre: InstancePre<CgiState>,
    invocation: Invocation,
    request: http::Request<Bytes>,
    code_load: Option<Duration>,
    max_response_bytes: usize,
) -> Result<BackendResponse, BackendError> {
    let init_started = Instant::now();
    let config = &invocation.function.config;
    let (parts, body) = request.into_parts();
    let mut env: Vec<(String, String)> = config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.extend(meta_variables(&parts, body.len(), &invocation.function.name));

    let stdout = MemoryOutputPipe::new(max_response_bytes);
    let mut wasi = WasiCtx::builder();
    wasi.envs(&env)
        .arg(&invocation.function.name)
        .stdin(MemoryInputPipe::new(body))
        .stdout(stdout.clone())
        .stderr(LogOutput::new(invocation.log.clone(), LogStream::Stderr));
    let state =
        CgiState { wasi: wasi.build_p1(), limits: CallLimits::new(config.memory_bytes, invocation.deadline) };
    let mut store = new_store(pre.module().engine(), state, |s| &mut s.limits);

    let mut init = None;
    let run = async {
        let instance = pre.instantiate_async(&mut store).await;
        init = Some(code_load.unwrap_or_default() + init_started.elapsed());
        let start = instance?.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    let result = tokio::time::timeout_at(tokio::time::Instant::from_std(invocation.deadline), run).await;
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => None,
            Some(I32Exit(code)) => Some(BackendError::new(
                ProblemKind::FunctionFailed,
                format!("the CGI program exited with status {code}"),
            )),
            None if stdout.contents().len() >= max_response_bytes => Some(BackendError::new(
                ProblemKind::FunctionFailed,
                format!("the CGI response is larger than {max_response_bytes} bytes"),
            )),
            None => Some(classify_failure(&error, &store.data().limits, &invocation)),
        },
        Err(_elapsed) => Some(deadline_exceeded(&invocation)),
    };
    drop(store);
    let response = match failure {
        None => parse_response(stdout.contents()).map_err(|why| {
            BackendError::new(ProblemKind::FunctionFailed, format!("malformed CGI response: {why}"))
        }),
        Some(error) => Err(error),
    };
    let cold_start = code_load.is_some();
    match response {
        Ok(response) => {
            invocation.finish(Finish {
                status: response.status().as_u16(),
                outcome: Outcome::Success,
                error: None,
                cold_start,
                init,
            });
            Ok(BackendResponse {
                response: response.map(|body| {
                    Full::new(body).map_err(|never| -> BoxError { match never {} }).boxed_unsync()
                }),
                cold_start,
                init: init.unwrap_or_default(),
            })
        }
        Err(mut error) => {
            error.cold_start = cold_start;
            error.init = init;
            error.finish(invocation);
            Err(error)
        }
    }
}

/// The RFC 3875 meta-variables of a request, plus WAGI's `X_RAW_PATH_INFO`.
fn meta_variables(parts: &http::request::Parts, body_len: usize, function: &str) -> Vec<(String, String)> {
    let connection = parts.extensions.get::<ConnectionInfo>();
    let raw_path = parts.uri.path();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string())
        .unwrap_or_else(|| "localhost".into());
    let mut vars = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_SOFTWARE".into(), concat!("amphi/", env!("CARGO_PKG_VERSION")).into()),
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
        ("SERVER_NAME".into(), host),
        ("SERVER_PORT".into(), connection.map(|c| c.local.port().to_string()).unwrap_or_default()),
        ("REMOTE_ADDR".into(), connection.map(|c| c.remote.ip().to_string()).unwrap_or_default()),
        ("REMOTE_HOST".into(), connection.map(|c| c.remote.ip().to_string()).unwrap_or_default()),
        ("REQUEST_METHOD".into(), parts.method.to_string()),
        ("SCRIPT_NAME".into(), format!("/fn/{function}")),
        ("PATH_INFO".into(), percent_decode(raw_path)),
        ("PATH_TRANSLATED".into(), percent_decode(raw_path)),
        ("X_RAW_PATH_INFO".into(), raw_path.to_string()),
        ("QUERY_STRING".into(), parts.uri.query().unwrap_or("").to_string()),
    ];
    if body_len > 0 {
        vars.push(("CONTENT_LENGTH".into(), body_len.to_string()));
    }
    if let Some(content_type) = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        vars.push(("CONTENT_TYPE".into(), content_type.to_string()));
    }
    for name in parts.headers.keys() {
        if name == http::header::CONTENT_TYPE || name == http::header::CONTENT_LENGTH {
            continue;
        }
        let values: Vec<_> =
            parts.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
        let key = format!("HTTP_{}", name.as_str().to_ascii_uppercase().replace('-', "_"));
        vars.push((key, values.join(", ")));
    }
    vars
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Headers a CGI program may not set: the gateway frames the response itself.
const FRAMING_HEADERS: [http::HeaderName; 3] =
    [http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING, http::header::CONNECTION];

/// Parses a CGI response: header lines, a blank line, the body.
fn parse_response(output: Bytes) -> Result<http::Response<Bytes>, String> {
    let (head_len, body_start) = find_head_end(&output).ok_or("no blank line ends the header block")?;
    let head = std::str::from_utf8(&output[..head_len]).map_err(|_| "the header block is not UTF-8")?;
    let mut builder = http::Response::builder();
    let mut status = None;
    let mut location = false;
    for line in head.split('\n').map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("`{line}` is not a header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code =
                http::StatusCode::from_bytes(code.as_bytes()).map_err(|_| format!("bad Status `{value}`"))?;
            status = Some(code);
            continue;
        }
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("bad header name `{name}`"))?;
        let value = http::HeaderValue::from_str(value).map_err(|_| format!("bad value for `{name}`"))?;
        location |= name == http::header::LOCATION;
        if !FRAMING_HEADERS.contains(&name) {
            builder = builder.header(name, value);
        }
    }
    let status = status.unwrap_or(if location { http::StatusCode::FOUND } else { http::StatusCode::OK });
    builder.status(status).body(output.slice(body_start..)).map_err(|e| e.to_string())
}

/// Where the header block ends: (length of the head, start of the body).
fn find_head_end(output: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    while line_start <= output.len() {
        let line_end = output[line_start..].iter().position(|&b| b == b'\n').map(|p| line_start + p)?;
        let line = &output[line_start..line_end];
        if line.is_empty() || line == b"\r" {
            return Some((line_start, line_end + 1));
        }
        line_start = line_end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let response = parse_response(Bytes::from_static(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nbody\n",
        ))
        .expect("valid");
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.body().as_ref(), b"body\n");
    }

    #[test]
    fn location_without_status_redirects_and_bare_newlines_work() {
        let response = parse_response(Bytes::from_static(b"Location: /x\n\n")).expect("valid");
        assert_eq!(response.status(), 302);
        let response = parse_response(Bytes::from_static(b"\nraw body")).expect("no headers");
        assert_eq!((response.status().as_u16(), response.body().as_ref()), (200, &b"raw body"[..]));
    }

    #[test]
    fn rejects_garbage_and_drops_framing_headers() {
        assert!(parse_response(Bytes::from_static(b"just text")).is_err());
        assert!(parse_response(Bytes::from_static(b"no colon here\n\n")).is_err());
        assert!(parse_response(Bytes::from_static(b"Status: abc\n\n")).is_err());
        let response = parse_response(Bytes::from_static(b"Content-Length: 99\n\nab")).expect("valid");
        assert!(response.headers().get("content-length").is_none());
    }

    #[test]
    fn decodes_path_info() {
        assert_eq!(percent_decode("/a%20b/%E2%9C%93%zz"), "/a b/✓%zz");
    }
}
