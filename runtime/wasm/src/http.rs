//! The `wasi:http/incoming-handler` binding: a fresh component instance for every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use amphi_contract::record::StartKind;
use amphi_contract::{BackendError, BackendResponse, BoxError, Call, Completion, Ending, ProblemKind};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::handler::Proxy;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::failure::{classify_failure, deadline_exceeded};
use crate::offload::AbortOnDrop;
use crate::output::OutputTarget;
use crate::ready::{InstancePre, ReadyInstance, ReadyInstances};
use crate::state::{HttpState, new_http_store};

/// Serves one request with a fresh instance of `pre`: one of `instances`, made before the
/// request came, or else one made now.
///
/// The guest runs in its own task so it can keep streaming the body after the response head is
/// sent; that task completes the call when the guest returns, then has the next ready instance
/// made.
///
/// `code_load` is the time spent loading the function's code when this call found it missing
/// from the cache (a cold start).
pub async fn invoke(
    pre: ProxyPre<HttpState>,
    instances: Arc<ReadyInstances>,
    guests: Arc<crate::offload::GuestPool>,
    call: Call,
    request: http::Request<Bytes>,
    code_load: Option<Duration>,
) -> Result<BackendResponse, BackendError> {
    let init_started = Instant::now();
    let function = call.function.clone();
    let (mut store, ready_proxy) = match instances.take(&function) {
        Some(ReadyInstance { mut store, proxy: Proxy::P2(proxy), output }) => {
            output.bind(call.log.clone());
            store.data_mut().limits.set_deadline(call.deadline);
            store.set_epoch_deadline(1);
            (store, Some(proxy))
        }
        // None ready (or one of another kind, which cannot happen for one function version).
        _ => {
            let output = OutputTarget::bound(call.log.clone());
            let store = new_http_store(
                pre.engine(),
                &call.function.config,
                &output,
                call.deadline,
                &instances.budget,
            );
            (store, None)
        }
    };

    let request = request.map(Full::new);
    let status = Arc::new(AtomicU16::new(0));
    let (response_tx, response_rx) = tokio::sync::oneshot::channel();
    let setup = (|| -> wasmtime::Result<_> {
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
        let status = status.clone();
        let outparam = store.data_mut().http().new_response_outparam_from_callback(move |result| {
            if let Ok(response) = &result {
                status.store(response.status().as_u16(), Ordering::Relaxed);
            }
            let _ = response_tx.send(result);
        })?;
        Ok((incoming, outparam))
    })();
    let (incoming, outparam) = match setup {
        Ok(handles) => handles,
        Err(e) => {
            return Err(BackendError::new(
                ProblemKind::Internal,
                format!("cannot hand the request over: {e:#}"),
            ));
        }
    };

    // Whether the guest ran to its end: the response body ends cleanly only if it did.
    let (completed_tx, completed_rx) = tokio::sync::oneshot::channel::<bool>();
    let (completer, completion) = Completion::pending();
    let start = if code_load.is_some() { StartKind::Cold } else { StartKind::Warm };
    // Until the response head is handed over, the caller going away (this future dropped) stops
    // the guest; the gateway then records the call as abandoned.
    let long_running = store.data().limits.long_running.clone();
    let mut guest = AbortOnDrop(Some(tokio::spawn(async move {
        let deadline = tokio::time::Instant::from_std(call.deadline);
        let (pre_for_run, stats, call_in_guest) = (pre.clone(), instances.stats.clone(), call.clone());
        // The guest owns its store while it runs, so it can move to the guest pool.
        let run = async move {
            let called = async {
                let proxy = match ready_proxy {
                    Some(proxy) => Ok(proxy),
                    None => {
                        let proxy = pre_for_run.instantiate_async(&mut store).await;
                        stats.made_since(init_started);
                        proxy
                    }
                };
                call_in_guest.started(start, Some(code_load.unwrap_or_default() + init_started.elapsed()));
                proxy?.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await
            };
            let result = tokio::time::timeout_at(deadline, called).await;
            (store, result)
        };
        let (store, result) = guests.run(long_running, run).await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(trap)) => Some(classify_failure(&trap, &store.data().limits, &call)),
            Err(_elapsed) => Some(deadline_exceeded(&call)),
        };
        let _ = completed_tx.send(failure.is_none());
        let sent_status = status.load(Ordering::Relaxed);
        let failure = match failure {
            None if sent_status == 0 => Some(no_response()),
            other => other,
        };
        // Completed before the clean-up below, so the gateway finds the ending ready when the
        // body ends and records the call at once.
        let ended = match failure {
            None => Ok(Ending::success()),
            // The caller already has the response head: the record keeps its status and says why
            // the body broke off.
            Some(error) if sent_status != 0 => {
                Ok(Ending::cut(error.outcome(), format!("after the response started: {}", error.detail)))
            }
            Some(error) => Err(error),
        };
        let ended = ended.map(|ending| completer.complete(ending));
        // Let the caller's task send the response before the clean-up below: on a
        // single-threaded worker it would otherwise wait for the store to be dropped.
        tokio::task::yield_now().await;
        drop(store);
        instances.replenish(&function, &InstancePre::P2(pre));
        ended
    })));

    let response = response_rx.await;
    let Some(guest) = guest.0.take() else { return Err(no_response()) };
    match response {
        // The guest streams the body on its own from here.
        Ok(Ok(response)) => Ok(BackendResponse {
            response: response.map(|body| {
                GuestBody {
                    inner: body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                    completed: Some(completed_rx),
                }
                .boxed_unsync()
            }),
            completion,
        }),
        // An error code instead of a response, or no response at all: the guest task has the
        // reason.
        Ok(Err(_)) | Err(_) => match guest.await {
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => Err(no_response()),
            Err(join) => {
                Err(BackendError::new(ProblemKind::Internal, format!("the guest task failed: {join}")))
            }
        },
    }
}

/// The response body a guest streams. It ends cleanly only once the guest has run to its end; a
/// guest that trapped or ran out of time after sending the head ends it with an error instead, so
/// the caller sees the body cut off (the connection reset, or the HTTP/2 stream reset), never a
/// complete-looking response.
struct GuestBody {
    inner: amphi_contract::ResponseBody,
    completed: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                let Some(completed) = self.completed.as_mut() else { return Poll::Ready(None) };
                match std::pin::Pin::new(completed).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(done) => {
                        self.completed = None;
                        if done == Ok(true) {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Err("the function failed after its response started".into())))
                        }
                    }
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.completed.is_none() && self.inner.is_end_stream()
    }
}

fn no_response() -> BackendError {
    BackendError::new(ProblemKind::FunctionFailed, "the function did not produce a response")
}
