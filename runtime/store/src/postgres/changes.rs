//! Changes announced to every gateway: a deploy or a delete commits a `NOTIFY` on [`FUNCTIONS`]
//! in its own transaction, a new or re-queued job one on [`JOBS`], and each gateway `LISTEN`s on
//! a connection of its own per channel. After that connection is (re)made a gateway is told to
//! [`Change::Resync`], since notices sent while it was away are lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::StoreError;

/// The channel of function changes: the payload is the function's name.
pub const FUNCTIONS: &str = "amphi_functions";
/// The channel of jobs to run: the payload is the name of the function that has a job due.
pub const JOBS: &str = "amphi_jobs";
/// The channel of schedules put or deleted: the payload is the schedule's name.
pub const SCHEDULES: &str = "amphi_schedules";
/// The channel of records and log lines shipped: a batch was committed (no payload).
pub const LOGS: &str = "amphi_logs";

/// What a gateway is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The function of this name was deployed, updated or deleted ([`FUNCTIONS`]), or has a job
    /// to run ([`JOBS`]).
    Function(String),
    /// Notices may have been missed: compare every route with the registry.
    Resync,
}

/// Announces on `channel` that `name` changed, when `tx` commits.
pub async fn notify(
    tx: &tokio_postgres::Transaction<'_>,
    channel: &str,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &name]).await?;
    Ok(())
}

/// Calls `on_change` for every change announced on `channel` from now on, on the store's
/// runtime, for as long as the store lives; reconnects (every second) when the connection is lost.
pub fn listen(
    store: &Arc<PgStore>,
    channel: &'static str,
    on_change: impl Fn(Change) + Send + Sync + 'static,
) {
    let config = store.config();
    store.runtime().spawn(async move {
        loop {
            if let Err(error) = listen_once(&config, channel, &on_change).await {
                tracing::warn!(%error, channel, "lost a change feed from PostgreSQL; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// One connection's worth of notices: returns when it is lost.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    on_change: &impl Fn(Change),
) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notice)) => {
                    if sender.send(notice.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(StoreError::from(error)),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    on_change(Change::Resync);
    while let Some(name) = notices.recv().await {
        on_change(Change::Function(name));
    }
    drop(client);
    driver.await.map_err(|e| StoreError::Unavailable(format!("the change feed stopped: {e}")))?
}
