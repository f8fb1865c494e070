//! The incremental pass's reads (`open_of_prs`, `in_flight`, `queue_heads`,
//! `misplaced`, `queue_summary`) answer exactly what
//! `dispatcher_core::open_set` says they mean over the whole open set.

use std::time::Duration;

use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchState, PullRequestRef};
use dispatcher_core::open_set::{self, HeadRequest};
use dispatcher_core::planner::{DispatchOutcome, IntakePlan, NewDispatch};
use dispatcher_core::ports::{DispatchStore, EventRepository, OpenDispatch, OpenExtras};
use dispatcher_store::{Database, LeaderOptions, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;

mod common;
use common::{created, event, new_dispatch};

fn by_id(mut v: Vec<OpenDispatch>) -> Vec<OpenDispatch> {
    v.sort_by_key(|d| d.id);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_reads_match_the_reference_over_the_whole_open_set() {
    let t = TestDatabase::new();
    let database = Database::connect(t.url(), PoolOptions::default()).expect("pool");
    let events = database.events();
    let mut ids = Vec::new();
    for (delivery, pr) in [
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
        ("f", 2),
        ("g", 6),
        ("h", 7),
    ] {
        ids.push(created(
            events.record(event(delivery, pr, "{}")).await.unwrap(),
        ));
    }
    let mut leader = database
        .try_lead(false, LeaderOptions::default())
        .await
        .unwrap()
        .expect("leader");
    let now = OffsetDateTime::now_utc();
    let in_pool = |d: NewDispatch, pool: &str, position: i64| NewDispatch {
        pool: PoolKey(pool.into()),
        queue_position: position,
        ..d
    };
    let q = DispatchState::Queued;
    let plan = IntakePlan {
        planned: ids.iter().copied().filter(|e| *e != ids[5]).collect(),
        new_dispatches: vec![
            // ns/p's queue, out of id order by position; PR 2 twice (the
            // older one has a newer sibling).
            in_pool(new_dispatch(ids[0], 1, "ops", q), "ns/p", 30),
            in_pool(new_dispatch(ids[1], 2, "ops", q), "ns/p", 10),
            // An item that left its pool.
            in_pool(new_dispatch(ids[2], 3, "other", q), "ns/q", 5),
            // Triggering, triggered, and a retry in backoff.
            in_pool(new_dispatch(ids[3], 4, "ops", q), "ns/p", 1),
            in_pool(new_dispatch(ids[4], 5, "ops", q), "ns/p", 2),
            in_pool(new_dispatch(ids[6], 6, "ops", q), "ns/p", 3),
            in_pool(new_dispatch(ids[7], 7, "ops", q), "ns/r", 4),
        ],
        ..IntakePlan::default()
    };
    let created = leader.apply_intake(&plan, now).await.unwrap();
    // PR 2 again, planned later: its older dispatch now has a newer sibling.
    let newer = IntakePlan {
        planned: vec![ids[5]],
        new_dispatches: vec![in_pool(new_dispatch(ids[5], 2, "ops", q), "ns/p", 20)],
        ..IntakePlan::default()
    };
    leader.apply_intake(&newer, now).await.unwrap();
    let id_of = |pr: i64| created.iter().find(|d| d.pr.number == pr).unwrap().id;
    let (triggering, triggered, backoff) = (id_of(4), id_of(5), id_of(6));
    leader
        .begin_triggers(&[triggering, triggered, backoff], now)
        .await
        .unwrap();
    leader
        .record_outcomes(
            &[
                DispatchOutcome::Triggered {
                    id: triggered,
                    attempt: 1,
                    listener_event_id: None,
                },
                DispatchOutcome::Retry {
                    id: backoff,
                    attempt: 1,
                    next_attempt_at: now + Duration::from_secs(3600),
                    error: "HTTP 503".into(),
                },
            ],
            now,
        )
        .await
        .unwrap();

    let cutoff = now - Duration::from_secs(60);
    let full = leader
        .open_dispatches(cutoff, OpenExtras::NONE)
        .await
        .unwrap();
    assert_eq!(full.len(), 8, "{full:#?}");

    let in_flight = leader.in_flight(cutoff).await.unwrap();
    assert_eq!(
        by_id(in_flight.clone()),
        by_id(open_set::in_flight(full.clone()))
    );
    assert_eq!(in_flight.len(), 2);
    // The reservation over: the triggered one no longer holds a slot.
    let later = leader
        .in_flight(now + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(later.iter().map(|d| d.id).collect::<Vec<_>>(), [triggering]);

    let prs = [
        PullRequestRef {
            repository: "o/r".into(),
            number: 2,
        },
        PullRequestRef {
            repository: "o/r".into(),
            number: 5,
        },
        PullRequestRef {
            repository: "x/y".into(),
            number: 1,
        },
    ];
    let of_prs = leader.open_of_prs(cutoff, &prs).await.unwrap();
    assert_eq!(
        by_id(of_prs.clone()),
        by_id(open_set::of_prs(full.clone(), &prs))
    );
    assert_eq!(of_prs.len(), 3);

    let pool = |p: &str| PoolKey(p.into());
    for requests in [
        vec![HeadRequest {
            pool: pool("ns/p"),
            limit: Some(1),
        }],
        vec![HeadRequest {
            pool: pool("ns/p"),
            limit: Some(2),
        }],
        vec![HeadRequest {
            pool: pool("ns/p"),
            limit: Some(10),
        }],
        vec![HeadRequest {
            pool: pool("ns/p"),
            limit: None,
        }],
        vec![
            HeadRequest {
                pool: pool("ns/q"),
                limit: Some(1),
            },
            HeadRequest {
                pool: pool("ns/r"),
                limit: None,
            },
            HeadRequest {
                pool: pool("none"),
                limit: Some(3),
            },
        ],
    ] {
        let heads = leader
            .queue_heads(&requests, now, OpenExtras::NONE)
            .await
            .unwrap();
        let expected = open_set::heads(full.clone(), &requests, now);
        assert_eq!(by_id(heads), by_id(expected), "{requests:?}");
    }
    // The head of ns/p is PR 2's older dispatch (position 10), which has a
    // newer sibling; the retry in backoff is skipped by a limited read.
    let head = leader
        .queue_heads(
            &[HeadRequest {
                pool: pool("ns/p"),
                limit: Some(1),
            }],
            now,
            OpenExtras::NONE,
        )
        .await
        .unwrap();
    assert_eq!(head.len(), 1);
    assert!(head[0].has_newer && head[0].pr.number == 2);

    let placements = [
        ("ops".to_owned(), pool("ns/p")),
        ("ops".to_owned(), pool("ns/r")),
    ];
    let misplaced = leader
        .misplaced(&placements, OpenExtras::NONE)
        .await
        .unwrap();
    assert_eq!(
        by_id(misplaced.clone()),
        by_id(open_set::misplaced(full.clone(), &placements))
    );
    assert_eq!(
        misplaced.iter().map(|d| d.pr.number).collect::<Vec<_>>(),
        [3]
    );

    let summary = leader.queue_summary(now).await.unwrap();
    assert_eq!(summary, open_set::summary(&full, now));
    assert_eq!(summary[&pool("ns/p")].waiting, 4);
    assert!(summary[&pool("ns/p")].next_retry.is_some());
}
