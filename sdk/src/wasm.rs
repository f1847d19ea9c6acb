//! The wasm side: the `wasi:http/incoming-handler` export of a component (CONTRACT.md §8).

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasip2::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

use crate::{Body, Request, Response};

/// Largest read from the request body stream at once.
const READ_CHUNK: u64 = 64 * 1024;

/// Runs one call: reads the request, calls the handler, writes its response.
pub fn handle_incoming(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    if PRE_INITIALIZED.load(Ordering::Relaxed) {
        restore_stdio_handles();
    }
    load_environment();
    let response = match read_request(&request) {
        Ok(request) => handler(request),
        Err(message) => Response::new(http::StatusCode::BAD_REQUEST).with_body(message),
    };
    write_response(out, response);
}

/// The `wizer-initialize` export, a component-level function beside `wasi:http`.
#[allow(missing_docs)]
pub mod initializer {
    wit_bindgen::generate!({
        inline: "package amphi:sdk; world initializer { export wizer-initialize: func(); }",
        world: "initializer",
        pub_export_macro: true,
        export_macro_name: "__export_initializer",
    });
}

/// Set by the initializer; instances made from its snapshot find it set.
static PRE_INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Runs the function's initializer with its environment loaded, as a handler would see it.
///
/// A snapshot keeps the instance's memory, not the host's table of its WASI handles. The preview1
/// adapter under `std` opens stdout and stderr on their first write and keeps the handles in
/// memory, so handles opened while initializing would name nothing in an instance made from the
/// snapshot. Hence the initializer has them opened first, at the numbers a call can open them at
/// again: handles 1 and 2 are held (a call's request and response-outparam take them), and the
/// first write to stdout then to stderr leaves handles 3 to 5 taken (stdout at 3, stderr at 5,
/// and 4 between them, taken by the adapter with stdout). That is what probing the adapter
/// bundled with wasmtime 48 showed; `runtime/cli/tests/preinit.rs` fails if it changes. Every
/// call of a pre-initialized instance opens three streams first, so those numbers name live
/// streams again ([`restore_stdio_handles`]).
pub fn run_initializer(init: fn()) {
    let placeholders = [Fields::new(), Fields::new()];
    // Empty writes: the adapter opens each stream on its first write, in this order.
    let _ = std::io::stdout().write(&[]);
    let _ = std::io::stderr().write(&[]);
    drop(placeholders);
    PRE_INITIALIZED.store(true, Ordering::Relaxed);
    load_environment();
    init();
    let _ = std::io::stdout().flush();
}

/// Opens stdout, stdout again and stderr, at handles 3 to 5 (after the call's request and
/// response-outparam), where the adapter kept its streams from the initializer; they stay open
/// for the instance's life.
fn restore_stdio_handles() {
    std::mem::forget(wasip2::cli::stdout::get_stdout());
    std::mem::forget(wasip2::cli::stdout::get_stdout());
    std::mem::forget(wasip2::cli::stderr::get_stderr());
}

/// Drives an async handler to completion on the instance's one thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    crate::executor::block_on(future)
}

/// Makes the function's configured environment visible through `std::env`, as it is natively.
///
/// The proxy adapter gives a component no preview1 environment, so the SDK reads it through
/// `wasi:cli/environment` (which Amphi grants; `wasmtime serve` does with `-Scli`).
#[allow(unsafe_code)]
fn load_environment() {
    for (name, value) in wasip2::cli::environment::get_environment() {
        // SAFETY: wasm32-wasip1 instances have one thread, and this runs before the handler, so
        // nothing reads the environment while it is written.
        unsafe { std::env::set_var(name, value) };
    }
}

fn read_request(request: &IncomingRequest) -> Result<Request, String> {
    let method = match request.method() {
        WasiMethod::Get => Method::GET,
        WasiMethod::Head => Method::HEAD,
        WasiMethod::Post => Method::POST,
        WasiMethod::Put => Method::PUT,
        WasiMethod::Delete => Method::DELETE,
        WasiMethod::Connect => Method::CONNECT,
        WasiMethod::Options => Method::OPTIONS,
        WasiMethod::Trace => Method::TRACE,
        WasiMethod::Patch => Method::PATCH,
        WasiMethod::Other(name) => {
            Method::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not an HTTP method"))?
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers().entries() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume() {
        let stream = incoming.stream().map_err(|()| "the request body cannot be read".to_string())?;
        // `Err` is the end of the stream (or a broken one: the platform has the whole body already).
        while let Ok(chunk) = stream.blocking_read(READ_CHUNK) {
            body.extend_from_slice(&chunk);
        }
    }
    let path_with_query = request.path_with_query().unwrap_or_default();
    Ok(Request::from_parts(method, path_with_query, headers, body))
}

fn write_response(out: ResponseOutparam, response: Response) {
    let (status, headers, body) = response.into_parts();
    let fields = Fields::new();
    for (name, value) in &headers {
        if fields.append(name.as_str(), value.as_bytes()).is_err() {
            eprintln!("amphi-sdk: the host refused the response header `{name}`; left out");
        }
    }
    let outgoing = OutgoingResponse::new(fields);
    let _ = outgoing.set_status_code(status.as_u16());
    let Ok(outgoing_body) = outgoing.body() else {
        ResponseOutparam::set(out, Ok(outgoing));
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    let Ok(mut stream) = outgoing_body.write() else { return };
    // A write fails only when the caller went away; the rest of the body has nowhere to go.
    // (`Write::flush`, not the stream's own `flush`, which only starts one.)
    let mut send = |bytes: &[u8]| stream.write_all(bytes).and_then(|()| Write::flush(&mut stream));
    let _ = match body {
        Body::Bytes(bytes) => send(&bytes),
        Body::Stream(mut chunks) => chunks.try_for_each(|chunk| send(&chunk)),
    };
    drop(stream);
    let _ = OutgoingBody::finish(outgoing_body, None);
}
