//! The `wasi:http/incoming-handler` binding: a fresh component instance for every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use amphi_contract::record::StartKind;
use amphi_contract::{
    BackendError, BackendResponse, BoxError, Finish, FunctionVersion, Invocation, Outcome, ProblemKind,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::CallLimits;
use crate::offload::AbortOnDrop;
use crate::output::OutputTarget;
use crate::ready::{ReadyInstance, ReadyInstances};
use crate::{classify_failure, deadline_exceeded, new_store};

/// The store data of a component call.
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    /// The call's limits and which one was hit.
    pub limits: CallLimits,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Outbound HTTP is denied unless the host is on the function's allow-list.
struct OutboundPolicy {
    allowed_hosts: Arc<[String]>,
}

impl OutboundPolicy {
    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else { return false };
        self.allowed_hosts.iter().any(|allowed| allowed == authority.as_str() || allowed == authority.host())
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        drop(fut);
        if !self.allows(request.uri()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

/// Serves one request with a fresh instance of `pre`: one of `instances`, made before the
/// request came, or else one made now.
///
/// The guest runs in its own task so it can keep streaming the body after the response head is
/// sent; that task finishes the invocation record when the guest returns, then has the next
/// ready instance made.
///
/// `code_load` is the time spent loading the function's code when this call found it missing
/// from the cache (a cold start).
pub async fn invoke(
    pre: ProxyPre<HttpState>,
    instances: Arc<ReadyInstances>,
    guests: Arc<crate::offload::GuestPool>,
    invocation: Invocation,
    request: http::Request<Bytes>,
    code_load: Option<Duration>,
) -> Result<BackendResponse, BackendError> {
    let init_started = Instant::now();
    let function = invocation.function.clone();
    let (mut store, ready_proxy) = match instances.take(&function) {
        Some(ReadyInstance { mut store, proxy, output }) => {
            output.bind(invocation.log.clone());
            store.data_mut().limits.set_deadline(invocation.deadline);
            store.set_epoch_deadline(1);
            (store, Some(proxy))
        }
        None => {
            let output = OutputTarget::bound(invocation.log.clone());
            let store = new_http_store(
                pre.engine(),
                &invocation.function,
                &output,
                invocation.deadline,
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
            let error =
                BackendError::new(ProblemKind::Internal, format!("cannot hand the request over: {e:#}"));
            error.finish(invocation);
            return Err(error);
        }
    };

    let (init_tx, init_rx) = tokio::sync::oneshot::channel();
    // Whether the guest ran to its end: the response body ends cleanly only if it did.
    let (completed_tx, completed_rx) = tokio::sync::oneshot::channel::<bool>();
    let start = if code_load.is_some() { StartKind::Cold } else { StartKind::Warm };
    // Until the response head is handed over, the caller going away (this future dropped) stops
    // the guest; its invocation then records the call as abandoned.
    let long_running = store.data().limits.long_running.clone();
    let mut guest = AbortOnDrop(Some(tokio::spawn(async move {
        let deadline = tokio::time::Instant::from_std(invocation.deadline);
        let (pre_for_run, stats) = (pre.clone(), instances.stats.clone());
        // The guest owns its store while it runs, so it can move to the guest pool.
        let run = async move {
            let mut init = None;
            let called = async {
                let proxy = match ready_proxy {
                    Some(proxy) => Ok(proxy),
                    None => {
                        let proxy = pre_for_run.instantiate_async(&mut store).await;
                        stats.made_since(init_started);
                        proxy
                    }
                };
                let ready = code_load.unwrap_or_default() + init_started.elapsed();
                init = Some(ready);
                let _ = init_tx.send(ready);
                proxy?.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await
            };
            let result = tokio::time::timeout_at(deadline, called).await;
            (store, init, result)
        };
        let (store, init, result) = guests.run(long_running, run).await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(trap)) => Some(classify_failure(&trap, &store.data().limits, &invocation)),
            Err(_elapsed) => Some(deadline_exceeded(&invocation)),
        };
        let _ = completed_tx.send(failure.is_none());
        // Let the caller's task send the response before the clean-up below: on a
        // single-threaded worker it would otherwise wait for the store to be dropped.
        tokio::task::yield_now().await;
        drop(store);
        instances.replenish(&function, &pre);
        let sent_status = status.load(Ordering::Relaxed);
        let failure = match failure {
            None if sent_status == 0 => Some(no_response()),
            other => other,
        };
        match failure {
            None => invocation.finish(Finish {
                status: sent_status,
                outcome: Outcome::Success,
                error: None,
                start,
                init,
            }),
            // The caller already has the response head: the record keeps its status and says why
            // the body broke off.
            Some(error) if sent_status != 0 => invocation.finish(Finish {
                status: sent_status,
                outcome: error.outcome(),
                error: Some(format!("after the response started: {}", error.detail)),
                start,
                init,
            }),
            Some(mut error) => {
                error.start = start;
                error.init = init;
                error.finish(invocation);
                return Err(error);
            }
        }
        Ok(())
    })));

    let init = init_rx.await.unwrap_or_default();
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
            start,
            init,
            queued: std::time::Duration::ZERO,
        }),
        // An error code instead of a response, or no response at all: the guest task has the
        // reason (and writes the record).
        Ok(Err(_)) | Err(_) => match guest.await {
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => Err(no_response()),
            Err(join) => {
                Err(BackendError::new(ProblemKind::Internal, format!("the guest task failed: {join}")))
            }
        },
    }
}

/// A store for one instance of `function`: its environment and limits, output to `output`.
pub(crate) fn new_http_store(
    engine: &wasmtime::Engine,
    function: &FunctionVersion,
    output: &OutputTarget,
    deadline: Instant,
    budget: &Arc<crate::limits::MemoryBudget>,
) -> Store<HttpState> {
    let config = &function.config;
    let (stdout, stderr) = output.streams();
    let mut wasi = WasiCtx::builder();
    wasi.envs(&config.env.iter().collect::<Vec<_>>()).stdout(stdout).stderr(stderr);
    let state = HttpState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        outbound: OutboundPolicy { allowed_hosts: config.allowed_outbound_hosts.clone().into() },
        limits: CallLimits::new(config.memory_bytes, deadline, budget.clone()),
    };
    new_store(engine, state, |s| &mut s.limits)
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
