//! Jobs, claims and results read back from PostgreSQL rows.

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::packed::unpack_headers;
use crate::{Attempt, CallbackState, ClaimedJob, Job, JobRequest, JobResult, JobState, QueueError};

/// A stored state name as a [`JobState`].
pub fn parse_state(text: &str) -> Result<JobState, QueueError> {
    JobState::parse(text).ok_or_else(|| QueueError::Corrupt(format!("job state {text:?}")))
}

/// A job just claimed, from the claim's `RETURNING` row (id, method, path, headers, body,
/// attempts, round_from, schedule, callback_url); its attempt gets a new invocation id.
pub fn claimed(row: &Row, function: &str) -> Result<ClaimedJob, QueueError> {
    let attempts = row.get::<_, i32>(5) as u32;
    let round_from = row.get::<_, i32>(6) as u32;
    Ok(ClaimedJob {
        id: row.get(0),
        function: function.to_string(),
        request: JobRequest {
            method: row.get(1),
            path: row.get(2),
            headers: unpack_headers(row.get(3))?,
            body: Bytes::from(row.get::<_, Vec<u8>>(4)),
        },
        attempt: attempts,
        attempt_in_round: attempts.saturating_sub(round_from),
        invocation_id: uuid::Uuid::now_v7().to_string(),
        schedule: row.get(7),
        callback_url: row.get(8),
    })
}

/// The jobs `tail` selects (`WHERE …` and any order and limit), with their attempts.
pub async fn jobs(
    client: &impl GenericClient,
    tail: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Job>, QueueError> {
    let sql = format!(
        "SELECT id, function, state, method, path, created_us, not_before_us, finished_us, status, error, \
         schedule, callback, EXISTS (SELECT 1 FROM job_results r WHERE r.job_id = jobs.id) FROM jobs {tail}"
    );
    let mut jobs = Vec::new();
    for row in client.query(&sql, params).await? {
        let callback = match row.get::<_, Option<&str>>(11) {
            Some(text) => Some(
                serde_json::from_str::<CallbackState>(text)
                    .map_err(|e| QueueError::Corrupt(format!("a job's callback state: {e}")))?,
            ),
            None => None,
        };
        jobs.push(Job {
            id: row.get(0),
            function: row.get(1),
            state: parse_state(row.get(2))?,
            method: row.get(3),
            path: row.get(4),
            created_us: row.get::<_, i64>(5) as u64,
            not_before_us: row.get::<_, i64>(6) as u64,
            finished_us: row.get::<_, Option<i64>>(7).map(|us| us as u64),
            status: row.get::<_, Option<i32>>(8).map(|s| s as u16),
            error: row.get(9),
            attempts: Vec::new(),
            schedule: row.get(10),
            callback,
            has_result: row.get(12),
        });
    }
    if jobs.is_empty() {
        return Ok(jobs);
    }
    let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    let attempts = client
        .query(
            "SELECT job_id, number, invocation_id, started_us, ended_us, status, outcome, error, node FROM job_attempts \
             WHERE job_id = ANY($1) ORDER BY job_id, number",
            &[&ids],
        )
        .await?;
    for row in attempts {
        let id: &str = row.get(0);
        if let Some(job) = jobs.iter_mut().find(|job| job.id == id) {
            job.attempts.push(Attempt {
                number: row.get::<_, i32>(1) as u32,
                invocation_id: row.get(2),
                started_us: row.get::<_, i64>(3) as u64,
                ended_us: row.get::<_, Option<i64>>(4).map(|us| us as u64),
                status: row.get::<_, Option<i32>>(5).map(|s| s as u16),
                outcome: row.get(6),
                error: row.get(7),
                node: row.get(8),
            });
        }
    }
    Ok(jobs)
}

/// A stored result from its row (status, headers, body, body_bytes, truncated).
pub fn result(row: &Row) -> Result<JobResult, QueueError> {
    let headers =
        serde_json::from_str(row.get(1)).map_err(|e| QueueError::Corrupt(format!("result headers: {e}")))?;
    Ok(JobResult {
        status: row.get::<_, i32>(0) as u16,
        headers,
        body: Bytes::from(row.get::<_, Vec<u8>>(2)),
        body_bytes: row.get::<_, i64>(3) as u64,
        truncated: row.get(4),
    })
}
