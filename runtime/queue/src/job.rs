//! What the queue holds: jobs, their attempts and results, and schedules.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its time (`not_before`) and for an executor.
    Queued,
    /// An executor is running an attempt.
    Running,
    /// The last attempt got a response below 400.
    Succeeded,
    /// The last attempt failed in a way the function's retry policy does not retry.
    Failed,
    /// Every attempt the retry policy allows failed; kept, listed and re-queueable.
    Dead,
    /// Taken off the queue before it ran.
    Canceled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [Self; 6] =
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Dead, Self::Canceled];

    /// The name in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Canceled => "canceled",
        }
    }

    /// Parses [`JobState::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job is over (nothing runs it again unless it is re-queued).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request a job replays: what the caller sent to `/async/fn/NAME[/REST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The method.
    pub method: String,
    /// The path the function sees, with the query.
    pub path: String,
    /// Header fields in the order received (names lower-case; values as bytes).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (a UUIDv7, also the `amphi-invocation-id` of the 202).
    pub id: String,
    /// The function it calls.
    pub function: String,
    /// The request it replays.
    pub request: JobRequest,
    /// When it was accepted, in µs since the Unix epoch.
    pub created_us: u64,
    /// Run no earlier than this (µs since the Unix epoch).
    pub not_before_us: u64,
    /// The caller's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Where its result is POSTed when it ends.
    pub callback_url: Option<String>,
    /// The schedule that made it.
    pub schedule: Option<String>,
}

/// How an enqueue went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored durably under this id.
    New(String),
    /// The idempotency key was seen within its window: the first job's id; nothing stored.
    Existing(String),
}

/// A job an executor took: its attempt has started.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job id.
    pub id: String,
    /// The function.
    pub function: String,
    /// The request to replay.
    pub request: JobRequest,
    /// This attempt's number (1 for the first ever).
    pub attempt: u32,
    /// Attempts made since the job was last (re-)queued by hand, this one included: what the
    /// retry policy counts.
    pub attempt_in_round: u32,
    /// This attempt's invocation id.
    pub invocation_id: String,
    /// The schedule that made the job.
    pub schedule: Option<String>,
    /// Where its result is POSTed when it ends.
    pub callback_url: Option<String>,
}

/// What an attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The job is over in this state (succeeded, failed or dead).
    Final(JobState),
    /// Run again no earlier than this (µs since the Unix epoch).
    RetryAt(u64),
}

/// The end of one attempt, as an executor reports it.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// The job.
    pub job_id: String,
    /// The attempt that ended (a report for any other attempt is ignored).
    pub attempt: u32,
    /// When it ended (µs since the Unix epoch).
    pub ended_us: u64,
    /// The status the function (or the platform, for it) answered.
    pub status: u16,
    /// How the call ended (`success`, `function_error`, `platform_error`, `timeout`).
    pub outcome: String,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// What happens next.
    pub next: Next,
    /// The response, kept as the job's result.
    pub result: Option<JobResult>,
}

/// A job's last response, as the function gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The status.
    pub status: u16,
    /// Header fields (names lower-case; values as text, invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    /// The body, up to the server's `--async-result-max`.
    #[serde(skip)]
    pub body: Bytes,
    /// The body's whole length, kept or not.
    pub body_bytes: u64,
    /// Whether the body was cut at the limit.
    pub truncated: bool,
}

/// One attempt as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number.
    pub number: u32,
    /// The invocation id of its call (its record and logs are under it).
    pub invocation_id: String,
    /// When it started (µs since the Unix epoch).
    pub started_us: u64,
    /// When it ended.
    pub ended_us: Option<u64>,
    /// The status it got.
    pub status: Option<u16>,
    /// How the call ended.
    pub outcome: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// The node whose executor ran it (in a cluster; absent on an embedded queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// How a job's callback went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackState {
    /// Where it goes.
    pub url: String,
    /// `pending` (not yet delivered; tried again after a restart too), `delivered` or `failed`.
    pub state: String,
    /// Deliveries tried.
    pub attempts: u32,
    /// The status the receiver answered last.
    pub status: Option<u16>,
    /// Why the last delivery failed.
    pub error: Option<String>,
    /// When it was delivered (µs since the Unix epoch).
    pub delivered_us: Option<u64>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// The function it calls.
    pub function: String,
    /// Where it is in its life.
    pub state: JobState,
    /// The request's method.
    pub method: String,
    /// The request's path, with the query.
    pub path: String,
    /// When it was accepted (µs since the Unix epoch).
    pub created_us: u64,
    /// It runs no earlier than this.
    pub not_before_us: u64,
    /// When it reached its final state.
    pub finished_us: Option<u64>,
    /// The status of its last attempt.
    pub status: Option<u16>,
    /// What went wrong last.
    pub error: Option<String>,
    /// Its attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// The schedule that made it.
    pub schedule: Option<String>,
    /// Its callback, when one was asked for.
    pub callback: Option<CallbackState>,
    /// Whether a result is stored.
    pub has_result: bool,
}

/// Which jobs to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this function's.
    pub function: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs older than this one (paging: the last id of the previous page).
    pub before: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// Jobs in each state right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Queued.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Succeeded (until retention removes them).
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Dead.
    pub dead: u64,
    /// Canceled.
    pub canceled: u64,
}

impl StateCounts {
    /// The count of `state`.
    pub fn of(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Dead => self.dead,
            JobState::Canceled => self.canceled,
        }
    }

    /// Mutable access to the count of `state`.
    pub fn of_mut(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Failed => &mut self.failed,
            JobState::Dead => &mut self.dead,
            JobState::Canceled => &mut self.canceled,
        }
    }

    /// Jobs not yet over: what `--queue-max` bounds.
    pub fn unfinished(&self) -> u64 {
        self.queued + self.running
    }
}

/// A stored schedule: its definition (opaque to the queue, checked by the gateway) and the last
/// tick that enqueued a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchedule {
    /// Its name.
    pub name: String,
    /// The definition, as JSON.
    pub spec: String,
    /// When it was made or last replaced (µs since the Unix epoch).
    pub updated_us: u64,
    /// The last tick that enqueued a job (µs since the Unix epoch).
    pub last_tick_us: Option<u64>,
}
