//! The networked queue: jobs in the cluster's PostgreSQL (`amphi serve --store`), shared by the
//! executors of every gateway.
//!
//! Each change is one transaction, committed before its future resolves (PostgreSQL's default
//! `synchronous_commit`: on disk), so a 202 means the job is stored. Executors of every node
//! claim due jobs with `FOR UPDATE SKIP LOCKED`: two nodes never take the same job and neither
//! waits on the other's rows. A claimed job names the node that holds it, and that node's
//! heartbeat in the cluster's list of nodes is the lease on all its jobs: when a node has not
//! been seen for [`GONE_AFTER`], any other node ends its running attempts and queues their jobs
//! again ([`RELEASE_EVERY`]), and a restarted node does the same for its own at once. A report
//! from an attempt whose lease was lost is ignored, like any report for an attempt that is not
//! the job's current one. A schedule's tick is taken by a conditional update in the transaction
//! that stores its job, so one node wins each tick. New, re-queued and released jobs are
//! announced on [`changes::JOBS`], so an idle node's executor starts at once; a schedule put or
//! deleted on [`changes::SCHEDULES`], so every node's scheduler knows it (any may fire a tick).
//!
//! The per-state counts behind `--queue-max` and the metrics are the whole cluster's, read every
//! [`COUNT_EVERY`] and moved by this node's own changes in between.

mod rows;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi_contract::BoxFuture;
use amphi_store::StoreError;
use amphi_store::postgres::PgStore;
use amphi_store::postgres::changes::{self, notify};
use amphi_store::postgres::nodes::GONE_AFTER;
use deadpool_postgres::Object;

use crate::packed::pack_headers;
use crate::{
    AttemptReport, CallbackState, ClaimedJob, Enqueued, Job, JobFilter, JobQueue, JobResult, JobState,
    NewJob, Next, QueueError, StateCounts, StoredSchedule,
};

/// How often each node looks for jobs held by gone nodes.
pub const RELEASE_EVERY: Duration = Duration::from_secs(2);
/// How often the per-state counts are read from the store.
pub const COUNT_EVERY: Duration = Duration::from_secs(2);
/// Finished jobs removed per statement.
const PURGE_CHUNK: i64 = 10_000;

/// A job's callback about to be delivered, as the `callback` column holds it (a [`CallbackState`]).
const PENDING_CALLBACK: &str = "CASE WHEN callback_url IS NULL THEN NULL ELSE json_build_object('url', \
     callback_url, 'state', 'pending', 'attempts', 0, 'status', NULL, 'error', NULL, 'delivered_us', NULL)::text END";

/// Running jobs whose node is neither `$2` nor alive (seen after `$3`, in ms).
const HELD_BY_GONE: &str = "node IS DISTINCT FROM $2 AND NOT EXISTS \
     (SELECT 1 FROM nodes n WHERE n.id = jobs.node AND n.last_seen_ms > $3)";
/// Running jobs held by node `$2` (`$3` unused).
const HELD_BY_ME: &str = "node = $2 AND $3::BIGINT IS NOT NULL";

/// The queue in the cluster's PostgreSQL.
pub struct PgQueue {
    store: Arc<PgStore>,
    node: String,
    counts: Arc<Mutex<StateCounts>>,
}

impl PgQueue {
    /// The queue in `store`, as node `node` (its stable id) uses it. The attempts this node was
    /// running when it last stopped end there, and their jobs are queued again, due now. Starts
    /// the release of gone nodes' jobs and the reading of the counts, on the store's runtime.
    /// Blocking.
    pub fn open(store: Arc<PgStore>, node: String, now_us: u64) -> Result<Self, QueueError> {
        let counts = Arc::new(Mutex::new(StateCounts::default()));
        let queue = Self { store, node, counts };
        let (store, node) = (queue.store.clone(), queue.node.clone());
        let released = store.with_client(move |client| async move {
            release(client, HELD_BY_ME, &node, now_us)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })?;
        if released > 0 {
            tracing::warn!(released, "jobs this node was running when it stopped are queued again");
        }
        let counted = queue.store.clone();
        *queue.counts.lock().map_err(|_| QueueError::Stopped)? =
            counted.with_client(|client| async move { count_states(&client).await })?;
        queue.start_background();
        Ok(queue)
    }

    /// Releases gone nodes' jobs and reads the counts, every few seconds, for as long as the
    /// store's runtime runs.
    fn start_background(&self) {
        let (store, node, counts) = (self.store.clone(), self.node.clone(), Arc::downgrade(&self.counts));
        self.store.runtime().spawn(async move {
            let mut every = tokio::time::interval(RELEASE_EVERY.min(COUNT_EVERY));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(counts) = counts.upgrade() else { return };
                let node = node.clone();
                let now = amphi_contract::now_unix_us();
                match store
                    .run(move |client| async move { release(client, HELD_BY_GONE, &node, now).await })
                    .await
                {
                    Ok(0) => {}
                    Ok(released) => tracing::warn!(released, "jobs of gone nodes are queued again"),
                    Err(error) => tracing::debug!(%error, "cannot look for jobs of gone nodes"),
                }
                if let Ok(fresh) = store.run(|client| async move { count_states(&client).await }).await
                    && let Ok(mut counts) = counts.lock()
                {
                    *counts = fresh;
                }
            }
        });
    }

    /// Applies a move between states to the cached counts.
    fn moved(&self, from: Option<JobState>, to: Option<JobState>, n: u64) {
        if n == 0 || from == to {
            return;
        }
        if let Ok(mut counts) = self.counts.lock() {
            if let Some(from) = from {
                let count = counts.of_mut(from);
                *count = count.saturating_sub(n);
            }
            if let Some(to) = to {
                *counts.of_mut(to) += n;
            }
        }
    }

    /// Runs `work` with a connection of the store's pool.
    fn run<'a, T, F>(
        &'a self,
        work: impl FnOnce(Object) -> F + Send + 'static,
    ) -> BoxFuture<'a, Result<T, QueueError>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, QueueError>> + Send + 'static,
    {
        Box::pin(self.store.run(work))
    }
}

impl From<tokio_postgres::Error> for QueueError {
    fn from(error: tokio_postgres::Error) -> Self {
        QueueError::Store(StoreError::from(error))
    }
}

/// Ends the running attempts held by the nodes `held` selects (with `$2` = `node`) and queues
/// their jobs again, due at `now_us`, announcing them; returns how many.
async fn release(mut client: Object, held: &str, node: &str, now_us: u64) -> Result<u64, QueueError> {
    let alive_after_ms = (now_us / 1000).saturating_sub(GONE_AFTER.as_millis() as u64) as i64;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "WITH released AS (
                     UPDATE jobs SET state = 'queued', not_before_us = $1 WHERE state = 'running' AND {held}
                     RETURNING id, attempts, function, node
                 ), ended AS (
                     UPDATE job_attempts a SET ended_us = $1, outcome = 'platform_error',
                         error = 'the node running this attempt stopped or was gone for ' || $4::TEXT ||
                                 '; the job was queued again'
                     FROM released r WHERE a.job_id = r.id AND a.number = r.attempts AND a.ended_us IS NULL
                 )
                 SELECT function, COUNT(*) FROM released GROUP BY function"
            ),
            &[&(now_us as i64), &node, &alive_after_ms, &format!("{} s", GONE_AFTER.as_secs())],
        )
        .await?;
    let mut released = 0;
    for row in &rows {
        notify(&tx, changes::JOBS, row.get::<_, &str>(0)).await?;
        released += row.get::<_, i64>(1) as u64;
    }
    tx.commit().await?;
    Ok(released)
}

async fn count_states(client: &Object) -> Result<StateCounts, StoreError> {
    let mut counts = StateCounts::default();
    for row in client.query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[]).await? {
        if let Some(state) = JobState::parse(row.get(0)) {
            *counts.of_mut(state) = row.get::<_, i64>(1) as u64;
        }
    }
    Ok(counts)
}

/// Stores `job` as queued, in `tx`, and announces it.
async fn insert_job(tx: &deadpool_postgres::Transaction<'_>, job: &NewJob) -> Result<(), QueueError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO jobs (id, function, state, method, path, headers, body, created_us, not_before_us, \
             callback_url, schedule) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &job.id,
            &job.function,
            &job.request.method,
            &job.request.path,
            &pack_headers(&job.request.headers),
            &job.request.body.as_ref(),
            &(job.created_us as i64),
            &(job.not_before_us as i64),
            &job.callback_url,
            &job.schedule,
        ],
    )
    .await?;
    notify(tx, changes::JOBS, &job.function).await?;
    Ok(())
}

/// The state of job `id`, locked for the rest of `tx`.
async fn lock_state(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<Option<JobState>, QueueError> {
    let Some(row) = tx.query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await? else {
        return Ok(None);
    };
    rows::parse_state(row.get(0)).map(Some)
}

impl JobQueue for PgQueue {
    fn enqueue(&self, job: NewJob, max_unfinished: u64) -> BoxFuture<'_, Result<Enqueued, QueueError>> {
        let unfinished = self.counts().unfinished();
        Box::pin(async move {
            let enqueued = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    if let Some(key) = &job.idempotency_key {
                        // Taken when new or past its window; otherwise it names the first job.
                        let window_start = job.created_us.saturating_sub(crate::IDEMPOTENCY_WINDOW_US) as i64;
                        let taken = tx
                            .query_opt(
                                "INSERT INTO idempotency_keys (function, key, job_id, created_us) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT (function, key) DO UPDATE \
                                 SET job_id = excluded.job_id, created_us = excluded.created_us \
                                 WHERE idempotency_keys.created_us <= $5 RETURNING job_id",
                                &[&job.function, key, &job.id, &(job.created_us as i64), &window_start],
                            )
                            .await?;
                        if taken.is_none() {
                            let first = tx
                                .query_one(
                                    "SELECT job_id FROM idempotency_keys WHERE function = $1 AND key = $2",
                                    &[&job.function, key],
                                )
                                .await?;
                            return Ok(Enqueued::Existing(first.get(0)));
                        }
                    }
                    if unfinished >= max_unfinished {
                        return Err(QueueError::Full(unfinished));
                    }
                    insert_job(&tx, &job).await?;
                    tx.commit().await?;
                    Ok(Enqueued::New(job.id))
                })
                .await?;
            if matches!(enqueued, Enqueued::New(_)) {
                self.moved(None, Some(JobState::Queued), 1);
            }
            Ok(enqueued)
        })
    }

    fn claim(
        &self,
        function: &str,
        limit: usize,
        now_us: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedJob>, QueueError>> {
        let (function, node) = (function.to_string(), self.node.clone());
        Box::pin(async move {
            let claimed = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    let take = tx
                        .prepare_cached(
                            "WITH due AS (
                                 SELECT id FROM jobs WHERE function = $1 AND state = 'queued' AND not_before_us <= $2
                                 ORDER BY not_before_us LIMIT $3 FOR UPDATE SKIP LOCKED
                             )
                             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, node = $4 FROM due
                             WHERE j.id = due.id
                             RETURNING j.id, j.method, j.path, j.headers, j.body, j.attempts, j.round_from, \
                                       j.schedule, j.callback_url",
                        )
                        .await?;
                    let taken = tx.query(&take, &[&function, &(now_us as i64), &(limit as i64), &node]).await?;
                    if taken.is_empty() {
                        return Ok(Vec::new());
                    }
                    let claimed =
                        taken.iter().map(|row| rows::claimed(row, &function)).collect::<Result<Vec<_>, _>>()?;
                    let ids: Vec<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
                    let numbers: Vec<i32> = claimed.iter().map(|job| job.attempt as i32).collect();
                    let invocations: Vec<&str> = claimed.iter().map(|job| job.invocation_id.as_str()).collect();
                    let start = tx
                        .prepare_cached(
                            "INSERT INTO job_attempts (job_id, number, invocation_id, started_us, node)
                             SELECT j, n, i, $4, $5 FROM unnest($1::TEXT[], $2::INTEGER[], $3::TEXT[]) AS u(j, n, i)
                             ON CONFLICT (job_id, number) DO UPDATE SET invocation_id = excluded.invocation_id,
                                 started_us = excluded.started_us, node = excluded.node, ended_us = NULL,
                                 status = NULL, outcome = NULL, error = NULL",
                        )
                        .await?;
                    tx.execute(&start, &[&ids, &numbers, &invocations, &(now_us as i64), &node]).await?;
                    tx.commit().await?;
                    Ok(claimed)
                })
                .await?;
            self.moved(Some(JobState::Queued), Some(JobState::Running), claimed.len() as u64);
            Ok(claimed)
        })
    }

    fn next_due(&self, function: &str) -> BoxFuture<'_, Result<Option<u64>, QueueError>> {
        let function = function.to_string();
        self.run(move |client| async move {
            let row = client
                .query_one(
                    "SELECT MIN(not_before_us) FROM jobs WHERE function = $1 AND state = 'queued'",
                    &[&function],
                )
                .await?;
            Ok(row.get::<_, Option<i64>>(0).map(|us| us as u64))
        })
    }

    fn functions_with_queued_jobs(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        self.run(|client| async move {
            let rows = client.query("SELECT DISTINCT function FROM jobs WHERE state = 'queued'", &[]).await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn finish(&self, report: AttemptReport) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            let to = match report.next {
                Next::Final(state) => state,
                Next::RetryAt(_) => JobState::Queued,
            };
            let finished = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    let (id, attempt) = (&report.job_id, report.attempt as i32);
                    let status = i32::from(report.status);
                    let ended = report.ended_us as i64;
                    let moved = match report.next {
                        Next::Final(state) => {
                            tx.execute(
                                &format!(
                                    "UPDATE jobs SET state = $3, finished_us = $4, status = $5, error = $6, \
                                     callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
                                     callback = {PENDING_CALLBACK} \
                                     WHERE id = $1 AND state = 'running' AND attempts = $2"
                                ),
                                &[id, &attempt, &state.as_str(), &ended, &status, &report.error],
                            )
                            .await?
                        }
                        Next::RetryAt(at_us) => {
                            tx.execute(
                                "UPDATE jobs SET state = 'queued', not_before_us = $3, status = $4, error = $5 \
                                 WHERE id = $1 AND state = 'running' AND attempts = $2",
                                &[id, &attempt, &(at_us as i64), &status, &report.error],
                            )
                            .await?
                        }
                    };
                    if moved == 0 {
                        return Ok(false);
                    }
                    tx.execute(
                        "UPDATE job_attempts SET ended_us = $3, status = $4, outcome = $5, error = $6 \
                         WHERE job_id = $1 AND number = $2",
                        &[id, &attempt, &ended, &status, &report.outcome, &report.error],
                    )
                    .await?;
                    if let Some(result) = &report.result {
                        let headers = serde_json::to_string(&result.headers)
                            .map_err(|e| QueueError::Corrupt(e.to_string()))?;
                        tx.execute(
                            "INSERT INTO job_results (job_id, status, headers, body, body_bytes, truncated) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO UPDATE SET \
                             status = excluded.status, headers = excluded.headers, body = excluded.body, \
                             body_bytes = excluded.body_bytes, truncated = excluded.truncated",
                            &[
                                id,
                                &i32::from(result.status),
                                &headers,
                                &result.body.as_ref(),
                                &(result.body_bytes as i64),
                                &result.truncated,
                            ],
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                })
                .await?;
            if finished {
                self.moved(Some(JobState::Running), Some(to), 1);
            }
            Ok(finished)
        })
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        self.run(move |client| async move {
            let mut jobs = rows::jobs(&client, "WHERE id = $1", &[&id]).await?;
            Ok(jobs.pop())
        })
    }

    fn list(&self, filter: JobFilter) -> BoxFuture<'_, Result<Vec<Job>, QueueError>> {
        self.run(move |client| async move {
            let mut conditions = Vec::new();
            let mut values: Vec<String> = Vec::new();
            if let Some(function) = filter.function {
                values.push(function);
                conditions.push(format!("function = ${}", values.len()));
            }
            if let Some(state) = filter.state {
                values.push(state.as_str().to_string());
                conditions.push(format!("state = ${}", values.len()));
            }
            if let Some(before) = filter.before {
                values.push(before);
                conditions.push(format!("seq < (SELECT seq FROM jobs WHERE id = ${})", values.len()));
            }
            let wheres = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let tail = format!("{wheres} ORDER BY seq DESC LIMIT {}", filter.limit);
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            rows::jobs(&client, &tail, &params).await
        })
    }

    fn result(&self, id: &str) -> BoxFuture<'_, Result<Option<JobResult>, QueueError>> {
        let id = id.to_string();
        self.run(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT status, headers, body, body_bytes, truncated FROM job_results WHERE job_id = $1",
                    &[&id],
                )
                .await?;
            row.map(|row| rows::result(&row)).transpose()
        })
    }

    fn requeue(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        Box::pin(async move {
            let done = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    let Some(state) = lock_state(&tx, &id).await? else { return Ok(None) };
                    if !matches!(state, JobState::Dead | JobState::Failed | JobState::Canceled) {
                        return Err(QueueError::WrongState {
                            id,
                            state,
                            why: "only a dead, failed or canceled job can be queued again",
                        });
                    }
                    let function: String = tx
                        .query_one(
                            "UPDATE jobs SET state = 'queued', not_before_us = $2, finished_us = NULL, \
                             round_from = attempts, callback_state = NULL WHERE id = $1 RETURNING function",
                            &[&id, &(now_us as i64)],
                        )
                        .await?
                        .get(0);
                    notify(&tx, changes::JOBS, &function).await?;
                    let job = rows::jobs(&tx, "WHERE id = $1", &[&id]).await?.pop();
                    tx.commit().await?;
                    Ok(job.map(|job| (state, job)))
                })
                .await?;
            Ok(done.map(|(from, job)| {
                self.moved(Some(from), Some(JobState::Queued), 1);
                job
            }))
        })
    }

    fn cancel(&self, id: &str, now_us: u64) -> BoxFuture<'_, Result<Option<Job>, QueueError>> {
        let id = id.to_string();
        Box::pin(async move {
            let job = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    let Some(state) = lock_state(&tx, &id).await? else { return Ok(None) };
                    if state != JobState::Queued {
                        return Err(QueueError::WrongState { id, state, why: "only a queued job can be canceled" });
                    }
                    tx.execute(
                        "UPDATE jobs SET state = 'canceled', finished_us = $2, error = 'canceled' WHERE id = $1",
                        &[&id, &(now_us as i64)],
                    )
                    .await?;
                    let job = rows::jobs(&tx, "WHERE id = $1", &[&id]).await?.pop();
                    tx.commit().await?;
                    Ok(job)
                })
                .await?;
            if job.is_some() {
                self.moved(Some(JobState::Queued), Some(JobState::Canceled), 1);
            }
            Ok(job)
        })
    }

    fn fail_function(
        &self,
        function: &str,
        why: &str,
        now_us: u64,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        let (function, why) = (function.to_string(), why.to_string());
        Box::pin(async move {
            let failed = self
                .run(move |client| async move {
                    let failed = client
                        .execute(
                            &format!(
                                "UPDATE jobs SET state = 'failed', finished_us = $2, error = $3, \
                                 callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
                                 callback = {PENDING_CALLBACK} WHERE function = $1 AND state = 'queued'"
                            ),
                            &[&function, &(now_us as i64), &why],
                        )
                        .await?;
                    Ok::<_, QueueError>(failed)
                })
                .await?;
            self.moved(Some(JobState::Queued), Some(JobState::Failed), failed);
            Ok(failed)
        })
    }

    fn callback_done(&self, id: &str, callback: CallbackState) -> BoxFuture<'_, Result<(), QueueError>> {
        let id = id.to_string();
        self.run(move |client| async move {
            let text = serde_json::to_string(&callback).map_err(|e| QueueError::Corrupt(e.to_string()))?;
            client
                .execute(
                    "UPDATE jobs SET callback = $2, callback_state = $3 WHERE id = $1",
                    &[&id, &text, &callback.state],
                )
                .await?;
            Ok(())
        })
    }

    /// Pending callbacks of jobs this node finished, or a gone node did: a callback another live
    /// node is delivering is left to it.
    fn pending_callbacks(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        let node = self.node.clone();
        self.run(move |client| async move {
            let alive_after_ms =
                (amphi_contract::now_unix_us() / 1000).saturating_sub(GONE_AFTER.as_millis() as u64) as i64;
            let rows = client
                .query(
                    "SELECT id FROM jobs WHERE callback_state = 'pending' AND (node = $1 OR NOT EXISTS \
                     (SELECT 1 FROM nodes n WHERE n.id = jobs.node AND n.last_seen_ms > $2))",
                    &[&node, &alive_after_ms],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn purge(&self, finished_before_us: u64, now_us: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let removed = self
                .run(move |client| async move {
                    let mut removed: Vec<(JobState, u64)> = Vec::new();
                    loop {
                        let rows = client
                            .query(
                                "WITH old AS (
                                     SELECT id FROM jobs WHERE finished_us < $1
                                     AND (callback_state IS NULL OR callback_state <> 'pending') LIMIT $2
                                 ), attempts AS (
                                     DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM old)
                                 ), results AS (
                                     DELETE FROM job_results WHERE job_id IN (SELECT id FROM old)
                                 ), gone AS (
                                     DELETE FROM jobs WHERE id IN (SELECT id FROM old) RETURNING state
                                 )
                                 SELECT state, COUNT(*) FROM gone GROUP BY state",
                                &[&(finished_before_us as i64), &PURGE_CHUNK],
                            )
                            .await?;
                        if rows.is_empty() {
                            break;
                        }
                        for row in &rows {
                            removed.push((rows::parse_state(row.get(0))?, row.get::<_, i64>(1) as u64));
                        }
                    }
                    let window_start = now_us.saturating_sub(crate::IDEMPOTENCY_WINDOW_US) as i64;
                    client
                        .execute("DELETE FROM idempotency_keys WHERE created_us < $1", &[&window_start])
                        .await?;
                    Ok::<_, QueueError>(removed)
                })
                .await?;
            let mut total = 0;
            for (state, n) in removed {
                self.moved(Some(state), None, n);
                total += n;
            }
            Ok(total)
        })
    }

    fn put_schedule(&self, name: &str, spec: &str, now_us: u64) -> BoxFuture<'_, Result<(), QueueError>> {
        let (name, spec) = (name.to_string(), spec.to_string());
        self.run(move |mut client| async move {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO schedules (name, spec, updated_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
                &[&name, &spec, &(now_us as i64)],
            )
            .await?;
            notify(&tx, changes::SCHEDULES, &name).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<StoredSchedule>, QueueError>> {
        self.run(|client| async move {
            let rows = client
                .query("SELECT name, spec, updated_us, last_tick_us FROM schedules ORDER BY name", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|row| StoredSchedule {
                    name: row.get(0),
                    spec: row.get(1),
                    updated_us: row.get::<_, i64>(2) as u64,
                    last_tick_us: row.get::<_, Option<i64>>(3).map(|us| us as u64),
                })
                .collect())
        })
    }

    fn delete_schedule(&self, name: &str) -> BoxFuture<'_, Result<bool, QueueError>> {
        let name = name.to_string();
        self.run(move |mut client| async move {
            let tx = client.transaction().await?;
            let deleted = tx.execute("DELETE FROM schedules WHERE name = $1", &[&name]).await? > 0;
            notify(&tx, changes::SCHEDULES, &name).await?;
            tx.commit().await?;
            Ok(deleted)
        })
    }

    fn fire_schedule(
        &self,
        name: &str,
        spec_updated_us: u64,
        tick_us: u64,
        job: NewJob,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        let name = name.to_string();
        Box::pin(async move {
            let fired = self
                .run(move |mut client| async move {
                    let tx = client.transaction().await?;
                    // One node wins each tick: the others find it taken.
                    let taken = tx
                        .execute(
                            "UPDATE schedules SET last_tick_us = $3 WHERE name = $1 AND updated_us = $2 \
                             AND (last_tick_us IS NULL OR last_tick_us < $3)",
                            &[&name, &(spec_updated_us as i64), &(tick_us as i64)],
                        )
                        .await?;
                    if taken == 0 {
                        return Ok(false);
                    }
                    insert_job(&tx, &job).await?;
                    tx.commit().await?;
                    Ok(true)
                })
                .await?;
            if fired {
                self.moved(None, Some(JobState::Queued), 1);
            }
            Ok(fired)
        })
    }

    fn counts(&self) -> StateCounts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}
