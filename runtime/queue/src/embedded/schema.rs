//! The tables of `jobs.db`.

/// Every table and index; made if missing.
pub const TABLES: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    not_before_us INTEGER NOT NULL,
    finished_us INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    round_from INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    error TEXT,
    callback_url TEXT,
    callback TEXT,
    callback_state TEXT,
    schedule TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (function, not_before_us) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function, seq);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_us) WHERE finished_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_callback_pending ON jobs (id) WHERE callback_state = 'pending';
CREATE TABLE IF NOT EXISTS job_attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    invocation_id TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    ended_us INTEGER,
    status INTEGER,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_results (
    job_id TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    body_bytes INTEGER NOT NULL,
    truncated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (function, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency_keys (created_us);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_us INTEGER NOT NULL,
    last_tick_us INTEGER
) WITHOUT ROWID;
";
