//! Queue statuses on real PostgreSQL: the leader's pass writes what each
//! waiting pull request should show (idempotently), settles rows whose
//! dispatch left the queue ("Started", "Cancelled: superseded by <sha>"),
//! and the worker's due query coalesces position changes to one per
//! interval while final texts are due at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchId, DispatchState, EventId, PullRequestRef};
use dispatcher_core::planner::IntakePlan;
use dispatcher_core::ports::{
    DispatchStore, EventRepository, QueueStatusStore, StatusPhase, StatusTask,
};
use dispatcher_core::queue_status::WantedStatus;
use dispatcher_store::{Database, LeaderOptions, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;

mod common;
use common::{event, new_dispatch};

const WINDOW: Duration = Duration::from_secs(30);

async fn record(events: &impl EventRepository, delivery: &str, pr: i64, sha: &str) -> EventId {
    let payload = format!(r#"{{"pull_request":{{"number":{pr},"head":{{"sha":"{sha}"}}}}}}"#);
    common::created(events.record(event(delivery, pr, &payload)).await.unwrap())
}

fn wanted(dispatch: DispatchId, pr: i64, text: &str) -> WantedStatus {
    WantedStatus {
        dispatch,
        pool: PoolKey("ns/p".into()),
        pipeline: "p".into(),
        pr: PullRequestRef {
            repository: "o/r".into(),
            number: pr,
        },
        description: text.into(),
        significant: text.into(),
    }
}

fn brief(tasks: &[StatusTask]) -> Vec<(String, StatusPhase, String)> {
    let mut out: Vec<_> = tasks
        .iter()
        .map(|t| (t.head_sha.clone(), t.phase, t.description.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_are_written_coalesced_and_settled() {
    let t = TestDatabase::new();
    let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
    let events = db.events();
    let mut statuses = db.queue_statuses();
    let e1 = record(&events, "d1", 1, "a1").await;
    let e2 = record(&events, "d2", 2, "b1").await;
    let mut leader = db
        .try_lead(false, LeaderOptions::default())
        .await
        .unwrap()
        .expect("leader");
    let now = OffsetDateTime::now_utc();
    let created = leader
        .apply_intake(
            &IntakePlan {
                planned: vec![e1, e2],
                new_dispatches: vec![
                    new_dispatch(e1, 1, "ops", DispatchState::Queued),
                    new_dispatch(e2, 2, "ops", DispatchState::Queued),
                ],
                ..IntakePlan::default()
            },
            now,
        )
        .await
        .unwrap();
    let (d1, d2) = (created[0].id, created[1].id);
    let first = [
        wanted(d1, 1, "Queued: 1st of 2"),
        wanted(d2, 2, "Queued: 2nd of 2"),
    ];
    assert_eq!(leader.reconcile_queue_status(&first, now).await.unwrap(), 2);
    assert_eq!(
        leader.reconcile_queue_status(&first, now).await.unwrap(),
        0,
        "idempotent"
    );
    let mut ticking = first.clone();
    ticking[0].description = "Queued: 1st of 2, estimated start in about 3 min".into();
    assert_eq!(
        leader.reconcile_queue_status(&ticking, now).await.unwrap(),
        0,
        "a ticking estimate alone is not worth an update"
    );
    let due = statuses.due_status_tasks(now, WINDOW, 10).await.unwrap();
    assert_eq!(
        brief(&due),
        [
            ("a1".into(), StatusPhase::Queued, "Queued: 1st of 2".into()),
            ("b1".into(), StatusPhase::Queued, "Queued: 2nd of 2".into()),
        ]
    );
    assert!(
        due.iter()
            .all(|t| t.applied_phase.is_none() && t.pool == "ns/p")
    );
    for (task, id) in due.iter().zip([11, 12]) {
        statuses
            .finish_status_task(task, Ok(Some(id)), now)
            .await
            .unwrap();
    }
    assert!(
        statuses
            .due_status_tasks(now, WINDOW, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(statuses.next_status_due(WINDOW).await.unwrap(), None);

    // A position change waits for the window; then it carries the check run.
    let moved = [
        wanted(d1, 1, "Queued: 1st of 1"),
        wanted(d2, 2, "Queued: 2nd of 2"),
    ];
    assert_eq!(leader.reconcile_queue_status(&moved, now).await.unwrap(), 1);
    let soon = now + Duration::from_secs(1);
    assert!(
        statuses
            .due_status_tasks(soon, WINDOW, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let next = statuses.next_status_due(WINDOW).await.unwrap().unwrap();
    assert!(
        (next - (now + WINDOW)).abs() < time::Duration::milliseconds(1),
        "{next}"
    );
    let later = now + WINDOW;
    let due = statuses.due_status_tasks(later, WINDOW, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].check_run_id, Some(11));
    assert_eq!(due[0].applied_phase, Some(StatusPhase::Queued));
    statuses
        .finish_status_task(&due[0], Ok(None), later)
        .await
        .unwrap();

    // PR 2 is pushed again (superseding b1) and PR 1 is triggered: both
    // settle, due at once despite the window.
    let e3 = record(&events, "d3", 2, "b2").await;
    let created = leader
        .apply_intake(
            &IntakePlan {
                planned: vec![e3],
                new_dispatches: vec![new_dispatch(e3, 2, "ops", DispatchState::Queued)],
                superseded: vec![d2],
                ..IntakePlan::default()
            },
            later,
        )
        .await
        .unwrap();
    let d3 = created[0].id;
    leader.begin_triggers(&[d1], later).await.unwrap();
    let third = [wanted(d3, 2, "Queued: 1st of 1")];
    assert_eq!(
        leader.reconcile_queue_status(&third, later).await.unwrap(),
        3
    );
    let at = later + Duration::from_secs(1);
    let due = statuses.due_status_tasks(at, WINDOW, 10).await.unwrap();
    assert_eq!(
        brief(&due),
        [
            ("a1".into(), StatusPhase::Started, "Started".into()),
            (
                "b1".into(),
                StatusPhase::Cancelled,
                "Cancelled: superseded by b2".into()
            ),
            ("b2".into(), StatusPhase::Queued, "Queued: 1st of 1".into()),
        ]
    );
    // A failure is retried later; shown final texts are forgotten.
    for task in &due {
        let result = if task.head_sha == "b2" {
            Err(("HTTP 502".to_owned(), at + Duration::from_secs(5)))
        } else {
            Ok(None)
        };
        statuses.finish_status_task(task, result, at).await.unwrap();
    }
    assert!(
        statuses
            .due_status_tasks(at, WINDOW, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = statuses
        .due_status_tasks(at + Duration::from_secs(5), WINDOW, 10)
        .await
        .unwrap();
    assert_eq!(brief(&retry)[0].0, "b2");
    assert_eq!(retry[0].attempts, 1);
    assert_eq!(
        leader.reconcile_queue_status(&third, at).await.unwrap(),
        0,
        "settled rows are gone, the waiting one unchanged"
    );
}
