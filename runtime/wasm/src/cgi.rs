//! The CGI 1.1 binding (RFC 3875) for WASI preview1 command modules, as WAGI does it.
//!
//! The request's meta-variables go in the environment (with the function's own env), the body on
//! stdin; the module's stdout is the response: header lines (`Status:`, `Content-Type:`,
//! `Location:`, any other), a blank line, then the body. Its stderr is its log. The module runs to
//! completion before the response is sent (CGI has no streaming here).

use std::time::{Duration, Instant};

use amphi_contract::cgi::{meta_variables, parse_response};
use amphi_contract::record::StartKind;
use amphi_contract::{
    BackendError, BackendResponse, BoxError, Call, Completion, ConnectionInfo, Ending, ProblemKind,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::InstancePre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx};

use crate::failure::{classify_failure, deadline_exceeded};
use crate::limits::CallLimits;
use crate::output::{OutputTarget, ResponseOutput};
use crate::state::{CgiState, new_store};

/// Runs one request through a fresh instance of `pre`.
pub async fn invoke(
    pre: InstancePre<CgiState>,
    call: Call,
    request: http::Request<Bytes>,
    code_load: Option<Duration>,
    max_response_bytes: usize,
    budget: std::sync::Arc<crate::limits::MemoryBudget>,
    guests: std::sync::Arc<crate::offload::GuestPool>,
) -> Result<BackendResponse, BackendError> {
    let init_started = Instant::now();
    let config = &call.function.config;
    let (parts, body) = request.into_parts();
    let mut env: Vec<(String, String)> = config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.extend(meta_variables(
        &parts,
        parts.extensions.get::<ConnectionInfo>(),
        body.len(),
        &call.function.name,
    ));

    let stdout = ResponseOutput::new(max_response_bytes);
    let (_, stderr) = OutputTarget::bound(call.log.clone()).streams();
    let mut wasi = WasiCtx::builder();
    wasi.envs(&env)
        .arg(&call.function.name)
        .stdin(MemoryInputPipe::new(body))
        .stdout(stdout.clone())
        .stderr(stderr);
    let state = CgiState {
        wasi: wasi.build_p1(),
        limits: CallLimits::new(config.memory_bytes, call.deadline, budget),
    };
    let mut store = new_store(pre.module().engine(), state, |s| &mut s.limits);

    let deadline = tokio::time::Instant::from_std(call.deadline);
    let long_running = store.data().limits.long_running.clone();
    // The guest owns its store while it runs, so it can move to the guest pool.
    let start = if code_load.is_some() { StartKind::Cold } else { StartKind::Warm };
    let call_in_guest = call.clone();
    let run = async move {
        let called = async {
            let instance = pre.instantiate_async(&mut store).await;
            call_in_guest.started(start, Some(code_load.unwrap_or_default() + init_started.elapsed()));
            let start = instance?.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let result = tokio::time::timeout_at(deadline, called).await;
        (store, result)
    };
    let (store, result) = guests.run(long_running, run).await;
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => None,
            Some(I32Exit(code)) => Some(BackendError::new(
                ProblemKind::FunctionFailed,
                format!("the CGI program exited with status {code}"),
            )),
            None => Some(classify_failure(&error, &store.data().limits, &call)),
        },
        Err(_elapsed) => Some(deadline_exceeded(&call)),
    };
    drop(store);
    let response = match (failure, stdout.take()) {
        // A refused write can make the program fail too; the size is the reason then.
        (Some(error), Some(_))
        | (Some(error @ BackendError { kind: ProblemKind::DeadlineExceeded, .. }), None) => Err(error),
        (_, None) => Err(BackendError::new(
            ProblemKind::FunctionFailed,
            format!(
                "the CGI response is larger than {} (serve's CGI response limit)",
                amphi_contract::size::format_bytes(max_response_bytes as u64)
            ),
        )),
        (None, Some(output)) => parse_response(output).map_err(|why| {
            BackendError::new(ProblemKind::FunctionFailed, format!("malformed CGI response: {why}"))
        }),
    };
    let response = response?;
    Ok(BackendResponse {
        response: response
            .map(|body| Full::new(body).map_err(|never| -> BoxError { match never {} }).boxed_unsync()),
        completion: Completion::over(Ending::success()),
    })
}
