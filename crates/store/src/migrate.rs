//! Embedded migrations, applied under an advisory lock so replicas starting
//! together do not race.
//!
//! Before migrating, the database is classified ([`Found`]): empty or ours
//! (it has `__diesel_schema_migrations`) is migrated normally; the Python
//! service's (a `webhook_events` table with a uuid `id` and `request_headers`)
//! is adopted in place, in one transaction, keeping every row; anything else
//! is refused without changing anything.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::Text;
use diesel::{Connection, QueryableByName, RunQueryDsl};
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
        let result = match classify(&mut conn) {
            Ok(Found::EmptyOrOurs) => conn
                .run_pending_migrations(MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map_err(harness),
            Ok(Found::Original { naive_times }) => adopt(&mut conn, naive_times),
            Ok(Found::Foreign(what)) => Err(refuse(&what)),
            Err(e) => Err(e),
        };
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
        match classify(&mut conn)? {
            // Asking the harness would create its table in a database that
            // is not ours yet.
            Found::Original { .. } => Ok(MigrationSource::<Pg>::migrations(&MIGRATIONS)
                .map_err(harness)?
                .iter()
                .map(|m| m.name().to_string())
                .collect()),
            Found::Foreign(what) => Err(refuse(&what)),
            Found::EmptyOrOurs => {
                let pending = conn.pending_migrations(MIGRATIONS).map_err(harness)?;
                Ok(pending.iter().map(|m| m.name().to_string()).collect())
            }
        }
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

/// What the database holds before migrating.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// No tables, or our schema (it has diesel's migration table).
    EmptyOrOurs,
    /// The Python service's schema; `naive_times` when its timestamps are
    /// `timestamp without time zone` (naive UTC).
    Original { naive_times: bool },
    /// Something else, described for the error message.
    Foreign(String),
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    kind: String,
}

fn classify(conn: &mut SyncPg) -> Result<Found, StoreError> {
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name, table_type::text AS kind FROM information_schema.tables
          WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .load(conn)
    .map_err(error::query)?;
    if tables.is_empty()
        || tables
            .iter()
            .any(|t| t.name == "__diesel_schema_migrations")
    {
        return Ok(Found::EmptyOrOurs);
    }
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    if names != ["webhook_events"] {
        return Ok(Found::Foreign(format!(
            "tables {} and no __diesel_schema_migrations",
            names.join(", ")
        )));
    }
    let columns: Vec<Name> = diesel::sql_query(
        "SELECT column_name::text AS name, data_type::text AS kind FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = 'webhook_events'",
    )
    .load(conn)
    .map_err(error::query)?;
    let kind = |name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.kind.as_str())
    };
    let original = kind("id") == Some("uuid")
        && kind("request_headers").is_some()
        && ["delivery_id", "payload", "status", "received_at"]
            .iter()
            .all(|c| kind(c).is_some());
    if !original {
        let mut shape: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.kind))
            .collect();
        shape.sort();
        return Ok(Found::Foreign(format!(
            "a webhook_events table of unknown shape ({}) and no __diesel_schema_migrations",
            shape.join(", ")
        )));
    }
    Ok(Found::Original {
        naive_times: kind("received_at") == Some("timestamp without time zone"),
    })
}

fn refuse(what: &str) -> StoreError {
    StoreError::Query(
        format!(
            "refusing to migrate: the database is neither empty, ours nor the Python \
             dispatcher's: found {what}; nothing was changed"
        )
        .into(),
    )
}

/// Renames the original's table (and its indexes and constraints) aside.
const SET_ASIDE: &str = r"
ALTER TABLE webhook_events RENAME TO webhook_events_original;
DO $$
DECLARE i record;
BEGIN
    FOR i IN SELECT c.relname FROM pg_index x
               JOIN pg_class c ON c.oid = x.indexrelid
               JOIN pg_class t ON t.oid = x.indrelid
              WHERE t.relname = 'webhook_events_original'
                AND t.relnamespace = current_schema()::regnamespace
    LOOP
        -- Renaming a constraint's index renames the constraint too.
        EXECUTE format('ALTER INDEX %I RENAME TO %I', i.relname, left(i.relname, 50) || '_original');
    END LOOP;
END $$;
";

/// Copies every row of the original into our schema; `{ts}` is replaced by
/// the conversion of a timestamp column to `timestamptz`.
const COPY: &str = r"
INSERT INTO webhook_events (uuid, delivery_id, event_type, action, repository_full_name,
    pull_request_number, payload, headers, status, processed, processing_error,
    received_at, processed_at, planned_at, adopted, superseded_duplicate)
SELECT o.id,
       COALESCE(o.delivery_id::text, 'adopted-' || o.id::text),
       COALESCE((SELECT h.value FROM json_each_text(o.hdrs) h
                  WHERE lower(h.key) = 'x-github-event' LIMIT 1), 'pull_request'),
       COALESCE(o.action::text, ''),
       COALESCE(o.repository_full_name::text, ''),
       COALESCE(o.pull_request_number, 0),
       COALESCE(o.payload::text, '{}')::json,
       COALESCE((SELECT jsonb_agg(jsonb_build_array(
                          (SELECT string_agg(CASE lower(p)
                                                WHEN 'github' THEN 'GitHub'
                                                WHEN 'id' THEN 'ID'
                                                ELSE upper(left(p, 1)) || lower(substr(p, 2)) END,
                                             '-' ORDER BY n)
                             FROM unnest(string_to_array(h.key, '-')) WITH ORDINALITY AS s(p, n)),
                          h.value) ORDER BY h.ord)
                   FROM json_each_text(o.hdrs) WITH ORDINALITY AS h(key, value, ord)
                  WHERE lower(h.key) LIKE 'x-github-%' OR lower(h.key) LIKE 'x-hub-%'), '[]'::jsonb),
       COALESCE(o.status::text, 'pending'),
       COALESCE(o.processed, FALSE),
       o.processing_error,
       o.received,
       o.processed_at_utc,
       CASE WHEN COALESCE(o.processed, FALSE) THEN COALESCE(o.processed_at_utc, o.received) END,
       TRUE,
       row_number() OVER (PARTITION BY o.delivery_id ORDER BY o.received DESC, o.id) > 1
  FROM (SELECT w.*,
               CASE WHEN json_typeof(w.request_headers::json) = 'object'
                    THEN w.request_headers::json ELSE '{}'::json END AS hdrs,
               COALESCE({received_at}, now()) AS received,
               {processed_at} AS processed_at_utc
          FROM webhook_events_original w) o
 ORDER BY o.received, o.id;
";

/// Converts the original's database in one transaction: set its table
/// aside, run our migrations, copy every row (in arrival order, so the
/// internal ids follow it), drop the old table. The `pg_dump` taken before
/// (docs/MIGRATING.md) is the way back.
fn adopt(conn: &mut SyncPg, naive_times: bool) -> Result<Vec<String>, StoreError> {
    let ts = |column: &str| {
        if naive_times {
            format!("(w.{column} AT TIME ZONE 'UTC')")
        } else {
            format!("w.{column}::timestamptz")
        }
    };
    let copy = COPY
        .replace("{received_at}", &ts("received_at"))
        .replace("{processed_at}", &ts("processed_at"));
    let result = conn.transaction::<_, BoxError, _>(|conn| {
        conn.batch_execute(SET_ASIDE)?;
        let applied: Vec<String> = conn
            .run_pending_migrations(MIGRATIONS)?
            .iter()
            .map(ToString::to_string)
            .collect();
        let rows = diesel::sql_query(&copy).execute(conn)?;
        conn.batch_execute("DROP TABLE webhook_events_original")?;
        tracing::info!(rows, "adopted the Python dispatcher's database");
        Ok(applied)
    });
    result.map_err(harness)
}
