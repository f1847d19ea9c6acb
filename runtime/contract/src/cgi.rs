//! CGI 1.1 (RFC 3875) as both backends speak it: the request's meta-variables in, the program's
//! stdout parsed back into a response. Wasm CGI modules and container functions running CGI over
//! stdio share this code, so they see the same variables and are held to the same output format.

use bytes::Bytes;

use crate::backend::ConnectionInfo;

/// The RFC 3875 meta-variables of a request, plus WAGI's `X_RAW_PATH_INFO`.
pub fn meta_variables(
    parts: &http::request::Parts,
    connection: Option<&ConnectionInfo>,
    body_len: usize,
    function: &str,
) -> Vec<(String, String)> {
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
        // `Proxy:` would become HTTP_PROXY, which CGI programs' HTTP clients take as their proxy
        // (httpoxy, CVE-2016-5385).
        if name == http::header::CONTENT_TYPE || name == http::header::CONTENT_LENGTH || name == "proxy" {
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
pub fn parse_response(output: Bytes) -> Result<http::Response<Bytes>, String> {
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
