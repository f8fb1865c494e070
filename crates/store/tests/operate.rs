//! The operators' port on real PostgreSQL: the stored timeline, the queue
//! snapshot, cancel, replay (newest-wins, force, rounds) and pause.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use diesel_async::{AsyncConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchState, EventId, EventStatus, TimelineKind};
use dispatcher_core::planner::{DispatchOutcome, IntakePlan, NewDispatch};
use dispatcher_core::ports::{
    CancelOutcome, DispatchStore, EventRepository, OpenExtras, OperatorStore, ReplayOutcome,
    ReplayRequest, ReplayTarget,
};
use dispatcher_store::{Database, PoolOptions};
use dispatcher_testdb::TestDatabase;

mod common;
use common::{event, lead, new_dispatch};
use time::OffsetDateTime;

fn queued(event: EventId, pr: i64) -> NewDispatch {
    new_dispatch(event, pr, "ops", DispatchState::Queued)
}

fn replay(force: bool) -> ReplayRequest {
    ReplayRequest {
        actor: "alice".into(),
        force,
        targets: vec![ReplayTarget {
            item: "ops".into(),
            pool: PoolKey("ns/p".into()),
            queued_label: "p/queued".into(),
        }],
    }
}

async fn record(events: &impl EventRepository, delivery: &str, pr: i64) -> EventId {
    common::created(
        events
            .record(event(delivery, pr, &format!("{{\"d\":\"{delivery}\"}}")))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn timeline_cancel_replay_and_pause_keep_newest_wins() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let events = db.events();
    let older = record(&events, "d1", 1).await;
    let newer = record(&events, "d2", 1).await;
    let other = record(&events, "d3", 2).await;
    let mut leader = lead(&db, false).await;
    let now = OffsetDateTime::now_utc();
    let first = leader
        .apply_intake(
            &IntakePlan {
                planned: vec![older, other],
                new_dispatches: vec![queued(older, 1), queued(other, 2)],
                ..IntakePlan::default()
            },
            now,
        )
        .await
        .unwrap();
    let older_dispatch = first[0].id;
    leader
        .apply_intake(
            &IntakePlan {
                planned: vec![newer],
                new_dispatches: vec![queued(newer, 1)],
                superseded: vec![older_dispatch],
                ..IntakePlan::default()
            },
            now,
        )
        .await
        .unwrap();

    // The timeline: where each joined the queue, and who cancelled whom.
    let newer_uuid = events.detail(newer).await.unwrap().unwrap().event.uuid;
    let kinds = |entries: &[dispatcher_core::domain::TimelineEntry]| -> Vec<TimelineKind> {
        entries.iter().map(|e| e.kind).collect()
    };
    let told = events.timeline(older).await.unwrap();
    assert_eq!(
        kinds(&told),
        [TimelineKind::Queued, TimelineKind::Superseded]
    );
    assert_eq!(told[0].detail["position"], 1);
    assert_eq!(told[0].detail["of"], 2);
    assert_eq!(told[1].detail["by_event"], newer_uuid.to_string());
    let told = events.timeline(newer).await.unwrap();
    // The older one is cancelled in the same transaction: first of two.
    assert_eq!(
        (
            told[0].detail["position"].clone(),
            told[0].detail["of"].clone()
        ),
        (1.into(), 2.into())
    );

    // The snapshot: the open work with its event's public id.
    let snapshot = events
        .queue_snapshot(Duration::from_secs(60), OpenExtras::NONE)
        .await
        .unwrap();
    let open: Vec<EventId> = snapshot.open.iter().map(|d| d.event_id).collect();
    assert_eq!(open, [newer, other], "FIFO order of the pool");
    let newer_dispatch = snapshot.open[0].id;
    assert_eq!(snapshot.facts[&newer_dispatch].event, newer_uuid);

    // Cancel the newer event's waiting dispatch; nothing is left to cancel then.
    assert_eq!(
        events.cancel(newer, "alice").await.unwrap(),
        Some(CancelOutcome::Cancelled(vec![newer_dispatch]))
    );
    assert_eq!(
        events.cancel(newer, "alice").await.unwrap(),
        Some(CancelOutcome::NothingWaiting(EventStatus::Cancelled))
    );
    let last = events.timeline(newer).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.actor.as_deref()),
        (TimelineKind::Cancelled, Some("alice"))
    );
    assert_eq!(events.cancel(EventId(999), "alice").await.unwrap(), None);

    // Replaying the older event: a newer one of the PR exists, so only with force.
    assert_eq!(
        events.replay(older, &replay(false)).await.unwrap(),
        Some(ReplayOutcome::NewerEventExists(newer_uuid))
    );
    let Some(ReplayOutcome::Replayed { round, dispatches }) =
        events.replay(older, &replay(true)).await.unwrap()
    else {
        panic!("forced replay refused");
    };
    assert_eq!(round, 2);
    let detail = events.detail(older).await.unwrap().unwrap();
    assert_eq!(
        detail.event.status,
        EventStatus::Queued,
        "the new round counts"
    );
    assert!(!detail.event.processed);
    // The forced round is not superseded by the newer event, and waits at the back.
    let open = leader.open_dispatches(now, OpenExtras::NONE).await.unwrap();
    let replayed = open.iter().find(|d| d.id == dispatches[0]).unwrap();
    assert!(!replayed.has_newer, "force skips newest-wins");
    assert!(replayed.queue_position >= other.0);
    // A second replay waits until this round is finished.
    assert_eq!(
        events.replay(older, &replay(true)).await.unwrap(),
        Some(ReplayOutcome::NotFinished(EventStatus::Queued))
    );
    leader
        .record_outcomes(
            &[DispatchOutcome::Failed {
                id: dispatches[0],
                attempt: 0,
                error: "boom".into(),
            }],
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        events.detail(older).await.unwrap().unwrap().event.status,
        EventStatus::Failed,
        "the status folds the current round only"
    );

    // Pause: stored, idempotent, seen by the dispatcher; resuming a pool never paused changes nothing.
    let pool = PoolKey("ns/p".into());
    assert!(events.set_paused(&pool, true, "alice").await.unwrap());
    assert!(!events.set_paused(&pool, true, "bob").await.unwrap());
    assert!(leader.paused_pools().await.unwrap().contains(&pool));
    let snapshot = events
        .queue_snapshot(Duration::from_secs(60), OpenExtras::NONE)
        .await
        .unwrap();
    assert_eq!(snapshot.paused[&pool].by, "alice");
    let told = events.timeline(other).await.unwrap();
    assert!(told.iter().any(|e| e.kind == TimelineKind::PoolPaused));
    assert!(events.set_paused(&pool, false, "alice").await.unwrap());
    assert!(!events.set_paused(&pool, false, "alice").await.unwrap());
    assert!(leader.paused_pools().await.unwrap().is_empty());
    let never = PoolKey("ns/never".into());
    assert!(!events.set_paused(&never, false, "alice").await.unwrap());
}

/// An operator's cancel racing a pass that starts the same dispatch (the
/// pass now holds its locks until the end of the whole pass): the cancel
/// waits for the pass's commit, then finds nothing waiting, and neither
/// fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_racing_a_pass_that_starts_the_dispatch_waits_for_it() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let events = db.events();
    let e = record(&events, "d1", 1).await;
    let mut leader = lead(&db, false).await;
    let now = OffsetDateTime::now_utc();
    let plan = IntakePlan {
        planned: vec![e],
        aborted: vec![],
        new_dispatches: vec![queued(e, 1)],
        superseded: vec![],
    };
    let id = leader.apply_intake(&plan, now).await.unwrap()[0].id;

    leader.begin_pass().await.unwrap();
    assert_eq!(leader.begin_triggers(&[id], now).await.unwrap().len(), 1);
    let cancel = tokio::spawn({
        let events = events.clone();
        async move { events.cancel(e, "alice").await }
    });
    // Until the cancel waits on a lock held by the pass (bounded).
    let mut probe = diesel_async::AsyncPgConnection::establish(t.url())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .get_result(&mut probe)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never waited"
        );
        tokio::task::yield_now().await;
    }
    leader.commit_pass().await.expect("the pass commits");
    assert_eq!(
        cancel.await.unwrap().unwrap(),
        Some(CancelOutcome::NothingWaiting(EventStatus::Queued)),
        "the dispatch left the queue before the cancel could take it"
    );
}
