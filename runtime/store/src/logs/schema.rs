//! The log store's tables, and bringing a database written by an older version up to them.

use rusqlite::Connection;

use super::chunk::{self, ChunkLine};
use crate::StoreError;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS log_chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    first_ts_us INTEGER NOT NULL,
    last_ts_us INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    line_end INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_function ON log_chunks (function, seq);
CREATE INDEX IF NOT EXISTS chunks_by_invocation ON log_chunks (invocation_id, seq);
CREATE INDEX IF NOT EXISTS chunks_by_time ON log_chunks (last_ts_us);
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
    start TEXT NOT NULL DEFAULT 'warm',
    log_lines_dropped INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    attempt INTEGER,
    schedule TEXT
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, seq);
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations (start_us);
";

/// Lines of the old one-row-per-line table moved per transaction.
const MIGRATION_BATCH: i64 = 100_000;

/// Creates the tables, and brings an older database up to them without losing what it holds.
pub fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(TABLES)?;
    add_column(conn, "invocations", "start", "TEXT NOT NULL DEFAULT 'warm'")?;
    add_column(conn, "invocations", "log_lines_dropped", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(conn, "invocations", "job_id", "TEXT")?;
    add_column(conn, "invocations", "attempt", "INTEGER")?;
    add_column(conn, "invocations", "schedule", "TEXT")?;
    move_line_rows_into_chunks(conn)
}

/// Databases written before a record had `column` get it, with its default for old records.
fn add_column(conn: &Connection, table: &str, column: &str, declaration: &str) -> Result<(), StoreError> {
    let present: bool = conn.query_row(
        &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
        [column],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
    }
    Ok(())
}

/// Up to this version lines were stored one row each in `logs`: they become chunks (a run of
/// consecutive lines of one invocation each), in their order, a batch per transaction, so an
/// interrupted upgrade resumes where it stopped. Then the old table goes.
fn move_line_rows_into_chunks(conn: &mut Connection) -> Result<(), StoreError> {
    let old_table: bool = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'logs'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !old_table {
        return Ok(());
    }
    let mut moved = 0u64;
    loop {
        let tx = conn.transaction()?;
        let rows: Vec<(i64, u64, String, String, String, String)> = {
            let mut select = tx.prepare(
                "SELECT seq, ts_us, function, invocation_id, stream, line FROM logs ORDER BY seq LIMIT ?1",
            )?;
            select
                .query_map([MIGRATION_BATCH], |row| {
                    Ok((
                        row.get(0)?,
                        row.get::<_, i64>(1)? as u64,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })?
                .collect::<Result<_, _>>()?
        };
        let Some(last) = rows.last().map(|r| r.0) else {
            tx.execute_batch("DROP TABLE logs")?;
            tx.commit()?;
            if moved > 0 {
                tracing::info!(lines = moved, "log store: lines moved into chunks");
            }
            return Ok(());
        };
        let mut line_end: i64 =
            tx.query_row("SELECT COALESCE(MAX(line_end), 0) FROM log_chunks", [], |r| r.get(0))?;
        {
            let mut start = 0;
            while start < rows.len() {
                let (_, _, function, invocation, _, _) = &rows[start];
                let mut end = start + 1;
                while end < rows.len()
                    && end - start < chunk::MAX_LINES
                    && rows[end].2 == *function
                    && rows[end].3 == *invocation
                {
                    end += 1;
                }
                let lines: Vec<ChunkLine> = rows[start..end]
                    .iter()
                    .map(|(_, ts_us, _, _, stream, text)| ChunkLine {
                        ts_us: *ts_us,
                        stream: amphi_contract::LogStream::parse(stream)
                            .unwrap_or(amphi_contract::LogStream::Platform),
                        text: text.clone(),
                    })
                    .collect();
                line_end += lines.len() as i64;
                chunk::insert(&tx, (function, invocation), &lines, line_end)?;
                start = end;
            }
        }
        tx.execute("DELETE FROM logs WHERE seq <= ?1", [last])?;
        tx.commit()?;
        moved += rows.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_line_table_becomes_chunks_in_order() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE logs (seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, function TEXT NOT NULL, \
             invocation_id TEXT NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL);
             INSERT INTO logs (ts_us, function, invocation_id, stream, line) VALUES
               (10, 'f', 'a', 'stdout', 'one'), (11, 'f', 'a', 'stderr', 'two'),
               (12, 'g', 'b', 'stdout', 'three'), (13, 'f', 'a', 'platform', 'four');",
        )
        .expect("old table");
        prepare(&mut conn).expect("prepare");
        let chunks: Vec<(String, i64, i64, Vec<u8>)> = conn
            .prepare("SELECT invocation_id, lines, line_end, data FROM log_chunks ORDER BY seq")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let runs: Vec<(&str, i64, i64)> =
            chunks.iter().map(|(i, n, end, _)| (i.as_str(), *n, *end)).collect();
        assert_eq!(runs, [("a", 2, 2), ("b", 1, 3), ("a", 1, 4)]);
        let first = chunk::decode(&chunks[0].3, 10).expect("decode");
        assert_eq!(first[1].text, "two");
        assert_eq!(first[1].ts_us, 11);
        let gone: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'logs'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(gone, 0, "the old table is dropped");
        prepare(&mut conn).expect("a second open has nothing to do");
    }
}
