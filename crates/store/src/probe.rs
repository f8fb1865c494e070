//! `dispatcher check-config --connect`: one connection, asked what it is.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Text};
use diesel_async::RunQueryDsl;
use dispatcher_core::ports::StoreError;

use crate::connect::{ConnectionOptions, connect};
use crate::error;

/// What a test connection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseProbe {
    /// The server's `server_version` (`15.10 (Debian 15.10-0+deb12u1)`).
    pub server_version: String,
    /// Whether this connection is encrypted (`pg_stat_ssl` of the session).
    pub tls: bool,
    /// Migrations not yet applied (names).
    pub pending_migrations: Vec<String>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Bool)]
    tls: bool,
}

/// Opens one connection the way the service does, reads the server version
/// and whether the session uses TLS, and lists pending migrations.
pub async fn probe(url: &str, options: &ConnectionOptions) -> Result<DatabaseProbe, StoreError> {
    let mut conn = connect(url, options).await?;
    let row: Row = diesel::sql_query(
        "SELECT current_setting('server_version') AS version, \
         COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS tls",
    )
    .get_result(&mut conn)
    .await
    .map_err(error::query)?;
    drop(conn);
    let pending_migrations = crate::pending_migrations(url, options).await?;
    Ok(DatabaseProbe {
        server_version: row.version,
        tls: row.tls,
        pending_migrations,
    })
}
