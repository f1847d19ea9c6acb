-- Settings every gateway of a cluster shares, such as the admin token made by the first one.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
