//! Async invocations: jobs accepted at `/async/fn/NAME[/REST]`, kept in the durable queue
//! ([`amphi_queue::JobQueue`]), run by executors through the same path as a synchronous call,
//! retried by the function's policy, reported to a callback, and made on a schedule.
//!
//! - [`accept`]: the `/async/fn` trigger: checks, then one durable enqueue, then 202;
//! - [`executor`]: one lane per function with work, taking jobs within the function's
//!   `async_concurrency` and running each attempt on the serving threads;
//! - [`callback`]: POSTs a finished job's result to the URL its caller gave, if allowed;
//! - [`schedule`]: cron schedules, each tick one job, across restarts;
//! - [`api`]: `/v1/jobs` and `/v1/schedules`.

pub mod accept;
pub mod api;
pub mod callback;
pub mod executor;
pub mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi_queue::JobQueue;
use tokio::sync::Notify;

use crate::platform::Platform;

/// The async side of the platform: the queue and what runs its jobs.
pub struct Jobs {
    /// The durable queue.
    pub queue: Arc<dyn JobQueue>,
    /// The executor's lanes, by function.
    lanes: Mutex<HashMap<String, Arc<executor::Lane>>>,
    /// Runtimes attempts run on (the serving threads'), taken in turn.
    runtimes: Mutex<Vec<tokio::runtime::Handle>>,
    next_runtime: std::sync::atomic::AtomicUsize,
    /// Attempts and callback deliveries running now, waited for on shutdown.
    running: executor::Running,
    /// Wakes the scheduler when schedules change.
    schedules_changed: Notify,
    callbacks: callback::Sender,
}

impl Jobs {
    /// The async side on `queue`.
    pub fn new(queue: Arc<dyn JobQueue>) -> Self {
        Self {
            queue,
            lanes: Mutex::default(),
            runtimes: Mutex::default(),
            next_runtime: std::sync::atomic::AtomicUsize::new(0),
            running: executor::Running::default(),
            schedules_changed: Notify::new(),
            callbacks: callback::Sender::default(),
        }
    }

    /// Starts the executors, the scheduler, pending callbacks and retention; attempts run on
    /// `runtimes` in turn (the coordinating runtime when empty). Call once, on the runtime.
    pub fn start(platform: &Arc<Platform>, runtimes: Vec<tokio::runtime::Handle>) {
        if let Ok(mut slot) = platform.jobs.runtimes.lock() {
            *slot = runtimes;
        }
        executor::start(platform);
        schedule::start(platform);
        callback::resume(platform);
        start_retention(platform);
    }

    /// A runtime to run one attempt on.
    fn runtime(&self) -> tokio::runtime::Handle {
        let runtimes = self.runtimes.lock().map(|r| r.clone()).unwrap_or_default();
        if runtimes.is_empty() {
            return tokio::runtime::Handle::current();
        }
        let next = self.next_runtime.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtimes[next % runtimes.len()].clone()
    }

    /// Waits up to `timeout` for the attempts and deliveries running now to end.
    pub async fn drain(&self, timeout: Duration) {
        self.running.wait_idle(timeout).await;
    }
}

/// How often finished jobs past `--job-retention` are removed.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

fn start_retention(platform: &Arc<Platform>) {
    let platform = platform.clone();
    tokio::spawn(async move {
        let mut shutdown = platform.shutdown_signal();
        loop {
            let now = amphi_contract::now_unix_us();
            let retention = platform.config.job_retention.as_micros() as u64;
            match platform.jobs.queue.purge(now.saturating_sub(retention), now).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "finished jobs past their retention removed"),
                Err(error) => tracing::warn!(%error, "removing old jobs failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETENTION_EVERY) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
    });
}
