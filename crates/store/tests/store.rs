//! The store against real PostgreSQL (one database per test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl as _};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;
use dispatcher_core::domain::{DispatchId, DispatchState, EventStatus, EventUuid, PullRequestRef};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::planner::{DispatchOutcome, IntakePlan};
use dispatcher_core::ports::{
    DispatchStore, EventFilter, EventQuery, EventRepository, LabelScope, LabelStore, LabelTask,
    OpenExtras, RecordOutcome,
};
use dispatcher_store::{ConnectionOptions, Database, LeaderOptions, MIGRATIONS, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;

mod common;
use common::{created, event, lead, new_dispatch};

fn db(test: &TestDatabase) -> Database {
    Database::connect(
        test.url(),
        PoolOptions {
            max_size: 20,
            ..PoolOptions::default()
        },
    )
    .expect("pool")
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_is_stored_byte_exact() {
    let t = TestDatabase::new();
    let events = db(&t).events();
    // Odd spacing, key order, escapes and non-ASCII survive untouched (jsonb would not).
    let payload = "{ \"b\" : 1,\n\t\"a\":[1.50, 2e3, -0],\"s\":\"\\u0000 \\u00e9 é \\ud83d\\ude00 😀\", \"a\": null }";
    let id = created(events.record(event("d-1", 1, payload)).await.unwrap());
    let stored = events.detail(id).await.unwrap().expect("stored");
    assert_eq!(stored.event.delivery_id, "d-1");
    assert_eq!(stored.event.status, EventStatus::Pending);
    assert_eq!(
        stored.headers[0],
        ("X-GitHub-Event".to_owned(), "pull_request".to_owned())
    );
    let mut leader = db(&t)
        .try_lead(false, LeaderOptions::default())
        .await
        .unwrap()
        .expect("leader");
    let unplanned = leader.unplanned_events(10).await.unwrap();
    assert_eq!(unplanned[0].id, id);
    let payloads = leader.event_payloads(&[id]).await.unwrap();
    assert_eq!(payloads[&id], payload);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_duplicate_deliveries_make_exactly_one_row() {
    let t = TestDatabase::new();
    let events = db(&t).events();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let events = events.clone();
            tokio::spawn(async move { events.record(event("dup", 7, "{\"x\":1}")).await })
        })
        .collect();
    let mut created = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            RecordOutcome::Created(e) => {
                created += 1;
                ids.insert(e.id);
            }
            RecordOutcome::AlreadyStored(e) => {
                ids.insert(e.id);
            }
            RecordOutcome::Conflict(e) => panic!("same body is not a conflict: {e:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let page = events
        .list(&EventQuery {
            page: 1,
            page_size: 100,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    assert_eq!(page.total_count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_delivery_with_another_body_is_a_conflict() {
    let t = TestDatabase::new();
    let events = db(&t).events();
    created(events.record(event("d", 1, "{\"x\":1}")).await.unwrap());
    assert!(matches!(
        events.record(event("d", 1, "{\"x\": 1}")).await.unwrap(),
        RecordOutcome::Conflict(_)
    ));
    assert!(matches!(
        events.record(event("d", 1, "{\"x\":1}")).await.unwrap(),
        RecordOutcome::AlreadyStored(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_newest_first_with_filters() {
    let t = TestDatabase::new();
    let events = db(&t).events();
    for i in 1..=25 {
        let mut e = event(&format!("d{i}"), i % 3, "{}");
        if i % 5 == 0 {
            e.action = "synchronize".into();
        }
        events.record(e).await.unwrap();
    }
    let q = |page, page_size, filter| EventQuery {
        page,
        page_size,
        filter,
    };
    let p1 = events
        .list(&q(1, 10, EventFilter::default()))
        .await
        .unwrap();
    assert_eq!(p1.total_count, 25);
    let deliveries: Vec<&str> = p1.events.iter().map(|e| e.delivery_id.as_str()).collect();
    assert_eq!(deliveries[..3], ["d25", "d24", "d23"]);
    let p3 = events
        .list(&q(3, 10, EventFilter::default()))
        .await
        .unwrap();
    assert_eq!(p3.events.len(), 5);
    assert_eq!(p3.events.last().unwrap().delivery_id, "d1");
    let sync = events
        .list(&q(
            1,
            100,
            EventFilter {
                action: Some("synchronize".into()),
                ..EventFilter::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(sync.total_count, 5);
    let combined = EventFilter {
        pull_request_number: Some(0),
        action: Some("synchronize".into()),
        processed: Some(false),
        status: Some(EventStatus::Pending),
        repository_full_name: Some("o/r".into()),
        delivery_id: None,
    };
    let r = events.list(&q(1, 100, combined)).await.unwrap();
    assert_eq!(
        r.events
            .iter()
            .map(|e| e.delivery_id.as_str())
            .collect::<Vec<_>>(),
        ["d15"]
    );
    let none = events
        .list(&q(
            1,
            100,
            EventFilter {
                status: Some(EventStatus::Processed),
                ..EventFilter::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(none.total_count, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_leader_at_a_time() {
    let t = TestDatabase::new();
    let a = db(&t);
    let b = db(&t);
    let mut first = a
        .try_lead(true, LeaderOptions::default())
        .await
        .unwrap()
        .expect("first replica leads");
    assert!(
        b.try_lead(true, LeaderOptions::default())
            .await
            .unwrap()
            .is_none(),
        "second replica stands by"
    );
    first.heartbeat().await.unwrap();
    drop(first);
    // The lock goes with the connection; the server frees it when the socket closes.
    let mut attempts = 0;
    loop {
        if b.try_lead(true, LeaderOptions::default())
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        attempts += 1;
        assert!(attempts < 100, "standby never took over");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inserts_wake_the_leader() {
    let t = TestDatabase::new();
    let database = db(&t);
    let mut leader = lead(&database, true).await;
    let waiting = tokio::spawn(async move { leader.wait_for_wakeup().await.map(|()| leader) });
    database
        .events()
        .record(event("wake", 1, "{}"))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    assert!(matches!(woke, Ok(Ok(Ok(_)))), "no wake-up after insert");
}

#[tokio::test(flavor = "multi_thread")]
async fn dispatch_lifecycle_updates_event_status() {
    let t = TestDatabase::new();
    let database = db(&t);
    let events = database.events();
    let e1 = created(events.record(event("a", 1, "{\"n\":1}")).await.unwrap());
    let e2 = created(events.record(event("b", 1, "{\"n\":2}")).await.unwrap());
    let e3 = created(events.record(event("c", 2, "{\"n\":3}")).await.unwrap());
    let mut leader = lead(&database, true).await;
    let now = OffsetDateTime::now_utc();

    let plan = IntakePlan {
        planned: vec![e1, e2, e3],
        aborted: vec![e3],
        new_dispatches: vec![
            new_dispatch(e1, 1, "ops", DispatchState::Cancelled),
            new_dispatch(e2, 1, "ops", DispatchState::Queued),
        ],
        superseded: vec![],
    };
    let created = leader.apply_intake(&plan, now).await.unwrap();
    assert_eq!(created.len(), 1, "only the queued dispatch is open work");
    assert_eq!(
        (created[0].event_id, created[0].state),
        (e2, DispatchState::Queued)
    );
    assert!(leader.unplanned_events(10).await.unwrap().is_empty());
    let status = |id| {
        let events = events.clone();
        async move { events.detail(id).await.unwrap().unwrap() }
    };
    assert_eq!(status(e1).await.event.status, EventStatus::Cancelled);
    let aborted = status(e3).await.event;
    assert_eq!(
        (aborted.status, aborted.processing_error.as_deref()),
        (EventStatus::Aborted, Some("Unsupported event"))
    );
    assert_eq!(status(e2).await.event.status, EventStatus::Queued);

    let open = leader
        .open_dispatches(now - Duration::from_secs(120), OpenExtras::NONE)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    let id = open[0].id;
    let jobs = leader.begin_triggers(&[id], now).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].attempt, jobs[0].payload.as_str()),
        (1, "{\"n\":2}")
    );
    assert_eq!(
        jobs[0].accepted_at,
        status(e2).await.event.received_at,
        "the job carries its delivery's acceptance time (for the queue wait)"
    );
    assert!(
        leader.begin_triggers(&[id], now).await.unwrap().is_empty(),
        "a triggering dispatch is not started twice"
    );

    // A stale outcome (wrong attempt) changes nothing.
    let stale = DispatchOutcome::Triggered {
        id,
        attempt: 7,
        listener_event_id: Some("x".into()),
    };
    leader.record_outcomes(&[stale], now).await.unwrap();
    assert_eq!(
        status(e2).await.dispatches[0].state,
        DispatchState::Triggering
    );

    let ok = DispatchOutcome::Triggered {
        id,
        attempt: 1,
        listener_event_id: Some("ev-9".into()),
    };
    leader.record_outcomes(&[ok], now).await.unwrap();
    let detail = status(e2).await;
    assert_eq!(
        (detail.event.status, detail.event.processed),
        (EventStatus::Processed, true)
    );
    assert!(detail.event.processed_at.is_some());
    assert_eq!(
        detail.dispatches[0].listener_event_id.as_deref(),
        Some("ev-9")
    );

    leader
        .record_outcomes(
            &[DispatchOutcome::Confirmed {
                id,
                listener_event_id: None,
                run: None,
            }],
            now,
        )
        .await
        .unwrap();
    let detail = status(e2).await;
    assert_eq!(detail.dispatches[0].state, DispatchState::Confirmed);
    assert!(detail.dispatches[0].confirmed_at.is_some());
    assert!(
        leader
            .open_dispatches(now - Duration::from_secs(120), OpenExtras::NONE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A pass is one transaction (`begin_pass`): others see none of it before
/// the commit, nothing of it stays after an abort, a failed statement ends it
/// as a query error without costing leadership, and the commit leaves each
/// event's status as its dispatches' final states say.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_commits_or_rolls_back_as_one_transaction() {
    let t = TestDatabase::new();
    let database = db(&t);
    let events = database.events();
    let e1 = created(events.record(event("a", 1, "{\"n\":1}")).await.unwrap());
    let mut leader = lead(&database, true).await;
    let now = OffsetDateTime::now_utc();
    let status = |id| {
        let events = events.clone();
        async move { events.detail(id).await.unwrap().unwrap() }
    };
    let plan = IntakePlan {
        planned: vec![e1],
        aborted: vec![],
        new_dispatches: vec![new_dispatch(e1, 1, "ops", DispatchState::Queued)],
        superseded: vec![],
    };

    leader.begin_pass().await.unwrap();
    let queued = leader.apply_intake(&plan, now).await.unwrap();
    let jobs = leader.begin_triggers(&[queued[0].id], now).await.unwrap();
    assert_eq!(jobs.len(), 1, "the pass sees its own writes");
    let outside = status(e1).await;
    assert_eq!(outside.event.status, EventStatus::Pending);
    assert!(outside.dispatches.is_empty(), "nobody else sees them yet");
    leader.abort_pass().await;
    assert_eq!(leader.unplanned_events(10).await.unwrap().len(), 1);
    assert!(status(e1).await.dispatches.is_empty());

    // A dispatch of an event that does not exist breaks its foreign key.
    leader.begin_pass().await.unwrap();
    leader.apply_intake(&plan, now).await.unwrap();
    let broken = IntakePlan {
        planned: vec![],
        aborted: vec![],
        new_dispatches: vec![new_dispatch(
            dispatcher_core::domain::EventId(e1.0 + 1000),
            1,
            "ops",
            DispatchState::Queued,
        )],
        superseded: vec![],
    };
    let failed = leader.apply_intake(&broken, now).await.unwrap_err();
    assert!(
        matches!(failed, dispatcher_core::ports::StoreError::Query(_)),
        "{failed:?}"
    );
    leader.abort_pass().await;
    leader.heartbeat().await.expect("still the leader");
    assert_eq!(
        leader.unplanned_events(10).await.unwrap().len(),
        1,
        "the pass's first write went with it"
    );

    leader.begin_pass().await.unwrap();
    let queued = leader.apply_intake(&plan, now).await.unwrap();
    let jobs = leader.begin_triggers(&[queued[0].id], now).await.unwrap();
    let answer = DispatchOutcome::Triggered {
        id: jobs[0].dispatch,
        attempt: jobs[0].attempt,
        listener_event_id: Some("ev-1".into()),
    };
    leader.record_outcomes(&[answer], now).await.unwrap();
    leader.commit_pass().await.unwrap();
    let detail = status(e1).await;
    assert_eq!(detail.dispatches[0].state, DispatchState::Triggered);
    assert_eq!(
        (detail.event.status, detail.event.processed),
        (EventStatus::Processed, true)
    );

    // The next pass: its first reads, sent together, are what the reads one
    // by one give; its commit sends the status write with the COMMIT.
    let e2 = created(events.record(event("b", 2, "{\"n\":2}")).await.unwrap());
    let clock = leader.begin_pass().await.unwrap();
    assert!(clock >= now, "the pass reads the database's clock");
    let cutoff = now - Duration::from_secs(3600);
    let reads = leader
        .pass_reads(cutoff, Some(OpenExtras::NONE), 10)
        .await
        .unwrap();
    assert_eq!(
        reads.open,
        leader
            .open_dispatches(cutoff, OpenExtras::NONE)
            .await
            .unwrap()
    );
    assert_eq!(reads.open.len(), 1);
    let unplanned: Vec<_> = reads.unplanned.iter().map(|e| e.id).collect();
    assert_eq!(unplanned, vec![e2]);
    assert_eq!(reads.unplanned, leader.unplanned_events(10).await.unwrap());
    assert_eq!(reads.paused, leader.paused_pools().await.unwrap());
    let no_open = leader.pass_reads(cutoff, None, 10).await.unwrap();
    assert!(
        no_open.open.is_empty(),
        "an incremental pass reads no open set"
    );
    let confirmed = DispatchOutcome::Confirmed {
        id: jobs[0].dispatch,
        listener_event_id: None,
        run: Some("run-1".into()),
    };
    leader.record_outcomes(&[confirmed], now).await.unwrap();
    assert_eq!(
        status(e1).await.dispatches[0].state,
        DispatchState::Triggered
    );
    leader.commit_pass().await.unwrap();
    let detail = status(e1).await;
    assert_eq!(detail.dispatches[0].state, DispatchState::Confirmed);
    assert_eq!(detail.event.status, EventStatus::Processed);
    leader.heartbeat().await.expect("no transaction left open");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_and_failures_are_recorded() {
    let t = TestDatabase::new();
    let database = db(&t);
    let e = created(database.events().record(event("a", 1, "{}")).await.unwrap());
    let mut leader = lead(&database, true).await;
    let now = OffsetDateTime::now_utc();
    let plan = IntakePlan {
        planned: vec![e],
        new_dispatches: vec![new_dispatch(e, 1, "ops", DispatchState::Queued)],
        ..IntakePlan::default()
    };
    leader.apply_intake(&plan, now).await.unwrap();
    let id: DispatchId = leader.open_dispatches(now, OpenExtras::NONE).await.unwrap()[0].id;
    leader.begin_triggers(&[id], now).await.unwrap();
    let later = now + Duration::from_secs(3);
    leader
        .record_outcomes(
            &[DispatchOutcome::Retry {
                id,
                attempt: 1,
                next_attempt_at: later,
                error: "HTTP 503".into(),
            }],
            now,
        )
        .await
        .unwrap();
    let open = leader.open_dispatches(now, OpenExtras::NONE).await.unwrap();
    assert_eq!(
        (open[0].state, open[0].attempts),
        (DispatchState::Queued, 1)
    );
    assert_eq!(
        open[0].next_attempt_at.unix_timestamp(),
        later.unix_timestamp()
    );
    leader.begin_triggers(&[id], later).await.unwrap();
    leader
        .record_outcomes(
            &[DispatchOutcome::Failed {
                id,
                attempt: 2,
                error: "gave up".into(),
            }],
            later,
        )
        .await
        .unwrap();
    let detail = database.events().detail(e).await.unwrap().unwrap();
    assert_eq!(detail.event.status, EventStatus::Failed);
    assert_eq!(detail.event.processing_error.as_deref(), Some("gave up"));
    assert_eq!(detail.dispatches[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn label_intents_follow_the_queue() {
    let t = TestDatabase::new();
    let database = db(&t);
    let e = created(database.events().record(event("a", 5, "{}")).await.unwrap());
    let mut leader = lead(&database, true).await;
    let mut labels = database.labels();
    let now = OffsetDateTime::now_utc();
    let plan = IntakePlan {
        planned: vec![e],
        new_dispatches: vec![new_dispatch(e, 5, "ops", DispatchState::Queued)],
        ..IntakePlan::default()
    };
    leader.apply_intake(&plan, now).await.unwrap();
    assert_eq!(
        leader.reconcile_labels(now, LabelScope::All).await.unwrap(),
        1
    );
    assert_eq!(
        leader.reconcile_labels(now, LabelScope::All).await.unwrap(),
        0,
        "idempotent"
    );
    let tasks = labels.due_label_tasks(now, 10).await.unwrap();
    let expected = LabelTask {
        pr: PullRequestRef {
            repository: "o/r".into(),
            number: 5,
        },
        label: "p/queued".into(),
        wanted: true,
        attempts: 0,
    };
    assert_eq!(tasks, std::slice::from_ref(&expected));

    // GitHub fails once: retried later, not now.
    let retry = now + Duration::from_secs(60);
    labels
        .finish_label_task(&expected, Some("HTTP 502".into()), Some(retry))
        .await
        .unwrap();
    assert!(labels.due_label_tasks(now, 10).await.unwrap().is_empty());
    assert_eq!(
        labels
            .next_label_retry()
            .await
            .unwrap()
            .map(|t| t.unix_timestamp()),
        Some(retry.unix_timestamp())
    );
    labels
        .finish_label_task(&expected, None, None)
        .await
        .unwrap();
    assert!(
        labels.due_label_tasks(retry, 10).await.unwrap().is_empty(),
        "applied"
    );

    // Dispatched: the label must go.
    let id = leader.open_dispatches(now, OpenExtras::NONE).await.unwrap()[0].id;
    leader.begin_triggers(&[id], now).await.unwrap();
    leader
        .record_outcomes(
            &[DispatchOutcome::Triggered {
                id,
                attempt: 1,
                listener_event_id: None,
            }],
            now,
        )
        .await
        .unwrap();
    // Reconciling another PR leaves this one's label; its own scope removes it.
    let other = PullRequestRef {
        repository: "o/r".into(),
        number: 6,
    };
    let scoped = |pr| [pr];
    assert_eq!(
        leader
            .reconcile_labels(now, LabelScope::PullRequests(&scoped(other)))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        leader
            .reconcile_labels(now, LabelScope::PullRequests(&scoped(expected.pr.clone())))
            .await
            .unwrap(),
        1
    );
    let tasks = labels.due_label_tasks(now, 10).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert!(!tasks[0].wanted);
    labels
        .finish_label_task(&tasks[0], None, None)
        .await
        .unwrap();
    assert!(labels.due_label_tasks(now, 10).await.unwrap().is_empty());
    assert_eq!(labels.next_label_retry().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_added_after_its_intent_was_withdrawn_is_removed() {
    let t = TestDatabase::new();
    let database = db(&t);
    let mut labels = database.labels();
    let task = LabelTask {
        pr: PullRequestRef {
            repository: "o/r".into(),
            number: 1,
        },
        label: "p/queued".into(),
        wanted: true,
        attempts: 0,
    };
    // The row vanished (intent withdrawn) while the add was in flight.
    labels.finish_label_task(&task, None, None).await.unwrap();
    let tasks = labels
        .due_label_tasks(OffsetDateTime::now_utc(), 10)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert!(!tasks[0].wanted, "the stray label is scheduled for removal");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_found_by_their_uuid() {
    let t = TestDatabase::new();
    let events = db(&t).events();
    let RecordOutcome::Created(first) = events.record(event("d-1", 1, "{}")).await.unwrap() else {
        panic!("expected a new row");
    };
    let RecordOutcome::Created(second) = events.record(event("d-2", 2, "{}")).await.unwrap() else {
        panic!("expected a new row");
    };
    assert_ne!(first.uuid, second.uuid);
    assert_eq!(first.uuid.0.get_version_num(), 4);
    let by_uuid = events.detail(second.uuid).await.unwrap().expect("found");
    assert_eq!(by_uuid.event, second);
    assert_eq!(
        events
            .detail(second.id)
            .await
            .unwrap()
            .expect("found")
            .event,
        second
    );
    // Redelivery and listing report the same UUID.
    let again = events.record(event("d-2", 2, "{}")).await.unwrap();
    assert!(matches!(again, RecordOutcome::AlreadyStored(e) if e.uuid == second.uuid));
    let page = events
        .list(&EventQuery {
            page: 1,
            page_size: 10,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.uuid).collect::<Vec<_>>(),
        [second.uuid, first.uuid]
    );
    let unknown: EventUuid = "3f1c2b4a-9d8e-4f7a-8b6c-5d4e3f2a1b0c".parse().unwrap();
    assert!(events.detail(unknown).await.unwrap().is_none());
}

#[test]
fn the_uuid_migration_gives_every_stored_event_a_distinct_uuid() {
    let t = TestDatabase::empty();
    let url = t.url().to_owned();
    std::thread::spawn(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        // Everything before 2026-12-02-000004_event_uuid.
        for _ in 0..3 {
            conn.run_next_migration(MIGRATIONS).unwrap();
        }
        conn.batch_execute(
            "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload)
             SELECT 'old-' || n, 'pull_request', 'opened', 'o/r', n, '{}' FROM generate_series(1, 500) AS n",
        )
        .unwrap();
        let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
        assert_eq!(
            applied.iter().map(ToString::to_string).next().as_deref(),
            Some("20261202000004")
        );
        #[derive(diesel::QueryableByName)]
        struct Counts {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            rows: i64,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            distinct_uuids: i64,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            v4: i64,
        }
        let count = |conn: &mut AsyncConnectionWrapper<AsyncPgConnection>| -> Counts {
            diesel::sql_query(
                "SELECT count(*) AS rows, count(DISTINCT uuid) AS distinct_uuids,
                        count(*) FILTER (WHERE substr(uuid::text, 15, 1) = '4'
                                           AND substr(uuid::text, 20, 1) IN ('8', '9', 'a', 'b')) AS v4
                   FROM webhook_events",
            )
            .get_result(conn)
            .unwrap()
        };
        let c = count(&mut conn);
        assert_eq!((c.rows, c.distinct_uuids, c.v4), (500, 500, 500));
        // An insert that does not name the column (an older binary during a
        // rolling upgrade) gets one too; a duplicate is refused.
        conn.batch_execute(
            "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload)
             VALUES ('old-binary', 'pull_request', 'opened', 'o/r', 1, '{}')",
        )
        .unwrap();
        let c = count(&mut conn);
        assert_eq!((c.rows, c.distinct_uuids, c.v4), (501, 501, 501));
        assert!(
            conn.batch_execute(
                "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload, uuid)
                 SELECT 'dup', event_type, action, repository_full_name, pull_request_number, payload, uuid
                   FROM webhook_events WHERE delivery_id = 'old-1'",
            )
            .is_err(),
            "uuids are unique"
        );
        // It reverts cleanly and applies again.
        conn.revert_last_migration(MIGRATIONS).unwrap();
        conn.run_pending_migrations(MIGRATIONS).unwrap();
        let c = count(&mut conn);
        assert_eq!((c.rows, c.distinct_uuids), (501, 501));
    })
    .join()
    .unwrap();
}

#[test]
fn migrations_apply_on_a_database_holding_data() {
    let t = TestDatabase::empty();
    let url = t.url().to_owned();
    std::thread::spawn(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        conn.run_next_migration(MIGRATIONS).unwrap();
        conn.batch_execute(
            "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload, headers)
             VALUES ('old-1', 'pull_request', 'opened', 'o/r', 3, '{\"k\": 1}', '[[\"X-GitHub-Event\",\"pull_request\"]]')",
        )
        .unwrap();
        conn.run_pending_migrations(MIGRATIONS).unwrap();
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            payload: String,
            #[diesel(sql_type = diesel::sql_types::Bool)]
            unplanned: bool,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT payload::text AS payload, planned_at IS NULL AS unplanned FROM webhook_events",
        )
        .load(&mut conn)
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].payload, "{\"k\": 1}");
        assert!(rows[0].unplanned, "acknowledged events from before the engine still get dispatched");
        // And everything reverts cleanly.
        conn.revert_all_migrations(MIGRATIONS).unwrap();
        conn.run_pending_migrations(MIGRATIONS).unwrap();
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn run_migrations_is_idempotent() {
    let t = TestDatabase::empty();
    let applied = dispatcher_store::run_migrations(t.url(), &ConnectionOptions::default())
        .await
        .unwrap();
    let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .count();
    assert_eq!(
        applied.len(),
        on_disk,
        "every migration in migrations/ applies"
    );
    assert!(
        dispatcher_store::run_migrations(t.url(), &ConnectionOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        dispatcher_store::pending_migrations(t.url(), &ConnectionOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn schema_matches_migrations() {
    let t = TestDatabase::new();
    let url = t.url().to_owned();
    std::thread::spawn(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        #[derive(diesel::QueryableByName)]
        struct Col {
            #[diesel(sql_type = diesel::sql_types::Text)]
            table_name: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            column_name: String,
        }
        let cols: Vec<Col> = diesel::sql_query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name IN ('webhook_events', 'dispatches', 'pr_labels', 'event_timeline', 'pool_controls', 'pr_queue_status', 'run_cancellations')
              ORDER BY table_name, ordinal_position",
        )
        .load(&mut conn)
        .unwrap();
        use dispatcher_store::schema::*;
        // The SQL diesel generates for `SELECT all_columns` names every declared column.
        fn names(sql: &str, table: &str) -> Vec<String> {
            let prefix = format!("\"{table}\".\"");
            sql.split(&prefix).skip(1).filter_map(|rest| rest.split('"').next()).map(str::to_owned).collect()
        }
        let declared = |table: &str| -> Vec<String> {
            use diesel::{QueryDsl, debug_query, pg::Pg};
            let sql = match table {
                "webhook_events" => debug_query::<Pg, _>(&webhook_events::table.select(webhook_events::all_columns)).to_string(),
                "dispatches" => debug_query::<Pg, _>(&dispatches::table.select(dispatches::all_columns)).to_string(),
                "event_timeline" => debug_query::<Pg, _>(&event_timeline::table.select(event_timeline::all_columns)).to_string(),
                "pool_controls" => debug_query::<Pg, _>(&pool_controls::table.select(pool_controls::all_columns)).to_string(),
                "pr_queue_status" => debug_query::<Pg, _>(&pr_queue_status::table.select(pr_queue_status::all_columns)).to_string(),
                "run_cancellations" => debug_query::<Pg, _>(&run_cancellations::table.select(run_cancellations::all_columns)).to_string(),
                _ => debug_query::<Pg, _>(&pr_labels::table.select(pr_labels::all_columns)).to_string(),
            };
            names(&sql, table)
        };
        for table in ["webhook_events", "dispatches", "pr_labels", "event_timeline", "pool_controls", "pr_queue_status", "run_cancellations"] {
            let actual: Vec<String> = cols.iter().filter(|c| c.table_name == table).map(|c| c.column_name.clone()).collect();
            let mut expected = declared(table);
            let mut sorted_actual = actual.clone();
            expected.sort();
            sorted_actual.sort();
            assert_eq!(sorted_actual, expected, "schema.rs is out of date for {table}");
        }
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_knows_about_newer_events_and_can_be_superseded() {
    let t = TestDatabase::new();
    let database = db(&t);
    let events = database.events();
    let e1 = created(events.record(event("a", 1, "{}")).await.unwrap());
    let e2 = created(events.record(event("b", 1, "{\"n\":2}")).await.unwrap());
    let mut leader = lead(&database, false).await;
    let now = OffsetDateTime::now_utc();
    let first = IntakePlan {
        planned: vec![e1],
        new_dispatches: vec![new_dispatch(e1, 1, "ops", DispatchState::Queued)],
        ..IntakePlan::default()
    };
    let a = leader.apply_intake(&first, now).await.unwrap()[0].id;
    leader.begin_triggers(&[a], now).await.unwrap();
    // The newer event arrives while the first POST is in flight.
    let second = IntakePlan {
        planned: vec![e2],
        new_dispatches: vec![new_dispatch(e2, 1, "ops", DispatchState::Queued)],
        ..IntakePlan::default()
    };
    let b = leader.apply_intake(&second, now).await.unwrap()[0].id;
    let error = "HTTP 502: \0binary\0".to_owned();
    leader
        .record_outcomes(
            &[DispatchOutcome::Retry {
                id: a,
                attempt: 1,
                next_attempt_at: now,
                error,
            }],
            now,
        )
        .await
        .unwrap();
    let open = leader
        .open_dispatches(now - Duration::from_secs(60), OpenExtras::NONE)
        .await
        .unwrap();
    let flags: Vec<(DispatchId, bool)> = open.iter().map(|d| (d.id, d.has_newer)).collect();
    assert_eq!(flags, [(a, true), (b, false)]);

    leader
        .record_outcomes(&[DispatchOutcome::Superseded { id: a }], now)
        .await
        .unwrap();
    let detail = events.detail(e1).await.unwrap().unwrap();
    assert_eq!(detail.event.status, EventStatus::Cancelled);
    assert!(
        detail.dispatches[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("binary"),
        "NUL bytes are storable"
    );
}

/// Waiting work carries its PR's labels from the newest stored event (a
/// later `labeled` delivery no item matched counts) and its repository's
/// recent trigger starts in the pool; work in flight carries neither.
#[tokio::test(flavor = "multi_thread")]
async fn open_work_carries_current_labels_and_recent_triggers() {
    let t = TestDatabase::new();
    let database = db(&t);
    let events = database.events();
    let labelled = |names: &[&str]| {
        let labels: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"name": n, "color": "ededed"}))
            .collect();
        serde_json::json!({"pull_request": {"labels": labels}}).to_string()
    };
    let e1 = created(events.record(event("a", 1, &labelled(&[]))).await.unwrap());
    let e2 = created(
        events
            .record(event("b", 2, &labelled(&["x"])))
            .await
            .unwrap(),
    );
    let e3 = created(
        events
            .record(event("c", 3, r#"{"pull_request": {"labels": "nonsense"}}"#))
            .await
            .unwrap(),
    );
    let e4 = created(
        events
            .record(NewEvent {
                action: "labeled".into(),
                ..event("d", 1, &labelled(&["priority/critical", "x"]))
            })
            .await
            .unwrap(),
    );
    let mut leader = lead(&database, false).await;
    let now = OffsetDateTime::now_utc();
    let plan = IntakePlan {
        planned: vec![e1, e2, e3, e4],
        aborted: vec![e4],
        new_dispatches: vec![
            new_dispatch(e1, 1, "ops", DispatchState::Queued),
            new_dispatch(e2, 2, "ops", DispatchState::Queued),
            new_dispatch(e3, 3, "ops", DispatchState::Queued),
        ],
        ..IntakePlan::default()
    };
    let created = leader.apply_intake(&plan, now).await.unwrap();
    let (a, b, c) = (created[0].id, created[1].id, created[2].id);
    leader.begin_triggers(&[b], now).await.unwrap();
    let cutoff = now - Duration::from_secs(60);
    let plain = leader
        .open_dispatches(cutoff, OpenExtras::NONE)
        .await
        .unwrap();
    assert!(
        plain
            .iter()
            .all(|d| d.labels.is_empty() && d.recent_triggers.is_empty()),
        "extras are read only when asked for"
    );
    let extras = OpenExtras {
        labels: true,
        recent_triggers: true,
    };
    let open = leader.open_dispatches(cutoff, extras).await.unwrap();
    let find = |id| open.iter().find(|d| d.id == id).expect("open");
    assert_eq!(find(a).labels, ["priority/critical", "x"]);
    assert!(find(b).labels.is_empty(), "in flight: not ordered");
    assert!(
        find(c).labels.is_empty(),
        "labels that are not a list count as none"
    );
    for id in [a, c] {
        let recent = &find(id).recent_triggers;
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert!((recent[0] - now).abs() < time::Duration::milliseconds(1));
    }
    assert!(find(b).recent_triggers.is_empty());
}

/// Payloads are TOAST-compressed with lz4 where the server offers it
/// (Debian's PostgreSQL does; migration 000012).
#[test]
fn payloads_are_compressed_with_lz4_where_the_server_has_it() {
    #[derive(diesel::QueryableByName)]
    struct Compression {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        offered: bool,
        #[diesel(sql_type = diesel::sql_types::Text)]
        method: String,
    }
    let t = TestDatabase::new();
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(t.url()).unwrap();
    let c: Compression = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_settings
                         WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) AS offered,
                attcompression::text AS method
           FROM pg_attribute
          WHERE attrelid = 'webhook_events'::regclass AND attname = 'payload'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(c.method, if c.offered { "l" } else { "" });
}
