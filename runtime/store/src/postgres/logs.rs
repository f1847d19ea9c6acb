//! Records and log lines of every gateway of the cluster, in PostgreSQL.
//!
//! A call is logged as on one machine: into its gateway's own log store ([`LogStore`], the data
//! directory's `logs.db`) first, so no call waits on the network to log and nothing is lost while
//! PostgreSQL is away. A shipper per gateway ([`PgLogs::ship_from`]) copies what that store
//! committed to the shared tables, a batch at a time, each batch one transaction that is safe to
//! repeat (rows are keyed by node and local position); it resumes from what the shared tables
//! hold, after a restart or an outage alike. Readers on any gateway (`amphi logs`, records,
//! `--follow`) read the shared tables, so they see the calls of every node. Batches are inserted
//! one at a time across the cluster (an advisory lock held to the commit), so positions commit in
//! order and a follower paging by position misses nothing; each batch is announced on
//! [`changes::LOGS`].

use std::sync::Arc;
use std::time::Duration;

use amphi_contract::record::LogLine;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::changes::{self, notify};
use crate::StoreError;
use crate::logs::{InvocationQuery, LogQuery, LogReader, LogStore, RawChunk, StoredRecord, gather_lines};

/// Most chunks and records shipped in one transaction.
const SHIP_BATCH: usize = 2000;
/// How long the shipper lets commits gather before it ships them.
const SHIP_LINGER: Duration = Duration::from_millis(50);
/// How long it waits before trying again when PostgreSQL is away.
const SHIP_RETRY: Duration = Duration::from_secs(1);
/// Chunks a reader takes from PostgreSQL per round trip.
const READ_PAGE: i64 = 256;
/// Any number the cluster's gateways agree on: held while a batch is inserted.
const SHIP_LOCK: i64 = 0x616d_7068_6922;

/// The cluster's records and log lines.
#[derive(Clone)]
pub struct PgLogs {
    store: Arc<PgStore>,
}

impl PgLogs {
    /// The records and lines in `store`.
    pub fn new(store: Arc<PgStore>) -> Self {
        Self { store }
    }

    /// Ships everything `local` commits, as node `node`, for as long as the store lives: what
    /// the shared tables lack of this node first, then each new commit within
    /// [`SHIP_LINGER`].
    pub fn ship_from(&self, local: Arc<LogStore>, node: String) {
        let logs = self.clone();
        self.store.runtime().spawn(async move {
            let mut feed = local.subscribe();
            let mut cursor: Option<(i64, u64)> = None;
            let mut failing = false;
            loop {
                let shipped = async {
                    let (chunks_after, records_after) = match cursor {
                        Some(cursor) => cursor,
                        None => logs.shipped_until(&node).await?,
                    };
                    let reading = local.clone();
                    let (chunks, records) = tokio::task::spawn_blocking(move || {
                        reading.committed_after(chunks_after, records_after, SHIP_BATCH)
                    })
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("reading the local log store: {e}")))??;
                    let full = chunks.len() == SHIP_BATCH || records.len() == SHIP_BATCH;
                    let next = (
                        chunks.last().map_or(chunks_after, |c| c.seq),
                        records.last().map_or(records_after, |r| r.seq),
                    );
                    if !chunks.is_empty() || !records.is_empty() {
                        logs.ship(&node, chunks, records).await?;
                    }
                    Ok::<_, StoreError>((next, full))
                };
                match shipped.await {
                    Ok((next, full)) => {
                        if failing {
                            tracing::info!("shipping records and logs to PostgreSQL again");
                            failing = false;
                        }
                        cursor = Some(next);
                        if full {
                            continue;
                        }
                        // Wait for the next commit, then let more gather.
                        let _ = feed.recv().await;
                        tokio::time::sleep(SHIP_LINGER).await;
                        while feed.try_recv().is_ok() {}
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot ship records and logs to PostgreSQL; they wait in the local log store");
                            failing = true;
                        }
                        // Where the shared tables stand is asked again: a batch may have committed.
                        cursor = None;
                        tokio::time::sleep(SHIP_RETRY).await;
                    }
                }
            }
        });
    }

    /// The last local chunk and record positions of `node` the shared tables hold.
    async fn shipped_until(&self, node: &str) -> Result<(i64, u64), StoreError> {
        let node = node.to_string();
        self.store
            .run(move |client| async move {
                let row = client
                    .query_one(
                        "SELECT (SELECT COALESCE(MAX(local_seq), 0) FROM log_chunks WHERE node = $1),
                                (SELECT COALESCE(MAX(local_seq), 0) FROM invocations WHERE node = $1)",
                        &[&node],
                    )
                    .await?;
                Ok::<_, StoreError>((row.get(0), row.get::<_, i64>(1) as u64))
            })
            .await
    }

    /// Inserts one batch of `node`'s chunks and records (what is there already is skipped).
    async fn ship(
        &self,
        node: &str,
        chunks: Vec<RawChunk>,
        records: Vec<StoredRecord>,
    ) -> Result<(), StoreError> {
        let node = node.to_string();
        self.store
            .run(move |mut client| async move {
                let tx = client.transaction().await?;
                // The local log store keeps every row until the shared store holds it, and the
                // shipper asks the shared store where it stands after any failure: a batch lost
                // in a PostgreSQL crash is shipped again, so the commit need not wait for a flush.
                tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SHIP_LOCK]).await?;
                if !chunks.is_empty() {
                    let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
                    let functions: Vec<&str> = chunks.iter().map(|c| c.function.as_str()).collect();
                    let invocations: Vec<&str> = chunks.iter().map(|c| c.invocation_id.as_str()).collect();
                    let firsts: Vec<i64> = chunks.iter().map(|c| c.first_ts_us as i64).collect();
                    let lasts: Vec<i64> = chunks.iter().map(|c| c.last_ts_us as i64).collect();
                    let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
                    tx.execute(
                        "INSERT INTO log_chunks (node, local_seq, function, invocation_id, first_ts_us, last_ts_us, data)
                         SELECT $1, * FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[],
                                                  $7::BYTEA[])
                         ON CONFLICT (node, local_seq) DO NOTHING",
                        &[&node, &seqs, &functions, &invocations, &firsts, &lasts, &data],
                    )
                    .await?;
                }
                if !records.is_empty() {
                    let seqs: Vec<i64> = records.iter().map(|r| r.seq as i64).collect();
                    let ids: Vec<&str> = records.iter().map(|r| r.record.id.as_str()).collect();
                    let functions: Vec<&str> = records.iter().map(|r| r.record.function.as_str()).collect();
                    let starts: Vec<i64> = records.iter().map(|r| r.record.start_us as i64).collect();
                    let texts = records
                        .iter()
                        .map(|r| serde_json::to_string(&r.record))
                        .collect::<Result<Vec<String>, _>>()
                        .map_err(|e| StoreError::Corrupt(format!("a record as JSON: {e}")))?;
                    tx.execute(
                        "INSERT INTO invocations (node, local_seq, id, function, start_us, record)
                         SELECT $1, * FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[])
                         ON CONFLICT (node, local_seq) DO NOTHING",
                        &[&node, &seqs, &ids, &functions, &starts, &texts],
                    )
                    .await?;
                }
                notify(&tx, changes::LOGS, "").await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// Removes records and chunks older than `before_us`, and records and chunks beyond the newest
    /// `max_records` and `max_chunks` positions. Blocking.
    pub fn purge(&self, before_us: u64, max_records: u64, max_chunks: u64) -> Result<u64, StoreError> {
        self.store.with_client(move |client| async move {
            let mut removed = 0;
            for (table, time, max) in
                [("invocations", "start_us", max_records), ("log_chunks", "last_ts_us", max_chunks)]
            {
                let sql = format!(
                    "DELETE FROM {table} WHERE {time} < $1 OR seq <= (SELECT MAX(seq) FROM {table}) - $2"
                );
                removed += client.execute(&sql, &[&(before_us as i64), &(max as i64)]).await?;
            }
            Ok(removed)
        })
    }

    /// One page of chunks for `query`: positions past `after` (forward) or before `before`.
    fn chunk_page(&self, query: &LogQuery, before: Option<i64>) -> Result<Vec<RawChunk>, StoreError> {
        let forward = query.is_forward();
        let mut conditions = Conditions::default();
        conditions.add("function =", query.function.clone());
        conditions.add("invocation_id =", query.invocation_id.clone());
        conditions.add("last_ts_us >=", query.since_us.map(|us| us as i64));
        conditions.add("seq >=", query.after_seq.map(crate::logs::chunk_of));
        conditions.add("seq <", before.filter(|_| !forward));
        conditions.add("seq >", before.filter(|_| forward));
        let sql = format!(
            "SELECT seq, function, invocation_id, first_ts_us, last_ts_us, data FROM log_chunks{} \
             ORDER BY seq {} LIMIT {READ_PAGE}",
            conditions.clause(),
            if forward { "ASC" } else { "DESC" }
        );
        self.store.with_client(move |client| async move {
            let rows = client.query(&sql, &conditions.params()).await?;
            Ok(rows
                .iter()
                .map(|row| RawChunk {
                    seq: row.get(0),
                    function: row.get(1),
                    invocation_id: row.get(2),
                    first_ts_us: row.get::<_, i64>(3) as u64,
                    last_ts_us: row.get::<_, i64>(4) as u64,
                    data: row.get(5),
                })
                .collect())
        })
    }
}

impl LogReader for PgLogs {
    fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        // Pages are fetched as the gathering needs them: it stops as soon as no further chunk
        // can hold a wanted line.
        let mut page = std::collections::VecDeque::new();
        let (mut last, mut exhausted) = (None, false);
        gather_lines(query, || {
            if page.is_empty() && !exhausted {
                let fetched = self.chunk_page(query, last)?;
                exhausted = (fetched.len() as i64) < READ_PAGE;
                last = fetched.last().map(|c| c.seq).or(last);
                page.extend(fetched);
            }
            Ok(page.pop_front())
        })
    }

    fn invocations(&self, query: &InvocationQuery) -> Result<Vec<StoredRecord>, StoreError> {
        let forward = query.since_us.is_some() || query.after_seq.is_some();
        let mut conditions = Conditions::default();
        conditions.add("function =", query.function.clone());
        conditions.add("id =", query.id.clone());
        conditions.add("start_us >=", query.since_us.map(|us| us as i64));
        conditions.add("seq >", query.after_seq.map(|seq| seq as i64));
        let sql = format!(
            "SELECT seq, record FROM invocations{} ORDER BY seq {} LIMIT {}",
            conditions.clause(),
            if forward { "ASC" } else { "DESC" },
            query.limit.max(1)
        );
        self.store.with_client(move |client| async move {
            let rows = client.query(&sql, &conditions.params()).await?;
            rows.iter()
                .map(|row| {
                    let record = serde_json::from_str(row.get(1))
                        .map_err(|e| StoreError::Corrupt(format!("a shared invocation record: {e}")))?;
                    Ok(StoredRecord { seq: row.get::<_, i64>(0) as u64, record })
                })
                .collect()
        })
    }
}

/// A `WHERE` clause of the conditions whose value is given, numbered `$1`, `$2`, ….
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Conditions {
    fn add<T: ToSql + Sync + Send + 'static>(&mut self, clause: &str, value: Option<T>) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            self.clauses.push(format!("{clause} ${}", self.values.len()));
        }
    }

    fn clause(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}
