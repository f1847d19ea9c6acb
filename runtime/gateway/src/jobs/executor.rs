//! The executors: one lane per function with jobs, taking them off the queue within the
//! function's `async_concurrency` and running each attempt through [`trigger::dispatch`], the
//! path a synchronous call takes (same headers, limits, per-call logs and record, with
//! `trigger: async`, the job and the attempt in the record).
//!
//! A lane holds the function's async slots; it claims as many due jobs as it has free slots, in
//! one queue transaction, and sleeps when none is due: until the next job's time, a wake (a new
//! job, a retry, a re-queue) or a second, whichever comes first. A lane with nothing queued ends.
//! Attempts run on the serving threads' runtimes in turn, so draining a backlog uses every core.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amphi_contract::function::FunctionConfig;
use amphi_contract::{JobRef, ProblemKind, ResponseBody, RetryConfig, RetryOn, now_unix_us};
use amphi_queue::{AttemptReport, ClaimedJob, JobRequest, JobResult, JobState, Next};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt as _;
use rand::Rng as _;
use tokio::sync::Notify;

use super::Jobs;
use crate::capacity::{Capacity, Slot};
use crate::invocation::{Invocation, Origin};
use crate::platform::Platform;
use crate::trigger::{self, Dispatch, record_path};

/// Longest a lane sleeps before it looks at the queue again unasked.
const RECHECK: Duration = Duration::from_secs(1);
/// Longest a job's attempt waits for one of the function's concurrency slots (beyond its async
/// share): past it, the attempt fails as a platform error and is retried by the policy.
const SLOT_PATIENCE: Duration = FunctionConfig::MAX_TIMEOUT;
/// Most a function's `Retry-After` may put off the next attempt.
const MAX_RETRY_AFTER: Duration = RetryConfig::MAX_BACKOFF;

/// The async slots of one function and what wakes its lane.
pub struct Lane {
    function: String,
    wake: Notify,
    capacity: Capacity,
}

/// Attempts and deliveries in progress, so shutdown can wait for them.
#[derive(Default, Clone)]
pub struct Running(Arc<RunningInner>);

#[derive(Default)]
struct RunningInner {
    count: AtomicUsize,
    idle: Notify,
}

/// One attempt or delivery in progress; counted until dropped.
pub struct RunningGuard(Arc<RunningInner>);

impl Running {
    /// Counts one more in progress.
    pub fn enter(&self) -> RunningGuard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        RunningGuard(self.0.clone())
    }

    /// Waits up to `timeout` until nothing is in progress.
    pub async fn wait_idle(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let idle = self.0.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.0.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Jobs {
    /// Wakes the lane of `function`, starting one if it has none.
    pub fn wake(&self, platform: &Arc<Platform>, function: &str) {
        let (lane, new) = {
            let Ok(mut lanes) = self.lanes.lock() else { return };
            match lanes.get(function) {
                Some(lane) => (lane.clone(), false),
                None => {
                    let lane = Arc::new(Lane {
                        function: function.to_string(),
                        wake: Notify::new(),
                        capacity: Capacity::new(1),
                    });
                    lanes.insert(function.to_string(), lane.clone());
                    (lane, true)
                }
            }
        };
        if new {
            tokio::spawn(run_lane(platform.clone(), lane));
        } else {
            lane.wake.notify_one();
        }
    }
}

/// Starts a lane for every function with queued jobs (those left from before a restart).
pub fn start(platform: &Arc<Platform>) {
    let platform = platform.clone();
    tokio::spawn(async move {
        match platform.jobs.queue.functions_with_queued_jobs().await {
            Ok(functions) => {
                for function in functions {
                    platform.jobs.wake(&platform, &function);
                }
            }
            Err(error) => tracing::error!(%error, "cannot list the functions with queued jobs"),
        }
    });
}

async fn run_lane(platform: Arc<Platform>, lane: Arc<Lane>) {
    let jobs = &platform.jobs;
    let mut shutdown = platform.shutdown_signal();
    let name = lane.function.as_str();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(route) = platform.route(name) else {
            let why = "the function was deleted before the job ran";
            if let Err(error) = jobs.queue.fail_function(name, why, now_unix_us()).await {
                tracing::warn!(%error, function = name, "cannot end the jobs of a deleted function");
            }
            end_lane(&platform, &lane).await;
            return;
        };
        lane.capacity.resize(route.function.config.async_concurrency());
        let first = tokio::select! {
            slot = lane.capacity.acquire(RECHECK) => slot,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        let Some(first) = first else { continue };
        let mut slots = vec![first];
        while let Some(slot) = lane.capacity.acquire(Duration::ZERO).await {
            slots.push(slot);
        }
        let claimed = match jobs.queue.claim(name, slots.len(), now_unix_us()).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, function = name, "cannot take jobs off the queue");
                drop(slots);
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        if claimed.is_empty() {
            drop(slots);
            let due = match jobs.queue.next_due(name).await {
                Ok(Some(due)) => due,
                Ok(None) => {
                    end_lane(&platform, &lane).await;
                    return;
                }
                Err(_) => now_unix_us() + RECHECK.as_micros() as u64,
            };
            let wait = Duration::from_micros(due.saturating_sub(now_unix_us())).min(RECHECK);
            tokio::select! {
                () = lane.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            continue;
        }
        for (job, slot) in claimed.into_iter().zip(slots) {
            let running = jobs.running.enter();
            jobs.runtime().spawn(run_attempt(platform.clone(), job, slot, running));
        }
    }
}

/// Takes the lane out of the table; if a job arrived meanwhile, a new lane is started for it
/// (its wake may have gone to this lane, which no longer listens).
async fn end_lane(platform: &Arc<Platform>, lane: &Arc<Lane>) {
    if let Ok(mut lanes) = platform.jobs.lanes.lock()
        && lanes.get(&lane.function).is_some_and(|l| Arc::ptr_eq(l, lane))
    {
        lanes.remove(&lane.function);
    }
    if platform.route(&lane.function).is_some()
        && matches!(platform.jobs.queue.next_due(&lane.function).await, Ok(Some(_)))
    {
        platform.jobs.wake(platform, &lane.function);
    }
}

async fn run_attempt(platform: Arc<Platform>, job: ClaimedJob, slot: Slot, _running: RunningGuard) {
    let report = attempt(&platform, &job).await;
    drop(slot);
    let next = report.next;
    match platform.jobs.queue.finish(report).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(job = %job.id, "an attempt ended after its job was taken back"),
        Err(error) => tracing::error!(%error, job = %job.id, "cannot record the end of an attempt"),
    }
    match next {
        Next::RetryAt(_) => platform.jobs.wake(&platform, &job.function),
        Next::Final(_) => {
            if let Some(url) = job.callback_url.clone() {
                super::callback::deliver(&platform, job.id.clone(), url).await;
            }
        }
    }
}

/// Runs one attempt of `job` and says what comes next.
async fn attempt(platform: &Arc<Platform>, job: &ClaimedJob) -> AttemptReport {
    let received = Instant::now();
    let report =
        |status: u16, outcome: &str, error: Option<String>, next: Next, result: Option<JobResult>| {
            AttemptReport {
                job_id: job.id.clone(),
                attempt: job.attempt,
                ended_us: now_unix_us(),
                status,
                outcome: outcome.to_string(),
                error,
                next,
                result,
            }
        };
    let Some(route) = platform.route(&job.function) else {
        let why = "the function was deleted before the job ran".to_string();
        return report(404, "platform_error", Some(why), Next::Final(JobState::Failed), None);
    };
    platform.logs.room_for_record().await;
    let request = &job.request;
    let origin = Origin {
        id: job.invocation_id.as_str().into(),
        job: Some(JobRef { id: job.id.clone(), attempt: job.attempt, schedule: job.schedule.clone() }),
        method: request.method.clone(),
        path: record_path(&request.path),
    };
    let invocation = Invocation::new(
        origin,
        route.function.clone(),
        route.backend.kind(),
        platform.logs.clone(),
        platform.metrics.clone(),
        platform.config.log_bytes_per_invocation,
    );
    let parts = match request_head(request) {
        Ok(parts) => parts,
        Err(why) => {
            invocation.fail(&amphi_contract::BackendError::new(ProblemKind::BadRequest, why.clone()));
            return report(400, "platform_error", Some(why), Next::Final(JobState::Failed), None);
        }
    };
    let policy = route.function.config.retry.clone();
    let call = Dispatch {
        route,
        invocation,
        parts,
        body: request.body.clone(),
        path: request.path.clone(),
        patience: SLOT_PATIENCE,
        received,
    };
    let dispatched = trigger::dispatch(platform, call).await;
    let (head, body) = dispatched.response.into_parts();
    let status = head.status.as_u16();
    let retry_after = retry_after(status, &head.headers);
    let (kept, body_bytes, body_error) = collect_bounded(body, platform.config.async_result_max).await;
    let result = JobResult {
        status,
        headers: head
            .headers
            .iter()
            .map(|(name, value)| {
                (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect(),
        truncated: (kept.len() as u64) < body_bytes,
        body: kept,
        body_bytes,
    };
    let verdict = Verdict::of(status, dispatched.failure, body_error.is_some());
    let next = verdict.next(&policy, job.attempt_in_round, retry_after, now_unix_us());
    let error = body_error.clone().or_else(|| {
        dispatched.failure.map(|kind| {
            serde_json::from_slice::<amphi_contract::Problem>(&result.body)
                .map(|p| p.detail)
                .unwrap_or_else(|_| kind.title().to_string())
        })
    });
    let error = error.or_else(|| (status >= 400).then(|| format!("the function answered {status}")));
    let outcome = outcome(dispatched.failure, body_error.is_some());
    report(status, outcome, error, next, Some(result))
}

/// The stored request's head, as a request the trigger takes.
fn request_head(request: &JobRequest) -> Result<http::request::Parts, String> {
    let mut builder = Request::builder().method(request.method.as_str()).uri(request.path.as_str());
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("stored header name: {e}"))?;
        let value = HeaderValue::from_bytes(value).map_err(|e| format!("stored header value: {e}"))?;
        builder = builder.header(name, value);
    }
    builder.body(()).map(|r| r.into_parts().0).map_err(|e| format!("the stored request is malformed: {e}"))
}

/// Reads the whole body, keeping its first `max` bytes: (kept, whole length, error).
async fn collect_bounded(mut body: ResponseBody, max: usize) -> (Bytes, u64, Option<String>) {
    let mut kept = BytesMut::new();
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    length += data.len() as u64;
                    let room = max.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
            Err(e) => return (kept.freeze(), length, Some(format!("the response body broke off: {e}"))),
        }
    }
    (kept.freeze(), length, None)
}

/// The delay a function asked for with `Retry-After` on a 429 or 503 (seconds or an HTTP date).
fn retry_after(status: u16, headers: &http::HeaderMap) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// How an attempt went, as the retry policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A response below 400.
    Succeeded,
    /// A failure of a kind a policy may retry.
    Retryable(RetryOn),
    /// A failure no policy retries (a 4xx other than 429, a request the function cannot take).
    Failed,
}

impl Verdict {
    fn of(status: u16, failure: Option<ProblemKind>, body_failed: bool) -> Self {
        match failure {
            Some(ProblemKind::DeadlineExceeded) => Self::Retryable(RetryOn::Timeout),
            Some(ProblemKind::FunctionFailed) => Self::Retryable(RetryOn::ServerError),
            Some(ProblemKind::OverCapacity | ProblemKind::BackendUnavailable | ProblemKind::Internal) => {
                Self::Retryable(RetryOn::Platform)
            }
            Some(_) => Self::Failed,
            None if body_failed => Self::Retryable(RetryOn::ServerError),
            None => match status {
                429 => Self::Retryable(RetryOn::TooManyRequests),
                500..=599 => Self::Retryable(RetryOn::ServerError),
                100..=399 => Self::Succeeded,
                _ => Self::Failed,
            },
        }
    }

    /// What follows attempt `in_round` (counted since the job was last queued by hand).
    fn next(self, policy: &RetryConfig, in_round: u32, retry_after: Option<Duration>, now_us: u64) -> Next {
        match self {
            Self::Succeeded => Next::Final(JobState::Succeeded),
            Self::Failed => Next::Final(JobState::Failed),
            Self::Retryable(kind) if !policy.on.contains(&kind) => Next::Final(JobState::Failed),
            Self::Retryable(_) if in_round >= policy.attempts => Next::Final(JobState::Dead),
            Self::Retryable(_) => {
                let delay = retry_after.unwrap_or_else(|| full_jitter(policy.backoff_ceiling(in_round)));
                Next::RetryAt(now_us.saturating_add(delay.as_micros() as u64))
            }
        }
    }
}

/// The record's outcome of an attempt: as the backend said for a failure, `function_error` for a
/// body that broke off, else `success`.
fn outcome(failure: Option<ProblemKind>, body_failed: bool) -> &'static str {
    match failure {
        Some(kind) => amphi_contract::BackendError::new(kind, "").outcome().as_str(),
        None if body_failed => "function_error",
        None => "success",
    }
}

/// A delay drawn uniformly between 0 and `ceiling` ("full jitter": retries of many jobs that
/// failed together spread out instead of coming back together).
fn full_jitter(ceiling: Duration) -> Duration {
    let micros = ceiling.as_micros() as u64;
    Duration::from_micros(if micros == 0 { 0 } else { rand::rng().random_range(0..=micros) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_status_and_the_failure() {
        assert_eq!(Verdict::of(200, None, false), Verdict::Succeeded);
        assert_eq!(Verdict::of(302, None, false), Verdict::Succeeded);
        assert_eq!(Verdict::of(404, None, false), Verdict::Failed);
        assert_eq!(Verdict::of(429, None, false), Verdict::Retryable(RetryOn::TooManyRequests));
        assert_eq!(Verdict::of(503, None, false), Verdict::Retryable(RetryOn::ServerError));
        assert_eq!(Verdict::of(200, None, true), Verdict::Retryable(RetryOn::ServerError));
        let timeout = Some(ProblemKind::DeadlineExceeded);
        assert_eq!(Verdict::of(504, timeout, false), Verdict::Retryable(RetryOn::Timeout));
        assert_eq!(outcome(timeout, false), "timeout");
        let capacity = Some(ProblemKind::OverCapacity);
        assert_eq!(Verdict::of(429, capacity, false), Verdict::Retryable(RetryOn::Platform));
        assert_eq!(outcome(Some(ProblemKind::FunctionFailed), false), "function_error");
        assert_eq!(outcome(None, true), "function_error");
        assert_eq!(outcome(Some(ProblemKind::OverCapacity), false), "platform_error");
        assert_eq!(Verdict::of(400, Some(ProblemKind::BadRequest), false), Verdict::Failed);
    }

    #[test]
    fn the_policy_decides_what_follows() {
        let policy = RetryConfig::default();
        let retry = Verdict::Retryable(RetryOn::ServerError);
        match retry.next(&policy, 1, None, 1_000) {
            Next::RetryAt(at) => assert!((1_000..=1_001_000).contains(&at), "within the first ceiling: {at}"),
            other => panic!("retried: {other:?}"),
        }
        assert_eq!(retry.next(&policy, 3, None, 0), Next::Final(JobState::Dead), "attempts used up");
        assert_eq!(
            retry.next(&policy, 1, Some(Duration::from_secs(7)), 0),
            Next::RetryAt(7_000_000),
            "the function's Retry-After"
        );
        let only_timeouts = RetryConfig { on: vec![RetryOn::Timeout], ..RetryConfig::default() };
        assert_eq!(retry.next(&only_timeouts, 1, None, 0), Next::Final(JobState::Failed));
        assert_eq!(Verdict::Succeeded.next(&policy, 1, None, 0), Next::Final(JobState::Succeeded));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(429, &headers), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(500, &headers), None, "only on 429 and 503");
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_str(&later).expect("date"));
        let delay = retry_after(503, &headers).expect("a date");
        assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120), "{delay:?}");
    }
}
