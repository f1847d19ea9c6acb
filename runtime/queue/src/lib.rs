//! Amphi's job queue: what sits between `/async/fn/…` and the executors that run the calls.
//!
//! [`JobQueue`] is the interface the gateway and its executors use; nothing outside this crate
//! knows how jobs are stored. [`embedded::EmbeddedQueue`] is the default: SQLite in the data
//! directory (`jobs.db`), one writer thread that commits what arrives together in one
//! transaction (group commit), so each 202 waits for an fsync that it shares with every other
//! enqueue of that moment. [`postgres::PgQueue`] is the networked one: the cluster's
//! PostgreSQL, shared by the executors of every gateway, with leases tied to each node's
//! heartbeat.
//!
//! Delivery is at least once: a job whose attempt was running when the server stopped (or, in
//! a cluster, whose node was gone) is queued again, and that run is its next attempt.

pub mod embedded;
mod job;
mod packed;
pub mod postgres;

pub use job::{
    Attempt, AttemptReport, CallbackState, ClaimedJob, Enqueued, Job, JobFilter, JobRequest, JobResult,
    JobState, NewJob, Next, StateCounts, StoredSchedule,
};

use amphi_contract::BoxFuture;

/// How long an `Idempotency-Key` maps to its first job.
pub const IDEMPOTENCY_WINDOW_US: u64 = 24 * 3600 * 1_000_000;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `--queue-max` jobs are queued or running.
    #[error("the queue is full: {0} jobs are waiting or running (serve --queue-max)")]
    Full(u64),
    /// The job is not in a state that allows what was asked.
    #[error("job {id} is {state}: {why}")]
    WrongState {
        /// The job.
        id: String,
        /// Its state.
        state: JobState,
        /// What cannot be done.
        why: &'static str,
    },
    /// The database failed.
    #[error("job queue database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The data directory or the shared store failed.
    #[error(transparent)]
    Store(#[from] amphi_store::StoreError),
    /// Stored data does not parse.
    #[error("the job queue holds corrupt data: {0}")]
    Corrupt(String),
    /// The transaction holding the change did not commit; nothing of it was kept.
    #[error("the change was not committed: {0}")]
    NotCommitted(String),
    /// The writer thread has stopped (the server is stopping).
    #[error("the job queue's writer has stopped")]
    Stopped,
    /// A thread could not start.
    #[error("cannot start the job queue's {what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

impl QueueError {
    /// Whether the queue's store is away (trying again later may work).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(store) if store.is_transient())
    }
}

/// A durable queue of jobs. Every method that changes a job is durable when its future resolves
/// (an enqueue is on disk, fsynced, before it returns `Ok`).
pub trait JobQueue: Send + Sync + 'static {
    /// Stores `job` (or, if its idempotency key was used for the same function within
    /// [`IDEMPOTENCY_WINDOW_US`], returns the first job's id and stores nothing). Refused with
    /// [`QueueError::Full`] when `max_unfinished` jobs are queued or running.
    fn enqueue(&self, job: NewJob, max_unfinished: u64) -> BoxFuture<'_, Result<Enqueued, QueueError>>;

    /// Takes up to `limit` queued jobs of `function` due at `now_us`, oldest due first, and
    /// starts an attempt of each (state `running`).
    fn claim(
        &self,
        function: &str,
        limit: usize,
        now_us: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedJob>, QueueError>>;

    /// When the earliest queued job of `function` is due, if it has any.
    fn next_due(&self, function: &str) -> BoxFuture<'_, Result<Option<u64>, QueueError>>;

    /// Functions with queued jobs.
    fn functions_with_queued_jobs(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;

    /// Ends an attempt: the job is queued again or over, and its result kept. A report for an
    /// attempt that is not the job's current running one is ignored (`Ok(false)`).
    fn finish(&self, report: AttemptReport) -> BoxFuture<'_, Result<bool, QueueError>>;

    /// One job.
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<Job>, QueueError>>;

    /// Jobs, newest first.
    fn list(&self, filter: JobFilter) -> BoxFuture<'_, Result<Vec<Job>, QueueError>>;

    /// A job's stored result.
    fn result(&self, id: &str) -> BoxFuture<'_, Result<Option<JobResult>, QueueError>>;

    /// Puts a dead, failed or canceled job back on the queue, due now, with a fresh count of
    /// attempts for the retry policy. `Ok(None)`: no such job.
    fn requeue(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>>;

    /// Cancels a queued job. `Ok(None)`: no such job.
    fn cancel(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>>;

    /// Every queued job of `function` ends `failed` with `why` (the function was deleted).
    fn fail_function(&self, function: &str, why: &str, now_us: u64)
    -> BoxFuture<'_, Result<u64, QueueError>>;

    /// Records how a job's callback delivery went.
    fn callback_done(&self, id: &str, callback: CallbackState) -> BoxFuture<'_, Result<(), QueueError>>;

    /// Jobs over whose callback is still pending (after a restart: to deliver again).
    fn pending_callbacks(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>>;

    /// Removes jobs that ended before `finished_before_us`, with their attempts and results, and
    /// idempotency keys past their window. Returns the jobs removed.
    fn purge(&self, finished_before_us: u64, now_us: u64) -> BoxFuture<'_, Result<u64, QueueError>>;

    /// Stores (or replaces) a schedule.
    fn put_schedule(&self, name: &str, spec: &str, now_us: u64) -> BoxFuture<'_, Result<(), QueueError>>;

    /// Every schedule, by name.
    fn schedules(&self) -> BoxFuture<'_, Result<Vec<StoredSchedule>, QueueError>>;

    /// Deletes a schedule; `Ok(false)` if there was none.
    fn delete_schedule(&self, name: &str) -> BoxFuture<'_, Result<bool, QueueError>>;

    /// Enqueues `job` for the tick `tick_us` of schedule `name`, unless that tick (or a later
    /// one) already enqueued a job: exactly one job per tick, across restarts. `Ok(false)`: the
    /// tick was already taken, or the schedule is gone or was replaced after `spec_updated_us`.
    fn fire_schedule(
        &self,
        name: &str,
        spec_updated_us: u64,
        tick_us: u64,
        job: NewJob,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;

    /// Jobs in each state now (in a cluster: as last read, within seconds).
    fn counts(&self) -> StateCounts;
}
