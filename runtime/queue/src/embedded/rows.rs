//! Jobs, attempts and results read back from their rows.

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension as _, Row, params};

pub use crate::packed::{pack_headers, unpack_headers};
use crate::{Attempt, CallbackState, Job, JobFilter, JobResult, JobState, QueueError};

/// The columns [`job_from_row`] reads, in its order.
pub const JOB_COLUMNS: &str = "id, function, state, method, path, created_us, not_before_us, finished_us, status, \
                               error, schedule, callback, \
                               EXISTS (SELECT 1 FROM job_results r WHERE r.job_id = jobs.id)";

fn parse_state(text: &str) -> Result<JobState, QueueError> {
    JobState::parse(text).ok_or_else(|| QueueError::Corrupt(format!("job state {text:?}")))
}

/// A job from a row of [`JOB_COLUMNS`], without its attempts.
fn job_from_row(row: &Row<'_>) -> Result<Job, QueueError> {
    let state: String = row.get(2)?;
    let callback: Option<String> = row.get(11)?;
    let callback = match callback {
        Some(text) => Some(
            serde_json::from_str::<CallbackState>(&text)
                .map_err(|e| QueueError::Corrupt(format!("a job's callback state: {e}")))?,
        ),
        None => None,
    };
    Ok(Job {
        id: row.get(0)?,
        function: row.get(1)?,
        state: parse_state(&state)?,
        method: row.get(3)?,
        path: row.get(4)?,
        created_us: row.get::<_, i64>(5)? as u64,
        not_before_us: row.get::<_, i64>(6)? as u64,
        finished_us: row.get::<_, Option<i64>>(7)?.map(|us| us as u64),
        status: row.get::<_, Option<i64>>(8)?.map(|s| s as u16),
        error: row.get(9)?,
        attempts: Vec::new(),
        schedule: row.get(10)?,
        callback,
        has_result: row.get(12)?,
    })
}

fn attempts(conn: &Connection, id: &str) -> Result<Vec<Attempt>, QueueError> {
    let mut statement = conn.prepare_cached(
        "SELECT number, invocation_id, started_us, ended_us, status, outcome, error FROM job_attempts \
         WHERE job_id = ?1 ORDER BY number",
    )?;
    let attempts = statement
        .query_map([id], |row| {
            Ok(Attempt {
                number: row.get(0)?,
                invocation_id: row.get(1)?,
                started_us: row.get::<_, i64>(2)? as u64,
                ended_us: row.get::<_, Option<i64>>(3)?.map(|us| us as u64),
                status: row.get::<_, Option<i64>>(4)?.map(|s| s as u16),
                outcome: row.get(5)?,
                error: row.get(6)?,
                node: None,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(attempts)
}

/// One job with its attempts.
pub fn job(conn: &Connection, id: &str) -> Result<Option<Job>, QueueError> {
    let mut statement = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
    let mut rows = statement.query([id])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    let mut job = job_from_row(row)?;
    job.attempts = attempts(conn, id)?;
    Ok(Some(job))
}

/// Jobs matching `filter`, newest first, with their attempts.
pub fn list(conn: &Connection, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
    let mut conditions = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(function) = &filter.function {
        values.push(function.clone().into());
        conditions.push(format!("function = ?{}", values.len()));
    }
    if let Some(state) = filter.state {
        values.push(state.as_str().to_string().into());
        conditions.push(format!("state = ?{}", values.len()));
    }
    if let Some(before) = &filter.before {
        values.push(before.clone().into());
        conditions.push(format!("seq < (SELECT seq FROM jobs WHERE id = ?{})", values.len()));
    }
    let wheres =
        if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {wheres} ORDER BY seq DESC LIMIT {}", filter.limit);
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(values))?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next()? {
        jobs.push(job_from_row(row)?);
    }
    for job in &mut jobs {
        job.attempts = attempts(conn, &job.id)?;
    }
    Ok(jobs)
}

/// A job's stored result.
pub fn result(conn: &Connection, id: &str) -> Result<Option<JobResult>, QueueError> {
    let found: Option<(i64, String, Vec<u8>, i64, bool)> = conn
        .query_row(
            "SELECT status, headers, body, body_bytes, truncated FROM job_results WHERE job_id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )
        .optional()?;
    let Some((status, headers, body, body_bytes, truncated)) = found else { return Ok(None) };
    let headers =
        serde_json::from_str(&headers).map_err(|e| QueueError::Corrupt(format!("result headers: {e}")))?;
    Ok(Some(JobResult {
        status: status as u16,
        headers,
        body: Bytes::from(body),
        body_bytes: body_bytes as u64,
        truncated,
    }))
}

/// A job's state, if it exists.
pub fn state(conn: &Connection, id: &str) -> Result<Option<(JobState, u32)>, QueueError> {
    let found: Option<(String, u32)> = conn
        .query_row("SELECT state, attempts FROM jobs WHERE id = ?1", [id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    found.map(|(state, attempts)| Ok((parse_state(&state)?, attempts))).transpose()
}
