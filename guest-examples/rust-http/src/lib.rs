//! A `wasi:http/incoming-handler` component for Amphi.
//!
//! `GET /` says hello; the other routes exist so the platform's tests (and a curious user) can see
//! each part of the invocation contract at work:
//!
//! | route | what it does |
//! |---|---|
//! | `/` | `Hello from Amphi!` |
//! | `/echo` | the request body back, with the method and path+query in `x-echo-*` headers |
//! | `/inspect` | the request as JSON: method, path with query, every header, body length |
//! | `/env` | the environment the function was granted, as JSON |
//! | `/log?lines=N[&together=1]` | N lines on stdout (one write each, or all in one write) and one on stderr |
//! | `/status/CODE[?retry-after=N]` | an empty response with that status (and `retry-after: N`) |
//! | `/stream?chunks=N` | N chunks written one by one |
//! | `/state` | a counter kept in a `static`: always 1, since every request gets a fresh instance |
//! | `/sleep?ms=N` | waits N ms, then answers with the env var `VERSION_TAG` |
//! | `/fetch?url=http://host/path` | an outbound GET: 200 with the body, or 502 with the error |
//! | `/trap` | panics (a wasm trap) |
//! | `/loop` | never returns |
//! | `/grow?mib=N` | allocates and touches N MiB |

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Handler);

struct Handler;

static CALLS_SEEN_BY_THIS_INSTANCE: AtomicU32 = AtomicU32::new(0);

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (path_with_query.clone(), String::new()),
        };
        let param = |name: &str| -> Option<u64> {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| value.parse().ok())
        };

        // Routes are chosen by the first path segment, so `/echo/any/thing` is still `/echo`.
        let route = path.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
        match route.as_str() {
            "/" | "" => respond(response_out, 200, "text/plain", b"Hello from Amphi!\n"),
            "/echo" => {
                let body = read_body(&request);
                let headers = [
                    ("x-echo-method", method_name(&request.method()).into_bytes()),
                    ("x-echo-path-with-query", path_with_query.into_bytes()),
                ];
                respond_with(response_out, 200, &headers, &body)
            }
            "/inspect" => {
                let body = read_body(&request);
                let headers = request
                    .headers()
                    .entries()
                    .into_iter()
                    .map(|(name, value)| {
                        format!("[{},{}]", json_string(&name), json_string(&String::from_utf8_lossy(&value)))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let json = format!(
                    "{{\"method\":{},\"path_with_query\":{},\"headers\":[{}],\"body_len\":{}}}",
                    json_string(&method_name(&request.method())),
                    json_string(&path_with_query),
                    headers,
                    body.len()
                );
                respond(response_out, 200, "application/json", json.as_bytes())
            }
            "/env" => {
                let vars = std::env::vars()
                    .map(|(k, v)| format!("{}:{}", json_string(&k), json_string(&v)))
                    .collect::<Vec<_>>()
                    .join(",");
                respond(response_out, 200, "application/json", format!("{{{vars}}}").as_bytes())
            }
            "/log" => {
                let lines = param("lines").unwrap_or(1);
                if param("together") == Some(1) {
                    // One write of every line, as a function that buffers its output does.
                    let text: String = (0..lines).map(|i| format!("line {i} to stdout\n")).collect();
                    let _ = std::io::stdout().write_all(text.as_bytes());
                } else {
                    for i in 0..lines {
                        println!("line {i} to stdout");
                    }
                }
                eprintln!("a line to stderr");
                respond(response_out, 200, "text/plain", format!("logged {lines}\n").as_bytes())
            }
            "/state" => {
                let seen = CALLS_SEEN_BY_THIS_INSTANCE.fetch_add(1, Ordering::SeqCst) + 1;
                respond(response_out, 200, "text/plain", format!("{seen}").as_bytes())
            }
            "/sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(param("ms").unwrap_or(100)));
                let tag = std::env::var("VERSION_TAG").unwrap_or_default();
                respond(response_out, 200, "text/plain", tag.as_bytes())
            }
            "/fetch" => {
                let url = query.split('&').find_map(|pair| pair.strip_prefix("url=")).unwrap_or("");
                match fetch(url) {
                    Ok(body) => respond(response_out, 200, "text/plain", &body),
                    Err(error) => respond(response_out, 502, "text/plain", error.as_bytes()),
                }
            }
            "/stream" => {
                let chunks = param("chunks").unwrap_or(3);
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("a new response has a body");
                ResponseOutparam::set(response_out, Ok(response));
                let mut out = body.write().expect("a new body has a stream");
                for i in 0..chunks {
                    let _ = writeln!(out, "chunk {i}");
                    let _ = out.flush();
                }
                drop(out);
                let _ = OutgoingBody::finish(body, None);
            }
            "/trap" => panic!("the guest was asked to trap"),
            "/loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "/grow" => {
                let mib = param("mib").unwrap_or(1) as usize;
                let block = vec![1u8; mib * 1024 * 1024];
                let touched = std::hint::black_box(&block).iter().step_by(4096).count();
                respond(response_out, 200, "text/plain", format!("touched {touched} pages\n").as_bytes())
            }
            _ => match path.strip_prefix("/status/").and_then(|code| code.parse().ok()) {
                Some(code) => match param("retry-after") {
                    Some(seconds) => {
                        let headers = [("retry-after", seconds.to_string().into_bytes())];
                        respond_with(response_out, code, &headers, b"")
                    }
                    None => respond(response_out, code, "text/plain", b""),
                },
                None => respond(response_out, 404, "text/plain", b"no such route\n"),
            },
        }
    }
}

/// A GET through `wasi:http/outgoing-handler`, which the host may deny.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};

    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let path = if path.is_empty() { "/" } else { path };
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("denied: {code:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("failed: {code:?}")),
        _ => return Err("no response".into()),
    };
    let mut body = Vec::new();
    let incoming = response.consume().map_err(|()| "no body")?;
    let stream = incoming.stream().map_err(|()| "no body stream")?;
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else { return body };
    let Ok(stream) = incoming.stream() else { return body };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        body.extend_from_slice(&chunk);
    }
    body
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    respond_with(out, status, &[("content-type", content_type.as_bytes().to_vec())], body)
}

fn respond_with(out: ResponseOutparam, status: u16, headers: &[(&str, Vec<u8>)], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value);
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("a new body has a stream");
    for chunk in body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
