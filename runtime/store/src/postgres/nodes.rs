//! The gateways of a cluster: each registers itself at start and says it is alive every
//! [`HEARTBEAT`]; one not seen for [`GONE_AFTER`] is listed as gone.

use std::sync::Arc;
use std::time::Duration;

use super::PgStore;
use crate::StoreError;
use crate::registry::now_ms;

/// How often a gateway says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A gateway not seen for this long is gone.
pub const GONE_AFTER: Duration = Duration::from_secs(10);

/// One gateway as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Its id (stable across its restarts: its data directory's installation id).
    pub id: String,
    /// Where it serves (`host:port`).
    pub address: String,
    /// The Amphi version it runs.
    pub version: String,
    /// When it last started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it last said it was alive.
    pub last_seen_ms: u64,
    /// `up`, or `gone` when not seen for [`GONE_AFTER`].
    pub state: &'static str,
}

/// The cluster's list of gateways.
pub struct PgNodes {
    store: Arc<PgStore>,
}

impl PgNodes {
    /// The list in `store`.
    pub fn new(store: Arc<PgStore>) -> Self {
        Self { store }
    }

    /// Registers this gateway (again, after a restart). Blocking.
    pub fn register(&self, id: &str, address: &str, version: &str) -> Result<(), StoreError> {
        let (id, address, version) = (id.to_string(), address.to_string(), version.to_string());
        self.store.with_client(move |client| async move {
            let now = now_ms() as i64;
            client
                .execute(
                    "INSERT INTO nodes (id, address, version, started_at_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (id) DO UPDATE SET address = $2, version = $3, started_at_ms = $4, last_seen_ms = $4",
                    &[&id, &address, &version, &now],
                )
                .await?;
            Ok(())
        })
    }

    /// Says this gateway is alive, every [`HEARTBEAT`], on the store's runtime, for as long as the
    /// store lives; a failed beat is retried at the next.
    pub fn keep_alive(&self, id: &str) {
        let (pool, id) = (self.store.pool(), id.to_string());
        self.store.runtime().spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                beat.tick().await;
                let Ok(client) = PgStore::client(&pool).await else { continue };
                let now = now_ms() as i64;
                if let Err(error) =
                    client.execute("UPDATE nodes SET last_seen_ms = $2 WHERE id = $1", &[&id, &now]).await
                {
                    tracing::warn!(%error, "cannot tell the cluster this node is alive");
                }
            }
        });
    }

    /// Every gateway ever registered, by id. Blocking.
    pub fn list(&self) -> Result<Vec<Node>, StoreError> {
        self.store.with_client(move |client| async move {
            let rows = client
                .query("SELECT id, address, version, started_at_ms, last_seen_ms FROM nodes ORDER BY id", &[])
                .await?;
            let now = now_ms();
            Ok(rows
                .iter()
                .map(|row| {
                    let last_seen_ms = row.get::<_, i64>(4) as u64;
                    let gone = now.saturating_sub(last_seen_ms) > GONE_AFTER.as_millis() as u64;
                    Node {
                        id: row.get(0),
                        address: row.get(1),
                        version: row.get(2),
                        started_at_ms: row.get::<_, i64>(3) as u64,
                        last_seen_ms,
                        state: if gone { "gone" } else { "up" },
                    }
                })
                .collect())
        })
    }
}
