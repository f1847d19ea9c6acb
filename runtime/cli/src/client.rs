//! A small client for the admin API: every client command goes through it, nothing around it.

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Talks to one Amphi server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

/// A whole response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        builder.body(Full::new(body)).context("building the request")
    }

    /// Sends a request and reads the whole response (whatever its status).
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Reply> {
        let uri = request.uri().clone();
        let response = self.http.request(request).await.with_context(|| {
            format!("cannot reach Amphi at {uri} (is `amphi serve` running? set AMPHI_URL)")
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("reading the response")?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// An admin API call; a non-2xx answer becomes an error with the problem's detail.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Reply> {
        let reply = self.send(self.request(method, path, body, content_type)?).await?;
        if !reply.status.is_success() {
            bail!("{}", describe_failure(&reply));
        }
        Ok(reply)
    }

    /// An admin GET returning JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let reply = self.admin(Method::GET, path, Bytes::new(), None).await?;
        serde_json::from_slice(&reply.body).context("the server sent invalid JSON")
    }

    /// An admin call with a JSON body, returning JSON.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        value: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let body = Bytes::from(serde_json::to_vec(value)?);
        let reply = self.admin(method, path, body, Some("application/json")).await?;
        serde_json::from_slice(&reply.body).context("the server sent invalid JSON")
    }

    /// Calls a function through its HTTP trigger.
    pub async fn invoke(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply> {
        let mut request = self.request(method, path, body, None)?;
        request.headers_mut().remove(http::header::AUTHORIZATION);
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("bad header name `{name}`"))?;
            let value =
                http::HeaderValue::from_str(value).with_context(|| format!("bad value for `{name}`"))?;
            request.headers_mut().append(name, value);
        }
        self.send(request).await
    }

    /// A streaming admin GET: calls `on_line` with every line of the body as it arrives.
    pub async fn stream_lines(&self, path: &str, on_line: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let request = self.request(Method::GET, path, Bytes::new(), None)?;
        self.stream_request(request, on_line).await
    }

    /// A streaming upload: sends `body` and calls `on_line` with every NDJSON line of the answer.
    pub async fn upload_streaming(
        &self,
        path: &str,
        body: Bytes,
        content_type: &str,
        on_line: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut request = self.request(Method::POST, path, body, Some(content_type))?;
        request
            .headers_mut()
            .insert(http::header::ACCEPT, http::HeaderValue::from_static("application/x-ndjson"));
        self.stream_request(request, on_line).await
    }

    async fn stream_request(
        &self,
        request: Request<Full<Bytes>>,
        mut on_line: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let uri = request.uri().clone();
        let response =
            self.http.request(request).await.with_context(|| format!("cannot reach Amphi at {uri}"))?;
        if !response.status().is_success() {
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            bail!("{}", describe_failure(&Reply { status: parts.status, headers: parts.headers, body }));
        }
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the stream broke off")?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    on_line(&line[..line.len() - 1])?;
                }
            }
        }
        Ok(())
    }
}

/// One line saying what went wrong, from a problem+json body when there is one.
pub fn describe_failure(reply: &Reply) -> String {
    match serde_json::from_slice::<amphi_contract::Problem>(&reply.body) {
        Ok(problem) => format!("{} {}: {}", problem.status, problem.title, problem.detail),
        Err(_) => format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body).trim()),
    }
}
