//! The `check-config --connect` probe: version, TLS of the session, pending migrations.

#![allow(clippy::unwrap_used)]

use dispatcher_store::{ConnectionOptions, probe};
use dispatcher_testdb::TestDatabase;

#[tokio::test(flavor = "multi_thread")]
async fn probe_reports_version_tls_and_pending_migrations() {
    let options = ConnectionOptions::default();
    let migrated = TestDatabase::new();
    let found = probe(migrated.url(), &options).await.unwrap();
    assert!(
        found
            .server_version
            .starts_with(|c: char| c.is_ascii_digit()),
        "{found:?}"
    );
    // The test cluster listens without TLS.
    assert!(!found.tls, "{found:?}");
    assert!(found.pending_migrations.is_empty(), "{found:?}");

    let empty = TestDatabase::empty();
    let found = probe(empty.url(), &options).await.unwrap();
    assert!(!found.pending_migrations.is_empty(), "{found:?}");

    let err = probe("postgres://nobody@127.0.0.1:1/none", &options)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("nobody"), "{err}");
}
