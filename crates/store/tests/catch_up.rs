//! The catch-up's state on real PostgreSQL: cursors only move forward,
//! "which of these guids do we hold" reads `webhook_events.delivery_id`,
//! a guid is claimed once (across store handles, as across replicas) and
//! a released claim can be taken again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use dispatcher_core::ports::{CatchUpStore, EventRepository};
use dispatcher_store::{Database, PoolOptions};
use dispatcher_testdb::TestDatabase;

mod common;
use common::event;

fn guids(g: &[&str]) -> Vec<String> {
    g.iter().map(|g| (*g).to_owned()).collect()
}

fn set(g: &[&str]) -> HashSet<String> {
    g.iter().map(|g| (*g).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_held_guids_and_claims() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let store = db.catch_up();
    let hook = "repos/o/r/hooks/1";

    assert_eq!(store.cursor(hook).await.unwrap(), None);
    store.save_cursor(hook, 40).await.unwrap();
    store.save_cursor(hook, 30).await.unwrap();
    assert_eq!(store.cursor(hook).await.unwrap(), Some(40), "never back");
    store.save_cursor(hook, 41).await.unwrap();
    assert_eq!(store.cursor(hook).await.unwrap(), Some(41));
    assert_eq!(store.cursor("orgs/o/hooks/2").await.unwrap(), None);

    db.events()
        .record(event("held-1", 1, r#"{"n":1}"#))
        .await
        .unwrap();
    assert_eq!(
        store.held(&guids(&["held-1", "missing"])).await.unwrap(),
        set(&["held-1"])
    );
    assert!(store.held(&[]).await.unwrap().is_empty());

    assert!(store.claim(hook, "g1", 7, "pull_request").await.unwrap());
    let other_replica = Database::connect(t.url(), PoolOptions::default())
        .unwrap()
        .catch_up();
    assert!(
        !other_replica
            .claim(hook, "g1", 8, "pull_request")
            .await
            .unwrap(),
        "a guid is claimed once"
    );
    assert_eq!(
        store.asked(&guids(&["g1", "g2"])).await.unwrap(),
        set(&["g1"])
    );
    store.release("g1").await.unwrap();
    assert!(store.asked(&guids(&["g1"])).await.unwrap().is_empty());
    assert!(
        other_replica
            .claim(hook, "g1", 8, "pull_request")
            .await
            .unwrap()
    );
}
