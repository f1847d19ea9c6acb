//! The embedded queue: `jobs.db` in the data directory, SQLite in WAL mode.
//!
//! Every change goes through one writer thread ([`writer`]), which takes whatever has arrived,
//! applies it in one transaction and commits: enqueues that arrive together share one fsync
//! (group commit). Transactions holding an enqueue, a re-queue, a cancel or a schedule change
//! are committed with `synchronous=FULL` (on disk before the caller hears back); claims and
//! finished attempts with `NORMAL` (in the WAL, safe from a killed process, made durable by the
//! next FULL commit; a power cut can only make a job run again). Reads use their own connection,
//! off the async threads.

mod rows;
mod schema;
mod writer;

use std::sync::{Arc, Mutex};

use amphi_contract::BoxFuture;
use amphi_store::DataDir;
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::oneshot;

use crate::{
    AttemptReport, CallbackState, ClaimedJob, Enqueued, Job, JobFilter, JobQueue, JobResult, JobState,
    NewJob, QueueError, StateCounts, StoredSchedule,
};
use writer::Op;

/// The queue in `jobs.db`.
pub struct EmbeddedQueue {
    ops: std::sync::mpsc::Sender<Op>,
    reader: Arc<Mutex<Connection>>,
    counts: Arc<Mutex<StateCounts>>,
}

impl EmbeddedQueue {
    /// Opens (creating if needed) `jobs.db` in `data`. Attempts that were running when the
    /// server last stopped end there, and their jobs are queued again, due now.
    pub fn open(data: &DataDir, now_us: u64) -> Result<Self, QueueError> {
        let path = data.private_database("jobs.db")?;
        let conn = Connection::open(&path)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")?;
        conn.execute_batch(schema::TABLES)?;
        recover(&conn, now_us)?;
        let counts = Arc::new(Mutex::new(count_states(&conn)?));
        let reader = Connection::open(&path)?;
        reader.execute_batch("PRAGMA query_only=ON; PRAGMA busy_timeout=5000;")?;
        let (ops, receiver) = std::sync::mpsc::channel();
        let writer = writer::Writer { conn, counts: counts.clone(), synchronous_full: None };
        // The thread ends when the queue (the channel's only sender) is dropped.
        std::thread::Builder::new()
            .name("amphi-jobs-write".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| QueueError::Thread { what: "writer", source })?;
        Ok(Self { ops, reader: Arc::new(Mutex::new(reader)), counts })
    }

    /// Sends `op` (made with the reply channel) to the writer and waits for its answer.
    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Op,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.ops.send(op(reply)).map_err(|_| QueueError::Stopped)?;
        answer.await.map_err(|_| QueueError::Stopped)?
    }

    /// Runs `read` on the reader connection off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| QueueError::Stopped)?;
            read(&conn)
        })
        .await
        .map_err(|_| QueueError::Stopped)?
    }
}

/// Ends the attempts a stopped server left running and queues their jobs again.
fn recover(conn: &Connection, now_us: u64) -> Result<(), QueueError> {
    conn.execute(
        "UPDATE job_attempts SET ended_us = ?1, outcome = 'platform_error', \
         error = 'the server stopped during this attempt; the job was queued again' \
         WHERE ended_us IS NULL",
        params![now_us as i64],
    )?;
    let requeued = conn.execute(
        "UPDATE jobs SET state = 'queued', not_before_us = ?1 WHERE state = 'running'",
        params![now_us as i64],
    )?;
    if requeued > 0 {
        tracing::warn!(requeued, "jobs that were running when the server stopped are queued again");
    }
    Ok(())
}

fn count_states(conn: &Connection) -> Result<StateCounts, QueueError> {
    let mut counts = StateCounts::default();
    let mut statement = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let state: String = row.get(0)?;
        let state =
            JobState::parse(&state).ok_or_else(|| QueueError::Corrupt(format!("job state {state:?}")))?;
        *counts.of_mut(state) = row.get::<_, i64>(1)? as u64;
    }
    Ok(counts)
}

impl JobQueue for EmbeddedQueue {
    fn enqueue(&self, job: NewJob, max_unfinished: u64) -> BoxFuture<'_, Result<Enqueued, QueueError>> {
        Box::pin(self.write(move |reply| Op::Enqueue { job, max_unfinished, reply }))
    }

    fn claim(
        &self,
        function: &str,
        limit: usize,
        now_us: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedJob>, QueueError>> {
        let function = function.to_string();
        Box::pin(self.write(move |reply| Op::Claim { function, limit, now_us, reply }))
    }

    fn next_due(&self, function: &str) -> BoxFuture<'_, Result<Option<u64>, QueueError>> {
        let function = function.to_string();
        Box::pin(self.read(move |conn| {
            let due: Option<i64> = conn.query_row(
                "SELECT MIN(not_before_us) FROM jobs WHERE function = ?1 AND state = 'queued'",
                [function],
                |row| row.get(0),
            )?;
            Ok(due.map(|us| us as u64))
        }))
    }

    fn functions_with_queued_jobs(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(self.read(|conn| {
            let mut statement = conn.prepare("SELECT DISTINCT function FROM jobs WHERE state = 'queued'")?;
            let names = statement.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(names)
        }))
    }

    fn finish(&self, report: AttemptReport) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(self.write(move |reply| Op::Finish { report, reply }))
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| rows::job(conn, &id)))
    }

    fn list(&self, filter: JobFilter) -> BoxFuture<'_, Result<Vec<Job>, QueueError>> {
        Box::pin(self.read(move |conn| rows::list(conn, &filter)))
    }

    fn result(&self, id: &str) -> BoxFuture<'_, Result<Option<JobResult>, QueueError>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| rows::result(conn, &id)))
    }

    fn requeue(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        Box::pin(self.write(move |reply| Op::Requeue { id, now_us, reply }))
    }

    fn cancel(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        Box::pin(self.write(move |reply| Op::Cancel { id, now_us, reply }))
    }

    fn fail_function(
        &self,
        function: &str,
        why: &str,
        now_us: u64,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        let (function, why) = (function.to_string(), why.to_string());
        Box::pin(self.write(move |reply| Op::FailFunction { function, why, now_us, reply }))
    }

    fn callback_done(&self, id: &str, callback: CallbackState) -> BoxFuture<'_, Result<(), QueueError>> {
        let id = id.to_string();
        Box::pin(self.write(move |reply| Op::CallbackDone { id, callback, reply }))
    }

    fn pending_callbacks(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(self.read(|conn| {
            let mut statement = conn.prepare("SELECT id FROM jobs WHERE callback_state = 'pending'")?;
            let ids = statement.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        }))
    }

    fn purge(&self, finished_before_us: u64, now_us: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.write(move |reply| Op::Purge { finished_before_us, now_us, reply }))
    }

    fn put_schedule(&self, name: &str, spec: &str, now_us: u64) -> BoxFuture<'_, Result<(), QueueError>> {
        let (name, spec) = (name.to_string(), spec.to_string());
        Box::pin(self.write(move |reply| Op::PutSchedule { name, spec, now_us, reply }))
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<StoredSchedule>, QueueError>> {
        Box::pin(self.read(|conn| {
            let mut statement =
                conn.prepare("SELECT name, spec, updated_us, last_tick_us FROM schedules ORDER BY name")?;
            let schedules = statement
                .query_map([], |row| {
                    Ok(StoredSchedule {
                        name: row.get(0)?,
                        spec: row.get(1)?,
                        updated_us: row.get::<_, i64>(2)? as u64,
                        last_tick_us: row.get::<_, Option<i64>>(3)?.map(|us| us as u64),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(schedules)
        }))
    }

    fn delete_schedule(&self, name: &str) -> BoxFuture<'_, Result<bool, QueueError>> {
        let name = name.to_string();
        Box::pin(self.write(move |reply| Op::DeleteSchedule { name, reply }))
    }

    fn fire_schedule(
        &self,
        name: &str,
        spec_updated_us: u64,
        tick_us: u64,
        job: NewJob,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        let name = name.to_string();
        Box::pin(self.write(move |reply| Op::FireSchedule { name, spec_updated_us, tick_us, job, reply }))
    }

    fn counts(&self) -> StateCounts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}

/// The stored id of the idempotency key of `function`, if used within its window.
fn idempotent_job(
    conn: &Connection,
    function: &str,
    key: &str,
    now_us: u64,
) -> Result<Option<String>, QueueError> {
    let found: Option<(String, i64)> = conn
        .query_row(
            "SELECT job_id, created_us FROM idempotency_keys WHERE function = ?1 AND key = ?2",
            params![function, key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(found.and_then(|(id, created)| {
        ((created as u64).saturating_add(crate::IDEMPOTENCY_WINDOW_US) > now_us).then_some(id)
    }))
}

#[cfg(test)]
mod tests;
