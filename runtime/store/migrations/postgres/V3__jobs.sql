-- The durable bus of async jobs, shared by every gateway's executors: mirrors the embedded queue
-- (runtime/queue/src/embedded/schema.rs). A running job names the node whose executor holds it
-- (`node`): that node's heartbeat is the job's lease, and a node gone for 10 s releases its jobs.
CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers BYTEA NOT NULL,
    body BYTEA NOT NULL,
    created_us BIGINT NOT NULL,
    not_before_us BIGINT NOT NULL,
    finished_us BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    round_from INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    error TEXT,
    callback_url TEXT,
    callback TEXT,
    callback_state TEXT,
    schedule TEXT,
    node TEXT
);
CREATE INDEX jobs_due ON jobs (function, not_before_us) WHERE state = 'queued';
CREATE INDEX jobs_by_function ON jobs (function, seq);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_finished ON jobs (finished_us) WHERE finished_us IS NOT NULL;
CREATE INDEX jobs_callback_pending ON jobs (id) WHERE callback_state = 'pending';
CREATE INDEX jobs_running_by_node ON jobs (node) WHERE state = 'running';
CREATE TABLE job_attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    invocation_id TEXT NOT NULL,
    started_us BIGINT NOT NULL,
    ended_us BIGINT,
    status INTEGER,
    outcome TEXT,
    error TEXT,
    node TEXT,
    PRIMARY KEY (job_id, number)
);
CREATE TABLE job_results (
    job_id TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    body_bytes BIGINT NOT NULL,
    truncated BOOLEAN NOT NULL
);
CREATE TABLE idempotency_keys (
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE INDEX idempotency_by_time ON idempotency_keys (created_us);
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_us BIGINT NOT NULL,
    last_tick_us BIGINT
);
