-- Invocation records and log lines of every gateway, shipped from each gateway's own log store
-- (its data directory's logs.db, where a call's record and lines are committed first) in
-- batches. `node` and `local_seq` name a row's origin, so shipping a batch again stores nothing
-- twice; `seq` is the cluster-wide position readers page and follow by (batches are inserted one
-- at a time, under an advisory lock, so positions commit in order).
CREATE TABLE log_chunks (
    seq BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    local_seq BIGINT NOT NULL,
    function TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    first_ts_us BIGINT NOT NULL,
    last_ts_us BIGINT NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (node, local_seq)
);
CREATE INDEX log_chunks_by_function ON log_chunks (function, seq);
CREATE INDEX log_chunks_by_invocation ON log_chunks (invocation_id, seq);
-- Append-only and in time order: a BRIN index costs next to nothing per row.
CREATE INDEX log_chunks_by_time ON log_chunks USING BRIN (last_ts_us);
CREATE TABLE invocations (
    seq BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    local_seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    function TEXT NOT NULL,
    start_us BIGINT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (node, local_seq)
);
CREATE INDEX invocations_by_id ON invocations (id);
CREATE INDEX invocations_by_function ON invocations (function, seq);
CREATE INDEX invocations_by_time ON invocations USING BRIN (start_us);
