//! The store data of one call, for each binding, and the store that holds it: the leaf the
//! bindings, ready instances and the code cache all build on.

use std::sync::Arc;
use std::time::Instant;

use amphi_contract::FunctionConfig;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::{CallLimits, MemoryBudget};
use crate::output::OutputTarget;

/// A store for one call: memory limiter and deadline hooked up.
pub(crate) fn new_store<T: Send + 'static>(
    engine: &Engine,
    data: T,
    limits: fn(&mut T) -> &mut CallLimits,
) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(move |data| limits(data));
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut context| Ok(limits(context.data_mut()).on_epoch()));
    store
}

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

/// The store data of a CGI call.
pub struct CgiState {
    /// The preview1 context.
    pub wasi: WasiP1Ctx,
    /// The call's limits and which one was hit.
    pub limits: CallLimits,
}

/// A store for one instance of a function with `config`: its environment and limits, output to
/// `output`.
pub(crate) fn new_http_store(
    engine: &wasmtime::Engine,
    config: &FunctionConfig,
    output: &OutputTarget,
    deadline: Instant,
    budget: &Arc<MemoryBudget>,
) -> Store<HttpState> {
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
