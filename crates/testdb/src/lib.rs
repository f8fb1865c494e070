//! # dispatcher-testdb
//!
//! Test support: every test gets its own PostgreSQL database, cloned from a
//! template that holds the migrated schema (cloning takes milliseconds,
//! migrating takes much longer).
//!
//! With `DATABASE_URL` set, databases are created on that server. Without it,
//! the first test of a process starts a private throwaway cluster with the
//! local `initdb`/`postgres` (as the `postgres` user when running as root) on
//! a free loopback port. A watchdog shell holds a pipe to the test process and
//! stops the cluster and deletes its files when that pipe closes, so the
//! cluster goes away however the process ends, `kill -9` included.
//!
//! **Owns:** the test cluster's lifecycle and per-test databases.
//! **Must not:** be a dependency of anything but tests and benchmarks.
//!
//! ```no_run
//! let db = dispatcher_testdb::TestDatabase::new();
//! println!("connect to {}", db.url());
//! ```

// Test support: failing loudly with a clear message is the point.
#![allow(clippy::expect_used, clippy::panic)]

mod cluster;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use cluster::{Cluster, TlsServer};

/// SQL that builds the Python dispatcher's database, with rows, in an empty
/// database ([`TestDatabase::empty`]): the input of the adoption tests.
pub const ORIGINAL_DATABASE: &str = include_str!("original.sql");

/// The project's migrations, embedded from the top-level `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

type SyncPg = AsyncConnectionWrapper<AsyncPgConnection>;

/// Where test databases are created: `DATABASE_URL`'s server or a private cluster.
struct Server {
    /// URL of a maintenance database (`postgres`) on the server.
    admin_url: String,
    /// Owns the private cluster, if we started one.
    _cluster: Option<Cluster>,
    /// Whether databases must be dropped after use (shared server).
    shared: bool,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server {
            admin_url: with_database(&url, "postgres"),
            _cluster: None,
            shared: true,
        },
        _ => {
            let cluster = Cluster::start()
                .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL for tests: {e}"));
            Server {
                admin_url: cluster.url("postgres"),
                _cluster: Some(cluster),
                shared: false,
            }
        }
    })
}

/// Replaces the database name (path) of a `postgres://` URL, keeping the query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// Runs `f` on a thread without a tokio runtime, so the synchronous diesel
/// wrapper can start its own one even when called from an async test.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| panic!("test database setup panicked"))
    })
}

fn admin() -> SyncPg {
    let url = &server().admin_url;
    SyncPg::establish(url).unwrap_or_else(|e| panic!("cannot connect to {}: {e}", redact(url)))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The migrated template, created once per schema version and server.
fn template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = format!("dispatcher_tpl_{}", env!("DISPATCHER_MIGRATIONS_HASH"));
        off_runtime(|| {
            let mut conn = admin();
            // Serialise template creation across concurrent test processes.
            conn.batch_execute("SELECT pg_advisory_lock(7261)")
                .expect("advisory lock");
            let exists = diesel::sql_query(format!(
                "SELECT 1 AS one FROM pg_database WHERE datname = '{name}'"
            ))
            .execute(&mut conn)
            .expect("query pg_database")
                > 0;
            if !exists {
                let building = format!("{name}_building");
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .expect("drop stale template");
                conn.batch_execute(&format!(
                    "CREATE DATABASE {building} TEMPLATE template0 ENCODING 'UTF8'"
                ))
                .expect("create template");
                {
                    let url = with_database(&server().admin_url, &building);
                    let mut t = SyncPg::establish(&url).expect("connect to template");
                    t.run_pending_migrations(MIGRATIONS)
                        .expect("migrate template");
                }
                conn.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .expect("publish template");
            }
            conn.batch_execute("SELECT pg_advisory_unlock(7261)")
                .expect("advisory unlock");
        });
        name
    })
}

/// A database for one test; dropped with it on shared servers.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A fresh database holding the migrated schema.
    pub fn new() -> Self {
        let template = template();
        Self::create(&format!("TEMPLATE {template}"))
    }

    /// A fresh, empty database (for migration tests).
    pub fn empty() -> Self {
        Self::create("TEMPLATE template0 ENCODING 'UTF8'")
    }

    /// A fresh database holding the Python dispatcher's schema and rows
    /// ([`ORIGINAL_DATABASE`]), for adoption tests.
    pub fn original() -> Self {
        let db = Self::empty();
        off_runtime(|| {
            SyncPg::establish(&db.url)
                .expect("connect to the test database")
                .batch_execute(ORIGINAL_DATABASE)
                .expect("build the original's database");
        });
        db
    }

    fn create(from: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // CREATE DATABASE from one template is serialised: concurrent copies can
        // fail with "source database is being accessed by other users".
        static CREATING: Mutex<()> = Mutex::new(());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "dispatcher_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        off_runtime(|| {
            let _guard = CREATING.lock().unwrap_or_else(|e| e.into_inner());
            admin()
                .batch_execute(&format!("CREATE DATABASE {name} {from}"))
                .expect("create test database");
        });
        let url = with_database(&server().admin_url, &name);
        Self { name, url }
    }

    /// Connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of this database.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !server().shared {
            return; // the private cluster is deleted as a whole
        }
        let name = self.name.clone();
        off_runtime(move || {
            if let Ok(mut conn) = SyncPg::establish(&server().admin_url) {
                let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://***@h/x");
    }

    #[test]
    fn databases_are_isolated_and_migrated() {
        let a = TestDatabase::new();
        let b = TestDatabase::new();
        assert_ne!(a.url(), b.url());
        let count = off_runtime(|| {
            let mut conn = SyncPg::establish(a.url()).expect("connect");
            conn.batch_execute("INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload) VALUES ('d', 'pull_request', 'opened', 'o/r', 1, '{}')").expect("insert");
            let mut other = SyncPg::establish(b.url()).expect("connect");
            diesel::sql_query("SELECT id FROM webhook_events")
                .execute(&mut other)
                .expect("select")
        });
        assert_eq!(count, 0);
    }
}
