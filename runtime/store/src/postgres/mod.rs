//! The networked store: PostgreSQL, shared by every gateway of a cluster (`amphi serve --store
//! postgres://…`).
//!
//! One [`PgStore`] per process holds a connection pool (`deadpool-postgres` over
//! `tokio-postgres`) on a small runtime of its own, so the blocking API the rest of the store
//! offers (called off the async threads, like SQLite) waits on PostgreSQL without entering the
//! caller's runtime. Versioned migrations (`refinery`, `migrations/postgres/`) are applied at
//! open under an advisory lock, so gateways starting at once apply each exactly once.
//!
//! - [`registry`]: functions, versions and artifact metadata ([`crate::registry::Registry`]);
//! - [`chunks`]: artifact bytes, content-addressed, in chunks;
//! - [`nodes`]: the gateways of the cluster and when each was last seen;
//! - [`changes`]: `LISTEN`/`NOTIFY` on function changes, so every gateway routes a deploy at once;
//! - [`logs`]: the records and log lines every gateway ships from its own log store;
//! - [`settings`]: what every gateway shares, such as the admin token.
//!
//! The job queue's tables are migrated here too (one schema, one migration history); the queue
//! itself is `amphi_queue::postgres`, on [`PgStore::run`].

pub mod changes;
pub mod chunks;
pub mod logs;
pub mod nodes;
pub mod registry;
pub mod settings;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Any number the cluster's gateways agree on: the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x616d_7068_6921;

/// How long a store call waits for a connection or an answer before it fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one [`PgStore::run`] may take, transaction and all.
const WORK_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a starting gateway waits for a PostgreSQL that is not accepting connections yet (a
/// cluster and its database started together).
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A connection pool to the cluster's PostgreSQL.
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// Taken on drop: a runtime dropped on an async thread must be shut down in the background.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`), applies the migrations not applied yet, and
    /// returns the store. Blocking.
    pub fn connect(url: &str) -> Result<Arc<Self>, StoreError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Unavailable(format!("invalid store URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("amphi-postgres")
            .enable_all()
            .build()
            .map_err(StoreError::io("starting the PostgreSQL client threads"))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(16)
                .wait_timeout(Some(CALL_TIMEOUT))
                .create_timeout(Some(CALL_TIMEOUT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Unavailable(format!("cannot make the connection pool: {e}")))?
        };
        let store = Arc::new(Self { pool, config, handle: runtime.handle().clone(), runtime: Some(runtime) });
        let started = std::time::Instant::now();
        loop {
            match store.migrate() {
                Err(error) if error.is_transient() && started.elapsed() < START_PATIENCE => {
                    tracing::warn!(%error, "PostgreSQL is not accepting connections yet; trying again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                done => return done.map(|()| store),
            }
        }
    }

    /// Applies the migrations not applied yet, one gateway at a time.
    fn migrate(&self) -> Result<(), StoreError> {
        let config = self.config.clone();
        self.block(async move {
            let (mut client, connection) = config.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
            let applied = embedded::migrations::runner().run_async(&mut client).await;
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
            drop(client);
            let _ = driver.await;
            applied.map(drop).map_err(|e| StoreError::Unavailable(format!("migrating the store: {e}")))
        })
    }

    /// Runs `work` on the store's runtime and waits for it on this thread, whatever thread it
    /// is (never an async one, except at start-up).
    pub(crate) fn block<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = sender.send(work.await);
        });
        receiver.recv().map_err(|_| StoreError::Unavailable("the PostgreSQL client stopped".into()))?
    }

    /// Runs `work` with a pooled connection on the store's runtime, blocking this thread until
    /// it is done.
    pub fn with_client<T, F>(
        &self,
        work: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.block(async move { work(Self::client(&pool).await?).await })
    }

    /// Runs `work` with a pooled connection on the store's runtime, and waits for it from any
    /// runtime: the async counterpart of [`PgStore::with_client`], for callers on async threads.
    /// A call that takes longer than [`WORK_TIMEOUT`] fails as unavailable (its transaction, if
    /// it had not committed yet, is rolled back when its connection is dropped).
    pub async fn run<T, E, F>(
        &self,
        work: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let task = self.runtime().spawn(async move {
            let client = Self::client(&pool).await?;
            match tokio::time::timeout(WORK_TIMEOUT, work(client)).await {
                Ok(done) => done,
                Err(_) => Err(StoreError::Unavailable("PostgreSQL did not answer in time".into()).into()),
            }
        });
        task.await.map_err(|e| StoreError::Unavailable(format!("the PostgreSQL client stopped: {e}")))?
    }

    /// A pooled connection.
    pub(crate) async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
        pool.get().await.map_err(|e| StoreError::Unavailable(format!("no connection to PostgreSQL: {e}")))
    }

    /// The pool, for background work on the store's runtime.
    pub(crate) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// The connection settings, for connections of their own (`LISTEN`).
    pub(crate) fn config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    /// The store's runtime, for its background tasks.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl StoreError {
    /// Whether trying again later may work: the store is away (not reachable, starting up or
    /// shutting down).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // A closed connection, or a server starting up or shutting down, is the store being away,
        // not bad data.
        let starting_or_stopping = error.code().is_some_and(|code| {
            [
                tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW,
                tokio_postgres::error::SqlState::ADMIN_SHUTDOWN,
            ]
            .contains(code)
        });
        if error.is_closed() || error.as_db_error().is_none() || starting_or_stopping {
            StoreError::Unavailable(format!("PostgreSQL: {error}"))
        } else {
            StoreError::Postgres(error)
        }
    }
}
