//! This gateway as one node of a cluster sharing a PostgreSQL store (`amphi serve --store`).
//!
//! At start it registers itself in the store's list of nodes and says it is alive every few
//! seconds; it follows the changes other gateways announce, so a function deployed or deleted
//! anywhere is routed here at once (a full comparison with the registry whenever the change feed
//! is (re)connected). An embedded gateway is a cluster of one: `GET /v1/nodes` lists itself.

use std::net::SocketAddr;
use std::sync::Arc;

use amphi_contract::Problem;
use amphi_store::StoreError;
use amphi_store::postgres::PgStore;
use amphi_store::postgres::changes::{self, Change};
use amphi_store::postgres::nodes::{Node, PgNodes};

use crate::GatewayError;
use crate::platform::{Platform, blocking, stored};

/// The cluster a gateway belongs to.
pub struct Cluster {
    store: Arc<PgStore>,
    nodes: PgNodes,
    node_id: String,
}

impl Cluster {
    /// This node (`node_id`) of the cluster sharing `store`.
    pub fn new(store: Arc<PgStore>, node_id: String) -> Self {
        Self { nodes: PgNodes::new(store.clone()), store, node_id }
    }
}

/// Registers this gateway, serving on `address`, and follows the cluster's changes.
pub async fn join(platform: &Arc<Platform>, address: SocketAddr) -> Result<(), GatewayError> {
    let _ = platform.serving.set((address, amphi_contract::now_unix_us() / 1000));
    let Some(cluster) = &platform.cluster else { return Ok(()) };
    let (id, nodes) = (cluster.node_id.clone(), PgNodes::new(cluster.store.clone()));
    tokio::task::spawn_blocking(move || nodes.register(&id, &address.to_string(), env!("CARGO_PKG_VERSION")))
        .await
        .map_err(|e| StoreError::Unavailable(format!("registering this node: {e}")))??;
    cluster.nodes.keep_alive(&cluster.node_id);

    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    changes::listen(&cluster.store, move |change| {
        let _ = sender.send(change);
    });
    let platform = Arc::downgrade(platform);
    tokio::spawn(async move {
        while let Some(change) = received.recv().await {
            let Some(platform) = platform.upgrade() else { return };
            if let Err(problem) = blocking(move || follow(&platform, change).map_err(stored)).await {
                tracing::warn!(detail = %problem.detail, "cannot follow a change of the cluster's functions");
            }
        }
    });
    Ok(())
}

/// Brings the route table in line with the registry after `change`. Blocking.
fn follow(platform: &Platform, change: Change) -> Result<(), StoreError> {
    match change {
        Change::Function(name) => {
            let current = platform.registry().current(&name)?;
            platform.follow_registry(&name, current);
        }
        Change::Resync => {
            let current = platform.registry().all_current()?;
            let mut gone: std::collections::HashSet<String> = platform.routed_names().into_iter().collect();
            for function in current {
                gone.remove(&function.name);
                let name = function.name.clone();
                platform.follow_registry(&name, Some(function));
            }
            for name in gone {
                platform.follow_registry(&name, None);
            }
        }
    }
    Ok(())
}

/// The gateways sharing this one's store (this one alone when the store is embedded).
pub async fn nodes(platform: &Arc<Platform>) -> Result<Vec<Node>, Problem> {
    let Some(cluster) = &platform.cluster else {
        let now = amphi_contract::now_unix_us() / 1000;
        let (address, started_at_ms) =
            platform.serving.get().copied().unwrap_or((platform.config.listen, now));
        let reader = platform.clone();
        let id = blocking(move || reader.installation_id().map_err(stored)).await?;
        return Ok(vec![Node {
            id,
            address: address.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms,
            last_seen_ms: now,
            state: "up",
        }]);
    };
    let nodes = PgNodes::new(cluster.store.clone());
    blocking(move || nodes.list().map_err(stored)).await
}
