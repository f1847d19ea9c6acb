//! The wasm side: the `wasi:http/incoming-handler` export of a component (CONTRACT.md §8).

use std::future::Future;
use std::io::Write;

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
    load_environment();
    let response = match read_request(&request) {
        Ok(request) => handler(request),
        Err(message) => Response::new(http::StatusCode::BAD_REQUEST).with_body(message),
    };
    write_response(out, response);
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
