//! Why a guest stopped, in the words the caller and the record get.

use amphi_contract::{BackendError, Call, ProblemKind};

use crate::limits::CallLimits;

/// Names why a guest stopped: its deadline, its memory limit, or a trap. The full error (with
/// the guest's backtrace) goes to the invocation's log; the caller gets one line.
pub(crate) fn classify_failure(error: &wasmtime::Error, limits: &CallLimits, call: &Call) -> BackendError {
    if limits.deadline_exceeded {
        return deadline_exceeded(call);
    }
    call.log.platform_line(&format!("{error:?}"));
    if limits.budget_exceeded {
        return BackendError::new(
            ProblemKind::BackendUnavailable,
            format!(
                "the server's wasm memory budget of {} is taken by other calls (serve --wasm-memory-budget)",
                amphi_contract::size::format_bytes(limits.budget().limit())
            ),
        );
    }
    if limits.memory_exceeded {
        return BackendError::new(
            ProblemKind::FunctionFailed,
            format!(
                "the function exceeded its memory limit of {}",
                amphi_contract::size::format_bytes(call.function.config.memory_bytes)
            ),
        );
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => BackendError::new(ProblemKind::FunctionFailed, format!("the function trapped: {trap}")),
        None => BackendError::new(ProblemKind::FunctionFailed, format!("the function failed: {error}")),
    }
}

pub(crate) fn deadline_exceeded(call: &Call) -> BackendError {
    BackendError::new(
        ProblemKind::DeadlineExceeded,
        format!("the function did not finish within its timeout of {}ms", call.function.config.timeout_ms),
    )
}
