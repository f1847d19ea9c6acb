//! The log store's one writer thread: batches what the queue holds, stores each invocation's
//! lines of the batch as chunks and its record beside them in one transaction, publishes what it
//! committed to followers, and keeps the store within its age, count and byte limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use amphi_contract::now_unix_us;
use amphi_contract::record::{InvocationRecord, LogLine, LogStream};
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::broadcast;

use super::chunk::{self, ChunkLine};
use super::{Counters, LogStoreConfig, Op, StoredEvent, StoredRecord, line_cost};
use crate::StoreError;

/// Most items taken into one transaction.
const MAX_BATCH: usize = 64 * 1024;
/// How long the writer lets items gather before it commits them.
const LINGER: Duration = Duration::from_millis(5);
const RETENTION_EVERY: Duration = Duration::from_secs(30);
const RETENTION_CHUNK: i64 = 10_000;
/// A batch that could not be written is tried again this often, this many times, before its
/// records are given up (and counted): a full disk gets a few seconds to recover.
const RETRY_AFTER: Duration = Duration::from_millis(100);
const RETRIES: u32 = 50;

pub(super) struct Writer {
    pub conn: Connection,
    pub events: broadcast::Sender<StoredEvent>,
    pub config: LogStoreConfig,
    pub counters: Arc<Counters>,
    /// Lines stored since the first chunk ever: the next chunk's `line_end` starts from here.
    pub line_end: i64,
}

/// The lines of one invocation (or, for lines outside any call, one function) in a batch.
struct Group {
    function: String,
    invocation_id: String,
    lines: Vec<ChunkLine>,
}

/// A batch's lines, grouped by invocation in the order the groups first appear.
#[derive(Default)]
struct Groups {
    list: Vec<Group>,
    /// Group index by invocation id; lines outside any call by function name.
    by_invocation: HashMap<String, usize>,
    by_function: HashMap<String, usize>,
    /// The group of the previous line: a call's lines mostly come in a row.
    previous: Option<usize>,
}

impl Groups {
    fn of(&mut self, function: &str, invocation_id: &str) -> &mut Vec<ChunkLine> {
        let same = |group: &Group| group.invocation_id == invocation_id && group.function == function;
        let index = match self.previous {
            Some(i) if same(&self.list[i]) => i,
            _ => {
                let (map, key) = if invocation_id.is_empty() {
                    (&mut self.by_function, function)
                } else {
                    (&mut self.by_invocation, invocation_id)
                };
                match map.get(key) {
                    Some(&i) if same(&self.list[i]) => i,
                    _ => {
                        self.list.push(Group {
                            function: function.to_string(),
                            invocation_id: invocation_id.to_string(),
                            lines: Vec::new(),
                        });
                        map.insert(key.to_string(), self.list.len() - 1);
                        self.list.len() - 1
                    }
                }
            }
        };
        self.previous = Some(index);
        &mut self.list[index].lines
    }
}

impl Writer {
    pub fn run(mut self, queue: Receiver<Op>) {
        let mut last_retention = Instant::now();
        self.apply_retention();
        self.keep_within_budget();
        let mut retry: Vec<Op> = Vec::new();
        let mut failures = 0;
        loop {
            let wait = if retry.is_empty() {
                RETENTION_EVERY.saturating_sub(last_retention.elapsed())
            } else {
                RETRY_AFTER
            };
            let mut batch = std::mem::take(&mut retry);
            match queue.recv_timeout(wait) {
                Ok(first) => {
                    // Let a batch gather while nobody waits on the queue: senders then wake no
                    // one, and one transaction carries many items. A flush does not wait.
                    if !matches!(first, Op::Flush(_)) {
                        std::thread::sleep(LINGER);
                    }
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if batch.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if !batch.is_empty() {
                match self.write_batch(batch) {
                    Ok(()) => failures = 0,
                    Err((e, kept)) => {
                        failures += 1;
                        tracing::error!(error = %e, attempt = failures, "log store: a batch could not be written");
                        retry = self.keep_for_retry(kept, failures);
                    }
                }
                // After every batch, so the file outgrows its budget by one batch at most.
                self.keep_within_budget();
            }
            if last_retention.elapsed() >= RETENTION_EVERY {
                self.apply_retention();
                last_retention = Instant::now();
            }
        }
    }

    /// What of a failed batch's records and flushes is tried again: all of them, until they have
    /// failed [`RETRIES`] times; then the records are given up and counted.
    fn keep_for_retry(&self, kept: Vec<Op>, failures: u32) -> Vec<Op> {
        if failures < RETRIES {
            return kept;
        }
        let records = kept.iter().filter(|op| matches!(op, Op::Record(_))).count();
        self.counters.queued_records.fetch_sub(records, Ordering::AcqRel);
        self.counters.records_dropped.fetch_add(records as u64, Ordering::Relaxed);
        self.counters.room.notify_waiters();
        Vec::new()
    }

    /// Stores `batch` in one transaction. On failure its lines are dropped (and counted: the
    /// error is logged, their calls' records may already be written) and its records and
    /// flushes are handed back to be tried again.
    fn write_batch(&mut self, batch: Vec<Op>) -> Result<(), (StoreError, Vec<Op>)> {
        let mut groups = Groups::default();
        let mut records: Vec<InvocationRecord> = Vec::new();
        let mut flushes = Vec::new();
        let (mut line_bytes, mut lines_in) = (0, 0u64);
        for op in batch {
            match op {
                Op::Line(line) => {
                    line_bytes += line_cost(&line);
                    lines_in += 1;
                    let LogLine { ts_us, function, invocation_id, stream, line, .. } = line;
                    groups.of(&function, &invocation_id).push(ChunkLine { ts_us, stream, text: line });
                }
                Op::Record(record) => records.push(record),
                Op::Flush(done) => flushes.push(done),
            }
        }
        for record in &records {
            if record.log_lines_dropped > 0 {
                // Said on the call itself, so its log never silently shows less.
                groups.of(&record.function, &record.id).push(ChunkLine {
                    ts_us: now_unix_us(),
                    stream: LogStream::Platform,
                    text: format!(
                        "{} log lines of this call were dropped: the log store could not keep up",
                        record.log_lines_dropped
                    ),
                });
            }
        }
        let counters = self.counters.clone();
        counters.queued_line_bytes.fetch_sub(line_bytes, Ordering::Relaxed);
        match self.commit(&groups.list, &records) {
            Ok((stored_lines, events)) => {
                counters.lines_stored.fetch_add(stored_lines, Ordering::Relaxed);
                counters.records_stored.fetch_add(records.len() as u64, Ordering::Relaxed);
                if !records.is_empty() {
                    counters.queued_records.fetch_sub(records.len(), Ordering::AcqRel);
                    counters.room.notify_waiters();
                }
                for event in events {
                    let _ = self.events.send(event);
                }
                for done in flushes {
                    let _ = done.send(());
                }
                Ok(())
            }
            Err(e) => {
                counters.lines_dropped.fetch_add(lines_in, Ordering::Relaxed);
                let kept = records.into_iter().map(Op::Record).chain(flushes.into_iter().map(Op::Flush));
                Err((e, kept.collect()))
            }
        }
    }

    /// One transaction: the groups' lines as chunks, then the records. Returns the lines stored
    /// and, when anyone follows, the events to publish.
    fn commit(
        &mut self,
        groups: &[Group],
        records: &[InvocationRecord],
    ) -> Result<(u64, Vec<StoredEvent>), StoreError> {
        let publish = self.events.receiver_count() > 0;
        let mut events = Vec::new();
        let mut line_end = self.line_end;
        let mut stored_lines = 0u64;
        let tx = self.conn.transaction()?;
        {
            for group in groups {
                for piece in group.lines.chunks(chunk::MAX_LINES) {
                    line_end += piece.len() as i64;
                    let seq = chunk::insert(&tx, (&group.function, &group.invocation_id), piece, line_end)?;
                    stored_lines += piece.len() as u64;
                    if publish {
                        events.extend(piece.iter().enumerate().map(|(index, line)| {
                            StoredEvent::Log(LogLine {
                                seq: chunk::line_seq(seq, index),
                                ts_us: line.ts_us,
                                function: group.function.clone(),
                                invocation_id: group.invocation_id.clone(),
                                stream: line.stream,
                                line: line.text.clone(),
                            })
                        }));
                    }
                }
            }
            let mut insert_record = tx.prepare_cached(
                "INSERT OR REPLACE INTO invocations (id, function, version, backend, trigger, method, path, \
                 start_us, duration_us, init_us, cold_start, outcome, status, error, log_lines, log_truncated, \
                 start, log_lines_dropped, job_id, attempt, schedule) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
            )?;
            for record in records {
                // The store's own line about dropped lines counts among the call's lines.
                let log_lines = record.log_lines + u64::from(record.log_lines_dropped > 0);
                insert_record.execute(params![
                    record.id,
                    record.function,
                    record.version as i64,
                    record.backend.as_str(),
                    record.trigger,
                    record.method,
                    record.path,
                    record.start_us as i64,
                    record.duration_us as i64,
                    record.init_us.map(|v| v as i64),
                    record.cold_start,
                    record.outcome.as_str(),
                    record.status as i64,
                    record.error,
                    log_lines as i64,
                    record.log_truncated,
                    record.start.as_str(),
                    record.log_lines_dropped as i64,
                    record.job.as_ref().map(|job| job.id.as_str()),
                    record.job.as_ref().map(|job| job.attempt),
                    record.job.as_ref().and_then(|job| job.schedule.as_deref()),
                ])?;
                if publish {
                    let seq = tx.last_insert_rowid() as u64;
                    let record = InvocationRecord { log_lines, ..record.clone() };
                    events.push(StoredEvent::Invocation(StoredRecord { seq, record }));
                }
            }
        }
        tx.commit()?;
        self.line_end = line_end;
        Ok((stored_lines, events))
    }

    /// Bytes of the database's pages that hold data (freed pages are reused before the file
    /// grows). Three reads of the database header: cheap enough for every batch.
    fn used_bytes(&self) -> Result<u64, rusqlite::Error> {
        let pragma =
            |name: &str| self.conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0));
        let pages = pragma("page_count")?.saturating_sub(pragma("freelist_count")?);
        Ok(pages.max(0) as u64 * pragma("page_size")?.max(0) as u64)
    }

    /// Past the byte budget, removes the oldest tenth of the chunks and the records of the same
    /// age (started before the first line kept), again until the store is back under nine tenths
    /// of the budget. A store of records alone loses its oldest tenth of records per round.
    fn keep_within_budget(&mut self) {
        let budget = self.config.max_bytes;
        let target = budget / 10 * 9;
        let mut over = false;
        loop {
            match self.used_bytes() {
                Ok(used) if used > budget || (over && used > target) => over = true,
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "log store: cannot read the database size");
                    return;
                }
            }
            match self.remove_oldest_tenth() {
                Ok(0) => return, // Nothing left to remove: the schema alone is over the budget.
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "log store: removing the oldest items failed");
                    return;
                }
            }
        }
    }

    /// Removes the oldest tenth of the chunks (by position) and the records started before the
    /// first line kept; returns how many rows went.
    fn remove_oldest_tenth(&mut self) -> Result<usize, rusqlite::Error> {
        let first_kept: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT seq, first_ts_us FROM log_chunks WHERE seq >= \
                 (SELECT MIN(seq) + MAX(1, (MAX(seq) - MIN(seq)) / 10) FROM log_chunks) ORDER BY seq LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let mut removed = 0;
        match first_kept {
            Some((seq, ts_us)) => {
                removed += self.delete_in_chunks(
                    "DELETE FROM log_chunks WHERE seq IN (SELECT seq FROM log_chunks WHERE seq < ?1 LIMIT ?2)",
                    seq,
                )?;
                removed += self.delete_in_chunks(
                    "DELETE FROM invocations WHERE seq IN \
                     (SELECT seq FROM invocations WHERE start_us < ?1 LIMIT ?2)",
                    ts_us,
                )?;
            }
            None => {
                let boundary: Option<i64> = self.conn.query_row(
                    "SELECT MIN(seq) + MAX(1, (MAX(seq) - MIN(seq)) / 10) FROM invocations",
                    [],
                    |row| row.get(0),
                )?;
                if let Some(boundary) = boundary {
                    removed += self.delete_in_chunks(
                        "DELETE FROM invocations WHERE seq IN \
                         (SELECT seq FROM invocations WHERE seq < ?1 LIMIT ?2)",
                        boundary,
                    )?;
                }
            }
        }
        Ok(removed)
    }

    /// Runs `sql` (a delete bounded by `?1`, at most `?2` rows) until it removes fewer than a
    /// chunk's worth: short transactions, so the writer is never held up for long.
    fn delete_in_chunks(&self, sql: &str, bound: i64) -> Result<usize, rusqlite::Error> {
        let mut removed = 0;
        loop {
            let n = self.conn.execute(sql, params![bound, RETENTION_CHUNK])?;
            removed += n;
            if (n as i64) < RETENTION_CHUNK {
                return Ok(removed);
            }
        }
    }

    /// Removes chunks and records older than the retention, and the oldest beyond the counts.
    /// Chunks go whole: at least `max_lines` of the newest lines stay.
    fn apply_retention(&mut self) {
        let cutoff = now_unix_us().saturating_sub(self.config.retention.as_micros() as u64) as i64;
        let line_bound = self.line_end.saturating_sub(self.config.max_lines as i64);
        let statements = [
            (
                "DELETE FROM log_chunks WHERE seq IN (SELECT seq FROM log_chunks WHERE last_ts_us < ?1 LIMIT ?2)",
                cutoff,
            ),
            (
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations WHERE start_us < ?1 LIMIT ?2)",
                cutoff,
            ),
            (
                // `line_end` grows with `seq`: the chunks to go are the ones before the first
                // that holds one of the newest `max_lines` lines.
                "DELETE FROM log_chunks WHERE seq IN (SELECT seq FROM log_chunks WHERE seq < \
                 (SELECT seq FROM log_chunks WHERE line_end > ?1 ORDER BY seq LIMIT 1) LIMIT ?2)",
                line_bound,
            ),
            (
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations WHERE seq <= \
                 (SELECT MAX(seq) FROM invocations) - ?1 ORDER BY seq LIMIT ?2)",
                self.config.max_invocations as i64,
            ),
        ];
        for (sql, bound) in statements {
            if let Err(e) = self.delete_in_chunks(sql, bound) {
                tracing::error!(error = %e, "log store: retention failed");
            }
        }
    }
}
