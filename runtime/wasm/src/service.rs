//! The `wasi:http/handler@0.3` binding (WASI 0.3): async components whose request and response
//! bodies are streams.
//!
//! Requests go through wasmtime-wasi-http's [`ProxyHandler`], the dispatcher `wasmtime serve`
//! uses, one per function version. By default an instance serves exactly one request, as for
//! WASI 0.2: a fresh instance per request, made ahead by [`crate::ready`]. A function whose config
//! has `reuse` lets an instance serve up to `max_requests` requests, `max_concurrent` at once,
//! and keeps it for `idle_timeout` between them (CONTRACT.md §6).
//!
//! Limits are the store's, as for WASI 0.2: memory by its limiter, the deadline by epoch
//! interruption (the store's deadline is the latest of its calls') and by the call's own
//! expiry. An instance's output goes to the call it started last: with `max_concurrent` above 1
//! the lines of calls one instance serves at once cannot be told apart.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amphi_contract::record::StartKind;
use amphi_contract::{
    BackendError, BackendResponse, BoxError, Call, Completer, Completion, Ending, FunctionVersion,
    ProblemKind, ReuseConfig,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, Proxy, ProxyHandler, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::failure::{classify_failure, deadline_exceeded};
use crate::output::OutputTarget;
use crate::ready::{InstancePre, ReadyInstance, ReadyInstances};
use crate::state::{HttpState, new_http_store};

/// The dispatchers of recently called WASI 0.3 functions, one per function version.
pub struct Services {
    handlers: moka::sync::Cache<String, Arc<FunctionService>>,
}

/// The dispatcher of one function version, and the signal that retires its instances.
struct FunctionService {
    version: u64,
    handler: ProxyHandler<ServiceState>,
    retired: CancellationToken,
}

impl Services {
    /// Dispatchers for at most `functions` functions; the least recently called is retired first.
    pub fn new(functions: u64) -> Self {
        let handlers = moka::sync::Cache::builder()
            .max_capacity(functions)
            .eviction_listener(|_name, service: Arc<FunctionService>, _cause| service.retired.cancel())
            .build();
        Self { handlers }
    }

    /// Retires the instances of `name` (a new version, or deleted): idle ones go at once, busy
    /// ones when their calls are done.
    pub fn retire(&self, name: &str) {
        self.handlers.invalidate(name);
    }

    /// The dispatcher of `function`'s version. A call still running an older version than the
    /// one held (a deploy landed meanwhile) gets one of its own, retired from the start, so its
    /// instance serves that call only.
    fn handler(
        &self,
        function: &Arc<FunctionVersion>,
        state: impl Fn() -> ServiceState,
    ) -> ProxyHandler<ServiceState> {
        let fresh = || {
            let state = state();
            let retired = state.retired.clone();
            Arc::new(FunctionService {
                version: function.version,
                handler: ProxyHandler::new(state),
                retired,
            })
        };
        let entry = self.handlers.get_with_by_ref(function.name.as_str(), fresh);
        if entry.version == function.version {
            return entry.handler.clone();
        }
        let replacement = fresh();
        if entry.version < function.version {
            self.handlers.insert(function.name.clone(), replacement.clone());
        } else {
            replacement.retired.cancel();
        }
        replacement.handler.clone()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.handlers.invalidate_all();
        self.handlers.run_pending_tasks();
    }
}

/// What a dispatcher makes its instances from.
struct ServiceState {
    pre: ServicePre<HttpState>,
    function: Arc<FunctionVersion>,
    ready: Arc<ReadyInstances>,
    reuse: ReuseConfig,
    retired: CancellationToken,
}

/// One instance's share of its dispatcher: where its output goes and the calls it serves.
struct InstanceState {
    output: OutputTarget,
    reuse: ReuseConfig,
    retired: CancellationToken,
    /// Calls started on the instance whose callers may still want to know why it failed.
    calls: Mutex<Vec<CallStart>>,
    pre: ServicePre<HttpState>,
    function: Arc<FunctionVersion>,
    ready: Arc<ReadyInstances>,
}

/// A call handed to the dispatcher.
struct CallStart {
    call: Call,
    /// Told why, if the instance fails while this call is in flight.
    failed: oneshot::Sender<BackendError>,
    /// When the backend got the call.
    invoked: Instant,
    /// Time spent loading the function's code, on a cold start.
    code_load: Option<Duration>,
}

impl HandlerState for ServiceState {
    type StoreData = HttpState;
    type WorkerExpiration = Expiration;
    type WorkerState = InstanceState;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HttpState, Expiration, InstanceState>> {
        let (store, proxy, output) = match self.ready.take(&self.function) {
            Some(ReadyInstance { store, proxy: proxy @ Proxy::P3(_), output }) => (store, proxy, output),
            _ => {
                let started = Instant::now();
                let output = OutputTarget::pending();
                let deadline = Instant::now() + self.function.config.timeout();
                let mut store = new_http_store(
                    self.pre.engine(),
                    &self.function.config,
                    &output,
                    deadline,
                    &self.ready.budget,
                );
                let proxy = InstancePre::P3(self.pre.clone()).instantiate(&mut store).await?;
                self.ready.stats.made_since(started);
                (store, proxy, output)
            }
        };
        let timeout = self.function.config.timeout();
        Ok(Instance {
            store,
            proxy,
            view: <HttpState as WasiHttpView>::http,
            expiration: Expiration {
                idle: self.reuse.idle_timeout(),
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                retired: Box::pin(self.retired.clone().cancelled_owned()),
            },
            state: InstanceState {
                output,
                reuse: self.reuse,
                retired: self.retired.clone(),
                calls: Mutex::default(),
                pre: self.pre.clone(),
                function: self.function.clone(),
                ready: self.ready.clone(),
            },
        })
    }
}

impl WorkerState for InstanceState {
    type StoreData = HttpState;
    type RequestData = CallStart;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if self.retired.is_cancelled() || total >= self.reuse.max_requests as usize {
            ShouldAccept::Never
        } else if concurrent >= self.reuse.max_concurrent as usize {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, HttpState>,
        start: CallStart,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let call = &start.call;
        self.output.bind(call.log.clone());
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.retain(|earlier| !earlier.failed.is_closed());
        let limits = &mut store.data_mut().limits;
        if calls.is_empty() || call.deadline > limits.deadline() {
            limits.set_deadline(call.deadline);
        }
        store.set_epoch_deadline(1);
        let kind = if start.code_load.is_some() { StartKind::Cold } else { StartKind::Warm };
        call.started(kind, Some(start.code_load.unwrap_or_default() + start.invoked.elapsed()));
        let expires = tokio::time::Instant::from_std(call.deadline);
        calls.push(start);
        Box::pin(tokio::time::sleep_until(expires))
    }

    fn drop(&self, store: Store<HttpState>, result: wasmtime::Result<()>) {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(PoisonError::into_inner));
        if let Err(error) = result {
            let now = Instant::now();
            for start in calls {
                let failure = if now >= start.call.deadline {
                    deadline_exceeded(&start.call)
                } else {
                    classify_failure(&error, &store.data().limits, &start.call)
                };
                let _ = start.failed.send(failure);
            }
        }
        drop(store);
        self.ready.replenish(&self.function, &InstancePre::P3(self.pre.clone()));
    }
}

/// When an instance is dropped: idle past `idle` (or retired while idle), or busy past the
/// function's timeout since its last call started (a guard for a guest that keeps the event
/// loop from running the calls' own expiry).
struct Expiration {
    idle: Duration,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    retired: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl WorkerExpiration for Expiration {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, since: Instant) -> Poll<()> {
        let this = self.get_mut();
        if status == WorkerStatus::Idle && this.retired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let limit = if status == WorkerStatus::Idle { this.idle } else { this.timeout };
        let Some(deadline) = since.checked_add(limit) else { return Poll::Pending };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// Serves one call of a WASI 0.3 function.
///
/// `code_load` is the time spent loading the function's code when this call found it missing
/// from the cache (a cold start).
pub async fn invoke(
    services: &Services,
    pre: ServicePre<HttpState>,
    ready: Arc<ReadyInstances>,
    call: Call,
    request: http::Request<Bytes>,
    code_load: Option<Duration>,
) -> Result<BackendResponse, BackendError> {
    let invoked = Instant::now();
    let function = call.function.clone();
    let handler = services.handler(&function, || ServiceState {
        pre: pre.clone(),
        function: function.clone(),
        ready: ready.clone(),
        // Without reuse an instance serves one request, whatever else its dispatcher could do.
        reuse: function.config.reuse.unwrap_or(ReuseConfig {
            max_requests: 1,
            max_concurrent: 1,
            idle_timeout_ms: 1,
        }),
        retired: CancellationToken::new(),
    });
    let (failed, failure) = oneshot::channel();
    let start = CallStart { call: call.clone(), failed, invoked, code_load };
    let request = request.map(|body| Full::new(body).map_err(|never| match never {}).boxed_unsync());
    let deadline = tokio::time::Instant::from_std(call.deadline);
    let response = match tokio::time::timeout_at(deadline, handler.handle(start, request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Err(why_failed(error, failure, &call).await),
        Err(_elapsed) => return Err(deadline_exceeded(&call)),
    };
    let (completer, completion) = Completion::pending();
    Ok(BackendResponse {
        response: response
            .map(|inner| ServiceBody { inner, failure, completer: Some(completer) }.boxed_unsync()),
        completion,
    })
}

/// Names why the dispatcher gave no response.
async fn why_failed(
    error: wasmtime::Error,
    failure: oneshot::Receiver<BackendError>,
    call: &Call,
) -> BackendError {
    if error.is::<ExpirationError>() {
        return deadline_exceeded(call);
    }
    if error.is::<TrapOrPanicError>() {
        // The instance failed: its dispatcher says why right after.
        return failure.await.unwrap_or_else(|_| {
            BackendError::new(ProblemKind::FunctionFailed, "the function failed before it answered")
        });
    }
    if let Some(code) = error.downcast_ref::<ErrorCode>() {
        return BackendError::new(
            ProblemKind::FunctionFailed,
            format!("the function answered with an error instead of a response: {code:?}"),
        );
    }
    call.log.platform_line(&format!("{error:?}"));
    match error.downcast_ref::<InstantiationError<CallStart>>() {
        Some(error) => BackendError::new(
            ProblemKind::FunctionFailed,
            format!("the function could not be instantiated: {}", error.error),
        ),
        None => BackendError::new(ProblemKind::FunctionFailed, format!("the function failed: {error}")),
    }
}

/// The response body a WASI 0.3 guest streams; completes the call when it ends, cleanly or not.
struct ServiceBody {
    inner: WasiBody,
    failure: oneshot::Receiver<BackendError>,
    completer: Option<Completer>,
}

impl http_body::Body for ServiceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(completer) = self.completer.take() {
                    completer.complete(Ending::success());
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                let ending = match self.failure.try_recv() {
                    Ok(failure) => Ending::cut(
                        failure.outcome(),
                        format!("after the response started: {}", failure.detail),
                    ),
                    Err(_) => Ending::cut(
                        amphi_contract::record::Outcome::FunctionError,
                        format!("after the response started: the body failed: {error}"),
                    ),
                };
                if let Some(completer) = self.completer.take() {
                    completer.complete(ending);
                }
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.completer.is_none() && self.inner.is_end_stream()
    }
}
