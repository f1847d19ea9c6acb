//! Keeping the serving threads for I/O: a guest that runs long moves to threads of its own.
//!
//! Guest code starts on the serving worker that took its request, which costs nothing for the
//! common call that finishes within microseconds. A guest still running when its first epoch
//! slice ends (5 ms of execution, [`crate::engine::EPOCH_TICK`]) is long-running: at that yield
//! point its future moves to the guest pool, a multi-threaded runtime whose threads run at a
//! lower scheduling priority, and the serving worker goes back to its connections. Without this a
//! spinning guest kept its worker busy in 5 ms slices interleaved with every other connection on
//! that worker, and their latency went from microseconds to hundreds of milliseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// The threads long-running guests move to.
pub struct GuestPool {
    handle: tokio::runtime::Handle,
    /// Taken by `Drop` only.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How much lower than the serving threads the guest threads run (a `nice` increment).
const NICENESS: i32 = 10;

impl GuestPool {
    /// A pool of `threads` threads.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("amphi-guest")
            .on_thread_start(|| {
                // Linux sets niceness per thread: this one only. Best effort.
                let _ = rustix::process::setpriority_process(None, NICENESS);
            })
            .enable_all()
            .build()?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Runs `future` on the caller's task until `long_running` is set at one of its yields, then
    /// on the pool. Dropping the returned future stops `future` wherever it runs.
    pub fn run<F>(&self, long_running: Arc<AtomicBool>, future: F) -> impl Future<Output = F::Output> + use<F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.handle.clone();
        async move {
            let mut future: Pin<Box<F>> = Box::pin(future);
            let here = std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending if long_running.load(Ordering::Relaxed) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await;
            if let Some(output) = here {
                return output;
            }
            let mut moved = AbortOnDrop(Some(handle.spawn(future)));
            let Some(task) = moved.0.as_mut() else { return std::future::pending().await };
            match task.await {
                Ok(output) => output,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // Only this guard aborts it, and then nobody is waiting.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks; the pool may be dropped on an async thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts the task it holds when dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_short_future_stays_a_long_one_moves_and_both_finish() {
        let pool = GuestPool::new(1).expect("pool");
        let here = std::thread::current().id();
        let short = pool.run(Arc::new(AtomicBool::new(false)), async move { std::thread::current().id() });
        assert_eq!(short.await, here);

        let long_running = Arc::new(AtomicBool::new(false));
        let flag = long_running.clone();
        let long = pool.run(long_running, async move {
            flag.store(true, Ordering::Relaxed);
            tokio::task::yield_now().await;
            std::thread::current().id()
        });
        assert_ne!(long.await, here, "it moved to the pool");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_caller_stops_a_moved_future() {
        let pool = GuestPool::new(1).expect("pool");
        let long_running = Arc::new(AtomicBool::new(true));
        let (alive_tx, mut alive_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let running = pool.run(long_running, async move {
            loop {
                let _ = alive_tx.send(());
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), running).await;
        while alive_rx.try_recv().is_ok() {}
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(alive_rx.recv().await.is_none(), "the moved future still runs");
    }
}
