//! This gateway as one node of a cluster sharing a PostgreSQL store (`amphi serve --store`).
//!
//! At start it registers itself in the store's list of nodes and says it is alive every few
//! seconds; it follows the changes other gateways announce, so a function deployed or deleted
//! anywhere is routed here at once (a full comparison with the registry whenever the change feed
//! is (re)connected, and every [`RESYNC_EVERY`] in case a notice was lost without the connection
//! failing). A call to a function this gateway has no route for asks the store first
//! ([`route`]), so a deploy acknowledged elsewhere is served here even before its notice arrives.
//! Jobs queued anywhere wake this gateway's executor too, so every node runs a share. Records
//! and log lines are kept by each gateway's own log store first and shipped to the shared store,
//! which every gateway reads ([`Cluster::ship_logs`]).
//! An embedded gateway is a cluster of one: `GET /v1/nodes` lists itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amphi_contract::Problem;
use amphi_contract::record::LogLine;
use amphi_store::StoreError;
use amphi_store::logs::{InvocationQuery, LogQuery, LogReader, LogStore, StoredRecord};
use amphi_store::postgres::PgStore;
use amphi_store::postgres::changes::{self, Change};
use amphi_store::postgres::logs::PgLogs;
use amphi_store::postgres::nodes::{Node, PgNodes};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::GatewayError;
use crate::platform::{Platform, Route, blocking, stored};

/// How often the routes are compared with the registry, whatever the change feed said.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long a name the store does not know is remembered as unknown, so calls to unknown names
/// do not each reach the store.
const UNKNOWN_FOR: Duration = Duration::from_secs(1);

/// How often records and lines past the log store's limits are removed from the shared store.
const LOG_RETENTION_EVERY: Duration = Duration::from_secs(600);

/// The cluster a gateway belongs to.
pub struct Cluster {
    store: Arc<PgStore>,
    nodes: Arc<PgNodes>,
    node_id: String,
    unknown: moka::sync::Cache<String, ()>,
    /// Counts the batches of records and lines any gateway shipped, so followers read them.
    logs_shipped: tokio::sync::watch::Sender<u64>,
    /// Asks the other gateways about their instances.
    peers: Client<HttpConnector, Full<Bytes>>,
    /// The cluster's records and lines.
    logs: PgLogs,
}

impl Cluster {
    /// This node (`node_id`) of the cluster sharing `store`.
    pub fn new(store: Arc<PgStore>, node_id: String) -> Self {
        let unknown = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(UNKNOWN_FOR).build();
        Self {
            nodes: Arc::new(PgNodes::new(store.clone())),
            logs: PgLogs::new(store.clone()),
            store,
            node_id,
            unknown,
            logs_shipped: tokio::sync::watch::Sender::new(0),
            peers: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Ships what `local` commits to the shared store, and returns the reader of the cluster's
    /// records and lines.
    pub fn ship_logs(&self, local: &Arc<LogStore>) -> Arc<dyn LogReader> {
        self.logs.ship_from(local.clone(), self.node_id.clone());
        Arc::new(ClusterLogs { shared: self.logs.clone(), local: local.clone() })
    }

    /// Told whenever a gateway of the cluster shipped records or lines.
    pub fn logs_shipped(&self) -> tokio::sync::watch::Receiver<u64> {
        self.logs_shipped.subscribe()
    }
}

/// The cluster's records and lines, read from the shared store; one invocation a client asks for
/// that is not shipped yet (its own call, read at once) or a read while the shared store is away
/// is answered from this gateway's own log store.
struct ClusterLogs {
    shared: PgLogs,
    local: Arc<LogStore>,
}

impl LogReader for ClusterLogs {
    fn logs(&self, query: &LogQuery) -> Result<Vec<LogLine>, StoreError> {
        // Positions are the shared store's: a page past one is never answered locally.
        let paging = query.after_seq.is_some();
        match self.shared.logs(query) {
            Ok(lines) if lines.is_empty() && query.invocation_id.is_some() && !paging => {
                self.local.logs(query)
            }
            Err(error) if error.is_transient() && !paging => self.local.logs(query),
            read => read,
        }
    }

    fn invocations(&self, query: &InvocationQuery) -> Result<Vec<StoredRecord>, StoreError> {
        let paging = query.after_seq.is_some();
        match self.shared.invocations(query) {
            Ok(records) if records.is_empty() && query.id.is_some() => self.local.invocations(query),
            Err(error) if error.is_transient() && !paging => self.local.invocations(query),
            read => read,
        }
    }
}

/// Where calls of `name` go: the route table's entry, or, in a cluster, the function's current
/// version in the store when this gateway has no route for it yet.
pub async fn route(platform: &Arc<Platform>, name: &str) -> Option<Route> {
    if let Some(route) = platform.route(name) {
        return Some(route);
    }
    let cluster = platform.cluster.as_ref()?;
    if cluster.unknown.contains_key(name) {
        return None;
    }
    let (looking, key) = (platform.clone(), name.to_string());
    match blocking(move || looking.registry().current(&key).map_err(stored)).await {
        Ok(Some(function)) => {
            platform.follow_registry(name, Some(function));
            platform.route(name)
        }
        Ok(None) => {
            cluster.unknown.insert(name.to_string(), ());
            None
        }
        // The store is away: the function is unknown here, as it was.
        Err(_) => None,
    }
}

/// Registers this gateway, serving on `address`, and follows the cluster's changes.
pub async fn join(platform: &Arc<Platform>, address: SocketAddr) -> Result<(), GatewayError> {
    let _ = platform.serving.set((address, amphi_contract::now_unix_us() / 1000));
    let Some(cluster) = &platform.cluster else { return Ok(()) };
    let (id, nodes) = (cluster.node_id.clone(), cluster.nodes.clone());
    tokio::task::spawn_blocking(move || nodes.register(&id, &address.to_string(), env!("CARGO_PKG_VERSION")))
        .await
        .map_err(|e| StoreError::Unavailable(format!("registering this node: {e}")))??;
    cluster.nodes.keep_alive(&cluster.node_id);

    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let resync = sender.clone();
    changes::listen(&cluster.store, changes::FUNCTIONS, move |change| {
        let _ = sender.send(change);
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RESYNC_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            if resync.send(Change::Resync).is_err() {
                return;
            }
        }
    });
    follow_jobs(platform, cluster);
    let schedules = Arc::downgrade(platform);
    changes::listen(&cluster.store, changes::SCHEDULES, move |_| {
        if let Some(platform) = schedules.upgrade() {
            platform.jobs.schedules_changed();
        }
    });
    let shipped = cluster.logs_shipped.clone();
    changes::listen(&cluster.store, changes::LOGS, move |_| {
        shipped.send_modify(|batches| *batches += 1);
    });
    purge_shared_logs(platform, cluster);
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

/// Removes records and lines past the log store's limits from the shared store, every
/// [`LOG_RETENTION_EVERY`] (each gateway does; the deletes are idempotent).
fn purge_shared_logs(platform: &Arc<Platform>, cluster: &Cluster) {
    let shared = cluster.logs.clone();
    let platform = Arc::downgrade(platform);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOG_RETENTION_EVERY);
        loop {
            every.tick().await;
            let Some(platform) = platform.upgrade() else { return };
            let limits = platform.config.logs.clone();
            drop(platform);
            let shared = shared.clone();
            let before = amphi_contract::now_unix_us().saturating_sub(limits.retention.as_micros() as u64);
            let purged = blocking(move || {
                shared.purge(before, limits.max_invocations, limits.max_lines).map_err(stored)
            });
            if let Err(problem) = purged.await {
                tracing::warn!(detail = %problem.detail, "cannot remove old records and lines from the shared store");
            }
        }
    });
}

/// Wakes this gateway's executor for every job another gateway queued (or released from a gone
/// node), so the cluster's executors share the work; after a (re)connection, for every function
/// with queued jobs.
fn follow_jobs(platform: &Arc<Platform>, cluster: &Cluster) {
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    changes::listen(&cluster.store, changes::JOBS, move |change| {
        let _ = sender.send(change);
    });
    let platform = Arc::downgrade(platform);
    tokio::spawn(async move {
        while let Some(change) = received.recv().await {
            let Some(platform) = platform.upgrade() else { return };
            match change {
                Change::Function(name) => platform.jobs.wake(&platform, &name),
                Change::Resync => crate::jobs::executor::start(&platform),
            }
        }
    });
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

/// How long a node's answer about its instances is waited for.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Every node's instances of `name`: this node's from `described` (its own describe), the other
/// live nodes' asked of them (`?scope=node`) with the caller's `credentials`, at once. A node that
/// does not answer is listed with the reason.
pub async fn instances_by_node(
    platform: &Arc<Platform>,
    name: &str,
    described: &serde_json::Value,
    credentials: Option<http::HeaderValue>,
) -> Result<Vec<serde_json::Value>, Problem> {
    let Some(cluster) = &platform.cluster else { return Ok(Vec::new()) };
    let asked = nodes(platform).await?.into_iter().filter(|node| node.state == "up").map(|node| {
        let credentials = credentials.clone();
        async move {
            let mut entry = serde_json::json!({ "id": node.id, "address": node.address });
            if node.id == cluster.node_id {
                entry["instances"] = described["instances"].clone();
                return entry;
            }
            match ask_instances(cluster, &node.address, name, credentials).await {
                Ok(instances) => entry["instances"] = instances,
                Err(why) => entry["error"] = why.into(),
            }
            entry
        }
    });
    Ok(futures::future::join_all(asked).await)
}

/// The instances of `name` on the gateway at `address`.
async fn ask_instances(
    cluster: &Cluster,
    address: &str,
    name: &str,
    credentials: Option<http::HeaderValue>,
) -> Result<serde_json::Value, String> {
    let mut request = http::Request::get(format!("http://{address}/v1/functions/{name}?scope=node"));
    if let Some(credentials) = credentials {
        request = request.header(http::header::AUTHORIZATION, credentials);
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let asked = async {
        let response = cluster.peers.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("it answered {status}: {}", String::from_utf8_lossy(&body)));
        }
        let described: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(described["instances"].clone())
    };
    tokio::time::timeout(PEER_TIMEOUT, asked).await.map_err(|_| "it did not answer in time".to_string())?
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
    let nodes = cluster.nodes.clone();
    blocking(move || nodes.list().map_err(stored)).await
}
