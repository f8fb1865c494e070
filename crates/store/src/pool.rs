//! The connection pool and the handles built on it.

use std::sync::Arc;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::ports::{RecordOutcome, StoreError};
use futures_util::FutureExt;

use crate::connect::{self, ConnectionOptions};
use crate::error;
use crate::intake::IntakeBatches;
use crate::leader::LeaderOptions;
use crate::wakeup::Wakeups;
use crate::{LeaderSession, PgCatchUp, PgEvents, PgLabels, PgRetention};

/// Pool sizing and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most open connections.
    pub max_size: usize,
    /// Time a caller waits for a free connection before `Unavailable`.
    pub acquire_timeout: Duration,
    /// How each connection (pooled, and the leader session) is opened.
    pub connection: ConnectionOptions,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 10,
            acquire_timeout: Duration::from_secs(5),
            connection: ConnectionOptions::default(),
        }
    }
}

/// The pool's connections at one moment (for the pool gauges of `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Open connections (at most `max_size`; opened lazily, kept once open).
    pub size: usize,
    /// The pool's limit (`database.pool_size`).
    pub max_size: usize,
    /// Open connections checked out by a request or task right now.
    pub in_use: usize,
}

/// A pooled PostgreSQL database.
#[derive(Clone)]
pub struct Database {
    pool: Pool<AsyncPgConnection>,
    wakeups: Wakeups,
    intake: IntakeBatches,
    /// Parsed URL with the connection options and TLS applied (holds the
    /// password: never logged).
    config: Arc<connect::Target>,
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
    /// when the database is down (the status endpoint reports that), only
    /// when `url` is invalid ([`StoreError::Query`]). Call it inside a tokio
    /// runtime: it starts the task that sends wake-ups.
    pub fn connect(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let config = Arc::new(connect::config(url, &options.connection)?);
        let connect_timeout = options.connection.connect_timeout;
        let mut manager_config = ManagerConfig::default();
        // Broken connections are detected by the driver; a round trip per
        // checkout would cost more than the occasional retry after a restart.
        manager_config.recycling_method = RecyclingMethod::Fast;
        let setup_config = Arc::clone(&config);
        manager_config.custom_setup = Box::new(move |_url| {
            let config = Arc::clone(&setup_config);
            async move {
                connect::open(&config, connect_timeout)
                    .await
                    .map_err(|e| ConnectionError::BadConnection(e.to_string()))
            }
            .boxed()
        });
        // The setup above connects with the parsed config; the manager needs
        // no copy of the URL (and its password).
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            "postgres://",
            manager_config,
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_size)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let wakeups = Wakeups::start(pool.clone());
        let intake = IntakeBatches::start(pool.clone(), wakeups.clone());
        Ok(Self {
            pool,
            wakeups,
            intake,
            config,
            connect_timeout,
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

    /// Queue statuses (`github.queue_status`), for the status worker.
    pub fn queue_statuses(&self) -> crate::PgQueueStatus {
        crate::PgQueueStatus::new(self.clone())
    }

    /// Retention of finished events (deletes in short batches).
    pub fn retention(&self) -> PgRetention {
        PgRetention::new(self.clone())
    }

    /// Cursors and redelivery requests of the catch-up of missed deliveries.
    pub fn catch_up(&self) -> PgCatchUp {
        PgCatchUp::new(self.clone())
    }

    /// Pending PipelineRun cancellations, for the cancel worker.
    pub fn run_cancels(&self) -> crate::cancels::PgRunCancels {
        crate::cancels::PgRunCancels::new(self.clone())
    }

    /// Tries to become the active dispatcher: `Some` while this replica holds
    /// the lock (it is released when the session is dropped, its connection
    /// dies, or PostgreSQL ends the session after `options.idle_session_timeout`
    /// without a round trip). Opens a dedicated connection, with the pool's
    /// connection options, on every call.
    ///
    /// Errors: [`StoreError::Unavailable`] when the server cannot be reached.
    pub async fn try_lead(
        &self,
        labels_enabled: bool,
        options: LeaderOptions,
    ) -> Result<Option<LeaderSession>, StoreError> {
        LeaderSession::try_acquire(
            &self.config,
            self.connect_timeout,
            labels_enabled,
            options,
            self.wakeups.local(),
        )
        .await
    }

    /// The pool's connections right now (cheap: no I/O). The leader session's
    /// dedicated connection is not part of the pool.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            size: status.size,
            max_size: status.max_size,
            // `available` counts idle connections; saturating in case a
            // connection is being returned while the status is read.
            in_use: status.size.saturating_sub(status.available),
        }
    }

    /// Wakes the active dispatcher (after a delivery committed).
    pub(crate) fn wake_dispatcher(&self) {
        self.wakeups.wake();
    }

    /// Stores one delivery, grouped with concurrent ones.
    pub(crate) async fn record_event(&self, event: NewEvent) -> Result<RecordOutcome, StoreError> {
        self.intake.record(event, &self.pool, &self.wakeups).await
    }

    pub(crate) async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(error::pool)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use diesel_async::RunQueryDsl;
    use dispatcher_testdb::TestDatabase;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn statement_timeout_stops_long_statements_on_pool_connections() {
        let t = TestDatabase::new();
        let db = Database::connect(
            t.url(),
            PoolOptions {
                connection: ConnectionOptions {
                    statement_timeout: Some(Duration::from_millis(200)),
                    ..ConnectionOptions::default()
                },
                ..PoolOptions::default()
            },
        )
        .unwrap();
        let mut conn = db.conn().await.unwrap();
        let status = db.pool_status();
        assert_eq!((status.size, status.in_use), (1, 1), "{status:?}");
        let started = Instant::now();
        let slept = diesel::sql_query("SELECT pg_sleep(5)")
            .execute(&mut conn)
            .await
            .map_err(error::query);
        let elapsed = started.elapsed();
        let Err(StoreError::Query(e)) = slept else {
            panic!("pg_sleep(5) was not stopped: {slept:?}");
        };
        assert!(e.to_string().contains("statement timeout"), "{e}");
        assert!(
            elapsed < Duration::from_secs(3),
            "stopped after {elapsed:?}"
        );
        // The connection stays usable.
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .unwrap();
        drop(conn);
        let status = db.pool_status();
        assert_eq!((status.size, status.in_use), (1, 0), "{status:?}");
        assert_eq!(status.max_size, PoolOptions::default().max_size);
    }

    #[test]
    fn an_invalid_url_fails_at_once() {
        let built = Database::connect("postgres://u:pw@host:port/db", PoolOptions::default());
        assert!(matches!(built, Err(StoreError::Query(_))));
    }
}
