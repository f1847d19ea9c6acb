//! The request a function receives.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::invocation::{Invocation, Logger};

/// One HTTP request, as the function sees it: the path after the trigger prefix `/fn/NAME`, the raw
/// query, every header (repeated ones included) and the whole body.
///
/// ```
/// use amphi_sdk::{Method, Request};
///
/// let req = Request::new(Method::POST, "/orders/7?confirm=yes&note=a%20b")
///     .with_header("content-type", "application/json")
///     .with_body("{}");
/// assert_eq!(req.path(), "/orders/7");
/// assert_eq!(req.query(), "confirm=yes&note=a%20b");
/// assert_eq!(req.query_param("note").as_deref(), Some("a b"));
/// assert_eq!(req.header("Content-Type"), Some("application/json"));
/// assert_eq!(req.body(), b"{}");
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path_with_query: String,
    headers: HeaderMap,
    body: Vec<u8>,
    invocation: Invocation,
}

impl Request {
    /// A request with no headers and no body, for tests of a handler. `path_with_query` is taken
    /// as it is, so escape it as a client would (`/a%20b?q=1`).
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/hello");
    /// assert_eq!(req.method(), "GET");
    /// ```
    pub fn new(method: Method, path_with_query: impl Into<String>) -> Self {
        Self::from_parts(method, path_with_query.into(), HeaderMap::new(), Vec::new())
    }

    pub(crate) fn from_parts(
        method: Method,
        path_with_query: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Self {
        let invocation = Invocation::from_headers(&headers);
        let path_with_query = if path_with_query.is_empty() { "/".to_string() } else { path_with_query };
        Self { method, path_with_query, headers, body, invocation }
    }

    /// Adds a header (a test's convenience); an invalid name or value is ignored.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/")
    ///     .with_header("x-tag", "a")
    ///     .with_header("x-tag", "b");
    /// assert_eq!(req.header_all("x-tag"), ["a", "b"]);
    /// ```
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            self.headers.append(name, value);
            self.invocation = Invocation::from_headers(&self.headers);
        }
        self
    }

    /// Replaces the body (a test's convenience).
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::PUT, "/").with_body(vec![0u8, 1, 2]);
    /// assert_eq!(req.body().len(), 3);
    /// ```
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The method, any of them (custom ones included).
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::DELETE, "/item/1");
    /// assert_eq!(req.method(), amphi_sdk::Method::DELETE);
    /// ```
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path after the trigger prefix, as the caller sent it (still percent-encoded); `/` at
    /// least.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/a%20b?x=1");
    /// assert_eq!(req.path(), "/a%20b");
    /// ```
    pub fn path(&self) -> &str {
        self.path_with_query.split_once('?').map_or(&self.path_with_query, |(path, _)| path)
    }

    /// The raw query, without `?`; empty when there is none.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/?x=1&x=2");
    /// assert_eq!(req.query(), "x=1&x=2");
    /// ```
    pub fn query(&self) -> &str {
        self.path_with_query.split_once('?').map_or("", |(_, query)| query)
    }

    /// The path and, when the caller sent one, `?` and the query, exactly as sent.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/p?q");
    /// assert_eq!(req.path_with_query(), "/p?q");
    /// ```
    pub fn path_with_query(&self) -> &str {
        &self.path_with_query
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space), lossy on invalid
    /// UTF-8.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/?name=J%C3%BCrgen+M&flag");
    /// assert_eq!(req.query_param("name").as_deref(), Some("Jürgen M"));
    /// assert_eq!(req.query_param("flag").as_deref(), Some(""));
    /// assert_eq!(req.query_param("other"), None);
    /// ```
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key) == name).then(|| decode_component(value))
        })
    }

    /// Every header, repeated ones included, in the order the caller sent them per name.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/").with_header("accept", "*/*");
    /// assert_eq!(req.headers().len(), 1);
    /// ```
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of a header (names are case-insensitive), if it is text.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/").with_header("X-Mode", "fast");
    /// assert_eq!(req.header("x-mode"), Some("fast"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Every text value of a header, in order.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/");
    /// assert!(req.header_all("x-missing").is_empty());
    /// ```
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().filter_map(|value| value.to_str().ok()).collect()
    }

    /// The whole body (the platform reads it before the call starts).
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::POST, "/").with_body("hi");
    /// assert_eq!(req.body(), b"hi");
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body out of the request.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::POST, "/").with_body("hi");
    /// let body: Vec<u8> = req.into_body();
    /// assert_eq!(body, b"hi");
    /// ```
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The call in flight: its id, function, version and deadline.
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/");
    /// assert_eq!(req.invocation().id, "");
    /// ```
    pub fn invocation(&self) -> &Invocation {
        &self.invocation
    }

    /// A logger whose lines are attributed to this call; see [`Logger`].
    ///
    /// ```
    /// let req = amphi_sdk::Request::new(amphi_sdk::Method::GET, "/");
    /// req.logger().log("handled");
    /// ```
    pub fn logger(&self) -> Logger {
        self.invocation.logger()
    }
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_decode_escapes_and_keep_broken_ones() {
        assert_eq!(decode_component("a%20b+c"), "a b c");
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
        assert_eq!(decode_component("%41"), "A");
    }

    #[test]
    fn an_empty_path_is_the_root() {
        let req = Request::from_parts(Method::GET, String::new(), HeaderMap::new(), Vec::new());
        assert_eq!(req.path(), "/");
        assert_eq!(req.query(), "");
    }
}
