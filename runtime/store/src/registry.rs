//! The function registry: uploaded artifacts, functions and their immutable versions.
//!
//! [`Registry`] is what the gateway asks of it; [`EmbeddedRegistry`] keeps it in SQLite in the
//! data directory, [`crate::postgres::registry::PgRegistry`] in a cluster's PostgreSQL. Every
//! write is durable before it returns, so a deploy the API has acknowledged survives a crash.
//! Calls block: run them off the async runtime's threads.

use std::sync::{Mutex, PoisonError};

use amphi_contract::function::{ArtifactKind, FunctionConfig, FunctionVersion, InitSnapshot};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::StoreError;

/// Functions, versions and artifacts, wherever they are kept. Every method blocks.
pub trait Registry: Send + Sync {
    /// Records an uploaded artifact (idempotent).
    fn add_artifact(&self, info: &ArtifactInfo) -> Result<(), StoreError>;

    /// The artifact with `digest`, if it was uploaded; an upload of it again counts as new for
    /// garbage collection's grace period (its upload time is now).
    fn artifact_uploaded_again(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError>;

    /// The artifact with `digest`, if it was uploaded.
    fn artifact(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError>;

    /// Makes a new version of `name` (version 1 if it is new) and makes it current; `init` is
    /// the snapshot its instances start from, when its initializer made one.
    fn deploy(
        &self,
        name: &str,
        digest: &str,
        config: &FunctionConfig,
        init: Option<&InitSnapshot>,
    ) -> Result<FunctionVersion, StoreError>;

    /// Artifacts uploaded before `before_ms` that neither a function's current version nor one of
    /// its `keep - 1` versions before it uses: what garbage collection may remove.
    fn unreferenced_artifacts(&self, before_ms: u64, keep: u64) -> Result<Vec<ArtifactInfo>, StoreError>;

    /// Forgets an artifact, unless a version now uses it (a deploy since it was found unused).
    /// Returns whether it was forgotten.
    fn remove_artifact_if_unused(&self, digest: &str, keep: u64) -> Result<bool, StoreError>;

    /// The current version of every function, by name.
    fn all_current(&self) -> Result<Vec<FunctionVersion>, StoreError>;

    /// The current version of `name`, if it is deployed.
    fn current(&self, name: &str) -> Result<Option<FunctionVersion>, StoreError>;

    /// Every version of `name`, oldest first.
    fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>, StoreError>;

    /// Deletes `name` and its versions. Returns whether it existed.
    fn delete(&self, name: &str) -> Result<bool, StoreError>;
}

/// The registry database in the data directory (SQLite, `synchronous=FULL`).
pub struct EmbeddedRegistry {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS artifacts (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL REFERENCES artifacts(digest),
    config TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    -- The snapshot made by the function's initializer (JSON), when its config names one.
    init TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL
);
-- The highest version a name ever had: kept when the function is deleted, so a name deployed
-- again goes on counting and its old records and logs are never taken for the new one's.
CREATE TABLE IF NOT EXISTS version_marks (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
";

/// An uploaded artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// How it speaks the contract.
    pub kind: ArtifactKind,
    /// Its size in bytes.
    pub size: u64,
}

impl EmbeddedRegistry {
    /// Opens (creating if needed) `registry.db` in the data directory.
    pub fn open(data: &crate::DataDir) -> Result<Self, StoreError> {
        let conn = Connection::open(data.private_database("registry.db")?)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        conn.execute_batch(SCHEMA)?;
        // Data directories from before pre-initialization have no `init` column yet.
        let has_init: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('versions') WHERE name = 'init'",
            [],
            |row| row.get(0),
        )?;
        if !has_init {
            conn.execute_batch("ALTER TABLE versions ADD COLUMN init TEXT")?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn select_versions(&self, sql: &str, name: Option<&str>) -> Result<Vec<FunctionVersion>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(sql)?;
        let map = |row: &rusqlite::Row<'_>| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        };
        let rows = match name {
            Some(name) => statement.query_map([name], map)?.collect::<Result<Vec<_>, _>>()?,
            None => statement.query_map([], map)?.collect::<Result<Vec<_>, _>>()?,
        };
        rows.into_iter()
            .map(|(name, version, digest, kind, config, created_at_ms, init)| {
                decode_version(StoredVersion { name, version, digest, kind, config, created_at_ms, init })
            })
            .collect()
    }
}

impl Registry for EmbeddedRegistry {
    fn add_artifact(&self, info: &ArtifactInfo) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO artifacts (digest, kind, size, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![info.digest, info.kind.as_str(), info.size as i64, now_ms() as i64],
        )?;
        Ok(())
    }

    fn artifact_uploaded_again(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        self.conn().execute(
            "UPDATE artifacts SET created_at_ms = ?2 WHERE digest = ?1",
            params![digest, now_ms() as i64],
        )?;
        self.artifact(digest)
    }

    fn artifact(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        self.conn()
            .query_row("SELECT kind, size FROM artifacts WHERE digest = ?1", [digest], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?
            .map(|(kind, size)| {
                Ok(ArtifactInfo { digest: digest.to_string(), kind: parse_kind(&kind)?, size: size as u64 })
            })
            .transpose()
    }

    fn deploy(
        &self,
        name: &str,
        digest: &str,
        config: &FunctionConfig,
        init: Option<&InitSnapshot>,
    ) -> Result<FunctionVersion, StoreError> {
        let (config_json, init_json) = encode_version(config, init)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let kind: String = tx
            .query_row("SELECT kind FROM artifacts WHERE digest = ?1", [digest], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownArtifact(digest.to_string()))?;
        let version: i64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(version) FROM versions WHERE name = ?1), 0),
                        COALESCE((SELECT last_version FROM version_marks WHERE name = ?1), 0)) + 1",
            [name],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO version_marks (name, last_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET last_version = excluded.last_version",
            params![name, version],
        )?;
        let created_at_ms = now_ms();
        tx.execute(
            "INSERT INTO versions (name, version, digest, config, created_at_ms, init) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, version, digest, config_json, created_at_ms as i64, init_json],
        )?;
        tx.execute(
            "INSERT INTO functions (name, current_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET current_version = excluded.current_version",
            params![name, version],
        )?;
        tx.commit()?;
        Ok(FunctionVersion {
            name: name.to_string(),
            version: version as u64,
            digest: digest.to_string(),
            kind: parse_kind(&kind)?,
            config: config.clone(),
            created_at_ms,
            init: init.cloned(),
        })
    }

    fn unreferenced_artifacts(&self, before_ms: u64, keep: u64) -> Result<Vec<ArtifactInfo>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT a.digest, a.kind, a.size FROM artifacts a WHERE a.created_at_ms < ?1 AND NOT EXISTS (
                 SELECT 1 FROM versions v JOIN functions f ON f.name = v.name
                 WHERE v.digest = a.digest AND v.version > f.current_version - ?2)",
        )?;
        let rows = statement
            .query_map(params![before_ms as i64, keep as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(digest, kind, size)| {
                Ok(ArtifactInfo { digest, kind: parse_kind(&kind)?, size: size as u64 })
            })
            .collect()
    }

    fn remove_artifact_if_unused(&self, digest: &str, keep: u64) -> Result<bool, StoreError> {
        let removed = self.conn().execute(
            "DELETE FROM artifacts WHERE digest = ?1 AND NOT EXISTS (
                 SELECT 1 FROM versions v JOIN functions f ON f.name = v.name
                 WHERE v.digest = ?1 AND v.version > f.current_version - ?2)",
            params![digest, keep as i64],
        )?;
        Ok(removed > 0)
    }

    fn current(&self, name: &str) -> Result<Option<FunctionVersion>, StoreError> {
        Ok(self
            .select_versions(
                "SELECT v.name, v.version, v.digest, a.kind, v.config, v.created_at_ms, v.init
                 FROM functions f JOIN versions v ON v.name = f.name AND v.version = f.current_version
                 JOIN artifacts a ON a.digest = v.digest WHERE f.name = ?1",
                Some(name),
            )?
            .pop())
    }

    fn all_current(&self) -> Result<Vec<FunctionVersion>, StoreError> {
        self.select_versions(
            "SELECT v.name, v.version, v.digest, a.kind, v.config, v.created_at_ms, v.init
             FROM functions f JOIN versions v ON v.name = f.name AND v.version = f.current_version
             JOIN artifacts a ON a.digest = v.digest ORDER BY f.name",
            None,
        )
    }

    fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>, StoreError> {
        self.select_versions(
            "SELECT v.name, v.version, v.digest, a.kind, v.config, v.created_at_ms, v.init
             FROM versions v JOIN artifacts a ON a.digest = v.digest WHERE v.name = ?1 ORDER BY v.version",
            Some(name),
        )
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = tx.execute("DELETE FROM functions WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM versions WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(removed > 0)
    }
}

/// A version's columns as both registries store them: config and snapshot as JSON text.
pub(crate) struct StoredVersion {
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub kind: String,
    pub config: String,
    pub created_at_ms: i64,
    pub init: Option<String>,
}

/// The config and the snapshot of a version as stored (JSON text).
pub(crate) fn encode_version(
    config: &FunctionConfig,
    init: Option<&InitSnapshot>,
) -> Result<(String, Option<String>), StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    Ok((
        serde_json::to_string(config).map_err(corrupt)?,
        init.map(serde_json::to_string).transpose().map_err(corrupt)?,
    ))
}

/// A version from its stored columns.
pub(crate) fn decode_version(row: StoredVersion) -> Result<FunctionVersion, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    Ok(FunctionVersion {
        name: row.name,
        version: row.version as u64,
        digest: row.digest,
        kind: parse_kind(&row.kind)?,
        config: serde_json::from_str(&row.config).map_err(corrupt)?,
        created_at_ms: row.created_at_ms as u64,
        init: row.init.map(|init| serde_json::from_str(&init)).transpose().map_err(corrupt)?,
    })
}

pub(crate) fn parse_kind(kind: &str) -> Result<ArtifactKind, StoreError> {
    ArtifactKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("unknown artifact kind `{kind}`")))
}

pub(crate) fn now_ms() -> u64 {
    amphi_contract::now_unix_us() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_survive_reopen_and_delete_removes() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let registry = EmbeddedRegistry::open(&data).expect("registry");
        let info = ArtifactInfo { digest: "sha256:aa".into(), kind: ArtifactKind::CgiModule, size: 4 };
        registry.add_artifact(&info).expect("artifact");
        let v1 = registry.deploy("hello", &info.digest, &FunctionConfig::default(), None).expect("v1");
        let config = FunctionConfig { timeout_ms: 5000, ..Default::default() };
        let v2 = registry.deploy("hello", &info.digest, &config, None).expect("v2");
        assert_eq!((v1.version, v2.version), (1, 2));
        assert!(matches!(
            registry.deploy("x", "sha256:unknown", &config, None),
            Err(StoreError::UnknownArtifact(_))
        ));
        drop(registry);

        let registry = EmbeddedRegistry::open(&data).expect("reopen");
        assert_eq!(registry.versions("hello").expect("versions").len(), 2);
        assert_eq!(registry.all_current().expect("all"), vec![v2]);
        assert!(registry.delete("hello").expect("delete"));
        assert!(!registry.delete("hello").expect("again"));
        assert_eq!(registry.all_current().expect("all"), vec![]);

        // A name deployed again after a delete goes on counting, across a restart too.
        drop(registry);
        let registry = EmbeddedRegistry::open(&data).expect("reopen");
        let again = registry.deploy("hello", &info.digest, &config, None).expect("v3");
        assert_eq!(again.version, 3);
    }
}
