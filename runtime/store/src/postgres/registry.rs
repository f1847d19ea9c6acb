//! The function registry in PostgreSQL: the same rows and rules as the embedded one, shared by
//! every gateway. Each deploy is one transaction; a committed one is durable (PostgreSQL's own
//! `synchronous_commit`) before it is acknowledged, and announced on [`super::changes`].

use std::sync::Arc;

use amphi_contract::function::{FunctionConfig, FunctionVersion, InitSnapshot};
use tokio_postgres::Row;

use super::PgStore;
use super::changes::{self, notify};
use crate::StoreError;
use crate::registry::{
    ArtifactInfo, Registry, StoredVersion, decode_version, encode_version, now_ms, parse_kind,
};

/// The registry of a cluster.
pub struct PgRegistry {
    store: Arc<PgStore>,
}

impl PgRegistry {
    /// The registry in `store`.
    pub fn new(store: Arc<PgStore>) -> Self {
        Self { store }
    }
}

const SELECT_VERSION: &str = "SELECT v.name, v.version, v.digest, a.kind, v.config, v.created_at_ms, v.init
     FROM versions v JOIN artifacts a ON a.digest = v.digest";

impl Registry for PgRegistry {
    fn add_artifact(&self, info: &ArtifactInfo) -> Result<(), StoreError> {
        let info = info.clone();
        self.store.with_client(move |client| async move {
            client
                .execute(
                    "INSERT INTO artifacts (digest, kind, size, created_at_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (digest) DO NOTHING",
                    &[&info.digest, &info.kind.as_str(), &(info.size as i64), &(now_ms() as i64)],
                )
                .await?;
            Ok(())
        })
    }

    fn artifact_uploaded_again(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            let row = client
                .query_opt(
                    "UPDATE artifacts SET created_at_ms = $2 WHERE digest = $1 RETURNING kind, size",
                    &[&digest, &(now_ms() as i64)],
                )
                .await?;
            row.map(|row| artifact_of(digest, row.get(0), row.get(1))).transpose()
        })
    }

    fn artifact(&self, digest: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            let row =
                client.query_opt("SELECT kind, size FROM artifacts WHERE digest = $1", &[&digest]).await?;
            row.map(|row| artifact_of(digest, row.get(0), row.get(1))).transpose()
        })
    }

    fn deploy(
        &self,
        name: &str,
        digest: &str,
        config: &FunctionConfig,
        init: Option<&InitSnapshot>,
    ) -> Result<FunctionVersion, StoreError> {
        let (config_json, init_json) = encode_version(config, init)?;
        let (name, digest, config, init) =
            (name.to_string(), digest.to_string(), config.clone(), init.cloned());
        self.store.with_client(move |mut client| async move {
            let tx = client.transaction().await?;
            // One deploy of a name at a time across the cluster: the version numbers stay dense.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&name]).await?;
            let kind: String = tx
                .query_opt("SELECT kind FROM artifacts WHERE digest = $1", &[&digest])
                .await?
                .ok_or_else(|| StoreError::UnknownArtifact(digest.clone()))?
                .get(0);
            let version: i64 = tx
                .query_one(
                    "SELECT GREATEST(COALESCE((SELECT MAX(version) FROM versions WHERE name = $1), 0),
                                     COALESCE((SELECT last_version FROM version_marks WHERE name = $1), 0)) + 1",
                    &[&name],
                )
                .await?
                .get(0);
            tx.execute(
                "INSERT INTO version_marks (name, last_version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
                &[&name, &version],
            )
            .await?;
            let created_at_ms = now_ms();
            tx.execute(
                "INSERT INTO versions (name, version, digest, config, created_at_ms, init)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&name, &version, &digest, &config_json, &(created_at_ms as i64), &init_json],
            )
            .await?;
            tx.execute(
                "INSERT INTO functions (name, current_version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET current_version = excluded.current_version",
                &[&name, &version],
            )
            .await?;
            notify(&tx, changes::FUNCTIONS, &name).await?;
            tx.commit().await?;
            Ok(FunctionVersion {
                name,
                version: version as u64,
                digest,
                kind: parse_kind(&kind)?,
                config,
                created_at_ms,
                init,
            })
        })
    }

    fn unreferenced_artifacts(&self, before_ms: u64, keep: u64) -> Result<Vec<ArtifactInfo>, StoreError> {
        self.store.with_client(move |client| async move {
            let rows = client
                .query(
                    "SELECT a.digest, a.kind, a.size FROM artifacts a WHERE a.created_at_ms < $1 AND NOT EXISTS (
                         SELECT 1 FROM versions v JOIN functions f ON f.name = v.name
                         WHERE v.digest = a.digest AND v.version > f.current_version - $2)",
                    &[&(before_ms as i64), &(keep as i64)],
                )
                .await?;
            rows.iter().map(|row| artifact_of(row.get(0), row.get(1), row.get(2))).collect()
        })
    }

    fn remove_artifact_if_unused(&self, digest: &str, keep: u64) -> Result<bool, StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            let removed = client
                .execute(
                    "DELETE FROM artifacts WHERE digest = $1 AND NOT EXISTS (
                         SELECT 1 FROM versions v JOIN functions f ON f.name = v.name
                         WHERE v.digest = $1 AND v.version > f.current_version - $2)",
                    &[&digest, &(keep as i64)],
                )
                .await?;
            Ok(removed > 0)
        })
    }

    fn all_current(&self) -> Result<Vec<FunctionVersion>, StoreError> {
        self.store.with_client(move |client| async move {
            let sql = format!(
                "{SELECT_VERSION} JOIN functions f ON f.name = v.name AND f.current_version = v.version
                 ORDER BY v.name"
            );
            client.query(&sql, &[]).await?.iter().map(version_of).collect()
        })
    }

    fn current(&self, name: &str) -> Result<Option<FunctionVersion>, StoreError> {
        let name = name.to_string();
        self.store.with_client(move |client| async move {
            let sql = format!(
                "{SELECT_VERSION} JOIN functions f ON f.name = v.name AND f.current_version = v.version
                 WHERE v.name = $1"
            );
            client.query_opt(&sql, &[&name]).await?.as_ref().map(version_of).transpose()
        })
    }

    fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>, StoreError> {
        let name = name.to_string();
        self.store.with_client(move |client| async move {
            let sql = format!("{SELECT_VERSION} WHERE v.name = $1 ORDER BY v.version");
            client.query(&sql, &[&name]).await?.iter().map(version_of).collect()
        })
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.store.with_client(move |mut client| async move {
            let tx = client.transaction().await?;
            let removed = tx.execute("DELETE FROM functions WHERE name = $1", &[&name]).await?;
            tx.execute("DELETE FROM versions WHERE name = $1", &[&name]).await?;
            notify(&tx, changes::FUNCTIONS, &name).await?;
            tx.commit().await?;
            Ok(removed > 0)
        })
    }
}

fn artifact_of(digest: String, kind: String, size: i64) -> Result<ArtifactInfo, StoreError> {
    Ok(ArtifactInfo { digest, kind: parse_kind(&kind)?, size: size as u64 })
}

fn version_of(row: &Row) -> Result<FunctionVersion, StoreError> {
    decode_version(StoredVersion {
        name: row.get(0),
        version: row.get(1),
        digest: row.get(2),
        kind: row.get(3),
        config: row.get(4),
        created_at_ms: row.get(5),
        init: row.get(6),
    })
}
