//! Embedded migrations, applied under an advisory lock so replicas starting
//! together do not race.

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use dispatcher_core::ports::StoreError;

/// The versioned SQL in the top-level `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key held while migrating ("dmigrate").
const MIGRATION_LOCK: i64 = 0x646d_6967_7261_7465;

type SyncPg = AsyncConnectionWrapper<AsyncPgConnection>;

fn boxed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Query(e.into())
}

/// Applies pending migrations; returns the versions applied.
pub async fn run_migrations(url: &str) -> Result<Vec<String>, StoreError> {
    let url = url.to_owned();
    blocking(move || {
        let mut conn = SyncPg::establish(&url).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .map_err(boxed)?;
        let result = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| boxed(e.to_string()));
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
        result
    })
    .await
}

/// Versions not applied yet.
pub async fn pending_migrations(url: &str) -> Result<Vec<String>, StoreError> {
    let url = url.to_owned();
    blocking(move || {
        let mut conn = SyncPg::establish(&url).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(|e| boxed(e.to_string()))?;
        Ok(pending.iter().map(|m| m.name().to_string()).collect())
    })
    .await
}

/// The synchronous migration harness must not run on an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| boxed(e.to_string()))?
}
