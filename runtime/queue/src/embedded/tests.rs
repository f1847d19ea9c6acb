use bytes::Bytes;

use super::EmbeddedQueue;
use crate::{AttemptReport, Enqueued, JobQueue, JobRequest, JobState, NewJob, Next, QueueError};

fn open(dir: &tempfile::TempDir, now_us: u64) -> EmbeddedQueue {
    let data = amphi_store::DataDir::open(dir.path()).expect("data dir");
    EmbeddedQueue::open(&data, now_us).expect("queue")
}

fn job(id: &str, not_before_us: u64) -> NewJob {
    NewJob {
        id: id.into(),
        function: "f".into(),
        request: JobRequest {
            method: "POST".into(),
            path: "/orders?x=1".into(),
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: Bytes::from_static(b"body"),
        },
        created_us: 1_000,
        not_before_us,
        idempotency_key: None,
        callback_url: None,
        schedule: None,
    }
}

fn report(id: &str, attempt: u32, status: u16, next: Next) -> AttemptReport {
    AttemptReport {
        job_id: id.into(),
        attempt,
        ended_us: 5_000,
        status,
        outcome: "success".into(),
        error: None,
        next,
        result: None,
    }
}

#[tokio::test]
async fn a_job_is_claimed_when_due_retried_and_ends_dead_then_requeued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir, 0);
    assert_eq!(queue.enqueue(job("a", 2_000), 10).await.expect("enqueue"), Enqueued::New("a".into()));
    assert!(queue.claim("f", 10, 1_999).await.expect("claim").is_empty(), "not due yet");
    assert_eq!(queue.next_due("f").await.expect("due"), Some(2_000));
    let claimed = queue.claim("f", 10, 2_000).await.expect("claim");
    assert_eq!((claimed.len(), claimed[0].attempt, claimed[0].attempt_in_round), (1, 1, 1));
    assert_eq!(claimed[0].request.body.as_ref(), b"body");
    assert_eq!(claimed[0].request.headers[0].1, b"text/plain");
    assert_eq!(queue.counts().running, 1);
    assert!(queue.finish(report("a", 1, 503, Next::RetryAt(3_000))).await.expect("finish"));
    assert!(
        !queue.finish(report("a", 1, 503, Next::RetryAt(3_000))).await.expect("stale"),
        "not running now"
    );
    let again = queue.claim("f", 10, 3_000).await.expect("claim");
    assert_eq!(again[0].attempt, 2);
    assert!(queue.finish(report("a", 2, 503, Next::Final(JobState::Dead))).await.expect("finish"));
    let dead = queue.get("a").await.expect("get").expect("there");
    assert_eq!((dead.state, dead.attempts.len(), dead.status), (JobState::Dead, 2, Some(503)));
    assert_eq!(queue.counts().dead, 1);
    let requeued = queue.requeue("a", 6_000).await.expect("requeue").expect("there");
    assert_eq!(requeued.state, JobState::Queued);
    let third = queue.claim("f", 10, 6_000).await.expect("claim");
    assert_eq!((third[0].attempt, third[0].attempt_in_round), (3, 1), "a fresh round of attempts");
    match queue.cancel("a", 7_000).await {
        Err(QueueError::WrongState { state: JobState::Running, .. }) => {}
        other => panic!("a running job cannot be canceled: {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_keys_and_the_queue_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir, 0);
    let keyed = |id: &str| NewJob { idempotency_key: Some("k1".into()), ..job(id, 0) };
    assert_eq!(queue.enqueue(keyed("a"), 10).await.expect("first"), Enqueued::New("a".into()));
    assert_eq!(queue.enqueue(keyed("b"), 10).await.expect("again"), Enqueued::Existing("a".into()));
    assert!(queue.get("b").await.expect("get").is_none(), "nothing stored");
    queue.enqueue(job("c", 0), 2).await.expect("room for a second");
    match queue.enqueue(job("d", 0), 2).await {
        Err(QueueError::Full(2)) => {}
        other => panic!("full: {other:?}"),
    }
    let canceled = queue.cancel("c", 1).await.expect("cancel").expect("there");
    assert_eq!(canceled.state, JobState::Canceled);
    queue.enqueue(job("d", 0), 2).await.expect("room again");
}

#[tokio::test]
async fn a_running_attempt_is_queued_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let queue = open(&dir, 0);
        queue.enqueue(job("a", 0), 10).await.expect("enqueue");
        assert_eq!(queue.claim("f", 10, 0).await.expect("claim").len(), 1);
    }
    let queue = open(&dir, 9_000);
    let job = queue.get("a").await.expect("get").expect("there");
    assert_eq!((job.state, job.not_before_us), (JobState::Queued, 9_000));
    assert!(job.attempts[0].error.as_deref().is_some_and(|e| e.contains("server stopped")));
    assert_eq!(queue.counts().queued, 1);
    assert_eq!(queue.claim("f", 10, 9_000).await.expect("claim")[0].attempt, 2, "its next attempt");
}

#[tokio::test]
async fn a_schedule_tick_enqueues_one_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir, 0);
    queue.put_schedule("nightly", "{}", 100).await.expect("put");
    let tick = |id: &str| NewJob { schedule: Some("nightly".into()), ..job(id, 0) };
    assert!(queue.fire_schedule("nightly", 100, 1_000, tick("a")).await.expect("fire"));
    assert!(
        !queue.fire_schedule("nightly", 100, 1_000, tick("b")).await.expect("again"),
        "the tick is taken"
    );
    assert!(!queue.fire_schedule("nightly", 99, 2_000, tick("c")).await.expect("stale"), "replaced since");
    assert_eq!(queue.schedules().await.expect("list")[0].last_tick_us, Some(1_000));
    assert!(queue.delete_schedule("nightly").await.expect("delete"));
    assert_eq!(queue.counts().queued, 1);
}

#[tokio::test]
async fn purge_removes_finished_jobs_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir, 0);
    queue.enqueue(job("a", 0), 10).await.expect("enqueue");
    queue.enqueue(job("b", 0), 10).await.expect("enqueue");
    queue.claim("f", 1, 0).await.expect("claim");
    queue.finish(report("a", 1, 200, Next::Final(JobState::Succeeded))).await.expect("finish");
    assert_eq!(queue.purge(6_000, 6_000).await.expect("purge"), 1);
    assert!(queue.get("a").await.expect("get").is_none());
    assert!(queue.get("b").await.expect("get").is_some());
    assert_eq!((queue.counts().succeeded, queue.counts().queued), (0, 1));
}
