//! Function changes announced to every gateway: a deploy or a delete commits a `NOTIFY` on
//! [`CHANNEL`] in its own transaction, and each gateway `LISTEN`s on a connection of its own.
//! After that connection is (re)made a gateway is told to [`Change::Resync`], since notices sent
//! while it was away are lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::StoreError;

/// The notification channel.
const CHANNEL: &str = "amphi_functions";

/// What a gateway is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The function of this name was deployed, updated or deleted.
    Function(String),
    /// Notices may have been missed: compare every route with the registry.
    Resync,
}

/// Announces that `name` changed, when `tx` commits.
pub(crate) async fn notify_changed(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name]).await?;
    Ok(())
}

/// Calls `on_change` for every change announced from now on, on the store's runtime, for as
/// long as the store lives; reconnects (every second) when the connection is lost.
pub fn listen(store: &Arc<PgStore>, on_change: impl Fn(Change) + Send + Sync + 'static) {
    let config = store.config();
    store.runtime().spawn(async move {
        loop {
            if let Err(error) = listen_once(&config, &on_change).await {
                tracing::warn!(%error, "lost the function-change feed from PostgreSQL; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// One connection's worth of notices: returns when it is lost.
async fn listen_once(config: &tokio_postgres::Config, on_change: &impl Fn(Change)) -> Result<(), StoreError> {
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
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    on_change(Change::Resync);
    while let Some(name) = notices.recv().await {
        on_change(Change::Function(name));
    }
    drop(client);
    driver.await.map_err(|e| StoreError::Unavailable(format!("the change feed stopped: {e}")))?
}
