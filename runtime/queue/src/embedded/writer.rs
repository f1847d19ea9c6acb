//! The queue's one writer thread: takes what has arrived, applies each change in its own
//! savepoint of one transaction, commits, and only then answers every caller (group commit).

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::oneshot;

use super::rows;
use crate::{
    AttemptReport, CallbackState, ClaimedJob, Enqueued, Job, JobRequest, JobState, NewJob, Next, QueueError,
    StateCounts,
};

/// A callback about to be delivered, as the `callback` column holds it (a [`CallbackState`]).
macro_rules! pending_callback {
    () => {
        "json_object('url', callback_url, 'state', 'pending', 'attempts', 0, 'status', NULL, 'error', NULL, \
         'delivered_us', NULL)"
    };
}

/// Most changes in one transaction.
const MAX_BATCH: usize = 4096;
/// Finished jobs removed per statement, so a large purge does not hold the writer for long.
const PURGE_CHUNK: i64 = 10_000;

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// A change for the writer, with where its answer goes.
pub enum Op {
    Enqueue { job: NewJob, max_unfinished: u64, reply: Reply<Enqueued> },
    Claim { function: String, limit: usize, now_us: u64, reply: Reply<Vec<ClaimedJob>> },
    Finish { report: AttemptReport, reply: Reply<bool> },
    Requeue { id: String, now_us: u64, reply: Reply<Option<Job>> },
    Cancel { id: String, now_us: u64, reply: Reply<Option<Job>> },
    FailFunction { function: String, why: String, now_us: u64, reply: Reply<u64> },
    CallbackDone { id: String, callback: CallbackState, reply: Reply<()> },
    Purge { finished_before_us: u64, now_us: u64, reply: Reply<u64> },
    PutSchedule { name: String, spec: String, now_us: u64, reply: Reply<()> },
    DeleteSchedule { name: String, reply: Reply<bool> },
    FireSchedule { name: String, spec_updated_us: u64, tick_us: u64, job: NewJob, reply: Reply<bool> },
}

impl Op {
    /// Whether the caller must not hear back before the change is on disk.
    fn durable(&self) -> bool {
        !matches!(
            self,
            Self::Claim { .. } | Self::Finish { .. } | Self::CallbackDone { .. } | Self::Purge { .. }
        )
    }
}

/// An answer held until the transaction commits.
type Answer = Box<dyn FnOnce(Result<(), QueueError>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, QueueError>) -> Answer {
    Box::new(move |committed| {
        let _ = reply.send(committed.and(result));
    })
}

pub struct Writer {
    pub conn: Connection,
    pub counts: Arc<Mutex<StateCounts>>,
    /// The `synchronous` setting the connection has now: changed only when a batch needs the
    /// other one (a pragma per batch was a visible part of the enqueue path's profile).
    pub synchronous_full: Option<bool>,
}

/// What a batch changes in the per-state counts, applied once it commits.
#[derive(Default)]
struct Moves(Vec<(Option<JobState>, Option<JobState>, u64)>);

impl Moves {
    fn add(&mut self, from: Option<JobState>, to: Option<JobState>, n: u64) {
        if n > 0 && from != to {
            self.0.push((from, to, n));
        }
    }

    fn apply(&self, counts: &mut StateCounts) {
        for &(from, to, n) in &self.0 {
            if let Some(from) = from {
                let count = counts.of_mut(from);
                *count = count.saturating_sub(n);
            }
            if let Some(to) = to {
                *counts.of_mut(to) += n;
            }
        }
    }
}

impl Writer {
    pub fn run(mut self, ops: Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch);
        }
    }

    fn apply_batch(&mut self, batch: Vec<Op>) {
        let durable = batch.iter().any(Op::durable);
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut moves = Moves::default();
        let mut pending = self.counts.lock().map(|c| *c).unwrap_or_default();
        let committed = (|| -> Result<(), QueueError> {
            if self.synchronous_full != Some(durable) {
                self.synchronous_full = None;
                self.conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
                self.synchronous_full = Some(durable);
            }
            let tx = self.conn.transaction()?;
            for op in batch {
                answers.push(apply(&tx, op, &mut moves, &mut pending));
            }
            tx.commit()?;
            Ok(())
        })();
        let failed = committed.as_ref().err().map(|e| e.to_string());
        if committed.is_ok() {
            if let Ok(mut counts) = self.counts.lock() {
                moves.apply(&mut counts);
            }
        } else {
            tracing::error!(error = failed.as_deref().unwrap_or(""), "a job queue transaction failed");
        }
        for answer in answers {
            let outcome = match &failed {
                None => Ok(()),
                Some(e) => Err(QueueError::NotCommitted(e.clone())),
            };
            answer(outcome);
        }
    }
}

/// Runs `change` in its own savepoint of the batch's transaction: a change that fails is undone
/// and leaves the rest of the batch. What it moves between states counts at once in `pending`
/// (so a later enqueue of the batch sees the queue as it will be) and in `moves` for the commit.
fn within_savepoint<T: Send + 'static>(
    tx: &Connection,
    reply: Reply<T>,
    (moves, pending): (&mut Moves, &mut StateCounts),
    change: impl FnOnce(&mut Moves) -> Result<T, QueueError>,
) -> Answer {
    let mut local = Moves::default();
    let result = (|| {
        // Cached statements: a savepoint per job is on the path of every 202.
        tx.prepare_cached("SAVEPOINT op")?.execute([])?;
        let result = change(&mut local);
        if result.is_err() {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
        }
        tx.prepare_cached("RELEASE op")?.execute([])?;
        result
    })();
    if result.is_ok() {
        local.apply(pending);
        moves.0.extend(local.0);
    }
    answer(reply, result)
}

/// Applies one change.
fn apply(tx: &Connection, op: Op, moves: &mut Moves, pending: &mut StateCounts) -> Answer {
    let unfinished = pending.unfinished();
    let counts = (moves, pending);
    match op {
        Op::Enqueue { job, max_unfinished, reply } => {
            within_savepoint(tx, reply, counts, |m| enqueue(tx, &job, max_unfinished, unfinished, m))
        }
        Op::Claim { function, limit, now_us, reply } => {
            within_savepoint(tx, reply, counts, |m| claim(tx, &function, limit, now_us, m))
        }
        Op::Finish { report, reply } => within_savepoint(tx, reply, counts, |m| finish(tx, &report, m)),
        Op::Requeue { id, now_us, reply } => {
            within_savepoint(tx, reply, counts, |m| requeue(tx, &id, now_us, m))
        }
        Op::Cancel { id, now_us, reply } => {
            within_savepoint(tx, reply, counts, |m| cancel(tx, &id, now_us, m))
        }
        Op::FailFunction { function, why, now_us, reply } => {
            within_savepoint(tx, reply, counts, |m| fail_function(tx, &function, &why, now_us, m))
        }
        Op::CallbackDone { id, callback, reply } => {
            within_savepoint(tx, reply, counts, |_| callback_done(tx, &id, &callback))
        }
        Op::Purge { finished_before_us, now_us, reply } => {
            within_savepoint(tx, reply, counts, |m| purge(tx, finished_before_us, now_us, m))
        }
        Op::PutSchedule { name, spec, now_us, reply } => within_savepoint(tx, reply, counts, |_| {
            tx.execute(
                "INSERT INTO schedules (name, spec, updated_us) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
                params![name, spec, now_us as i64],
            )?;
            Ok(())
        }),
        Op::DeleteSchedule { name, reply } => within_savepoint(tx, reply, counts, |_| {
            Ok(tx.execute("DELETE FROM schedules WHERE name = ?1", [name])? > 0)
        }),
        Op::FireSchedule { name, spec_updated_us, tick_us, job, reply } => {
            within_savepoint(tx, reply, counts, |m| {
                fire_schedule(tx, &name, spec_updated_us, tick_us, &job, m)
            })
        }
    }
}

fn enqueue(
    tx: &Connection,
    job: &NewJob,
    max_unfinished: u64,
    unfinished: u64,
    moves: &mut Moves,
) -> Result<Enqueued, QueueError> {
    if let Some(key) = &job.idempotency_key
        && let Some(first) = super::idempotent_job(tx, &job.function, key, job.created_us)?
    {
        return Ok(Enqueued::Existing(first));
    }
    if unfinished >= max_unfinished {
        return Err(QueueError::Full(unfinished));
    }
    insert_job(tx, job)?;
    if let Some(key) = &job.idempotency_key {
        tx.execute(
            "INSERT OR REPLACE INTO idempotency_keys (function, key, job_id, created_us) VALUES (?1, ?2, ?3, ?4)",
            params![job.function, key, job.id, job.created_us as i64],
        )?;
    }
    moves.add(None, Some(JobState::Queued), 1);
    Ok(Enqueued::New(job.id.clone()))
}

fn insert_job(tx: &Connection, job: &NewJob) -> Result<(), QueueError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO jobs (id, function, state, method, path, headers, body, created_us, not_before_us, \
         callback_url, schedule) VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    insert.execute(params![
        job.id,
        job.function,
        job.request.method,
        job.request.path,
        rows::pack_headers(&job.request.headers),
        job.request.body.as_ref(),
        job.created_us as i64,
        job.not_before_us as i64,
        job.callback_url,
        job.schedule,
    ])?;
    Ok(())
}

fn claim(
    tx: &Connection,
    function: &str,
    limit: usize,
    now_us: u64,
    moves: &mut Moves,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut due = tx.prepare_cached(
        "SELECT id, method, path, headers, body, attempts, round_from, schedule, callback_url FROM jobs \
         WHERE function = ?1 AND state = 'queued' AND not_before_us <= ?2 ORDER BY not_before_us LIMIT ?3",
    )?;
    let mut found = Vec::new();
    let mut rows = due.query(params![function, now_us as i64, limit as i64])?;
    while let Some(row) = rows.next()? {
        let headers: Vec<u8> = row.get(3)?;
        let body: Vec<u8> = row.get(4)?;
        let attempts: u32 = row.get(5)?;
        let round_from: u32 = row.get(6)?;
        found.push(ClaimedJob {
            id: row.get(0)?,
            function: function.to_string(),
            request: JobRequest {
                method: row.get(1)?,
                path: row.get(2)?,
                headers: rows::unpack_headers(&headers)?,
                body: body.into(),
            },
            attempt: attempts + 1,
            attempt_in_round: attempts + 1 - round_from,
            invocation_id: uuid::Uuid::now_v7().to_string(),
            schedule: row.get(7)?,
            callback_url: row.get(8)?,
        });
    }
    drop(rows);
    let mut start = tx.prepare_cached("UPDATE jobs SET state = 'running', attempts = ?2 WHERE id = ?1")?;
    let mut attempt = tx.prepare_cached(
        "INSERT OR REPLACE INTO job_attempts (job_id, number, invocation_id, started_us) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for job in &found {
        start.execute(params![job.id, job.attempt])?;
        attempt.execute(params![job.id, job.attempt, job.invocation_id, now_us as i64])?;
    }
    moves.add(Some(JobState::Queued), Some(JobState::Running), found.len() as u64);
    Ok(found)
}

fn finish(tx: &Connection, report: &AttemptReport, moves: &mut Moves) -> Result<bool, QueueError> {
    match rows::state(tx, &report.job_id)? {
        Some((JobState::Running, attempts)) if attempts == report.attempt => {}
        _ => return Ok(false),
    }
    tx.prepare_cached(
        "UPDATE job_attempts SET ended_us = ?3, status = ?4, outcome = ?5, error = ?6 \
         WHERE job_id = ?1 AND number = ?2",
    )?
    .execute(params![
        report.job_id,
        report.attempt,
        report.ended_us as i64,
        report.status,
        report.outcome,
        report.error
    ])?;
    let to = match report.next {
        Next::Final(state) => {
            tx.prepare_cached(concat!(
                "UPDATE jobs SET state = ?2, finished_us = ?3, status = ?4, error = ?5, \
                 callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
                 callback = CASE WHEN callback_url IS NULL THEN NULL ELSE ",
                pending_callback!(),
                " END WHERE id = ?1"
            ))?
            .execute(params![
                report.job_id,
                state.as_str(),
                report.ended_us as i64,
                report.status,
                report.error
            ])?;
            state
        }
        Next::RetryAt(at_us) => {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', not_before_us = ?2, status = ?3, error = ?4 WHERE id = ?1",
            )?
            .execute(params![report.job_id, at_us as i64, report.status, report.error])?;
            JobState::Queued
        }
    };
    if let Some(result) = &report.result {
        let headers =
            serde_json::to_string(&result.headers).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO job_results (job_id, status, headers, body, body_bytes, truncated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            report.job_id,
            result.status,
            headers,
            result.body.as_ref(),
            result.body_bytes as i64,
            result.truncated
        ])?;
    }
    moves.add(Some(JobState::Running), Some(to), 1);
    Ok(true)
}

fn requeue(tx: &Connection, id: &str, now_us: u64, moves: &mut Moves) -> Result<Option<Job>, QueueError> {
    let Some((state, _)) = rows::state(tx, id)? else { return Ok(None) };
    if !matches!(state, JobState::Dead | JobState::Failed | JobState::Canceled) {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state,
            why: "only a dead, failed or canceled job can be queued again",
        });
    }
    tx.execute(
        "UPDATE jobs SET state = 'queued', not_before_us = ?2, finished_us = NULL, round_from = attempts, \
         callback_state = NULL WHERE id = ?1",
        params![id, now_us as i64],
    )?;
    moves.add(Some(state), Some(JobState::Queued), 1);
    rows::job(tx, id)
}

fn cancel(tx: &Connection, id: &str, now_us: u64, moves: &mut Moves) -> Result<Option<Job>, QueueError> {
    let Some((state, _)) = rows::state(tx, id)? else { return Ok(None) };
    if state != JobState::Queued {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state,
            why: "only a queued job can be canceled",
        });
    }
    tx.execute(
        "UPDATE jobs SET state = 'canceled', finished_us = ?2, error = 'canceled' WHERE id = ?1",
        params![id, now_us as i64],
    )?;
    moves.add(Some(JobState::Queued), Some(JobState::Canceled), 1);
    rows::job(tx, id)
}

fn fail_function(
    tx: &Connection,
    function: &str,
    why: &str,
    now_us: u64,
    moves: &mut Moves,
) -> Result<u64, QueueError> {
    let failed = tx.execute(
        concat!(
            "UPDATE jobs SET state = 'failed', finished_us = ?2, error = ?3, \
             callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
             callback = CASE WHEN callback_url IS NULL THEN NULL ELSE ",
            pending_callback!(),
            " END WHERE function = ?1 AND state = 'queued'"
        ),
        params![function, now_us as i64, why],
    )? as u64;
    moves.add(Some(JobState::Queued), Some(JobState::Failed), failed);
    Ok(failed)
}

fn callback_done(tx: &Connection, id: &str, callback: &CallbackState) -> Result<(), QueueError> {
    let text = serde_json::to_string(callback).map_err(|e| QueueError::Corrupt(e.to_string()))?;
    tx.execute(
        "UPDATE jobs SET callback = ?2, callback_state = ?3 WHERE id = ?1",
        params![id, text, callback.state],
    )?;
    Ok(())
}

fn purge(
    tx: &Connection,
    finished_before_us: u64,
    now_us: u64,
    moves: &mut Moves,
) -> Result<u64, QueueError> {
    let mut removed = 0;
    loop {
        let ids: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT id, state FROM jobs WHERE finished_us IS NOT NULL AND finished_us < ?1 \
                 AND (callback_state IS NULL OR callback_state != 'pending') LIMIT ?2",
            )?
            .query_map(params![finished_before_us as i64, PURGE_CHUNK], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            break;
        }
        for (id, state) in &ids {
            tx.prepare_cached("DELETE FROM job_attempts WHERE job_id = ?1")?.execute([id])?;
            tx.prepare_cached("DELETE FROM job_results WHERE job_id = ?1")?.execute([id])?;
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([id])?;
            if let Some(state) = JobState::parse(state) {
                moves.add(Some(state), None, 1);
            }
        }
        removed += ids.len() as u64;
    }
    let window_start = now_us.saturating_sub(crate::IDEMPOTENCY_WINDOW_US);
    tx.execute("DELETE FROM idempotency_keys WHERE created_us < ?1", params![window_start as i64])?;
    Ok(removed)
}

fn fire_schedule(
    tx: &Connection,
    name: &str,
    spec_updated_us: u64,
    tick_us: u64,
    job: &NewJob,
    moves: &mut Moves,
) -> Result<bool, QueueError> {
    let found: Option<(i64, Option<i64>)> = tx
        .query_row("SELECT updated_us, last_tick_us FROM schedules WHERE name = ?1", [name], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((updated_us, last_tick)) = found else { return Ok(false) };
    if updated_us as u64 != spec_updated_us || last_tick.is_some_and(|last| last as u64 >= tick_us) {
        return Ok(false);
    }
    tx.execute("UPDATE schedules SET last_tick_us = ?2 WHERE name = ?1", params![name, tick_us as i64])?;
    insert_job(tx, job)?;
    moves.add(None, Some(JobState::Queued), 1);
    Ok(true)
}
