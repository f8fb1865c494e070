//! Retention on real PostgreSQL: what goes (old finished events with their
//! dispatches, timelines and settled label rows), what stays whatever its
//! age (anything open: pending, queued, triggering, triggered, a replay in
//! progress), payloads dropped earlier with the row kept, batches, and
//! intake storing deliveries while a pass runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{EventId, EventStatus, EventUuid};
use dispatcher_core::ports::{
    EventRepository, OperatorStore, RecordOutcome, ReplayOutcome, ReplayRequest, ReplayTarget,
    RetentionStore,
};
use dispatcher_core::retention::{RetentionPolicy, run_pass};
use dispatcher_store::{Database, PoolOptions};
use dispatcher_testdb::TestDatabase;

mod common;
use common::event;

const DAY: Duration = Duration::from_secs(86_400);

fn policy(payload_max_age: Option<Duration>, batch_size: u32) -> RetentionPolicy {
    RetentionPolicy {
        max_age: DAY,
        payload_max_age,
        interval: Duration::from_secs(3600),
        batch_size,
    }
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Uuid {
    #[diesel(sql_type = Text)]
    uuid: String,
}

/// An event of PR `pr` with `status`, finished `ago` (a PostgreSQL interval,
/// `None` = not finished), round `round`, with one dispatch per state in
/// `states` (the last one in the current round, the others in round 1) and
/// one timeline entry per dispatch.
async fn seed(
    conn: &mut AsyncPgConnection,
    delivery: &str,
    pr: i64,
    status: &str,
    ago: Option<&str>,
    states: &[&str],
) -> EventId {
    let processed_at = ago.map_or("NULL".to_owned(), |a| format!("now() - interval '{a}'"));
    let round = states.len().max(1);
    let Id { id } = diesel::sql_query(format!(
        "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name,
                                     pull_request_number, payload, status, processed_at, planned_at, round)
         VALUES ('{delivery}', 'pull_request', 'opened', 'o/r', {pr}, '{{\"n\": {pr},  \"d\": \"{delivery}\"}}',
                 '{status}', {processed_at}, now(), {round}) RETURNING id"
    ))
    .get_result(conn)
    .await
    .unwrap();
    for (i, state) in states.iter().enumerate() {
        diesel::sql_query(format!(
            "WITH d AS (INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name,
                                               pull_request_number, state, queue_position, round)
                        VALUES ({id}, 'ops', 'ns/p', 'p/queued', 'o/r', {pr}, '{state}', {id}, {}) RETURNING id)
             INSERT INTO event_timeline (event_id, dispatch_id, kind) SELECT {id}, d.id, 'queued' FROM d",
            i + 1
        ))
        .execute(conn)
        .await
        .unwrap();
    }
    EventId(id)
}

async fn label(conn: &mut AsyncPgConnection, pr: i64, wanted: bool, applied: bool) {
    diesel::sql_query(format!(
        "INSERT INTO pr_labels (repository_full_name, pull_request_number, label, wanted, applied)
         VALUES ('o/r', {pr}, 'p/queued', {wanted}, {applied})"
    ))
    .execute(conn)
    .await
    .unwrap();
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    let N { n } = diesel::sql_query(format!("SELECT count(*)::bigint AS n FROM {sql}"))
        .get_result(conn)
        .await
        .unwrap();
    n
}

async fn exists(conn: &mut AsyncPgConnection, id: EventId) -> bool {
    count(conn, &format!("webhook_events WHERE id = {}", id.0)).await == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn old_finished_events_go_open_and_recent_ones_stay_payloads_go_earlier() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let mut conn = AsyncPgConnection::establish(t.url()).await.unwrap();
    let c = &mut conn;
    // Go: finished long ago.
    let done = seed(c, "done", 1, "processed", Some("40 days"), &["confirmed"]).await;
    let aborted = seed(c, "aborted", 2, "aborted", Some("2 days"), &[]).await;
    let old_of_8 = seed(c, "old8", 8, "cancelled", Some("3 days"), &["cancelled"]).await;
    // Stay, however old: open work.
    let reserved = seed(
        c,
        "reserved",
        3,
        "processed",
        Some("40 days"),
        &["triggered"],
    )
    .await;
    let queued = seed(c, "queued", 4, "queued", None, &["queued"]).await;
    let triggering = seed(c, "triggering", 5, "queued", None, &["triggering"]).await;
    let pending = seed(c, "pending", 6, "pending", None, &[]).await;
    let replaying = seed(c, "replaying", 9, "queued", None, &["confirmed", "queued"]).await;
    diesel::sql_query("UPDATE webhook_events SET received_at = now() - interval '90 days'")
        .execute(c)
        .await
        .unwrap();
    // Stay, payload dropped: finished recently (after payload_max_age, before max_age).
    let recent = seed(c, "recent", 7, "processed", Some("2 hours"), &["confirmed"]).await;
    let recent_of_8 = seed(c, "recent8", 8, "failed", Some("3 hours"), &["failed"]).await;
    // Stay with payload: finished just now.
    let fresh = seed(
        c,
        "fresh",
        10,
        "processed",
        Some("1 second"),
        &["confirmed"],
    )
    .await;
    label(c, 1, false, false).await; // settled, PR 1 left without events: goes
    label(c, 2, false, true).await; // still on GitHub: stays
    label(c, 8, false, false).await; // PR 8 keeps an event: stays

    let retention = db.retention();
    let p = policy(Some(Duration::from_secs(3600)), 1000);
    let preview = retention.preview(&p).await.unwrap();
    assert_eq!(preview.events(), 3, "{preview:?}");
    assert_eq!(preview.events_by_status[&EventStatus::Processed], 1);
    assert_eq!(preview.events_by_status[&EventStatus::Aborted], 1);
    assert_eq!(preview.events_by_status[&EventStatus::Cancelled], 1);
    assert_eq!(preview.payloads, 2, "{preview:?}");
    let (oldest, newest) = preview.finished_between.unwrap();
    assert!(
        oldest < newest && newest < preview.event_cutoff,
        "{preview:?}"
    );
    assert!(preview.payload_cutoff.unwrap() > preview.event_cutoff);
    // The preview changed nothing.
    assert!(exists(c, done).await);

    let report = run_pass(&retention, &p).await.unwrap();
    assert_eq!(report.deleted_events, 3, "{report:?}");
    assert_eq!(report.deleted_label_rows, 1, "{report:?}");
    assert_eq!(report.dropped_payloads, 2, "{report:?}");
    for gone in [done, aborted, old_of_8] {
        assert!(!exists(c, gone).await, "{gone} kept");
        assert_eq!(
            count(c, &format!("dispatches WHERE event_id = {}", gone.0)).await,
            0
        );
        assert_eq!(
            count(c, &format!("event_timeline WHERE event_id = {}", gone.0)).await,
            0
        );
    }
    for kept in [
        reserved,
        queued,
        triggering,
        pending,
        replaying,
        recent,
        recent_of_8,
        fresh,
    ] {
        assert!(exists(c, kept).await, "{kept} deleted");
    }
    assert_eq!(
        count(c, &format!("dispatches WHERE event_id = {}", replaying.0)).await,
        2
    );
    assert_eq!(count(c, "pr_labels WHERE pull_request_number = 1").await, 0);
    assert_eq!(
        count(c, "pr_labels WHERE pull_request_number IN (2, 8)").await,
        2
    );

    // Dropped payloads: the row and its detail stay, the payload is gone.
    let events = db.events();
    assert_eq!(events.payload(recent).await.unwrap(), None);
    assert_eq!(events.payload(recent_of_8).await.unwrap(), None);
    assert!(events.detail(recent).await.unwrap().is_some());
    // Kept payloads are byte for byte what was stored.
    assert_eq!(
        events.payload(fresh).await.unwrap().as_deref(),
        Some("{\"n\": 10,  \"d\": \"fresh\"}")
    );
    // A dropped payload cannot be replayed; a redelivery gets the stored event.
    let request = ReplayRequest {
        actor: "alice".into(),
        force: true,
        targets: vec![ReplayTarget {
            item: "ops".into(),
            pool: PoolKey("ns/p".into()),
            queued_label: "p/queued".into(),
        }],
    };
    assert!(matches!(
        events.replay(recent, &request).await.unwrap(),
        Some(ReplayOutcome::PayloadDropped(_))
    ));
    let again = events
        .record(event("recent", 7, "{\"n\":7}"))
        .await
        .unwrap();
    assert!(
        matches!(again, RecordOutcome::AlreadyStored(_)),
        "{again:?}"
    );

    // A second pass finds nothing more.
    let report = run_pass(&retention, &p).await.unwrap();
    assert!(report.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_of_two_take_five_events_in_three_transactions() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let mut conn = AsyncPgConnection::establish(t.url()).await.unwrap();
    for pr in 1..=5 {
        seed(
            &mut conn,
            &format!("d{pr}"),
            pr,
            "processed",
            Some("2 days"),
            &["confirmed"],
        )
        .await;
    }
    let retention = db.retention();
    let first = retention.delete_finished(DAY, 2).await.unwrap();
    assert_eq!(first.events, 2);
    let report = run_pass(&retention, &policy(None, 2)).await.unwrap();
    assert_eq!(report.deleted_events, 3, "{report:?}");
    assert_eq!(report.batches, 2, "{report:?}");
    assert_eq!(count(&mut conn, "webhook_events").await, 0);
    assert_eq!(count(&mut conn, "dispatches").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn intake_keeps_storing_while_a_pass_runs() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let mut conn = AsyncPgConnection::establish(t.url()).await.unwrap();
    diesel::sql_query(
        "WITH e AS (
            INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name,
                                        pull_request_number, payload, status, processed_at, planned_at)
            SELECT 'old-' || n, 'pull_request', 'opened', 'o/r', n, '{}', 'processed',
                   now() - interval '2 days', now()
              FROM generate_series(1, 400) AS n RETURNING id, pull_request_number)
         INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name,
                                 pull_request_number, state, queue_position)
         SELECT id, 'ops', 'ns/p', 'p/queued', 'o/r', pull_request_number, 'confirmed', id FROM e",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let retention = db.retention();
    let pruning = tokio::spawn(async move { run_pass(&retention, &policy(None, 7)).await });
    let events = db.events();
    let intake = tokio::spawn(async move {
        let mut stored = Vec::new();
        for i in 0..60 {
            match events
                .record(event(&format!("new-{i}"), 1000 + i, "{\"x\":1}"))
                .await
                .unwrap()
            {
                RecordOutcome::Created(e) => stored.push(e.uuid),
                other => panic!("{other:?}"),
            }
        }
        stored
    });
    let (pruned, stored) = tokio::join!(pruning, intake);
    let report = pruned.unwrap().unwrap();
    let stored: Vec<EventUuid> = stored.unwrap();
    assert_eq!(report.deleted_events, 400, "{report:?}");
    assert_eq!(stored.len(), 60);
    let left: Vec<Uuid> = diesel::sql_query("SELECT uuid::text AS uuid FROM webhook_events")
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(left.len(), 60);
    for uuid in stored {
        assert!(
            left.iter().any(|l| l.uuid == uuid.to_string()),
            "{uuid} lost"
        );
    }
}
