-- Functions, their immutable versions and the artifacts they run: what every gateway of a
-- cluster routes by. Mirrors the embedded registry (runtime/store/src/registry.rs).
CREATE TABLE artifacts (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
-- Content-addressed bytes (uploads and derived snapshots), in chunks of at most 1 MiB so no row
-- is larger than a client may comfortably hold.
CREATE TABLE artifact_chunks (
    digest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (digest, seq)
);
CREATE TABLE versions (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    digest TEXT NOT NULL REFERENCES artifacts(digest),
    config TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    init TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    current_version BIGINT NOT NULL
);
CREATE TABLE version_marks (
    name TEXT PRIMARY KEY,
    last_version BIGINT NOT NULL
);
-- Every gateway registers itself and says it is alive every few seconds.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
