//! The connection pool and the handles built on it.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use dispatcher_core::ports::StoreError;

use crate::error;
use crate::wakeup::Wakeups;
use crate::{LeaderSession, PgEvents, PgLabels};

/// Pool sizing and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most open connections.
    pub max_size: usize,
    /// Time allowed to open one connection.
    pub connect_timeout: Duration,
    /// Time a caller waits for a free connection before `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 10,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A pooled PostgreSQL database.
#[derive(Clone)]
pub struct Database {
    pool: Pool<AsyncPgConnection>,
    wakeups: Wakeups,
    url: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Builds the pool; connections are opened lazily, so this does not fail
    /// when the database is down (the status endpoint reports that). Call it
    /// inside a tokio runtime: it starts the task that sends wake-ups.
    pub fn connect(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let mut config = ManagerConfig::default();
        // Broken connections are detected by the driver; a round trip per
        // checkout would cost more than the occasional retry after a restart.
        config.recycling_method = RecyclingMethod::Fast;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(options.max_size)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let wakeups = Wakeups::start(pool.clone());
        Ok(Self {
            pool,
            wakeups,
            url: url.to_owned(),
            connect_timeout: options.connect_timeout,
        })
    }

    /// The event repository used by the HTTP layer.
    pub fn events(&self) -> PgEvents {
        PgEvents::new(self.clone())
    }

    /// Label intents, for the label worker.
    pub fn labels(&self) -> PgLabels {
        PgLabels::new(self.clone())
    }

    /// Tries to become the active dispatcher: `Some` while this replica holds
    /// the lock (it is released when the session is dropped or its connection dies).
    pub async fn try_lead(
        &self,
        labels_enabled: bool,
    ) -> Result<Option<LeaderSession>, StoreError> {
        LeaderSession::try_acquire(&self.url, self.connect_timeout, labels_enabled).await
    }

    /// Wakes the active dispatcher (after a delivery committed).
    pub(crate) fn wake_dispatcher(&self) {
        self.wakeups.wake();
    }

    pub(crate) async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(error::pool)
    }
}
