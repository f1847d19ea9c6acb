//! The log store: invocation records and log lines of every backend, in one SQLite database.
//!
//! Calls never wait for the disk to log, and no record is ever dropped. [`LogStore`] implements
//! [`TelemetrySink`](amphi_contract::TelemetrySink): a call on the request path only puts the
//! item on a queue. One thread ([`writer`]) drains it in batches, stores each invocation's lines
//! of a batch as one row ([`chunk`]) and the records beside them in one transaction, then
//! publishes what it committed to live followers (`logs --follow`).
//!
//! The queue is bounded two ways. Lines past [`LogStoreConfig::queued_line_bytes`] (the disk
//! cannot keep up) are refused; the call counts them and its record says how many, and the store
//! adds a `platform` line to that call's log. Past half of it, only the first
//! [`LIGHT_CALL_BYTES`] of each call's output are still taken, so a call that floods its log
//! loses its own lines first, not those of calls that log a little. Records are always taken; past
//! [`LogStoreConfig::queued_records`] waiting, new calls wait for room before they start
//! ([`LogStore::room_for_record`]), so memory stays bounded and nothing is lost.
//!
//! Indexed for the three questions users ask: the last N lines of a function, everything of one
//! invocation, and everything since a time. Retention removes lines and records older than a
//! maximum age and beyond a maximum count, oldest first; and, checked after every batch, the
//! oldest of both once the database's data takes more than its byte budget.

mod chunk;

pub use chunk::chunk_of;
mod schema;
mod writer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amphi_contract::TelemetrySink;
use amphi_contract::record::{BackendKind, InvocationRecord, JobRef, LogLine, Outcome, StartKind};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use tokio::sync::{Notify, broadcast};

use crate::StoreError;

/// Limits of the log store.
#[derive(Debug, Clone)]
pub struct LogStoreConfig {
    /// Lines and records older than this are removed.
    pub retention: Duration,
    /// At least this many of the newest log lines are kept; older ones go, a call's lines of
    /// one batch at a time.
    pub max_lines: u64,
    /// At most this many invocation records are kept (oldest removed first).
    pub max_invocations: u64,
    /// Most bytes the store's database may take on disk; past it the oldest lines and records
    /// are removed until it is back under nine tenths of this (`serve --log-max-size`).
    pub max_bytes: u64,
    /// Bytes of log lines waiting to be written; past it lines are refused (and counted on
    /// their calls).
    pub queued_line_bytes: usize,
    /// Records waiting to be written past which new calls wait before they start.
    pub queued_records: usize,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_lines: 10_000_000,
            max_invocations: 1_000_000,
            max_bytes: 10 << 30,
            queued_line_bytes: 256 << 20,
            queued_records: 100_000,
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

/// The store's counters, as `/v1/stats` and `/metrics` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogStoreStats {
    /// Lines committed since the store was opened.
    pub lines_stored: u64,
    /// Records committed since the store was opened.
    pub records_stored: u64,
    /// Lines refused because the writer had fallen behind (each counted on its call too).
    pub lines_dropped: u64,
    /// Records given up after the database refused them for seconds on end (a broken disk).
    pub records_dropped: u64,
    /// Bytes of lines waiting for the writer.
    pub queued_line_bytes: u64,
    /// Records waiting for the writer.
    pub queued_records: u64,
}

enum Op {
    Line(LogLine),
    Record(InvocationRecord),
    Flush(std::sync::mpsc::Sender<()>),
}

/// What the store and its writer both count.
#[derive(Default)]
struct Counters {
    queued_line_bytes: AtomicUsize,
    queued_records: AtomicUsize,
    lines_stored: AtomicU64,
    records_stored: AtomicU64,
    lines_dropped: AtomicU64,
    records_dropped: AtomicU64,
    /// Told when records have been written, for calls waiting for room.
    room: Notify,
}

/// Output of one call still taken when the line queue is more than half full.
pub const LIGHT_CALL_BYTES: usize = 4096;

/// What a queued line counts against [`LogStoreConfig::queued_line_bytes`]: its text and names,
/// and the fixed size of the item.
fn line_cost(line: &LogLine) -> usize {
    line.line.len() + line.function.len() + line.invocation_id.len() + std::mem::size_of::<Op>()
}

/// The log store.
pub struct LogStore {
    queue: Sender<Op>,
    reader: Mutex<Connection>,
    events: broadcast::Sender<StoredEvent>,
    counters: Arc<Counters>,
    config: LogStoreConfig,
}

/// Largest the write-ahead log stays after a checkpoint (it grows past it only by one batch).
const WAL_BYTES: u64 = 4 << 20;
const RECORD_COLUMNS: &str = "seq, id, function, version, backend, trigger, method, path, start_us, duration_us, \
                              init_us, cold_start, outcome, status, error, log_lines, log_truncated, start, \
                              log_lines_dropped, job_id, attempt, schedule";

impl LogStore {
    /// Opens (creating if needed) `logs.db` in the data directory and starts its writer thread.
    /// A store written by an older version is brought up to date first (see [`schema`]).
    pub fn open(data: &crate::DataDir, config: LogStoreConfig) -> Result<Self, StoreError> {
        let path = data.private_database("logs.db")?;
        let mut writer_conn = Connection::open(&path)?;
        writer_conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA journal_size_limit={WAL_BYTES};"
        ))?;
        schema::prepare(&mut writer_conn)?;
        let line_end: i64 =
            writer_conn
                .query_row("SELECT COALESCE(MAX(line_end), 0) FROM log_chunks", [], |row| row.get(0))?;
        let reader = Connection::open(&path)?;
        reader.execute_batch("PRAGMA query_only=ON;")?;

        let (queue, receiver) = std::sync::mpsc::channel();
        let (events, _) = broadcast::channel(16 * 1024);
        let counters = Arc::new(Counters::default());
        let writer = writer::Writer {
            conn: writer_conn,
            events: events.clone(),
            config: config.clone(),
            counters: counters.clone(),
            line_end,
        };
        // The thread ends when the store (the queue's only sender) is dropped.
        std::thread::Builder::new()
            .name("amphi-log-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| StoreError::Io { what: "starting the log writer".into(), source })?;
        Ok(Self { queue, reader: Mutex::new(reader), events, counters, config })
    }

    /// Waits until everything queued before this call is committed. Blocking.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = std::sync::mpsc::channel();
        self.queue.send(Op::Flush(done)).map_err(|_| StoreError::WriterStopped)?;
        wait.recv().map_err(|_| StoreError::WriterStopped)
    }

    /// Waits until the queue has room for one more record: at once, unless the writer is
    /// [`LogStoreConfig::queued_records`] behind. A call waits here before it starts, so the
    /// records waiting stay bounded without any being dropped.
    pub async fn room_for_record(&self) {
        let has_room = || self.counters.queued_records.load(Ordering::Acquire) < self.config.queued_records;
        // The usual case, on every call's path: no waiter is made.
        if has_room() {
            return;
        }
        loop {
            // Registered before the check, so a write between the two is not missed.
            let room = self.counters.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if has_room() {
                return;
            }
            room.await;
        }
    }

    /// A live feed of what the store commits from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    /// The store's counters.
    pub fn stats(&self) -> LogStoreStats {
        let c = &self.counters;
        LogStoreStats {
            lines_stored: c.lines_stored.load(Ordering::Relaxed),
            records_stored: c.records_stored.load(Ordering::Relaxed),
            lines_dropped: c.lines_dropped.load(Ordering::Relaxed),
            records_dropped: c.records_dropped.load(Ordering::Relaxed),
            queued_line_bytes: c.queued_line_bytes.load(Ordering::Relaxed) as u64,
            queued_records: c.queued_records.load(Ordering::Relaxed) as u64,
        }
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Log lines matching `query`, oldest first (see [`gather_lines`]). Blocking.
    pub fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        let (sql, params) = filtered(
            "SELECT seq, function, invocation_id, first_ts_us, last_ts_us, data FROM log_chunks",
            [
                ("function = ?", query.function.clone().map(Value::Text)),
                ("invocation_id = ?", query.invocation_id.clone().map(Value::Text)),
                ("last_ts_us >= ?", query.since_us.map(|us| Value::Integer(us as i64))),
                ("seq >= ?", query.after_seq.map(|seq| Value::Integer(chunk::chunk_of(seq)))),
            ],
            query.is_forward(),
            None,
        );
        let conn = self.reader();
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(params))?;
        gather_lines(query, || rows.next()?.map(raw_chunk).transpose())
    }

    /// What this store committed after the chunk position `chunk_after` and the record position
    /// `record_after`, at most `limit` of each, oldest first, read in one snapshot: what a
    /// shared store has not received yet. Blocking.
    pub fn committed_after(
        &self,
        chunk_after: i64,
        record_after: u64,
        limit: usize,
    ) -> Result<(Vec<RawChunk>, Vec<StoredRecord>), StoreError> {
        let mut conn = self.reader();
        let snapshot = conn.transaction()?;
        let chunks = {
            let mut statement = snapshot.prepare_cached(
                "SELECT seq, function, invocation_id, first_ts_us, last_ts_us, data FROM log_chunks \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = statement.query(rusqlite::params![chunk_after, limit as i64])?;
            let mut chunks = Vec::new();
            while let Some(row) = rows.next()? {
                chunks.push(raw_chunk(row)?);
            }
            chunks
        };
        let records = {
            let mut statement = snapshot.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM invocations WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows =
                statement.query_map(rusqlite::params![record_after as i64, limit as i64], record_from_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        snapshot.finish()?;
        Ok((chunks, records))
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
            Some(query.limit),
        );
        let conn = self.reader();
        let mut statement = conn.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(params), record_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl TelemetrySink for LogStore {
    fn log_line(&self, line: LogLine, logged_before: usize) -> bool {
        let cost = line_cost(&line);
        let counters = &self.counters;
        let room = if logged_before < LIGHT_CALL_BYTES {
            self.config.queued_line_bytes
        } else {
            self.config.queued_line_bytes / 2
        };
        let queued = counters.queued_line_bytes.fetch_add(cost, Ordering::Relaxed);
        if queued + cost > room || self.queue.send(Op::Line(line)).is_err() {
            counters.queued_line_bytes.fetch_sub(cost, Ordering::Relaxed);
            counters.lines_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn invocation(&self, record: InvocationRecord) {
        self.counters.queued_records.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Op::Record(record)).is_err() {
            // Only once the writer thread is gone (the store is being dropped).
            self.counters.queued_records.fetch_sub(1, Ordering::AcqRel);
            self.counters.records_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The lines `query` asks for, from chunks in the order [`filtered`] gives them (by position:
/// oldest first when the query is forward, newest first otherwise), read one by one with
/// `next_chunk` until no further chunk can hold a wanted line. Shared by every log store.
///
/// With `since_us` or `after_seq`, in the order stored (positions increase: a cursor to page
/// with); without, the newest `limit` lines by time. A batch stores each call's lines together,
/// so calls that logged at the same moment are in the store one after the other, and the newest
/// lines by time are gathered from chunks until no older chunk can hold one.
pub fn gather_lines(
    query: &LogQuery,
    mut next_chunk: impl FnMut() -> Result<Option<RawChunk>, StoreError>,
) -> Result<Vec<LogLine>, StoreError> {
    let forward = query.is_forward();
    let limit = query.limit.max(1);
    let mut lines: Vec<LogLine> = Vec::new();
    // Newest first: the time of the oldest line kept once `limit` are in hand.
    let mut oldest_kept: Option<u64> = None;
    while let Some(chunk) = next_chunk()? {
        if forward && lines.len() >= limit {
            break;
        }
        if oldest_kept.is_some_and(|oldest| chunk.last_ts_us < oldest) {
            break;
        }
        for (index, line) in chunk::decode(&chunk.data, chunk.first_ts_us)?.into_iter().enumerate() {
            let line_seq = chunk::line_seq(chunk.seq, index);
            let wanted = query.since_us.is_none_or(|since| line.ts_us >= since)
                && query.after_seq.is_none_or(|after| line_seq > after);
            if wanted && (!forward || lines.len() < limit) {
                lines.push(LogLine {
                    seq: line_seq,
                    ts_us: line.ts_us,
                    function: chunk.function.clone(),
                    invocation_id: chunk.invocation_id.clone(),
                    stream: line.stream,
                    line: line.text,
                });
            }
        }
        if !forward && lines.len() >= limit {
            lines.sort_unstable_by_key(|l| std::cmp::Reverse((l.ts_us, l.seq)));
            lines.truncate(limit);
            oldest_kept = lines.last().map(|l| l.ts_us);
        }
    }
    if !forward {
        lines.sort_unstable_by_key(|l| (l.ts_us, l.seq));
    }
    Ok(lines)
}

/// One stored chunk: a run of one invocation's lines, encoded ([`chunk`]), at position `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    /// Its position in the store it was read from.
    pub seq: i64,
    /// The function that logged.
    pub function: String,
    /// The invocation that logged.
    pub invocation_id: String,
    /// When its first line was written (µs since the Unix epoch).
    pub first_ts_us: u64,
    /// When its last line was written.
    pub last_ts_us: u64,
    /// The lines, encoded.
    pub data: Vec<u8>,
}

fn raw_chunk(row: &rusqlite::Row<'_>) -> Result<RawChunk, StoreError> {
    Ok(RawChunk {
        seq: row.get(0)?,
        function: row.get(1)?,
        invocation_id: row.get(2)?,
        first_ts_us: row.get::<_, i64>(3)? as u64,
        last_ts_us: row.get::<_, i64>(4)? as u64,
        data: row.get(5)?,
    })
}

/// Where records and lines are read from: the gateway's own log store, or, in a cluster, the
/// shared one every gateway ships to. Blocking.
pub trait LogReader: Send + Sync + 'static {
    /// Log lines matching `query`, oldest first (see [`gather_lines`]).
    fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError>;
    /// Invocation records matching `query`.
    fn invocations(&self, query: &InvocationQuery) -> Result<Vec<StoredRecord>, StoreError>;
}

impl LogReader for LogStore {
    fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        LogStore::logs(self, query)
    }

    fn invocations(&self, query: &InvocationQuery) -> Result<Vec<StoredRecord>, StoreError> {
        LogStore::invocations(self, query)
    }
}

impl LogQuery {
    /// Whether lines come oldest first from a position or a time (else: the newest `limit`).
    pub fn is_forward(&self) -> bool {
        self.since_us.is_some() || self.after_seq.is_some()
    }
}

/// `select` restricted by the conditions whose value is given, ordered by position (oldest first
/// when `forward`, else newest first), with at most `limit` rows; and the statement's parameters.
fn filtered<const N: usize>(
    select: &str,
    conditions: [(&str, Option<Value>); N],
    forward: bool,
    limit: Option<usize>,
) -> (String, Vec<Value>) {
    let (clauses, params): (Vec<&str>, Vec<Value>) =
        conditions.into_iter().filter_map(|(clause, value)| Some((clause, value?))).unzip();
    let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
    let order = if forward { "ASC" } else { "DESC" };
    let limit = limit.map(|n| format!(" LIMIT {}", n.max(1))).unwrap_or_default();
    (format!("{select}{filter} ORDER BY seq {order}{limit}"), params)
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
            log_lines_dropped: row.get::<_, i64>(18)? as u64,
            job: match row.get::<_, Option<String>>(19)? {
                Some(id) => Some(JobRef {
                    id,
                    attempt: row.get::<_, Option<u32>>(20)?.unwrap_or(1),
                    schedule: row.get(21)?,
                }),
                None => None,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use amphi_contract::now_unix_us;
    use amphi_contract::record::LogStream;

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
            job: None,
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
            log_lines_dropped: 0,
        }
    }

    #[test]
    fn queries_by_function_invocation_and_time_survive_reopen() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let store = LogStore::open(&data, LogStoreConfig::default()).expect("store");
        let now = now_unix_us();
        for i in 0..10 {
            store.log_line(line("a", &format!("a{}", i % 2), &format!("a line {i}"), now + i), 0);
            store.log_line(line("b", "b0", &format!("b line {i}"), now + i), 0);
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
                store.log_line(line("a", &format!("i{n}"), &format!("{n} {filler}"), now_unix_us()), 0);
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
        store.log_line(line("a", "x", "hello", now_unix_us()), 0);
        store.flush().expect("flush");
        match feed.try_recv().expect("an event") {
            StoredEvent::Log(l) => assert!(l.seq > 0 && l.line == "hello"),
            other => panic!("unexpected {other:?}"),
        }
        for i in 0..20 {
            store.log_line(line("a", "x", &format!("{i}"), now_unix_us()), 0);
        }
        store.flush().expect("flush");
        drop(store);
        // Retention runs when the writer starts. Lines go a chunk at a time: the last call's
        // 20 lines (one chunk) hold the newest five, so they stay; the first line goes.
        let store =
            LogStore::open(&data, LogStoreConfig { max_lines: 5, ..Default::default() }).expect("reopen");
        store.flush().expect("flush");
        let kept = store.logs(&LogQuery { limit: 100, ..Default::default() }).expect("q");
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(kept.iter().map(|l| l.line.clone()).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_full_queue_refuses_lines_but_takes_every_record_and_says_so_on_the_call() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let config = LogStoreConfig { queued_line_bytes: 4096, ..Default::default() };
        let store = LogStore::open(&data, config).expect("store");
        let text = "y".repeat(100);
        let (mut taken, mut refused) = (0, 0);
        for i in 0..1000 {
            if store.log_line(line("a", "busy", &format!("{i} {text}"), now_unix_us()), 0) {
                taken += 1;
            } else {
                refused += 1;
            }
        }
        assert!(refused > 0, "a 4 KiB queue took 1000 lines of 100 bytes at once");
        for i in 0..2000 {
            store.invocation(record("a", &format!("r{i}")));
        }
        store.invocation(InvocationRecord {
            log_lines: taken,
            log_lines_dropped: refused,
            ..record("a", "busy")
        });
        store.flush().expect("flush");

        let stats = store.stats();
        assert_eq!((stats.records_stored, stats.records_dropped, stats.lines_dropped), (2001, 0, refused));
        assert_eq!((stats.queued_line_bytes, stats.queued_records), (0, 0));
        let lines = store
            .logs(&LogQuery { invocation_id: Some("busy".into()), limit: 10_000, ..Default::default() })
            .expect("q");
        assert_eq!(lines.len() as u64, taken + 1);
        let note = lines.last().expect("a line");
        assert_eq!(note.stream, LogStream::Platform);
        assert_eq!(
            note.line,
            format!("{refused} log lines of this call were dropped: the log store could not keep up")
        );
        let busy =
            store.invocations(&InvocationQuery { id: Some("busy".into()), limit: 1, ..Default::default() });
        let busy = busy.expect("q").pop().expect("the record");
        assert_eq!((busy.record.log_lines, busy.record.log_lines_dropped), (taken + 1, refused));
    }

    #[test]
    fn past_half_the_queue_only_calls_that_logged_little_are_taken() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let config = LogStoreConfig { queued_line_bytes: 64 << 10, ..Default::default() };
        let store = LogStore::open(&data, config).expect("store");
        let text = "z".repeat(200);
        let heavy = LIGHT_CALL_BYTES * 3;
        let refused =
            (0..100_000).find(|i| !store.log_line(line("flood", "f1", &format!("{i} {text}"), 1), heavy));
        assert!(refused.is_some(), "a heavy logger was never refused");
        assert!(store.log_line(line("quiet", "q1", "a little", 1), 0), "a light call's line was refused");
    }

    #[tokio::test]
    async fn calls_wait_for_room_while_the_writer_is_records_behind() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let store =
            LogStore::open(&data, LogStoreConfig { queued_records: 1, ..Default::default() }).expect("store");
        store.room_for_record().await;
        // Held back: one record waiting is the bound. The wait ends when the writer has it.
        store.counters.queued_records.fetch_add(1, Ordering::AcqRel);
        let waiting = tokio::time::timeout(Duration::from_millis(50), store.room_for_record()).await;
        assert!(waiting.is_err(), "no room with a record waiting");
        store.counters.queued_records.fetch_sub(1, Ordering::AcqRel);
        store.invocation(record("a", "one"));
        tokio::time::timeout(Duration::from_secs(10), store.room_for_record())
            .await
            .expect("room once written");
        assert_eq!(store.stats().records_stored, 1);
    }

    #[test]
    fn paging_by_position_and_time_returns_every_line_once_in_order() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let store = LogStore::open(&data, LogStoreConfig::default()).expect("store");
        let start = now_unix_us();
        // Calls of 7 lines, interleaved two at a time, over several batches.
        let mut written = Vec::new();
        for round in 0..30u64 {
            for i in 0..7u64 {
                for call in [round * 2, round * 2 + 1] {
                    let text = format!("c{call} l{i}");
                    store.log_line(line("f", &format!("c{call}"), &text, start + round * 10 + i), 0);
                    written.push(text);
                }
            }
            if round % 7 == 0 {
                store.flush().expect("flush");
            }
        }
        store.flush().expect("flush");
        let mut after = Some(0);
        let mut read = Vec::new();
        loop {
            let page =
                store.logs(&LogQuery { after_seq: after, limit: 25, ..Default::default() }).expect("q");
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            read.extend(page.into_iter().map(|l| l.line));
        }
        let (mut sorted_read, mut sorted_written) = (read.clone(), written.clone());
        sorted_read.sort();
        sorted_written.sort();
        assert_eq!(sorted_read, sorted_written, "every line once");
        for call in 0..60 {
            let of_call: Vec<_> = read.iter().filter(|l| l.starts_with(&format!("c{call} "))).collect();
            let expected: Vec<String> = (0..7).map(|i| format!("c{call} l{i}")).collect();
            assert_eq!(of_call, expected.iter().collect::<Vec<_>>(), "a call's lines in their order");
        }
        let since = store.logs(&LogQuery { since_us: Some(start + 295), limit: 1000, ..Default::default() });
        let since = since.expect("q");
        assert_eq!(since.len(), 4, "round 29's lines 5 and 6 of its two calls: {since:?}");
        assert!(since.iter().all(|l| l.ts_us >= start + 295));
    }
}
