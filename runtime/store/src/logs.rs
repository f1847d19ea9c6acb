//! The log store: invocation records and log lines of every backend, in one SQLite database.
//!
//! Writers never wait for the disk. [`LogStore`] implements
//! [`TelemetrySink`](amphi_contract::TelemetrySink): a call on the request path only puts the
//! item on a bounded queue. A dedicated thread drains the queue in batches (it lets items gather
//! for a few milliseconds), one transaction per batch, then publishes what it committed to live followers (`logs --follow`). When the queue is
//! full (the disk cannot keep up), items are counted as dropped instead of slowing calls down.
//!
//! Indexed for the three questions users ask: the last N lines of a function, everything of one
//! invocation, and everything since a time. Retention removes lines and records older than a
//! maximum age and beyond a maximum count, oldest first; and, checked after every batch, the
//! oldest of both once the database's data takes more than its byte budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use amphi_contract::record::{BackendKind, InvocationRecord, LogLine, LogStream, Outcome, StartKind};
use amphi_contract::{TelemetrySink, now_unix_us};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, params, params_from_iter};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::StoreError;

/// Limits of the log store.
#[derive(Debug, Clone)]
pub struct LogStoreConfig {
    /// Lines and records older than this are removed.
    pub retention: Duration,
    /// At most this many log lines are kept (oldest removed first).
    pub max_lines: u64,
    /// At most this many invocation records are kept (oldest removed first).
    pub max_invocations: u64,
    /// Most bytes the store's database may take on disk; past it the oldest lines and records
    /// are removed until it is back under nine tenths of this (`serve --log-max-size`).
    pub max_bytes: u64,
    /// Items waiting to be written; beyond this they are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_lines: 10_000_000,
            max_invocations: 1_000_000,
            max_bytes: 10 << 30,
            queue_capacity: 256 * 1024,
        }
    }
}

/// Something the store committed, as followers see it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoredEvent {
    /// A log line (its `seq` is set).
    Log(LogLine),
    /// An invocation record.
    Invocation(StoredRecord),
}

/// An invocation record with its position in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRecord {
    /// Position in the store; increases with every record.
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub record: InvocationRecord,
}

/// Which log lines to return.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only this function's lines.
    pub function: Option<String>,
    /// Only this invocation's lines.
    pub invocation_id: Option<String>,
    /// Only lines written at or after this time (µs since the Unix epoch); oldest first.
    pub since_us: Option<u64>,
    /// Only lines stored after this position; oldest first.
    pub after_seq: Option<u64>,
    /// At most this many. Without `since_us`/`after_seq`, the newest ones (still oldest first).
    pub limit: usize,
}

/// Which invocation records to return.
#[derive(Debug, Clone, Default)]
pub struct InvocationQuery {
    /// Only this function's records.
    pub function: Option<String>,
    /// Only the record with this id.
    pub id: Option<String>,
    /// Only calls started at or after this time (µs since the Unix epoch); oldest first.
    pub since_us: Option<u64>,
    /// Only records stored after this position; oldest first.
    pub after_seq: Option<u64>,
    /// At most this many. Without `since_us`/`after_seq`, the newest ones, newest first.
    pub limit: usize,
}

enum Op {
    Line(LogLine),
    Record(InvocationRecord),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The log store.
pub struct LogStore {
    queue: SyncSender<Op>,
    reader: Mutex<Connection>,
    events: broadcast::Sender<StoredEvent>,
    dropped: AtomicU64,
    lines_stored: Arc<AtomicU64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    function TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, seq);
CREATE INDEX IF NOT EXISTS logs_by_invocation ON logs (invocation_id, seq);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (ts_us);
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    backend TEXT NOT NULL,
    trigger TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    init_us INTEGER,
    cold_start INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    log_lines INTEGER NOT NULL,
    log_truncated INTEGER NOT NULL,
    start TEXT NOT NULL DEFAULT 'warm'
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, seq);
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations (start_us);
";

const RECORD_COLUMNS: &str = "seq, id, function, version, backend, trigger, method, path, start_us, duration_us, \
                              init_us, cold_start, outcome, status, error, log_lines, log_truncated, start";
const MAX_BATCH: usize = 8192;
/// How long the writer lets items gather before it commits them.
const LINGER: Duration = Duration::from_millis(5);
const RETENTION_EVERY: Duration = Duration::from_secs(30);
const RETENTION_CHUNK: i64 = 50_000;
/// Largest the write-ahead log stays after a checkpoint (it grows past it only by one batch).
const WAL_BYTES: u64 = 4 << 20;

impl LogStore {
    /// Opens (creating if needed) `logs.db` in the data directory and starts its writer thread.
    pub fn open(data: &crate::DataDir, config: LogStoreConfig) -> Result<Self, StoreError> {
        let path = data.private_database("logs.db")?;
        let writer_conn = Connection::open(&path)?;
        writer_conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA journal_size_limit={WAL_BYTES};"
        ))?;
        writer_conn.execute_batch(SCHEMA)?;
        add_start_column(&writer_conn)?;
        let reader = Connection::open(&path)?;
        reader.execute_batch("PRAGMA query_only=ON;")?;

        let (queue, receiver) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let (events, _) = broadcast::channel(16 * 1024);
        let lines_stored = Arc::new(AtomicU64::new(0));
        let writer =
            Writer { conn: writer_conn, events: events.clone(), config, lines_stored: lines_stored.clone() };
        // The thread ends when the store (the queue's only sender) is dropped.
        std::thread::Builder::new()
            .name("amphi-log-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| StoreError::Io { what: "starting the log writer".into(), source })?;
        Ok(Self { queue, reader: Mutex::new(reader), events, dropped: AtomicU64::new(0), lines_stored })
    }

    /// Waits until everything queued before this call is committed. Blocking.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = std::sync::mpsc::channel();
        self.queue.send(Op::Flush(done)).map_err(|_| StoreError::WriterStopped)?;
        wait.recv().map_err(|_| StoreError::WriterStopped)
    }

    /// A live feed of what the store commits from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    /// Log lines committed since the store was opened.
    pub fn lines_stored(&self) -> u64 {
        self.lines_stored.load(Ordering::Relaxed)
    }

    /// Items dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn enqueue(&self, op: Op) {
        match self.queue.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Log lines matching `query`, oldest first. Blocking.
    pub fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        let forward = query.since_us.is_some() || query.after_seq.is_some();
        let (sql, params) = filtered(
            "SELECT seq, ts_us, function, invocation_id, stream, line FROM logs",
            [
                ("function = ?", query.function.clone().map(Value::Text)),
                ("invocation_id = ?", query.invocation_id.clone().map(Value::Text)),
                ("ts_us >= ?", query.since_us.map(|us| Value::Integer(us as i64))),
                ("seq > ?", query.after_seq.map(|seq| Value::Integer(seq as i64))),
            ],
            forward,
            query.limit,
        );
        let conn = self.reader();
        let mut statement = conn.prepare_cached(&sql)?;
        let mut lines = statement
            .query_map(params_from_iter(params), |row| {
                Ok(LogLine {
                    seq: row.get::<_, i64>(0)? as u64,
                    ts_us: row.get::<_, i64>(1)? as u64,
                    function: row.get(2)?,
                    invocation_id: row.get(3)?,
                    stream: LogStream::parse(&row.get::<_, String>(4)?).unwrap_or(LogStream::Platform),
                    line: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if !forward {
            lines.reverse();
        }
        Ok(lines)
    }

    /// Invocation records matching `query`. Blocking.
    pub fn invocations(&self, query: &InvocationQuery) -> Result<Vec<StoredRecord>, StoreError> {
        let (sql, params) = filtered(
            &format!("SELECT {RECORD_COLUMNS} FROM invocations"),
            [
                ("function = ?", query.function.clone().map(Value::Text)),
                ("id = ?", query.id.clone().map(Value::Text)),
                ("start_us >= ?", query.since_us.map(|us| Value::Integer(us as i64))),
                ("seq > ?", query.after_seq.map(|seq| Value::Integer(seq as i64))),
            ],
            query.since_us.is_some() || query.after_seq.is_some(),
            query.limit,
        );
        let conn = self.reader();
        let mut statement = conn.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(params), record_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl TelemetrySink for LogStore {
    fn log_line(&self, line: LogLine) {
        self.enqueue(Op::Line(line));
    }

    fn invocation(&self, record: InvocationRecord) {
        self.enqueue(Op::Record(record));
    }
}

/// `select` restricted by the conditions whose value is given, ordered by position (oldest first
/// when `forward`, else newest first), with at most `limit` rows; and the statement's parameters.
fn filtered<const N: usize>(
    select: &str,
    conditions: [(&str, Option<Value>); N],
    forward: bool,
    limit: usize,
) -> (String, Vec<Value>) {
    let (clauses, params): (Vec<&str>, Vec<Value>) =
        conditions.into_iter().filter_map(|(clause, value)| Some((clause, value?))).unzip();
    let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
    let order = if forward { "ASC" } else { "DESC" };
    (format!("{select}{filter} ORDER BY seq {order} LIMIT {}", limit.max(1)), params)
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let backend = match row.get::<_, String>(4)?.as_str() {
        "container" => BackendKind::Container,
        _ => BackendKind::Wasm,
    };
    Ok(StoredRecord {
        seq: row.get::<_, i64>(0)? as u64,
        record: InvocationRecord {
            id: row.get(1)?,
            function: row.get(2)?,
            version: row.get::<_, i64>(3)? as u64,
            backend,
            trigger: row.get(5)?,
            method: row.get(6)?,
            path: row.get(7)?,
            start_us: row.get::<_, i64>(8)? as u64,
            duration_us: row.get::<_, i64>(9)? as u64,
            init_us: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            cold_start: row.get(11)?,
            outcome: Outcome::parse(&row.get::<_, String>(12)?).unwrap_or(Outcome::PlatformError),
            status: row.get::<_, i64>(13)? as u16,
            error: row.get(14)?,
            log_lines: row.get::<_, i64>(15)? as u64,
            log_truncated: row.get(16)?,
            start: StartKind::parse(&row.get::<_, String>(17)?).unwrap_or(StartKind::Warm),
        },
    })
}

/// Log stores written before records had a `start` column get it (their calls count as warm).
fn add_start_column(conn: &Connection) -> Result<(), StoreError> {
    let has_start: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('invocations') WHERE name = 'start'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_start {
        conn.execute_batch("ALTER TABLE invocations ADD COLUMN start TEXT NOT NULL DEFAULT 'warm'")?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    events: broadcast::Sender<StoredEvent>,
    config: LogStoreConfig,
    lines_stored: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, queue: Receiver<Op>) {
        let mut last_retention = Instant::now();
        self.apply_retention();
        self.keep_within_budget();
        loop {
            let wait = RETENTION_EVERY.saturating_sub(last_retention.elapsed());
            let first = match queue.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Some(first) = first {
                // Let a batch gather while nobody waits on the queue: senders then wake no one,
                // and one transaction carries many items. A flush does not wait.
                if !matches!(first, Op::Flush(_)) {
                    std::thread::sleep(LINGER);
                }
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                if let Err(e) = self.write_batch(batch) {
                    tracing::error!(error = %e, "log store: a batch could not be written");
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

    /// Bytes of the database's pages that hold data (freed pages are reused before the file
    /// grows). Three reads of the database header: cheap enough for every batch.
    fn used_bytes(&self) -> Result<u64, rusqlite::Error> {
        let pragma =
            |name: &str| self.conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0));
        let pages = pragma("page_count")?.saturating_sub(pragma("freelist_count")?);
        Ok(pages.max(0) as u64 * pragma("page_size")?.max(0) as u64)
    }

    /// Past the byte budget, removes the oldest tenth of the lines and the records of the same
    /// age (older than the first line kept), again until the store is back under nine tenths of
    /// the budget. A store of records alone loses its oldest tenth of records per round.
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

    /// Removes the oldest tenth of the lines (by position) and the records started before the
    /// first line kept; returns how many items went.
    fn remove_oldest_tenth(&mut self) -> Result<usize, rusqlite::Error> {
        let first_kept: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT seq, ts_us FROM logs WHERE seq >= \
                 (SELECT MIN(seq) + MAX(1, (MAX(seq) - MIN(seq)) / 10) FROM logs) ORDER BY seq LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let mut removed = 0;
        let mut in_chunks = |sql: &str, bound: i64| -> Result<(), rusqlite::Error> {
            loop {
                let n = self.conn.execute(sql, params![bound, RETENTION_CHUNK])?;
                removed += n;
                if (n as i64) < RETENTION_CHUNK {
                    return Ok(());
                }
            }
        };
        match first_kept {
            Some((seq, ts_us)) => {
                in_chunks(
                    "DELETE FROM logs WHERE seq IN (SELECT seq FROM logs WHERE seq < ?1 LIMIT ?2)",
                    seq,
                )?;
                in_chunks(
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
                    in_chunks(
                        "DELETE FROM invocations WHERE seq IN \
                         (SELECT seq FROM invocations WHERE seq < ?1 LIMIT ?2)",
                        boundary,
                    )?;
                }
            }
        }
        Ok(removed)
    }

    fn write_batch(&mut self, batch: Vec<Op>) -> Result<(), StoreError> {
        let mut committed = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        let mut lines = 0;
        let tx = self.conn.transaction()?;
        {
            let mut insert_line = tx.prepare_cached(
                "INSERT INTO logs (ts_us, function, invocation_id, stream, line) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut insert_record = tx.prepare_cached(
                "INSERT OR REPLACE INTO invocations (id, function, version, backend, trigger, method, path, \
                 start_us, duration_us, init_us, cold_start, outcome, status, error, log_lines, log_truncated, \
                 start) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            for op in batch {
                match op {
                    Op::Line(mut line) => {
                        insert_line.execute(params![
                            line.ts_us as i64,
                            line.function,
                            line.invocation_id,
                            line.stream.as_str(),
                            line.line
                        ])?;
                        line.seq = tx.last_insert_rowid() as u64;
                        lines += 1;
                        committed.push(StoredEvent::Log(line));
                    }
                    Op::Record(record) => {
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
                            record.log_lines as i64,
                            record.log_truncated,
                            record.start.as_str(),
                        ])?;
                        let seq = tx.last_insert_rowid() as u64;
                        committed.push(StoredEvent::Invocation(StoredRecord { seq, record }));
                    }
                    Op::Flush(done) => flushes.push(done),
                }
            }
        }
        tx.commit()?;
        self.lines_stored.fetch_add(lines, Ordering::Relaxed);
        if self.events.receiver_count() > 0 {
            for event in committed {
                let _ = self.events.send(event);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        Ok(())
    }

    fn apply_retention(&mut self) {
        let cutoff = now_unix_us().saturating_sub(self.config.retention.as_micros() as u64) as i64;
        let statements = [
            ("DELETE FROM logs WHERE seq IN (SELECT seq FROM logs WHERE ts_us < ?1 LIMIT ?2)", cutoff),
            (
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations WHERE start_us < ?1 LIMIT ?2)",
                cutoff,
            ),
            (
                "DELETE FROM logs WHERE seq IN (SELECT seq FROM logs WHERE seq <= \
                 (SELECT MAX(seq) FROM logs) - ?1 ORDER BY seq LIMIT ?2)",
                self.config.max_lines as i64,
            ),
            (
                "DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations WHERE seq <= \
                 (SELECT MAX(seq) FROM invocations) - ?1 ORDER BY seq LIMIT ?2)",
                self.config.max_invocations as i64,
            ),
        ];
        for (sql, bound) in statements {
            // Chunks keep each transaction short, so writers are never held up for long.
            loop {
                match self.conn.execute(sql, params![bound, RETENTION_CHUNK]) {
                    Ok(n) if n as i64 == RETENTION_CHUNK => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "log store: retention failed");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(function: &str, invocation: &str, text: &str, ts_us: u64) -> LogLine {
        LogLine {
            seq: 0,
            ts_us,
            function: function.into(),
            invocation_id: invocation.into(),
            stream: LogStream::Stdout,
            line: text.into(),
        }
    }

    fn record(function: &str, id: &str) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            function: function.into(),
            version: 1,
            backend: BackendKind::Wasm,
            trigger: "http".into(),
            method: "GET".into(),
            path: "/".into(),
            start_us: now_unix_us(),
            duration_us: 10,
            init_us: None,
            cold_start: false,
            start: StartKind::Warm,
            outcome: Outcome::Success,
            status: 200,
            error: None,
            log_lines: 1,
            log_truncated: false,
        }
    }

    #[test]
    fn queries_by_function_invocation_and_time_survive_reopen() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let store = LogStore::open(&data, LogStoreConfig::default()).expect("store");
        let now = now_unix_us();
        for i in 0..10 {
            store.log_line(line("a", &format!("a{}", i % 2), &format!("a line {i}"), now + i));
            store.log_line(line("b", "b0", &format!("b line {i}"), now + i));
        }
        store.invocation(record("a", "a0"));
        store.invocation(record("a", "a1"));
        store.flush().expect("flush");

        let last3 =
            store.logs(&LogQuery { function: Some("a".into()), limit: 3, ..Default::default() }).expect("q");
        assert_eq!(
            last3.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["a line 7", "a line 8", "a line 9"]
        );
        let of_a1 = store
            .logs(&LogQuery { invocation_id: Some("a1".into()), limit: 100, ..Default::default() })
            .expect("q");
        assert_eq!(of_a1.len(), 5);
        let since =
            store.logs(&LogQuery { since_us: Some(now + 8), limit: 100, ..Default::default() }).expect("q");
        assert_eq!(since.len(), 4, "two functions, two timestamps");
        let records = store.invocations(&InvocationQuery {
            function: Some("a".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(
            records.expect("q").iter().map(|r| r.record.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a0"]
        );
        drop(store);

        let store = LogStore::open(&data, LogStoreConfig::default()).expect("reopen");
        assert_eq!(store.logs(&LogQuery { limit: 100, ..Default::default() }).expect("q").len(), 20);
    }

    #[test]
    fn the_byte_budget_removes_the_oldest_lines_and_records_first() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let budget = 512 << 10;
        let store =
            LogStore::open(&data, LogStoreConfig { max_bytes: budget, ..Default::default() }).expect("store");
        let filler = "x".repeat(1000);
        // 20 MB of lines and records, in batches smaller than the budget.
        for round in 0..100 {
            for i in 0..200 {
                let n = round * 200 + i;
                store.log_line(line("a", &format!("i{n}"), &format!("{n} {filler}"), now_unix_us()));
            }
            store.invocation(record("a", &format!("i{round}")));
            store.flush().expect("flush");
        }
        let file = std::fs::metadata(temp.path().join("logs.db")).expect("logs.db").len();
        assert!(file <= 2 * budget, "logs.db is {file} bytes for a budget of {budget}");
        let kept = store.logs(&LogQuery { limit: 100_000, ..Default::default() }).expect("q");
        assert!(!kept.is_empty() && kept.len() < 1000, "{} lines kept", kept.len());
        assert!(kept.last().is_some_and(|l| l.line.starts_with("19999 ")), "the newest line stays");
        let records = store.invocations(&InvocationQuery { limit: 1000, ..Default::default() }).expect("q");
        assert!(records.first().is_some_and(|r| r.record.id == "i99"), "the newest record stays");
        assert!(records.len() < 100, "old records went too: {} kept", records.len());
    }

    #[test]
    fn followers_see_committed_items_and_retention_bounds_size() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let config = LogStoreConfig { max_lines: 5, ..Default::default() };
        let store = LogStore::open(&data, config).expect("store");
        let mut feed = store.subscribe();
        store.log_line(line("a", "x", "hello", now_unix_us()));
        store.flush().expect("flush");
        match feed.try_recv().expect("an event") {
            StoredEvent::Log(l) => assert!(l.seq > 0 && l.line == "hello"),
            other => panic!("unexpected {other:?}"),
        }
        for i in 0..20 {
            store.log_line(line("a", "x", &format!("{i}"), now_unix_us()));
        }
        store.flush().expect("flush");
        drop(store);
        // Retention runs when the writer starts.
        let store =
            LogStore::open(&data, LogStoreConfig { max_lines: 5, ..Default::default() }).expect("reopen");
        store.flush().expect("flush");
        let kept = store.logs(&LogQuery { limit: 100, ..Default::default() }).expect("q");
        assert_eq!(kept.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["15", "16", "17", "18", "19"]);
    }
}
