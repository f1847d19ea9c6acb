//! Driving an async handler on a wasm instance's one thread.
//!
//! A wasm instance has no async runtime: nothing on its thread would ever wake a future waiting
//! on a timer or a socket of some runtime. So the executor polls the handler's future until it is
//! done, as long as the future itself asks to be polled again (it woke its own waker, as a
//! `yield_now` does); a future that waits without anyone able to wake it stops the call with a
//! clear message, instead of spinning the instance's CPU budget away until its timeout. Block
//! (sleep, read) synchronously inside the handler instead: the instance serves one call.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// What the call stops with when its future waits on nothing that can wake it.
pub const STALLED: &str = "amphi-sdk: the async handler is waiting on something that cannot wake it in a wasm \
     instance (there is no async runtime here); block synchronously instead (std::thread::sleep, \
     blocking reads)";

struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `future` to completion, or panics with [`STALLED`].
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        // One thread: whoever could wake it has run already, inside that poll.
        if !woken.0.swap(false, Ordering::AcqRel) {
            panic!("{STALLED}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_that_finish_or_ask_again_complete() {
        assert_eq!(block_on(async { 7 }), 7);
        let mut polls = 0;
        let again = std::future::poll_fn(|cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        assert_eq!(block_on(again), 3);
    }

    #[test]
    fn a_future_nobody_can_wake_stops_with_a_clear_message() {
        let stuck = std::panic::catch_unwind(|| block_on(std::future::pending::<()>()));
        let message = stuck.expect_err("it stops");
        let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("cannot wake it"), "{text}");
    }
}
