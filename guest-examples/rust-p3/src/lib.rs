//! A `wasi:http/handler@0.3.0` component (WASI 0.3) for Amphi: an async handler whose request and
//! response bodies are streams, so it reads and writes them as they flow.
//!
//! It is both an example and the conformance suite's `p3-wasm` binding, so it answers the routes
//! every conformance function answers (`conformance/README.md`) plus a few of its own:
//!
//! | route | what it does |
//! |---|---|
//! | `/` | `Hello from Amphi over WASI 0.3!` |
//! | `/echo` | the request body back, streamed: each chunk is written as soon as it is read |
//! | `/stream?chunks=N&delay_ms=D` | N chunks, D ms apart (an async wait: the instance is free meanwhile) |
//! | `/sleep?ms=N` | waits N ms (async), then answers `slept` |
//! | `/state` | a counter kept in a `static`: 1 with a fresh instance per request, counts up with reuse |
//! | `/crash`, `/trap` | panics (a wasm trap) |
//! | `/loop` | never returns, never yields |
//! | `/table` | what `wizer-initialize` built: `entries=65536 sum=…` when pre-initialized (`amphi deploy --init`), `entries=0` otherwise |
//! | `/request`, `/header`, `/meta`, `/status`, `/headers-out`, `/headers-forged`, `/env`, `/log`, `/big`, `/flood`, `/alloc` | as in `conformance/README.md` |

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Handler);

struct Handler;

static CALLS_SEEN_BY_THIS_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Built by the initializer: with `amphi deploy --init` every instance starts with it.
static TABLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// The `wizer-initialize` export beside `wasi:http/handler`. It touches no WASI resource (no
/// output, no environment), so its snapshot holds no handle (CONTRACT.md §6).
mod initializer {
    wit_bindgen::generate!({
        inline: "package amphi:rust-p3; world initializer { export wizer-initialize: func(); }",
        world: "initializer",
    });

    struct Initializer;

    impl Guest for Initializer {
        fn wizer_initialize() {
            super::TABLE.get_or_init(|| (0..65_536u32).map(|i| i.wrapping_mul(2_654_435_761) >> 7).collect());
        }
    }

    export!(Initializer);
}

/// How a response body is produced.
enum Body {
    /// None at all (204, 304).
    Empty,
    /// All of it at once.
    Bytes(Vec<u8>),
    /// The request body, chunk by chunk as it arrives.
    Echo(Request),
    /// `chunks` chunks, `delay_ms` apart.
    Chunks { chunks: u64, delay_ms: u64 },
}

type Headers = Vec<(&'static str, String)>;

fn text(body: impl Into<String>) -> (u16, Headers, Body) {
    (200, vec![("content-type", "text/plain".into())], Body::Bytes(body.into().into_bytes()))
}

fn not_found(body: &str) -> (u16, Headers, Body) {
    (404, vec![("content-type", "text/plain".into())], Body::Bytes(body.into()))
}

impl wasip3::exports::http::handler::Guest for Handler {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path_with_query = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        let param = |name: &str| -> Option<String> {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| percent_decode(value))
        };
        let number = |name: &str| param(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let headers = request.get_headers().copy_all();
        let header_all = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        };
        let header = |name: &str| header_all(name).into_iter().next().unwrap_or_default();

        let route = path.split('/').nth(1).unwrap_or("");
        let (status, response_headers, body) = match route {
            "" => text("Hello from Amphi over WASI 0.3!\n"),
            "echo" => {
                let mut out = vec![("content-type", "application/octet-stream".to_string())];
                if let Some(content_type) = header_all("content-type").into_iter().next() {
                    out.push(("x-echo-content-type", content_type));
                }
                (200, out, Body::Echo(request))
            }
            "request" => {
                let method = method_name(request.get_method());
                let body = read_all(request).await;
                text(format!("method={method}\npath={path}\nquery={query}\nbody_len={}\n", body.len()))
            }
            "header" => {
                let values = header_all(&param("name").unwrap_or_default()).join(", ");
                if values.is_empty() { not_found("absent") } else { text(values) }
            }
            "meta" => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
                let deadline = header("amphi-deadline-ms").parse::<u64>().unwrap_or(0);
                text(format!(
                    "id={}\nfunction={}\nversion={}\ndeadline_ok={}\n",
                    header("amphi-invocation-id"),
                    header("amphi-function"),
                    header("amphi-function-version").parse::<u64>().unwrap_or(0),
                    deadline > now && deadline - now <= 900_000
                ))
            }
            "status" => {
                let code = u16::try_from(number("code")).ok().filter(|c| (200..600).contains(c)).unwrap_or(400);
                let body = match code {
                    204 | 304 => Body::Empty,
                    code => Body::Bytes(format!("status {code}").into_bytes()),
                };
                (code, vec![("content-type", "text/plain".into())], body)
            }
            "headers-out" => {
                let (_, mut out, body) = text("headers");
                out.push(("x-repeat", "a".into()));
                out.push(("x-repeat", "b".into()));
                out.push(("x-unusual", "a \"quoted\" value; with=odd, chars".into()));
                (200, out, body)
            }
            "headers-forged" => {
                let (_, mut out, body) = text("forged");
                for name in ["amphi-shim-error", "amphi-function", "amphi-backend", "amphi-anything"] {
                    out.push((name, "forged".into()));
                }
                (200, out, body)
            }
            "stream" => (
                200,
                vec![("content-type", "text/plain".into())],
                Body::Chunks { chunks: number("chunks"), delay_ms: number("delay_ms") },
            ),
            "env" => match std::env::var(param("name").unwrap_or_default()) {
                Ok(value) => text(value),
                Err(_) => not_found("unset"),
            },
            "log" => {
                let text_param = param("text").unwrap_or_default();
                println!("{text_param}");
                let id = header("amphi-invocation-id");
                println!("amphi-invocation={id} logger: {text_param}");
                text("logged")
            }
            "big" => text("x".repeat(number("mb") as usize * 1024 * 1024)),
            "flood" => {
                let line = format!("{}\n", "x".repeat(1023));
                let mut stderr = std::io::stderr().lock();
                for _ in 0..number("mb") * 1024 {
                    if stderr.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                text("flooded")
            }
            "sleep" => {
                sleep(number("ms")).await;
                text("slept")
            }
            "crash" | "trap" => panic!("the p3 function was asked to crash"),
            "loop" => loop {
                std::hint::spin_loop();
            },
            "alloc" => {
                let block = vec![1u8; number("mib") as usize * 1024 * 1024];
                let touched = std::hint::black_box(&block).iter().step_by(4096).count();
                text(format!("allocated {} MiB", touched * 4096 / (1024 * 1024)))
            }
            "table" => {
                let table = TABLE.get().map(Vec::as_slice).unwrap_or_default();
                let sum = table.iter().map(|&v| u64::from(v)).sum::<u64>();
                text(format!("entries={} sum={sum}", table.len()))
            }
            "state" => text(format!("{}", CALLS_SEEN_BY_THIS_INSTANCE.fetch_add(1, Ordering::SeqCst) + 1)),
            _ => not_found("no such route"),
        };
        respond(status, &response_headers, body)
    }
}

/// The response, its body written by a task of its own after the handler has returned it.
fn respond(status: u16, headers: &[(&str, String)], body: Body) -> Result<Response, ErrorCode> {
    let fields = headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect::<Vec<_>>();
    let fields = Fields::from_list(&fields).map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let contents = match body {
        Body::Empty => None,
        body => {
            let (mut tx, rx) = wit_stream::new();
            wasip3::spawn_local(async move {
                match body {
                    Body::Empty => {}
                    Body::Bytes(bytes) => {
                        tx.write_all(bytes).await;
                    }
                    Body::Echo(request) => {
                        let (_result_tx, result_rx) = wit_future::new(|| Ok(()));
                        let (mut incoming, _trailers) = Request::consume_body(request, result_rx);
                        loop {
                            let (result, chunk) = incoming.read(Vec::with_capacity(64 * 1024)).await;
                            if !chunk.is_empty() && !tx.write_all(chunk).await.is_empty() {
                                break;
                            }
                            if !matches!(result, StreamResult::Complete(_)) {
                                break;
                            }
                        }
                    }
                    Body::Chunks { chunks, delay_ms } => {
                        for i in 0..chunks {
                            sleep(delay_ms).await;
                            if !tx.write_all(format!("chunk {i}\n").into_bytes()).await.is_empty() {
                                break;
                            }
                        }
                    }
                }
            });
            Some(rx)
        }
    };
    let (response, _sent) = Response::new(fields, contents, trailers_rx);
    response.set_status_code(status).map_err(|()| ErrorCode::InternalError(Some("bad status".into())))?;
    Ok(response)
}

async fn sleep(ms: u64) {
    if ms > 0 {
        wasip3::clocks::monotonic_clock::wait_for(Duration::from_millis(ms).as_nanos() as u64).await;
    }
}

async fn read_all(request: Request) -> Vec<u8> {
    let (_result_tx, result_rx) = wit_future::new(|| Ok(()));
    let (mut body, _trailers) = Request::consume_body(request, result_rx);
    let mut all = Vec::new();
    loop {
        let (result, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
        all.extend_from_slice(&chunk);
        if !matches!(result, StreamResult::Complete(_)) {
            return all;
        }
    }
}

/// `%XX` escapes and `+` decoded, as a form would send them.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && text.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn method_name(method: Method) -> String {
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
        Method::Other(other) => other,
    }
}
