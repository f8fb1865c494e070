//! Cancelling superseded and closed work through the store, on real
//! PostgreSQL: candidates (in flight with a newer event, queued on a closed
//! PR), `CancelRun` applied in the pass's transaction (a queued dispatch is
//! cancelled, one in flight keeps its state and slot until its run is seen,
//! then is cancelled), and the worker's pending rows with retries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use dispatcher_core::config::TektonApiVersion;
use dispatcher_core::domain::{DispatchId, DispatchState, EventId, EventStatus, TimelineKind};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::planner::{CancelReason, DispatchOutcome, IntakePlan};
use dispatcher_core::ports::{
    CancelQuery, DispatchStore, EventRepository, OperatorStore, RunCancelResult, RunCancelStore,
    RunTarget,
};
use dispatcher_store::{Database, LeaderOptions, PoolOptions};
use dispatcher_testdb::TestDatabase;

async fn record(db: &Database, delivery: &str, pr: i64, action: &str) -> EventId {
    let mut e: NewEvent = common::event(delivery, pr, &format!("{{\"pr\":{pr}}}"));
    e.action = action.to_owned();
    common::created(db.events().record(e).await.unwrap())
}

fn target() -> RunTarget {
    RunTarget {
        namespace: "ns".to_owned(),
        api_version: TektonApiVersion::V1Beta1,
        dispatch_label: None,
    }
}

fn query() -> CancelQuery {
    CancelQuery {
        superseded_items: vec!["ops".to_owned()],
        close_items: vec!["ops".to_owned()],
        running_event_ids: vec!["ev-running".to_owned()],
        running_dispatch_ids: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn candidates_requests_confirmation_and_the_worker_rows() {
    let test = TestDatabase::new();
    let db = Database::connect(test.url(), PoolOptions::default()).unwrap();
    let mut leader = db
        .try_lead(false, LeaderOptions::default())
        .await
        .unwrap()
        .expect("leads");
    let now = leader.database_now().await.unwrap();
    let e1 = record(&db, "e1", 1, "opened").await;
    let e3 = record(&db, "e3", 2, "opened").await;
    let e4 = record(&db, "e4", 3, "opened").await;
    let created = leader
        .apply_intake(
            &IntakePlan {
                planned: vec![e1, e3, e4],
                new_dispatches: vec![
                    common::new_dispatch(e1, 1, "ops", DispatchState::Queued),
                    common::new_dispatch(e3, 2, "ops", DispatchState::Queued),
                    common::new_dispatch(e4, 3, "ops", DispatchState::Queued),
                ],
                ..IntakePlan::default()
            },
            now,
        )
        .await
        .unwrap();
    let (d1, d3, d4) = (created[0].id, created[1].id, created[2].id);
    // d1 in flight (202 with ev-1), d4 confirmed with its run running.
    leader.begin_triggers(&[d1, d4], now).await.unwrap();
    for (d, ev) in [(d1, "ev-1"), (d4, "ev-running")] {
        leader
            .record_outcomes(
                &[DispatchOutcome::Triggered {
                    id: d,
                    attempt: 1,
                    listener_event_id: Some(ev.to_owned()),
                }],
                now,
            )
            .await
            .unwrap();
    }
    leader
        .record_outcomes(
            &[DispatchOutcome::Confirmed {
                id: d4,
                listener_event_id: None,
                run: Some("run-4".to_owned()),
            }],
            now,
        )
        .await
        .unwrap();
    // Nothing newer, nothing closed: no candidates.
    assert!(leader.cancel_candidates(&query()).await.unwrap().is_empty());

    // A push to PR 1, PR 2 closed (planned, no item matched), PR 3 pushed.
    let e2 = record(&db, "e2", 1, "synchronize").await;
    let closed = record(&db, "c2", 2, "closed").await;
    let e5 = record(&db, "e5", 3, "synchronize").await;
    leader
        .apply_intake(
            &IntakePlan {
                planned: vec![e2, closed, e5],
                aborted: vec![closed],
                new_dispatches: vec![
                    common::new_dispatch(e2, 1, "ops", DispatchState::Queued),
                    common::new_dispatch(e5, 3, "ops", DispatchState::Queued),
                ],
                ..IntakePlan::default()
            },
            now,
        )
        .await
        .unwrap();
    let found = leader.cancel_candidates(&query()).await.unwrap();
    let got: Vec<_> = found
        .iter()
        .map(|c| (c.id, c.state, c.newer_event, c.closed_by))
        .collect();
    assert_eq!(
        got,
        vec![
            (d1, DispatchState::Triggered, Some(e2), None),
            (d3, DispatchState::Queued, None, Some(closed)),
            (d4, DispatchState::Confirmed, Some(e5), None),
        ]
    );
    // Only runs known to be running count: d4's run finished → not a candidate.
    let mut finished = query();
    finished.running_event_ids.clear();
    let ids: Vec<DispatchId> = leader
        .cancel_candidates(&finished)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![d1, d3]);

    let cancel = |id, reason, by_event| DispatchOutcome::CancelRun {
        id,
        reason,
        by_event,
        target: target(),
    };
    leader
        .record_outcomes(
            &[
                cancel(d1, CancelReason::Superseded, e2),
                cancel(d3, CancelReason::Closed, closed),
                cancel(d4, CancelReason::Superseded, e5),
            ],
            now,
        )
        .await
        .unwrap();
    let state = |detail: &dispatcher_core::domain::EventDetail| detail.dispatches[0].state;
    let events = db.events();
    // In flight: keeps its state (and its slot) until its run is seen.
    assert_eq!(
        state(&events.detail(e1).await.unwrap().unwrap()),
        DispatchState::Triggered
    );
    let e3_detail = events.detail(e3).await.unwrap().unwrap();
    assert_eq!(state(&e3_detail), DispatchState::Cancelled);
    assert_eq!(e3_detail.event.status, EventStatus::Cancelled);
    assert_eq!(
        state(&events.detail(e4).await.unwrap().unwrap()),
        DispatchState::Cancelled
    );
    // Decided once: no candidates are left.
    assert!(leader.cancel_candidates(&query()).await.unwrap().is_empty());

    // d1's run is seen: it is cancelled now.
    leader
        .record_outcomes(
            &[DispatchOutcome::Confirmed {
                id: d1,
                listener_event_id: None,
                run: Some("run-1".to_owned()),
            }],
            now,
        )
        .await
        .unwrap();
    let e1_detail = events.detail(e1).await.unwrap().unwrap();
    assert_eq!(state(&e1_detail), DispatchState::Cancelled);
    assert_eq!(e1_detail.event.status, EventStatus::Cancelled);

    // The worker's rows: d1 and d4 (a queued dispatch has no run to cancel).
    let mut rows = db.run_cancels();
    let due = rows.due_run_cancels(10).await.unwrap();
    let mut tasks: Vec<_> = due
        .iter()
        .map(|t| (t.dispatch, t.listener_event_id.clone(), t.run_seen))
        .collect();
    tasks.sort();
    assert_eq!(
        tasks,
        vec![
            (d1, Some("ev-1".to_owned()), true),
            (d4, Some("ev-running".to_owned()), true)
        ]
    );
    assert_eq!(due[0].target, target());
    let t1 = due.iter().find(|t| t.dispatch == d1).unwrap().clone();
    let t4 = due.iter().find(|t| t.dispatch == d4).unwrap().clone();
    rows.finish_run_cancel(
        &t1,
        &RunCancelResult::Retry {
            error: "HTTP 403".to_owned(),
            retry_in: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    rows.finish_run_cancel(
        &t4,
        &RunCancelResult::Done {
            runs: vec!["run-4".to_owned()],
        },
    )
    .await
    .unwrap();
    // A stale writer (same attempt again) changes nothing.
    rows.finish_run_cancel(&t1, &RunCancelResult::Done { runs: vec![] })
        .await
        .unwrap();
    assert!(rows.due_run_cancels(10).await.unwrap().is_empty());
    let next = rows.next_run_cancel().await.unwrap().expect("d1 pending");
    assert!(next > Duration::from_secs(3000), "{next:?}");

    let kinds = |timeline: Vec<dispatcher_core::domain::TimelineEntry>| -> Vec<TimelineKind> {
        timeline.into_iter().map(|t| t.kind).collect()
    };
    let t = kinds(events.timeline(e1).await.unwrap());
    assert!(t.contains(&TimelineKind::RunCancelRequested), "{t:?}");
    assert!(t.contains(&TimelineKind::RunCancelFailed), "{t:?}");
    assert!(!t.contains(&TimelineKind::RunCancelled), "{t:?}");
    let t = kinds(events.timeline(e4).await.unwrap());
    assert!(t.contains(&TimelineKind::RunCancelled), "{t:?}");
}
