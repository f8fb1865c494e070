//! Embedded migrations, applied under an advisory lock so replicas starting
//! together do not race.

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use dispatcher_core::ports::{BoxError, StoreError};

use crate::connect::{self, ConnectionOptions};
use crate::error;

/// The versioned SQL in the top-level `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key held while migrating ("dmigrate").
const MIGRATION_LOCK: i64 = 0x646d_6967_7261_7465;

type SyncPg = AsyncConnectionWrapper<AsyncPgConnection>;

/// Applies pending migrations; returns the versions applied.
///
/// Connects with `options` except `statement_timeout`: a migration, or
/// waiting for another replica's, may take longer than any query.
/// [`StoreError::Unavailable`] when the server cannot be reached (worth
/// retrying at start-up), [`StoreError::Query`] when a migration fails.
pub async fn run_migrations(
    url: &str,
    options: &ConnectionOptions,
) -> Result<Vec<String>, StoreError> {
    let conn = open(url, options).await?;
    blocking(move || {
        let mut conn = SyncPg::from(conn);
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .map_err(error::query)?;
        let result = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(harness);
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
        result
    })
    .await
}

/// Versions not applied yet (connects like [`run_migrations`]).
pub async fn pending_migrations(
    url: &str,
    options: &ConnectionOptions,
) -> Result<Vec<String>, StoreError> {
    let conn = open(url, options).await?;
    blocking(move || {
        let mut conn = SyncPg::from(conn);
        let pending = conn.pending_migrations(MIGRATIONS).map_err(harness)?;
        Ok(pending.iter().map(|m| m.name().to_string()).collect())
    })
    .await
}

async fn open(url: &str, options: &ConnectionOptions) -> Result<AsyncPgConnection, StoreError> {
    let options = ConnectionOptions {
        statement_timeout: None,
        ..*options
    };
    connect::connect(url, &options).await
}

/// Errors of the migration harness: a lost connection is `Unavailable` where
/// the harness lets us see it (it wraps a failed migration's error opaquely).
fn harness(e: BoxError) -> StoreError {
    let lost = e
        .downcast_ref::<diesel::result::Error>()
        .is_some_and(error::is_connection_lost);
    if lost {
        StoreError::Unavailable(e)
    } else {
        StoreError::Query(e)
    }
}

/// The synchronous migration harness must not run on an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Query(e.to_string().into()))?
}
