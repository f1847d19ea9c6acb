//! Callbacks: when a job ends, its result is POSTed to the URL its caller gave
//! (`amphi-callback-url` or OpenFaaS' `X-Callback-Url`), with `amphi-invocation-id` (the job),
//! `amphi-job-state`, `amphi-attempts` and `amphi-status` (the function's status). A delivery
//! that fails is tried again with backoff; how it went is recorded on the job. A delivery cut off
//! by a shutdown stays pending and is made again at the next start.
//!
//! Only hosts in `--callback-allow-host` are called, so a caller cannot make the gateway reach an
//! address of its choosing. Plain `http://` only: the gateway has no TLS client.

use std::sync::Arc;
use std::time::Duration;

use amphi_contract::now_unix_us;
use amphi_queue::CallbackState;
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;

use crate::platform::Platform;

/// Deliveries tried before the callback is given up (`failed`).
const DELIVERIES: u32 = 5;
/// The first backoff ceiling between deliveries; it doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client callbacks go out on.
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Sender {
    /// A client with kept-alive connections.
    fn default() -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

/// Checks a callback URL: absolute `http://`, and its host (or host and port) allowed.
pub fn check_url(url: &str, allowed_hosts: &[String]) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https callbacks are not supported; give an http:// URL".into()),
        _ => return Err(format!("`{url}` is not an absolute http:// URL")),
    }
    let authority = uri.authority().ok_or_else(|| format!("`{url}` names no host"))?;
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(80);
    let allowed = allowed_hosts.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        match entry.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => h == host && p.parse() == Ok(port),
            _ => entry == host,
        }
    });
    if !allowed {
        return Err(format!(
            "host `{host}:{port}` is not allowed for callbacks (the server's --callback-allow-host list{})",
            if allowed_hosts.is_empty() { " is empty" } else { "" }
        ));
    }
    Ok(uri)
}

/// Delivers the result of job `id` to `url` in the background, tried again with backoff.
pub async fn deliver(platform: &Arc<Platform>, id: String, url: String) {
    let running = platform.jobs.running.enter();
    let platform = platform.clone();
    tokio::spawn(async move {
        let _running = running;
        let mut shutdown = platform.shutdown_signal();
        let mut state = CallbackState {
            url: url.clone(),
            state: "pending".into(),
            attempts: 0,
            status: None,
            error: None,
            delivered_us: None,
        };
        let uri = match check_url(&url, &platform.config.callback_allow_hosts) {
            Ok(uri) => uri,
            Err(why) => {
                state.state = "failed".into();
                state.error = Some(why);
                record(&platform, &id, state).await;
                return;
            }
        };
        for delivery in 1..=DELIVERIES {
            state.attempts = delivery;
            match post(&platform, &id, &uri).await {
                Ok(status) if (200..300).contains(&status) => {
                    state.state = "delivered".into();
                    state.status = Some(status);
                    state.error = None;
                    state.delivered_us = Some(now_unix_us());
                    record(&platform, &id, state).await;
                    return;
                }
                Ok(status) => {
                    state.status = Some(status);
                    state.error = Some(format!("the receiver answered {status}"));
                }
                Err(why) => state.error = Some(why),
            }
            if delivery == DELIVERIES {
                break;
            }
            let ceiling = FIRST_BACKOFF.saturating_mul(1 << (delivery - 1)).min(MAX_BACKOFF);
            let delay = Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64));
            let stopping = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                _ = shutdown.wait_for(|stopping| *stopping) => true,
            };
            if stopping {
                // Left pending: delivered again at the next start.
                record(&platform, &id, state).await;
                return;
            }
        }
        state.state = "failed".into();
        record(&platform, &id, state).await;
    });
}

/// One delivery: the job's result as the body, its state in the header fields.
async fn post(platform: &Platform, id: &str, uri: &Uri) -> Result<u16, String> {
    let queue = &platform.jobs.queue;
    let job = queue.get(id).await.map_err(|e| e.to_string())?.ok_or("the job is gone")?;
    let result = queue.result(id).await.map_err(|e| e.to_string())?;
    let mut request = Request::post(uri.clone())
        .header(amphi_contract::headers::INVOCATION_ID, id)
        .header("amphi-job-state", job.state.as_str())
        .header("amphi-attempts", job.attempts.len().to_string())
        .header("amphi-function", job.function.as_str());
    if let Some(status) = job.status {
        request = request.header("amphi-status", status.to_string());
    }
    let body = match &result {
        Some(result) => {
            if let Some((_, kind)) = result.headers.iter().find(|(name, _)| name == "content-type") {
                request = request.header(http::header::CONTENT_TYPE, kind.as_str());
            }
            result.body.clone()
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).map_err(|e| format!("cannot make the request: {e}"))?;
    let response = tokio::time::timeout(DELIVERY_TIMEOUT, platform.jobs.callbacks.client.request(request))
        .await
        .map_err(|_| format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot deliver: {e}"))?;
    Ok(response.status().as_u16())
}

async fn record(platform: &Platform, id: &str, state: CallbackState) {
    if let Err(error) = platform.jobs.queue.callback_done(id, state).await {
        tracing::warn!(%error, job = id, "cannot record a callback delivery");
    }
}

/// Delivers again the callbacks a stopped server left pending.
pub fn resume(platform: &Arc<Platform>) {
    let platform = platform.clone();
    tokio::spawn(async move {
        let pending = match platform.jobs.queue.pending_callbacks().await {
            Ok(pending) => pending,
            Err(error) => return tracing::warn!(%error, "cannot list pending callbacks"),
        };
        for id in pending {
            let url = match platform.jobs.queue.get(&id).await {
                Ok(Some(job)) => job.callback.map(|c| c.url),
                _ => None,
            };
            if let Some(url) = url {
                deliver(&platform, id, url).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn only_allowed_http_hosts_are_called() {
        let allowed = vec!["127.0.0.1:9000".to_string(), "hooks.example".to_string()];
        assert!(check_url("http://127.0.0.1:9000/done", &allowed).is_ok());
        assert!(check_url("http://hooks.example:8081/x", &allowed).is_ok(), "a bare host allows any port");
        assert!(check_url("http://127.0.0.1:9001/done", &allowed).is_err(), "another port");
        assert!(check_url("http://169.254.169.254/latest", &allowed).is_err());
        assert!(check_url("https://hooks.example/x", &allowed).is_err());
        assert!(check_url("/relative", &allowed).is_err());
        assert!(check_url("http://127.0.0.1:9000/done", &[]).expect_err("none allowed").contains("is empty"));
    }
}
