//! Artifact bytes in PostgreSQL, content-addressed: what one gateway uploads every other can
//! load. Each gateway keeps a copy in its data directory as a cache ([`crate::artifacts`]).

use std::sync::Arc;

use super::PgStore;
use crate::StoreError;

/// Largest chunk of one row.
const CHUNK: usize = 1 << 20;

/// The cluster's artifact bytes.
pub struct PgChunks {
    store: Arc<PgStore>,
}

impl PgChunks {
    /// The chunks in `store`.
    pub fn new(store: Arc<PgStore>) -> Self {
        Self { store }
    }

    /// Stores `bytes` under `digest` (once: a digest names one content). Blocking.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let (digest, bytes) = (digest.to_string(), bytes.to_vec());
        self.store.with_client(move |mut client| async move {
            let tx = client.transaction().await?;
            let present = tx.query_opt("SELECT 1 FROM artifact_chunks WHERE digest = $1 AND seq = 0", &[&digest]).await?;
            if present.is_none() {
                let insert = tx.prepare("INSERT INTO artifact_chunks (digest, seq, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING").await?;
                // An empty artifact is one empty chunk, so its presence is still recorded.
                let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(CHUNK).collect() };
                for (seq, chunk) in chunks.into_iter().enumerate() {
                    tx.execute(&insert, &[&digest, &(seq as i32), &chunk]).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The bytes stored under `digest`, if any. Blocking.
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            let rows = client
                .query("SELECT bytes FROM artifact_chunks WHERE digest = $1 ORDER BY seq", &[&digest])
                .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            for row in rows {
                bytes.extend_from_slice(row.get::<_, &[u8]>(0));
            }
            Ok(Some(bytes))
        })
    }

    /// Whether bytes are stored under `digest`. Blocking.
    pub fn has(&self, digest: &str) -> Result<bool, StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            Ok(client
                .query_opt("SELECT 1 FROM artifact_chunks WHERE digest = $1 AND seq = 0", &[&digest])
                .await?
                .is_some())
        })
    }

    /// Removes the bytes under `digest`. Blocking.
    pub fn remove(&self, digest: &str) -> Result<(), StoreError> {
        let digest = digest.to_string();
        self.store.with_client(move |client| async move {
            client.execute("DELETE FROM artifact_chunks WHERE digest = $1", &[&digest]).await?;
            Ok(())
        })
    }
}
