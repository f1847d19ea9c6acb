//! The response a function returns.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A response body: bytes at once, or chunks sent to the caller as they are produced.
///
/// ```
/// use amphi_sdk::Body;
///
/// let whole = Body::from("done");
/// let chunks = Body::stream((1..=3).map(|i| format!("part {i}\n").into_bytes()));
/// assert_eq!(whole.into_bytes(), b"done");
/// assert_eq!(chunks.into_bytes(), b"part 1\npart 2\npart 3\n");
/// ```
pub enum Body {
    /// The whole body.
    Bytes(Vec<u8>),
    /// Chunks, each written to the caller when the iterator yields it.
    Stream(Box<dyn Iterator<Item = Vec<u8>> + Send>),
}

impl Body {
    /// A streamed body: each item of `chunks` reaches the caller when it is produced (a CGI
    /// binding sends the whole body at the end instead; CONTRACT.md §3).
    ///
    /// ```
    /// let body = amphi_sdk::Body::stream(std::iter::once(b"only".to_vec()));
    /// assert_eq!(body.into_bytes(), b"only");
    /// ```
    pub fn stream(chunks: impl Iterator<Item = Vec<u8>> + Send + 'static) -> Self {
        Self::Stream(Box::new(chunks))
    }

    /// The whole body, collecting a stream (a test's convenience).
    ///
    /// ```
    /// assert!(amphi_sdk::Body::default().into_bytes().is_empty());
    /// ```
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Stream(chunks) => chunks.flatten().collect(),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::Bytes(Vec::new())
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "Body::Bytes({} bytes)", bytes.len()),
            Self::Stream(_) => f.write_str("Body::Stream(..)"),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Self {
        Self::Bytes(bytes.to_vec())
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::Bytes(text.into_bytes())
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Self::Bytes(text.as_bytes().to_vec())
    }
}

/// One HTTP response: a status, headers and a [`Body`].
///
/// The platform passes it to the caller unchanged (a 4xx or 5xx from a function is a normal
/// response) and adds its own `amphi-*` and `Server-Timing` headers; `Content-Length` and
/// `Transfer-Encoding` are the platform's to set.
///
/// ```
/// use amphi_sdk::{Response, StatusCode};
///
/// let response = Response::new(StatusCode::CREATED)
///     .with_header("location", "/orders/7")
///     .with_body("created");
/// assert_eq!(response.status(), StatusCode::CREATED);
/// assert_eq!(response.headers()["location"], "/orders/7");
/// ```
#[derive(Debug, Default)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Response {
    /// An empty response with `status`.
    ///
    /// ```
    /// let response = amphi_sdk::Response::new(amphi_sdk::StatusCode::NO_CONTENT);
    /// assert_eq!(response.status().as_u16(), 204);
    /// ```
    pub fn new(status: StatusCode) -> Self {
        Self { status, ..Self::default() }
    }

    /// 200 with a `text/plain; charset=utf-8` body.
    ///
    /// ```
    /// let response = amphi_sdk::Response::text("hello\n");
    /// assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    /// ```
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(StatusCode::OK)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(text.into())
    }

    /// 200 with a streamed body; see [`Body::stream`].
    ///
    /// ```
    /// let response = amphi_sdk::Response::stream((0..3).map(|i| vec![b'0' + i]));
    /// assert_eq!(response.into_body().into_bytes(), b"012");
    /// ```
    pub fn stream(chunks: impl Iterator<Item = Vec<u8>> + Send + 'static) -> Self {
        Self::new(StatusCode::OK).with_body(Body::stream(chunks))
    }

    /// Sets the status.
    ///
    /// ```
    /// use amphi_sdk::{Response, StatusCode};
    /// let response = Response::text("gone").with_status(StatusCode::GONE);
    /// assert_eq!(response.status(), StatusCode::GONE);
    /// ```
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Appends a header, keeping earlier values of the same name. An invalid name or value is
    /// left out and reported in the log, so a bad header never turns into a failed call.
    ///
    /// ```
    /// let response = amphi_sdk::Response::default()
    ///     .with_header("set-cookie", "a=1")
    ///     .with_header("set-cookie", "b=2")
    ///     .with_header("bad name", "x");
    /// assert_eq!(response.headers().get_all("set-cookie").iter().count(), 2);
    /// assert_eq!(response.headers().len(), 2);
    /// ```
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        match (HeaderName::try_from(name), HeaderValue::from_bytes(value.as_ref())) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            _ => eprintln!(
                "amphi-sdk: the response header `{}` is not valid HTTP; left out",
                name.escape_debug()
            ),
        }
        self
    }

    /// Replaces the body.
    ///
    /// ```
    /// let response = amphi_sdk::Response::default().with_body(vec![1u8, 2]);
    /// assert_eq!(response.into_body().into_bytes(), [1, 2]);
    /// ```
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    ///
    /// ```
    /// assert_eq!(amphi_sdk::Response::default().status(), amphi_sdk::StatusCode::OK);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    ///
    /// ```
    /// assert!(amphi_sdk::Response::default().headers().is_empty());
    /// ```
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers, to change in place.
    ///
    /// ```
    /// let mut response = amphi_sdk::Response::text("x");
    /// response.headers_mut().remove("content-type");
    /// assert!(response.headers().is_empty());
    /// ```
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Splits the response into its parts.
    ///
    /// ```
    /// let (status, headers, body) = amphi_sdk::Response::text("x").into_parts();
    /// assert_eq!((status.as_u16(), headers.len(), body.into_bytes()), (200, 1, b"x".to_vec()));
    /// ```
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Body) {
        (self.status, self.headers, self.body)
    }

    /// Takes the body out of the response.
    ///
    /// ```
    /// assert_eq!(amphi_sdk::Response::text("x").into_body().into_bytes(), b"x");
    /// ```
    pub fn into_body(self) -> Body {
        self.body
    }
}
